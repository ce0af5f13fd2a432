// Package atomicfile replaces files so that a crash leaves the old file or
// the new one, never a torn one: the data goes to a temporary file beside
// the target, is fsynced, renamed over it, and the directory is fsynced.
// It is the one writer the trees, the hooks' records and initrds share.
//
//	if err := atomicfile.Write("/var/lib/dkms/.dkmsd/x.json", data, 0o644, ""); err != nil {
//		var e *atomicfile.Error // e.Op says which step failed
//	}
package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// The steps a write can fail at, for callers whose message depends on it.
const (
	OpCreate  = "create"  // the temporary file could not be made
	OpWrite   = "write"   // writing, chmod or fsync of the temporary file
	OpClose   = "close"   // closing the temporary file
	OpRename  = "rename"  // renaming it over the target
	OpSyncDir = "syncdir" // the new name is in place; fsync of the dir failed
)

// Error is a failed step, wrapping the system's error.
type Error struct {
	Op  string
	Err error
}

func (e *Error) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Write replaces path with data, with the given mode. tmpPattern names the
// temporary file as os.CreateTemp does; "" is ".dkmsd-<name>-*", the
// pattern dkmsd's sweep of killed processes' leftovers knows. A failure
// before the rename removes the temporary file and leaves path as it was.
func Write(path string, data []byte, mode fs.FileMode, tmpPattern string) error {
	return WriteParts(path, [][]byte{data}, mode, tmpPattern)
}

// WriteParts is Write with the data in parts, written one after the other
// (an initrd and the segment appended to it, without joining them in
// memory first).
func WriteParts(path string, parts [][]byte, mode fs.FileMode, tmpPattern string) error {
	return WriteWith(path, mode, tmpPattern, func(f *os.File) error {
		for _, data := range parts {
			if _, err := f.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteWith is Write with the contents written by fill into the temporary
// file (an initrd whose first part is copied file to file); an error from
// fill is an OpWrite error.
func WriteWith(path string, mode fs.FileMode, tmpPattern string, fill func(*os.File) error) error {
	dir := filepath.Dir(path)
	if tmpPattern == "" {
		tmpPattern = ".dkmsd-" + filepath.Base(path) + "-*"
	}
	tmp, err := os.CreateTemp(dir, tmpPattern)
	if err != nil {
		return &Error{OpCreate, err}
	}
	name := tmp.Name()
	if err := writeSync(tmp, fill, mode); err != nil {
		tmp.Close()
		os.Remove(name)
		return &Error{OpWrite, err}
	}
	if err := tmp.Close(); err != nil {
		os.Remove(name)
		return &Error{OpClose, err}
	}
	if err := os.Rename(name, path); err != nil {
		os.Remove(name)
		return &Error{OpRename, err}
	}
	if err := SyncDir(dir); err != nil {
		return &Error{OpSyncDir, err}
	}
	return nil
}

func writeSync(f *os.File, fill func(*os.File) error, mode fs.FileMode) error {
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	return f.Sync()
}

// SyncDir fsyncs a directory, so a rename or a new link in it survives a
// crash. File systems that cannot (EINVAL) are not an error.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}
