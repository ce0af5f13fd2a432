package report

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/godbus/dbus/v5"
)

// Notification is one desktop notification (org.freedesktop.Notifications).
type Notification struct {
	Summary, Body string
	// Urgency is 0 low, 1 normal, 2 critical.
	Urgency  byte
	Category string
}

// NotificationFor turns a dkmsd signal into a desktop notification; ok is
// false for signals that are not worth one (successes, no-ops).
func NotificationFor(sig *dbus.Signal) (Notification, bool) {
	args := make([]string, 0, len(sig.Body))
	for _, v := range sig.Body {
		if s, ok := v.(string); ok {
			args = append(args, s)
		} else {
			args = append(args, "")
		}
	}
	switch sig.Name {
	case Interface + ".BuildFailed":
		if len(args) < 6 {
			return Notification{}, false
		}
		mod, ver, kernel, arch, log := args[0], args[1], args[2], args[3], args[4]
		body := fmt.Sprintf("The kernel module <b>%s/%s</b> could not be built for kernel <b>%s</b> (%s); that kernel will boot without it.",
			Escape(mod), Escape(ver), Escape(kernel), Escape(arch))
		if log != "" {
			body += "\nBuild log: " + Escape(log)
		}
		return Notification{Summary: "Kernel module build failed", Body: body, Urgency: 2, Category: "device.error"}, true
	case Interface + ".KeyNotEnrolled":
		// Only when Secure Boot refuses the modules: with it off they load.
		if len(sig.Body) < 3 {
			return Notification{}, false
		}
		if enforced, _ := sig.Body[2].(bool); !enforced {
			return Notification{}, false
		}
		body := fmt.Sprintf("Kernel modules were signed with <b>%s</b>, a key this machine's firmware does not trust: with Secure Boot on they will not load.\nEnrol the key: <b>%s</b>, then reboot and confirm it in MokManager.",
			Escape(args[0]), Escape(args[1]))
		return Notification{Summary: "Module signing key not enrolled", Body: body, Urgency: 2, Category: "device.error"}, true
	case Interface + ".TransactionFinished":
		if len(sig.Body) < 5 {
			return Notification{}, false
		}
		installed, _ := sig.Body[2].(uint32)
		failed, _ := sig.Body[3].(uint32)
		if installed == 0 && failed == 0 {
			return Notification{}, false // nothing happened: no notification
		}
		summary := "Kernel modules updated"
		urgency := byte(1)
		if failed > 0 {
			summary, urgency = "Kernel modules: some failed to build", 2
		}
		return Notification{Summary: summary, Body: Escape(args[1]), Urgency: urgency, Category: "device"}, true
	}
	return Notification{}, false
}

// Escape makes text from the tree safe in notification body markup.
func Escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}

// Notify shows n through the session bus's notification server.
func Notify(session *dbus.Conn, n Notification) error {
	hints := map[string]dbus.Variant{
		"urgency":       dbus.MakeVariant(n.Urgency),
		"desktop-entry": dbus.MakeVariant("dkmsd-notify"),
	}
	if n.Category != "" {
		hints["category"] = dbus.MakeVariant(n.Category)
	}
	icon := "dialog-information"
	if n.Urgency == 2 {
		icon = "dialog-error"
	}
	timeout := int32(-1)
	if n.Urgency == 2 {
		timeout = 0 // a failure stays until dismissed
	}
	call := session.Object("org.freedesktop.Notifications", "/org/freedesktop/Notifications").Call(
		"org.freedesktop.Notifications.Notify", 0, "dkmsd", uint32(0), icon, n.Summary, n.Body, []string{}, hints, timeout)
	return call.Err
}

// RunNotifier listens on the system bus for dkmsd's signals and shows the
// ones worth it on the session bus, until ctx ends. Signals not sent by
// root are ignored: anyone could emit on a bus that allows it.
func RunNotifier(ctx context.Context, system, session *dbus.Conn, onError func(error)) error {
	if err := system.AddMatchSignal(dbus.WithMatchInterface(Interface), dbus.WithMatchObjectPath(Path)); err != nil {
		return fmt.Errorf("listen for %s: %w", Interface, err)
	}
	ch := make(chan *dbus.Signal, 16)
	system.Signal(ch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig, ok := <-ch:
			if !ok {
				return fmt.Errorf("the system bus connection closed")
			}
			n, ok := NotificationFor(sig)
			if !ok {
				continue
			}
			if !fromRoot(system, sig.Sender) {
				continue
			}
			if err := Notify(session, n); err != nil && onError != nil {
				onError(err)
			}
		}
	}
}

// fromRoot reports whether a signal's sender is root. A dkms command emits
// its last signal and exits within milliseconds, so the sender is often
// gone before it can be asked: a sender that has left is accepted, because
// the bus policy dkmsd installs (dist/dbus/org.dkmsd.Manager1.conf) lets
// only root emit these signals; one still connected must be uid 0.
func fromRoot(system *dbus.Conn, sender string) bool {
	var uid uint32
	err := system.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixUser", 0, sender).Store(&uid)
	if err != nil {
		var de dbus.Error
		if errors.As(err, &de) && de.Name == "org.freedesktop.DBus.Error.NameHasNoOwner" {
			return true
		}
		return false
	}
	return uid == 0
}
