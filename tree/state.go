package tree

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// ModuleVersion is one <dkms_tree>/<module>/<version> entry.
type ModuleVersion struct {
	Name, Version string
	// Broken: the source symlink points nowhere (or the source dir is
	// missing while <source_tree>/<module>-<version> exists). Every action
	// but add and status refuses a broken module.
	Broken bool
}

// Build is a module version built for one kernel and arch.
type Build struct {
	Kernel, Arch string
	// Installed: <dkms_tree>/<module>/kernel-<kernel>-<arch> resolves to
	// this build.
	Installed bool
}

// kernelDirRE is the kernel directory names dkms considers: digits, a dot.
var kernelDirRE = regexp.MustCompile(`^[0-9]+\.`)

// ModuleVersions lists the added (or broken) module versions whose names
// match the glob patterns (empty = all), in dkms's order: by module, then
// version, byte-wise as bash sorts in the C locale.
func (l Layout) ModuleVersions(moduleGlob, versionGlob string) ([]ModuleVersion, error) {
	mods, err := readDirNames(l.DKMSTree)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, nil
		}
		return nil, err
	}
	var out []ModuleVersion
	for _, m := range mods {
		if strings.HasPrefix(m, ".") || !globMatch(moduleGlob, m) {
			continue
		}
		vers, err := readDirNames(filepath.Join(l.DKMSTree, m))
		if err != nil {
			continue
		}
		for _, v := range vers {
			if strings.HasPrefix(v, ".") || strings.HasPrefix(v, "kernel-") || !globMatch(versionGlob, v) {
				continue
			}
			if st, ok := l.addedState(m, v); ok {
				out = append(out, ModuleVersion{Name: m, Version: v, Broken: st})
			}
		}
	}
	return out, nil
}

// Lookup returns the state of one module version; ok is false when it is
// not in the tree.
func (l Layout) Lookup(module, version string) (mv ModuleVersion, ok bool) {
	broken, ok := l.addedState(module, version)
	return ModuleVersion{Name: module, Version: version, Broken: broken}, ok
}

// addedState tells whether m/v is added, and whether it is broken.
func (l Layout) addedState(m, v string) (broken, ok bool) {
	vdir := l.VersionDir(m, v)
	if fi, err := os.Stat(vdir); err != nil || !fi.IsDir() {
		return false, false
	}
	src := filepath.Join(vdir, "source")
	lfi, err := os.Lstat(src)
	if err == nil && lfi.Mode()&os.ModeSymlink != 0 {
		fi, err := os.Stat(src)
		return err != nil || !fi.IsDir(), true
	}
	if err == nil && lfi.IsDir() {
		return false, true // binaries-only load: a real source dir
	}
	if fi, err := os.Stat(l.SourceDir(m, v)); err == nil && fi.IsDir() {
		return true, true
	}
	return false, false
}

// Builds lists the kernel/arch pairs module/version is built for, filtered
// by glob patterns (empty = all), in name order.
func (l Layout) Builds(module, version, kernelGlob, archGlob string) []Build {
	vdir := l.VersionDir(module, version)
	kernels, _ := readDirNames(vdir)
	var out []Build
	for _, k := range kernels {
		if !kernelDirRE.MatchString(k) || !globMatch(kernelGlob, k) {
			continue
		}
		arches, _ := readDirNames(filepath.Join(vdir, k))
		for _, a := range arches {
			if strings.HasPrefix(a, ".") || !globMatch(archGlob, a) {
				continue
			}
			if fi, err := os.Stat(filepath.Join(vdir, k, a, "module")); err != nil || !fi.IsDir() {
				continue
			}
			out = append(out, Build{Kernel: k, Arch: a, Installed: l.InstalledVersion(module, k, a) == version})
		}
	}
	return out
}

// InstalledVersion is the version of module installed for kernel/arch
// (what its kernel-<kernel>-<arch> link points to), or "".
func (l Layout) InstalledVersion(module, kernel, arch string) string {
	link := l.KernelLink(module, kernel, arch)
	target, err := os.Readlink(link)
	if err != nil {
		return ""
	}
	// dkms writes "<version>/<kernel>/<arch>"; an absolute link from an
	// older dkms is accepted if it points into this module's dir.
	if filepath.IsAbs(target) {
		rel, err := filepath.Rel(l.ModuleDir(module), target)
		if err != nil {
			return ""
		}
		target = rel
	}
	parts := strings.Split(filepath.Clean(target), "/")
	if len(parts) != 3 || parts[1] != kernel || parts[2] != arch {
		return ""
	}
	if fi, err := os.Stat(filepath.Join(l.BuiltDir(module, parts[0], kernel, arch), "module")); err != nil || !fi.IsDir() {
		return ""
	}
	return parts[0]
}

// FindModuleFile returns dir/name.ko or its compressed form, whichever
// exists, or "".
func FindModuleFile(dir, name string) string {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		p := filepath.Join(dir, name+ext)
		if _, err := os.Lstat(p); err == nil {
			return p
		}
	}
	return ""
}

// readDirNames lists a directory's entries sorted byte-wise.
func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// globMatch is a shell glob match of one path component; "" matches all.
func globMatch(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	ok, err := filepath.Match(pattern, name)
	return err == nil && ok
}
