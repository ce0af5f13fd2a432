package main

// End-to-end tests of dkmsd's reporting with the real programs. Every
// daemon is started by the test, on sockets in temporary directories;
// nothing on the machine is touched. They need root (other uids through
// setpriv, mount namespaces); the …RealHeaders ones also build modules
// against the machine's headers.
//
//   - this file: a private dbus-daemon configured like Debian's system bus
//     with the repository's policy file — signals, policy, dbus-service —
//     and the helpers the other two files share;
//   - reporting_journal_real_test.go: systemd-journald in a private mount
//     namespace, and no journal at all;
//   - reporting_notify_real_test.go: dkmsd-notify with a recording
//     notification server, and with Debian's dunst on Xvfb.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// nobody is the unprivileged uid the tests act as (Debian's nobody).
const nobody = 65534

// testInterface marks signals the tests send to find where they are in a
// stream of signals.
const testInterface = "org.dkmsd.Test1"

// reportingPrereqs checks what every test here needs.
func reportingPrereqs(t *testing.T) {
	t.Helper()
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "dbus-daemon", "dbus")
	testkit.RequireTool(t, "setpriv", "util-linux")
}

// sharedDir is a temporary directory every uid can read and search (a
// t.TempDir is 0700, out of reach of other uids).
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dkmsd-reporting-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// nobodyDir is a directory under parent owned by uid nobody.
func nobodyDir(t *testing.T, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	return dir
}

// asUser makes cmd run as uid (setpriv, which execs: the pid stays the
// program's); uid 0 leaves it alone.
func asUser(uid int, cmd *exec.Cmd) *exec.Cmd {
	if uid == 0 {
		return cmd
	}
	id := strconv.Itoa(uid)
	c := exec.Command("setpriv", append([]string{"--reuid=" + id, "--regid=" + id, "--clear-groups", "--", cmd.Path}, cmd.Args[1:]...)...)
	c.Env, c.Dir, c.Stdin, c.Stdout, c.Stderr, c.ExtraFiles = cmd.Env, cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.ExtraFiles
	return c
}

// daemon is a long-running program a test started.
type daemon struct {
	cmd  *exec.Cmd
	out  *testkit.Buffer // its output, unless the caller took it
	done chan struct{}   // closed when it has exited
}

// startDaemon starts a long-running program in its own process group and
// stops the group when the test ends. Its output is kept for failure
// messages.
func startDaemon(t *testing.T, name string, cmd *exec.Cmd) *daemon {
	t.Helper()
	d := &daemon{cmd: cmd, out: &testkit.Buffer{}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = d.out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = cmd.Stdout
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
		if out := d.output(); t.Failed() && out != "" {
			t.Logf("%s output:\n%s", name, out)
		}
	})
	return d
}

// output is what the daemon wrote so far.
func (d *daemon) output() string { return d.out.String() }

// readLineFrom reads the first line a daemon writes on a pipe (the bus
// address, the display number).
func readLineFrom(t *testing.T, r *os.File, what string) string {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(15 * time.Second))
	line, err := bufio.NewReader(r).ReadString('\n')
	r.Close()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return strings.TrimSpace(line)
}

// systemBusConfig mirrors Debian 12's /usr/share/dbus-1/system.conf (type
// system, EXTERNAL auth only, the default policy) on a socket in a
// temporary directory; {{include}} brings in the policy under test.
const systemBusConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:dir={{dir}}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  {{include}}
</busconfig>
`

// sessionBusConfig is a session bus like dbus-run-session's: anyone on it
// may own names; only its own uid may connect. No service directories, so
// nothing is activated behind the test's back.
const sessionBusConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={{dir}}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`

// startSystemBus starts a private system bus in dir and returns its
// address. With withPolicy the repository's dist/dbus is an includedir, as
// /usr/share/dbus-1/system.d is on a real system, so the real
// org.dkmsd.Manager1.conf is what is tested.
func startSystemBus(t *testing.T, dir string, withPolicy bool) string {
	t.Helper()
	include := "<!-- dkmsd's policy is not installed on this bus -->"
	if withPolicy {
		policy, err := filepath.Abs(filepath.Join(testkit.RepoRoot(), "dist", "dbus"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(policy, "org.dkmsd.Manager1.conf")); err != nil {
			t.Fatal(err)
		}
		include = "<includedir>" + policy + "</includedir>"
	}
	busDir := filepath.Join(dir, "system-bus")
	if err := os.MkdirAll(busDir, 0o755); err != nil {
		t.Fatal(err)
	}
	config := strings.NewReplacer("{{dir}}", busDir, "{{include}}", include).Replace(systemBusConfig)
	return startBus(t, "system dbus-daemon", busDir, config, 0)
}

// startSessionBus starts a private session bus owned by uid.
func startSessionBus(t *testing.T, dir string, uid int) string {
	t.Helper()
	busDir := filepath.Join(dir, "session-bus")
	if uid == nobody {
		busDir = nobodyDir(t, dir, "session-bus")
	} else if err := os.MkdirAll(busDir, 0o755); err != nil {
		t.Fatal(err)
	}
	config := strings.NewReplacer("{{dir}}", busDir).Replace(sessionBusConfig)
	return startBus(t, "session dbus-daemon", busDir, config, uid)
}

func startBus(t *testing.T, name, busDir, config string, uid int) string {
	t.Helper()
	cfg := filepath.Join(busDir, "bus.conf")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dbus-daemon", "--config-file="+cfg, "--nofork", "--nopidfile", "--print-address=3")
	cmd.ExtraFiles = []*os.File{w}
	startDaemon(t, name, asUser(uid, cmd))
	w.Close()
	return readLineFrom(t, r, name+" --print-address")
}

// recorder keeps the signals a root connection to a bus receives.
type recorder struct {
	conn *dbus.Conn
	mu   sync.Mutex
	sigs []*dbus.Signal
}

// listen connects to the bus at addr and records the signals of the given
// interfaces.
func listen(t *testing.T, addr string, ifaces ...string) *recorder {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	for _, iface := range ifaces {
		if err := conn.AddMatchSignal(dbus.WithMatchInterface(iface)); err != nil {
			t.Fatal(err)
		}
	}
	r := &recorder{conn: conn}
	ch := make(chan *dbus.Signal, 256)
	conn.Signal(ch)
	go func() {
		for s := range ch {
			r.mu.Lock()
			r.sigs = append(r.sigs, s)
			r.mu.Unlock()
		}
	}()
	return r
}

// waitFor returns the first recorded signal pred accepts, waiting for it.
func (r *recorder) waitFor(t *testing.T, what string, pred func(*dbus.Signal) bool) *dbus.Signal {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		for _, s := range r.sigs {
			if pred(s) {
				r.mu.Unlock()
				return s
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %s signal arrived; got:\n%s", what, r.dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// take returns the signals recorded so far and forgets them.
func (r *recorder) take() []*dbus.Signal {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sigs
	r.sigs = nil
	return s
}

func (r *recorder) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, s := range r.sigs {
		fmt.Fprintf(&b, "  %s from %s: %v\n", s.Name, s.Sender, s.Body)
	}
	return b.String()
}

func member(s *dbus.Signal) string { return strings.TrimPrefix(s.Name, report.Interface+".") }

func named(name string) func(*dbus.Signal) bool {
	return func(s *dbus.Signal) bool { return s.Name == name }
}

// dkmsResult is one run of the dkms command (or another program).
type dkmsResult struct {
	testkit.Result
	took time.Duration
}

// dkms runs the dkms command built for these tests with env.
func dkms(t *testing.T, env []string, args ...string) dkmsResult {
	t.Helper()
	return runCommand(t, 4*time.Minute, env, testkit.Binary(t, "dkms"), args...)
}

// runCommand runs prog in env from /, in a process group of its own that
// goes whole on a time-out (make, a namespace's journald); a run that
// outlasts limit fails the test as a hang.
func runCommand(t *testing.T, limit time.Duration, env []string, prog string, args ...string) dkmsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	r, err := testkit.Exec(cmd)
	res := dkmsResult{Result: r, took: time.Since(start)}
	if ctx.Err() != nil {
		t.Fatalf("%s %s: still running after %v (hangs)\nstdout:\n%s\nstderr:\n%s", prog, strings.Join(args, " "), limit, r.Stdout, r.Stderr)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", prog, strings.Join(args, " "), err)
	}
	return res
}

// moduleRoot is a relocated root over the oldest kernel with headers,
// holding the test modules named (testdata/modules dirs such as
// "dkmsd_hello-1.0").
func moduleRoot(t *testing.T, modules ...string) (root, kernel string) {
	t.Helper()
	kernel = testkit.Kernels(t, 1)[0]
	root = testkit.NewRoot(t, kernel)
	for _, m := range modules {
		testkit.CopyModule(t, root, m)
	}
	return root, kernel
}

// baseEnv is the whole environment of the processes these tests start:
// a fixed PATH, the C locale, root's HOME, and extra.
func baseEnv(extra ...string) []string {
	return append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root"}, extra...)
}

// helperBinary copies this test binary where uid nobody can run it, for
// TestReportingHelperProcess.
func helperBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "reporting-helper")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// helperCmd is TestReportingHelperProcess in the given mode, as uid.
func helperCmd(bin string, uid int, mode, systemBus string, extraEnv ...string) *exec.Cmd {
	cmd := exec.Command(bin, "-test.run=^TestReportingHelperProcess$", "-test.count=1")
	cmd.Env = append(baseEnv("DKMSD_REPORTING_HELPER="+mode, "DBUS_SYSTEM_BUS_ADDRESS="+systemBus), extraEnv...)
	cmd.Dir = "/"
	return asUser(uid, cmd)
}

// runHelper runs the helper to its end and decodes the JSON it prints.
func runHelper(t *testing.T, cmd *exec.Cmd, out any) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper %v: %v\n%s%s", cmd.Args, err, stdout.String(), stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		t.Fatalf("helper %v printed %q: %v\n%s", cmd.Args, stdout.String(), err, stderr.String())
	}
}

// helperReport is what the helper prints.
type helperReport struct {
	Unique       string
	OwnReply     uint32
	OwnError     string
	OwnErrorName string

	StatusSignature string
	StatusRows      [][]string
	StatusError     string
	Hook, Summary   string
	Time            int64
	Installed       uint32
	Failed          uint32
	Skipped         uint32
	Lines           []string
	TxError         string
	Introspect      string
	IntrospectError string
	// ForbiddenErrors maps a method the policy does not open to the error
	// name the call got.
	ForbiddenErrors map[string]string

	Signal *helperSignal
}

type helperSignal struct {
	Name   string
	Sender string
	Body   []string
}

// TestReportingHelperProcess is not a test: the tests run this binary again
// as another uid (or as a short-lived root client) in one of these modes.
func TestReportingHelperProcess(t *testing.T) {
	mode := os.Getenv("DKMSD_REPORTING_HELPER")
	if mode == "" {
		t.Skip("helper process for the reporting tests")
	}
	// The signature of the last method reply, as sent: decoding a reply
	// loses it (a struct comes back as []any).
	var reply struct {
		sync.Mutex
		signature string
	}
	conn, err := dbus.ConnectSystemBus(dbus.WithIncomingInterceptor(func(m *dbus.Message) {
		if m.Type == dbus.TypeMethodReply {
			sig, _ := m.Headers[dbus.FieldSignature].Value().(dbus.Signature)
			reply.Lock()
			reply.signature = sig.String()
			reply.Unlock()
		}
	}))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	rep := helperReport{Unique: conn.Names()[0]}
	switch mode {
	case "forge":
		// Try to pass as dkmsd: own its name, send its signals.
		reply, err := conn.RequestName(report.BusName, dbus.NameFlagDoNotQueue)
		rep.OwnReply = uint32(reply)
		if err != nil {
			rep.OwnError, rep.OwnErrorName = err.Error(), dbusErrorName(err)
		}
		conn.Emit(report.Path, report.Interface+".BuildFailed", "forged_module", "1.0", "6.1.0-forged", "x86_64", "/tmp/forged.log", "forged")
		conn.Emit(report.Path, report.Interface+".TransactionFinished", "dkms autoinstall", "1 installed, 1 failed, 0 skipped", uint32(1), uint32(1), uint32(0), []string{"forged"})
		conn.Emit(report.Path, testInterface+".Done", rep.Unique)
		printJSON(rep)
		if os.Getenv("DKMSD_HELPER_LINGER") != "" {
			io.Copy(io.Discard, os.Stdin) // stay connected until told
		}
	case "emit":
		// What a dkms command does: emit, then leave at once.
		conn.Emit(report.Path, report.Interface+".BuildFailed", os.Getenv("DKMSD_HELPER_MODULE"), "1.0", "6.1.0-test", "x86_64", "/tmp/short-lived.log", "exit status 2")
		conn.Close()
		printJSON(rep)
	case "listen":
		if err := conn.AddMatchSignal(dbus.WithMatchInterface(report.Interface)); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		ch := make(chan *dbus.Signal, 8)
		conn.Signal(ch)
		fmt.Println("ready")
		select {
		case s := <-ch:
			rep.Signal = &helperSignal{Name: s.Name, Sender: s.Sender}
			for _, v := range s.Body {
				rep.Signal.Body = append(rep.Signal.Body, fmt.Sprint(v))
			}
		case <-time.After(15 * time.Second):
		}
		printJSON(rep)
	case "call":
		obj := conn.Object(report.BusName, report.Path)
		call := obj.Call(report.Interface+".GetStatus", 0)
		if call.Err != nil {
			rep.StatusError = call.Err.Error()
		} else {
			reply.Lock()
			rep.StatusSignature = reply.signature
			reply.Unlock()
			rep.StatusRows = flattenRows(call.Body)
		}
		call = obj.Call(report.Interface+".GetLastTransaction", 0)
		if call.Err != nil {
			rep.TxError = call.Err.Error()
		} else if err := call.Store(&rep.Hook, &rep.Summary, &rep.Time, &rep.Installed, &rep.Failed, &rep.Skipped, &rep.Lines); err != nil {
			rep.TxError = err.Error()
		}
		if err := obj.Call("org.freedesktop.DBus.Introspectable.Introspect", 0).Store(&rep.Introspect); err != nil {
			rep.IntrospectError = err.Error()
		}
		rep.ForbiddenErrors = map[string]string{}
		for _, m := range []string{report.Interface + ".Shutdown", "org.freedesktop.DBus.Properties.GetAll"} {
			err := obj.Call(m, 0, report.Interface).Err
			rep.ForbiddenErrors[m] = dbusErrorName(err)
		}
		printJSON(rep)
	default:
		fmt.Fprintln(os.Stderr, "helper: unknown mode", mode)
		os.Exit(2)
	}
	conn.Close()
	os.Exit(0)
}

func printJSON(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// dbusErrorName is the D-Bus error name of err ("" for nil).
func dbusErrorName(err error) string {
	if err == nil {
		return ""
	}
	var e dbus.Error
	if errors.As(err, &e) {
		return e.Name
	}
	var pe *dbus.Error
	if errors.As(err, &pe) {
		return pe.Name
	}
	return "not a D-Bus error: " + err.Error()
}

// flattenRows turns a GetStatus reply into rows of strings, whatever its
// marshalled shape (array of structs, or of arrays of variants).
func flattenRows(body []any) [][]string {
	if len(body) != 1 {
		return nil
	}
	var rows [][]string
	v := reflect.ValueOf(body[0])
	if v.Kind() != reflect.Slice {
		return nil
	}
	for i := 0; i < v.Len(); i++ {
		row := reflect.ValueOf(v.Index(i).Interface())
		var cells []string
		if row.Kind() == reflect.Slice {
			for j := 0; j < row.Len(); j++ {
				cell := row.Index(j).Interface()
				if vr, ok := cell.(dbus.Variant); ok {
					cell = vr.Value()
				}
				cells = append(cells, fmt.Sprint(cell))
			}
		}
		rows = append(rows, cells)
	}
	return rows
}

// TestSignalsAndServiceRealBusRealHeaders runs the dkms command as root on
// a relocated root over the real headers, against a private system bus with
// dkmsd's policy, and records the signals: a successful install, then a
// failing autoinstall. Then `dkms dbus-service` owns the name and uid
// nobody calls its read-only methods.
func TestSignalsAndServiceRealBusRealHeaders(t *testing.T) {
	reportingPrereqs(t)
	testkit.RequireTool(t, "openssl", "openssl")
	t.Parallel()
	root, k := moduleRoot(t, "dkmsd_hello-1.0", "dkmsd_failbuild-1.0")
	dir := sharedDir(t)
	bus := startSystemBus(t, dir, true)
	rec := listen(t, bus, report.Interface)
	env := baseEnv("DBUS_SYSTEM_BUS_ADDRESS=" + bus)

	checkInstallSignals(t, rec, env, root, k)
	last := checkFailedAutoinstallSignals(t, rec, env, root, k)

	// The service: root owns the name; nobody calls the methods.
	svc := exec.Command(testkit.Binary(t, "dkms"), "--root", root, "dbus-service")
	svc.Env = env
	service := startDaemon(t, "dkms dbus-service", svc)
	waitForOwner(t, rec.conn, report.BusName)
	var got helperReport
	runHelper(t, helperCmd(helperBinary(t, dir), nobody, "call", bus), &got)
	checkServiceStatus(t, got, env, root)
	checkServiceTransaction(t, got, last, root)
	checkServiceIntrospection(t, got)

	// The service leaves on SIGTERM, with status 0.
	svc.Process.Signal(syscall.SIGTERM)
	select {
	case <-service.done:
		if !svc.ProcessState.Success() {
			t.Errorf("dbus-service on SIGTERM: %v\n%s", svc.ProcessState, service.output())
		}
	case <-time.After(5 * time.Second):
		t.Errorf("dbus-service still running 5s after SIGTERM")
	}
}

// checkInstallSignals runs a successful install: BuildStarted,
// BuildFinished (with the build's duration), Installed.
func checkInstallSignals(t *testing.T, rec *recorder, env []string, root, k string) {
	t.Helper()
	arch := machineArch()
	r := dkms(t, env, "--root", root, "install", "dkmsd_hello/1.0", "-k", k)
	if r.Code != 0 {
		t.Fatalf("install: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	rec.waitFor(t, "Installed", named(report.Interface+".Installed"))
	sigs := rec.take()
	checkSignals(t, sigs, []string{"BuildStarted", "BuildFinished", "Installed"})
	target := []any{"dkmsd_hello", "1.0", k, arch}
	for _, s := range sigs {
		if !reflect.DeepEqual(s.Body[:4], target) {
			t.Errorf("%s args = %v, want %v first", member(s), s.Body, target)
		}
		if s.Path != report.Path {
			t.Errorf("%s sent at %s, want %s", member(s), s.Path, report.Path)
		}
	}
	if len(sigs) >= 2 && len(sigs[1].Body) == 5 {
		if d, ok := sigs[1].Body[4].(uint64); !ok || d == 0 || time.Duration(d)*time.Microsecond > r.took {
			t.Errorf("BuildFinished duration_usec = %#v (the command took %v)", sigs[1].Body[4], r.took)
		}
	} else if len(sigs) >= 2 {
		t.Errorf("BuildFinished args = %v, want 5", sigs[1].Body)
	}
}

// lastAutoinstall is what a transaction reported, and when it ran.
type lastAutoinstall struct {
	summary       []any    // hook, summary, installed, failed, skipped
	lines         []string // the lines it printed
	before, after time.Time
}

// checkFailedAutoinstallSignals runs a failing autoinstall: BuildFailed
// with its log, then the summary (TransactionFinished).
func checkFailedAutoinstallSignals(t *testing.T, rec *recorder, env []string, root, k string) lastAutoinstall {
	t.Helper()
	arch := machineArch()
	if r := dkms(t, env, "--root", root, "add", "dkmsd_failbuild/1.0"); r.Code != 0 {
		t.Fatalf("add: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	rec.take()
	before := time.Now()
	r := dkms(t, env, "--root", root, "autoinstall", "-k", k)
	after := time.Now()
	if r.Code != 11 {
		t.Errorf("failing autoinstall: exit %d, want 11\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	summary := rec.waitFor(t, "TransactionFinished", named(report.Interface+".TransactionFinished"))
	sigs := rec.take()
	checkSignals(t, sigs, []string{"BuildStarted", "BuildFailed", "TransactionFinished"})
	for _, s := range sigs {
		if member(s) != "BuildFailed" {
			continue
		}
		if len(s.Body) != 6 || !reflect.DeepEqual(s.Body[:4], []any{"dkmsd_failbuild", "1.0", k, arch}) {
			t.Fatalf("BuildFailed args = %v", s.Body)
		}
		log, _ := s.Body[4].(string)
		b, err := os.ReadFile(log)
		if err != nil || !strings.HasPrefix(log, root+"/") {
			t.Errorf("BuildFailed log %q: %v (want a file in the relocated root)", log, err)
		} else if !strings.Contains(string(b), "deliberate build failure") {
			t.Errorf("BuildFailed log %s does not hold the compiler's error:\n%s", log, b)
		}
		if e, _ := s.Body[5].(string); e == "" {
			t.Errorf("BuildFailed carries no error text: %v", s.Body)
		}
	}
	wantSummary := []any{"dkms autoinstall", "0 installed, 1 failed, 0 skipped", uint32(0), uint32(1), uint32(0)}
	if len(summary.Body) != 6 || !reflect.DeepEqual(summary.Body[:5], wantSummary) {
		t.Fatalf("TransactionFinished args = %#v, want %#v and the lines", summary.Body, wantSummary)
	}
	lines, _ := summary.Body[5].([]string)
	if len(lines) == 0 {
		t.Errorf("TransactionFinished has no lines")
	}
	for _, l := range lines {
		if !strings.Contains(r.Stdout, l+"\n") {
			t.Errorf("TransactionFinished line %q is not what autoinstall printed:\n%s", l, r.Stdout)
		}
	}
	return lastAutoinstall{summary: wantSummary, lines: lines, before: before, after: after}
}

// checkServiceStatus compares GetStatus, called as nobody, with dkms
// status.
func checkServiceStatus(t *testing.T, got helperReport, env []string, root string) {
	t.Helper()
	status := dkms(t, env, "--root", root, "status")
	want := strings.Split(strings.TrimSpace(status.Stdout), "\n")
	var rows []string
	for _, c := range got.StatusRows {
		if len(c) != 5 {
			t.Errorf("GetStatus row %q: want 5 columns", c)
			continue
		}
		if c[2] == "" {
			rows = append(rows, fmt.Sprintf("%s/%s: %s", c[0], c[1], c[4]))
		} else {
			rows = append(rows, fmt.Sprintf("%s/%s, %s, %s: %s", c[0], c[1], c[2], c[3], c[4]))
		}
	}
	if got.StatusError != "" {
		t.Errorf("GetStatus as uid %d: %s", nobody, got.StatusError)
	} else if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("GetStatus rows, as status lines:\n%s\ndkms status:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
	if got.StatusSignature != "a(sssss)" {
		t.Errorf("GetStatus replies with signature %q; its introspection (and the README) declare a(sssss)", got.StatusSignature)
	}
}

// checkServiceTransaction compares GetLastTransaction, called as nobody,
// with the last autoinstall and its record.
func checkServiceTransaction(t *testing.T, got helperReport, last lastAutoinstall, root string) {
	t.Helper()
	if got.TxError != "" {
		t.Errorf("GetLastTransaction as uid %d: %s", nobody, got.TxError)
	} else {
		tx := []any{got.Hook, got.Summary, got.Installed, got.Failed, got.Skipped}
		if !reflect.DeepEqual(tx, last.summary) || !reflect.DeepEqual(got.Lines, last.lines) {
			t.Errorf("GetLastTransaction = %v %q, want the last autoinstall's %v %q", tx, got.Lines, last.summary, last.lines)
		}
		if got.Time < last.before.Unix() || got.Time > last.after.Unix() {
			t.Errorf("GetLastTransaction time %d is not during the autoinstall (%d–%d)", got.Time, last.before.Unix(), last.after.Unix())
		}
		var saved lifecycle.Transaction
		if b, err := os.ReadFile(filepath.Join(root, "var/lib/dkms/.dkmsd/last-transaction.json")); err != nil || json.Unmarshal(b, &saved) != nil {
			t.Errorf("last-transaction.json: %v", err)
		} else if saved.Time.Unix() != got.Time || saved.Summary != got.Summary {
			t.Errorf("GetLastTransaction %d %q differs from the recorded %v %q", got.Time, got.Summary, saved.Time, saved.Summary)
		}
	}
}

// checkServiceIntrospection checks Introspect, called as nobody, and that
// the policy refused every other method.
func checkServiceIntrospection(t *testing.T, got helperReport) {
	t.Helper()
	if got.IntrospectError != "" {
		t.Errorf("Introspect as uid %d: %s", nobody, got.IntrospectError)
	}
	for _, want := range []string{`<interface name="org.dkmsd.Manager1">`, `<method name="GetStatus">`, `<method name="GetLastTransaction">`,
		`<signal name="BuildFailed">`, `<signal name="TransactionFinished">`, `<interface name="org.freedesktop.DBus.Introspectable">`} {
		if !strings.Contains(got.Introspect, want) {
			t.Errorf("Introspect lacks %s", want)
		}
	}
	// The policy opens the read-only methods only.
	for m, name := range got.ForbiddenErrors {
		if name != "org.freedesktop.DBus.Error.AccessDenied" {
			t.Errorf("uid %d calling %s: error %q, want the policy's AccessDenied", nobody, m, name)
		}
	}
}

// checkSignals compares the members received, in order, and checks they
// came from one connection.
func checkSignals(t *testing.T, sigs []*dbus.Signal, want []string) {
	t.Helper()
	var got []string
	for _, s := range sigs {
		got = append(got, member(s))
		if s.Sender != sigs[0].Sender {
			t.Errorf("signals from two senders: %s and %s", sigs[0].Sender, s.Sender)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("signals %v, want %v", got, want)
	}
}

// waitForOwner waits until name has an owner on conn's bus.
func waitForOwner(t *testing.T, conn *dbus.Conn, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var has bool
		if err := conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, name).Store(&has); err != nil {
			t.Fatal(err)
		}
		if has {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nobody owns %s", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPolicyRealBusUnprivileged checks dist/dbus/org.dkmsd.Manager1.conf on
// a system-like bus: uid nobody cannot own org.dkmsd.Manager1 and its
// org.dkmsd.Manager1 signals reach no one, while root can do both and
// nobody may listen.
func TestPolicyRealBusUnprivileged(t *testing.T) {
	reportingPrereqs(t)
	t.Parallel()
	dir := sharedDir(t)
	bus := startSystemBus(t, dir, true)
	rec := listen(t, bus, report.Interface, testInterface)
	helper := helperBinary(t, dir)

	// nobody listens: it receives root's signals.
	lis := helperCmd(helper, nobody, "listen", bus)
	var lisOut bytes.Buffer
	lisPipe, err := lis.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	lis.Stderr = os.Stderr
	if err := lis.Start(); err != nil {
		t.Fatal(err)
	}
	lisReader := bufio.NewReader(lisPipe)
	if line, err := lisReader.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("listening helper: %q %v", line, err)
	}

	// Root may own the name and emit.
	reply, err := rec.conn.RequestName(report.BusName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("root RequestName(%s) = %v, %v: the policy must let root own it", report.BusName, reply, err)
	}
	if _, err := rec.conn.ReleaseName(report.BusName); err != nil {
		t.Fatal(err)
	}
	if err := rec.conn.Emit(report.Path, report.Interface+".BuildFailed", "root_module", "1.0", "6.1.0-test", "x86_64", "/tmp/root.log", "exit status 2"); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "root's BuildFailed", func(s *dbus.Signal) bool { return member(s) == "BuildFailed" && s.Body[0] == "root_module" })
	io.Copy(&lisOut, lisReader)
	lis.Wait()
	var heard helperReport
	if err := json.Unmarshal(lisOut.Bytes(), &heard); err != nil {
		t.Fatalf("listening helper: %q: %v", lisOut.String(), err)
	}
	if heard.Signal == nil || heard.Signal.Name != report.Interface+".BuildFailed" || len(heard.Signal.Body) == 0 || heard.Signal.Body[0] != "root_module" {
		t.Errorf("uid %d listening got %+v, want root's BuildFailed", nobody, heard.Signal)
	}

	// nobody tries to pass as dkmsd.
	var forged helperReport
	runHelper(t, helperCmd(helper, nobody, "forge", bus), &forged)
	if forged.OwnErrorName != "org.freedesktop.DBus.Error.AccessDenied" || !strings.Contains(forged.OwnError, "not allowed to own") {
		t.Errorf("uid %d RequestName(%s): reply %d, error %q (%s); want a policy denial", nobody, report.BusName, forged.OwnReply, forged.OwnError, forged.OwnErrorName)
	}
	// Its marker signal on another interface arrives, after the forged
	// ones had their chance: the bus delivers one sender's messages in order.
	rec.waitFor(t, "the helper's Done", func(s *dbus.Signal) bool { return s.Name == testInterface+".Done" && s.Sender == forged.Unique })
	for _, s := range rec.take() {
		if s.Sender == forged.Unique && strings.HasPrefix(s.Name, report.Interface+".") {
			t.Errorf("uid %d's forged %s was delivered: %v", nobody, s.Name, s.Body)
		}
	}
}
