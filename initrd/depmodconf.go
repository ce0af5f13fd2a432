package initrd

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// DepmodConfig is what depmod.d says about which of two modules with the
// same name wins, and which directories it skips.
type DepmodConfig struct {
	// Searches are the search entries in kmod's list order (the last one
	// read first); "built-in" and "external" are the keywords.
	Searches []string
	// Overrides are "subdir/modname" paths, in kmod's list order.
	Overrides []string
	// Excludes are directory names depmod does not descend into.
	Excludes []string
	// External is set when an external directory applies: its modules
	// live outside lib/modules/<kernel>, which this package does not
	// read.
	External bool
}

// DepmodConfigDirs are the directories depmod reads its configuration
// from, in its order (kmod 30, built with sysconfdir /etc). `depmod -b`
// reads them on the host, not under the base directory.
var DepmodConfigDirs = []string{"/etc/depmod.d", "/run/depmod.d", "/usr/local/lib/depmod.d", "/lib/depmod.d"}

// LoadDepmodConfig reads the configuration depmod would read for kernel
// from dirs (DepmodConfigDirs for the host's): the *.conf files of all of
// them, a name in an earlier directory hiding the same name in a later
// one, parsed in name order. A default search of "updates" applies
// when no file has a search line.
func LoadDepmodConfig(dirs []string, kernel string) (*DepmodConfig, error) {
	type file struct{ name, path string }
	var files []file
	seen := map[string]bool{}
	for _, d := range dirs {
		st, err := os.Stat(d)
		if err != nil {
			continue
		}
		var names []string
		if !st.IsDir() {
			names = []string{filepath.Base(d)}
			d = filepath.Dir(d)
		} else {
			entries, err := os.ReadDir(d)
			if err != nil {
				return nil, unsure("cannot list %s: %v", d, err)
			}
			for _, e := range entries {
				n := e.Name()
				if n[0] == '.' || len(n) < 6 || !strings.HasSuffix(n, ".conf") {
					continue
				}
				if st, err := os.Stat(filepath.Join(d, n)); err == nil && st.IsDir() {
					continue
				}
				names = append(names, n)
			}
		}
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				files = append(files, file{n, filepath.Join(d, n)})
			}
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	cfg := &DepmodConfig{}
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, unsure("cannot read %s: %v", f.path, err)
		}
		if err := cfg.parse(b, kernel); err != nil {
			return nil, err
		}
	}
	if cfg.Searches == nil {
		cfg.Searches = []string{"updates"}
	}
	return cfg, nil
}

// parse reads one depmod.d file as cfg_file_parse does: lines joined at
// a backslash-newline, words split at blanks, each search, override,
// exclude and external line prepended to its list.
func (cfg *DepmodConfig) parse(b []byte, kernel string) error {
	lines, err := kmodLines(b)
	if err != nil {
		return err
	}
	for _, line := range lines {
		if line == "" || line[0] == '#' {
			continue
		}
		words := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
		if len(words) == 0 {
			continue
		}
		args := words[1:]
		switch words[0] {
		case "search":
			for _, a := range args {
				cfg.Searches = append([]string{a}, cfg.Searches...)
			}
		case "override":
			if len(args) < 3 {
				continue
			}
			ok, err := kernelMatches(args[1], kernel)
			if err != nil {
				return err
			}
			if ok {
				cfg.Overrides = append([]string{args[2] + "/" + args[0]}, cfg.Overrides...)
			}
		case "external":
			if len(args) < 2 {
				continue
			}
			ok, err := kernelMatches(args[0], kernel)
			if err != nil {
				return err
			}
			if ok {
				cfg.External = true
			}
		case "exclude":
			cfg.Excludes = append(cfg.Excludes, args...)
		}
	}
	return nil
}

// kmodLines splits a file as freadline_wrapped reads it: a backslash
// before a newline joins two lines, before any other byte it is dropped
// and the byte kept. A NUL byte or a backslash ending the file (kmod
// keeps EOF as a byte) is refused.
func kmodLines(b []byte) ([]string, error) {
	if bytes.IndexByte(b, 0) >= 0 || bytes.HasSuffix(b, []byte("\\")) {
		return nil, unsure("depmod.d file kmod reads in its own way")
	}
	var lines []string
	var cur []byte
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '\n':
			lines, cur = append(lines, string(cur)), cur[:0]
		case '\\':
			i++
			if b[i] != '\n' {
				cur = append(cur, b[i])
			}
		default:
			cur = append(cur, c)
		}
	}
	if len(cur) > 0 {
		lines = append(lines, string(cur))
	}
	return lines, nil
}

// kernelMatches is cfg_kernel_matches: "*", or a POSIX extended regular
// expression matched anywhere in the kernel's release. A pattern with a
// backslash (where glibc's regcomp and Go's POSIX syntax part ways) or
// one Go refuses is one whose answer this package does not know.
func kernelMatches(pattern, kernel string) (bool, error) {
	if pattern == "*" {
		return true, nil
	}
	if strings.Contains(pattern, "\\") {
		return false, unsure("depmod.d kernel pattern %q", pattern)
	}
	re, err := regexp.CompilePOSIX(pattern)
	if err != nil {
		return false, unsure("depmod.d kernel pattern %q: %v", pattern, err)
	}
	return re.MatchString(kernel), nil
}

// excluded is should_exclude_dir for one path component.
func (cfg *DepmodConfig) excluded(name string) bool {
	if name == "." || name == ".." || name == "build" || name == "source" {
		return true
	}
	for _, e := range cfg.Excludes {
		if name == e {
			return true
		}
	}
	return false
}

// keepsOld is depmod_module_is_higher_priority: whether the module found
// first (oldRel) stays when newRel, with the same name, is found; name
// is their module name. Paths are relative to lib/modules/<kernel>.
func (cfg *DepmodConfig) keepsOld(oldRel, newRel, name string) bool {
	// kmod compares the directory part and as many bytes of the file
	// name as the module name has.
	cut := func(rel string) string {
		n := strings.LastIndexByte(rel, '/') + 1 + len(name)
		if n > len(rel) {
			n = len(rel)
		}
		return rel[:n]
	}
	o, n := cut(oldRel), cut(newRel)
	for _, ov := range cfg.Overrides {
		if n == ov {
			return false
		}
		if o == ov {
			return true
		}
	}
	bprio, oldprio, newprio := -1, -1, -1
	under := func(rel, dir string) bool {
		return len(rel) > len(dir) && rel[len(dir)] == '/' && rel[:len(dir)] == dir
	}
	for i, s := range cfg.Searches {
		switch {
		case s == "built-in":
			bprio = i
		case s == "external":
			// Only external directories' modules match it: none here.
		case under(n, s):
			newprio = i
		case under(o, s):
			oldprio = i
		}
	}
	if newprio < 0 {
		newprio = bprio
	}
	if oldprio < 0 {
		oldprio = bprio
	}
	return newprio <= oldprio
}
