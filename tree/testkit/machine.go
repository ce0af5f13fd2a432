package testkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MachinePaths are the places of the machine's own root that the tests
// which install kernels, hooks or packages may change. Paths that do not
// exist yet are watched too: a test that creates one gets it removed.
var MachinePaths = []string{
	"/boot", "/lib/modules", "/usr/src", "/var/lib/dkms", "/etc/dkms", "/etc/kernel",
	"/etc/apt/apt.conf.d", "/etc/modprobe.d", "/etc/dnf", "/usr/lib/kernel/install.d",
	"/usr/libexec/dkmsd", "/usr/share/initramfs-tools/hooks", "/var/lib/initramfs-tools",
	"/etc/systemd/system", "/etc/systemd/user", "/var/lib/systemd/deb-systemd-helper-enabled",
	"/var/lib/systemd/deb-systemd-user-helper-enabled",
	"/vmlinuz", "/vmlinuz.old", "/initrd.img", "/initrd.img.old",
}

// entry is what was at one path: enough to tell whether it changed and to
// put it back.
type entry struct {
	mode   fs.FileMode
	uid    uint32
	gid    uint32
	size   int64
	mtime  time.Time
	ino    uint64
	target string // a symlink's
	backup string // a regular file's copy (a hard link where the file system allows)
}

func entryOf(fi fs.FileInfo) entry {
	e := entry{mode: fi.Mode(), size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.uid, e.gid, e.ino = st.Uid, st.Gid, st.Ino
	}
	return e
}

// describe is what an entry is, for messages.
func (e entry) describe() string {
	switch {
	case e.mode&fs.ModeSymlink != 0:
		return "link to " + e.target
	case e.mode.IsDir():
		return fmt.Sprintf("directory %o", e.mode.Perm())
	case e.mode.IsRegular():
		return fmt.Sprintf("file %o, %d bytes", e.mode.Perm(), e.size)
	}
	return e.mode.String()
}

// GuardMachine records the paths (files, links, directory trees; absent
// ones too) before a test changes the machine, and when the test ends —
// after every cleanup registered later, so call it first — puts them back:
// what the test created is removed, what it changed or removed is restored
// from a copy taken now (hard links for large files: cheap, and exact as
// long as the test replaces them rather than rewriting them in place,
// which is what dpkg, depmod, update-initramfs and dkmsd do; small files
// are copied). It logs what it put back and
// fails the test for anything it could not.
func GuardMachine(t *testing.T, paths ...string) {
	t.Helper()
	before, err := recordMachine(paths, t.TempDir())
	if err != nil {
		t.Fatalf("guard the machine: %v", err)
	}
	t.Cleanup(func() {
		restored, failed := restoreMachine(paths, before)
		if len(restored) > 0 {
			t.Logf("put back after the test (%d paths):\n%s", len(restored), strings.Join(restored, "\n"))
		}
		if len(failed) > 0 {
			t.Errorf("after the test the machine differs from before it, and could not be put back:\n%s", strings.Join(failed, "\n"))
		}
	})
}

// smallFile is the size up to which a file's copy is a real copy, not a
// hard link: small files are the ones rewritten in place (dkmsd's lock
// file holds its holder while held, and is emptied on release), and
// copying them costs nothing.
const smallFile = 1 << 20

// recordMachine records every path under paths, with a copy of each
// regular file in backups.
func recordMachine(paths []string, backups string) (map[string]entry, error) {
	before := map[string]entry{}
	n := 0
	for _, root := range paths {
		err := filepath.Walk(root, func(p string, fi fs.FileInfo, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) && p == root {
					return nil
				}
				return err
			}
			e := entryOf(fi)
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				e.target, err = os.Readlink(p)
			case fi.Mode().IsRegular():
				n++
				e.backup = filepath.Join(backups, fmt.Sprint(n))
				if fi.Size() <= smallFile {
					err = copyFile(p, e.backup, fi.Mode())
				} else {
					err = linkOrCopy(p, e.backup, fi.Mode())
				}
			}
			before[p] = e
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("record %s: %w", root, err)
		}
	}
	return before, nil
}

// restoreMachine makes the paths what before says; it returns what it
// changed and what it could not.
func restoreMachine(paths []string, before map[string]entry) (restored, failed []string) {
	// What is there now that was not: removed, the topmost path first.
	now := map[string]bool{}
	for _, root := range paths {
		_ = filepath.Walk(root, func(p string, fi fs.FileInfo, err error) error {
			if err != nil {
				return nil
			}
			now[p] = true
			if _, ok := before[p]; !ok {
				if err := os.RemoveAll(p); err != nil {
					failed = append(failed, fmt.Sprintf("%s: new, and not removed: %v", p, err))
				} else {
					restored = append(restored, p+": new, removed")
				}
				if fi.IsDir() {
					return filepath.SkipDir
				}
			}
			return nil
		})
	}
	// What was there: put back where it differs, parents before children.
	for _, p := range slices.Sorted(maps.Keys(before)) {
		e := before[p]
		fi, err := os.Lstat(p)
		if err == nil && same(p, fi, e) {
			continue
		}
		what := "changed"
		if err != nil {
			what = "gone"
		}
		if err := putBack(p, e); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %s (was %s), not put back: %v", p, what, e.describe(), err))
			continue
		}
		restored = append(restored, fmt.Sprintf("%s: %s, put back (%s)", p, what, e.describe()))
	}
	return restored, failed
}

// same says whether what is at p (fi) is what e recorded. A directory's
// times are not compared (its entries are); a file replaced by one with
// the same bytes, mode and owner is the same.
func same(p string, fi fs.FileInfo, e entry) bool {
	now := entryOf(fi)
	if now.mode != e.mode || now.uid != e.uid || now.gid != e.gid {
		return false
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(p)
		return err == nil && target == e.target
	case fi.Mode().IsRegular():
		if now.size != e.size {
			return false
		}
		if now.ino == e.ino && now.mtime.Equal(e.mtime) {
			return true
		}
		if now.ino == e.ino && linked(e.backup, e.ino) {
			// Rewritten in place: its hard-linked copy is the same
			// inode, so comparing bytes would prove nothing.
			return false
		}
		return sameBytes(p, e.backup)
	}
	return true
}

// linked says whether the copy at backup is the inode ino itself.
func linked(backup string, ino uint64) bool {
	fi, err := os.Stat(backup)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Ino == ino
}

func sameBytes(a, b string) bool {
	fa, err := os.Open(a)
	if err != nil {
		return false
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<16), make([]byte, 1<<16)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if !bytes.Equal(ba[:na], bb[:nb]) {
			return false
		}
		if ea != nil {
			return ea == io.EOF || ea == io.ErrUnexpectedEOF
		}
	}
}

// putBack makes p what e recorded.
func putBack(p string, e entry) error {
	if e.mode.IsDir() {
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			if err := os.Mkdir(p, e.mode.Perm()); err != nil {
				return err
			}
		}
		if err := os.Chmod(p, e.mode.Perm()|e.mode&(fs.ModeSetgid|fs.ModeSetuid|fs.ModeSticky)); err != nil {
			return err
		}
		return os.Lchown(p, int(e.uid), int(e.gid))
	}
	if err := os.RemoveAll(p); err != nil {
		return err
	}
	switch {
	case e.mode&fs.ModeSymlink != 0:
		if err := os.Symlink(e.target, p); err != nil {
			return err
		}
	case e.mode.IsRegular():
		fi, err := os.Stat(e.backup)
		if err != nil {
			return fmt.Errorf("the copy taken before: %w", err)
		}
		if got := entryOf(fi); got.size != e.size || !got.mtime.Equal(e.mtime) {
			return fmt.Errorf("the test rewrote the file in place, so its copy changed too")
		}
		if err := linkOrCopy(e.backup, p, e.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, e.mode.Perm()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("a %s cannot be recreated", e.mode.Type())
	}
	return os.Lchown(p, int(e.uid), int(e.gid))
}

// linkOrCopy makes dst a hard link to src, or a copy with its mode and
// modification time where src's file system is another.
func linkOrCopy(src, dst string, mode fs.FileMode) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return copyFile(src, dst, mode)
}

// copyFile copies src to a new dst with mode and src's modification time.
func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode.Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chtimes(dst, fi.ModTime(), fi.ModTime())
}
