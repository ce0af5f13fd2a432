package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// LockFile is the name of the per-tree lock in the dkms tree. Its leading
// dot keeps it out of dkms's module globs.
const LockFile = ".dkmsd.lock"

// DefaultLockReport is how often a process waiting for the lock says who
// holds it and what that process is doing.
const DefaultLockReport = 30 * time.Second

// lockPoll is how often a waiter tries the lock again. Polling, unlike a
// blocking flock(2) in a goroutine, leaves nothing behind that could take
// the lock after the waiter has given up.
const lockPoll = 100 * time.Millisecond

// LockHolder is what the lock file says of the process holding the lock.
type LockHolder struct {
	PID     int
	Since   time.Time
	Command string
	// Doing is the step the holder reported last ("build-started
	// foo/1.0 for 6.1.0-13-amd64 (x86_64)"), DoingSince when.
	Doing      string
	DoingSince time.Time
}

// String describes the holder for a waiter's message.
func (h LockHolder) String() string {
	if h.PID == 0 {
		return "another dkms"
	}
	s := "process " + strconv.Itoa(h.PID)
	if h.Command != "" {
		s += " (" + h.Command + ")"
	}
	if !h.Since.IsZero() {
		s += fmt.Sprintf(", holding it since %s (%s)", h.Since.Format(time.TimeOnly), time.Since(h.Since).Round(time.Second))
	}
	if h.Doing != "" {
		s += ", last step: " + h.Doing
		if !h.DoingSince.IsZero() {
			s += " at " + h.DoingSince.Format(time.TimeOnly)
		}
	}
	return s
}

func (h LockHolder) encode() []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "pid=%d\nsince=%s\ncommand=%s\n", h.PID, h.Since.Format(time.RFC3339), h.Command)
	if h.Doing != "" {
		fmt.Fprintf(&b, "doing=%s\ndoing_since=%s\n", h.Doing, h.DoingSince.Format(time.RFC3339))
	}
	return []byte(b.String())
}

// ReadLockHolder reads the lock file of a tree. A file written by an older
// dkmsd holds only the PID.
func ReadLockHolder(path string) LockHolder {
	var h LockHolder
	b, err := os.ReadFile(path)
	if err != nil || len(b) > 4096 {
		return h
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			if n, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
				h.PID = n
			}
			continue
		}
		switch k {
		case "pid":
			h.PID, _ = strconv.Atoi(v)
		case "since":
			h.Since, _ = time.Parse(time.RFC3339, v)
		case "command":
			h.Command = v
		case "doing":
			h.Doing = v
		case "doing_since":
			h.DoingSince, _ = time.Parse(time.RFC3339, v)
		}
	}
	return h
}

// BusyError is a lock not obtained within the caller's bound.
type BusyError struct {
	Path   string
	Holder LockHolder
	Waited time.Duration
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("the DKMS tree is busy: %s is held by %s; gave up after %s", e.Path, e.Holder, e.Waited.Round(time.Second))
}

// IsBusy reports a lock not obtained in time.
func IsBusy(err error) bool {
	var b *BusyError
	return errors.As(err, &b)
}

// LockTree takes the tree's exclusive lock, waiting while another process
// holds it: without limit, or at most e.LockWait when that is set (then a
// *BusyError). Every e.LockReport (DefaultLockReport when 0) the waiter
// says who holds the lock, since when and doing what. Under the lock the
// holder records its steps in the lock file for such waiters. The returned
// function releases it.
func LockTree(ctx context.Context, e *Env) (func(), error) {
	if err := os.MkdirAll(e.Layout.DKMSTree, 0o755); err != nil {
		return nil, fmt.Errorf("lock dkms tree: %w", err)
	}
	path := filepath.Join(e.Layout.DKMSTree, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock dkms tree: %w", err)
	}
	if err := waitLock(ctx, e, f, path); err != nil {
		f.Close()
		return nil, err
	}
	progress := &lockProgress{inner: e.Sink, f: f,
		holder: LockHolder{PID: os.Getpid(), Since: time.Now(), Command: commandLine()}}
	progress.write()
	e.Sink = progress
	// A process killed while holding the lock may have left an install or
	// uninstall half-done: finish or undo it first.
	Recover(ctx, e)
	return func() {
		e.Sink = progress.inner
		progress.release()
	}, nil
}

// waitLock takes the flock on f, reporting the holder while it waits.
func waitLock(ctx context.Context, e *Env, f *os.File, path string) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return nil
	}
	if err != unix.EWOULDBLOCK {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	start := time.Now()
	e.warn("Waiting for %s: %s is working on this tree...", path, ReadLockHolder(path))
	every := e.LockReport
	if every <= 0 {
		every = DefaultLockReport
	}
	nextReport := start.Add(every)
	poll := time.NewTicker(lockPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("lock %s: %w", path, ctx.Err())
		case now := <-poll.C:
			err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				e.warn("Waited %.1fs for %s; continuing with the tree as that process left it.", time.Since(start).Seconds(), path)
				return nil
			}
			if err != unix.EWOULDBLOCK {
				return fmt.Errorf("lock %s: %w", path, err)
			}
			if e.LockWait > 0 && now.Sub(start) >= e.LockWait {
				return &BusyError{Path: path, Holder: ReadLockHolder(path), Waited: now.Sub(start)}
			}
			if !now.Before(nextReport) {
				e.warn("Still waiting for %s (%s): %s.", path, now.Sub(start).Round(time.Second), ReadLockHolder(path))
				nextReport = now.Add(every)
			}
		}
	}
}

// commandLine is this process's command line, for waiters to read.
func commandLine() string {
	args := append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...)
	s := strings.Join(args, " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strings.ReplaceAll(s, "\n", " ")
}

// lockProgress passes events on and records the holder's latest step in
// the lock file.
type lockProgress struct {
	inner  Sink
	mu     sync.Mutex
	f      *os.File
	holder LockHolder
}

func (p *lockProgress) Emit(ev Event) {
	if step := stepOf(ev); step != "" {
		p.mu.Lock()
		p.holder.Doing, p.holder.DoingSince = step, time.Now()
		p.write()
		p.mu.Unlock()
	}
	p.inner.Emit(ev)
}

// stepOf describes an event that marks a step of the holder's work.
func stepOf(ev Event) string {
	switch ev.Type {
	case Info, Warning, TransactionSummary:
		return ""
	}
	s := ev.Type.String()
	if ev.Module != "" {
		s += " " + ev.Module + "/" + ev.Version
	}
	if ev.Kernel != "" {
		s += " for " + ev.Kernel
		if ev.Arch != "" {
			s += " (" + ev.Arch + ")"
		}
	}
	return s
}

// write records the holder; a waiter may read it half-written and then
// shows less, never wrong, information.
func (p *lockProgress) write() {
	_ = p.f.Truncate(0)
	_, _ = p.f.WriteAt(p.holder.encode(), 0)
}

func (p *lockProgress) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.f.Truncate(0)
	_ = unix.Flock(int(p.f.Fd()), unix.LOCK_UN)
	p.f.Close()
}
