package lifecycle

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The administrator's per-module overrides in /etc/dkms/<module>/ (dkms
// 3.4): patches/ is laid over the source's patches/ before the PATCH
// entries are applied, and a script the dkms.conf names runs from
// /etc/dkms/<module>/ when an executable of that name is there. Both
// follow the configuration dir (--root moves it).

// moduleConfDir is /etc/dkms/<module>.
func (e *Env) moduleConfDir(module string) string {
	return filepath.Join(e.Layout.ConfDir, module)
}

// overlayPatches copies /etc/dkms/<module>/patches/ into the build dir's
// patches/, keeping its sub-directories: a file there replaces the
// source's file of the same path. Only the patches PATCH names are
// applied, as with the source's own.
func (e *Env) overlayPatches(module, buildDir string) error {
	src := filepath.Join(e.moduleConfDir(module), "patches")
	if !isDir(src) {
		return nil
	}
	dst := filepath.Join(buildDir, "patches")
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		// Replace, never write through: the source's file of that name
		// may be a symlink.
		if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
			return diskError(target, err)
		}
		if d.Type()&fs.ModeSymlink != 0 {
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return copyFile(p, target, 0o644)
	})
}

// scriptDir is the dir a dkms.conf script runs from: /etc/dkms/<module>
// when an executable named like the script's first word is there (dkms
// runs the override there), else dir.
func (e *Env) scriptDir(module, dir, script string) string {
	words := strings.Fields(script)
	if len(words) == 0 {
		return dir
	}
	over := e.moduleConfDir(module)
	fi, err := os.Stat(filepath.Join(over, words[0]))
	if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
		return over
	}
	return dir
}
