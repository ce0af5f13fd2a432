package main

import (
	"os"
	"testing"
)

// letOut lets module out of the build sandbox (BUILD_SANDBOX=no in
// <root>/etc/dkms/<module>.conf), for a fixture whose PRE_BUILD counts
// its builds in a file outside its build dir, which the sandbox forbids.
func (b *batchRoot) letOut(t *testing.T, module string) {
	t.Helper()
	if err := os.WriteFile(b.path("etc/dkms", module+".conf"), []byte("BUILD_SANDBOX=no\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
