package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Commands are the binaries under cmd/ that Binaries builds.
var Commands = []string{"dkms", "dkmsd-apt", "dkmsd-dnf", "dkmsd-kernel-install", "dkmsd-notify", "dkmsd-alpm"}

// built holds the commands built once per test process.
var built Once[string]

// Binaries builds every command of the repository once per test process
// and returns the directory holding them (dkms, dkmsd-apt, …). The
// directory is under os.TempDir, world-readable (tests run dkmsd-notify as
// another user), and left in place when the process ends: a test's
// TempDir would vanish under the other tests, and there is no TestMain to
// remove it.
func Binaries(tb testing.TB) string {
	tb.Helper()
	return built.Get(tb, func() (string, error) {
		dir, err := os.MkdirTemp("", "dkmsd-testbin-")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		if err != nil {
			return "", err
		}
		args := []string{"build", "-trimpath", "-o", dir + "/"}
		for _, c := range Commands {
			args = append(args, "./cmd/"+c)
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return dir, nil
	})
}

// Binary is the path of one command built by Binaries ("dkms",
// "dkmsd-apt", …).
func Binary(tb testing.TB, name string) string {
	tb.Helper()
	return filepath.Join(Binaries(tb), name)
}

// StatusLines runs `dkms status` with args (and env added to the
// environment) and returns its lines; it fails the test unless dkms exits
// 0.
func StatusLines(tb testing.TB, dkms string, env []string, args ...string) []string {
	tb.Helper()
	out := Cmd{Argv: append([]string{dkms, "status"}, args...), Env: env}.Run(tb)
	if out.Code != 0 {
		tb.Fatalf("dkms status %s: exit %d\n%s", strings.Join(args, " "), out.Code, out.Out)
	}
	var lines []string
	for _, l := range strings.Split(out.Stdout, "\n") {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
