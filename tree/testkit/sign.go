package testkit

import (
	"os"
	"strings"
)

// SignAnywhere is the environment setting that makes dkms sign modules
// wherever the tests run. dkmsd's default, dkms 3.4's
// try_sign_modules=not_in_chroot, signs nothing in a chroot, and a fresh
// debootstrap root the suite is run in is one; tests of signing assert
// signed modules whatever the machine. The default itself is tested with
// the setting cleared (TestTrySignModulesChrootRealHeaders).
const SignAnywhere = "try_sign_modules=true"

// SignInChroots sets SignAnywhere in the test process's environment, for
// the dkms runs it starts and the Envs it makes (a package's TestMain
// calls it).
func SignInChroots() {
	name, value, _ := strings.Cut(SignAnywhere, "=")
	os.Setenv(name, value)
}
