package lifecycle_test

import (
	"os"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestMain: the tests assert signed modules even when the suite runs in
// a chroot (see testkit.SignAnywhere).
func TestMain(m *testing.M) {
	testkit.SignInChroots()
	os.Exit(m.Run())
}
