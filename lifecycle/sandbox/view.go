package sandbox

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// view builds the bwrap arguments that make paths reachable inside the
// sandbox at their own paths. Inside, / is the machine's, read-only, and
// /tmp an empty tmpfs. A path below /tmp, or below a directory the build
// user may not enter (a test's 0700 temporary dir), is rebuilt: the
// directories the user could not enter become empty directories of the
// sandbox's own, and the first one the user may enter is bound from the
// machine, with everything below it. What the user could not read
// outside stays out of reach: nothing is made readable that was not.
type view struct {
	uid, gid uint32
	args     []string
	// made are the paths already set up inside: true for a directory
	// rebuilt empty (what is below it must be set up too), false for a
	// bind or a symlink (what is below it is the machine's).
	made map[string]bool
	// depth bounds the symlinks followed.
	depth int
}

func newView(uid, gid uint32) *view {
	return &view{uid: uid, gid: gid, made: map[string]bool{"/tmp": true}}
}

// reach makes p reachable. whole: p is a directory whose entries must be
// there too, even when the user may not enter p itself (each entry is
// then set up on its own).
func (v *view) reach(p string, whole bool) {
	if !filepath.IsAbs(p) || v.depth > 8 {
		return
	}
	p = filepath.Clean(p)
	comps := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	rebuilt := false // inside a directory rebuilt empty
	for i, c := range comps {
		if c == "" {
			continue
		}
		cur = filepath.Join(cur, c)
		last := i == len(comps)-1
		if empty, done := v.made[cur]; done {
			rebuilt = empty
			if !empty {
				return // bound: all below is the machine's
			}
			if last && whole {
				v.entries(cur)
			}
			continue
		}
		fi, err := os.Lstat(cur)
		if err != nil {
			return // not there: nothing to show
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(cur)
			if err != nil {
				return
			}
			if rebuilt {
				v.made[cur] = false
				v.args = append(v.args, "--symlink", target, cur)
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(filepath.Dir(cur), target)
			}
			v.depth++
			v.reach(filepath.Join(append([]string{target}, comps[i+1:]...)...), whole)
			v.depth--
			return
		}
		enter := !fi.IsDir() || v.mayEnter(fi)
		switch {
		case rebuilt && enter:
			v.made[cur] = false
			v.args = append(v.args, "--ro-bind", cur, cur)
			return
		case rebuilt:
			v.made[cur] = true
			v.args = append(v.args, "--perms", "0755", "--dir", cur)
		case !enter:
			// The machine's directory, closed to the user: an empty one
			// of the sandbox's own takes its place.
			v.made[cur] = true
			rebuilt = true
			v.args = append(v.args, "--perms", "0755", "--tmpfs", cur)
		}
		if last && whole && v.made[cur] {
			v.entries(cur)
		}
	}
}

// entries sets up each entry of the machine's dir dir inside the
// rebuilt dir of that name.
func (v *view) entries(dir string) {
	list, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range list {
		v.reach(filepath.Join(dir, e.Name()), false)
	}
}

// mayReach reports whether the build user may enter every directory of
// dir ("": the working directory).
func (v *view) mayReach(dir string) bool {
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return false
		}
		dir = wd
	}
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || !v.mayEnter(fi) {
			return false
		}
		if p == "/" {
			return true
		}
	}
}

// mayEnter reports whether the build user may search the directory.
func (v *view) mayEnter(fi fs.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == v.uid:
		return perm&0o100 != 0
	case st.Gid == v.gid:
		return perm&0o010 != 0
	}
	return perm&0o001 != 0
}

// mask hides the secret file f: an empty file takes its place, and an
// empty directory takes its directory's place unless one of keep (paths
// the command needs) is below it.
func (v *view) mask(f string, keep []string) {
	if f == "" || !filepath.IsAbs(f) {
		return
	}
	f = filepath.Clean(f)
	dir := filepath.Dir(f)
	if dir != "/" && isDir(dir) {
		needed := false
		for _, k := range keep {
			if k != "" && (k == dir || strings.HasPrefix(filepath.Clean(k)+"/", dir+"/")) {
				needed = true
			}
		}
		if !needed {
			v.args = append(v.args, "--tmpfs", dir)
			return
		}
	}
	if fi, err := os.Lstat(f); err == nil && fi.Mode().IsRegular() {
		v.args = append(v.args, "--ro-bind", "/dev/null", f)
	}
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
