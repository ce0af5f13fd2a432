package report

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// The D-Bus interface dkmsd reports on, on the system bus.
const (
	BusName   = "org.dkmsd.Manager1"
	Interface = "org.dkmsd.Manager1"
	Path      = dbus.ObjectPath("/org/dkmsd/Manager1")
)

// DBus emits lifecycle events as signals of org.dkmsd.Manager1 on the
// system bus. The bus policy (dist/dbus/org.dkmsd.Manager1.conf) lets only
// root own the name and emit these signals; everyone may listen.
type DBus struct {
	mu   sync.Mutex
	conn *dbus.Conn
	hook string
}

// NewDBus connects to the system bus (DBUS_SYSTEM_BUS_ADDRESS if set). An
// error means there is no bus to report to; the work goes on without it.
func NewDBus(hook string) (*DBus, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("no system bus: %w", err)
	}
	return &DBus{conn: conn, hook: hook}, nil
}

// Close closes the connection.
func (d *DBus) Close() { d.conn.Close() }

// Emit sends the signal for an event; errors are dropped.
func (d *DBus) Emit(e lifecycle.Event) {
	member, args := Signal(e, d.hook)
	if member == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	_ = d.conn.Emit(Path, Interface+"."+member, args...)
}

// Signal is the signal member and arguments for an event ("" for events
// that have none).
func Signal(e lifecycle.Event, hook string) (string, []any) {
	errText := ""
	if e.Err != nil {
		errText = e.Err.Error()
	}
	switch e.Type {
	case lifecycle.BuildStarted:
		return "BuildStarted", []any{e.Module, e.Version, e.Kernel, e.Arch}
	case lifecycle.BuildFinished:
		return "BuildFinished", []any{e.Module, e.Version, e.Kernel, e.Arch, uint64(e.Duration.Microseconds())}
	case lifecycle.BuildFailed:
		return "BuildFailed", []any{e.Module, e.Version, e.Kernel, e.Arch, e.Log, errText}
	case lifecycle.BuildSkipped:
		return "BuildSkipped", []any{e.Module, e.Version, e.Kernel, e.Arch, e.Text}
	case lifecycle.Installed:
		return "Installed", []any{e.Module, e.Version, e.Kernel, e.Arch}
	case lifecycle.Uninstalled:
		return "Uninstalled", []any{e.Module, e.Version, e.Kernel, e.Arch}
	case lifecycle.InitrdRegenerated:
		return "InitrdRegenerated", []any{e.Kernel, e.Log, e.Text}
	case lifecycle.KeyNotEnrolled:
		return "KeyNotEnrolled", []any{e.Log, "mokutil --import " + e.Log, e.Err != nil}
	case lifecycle.InitrdVerified:
		if v := e.Verify; v != nil {
			return "InitrdVerified", []any{v.Kernel, v.Result, nonNil(v.Loaded), nonNil(v.Missing), e.Text}
		}
	case lifecycle.TransactionSummary:
		t := lifecycle.TransactionFromEvent(e)
		return "TransactionFinished", []any{hook, t.Summary, uint32(t.Installed), uint32(t.Failed), uint32(t.Skipped), t.Lines}
	}
	return "", nil
}

// nonNil is l, or an empty list (a nil slice cannot be marshalled as as).
func nonNil(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}

// introspection describes org.dkmsd.Manager1 for D-Bus tools and GUIs.
const introspection = `<interface name="org.dkmsd.Manager1">
  <method name="GetStatus"><arg name="rows" type="a(sssss)" direction="out"/></method>
  <method name="GetLastTransaction">
    <arg name="hook" type="s" direction="out"/><arg name="summary" type="s" direction="out"/>
    <arg name="time" type="x" direction="out"/><arg name="installed" type="u" direction="out"/>
    <arg name="failed" type="u" direction="out"/><arg name="skipped" type="u" direction="out"/>
    <arg name="lines" type="as" direction="out"/>
  </method>
  <signal name="BuildStarted"><arg name="module" type="s"/><arg name="version" type="s"/><arg name="kernel" type="s"/><arg name="arch" type="s"/></signal>
  <signal name="BuildFinished"><arg name="module" type="s"/><arg name="version" type="s"/><arg name="kernel" type="s"/><arg name="arch" type="s"/><arg name="duration_usec" type="t"/></signal>
  <signal name="BuildFailed"><arg name="module" type="s"/><arg name="version" type="s"/><arg name="kernel" type="s"/><arg name="arch" type="s"/><arg name="log" type="s"/><arg name="error" type="s"/></signal>
  <signal name="BuildSkipped"><arg name="module" type="s"/><arg name="version" type="s"/><arg name="kernel" type="s"/><arg name="arch" type="s"/><arg name="reason" type="s"/></signal>
  <signal name="Installed"><arg name="module" type="s"/><arg name="version" type="s"/><arg name="kernel" type="s"/><arg name="arch" type="s"/></signal>
  <signal name="Uninstalled"><arg name="module" type="s"/><arg name="version" type="s"/><arg name="kernel" type="s"/><arg name="arch" type="s"/></signal>
  <signal name="InitrdRegenerated"><arg name="kernel" type="s"/><arg name="path" type="s"/><arg name="detail" type="s"/></signal>
  <signal name="KeyNotEnrolled"><arg name="certificate" type="s"/><arg name="command" type="s"/><arg name="enforced" type="b"/></signal>
  <method name="Verify"><arg name="kernel" type="s" direction="in"/><arg name="result" type="s" direction="out"/><arg name="loaded" type="as" direction="out"/><arg name="missing" type="as" direction="out"/><arg name="summary" type="s" direction="out"/></method>
  <signal name="InitrdVerified"><arg name="kernel" type="s"/><arg name="result" type="s"/><arg name="loaded" type="as"/><arg name="missing" type="as"/><arg name="summary" type="s"/></signal>
  <signal name="TransactionFinished"><arg name="hook" type="s"/><arg name="summary" type="s"/><arg name="installed" type="u"/><arg name="failed" type="u"/><arg name="skipped" type="u"/><arg name="lines" type="as"/></signal>
</interface>`

// StatusSource answers the service's read-only methods.
type StatusSource interface {
	// StatusRows lists module, version, kernel, arch, state for every
	// module version in the tree.
	StatusRows(ctx context.Context) ([][5]string, error)
	LastTransaction() (lifecycle.Transaction, error)
}

// Verifier answers the Verify method (root callers only: it boots a
// virtual machine).
type Verifier interface {
	Verify(ctx context.Context, kernel string) (*lifecycle.VerifyReport, error)
}

type manager struct{ src StatusSource }

// statusRow is one (sssss) row of GetStatus.
type statusRow struct{ Module, Version, Kernel, Arch, State string }

func (m manager) GetStatus() ([]statusRow, *dbus.Error) {
	rows, err := m.src.StatusRows(context.Background())
	if err != nil {
		return nil, dbus.MakeFailedError(err)
	}
	out := make([]statusRow, 0, len(rows))
	for _, r := range rows {
		out = append(out, statusRow{r[0], r[1], r[2], r[3], r[4]})
	}
	return out, nil
}

func (m manager) GetLastTransaction() (string, string, int64, uint32, uint32, uint32, []string, *dbus.Error) {
	t, err := m.src.LastTransaction()
	if err != nil {
		return "", "", 0, 0, 0, 0, nil, dbus.MakeFailedError(err)
	}
	lines := t.Lines
	if lines == nil {
		lines = []string{}
	}
	return t.Hook, t.Summary, t.Time.Unix(), uint32(t.Installed), uint32(t.Failed), uint32(t.Skipped), lines, nil
}

// Serve owns org.dkmsd.Manager1 on conn and answers its read-only methods
// until ctx ends or, when idle > 0, no call came for that long (the
// service is started by D-Bus activation and leaves when unused).
func Serve(ctx context.Context, conn *dbus.Conn, src StatusSource, idle time.Duration) error {
	reply, err := conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil {
		return fmt.Errorf("own %s: %w", BusName, err)
	}
	if reply != dbus.RequestNameReplyPrimaryOwner {
		return fmt.Errorf("own %s: the name is taken", BusName)
	}
	calls := make(chan struct{}, 1)
	m := manager{src: src}
	methods := map[string]any{
		"GetStatus": func() ([]statusRow, *dbus.Error) {
			notify(calls)
			return m.GetStatus()
		},
		"GetLastTransaction": func() (string, string, int64, uint32, uint32, uint32, []string, *dbus.Error) {
			notify(calls)
			return m.GetLastTransaction()
		},
	}
	xml := introspection
	if cm := cacheMethods(src, calls); cm != nil {
		maps.Copy(methods, cm)
		xml = strings.Replace(xml, "  <signal ", cacheIntrospection+"  <signal ", 1)
	}
	if v, ok := src.(Verifier); ok {
		methods["Verify"] = func(sender dbus.Sender, kernel string) (string, []string, []string, string, *dbus.Error) {
			notify(calls)
			var uid uint32
			if err := conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixUser", 0, string(sender)).Store(&uid); err != nil || uid != 0 {
				return "", nil, nil, "", dbus.NewError("org.freedesktop.DBus.Error.AccessDenied", []any{"Verify boots a virtual machine: root only"})
			}
			rep, err := v.Verify(ctx, kernel)
			if rep == nil {
				return "", nil, nil, "", dbus.MakeFailedError(err)
			}
			return rep.Result, nonNil(rep.Loaded), nonNil(rep.Missing), rep.Summary(), nil
		}
	}
	if err := conn.ExportMethodTable(methods, Path, Interface); err != nil {
		return err
	}
	if err := conn.Export(introspectable(xml), Path, "org.freedesktop.DBus.Introspectable"); err != nil {
		return err
	}
	for {
		var timeout <-chan time.Time
		if idle > 0 {
			timeout = time.After(idle)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-calls:
		case <-timeout:
			return nil
		}
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// introspectable answers Introspect with our interface's XML.
type introspectable string

func (i introspectable) Introspect() (string, *dbus.Error) {
	return `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>` + string(i) + introspect.IntrospectDataString + `</node>`, nil
}
