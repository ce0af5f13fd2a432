package initrd

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"crypto/sha256"
	"encoding/hex"

	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// WriteAtomic replaces the image at path with data: written beside it,
// fsynced, renamed over it, so the old image stays whole until the new one
// is complete, and a crash never leaves a half-written file in /boot. It
// checks the free space first and names what is missing.
func WriteAtomic(path string, parts ...[]byte) error {
	_, err := WriteImage(path, nil, parts)
	return err
}

// WriteImage is WriteAtomic for an image whose first part may be the
// start of the mapped image m (the base an append keeps): those bytes are
// copied file to file, never through user space. It returns the identity
// of the file written, once it is in place (nil when another program's
// file replaced it in between, or the file system gives none).
func WriteImage(path string, m *Mapped, out Output) (*FileID, error) {
	id, err := writeImage(path, m, out)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil || id == nil {
		return nil, nil
	}
	if now := IDOf(fi); now != nil && now.Dev == id.Dev && now.Ino == id.Ino && now.Size == id.Size {
		return now, nil // the rename moved the change time: take it now
	}
	return nil, nil
}

func writeImage(path string, m *Mapped, out Output) (*FileID, error) {
	size := out.Len()
	dir := filepath.Dir(path)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		free := uint64(st.Bavail) * uint64(st.Bsize)
		if need := uint64(size) + 1<<20; free < need {
			return nil, fmt.Errorf("not enough space in %s for the new initrd: %d bytes free, %d needed; %s is unchanged", dir, free, need, path)
		}
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	var id *FileID
	err := atomicfile.WriteWith(path, mode, "."+filepath.Base(path)+".dkmsd-*", func(f *os.File) error {
		parts := [][]byte(out)
		if len(parts) > 0 && m.holds(parts[0]) {
			if err := m.copyPrefix(f, len(parts[0])); err != nil {
				return err
			}
			parts = parts[1:]
		}
		for _, p := range parts {
			if _, err := f.Write(p); err != nil {
				return err
			}
		}
		if fi, err := f.Stat(); err == nil {
			id = IDOf(fi)
		}
		return nil
	})
	var ae *atomicfile.Error
	if !errors.As(err, &ae) {
		return id, err
	}
	switch ae.Op {
	case atomicfile.OpSyncDir:
		return id, nil // the new image is in place
	case atomicfile.OpWrite:
		if errors.Is(ae.Err, syscall.ENOSPC) {
			return nil, fmt.Errorf("no space left in %s for the new initrd (%d bytes); %s is unchanged", dir, size, path)
		}
		return nil, fmt.Errorf("write initrd %s: %w; it is unchanged", path, ae.Err)
	default:
		return nil, fmt.Errorf("write initrd %s: %w", path, ae.Err)
	}
}

// State records where the image's own bytes end when dkmsd appended a
// segment, so the next run drops that segment instead of stacking another,
// and which file dkmsd wrote: while the image is that very file (same
// inode, size, modification and change times) its base is known without
// reading it.
type State struct {
	// BaseLen and BaseSHA256 describe the image as its generator wrote it.
	BaseLen    int    `json:"base_len"`
	BaseSHA256 string `json:"base_sha256"`
	// Len is the length of the image dkmsd wrote.
	Len int `json:"len"`
	// File identifies the image dkmsd wrote; nil in states written
	// before it was recorded.
	File *FileID `json:"file,omitempty"`
}

// FileID identifies one version of a file: another program's new image
// is a new inode (they write and rename), and even a rewrite in place
// moves the change time, which no program can set back.
type FileID struct {
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
}

// IDOf identifies the file fi describes; nil when the system gives no
// inode data.
func IDOf(fi os.FileInfo) *FileID {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	return &FileID{Dev: uint64(st.Dev), Ino: st.Ino, Size: st.Size,
		Mtime: st.Mtim.Sec*1e9 + st.Mtim.Nsec, Ctime: st.Ctim.Sec*1e9 + st.Ctim.Nsec}
}

// Known returns the recorded base when fi is the file dkmsd wrote, with
// no need to read it; ok is false otherwise.
func (s *State) Known(fi os.FileInfo) (baseLen int, digest string, ok bool) {
	id := IDOf(fi)
	if s == nil || s.File == nil || id == nil || *id != *s.File || s.BaseLen <= 0 || int64(s.Len) != fi.Size() || s.BaseLen > s.Len {
		return 0, "", false
	}
	return s.BaseLen, s.BaseSHA256, true
}

// BaseLenOf returns where the generator's bytes end in data according to
// state: 0 (the whole image is the base) when there is no state or the
// image was regenerated since.
func (s *State) BaseLenOf(data []byte) int {
	if s == nil || s.BaseLen <= 0 || s.BaseLen > len(data) || s.Len != len(data) {
		return 0
	}
	if sum := sha256.Sum256(data[:s.BaseLen]); hex.EncodeToString(sum[:]) != s.BaseSHA256 {
		return 0
	}
	return s.BaseLen
}

// BaseOf returns where the generator's bytes end in data and their
// digest: the recorded base when data is the image dkmsd wrote on it,
// otherwise the whole of data (digest "" then: not computed yet).
func (s *State) BaseOf(data []byte) (int, string) {
	if n := s.BaseLenOf(data); n > 0 {
		return n, s.BaseSHA256
	}
	return len(data), ""
}

// NewState describes an image of total length n built on data[:baseLen].
func NewState(data []byte, baseLen, n int) *State {
	sum := sha256.Sum256(data[:baseLen])
	return &State{BaseLen: baseLen, BaseSHA256: hex.EncodeToString(sum[:]), Len: n}
}

// LoadState reads a state file; a missing or unreadable one is nil.
func LoadState(path string) *State {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var s State
	if json.Unmarshal(b, &s) != nil {
		return nil
	}
	return &s
}

// Save writes the state file atomically.
func (s *State) Save(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644, "")
}
