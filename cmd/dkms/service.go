package main

import (
	"context"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
)

// dbusService is `dkms dbus-service`: own org.dkmsd.Manager1 on the
// system bus and answer its read-only methods (status, last transaction)
// until idle for a minute. D-Bus activation starts it
// (dist/dbus/org.dkmsd.Manager1.service).
func dbusService(ctx context.Context, env *lifecycle.Env) error {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return err
	}
	defer conn.Close()
	return report.Serve(ctx, conn, statusSource{env}, time.Minute)
}

// statusSource answers the service's methods from the tree.
type statusSource struct{ env *lifecycle.Env }

func (s statusSource) StatusRows(ctx context.Context) ([][5]string, error) {
	lines, err := lifecycle.Status(ctx, s.env, lifecycle.StatusQuery{})
	if err != nil {
		return nil, err
	}
	rows := make([][5]string, 0, len(lines))
	for _, l := range lines {
		rows = append(rows, [5]string{l.Module, l.Version, l.Kernel, l.Arch, string(l.State)})
	}
	return rows, nil
}

func (s statusSource) LastTransaction() (lifecycle.Transaction, error) {
	return lifecycle.LastTransaction(s.env)
}

// Verify is the service's Verify method: dkms verify -k kernel, its
// events on the bus as from the command.
func (s statusSource) Verify(ctx context.Context, kernel string) (*lifecycle.VerifyReport, error) {
	return lifecycle.VerifyInitrd(ctx, s.env, kernel, machineArch())
}
