package testkit

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Result is how a command ended.
type Result struct {
	Out    string // stdout and stderr, interleaved as written
	Stdout string
	Stderr string
	Code   int
	// CPU is the user and system time of the process and every
	// descendant it waited for (wait4's rusage), when run by Exec.
	CPU time.Duration
}

// Cmd is a command to run: Argv with the test process's environment plus
// LC_ALL=C, DEBIAN_FRONTEND=noninteractive and Env, in Dir (the test's
// directory when "").
type Cmd struct {
	Argv  []string
	Env   []string
	Dir   string
	Stdin string
}

// lockedWriter lets stdout and stderr, copied by two goroutines, share one
// buffer.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Run runs c and returns how it ended; it fails the test only when the
// command cannot be started.
func (c Cmd) Run(tb testing.TB) Result {
	tb.Helper()
	cmd := exec.Command(c.Argv[0], c.Argv[1:]...)
	cmd.Dir = c.Dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"), c.Env...)
	if c.Stdin != "" {
		cmd.Stdin = strings.NewReader(c.Stdin)
	}
	r, err := Exec(cmd)
	if err != nil {
		tb.Fatalf("%s: %v", strings.Join(c.Argv, " "), err)
	}
	return r
}

// MustRun runs c and fails the test unless it exits 0; it returns stdout
// and stderr interleaved.
func (c Cmd) MustRun(tb testing.TB) string {
	tb.Helper()
	r := c.Run(tb)
	if r.Code != 0 {
		tb.Fatalf("%s: exit %d\n%s", strings.Join(c.Argv, " "), r.Code, r.Out)
	}
	return r.Out
}

// Run runs argv (see Cmd).
func Run(tb testing.TB, argv ...string) Result {
	tb.Helper()
	return Cmd{Argv: argv}.Run(tb)
}

// MustRun runs argv and fails the test unless it exits 0 (see Cmd).
func MustRun(tb testing.TB, argv ...string) string {
	tb.Helper()
	return Cmd{Argv: argv}.MustRun(tb)
}

// AptGet runs apt-get -y without recommends, waiting for the dpkg lock,
// with downloaded packages kept in the repository's bin/apt-cache (the
// docker-clean Post-Invoke of Debian's container images empties
// /var/cache/apt/archives after every run; bin/ is the build's, so the
// machine keeps nothing of the tests).
func AptGet(tb testing.TB, args ...string) Result {
	tb.Helper()
	RequireTool(tb, "apt-get", "apt")
	cache := filepath.Join(RepoRoot(), "bin", "apt-cache") + "/"
	if err := os.MkdirAll(cache+"partial", 0o755); err != nil {
		tb.Fatal(err)
	}
	argv := append([]string{"apt-get", "-y", "-o", "Dir::Cache::Archives=" + cache, "-o", "Dpkg::Use-Pty=0",
		"-o", "APT::Install-Recommends=false", "-o", "DPkg::Lock::Timeout=300"}, args...)
	return Run(tb, argv...)
}

// UnpackedPackage downloads a Debian package (apt-get download, kept in
// bin/apt-cache/download) and unpacks it into a temporary directory
// without installing it, for tests that need a package's files but must
// not change the machine (cloud-init's units, say).
func UnpackedPackage(tb testing.TB, name string) string {
	tb.Helper()
	RequireTool(tb, "dpkg-deb", "dpkg")
	dir := filepath.Join(RepoRoot(), "bin", "apt-cache", "download")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, name+"_*.deb"))
	if len(debs) == 0 {
		r := Cmd{Argv: []string{"apt-get", "download", name}, Dir: dir}.Run(tb)
		if debs, _ = filepath.Glob(filepath.Join(dir, name+"_*.deb")); r.Code != 0 || len(debs) == 0 {
			Missing(tb, "Debian's "+name+" package to download (apt-get update; apt-get download "+name+" said: "+strings.TrimSpace(r.Out)+")")
		}
	}
	out := tb.TempDir()
	MustRun(tb, "dpkg-deb", "-x", debs[len(debs)-1], out)
	return out
}
