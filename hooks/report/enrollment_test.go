package report

import (
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// TestKeyNotEnrolledNotification: the signal of a key Secure Boot
// refuses becomes a critical notification naming the mokutil command;
// with Secure Boot off there is none.
func TestKeyNotEnrolledNotification(t *testing.T) {
	cert := "/var/lib/dkms/mok.pub"
	for _, enforced := range []bool{true, false} {
		ev := lifecycle.Event{Type: lifecycle.KeyNotEnrolled, Log: cert}
		if enforced {
			ev.Err = lifecycle.ErrSecureBootEnforced
		}
		member, args := Signal(ev, "dkms")
		n, ok := NotificationFor(&dbus.Signal{Name: Interface + "." + member, Body: args})
		if ok != enforced {
			t.Fatalf("enforced=%v: notification %v", enforced, ok)
		}
		if enforced && (n.Urgency != 2 || !strings.Contains(n.Body, "mokutil --import "+cert)) {
			t.Errorf("notification %+v: want critical, with mokutil --import %s", n, cert)
		}
	}
}
