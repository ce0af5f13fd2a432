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
	size := 0
	for _, p := range parts {
		size += len(p)
	}
	dir := filepath.Dir(path)
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		free := uint64(st.Bavail) * uint64(st.Bsize)
		if need := uint64(size) + 1<<20; free < need {
			return fmt.Errorf("not enough space in %s for the new initrd: %d bytes free, %d needed; %s is unchanged", dir, free, need, path)
		}
	}
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	err := atomicfile.WriteParts(path, parts, mode, "."+filepath.Base(path)+".dkmsd-*")
	var ae *atomicfile.Error
	if !errors.As(err, &ae) {
		return err
	}
	switch ae.Op {
	case atomicfile.OpSyncDir:
		return nil // the new image is in place
	case atomicfile.OpWrite:
		if errors.Is(ae.Err, syscall.ENOSPC) {
			return fmt.Errorf("no space left in %s for the new initrd (%d bytes); %s is unchanged", dir, size, path)
		}
		return fmt.Errorf("write initrd %s: %w; it is unchanged", path, ae.Err)
	default:
		return fmt.Errorf("write initrd %s: %w", path, ae.Err)
	}
}

// State records where the image's own bytes end when dkmsd appended a
// segment, so the next run drops that segment instead of stacking another.
type State struct {
	// BaseLen and BaseSHA256 describe the image as its generator wrote it.
	BaseLen    int    `json:"base_len"`
	BaseSHA256 string `json:"base_sha256"`
	// Len is the length of the image dkmsd wrote.
	Len int `json:"len"`
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
