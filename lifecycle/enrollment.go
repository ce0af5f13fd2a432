package lifecycle

import (
	"context"
	"errors"
	"fmt"

	"github.com/dkmsd/dkmsd/lifecycle/secureboot"
)

// ErrSecureBootEnforced is a KeyNotEnrolled event's Err when the kernel
// refuses modules signed by keys it does not trust.
var ErrSecureBootEnforced = errors.New("secure boot is enforced: modules signed with this key will not load")

// checkEnrollment says, once per command and certificate, that modules
// were signed with a key the running kernel does not trust — the cause
// of "Key was rejected by service" (dkms-project/dkms #429). Under
// Secure Boot it is a warning on the terminal with the command that
// enrols the key; with Secure Boot off it is one line for the journal
// (dkms 3.0.10 says nothing there, and the modules load). Nothing is
// said when the keyrings cannot be read.
func (e *Env) checkEnrollment(ctx context.Context, cert string) {
	if !e.warned.first("enrollment " + cert) {
		return
	}
	st, err := secureboot.Probe{Root: e.Layout.Root, Mokutil: findTool(e.Environ, "mokutil")}.Check(ctx, cert)
	if err != nil || !st.Known || st.Enrolled {
		return
	}
	ev := Event{Type: KeyNotEnrolled, Log: cert, Text: EnrollmentAdvice(cert, false)}
	if st.Enforced {
		ev.Err, ev.Text = ErrSecureBootEnforced, EnrollmentAdvice(cert, true)
		e.warn("%s", ev.Text)
	}
	e.Sink.Emit(ev)
}

// EnrollmentAdvice is what a user is told about a certificate the kernel
// does not trust (enforced: Secure Boot refuses its modules).
func EnrollmentAdvice(cert string, enforced bool) string {
	if !enforced {
		return fmt.Sprintf("The module signing certificate %s is not enrolled; Secure Boot is off, so its modules load. Before turning Secure Boot on, enrol it: mokutil --import %s", cert, cert)
	}
	return fmt.Sprintf("Warning: the module signing certificate %s is not enrolled, and Secure Boot is on:\n"+
		"the kernel will refuse the modules signed with it (\"Key was rejected by service\"). Enrol it with\n"+
		"  mokutil --import %s\n"+
		"then reboot and confirm the enrolment in MokManager.", cert, cert)
}
