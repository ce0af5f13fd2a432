package main

import (
	"context"
	"fmt"
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

// CacheList answers the service's CacheList method (dkms cache ls).
func (s statusSource) CacheList(ctx context.Context) ([][6]string, error) {
	entries, err := lifecycle.CacheList(ctx, s.env)
	if err != nil {
		return nil, err
	}
	rows := make([][6]string, 0, len(entries))
	for _, e := range entries {
		rows = append(rows, [6]string{e.Module, e.Version, e.Kernel, e.Arch, e.Created, e.Tag})
	}
	return rows, nil
}

// CachePull is dkms cache pull M/V -k K over the bus.
func (s statusSource) CachePull(ctx context.Context, module, version, kernel string) error {
	return s.cacheBuild(ctx, "pull", module, version, kernel)
}

// CachePush is dkms cache push M/V -k K over the bus.
func (s statusSource) CachePush(ctx context.Context, module, version, kernel string) error {
	return s.cacheBuild(ctx, "push", module, version, kernel)
}

// cacheBuild runs the command's own path on a copy of the service's Env,
// so a pull's or push's mode does not outlive the call.
func (s statusSource) cacheBuild(ctx context.Context, op, module, version, kernel string) error {
	if module == "" || version == "" || kernel == "" {
		return fmt.Errorf("cache %s needs a module, a version and a kernel", op)
	}
	env := *s.env
	a := &args{action: "cache", cacheOp: op, module: module, version: version, kernels: []string{kernel}}
	return cacheAction(ctx, a, &env)
}

// Verify is the service's Verify method: dkms verify -k kernel, its
// events on the bus as from the command.
func (s statusSource) Verify(ctx context.Context, kernel string) (*lifecycle.VerifyReport, error) {
	return lifecycle.VerifyInitrd(ctx, s.env, kernel, machineArch())
}
