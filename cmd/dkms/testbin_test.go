package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// testBinary is the dkms command built for this test process.
var testBinary struct {
	once sync.Once
	path string
	err  error
}

// dkmsdBinary builds this package's dkms command once per test process and
// returns its path; tests and benchmarks that run the command as a process
// share it. The binary sits in a dkmsd-testbin-* directory under
// os.TempDir, left in place when the process exits (there is no TestMain
// to remove it, and a test's TempDir would vanish under the other tests).
func dkmsdBinary(tb testing.TB) string {
	tb.Helper()
	testBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "dkmsd-testbin-")
		if err != nil {
			testBinary.err = err
			return
		}
		bin := filepath.Join(dir, "dkms")
		// go test runs in the package directory and puts its own go first
		// on PATH.
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			testBinary.err = fmt.Errorf("go build ./cmd/dkms: %v\n%s", err, out)
			return
		}
		testBinary.path = bin
	})
	if testBinary.err != nil {
		tb.Fatal(testBinary.err)
	}
	return testBinary.path
}
