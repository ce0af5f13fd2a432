package report

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/lifecycle"
)

// introspected is the part of the introspection XML the tests compare.
type introspected struct {
	Interfaces []struct {
		Name    string `xml:"name,attr"`
		Methods []struct {
			Name string `xml:"name,attr"`
			Args []struct {
				Name      string `xml:"name,attr"`
				Type      string `xml:"type,attr"`
				Direction string `xml:"direction,attr"`
			} `xml:"arg"`
		} `xml:"method"`
		Signals []struct {
			Name string `xml:"name,attr"`
			Args []struct {
				Name string `xml:"name,attr"`
				Type string `xml:"type,attr"`
			} `xml:"arg"`
		} `xml:"signal"`
	} `xml:"interface"`
}

// declared maps each signal and method ("m:Name", out arguments) of
// org.dkmsd.Manager1 to the D-Bus signature its introspection declares.
func declared(t *testing.T) map[string]string {
	t.Helper()
	xmlText, derr := introspectable(introspection).Introspect()
	if derr != nil {
		t.Fatal(derr)
	}
	var node introspected
	if err := xml.Unmarshal([]byte(xmlText), &node); err != nil {
		t.Fatalf("Introspect returns XML that does not parse: %v", err)
	}
	out := map[string]string{}
	for _, iface := range node.Interfaces {
		if iface.Name != Interface {
			continue
		}
		for _, s := range iface.Signals {
			var sig strings.Builder
			for _, a := range s.Args {
				sig.WriteString(a.Type)
			}
			out[s.Name] = sig.String()
		}
		for _, m := range iface.Methods {
			var sig strings.Builder
			for _, a := range m.Args {
				if a.Direction == "out" {
					sig.WriteString(a.Type)
				}
			}
			out["m:"+m.Name] = sig.String()
		}
	}
	if len(out) == 0 {
		t.Fatalf("the introspection XML has no interface %s:\n%s", Interface, xmlText)
	}
	return out
}

func TestSignalEachEventType(t *testing.T) {
	ev := outcomeEvents()
	tx := transaction(1, 1, 0)
	for _, c := range []struct {
		typ    lifecycle.EventType
		member string
		args   []any
	}{
		{lifecycle.BuildStarted, "BuildStarted", []any{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64"}},
		{lifecycle.BuildFinished, "BuildFinished", []any{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64", uint64(1500000)}},
		{lifecycle.BuildFailed, "BuildFailed", []any{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64", ev[lifecycle.BuildFailed].Log, "exit status 2"}},
		{lifecycle.BuildSkipped, "BuildSkipped", []any{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64", "BUILD_EXCLUSIVE_ARCH"}},
		{lifecycle.Installed, "Installed", []any{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64"}},
		{lifecycle.Uninstalled, "Uninstalled", []any{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64"}},
		{lifecycle.InitrdRegenerated, "InitrdRegenerated", []any{"6.1.0-56-amd64", "/boot/initrd.img-6.1.0-56-amd64", "appended 1 module"}},
		{lifecycle.TransactionSummary, "TransactionFinished", []any{"dkms autoinstall", tx.Summary, uint32(1), uint32(1), uint32(0), tx.Lines}},
	} {
		t.Run(c.member, func(t *testing.T) {
			member, args := Signal(ev[c.typ], "dkms autoinstall")
			if member != c.member {
				t.Fatalf("member = %q, want %q", member, c.member)
			}
			if !reflect.DeepEqual(args, c.args) {
				t.Errorf("args = %#v\nwant   %#v", args, c.args)
			}
		})
	}
	// A failed build with no error text still sends six arguments.
	e := ev[lifecycle.BuildFailed]
	e.Err = nil
	if _, args := Signal(e, ""); len(args) != 6 || args[5] != "" {
		t.Errorf("BuildFailed without an error: args = %#v", args)
	}
	if !Path.IsValid() {
		t.Errorf("path %q is not a valid object path", Path)
	}
	for _, typ := range []lifecycle.EventType{lifecycle.Info, lifecycle.Warning, lifecycle.JobStarted, lifecycle.JobFinished, lifecycle.Added, lifecycle.Removed} {
		if member, args := Signal(lifecycle.Event{Type: typ, Module: "m", Text: "x"}, ""); member != "" || args != nil {
			t.Errorf("%v: Signal = %q %v, want no signal", typ, member, args)
		}
	}
}

// TestSignalsMatchIntrospection checks that each signal's arguments have
// the types org.dkmsd.Manager1's introspection XML declares: a client
// generated from the XML decodes exactly what is sent.
func TestSignalsMatchIntrospection(t *testing.T) {
	decl := declared(t)
	ev := outcomeEvents()
	seen := map[string]bool{}
	for typ, e := range ev {
		member, args := Signal(e, "dkms autoinstall")
		if member == "" {
			continue
		}
		seen[member] = true
		want, ok := decl[member]
		if !ok {
			t.Errorf("signal %s (from %v) is not declared in the introspection XML", member, typ)
			continue
		}
		if got := dbus.SignatureOf(args...).String(); got != want {
			t.Errorf("signal %s is sent as %q but declared as %q", member, got, want)
		}
	}
	for name := range decl {
		if !strings.HasPrefix(name, "m:") && !seen[name] {
			t.Errorf("signal %s is declared but no event sends it", name)
		}
	}
}

// cells flattens GetStatus's reply, a slice of rows each a slice or a
// struct of strings, into strings.
func cells(rows any) [][]string {
	var out [][]string
	v := reflect.ValueOf(rows)
	for i := 0; i < v.Len(); i++ {
		row := v.Index(i)
		var r []string
		n := 0
		if row.Kind() == reflect.Struct {
			n = row.NumField()
		} else {
			n = row.Len()
		}
		for j := 0; j < n; j++ {
			var c reflect.Value
			if row.Kind() == reflect.Struct {
				c = row.Field(j)
			} else {
				c = row.Index(j)
			}
			r = append(r, fmt.Sprint(c))
		}
		out = append(out, r)
	}
	return out
}

type fakeSource struct {
	rows [][5]string
	tx   lifecycle.Transaction
	err  error
}

func (f fakeSource) StatusRows(context.Context) ([][5]string, error) { return f.rows, f.err }
func (f fakeSource) LastTransaction() (lifecycle.Transaction, error) { return f.tx, f.err }

// TestMethodRepliesMatchIntrospection checks the read-only methods' replies
// against their declared out arguments: GetStatus is declared a(sssss).
func TestMethodRepliesMatchIntrospection(t *testing.T) {
	decl := declared(t)
	m := manager{src: fakeSource{
		rows: [][5]string{{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64", "installed"}, {"dkmsd_failbuild", "1.0", "", "", "added"}},
		tx:   transaction(1, 1, 0),
	}}
	rows, derr := m.GetStatus()
	if derr != nil {
		t.Fatal(derr)
	}
	if got, want := dbus.SignatureOf(rows).String(), decl["m:GetStatus"]; got != want {
		t.Errorf("GetStatus replies %q but its introspection declares %q: a client built from the XML (gdbus, zbus, dbus-next) cannot decode the rows", got, want)
	}
	want := [][]string{{"dkmsd_hello", "1.0", "6.1.0-56-amd64", "x86_64", "installed"}, {"dkmsd_failbuild", "1.0", "", "", "added"}}
	if got := cells(rows); !reflect.DeepEqual(got, want) {
		t.Errorf("GetStatus rows = %q, want %q", got, want)
	}
	hook, summary, when, installed, failed, skipped, lines, derr := m.GetLastTransaction()
	if derr != nil {
		t.Fatal(derr)
	}
	if got, want := dbus.SignatureOf(hook, summary, when, installed, failed, skipped, lines).String(), decl["m:GetLastTransaction"]; got != want {
		t.Errorf("GetLastTransaction replies %q, declared %q", got, want)
	}
	if hook != "dkms autoinstall" || summary != "a <summary> & more" || when != 1700000000 || installed != 1 || failed != 1 || skipped != 0 || len(lines) != 1 {
		t.Errorf("GetLastTransaction = %q %q %d %d %d %d %q", hook, summary, when, installed, failed, skipped, lines)
	}

	// No transaction yet: empty, and lines is an empty array, not nil
	// (godbus cannot marshal a nil slice as "as").
	empty := manager{src: fakeSource{}}
	if _, _, _, _, _, _, lines, derr := empty.GetLastTransaction(); derr != nil || lines == nil {
		t.Errorf("GetLastTransaction with no transaction: lines=%v err=%v", lines, derr)
	}
	// A failing source is a D-Bus error, not a crash.
	broken := manager{src: fakeSource{err: errors.New("tree unreadable")}}
	if _, derr := broken.GetStatus(); derr == nil || !strings.Contains(derr.Error(), "tree unreadable") {
		t.Errorf("GetStatus with a failing source: %v", derr)
	}
	if _, _, _, _, _, _, _, derr := broken.GetLastTransaction(); derr == nil {
		t.Error("GetLastTransaction with a failing source: no error")
	}
}

// TestIntrospectIsValidNode checks the XML has the standard interfaces and
// the DOCTYPE clients expect.
func TestIntrospectIsValidNode(t *testing.T) {
	x, _ := introspectable(introspection).Introspect()
	if !strings.HasPrefix(x, "<!DOCTYPE node PUBLIC") {
		t.Errorf("no DOCTYPE: %.80s", x)
	}
	for _, want := range []string{`<interface name="org.dkmsd.Manager1">`, `<interface name="org.freedesktop.DBus.Introspectable">`} {
		if !strings.Contains(x, want) {
			t.Errorf("Introspect lacks %s", want)
		}
	}
}
