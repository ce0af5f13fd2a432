package testkit

import (
	"bytes"
	"errors"
	"io"
	"os/exec"
	"sync"
)

// Exec runs cmd, which the caller has prepared in full (its whole
// environment, directory, context, process group, WaitDelay), and returns
// how it ended, its output captured as Cmd.Run captures it. Cmd covers a
// command run in the test's environment; Exec is for one that needs a
// clean environment, a deadline or a process group of its own.
//
// A process that exited, or that a signal ended (Code -1), ran: err is nil.
// err says why cmd did not run to an end: it could not start, or its
// output stayed open past WaitDelay (a child it left behind holds it).
// The caller checks its context to tell a deadline from a crash.
func Exec(cmd *exec.Cmd) (Result, error) {
	var out, stdout, stderr bytes.Buffer
	var mu sync.Mutex
	cmd.Stdout = io.MultiWriter(&stdout, lockedWriter{&mu, &out})
	cmd.Stderr = io.MultiWriter(&stderr, lockedWriter{&mu, &out})
	err := cmd.Run()
	r := Result{Out: out.String(), Stdout: stdout.String(), Stderr: stderr.String()}
	if ps := cmd.ProcessState; ps != nil {
		r.CPU = ps.UserTime() + ps.SystemTime()
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
		err = nil
	}
	return r, err
}
