package tree

import (
	"maps"
	"os"
	"slices"
)

// inertFrameworkNames are settings dkms knows and dkmsd reads but does not
// act on yet: setting one earns a warning (Framework.Unused) instead of
// silence.
var inertFrameworkNames = []string{
	"compress_gzip_opts", "compress_xz_opts", "compress_zstd_opts",
	"modprobe_on_install", "post_transaction",
}

// NoEffect reports whether dkmsd reads the framework setting name but
// does not act on it yet (then its command-line twin, such as
// --modprobe-on-install, earns a warning too).
func NoEffect(name string) bool { return slices.Contains(inertFrameworkNames, name) }

// FrameworkNames are the framework.conf settings dkmsd reads, in the
// order the reader lists them.
func FrameworkNames() []string { return slices.Clone(frameworkNames) }

// UnusedSetting is a framework setting that has no effect: one dkmsd
// does not know (a typo, a helper variable, a setting of another dkms
// release) or one it reads but does not act on.
type UnusedSetting struct {
	Name string
	// Where is the file that set it, or "environment".
	Where string
}

// inertFromEnv lists the inert settings the environment gives.
func inertFromEnv() []UnusedSetting {
	var out []UnusedSetting
	for _, n := range inertFrameworkNames {
		if !slices.Contains(envFrameworkNames, n) {
			continue
		}
		if _, ok := os.LookupEnv(n); ok {
			out = append(out, UnusedSetting{Name: n, Where: "environment"})
		}
	}
	return out
}

// unusedIn lists what file left unused: the variables it set that are
// no setting, and the inert settings it changed (before: the values
// before it ran).
func unusedIn(file string, before map[string]Value, res evalResult) []UnusedSetting {
	var out []UnusedSetting
	for _, n := range res.Others {
		out = append(out, UnusedSetting{Name: n, Where: file})
	}
	for _, n := range inertFrameworkNames {
		if v := res.Values[n]; v.Set() && !maps.Equal(v.Elems, before[n].Elems) {
			out = append(out, UnusedSetting{Name: n, Where: file})
		}
	}
	return out
}
