// Command dkmsd-notify is the per-user agent that turns dkmsd's D-Bus
// signals (a module that failed to build, a transaction's summary) into
// desktop notifications. It runs in the user's graphical session, started
// by the XDG autostart entry or the systemd user unit in dist/.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/hooks/report"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := report.NewLogger(os.Stderr)
	system, err := dbus.ConnectSystemBus()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dkmsd-notify: no system bus: %v\n", err)
		os.Exit(1)
	}
	defer system.Close()
	session, err := dbus.ConnectSessionBus()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dkmsd-notify: no session bus: %v\n", err)
		os.Exit(1)
	}
	defer session.Close()
	err = report.RunNotifier(ctx, system, session, func(err error) {
		log.WithError(err).Warn("dkmsd-notify: could not show a notification")
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "dkmsd-notify: %v\n", err)
		os.Exit(1)
	}
}
