package testkit

import (
	"os/exec"
	"testing"
)

func TestExecSplitsOutputAndKeepsTheExitCode(t *testing.T) {
	r, err := Exec(exec.Command("sh", "-c", "echo out; echo err >&2; exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	// Out interleaves two pipes: which line comes first is the
	// scheduler's choice.
	if r.Stdout != "out\n" || r.Stderr != "err\n" || r.Code != 3 || (r.Out != "out\nerr\n" && r.Out != "err\nout\n") {
		t.Errorf("Exec = %+v, want stdout \"out\\n\", stderr \"err\\n\", both in Out, code 3", r)
	}
}

func TestExecSaysWhenTheCommandCannotStart(t *testing.T) {
	if _, err := Exec(exec.Command("/nonexistent/dkmsd-test-program")); err == nil {
		t.Error("Exec of a missing program: no error")
	}
}
