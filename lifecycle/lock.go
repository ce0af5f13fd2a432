package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// LockFile is the name of the per-tree lock in the dkms tree. Its leading
// dot keeps it out of dkms's module globs.
const LockFile = ".dkmsd.lock"

// LockTree takes the tree's exclusive lock, waiting (and saying so) while
// another process holds it. The returned function releases it.
func LockTree(ctx context.Context, e *Env) (func(), error) {
	if err := os.MkdirAll(e.Layout.DKMSTree, 0o755); err != nil {
		return nil, fmt.Errorf("lock dkms tree: %w", err)
	}
	path := filepath.Join(e.Layout.DKMSTree, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock dkms tree: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if err != unix.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		holder := strings.TrimSpace(readSmall(path))
		if holder != "" {
			holder = " (process " + holder + ")"
		}
		e.warn("Waiting for %s%s: another dkms is working on this tree...", path, holder)
		start := time.Now()
		if err := flockWait(ctx, f); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		e.warn("Waited %.1fs for %s; continuing with the tree as that process left it.", time.Since(start).Seconds(), path)
	}
	// Record who holds it, for the next process's message.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	// A process killed while holding the lock may have left an install or
	// uninstall half-done: finish or undo it first.
	Recover(ctx, e)
	return func() {
		_ = f.Truncate(0)
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// flockWait blocks on the lock, giving up when ctx ends.
func flockWait(ctx context.Context, f *os.File) error {
	done := make(chan error, 1)
	go func() { done <- unix.Flock(int(f.Fd()), unix.LOCK_EX) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// Closing the file does not interrupt flock(2); the goroutine ends
		// when the holder releases it or the process exits.
		return ctx.Err()
	}
}

func readSmall(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) > 64 {
		return ""
	}
	return string(b)
}
