package testkit

import (
	"bytes"
	"sync"
)

// Buffer collects the output of a process that is still running: its
// copying goroutines write while the test reads (a daemon's log for a
// failure message, a command's stderr while waiting for a line).
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
