package lifecycle

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// writeFileAtomic writes data to path through atomicfile (the old file or
// the new one survives a crash, never a torn one), naming the path, and the
// full disk when that is why, if it fails.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	err := atomicfile.Write(path, data, mode, "")
	var ae *atomicfile.Error
	if !errors.As(err, &ae) {
		return err
	}
	if ae.Op == atomicfile.OpSyncDir {
		return ae.Err
	}
	return diskError(path, ae.Err)
}

// copyFileAtomic copies src to dst atomically.
func copyFileAtomic(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	return writeFileAtomic(dst, data, fi.Mode().Perm())
}

// symlinkAtomic points link at target, replacing what was there in one
// rename.
func symlinkAtomic(target, link string) error {
	tmp := filepath.Join(filepath.Dir(link), fmt.Sprintf(".dkmsd-link-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Symlink(target, tmp); err != nil {
		return diskError(link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return diskError(link, err)
	}
	return atomicfile.SyncDir(filepath.Dir(link))
}

// diskError names the path a write failed on, and the full disk when
// that is why.
func diskError(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &Error{Kind: KindDiskFull, Lines: []string{fmt.Sprintf("No space left on the device holding %s.", path), "Nothing was changed there; free some space and run the command again."}, Err: err}
	}
	if errors.Is(err, syscall.EROFS) {
		return &Error{Kind: KindInternal, Lines: []string{fmt.Sprintf("%s is on a read-only file system.", path)}, Err: err}
	}
	return fmt.Errorf("write %s: %w", path, err)
}

// copyTree copies the directory src to dst (which must not exist) keeping
// modes, symlinks and modification times, as cp -a does. src itself may be
// a symlink to a directory.
func copyTree(src, dst string) error {
	src, err := filepath.EvalSymlinks(src)
	if err != nil {
		return err
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.IsDir():
			if err := os.MkdirAll(target, info.Mode().Perm()|0o700); err != nil {
				return diskError(target, err)
			}
			return nil
		case info.Mode().IsRegular():
			if err := copyFile(p, target, info.Mode().Perm()); err != nil {
				return err
			}
			return os.Chtimes(target, info.ModTime(), info.ModTime())
		default:
			return nil // sockets, devices: not part of a module source
		}
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return diskError(dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return diskError(dst, err)
	}
	if err := out.Close(); err != nil {
		return diskError(dst, err)
	}
	return os.Chmod(dst, mode)
}

// removeEmptyParents removes dir and its parents while they are empty,
// stopping at stop (exclusive).
func removeEmptyParents(dir, stop string) {
	for dir != stop && len(dir) > len(stop) {
		if err := os.Remove(dir); err != nil {
			return
		}
		dir = filepath.Dir(dir)
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
