package tree

import (
	"slices"
)

// FrameworkNames are the framework.conf settings dkmsd reads, in the
// order the reader lists them.
func FrameworkNames() []string { return slices.Clone(frameworkNames) }

// UnusedSetting is a variable a framework file sets that has no effect:
// one dkmsd does not know (a typo, a helper variable, a setting of another
// dkms release).
type UnusedSetting struct {
	Name string
	// Where is the file that set it, or "environment".
	Where string
}

// unusedIn lists the variables file set that are no setting.
func unusedIn(file string, res evalResult) []UnusedSetting {
	var out []UnusedSetting
	for _, n := range res.Others {
		out = append(out, UnusedSetting{Name: n, Where: file})
	}
	return out
}
