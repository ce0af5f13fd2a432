package lifecycle

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
)

// Jobserver is a GNU make jobserver: a pipe holding one byte per free job
// slot. dkmsd takes a slot for each make it starts and hands the pipe to
// it through MAKEFLAGS (--jobserver-auth=R,W, which make 4.3 reads), so
// every make and sub-make of every concurrent build draws from one budget:
// the number of jobs running across all builds never exceeds Slots.
type Jobserver struct {
	Slots  int
	r, w   *os.File
	tokens chan struct{}
}

// NewJobserver makes a jobserver with n slots.
func NewJobserver(n int) (*Jobserver, error) {
	if n < 1 {
		n = 1
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("jobserver pipe: %w", err)
	}
	// One byte per slot; make returns each byte it took when its job ends.
	if _, err := w.Write([]byte(strings.Repeat("+", n))); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("jobserver pipe: %w", err)
	}
	return &Jobserver{Slots: n, r: r, w: w}, nil
}

// Acquire takes one slot from the pipe for a make about to start (its
// first job runs on it), waiting until one is free or ctx ends.
func (j *Jobserver) Acquire(ctx context.Context) error {
	done := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := j.r.Read(b)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// The read may still take a token later; give it back then.
		go func() {
			if err := <-done; err == nil {
				j.Release()
			}
		}()
		return ctx.Err()
	}
}

// Release returns a slot.
func (j *Jobserver) Release() {
	_, _ = j.w.Write([]byte("+"))
}

// Files are the descriptors a child needs, in the order of ExtraFiles:
// they become fds 3 and 4 in the child.
func (j *Jobserver) Files() []*os.File { return []*os.File{j.r, j.w} }

// MakeFlags is the MAKEFLAGS value for a child that got Files() as fds 3
// and 4. Other flags of the caller's MAKEFLAGS are kept; its -j and any
// jobserver it named are replaced.
func (j *Jobserver) MakeFlags(callerFlags string) string {
	var keep []string
	for _, f := range strings.Fields(callerFlags) {
		if jobsFlagRE.MatchString(f) || strings.HasPrefix(f, "--jobserver-auth=") || strings.HasPrefix(f, "--jobserver-fds=") {
			continue
		}
		keep = append(keep, f)
	}
	keep = append(keep, fmt.Sprintf("-j%d", j.Slots), "--jobserver-auth=3,4")
	return strings.Join(keep, " ")
}

// Close closes the pipe.
func (j *Jobserver) Close() {
	j.r.Close()
	j.w.Close()
}

var jobsFlagRE = regexp.MustCompile(`^-j[0-9]*$`)

// JobsFromMakeflags returns the -jN in a MAKEFLAGS value, or 0.
func JobsFromMakeflags(flags string) int {
	for _, f := range strings.Fields(flags) {
		if n, ok := strings.CutPrefix(f, "-j"); ok {
			if v, err := strconv.Atoi(n); err == nil && v > 0 {
				return v
			}
		}
	}
	return 0
}
