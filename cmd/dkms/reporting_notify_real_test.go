package main

// dkmsd-notify between a private system bus and a private session bus:
// with a recording notification server, and with Debian's dunst on Xvfb.
// The helpers (buses, daemons, the helper process) are in
// reporting_real_test.go.

import (
	"bufio"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// fakeNotifications is an org.freedesktop.Notifications server on a
// private session bus that records what it is asked to show.
type fakeNotifications struct {
	mu    sync.Mutex
	calls []notifyCall
}

type notifyCall struct {
	Signature           string
	AppName             string
	ReplacesID          uint32
	Icon, Summary, Body string
	Actions             []string
	Hints               map[string]dbus.Variant
	Timeout             int32
}

func (f *fakeNotifications) Notify(msg dbus.Message, app string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sig, _ := msg.Headers[dbus.FieldSignature].Value().(dbus.Signature)
	f.calls = append(f.calls, notifyCall{sig.String(), app, replaces, icon, summary, body, actions, hints, timeout})
	return uint32(len(f.calls)), nil
}

func (f *fakeNotifications) GetCapabilities() ([]string, *dbus.Error) {
	return []string{"body", "body-markup"}, nil
}

func (f *fakeNotifications) GetServerInformation() (string, string, string, string, *dbus.Error) {
	return "fake", "dkmsd tests", "1", "1.2", nil
}

// waitFor returns the first notification whose body contains text.
func (f *fakeNotifications) waitFor(t *testing.T, text string) (notifyCall, bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		for _, c := range f.calls {
			if strings.Contains(c.Body, text) {
				f.mu.Unlock()
				return c, true
			}
		}
		f.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	return notifyCall{}, false
}

func (f *fakeNotifications) take() []notifyCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// startNotifier runs dkmsd-notify as uid and waits until it listens on the
// system bus (its match rule is in place).
func startNotifier(t *testing.T, uid int, systemBus, sessionBus string, root *dbus.Conn) {
	t.Helper()
	cmd := exec.Command(testkit.Binary(t, "dkmsd-notify"))
	cmd.Env = baseEnv("DBUS_SYSTEM_BUS_ADDRESS="+systemBus, "DBUS_SESSION_BUS_ADDRESS="+sessionBus)
	cmd.Dir = "/"
	cmd = asUser(uid, cmd)
	notifier := startDaemon(t, "dkmsd-notify", cmd)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if matchRules(root, uint32(cmd.Process.Pid)) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dkmsd-notify did not subscribe to the system bus:\n%s", notifier.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// matchRules is the number of match rules the connection of process pid
// holds, from the bus's Debug.Stats (root only).
func matchRules(conn *dbus.Conn, pid uint32) uint32 {
	var names []string
	if conn.BusObject().Call("org.freedesktop.DBus.ListNames", 0).Store(&names) != nil {
		return 0
	}
	for _, n := range names {
		var p uint32
		if !strings.HasPrefix(n, ":") || conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, n).Store(&p) != nil || p != pid {
			continue
		}
		var stats map[string]dbus.Variant
		if err := conn.BusObject().Call("org.freedesktop.DBus.Debug.Stats.GetConnectionStats", 0, n).Store(&stats); err != nil {
			return 0
		}
		rules, _ := stats["MatchRules"].Value().(uint32)
		return rules
	}
	return 0
}

// TestNotifierRealBusChecksSender runs dkmsd-notify between a private system
// bus *without* dkmsd's policy (anyone may send org.dkmsd.Manager1 signals
// there) and a session bus with a recording notification server: the
// notifier itself must tell root's signals from others'.
func TestNotifierRealBusChecksSender(t *testing.T) {
	reportingPrereqs(t)
	t.Parallel()
	dir := sharedDir(t)
	system := startSystemBus(t, dir, false)
	session := startSessionBus(t, dir, 0)
	fake := &fakeNotifications{}
	sconn, err := dbus.Connect(session)
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close()
	if err := sconn.Export(fake, "/org/freedesktop/Notifications", "org.freedesktop.Notifications"); err != nil {
		t.Fatal(err)
	}
	if reply, err := sconn.RequestName("org.freedesktop.Notifications", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own org.freedesktop.Notifications: %v %v", reply, err)
	}
	rec := listen(t, system, report.Interface)
	startNotifier(t, 0, system, session, rec.conn)
	helper := helperBinary(t, dir)
	emit := func(args ...any) {
		t.Helper()
		if err := rec.conn.Emit(report.Path, report.Interface+".BuildFailed", args...); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("root sender is notified", func(t *testing.T) {
		emit("a<b>&c", "1.0", "6.1.0-56-amd64", "x86_64", "/var/lib/dkms/.dkmsd/failed/a.log", "exit status 2")
		n, ok := fake.waitFor(t, "a&lt;b&gt;&amp;c")
		if !ok {
			t.Fatalf("no notification for root's BuildFailed; got %+v", fake.take())
		}
		if n.Signature != "susssasa{sv}i" {
			t.Errorf("Notify signature %q, want susssasa{sv}i", n.Signature)
		}
		if n.AppName != "dkmsd" || n.Summary != "Kernel module build failed" || n.Timeout != 0 || n.Icon != "dialog-error" {
			t.Errorf("notification = %+v", n)
		}
		if u, ok := n.Hints["urgency"].Value().(byte); !ok || u != 2 {
			t.Errorf("urgency hint = %v (%s), want byte 2", n.Hints["urgency"], n.Hints["urgency"].Signature())
		}
		if c, _ := n.Hints["category"].Value().(string); c != "device.error" {
			t.Errorf("category hint = %v", n.Hints["category"])
		}
		for _, want := range []string{"<b>a&lt;b&gt;&amp;c/1.0</b>", "<b>6.1.0-56-amd64</b>", "/var/lib/dkms/.dkmsd/failed/a.log"} {
			if !strings.Contains(n.Body, want) {
				t.Errorf("body lacks %q: %s", want, n.Body)
			}
		}
		fake.take()
	})

	t.Run("non-root sender is ignored", func(t *testing.T) {
		// The forger stays connected, so the notifier can look it up and
		// must find uid nobody.
		cmd := helperCmd(helper, nobody, "forge", system, "DKMSD_HELPER_LINGER=1")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stdin.Close(); cmd.Wait() }()
		line, err := bufio.NewReader(stdout).ReadString('\n')
		var forged helperReport
		if err != nil || json.Unmarshal([]byte(line), &forged) != nil {
			t.Fatalf("forging helper: %q %v", line, err)
		}
		// Without our policy, the forged signals are delivered…
		rec.waitFor(t, "forged BuildFailed", func(s *dbus.Signal) bool { return s.Sender == forged.Unique && member(s) == "BuildFailed" })
		rec.waitFor(t, "forged TransactionFinished", func(s *dbus.Signal) bool {
			return s.Sender == forged.Unique && member(s) == "TransactionFinished"
		})
		// …then root's, which the notifier handles after them.
		emit("sentinel_one", "1.0", "6.1.0-56-amd64", "x86_64", "/tmp/s.log", "")
		if _, ok := fake.waitFor(t, "sentinel_one"); !ok {
			t.Fatalf("no notification for root's signal after the forged ones; got %+v", fake.take())
		}
		for _, n := range fake.take() {
			if !strings.Contains(n.Body, "sentinel_one") {
				t.Errorf("the notifier showed uid %d's forged signal: %+v", nobody, n)
			}
		}
	})

	t.Run("no-op transaction shows nothing", func(t *testing.T) {
		if err := rec.conn.Emit(report.Path, report.Interface+".TransactionFinished", "dkms autoinstall", "0 installed, 0 failed, 0 skipped",
			uint32(0), uint32(0), uint32(0), []string{}); err != nil {
			t.Fatal(err)
		}
		emit("sentinel_two", "1.0", "6.1.0-56-amd64", "x86_64", "/tmp/s.log", "")
		if _, ok := fake.waitFor(t, "sentinel_two"); !ok {
			t.Fatalf("no notification for the sentinel; got %+v", fake.take())
		}
		for _, n := range fake.take() {
			if !strings.Contains(n.Body, "sentinel_two") {
				t.Errorf("a no-op transaction was shown: %+v", n)
			}
		}
	})

	t.Run("short-lived root sender is notified", func(t *testing.T) {
		// A dkms command emits BuildFailed (or TransactionFinished) and
		// exits at once; its notification must not depend on the
		// command still being connected when the notifier looks at it.
		var done helperReport
		runHelper(t, helperCmd(helper, 0, "emit", system, "DKMSD_HELPER_MODULE=short_lived"), &done)
		rec.waitFor(t, "the short-lived BuildFailed", func(s *dbus.Signal) bool { return s.Sender == done.Unique })
		if _, ok := fake.waitFor(t, "short_lived"); !ok {
			t.Errorf("no notification for a BuildFailed from root that disconnected right after sending it " +
				"(report.RunNotifier asks the bus for the sender's uid after it has left, fails and drops the signal)")
		}
	})
}

// dunstConfig is dunst's configuration for the test: Debian's defaults,
// with notifications that stay until closed, so the screenshot and
// dunstctl history see them all.
const dunstConfig = `[global]
    monitor = 0
    follow = none
    width = 460
    height = 300
    origin = top-right
    offset = 10x10
    notification_limit = 0
    indicate_hidden = yes
    separator_height = 2
    padding = 8
    horizontal_padding = 8
    frame_width = 3
    frame_color = "#aaaaaa"
    separator_color = frame
    font = Monospace 10
    markup = full
    format = "<b>%s</b>\n%b"
    alignment = left
    word_wrap = yes
    ignore_newline = no
    stack_duplicates = false
    show_indicators = no
    sticky_history = yes
    history_length = 20
[urgency_low]
    background = "#222222"
    foreground = "#888888"
    timeout = 0
[urgency_normal]
    background = "#285577"
    foreground = "#ffffff"
    timeout = 0
[urgency_critical]
    background = "#900000"
    foreground = "#ffffff"
    frame_color = "#ff0000"
    timeout = 0
`

// dunstNotification is one entry of `dunstctl history`.
type dunstNotification struct {
	Summary, Body, AppName, Category string
}

// TestNotifyRealDunstRealBusRealHeaders is the desktop path end to end: the
// dkms command as root on a private system bus with dkmsd's policy;
// dkmsd-notify as the desktop user (uid nobody) between that bus and the
// user's session bus, where Debian's dunst draws on an Xvfb display.
func TestNotifyRealDunstRealBusRealHeaders(t *testing.T) {
	reportingPrereqs(t)
	testkit.RequireTool(t, "openssl", "openssl")
	testkit.RequireTool(t, "dunst", "dunst")
	testkit.RequireTool(t, "dunstctl", "dunst")
	testkit.RequireTool(t, "Xvfb", "xvfb")
	testkit.RequireTool(t, "import", "imagemagick")
	t.Parallel()
	root, k := moduleRoot(t, "dkmsd_failbuild-1.0")
	dir := sharedDir(t)
	system := startSystemBus(t, dir, true)
	session := startSessionBus(t, dir, nobody)
	display := startXvfb(t)
	desk := startDunst(t, nobodyDir(t, dir, "home"), display, session)
	rec := listen(t, system, report.Interface)
	startNotifier(t, nobody, system, session, rec.conn)

	env := baseEnv("DBUS_SYSTEM_BUS_ADDRESS=" + system)

	// A success-only no-op transaction: nothing to show.
	if r := dkms(t, env, "--root", root, "autoinstall", "-k", k); r.Code != 0 {
		t.Fatalf("no-op autoinstall: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	rec.waitFor(t, "no-op TransactionFinished", named(report.Interface+".TransactionFinished"))
	rec.take()

	// A failing autoinstall.
	if r := dkms(t, env, "--root", root, "add", "dkmsd_failbuild/1.0"); r.Code != 0 {
		t.Fatalf("add: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	if r := dkms(t, env, "--root", root, "autoinstall", "-k", k); r.Code != 11 {
		t.Errorf("failing autoinstall: exit %d, want 11\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	failed := rec.waitFor(t, "BuildFailed", named(report.Interface+".BuildFailed"))
	log, _ := failed.Body[4].(string)
	rec.waitFor(t, "TransactionFinished", named(report.Interface+".TransactionFinished"))
	// Let dunst draw what it was sent.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && strings.TrimSpace(desk.ctl(t, "count", "displayed")) != "2" {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	checkCriticalOnScreen(t, display)

	desk.ctl(t, "close-all")
	history := dunstHistory(t, desk.ctl(t, "history"))
	checkAutoinstallNotifications(t, history, k, log)

	// A failing `dkms build`: BuildFailed is the command's last signal.
	before := len(history)
	if r := dkms(t, env, "--root", root, "build", "dkmsd_failbuild/1.0", "-k", k); r.Code != 10 {
		t.Errorf("failing build: exit %d, want 10\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	rec.waitFor(t, "BuildFailed of dkms build", func(s *dbus.Signal) bool {
		return s.Name == report.Interface+".BuildFailed" && s.Sender != failed.Sender
	})
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && strings.TrimSpace(desk.ctl(t, "count", "displayed")) == "0" {
		time.Sleep(100 * time.Millisecond)
	}
	desk.ctl(t, "close-all")
	if after := dunstHistory(t, desk.ctl(t, "history")); len(after) != before+1 {
		t.Errorf("a failing `dkms build` gave %d notifications, want 1 "+
			"(report.RunNotifier asks for the uid of a sender that has already exited, and drops the signal)", len(after)-before)
	}
}

// startXvfb starts a virtual display and returns its name (":N").
func startXvfb(t *testing.T) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	x := exec.Command("Xvfb", "-displayfd", "3", "-screen", "0", "1024x600x24", "-nolisten", "tcp", "-ac")
	x.ExtraFiles = []*os.File{w}
	startDaemon(t, "Xvfb", x)
	w.Close()
	return ":" + readLineFrom(t, r, "Xvfb -displayfd")
}

// dunstUser is the desktop user (nobody) running dunst.
type dunstUser struct {
	env []string
}

// startDunst starts the desktop user's notification server on display,
// configured from home, and waits until it owns
// org.freedesktop.Notifications on the session bus.
func startDunst(t *testing.T, home, display, session string) dunstUser {
	t.Helper()
	if err := os.WriteFile(filepath.Join(home, "dunstrc"), []byte(dunstConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	u := dunstUser{env: baseEnv("HOME="+home, "DISPLAY="+display, "DBUS_SESSION_BUS_ADDRESS="+session)}
	d := exec.Command("dunst", "-config", filepath.Join(home, "dunstrc"))
	d.Env, d.Dir = u.env, home
	startDaemon(t, "dunst", asUser(nobody, d))
	waitDunst := time.Now().Add(10 * time.Second)
	for {
		c := asUser(nobody, exec.Command("dunstctl", "count", "displayed"))
		c.Env = u.env
		if c.Run() == nil {
			return u
		}
		if time.Now().After(waitDunst) {
			t.Fatal("dunst did not take org.freedesktop.Notifications")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ctl runs dunstctl as the desktop user and returns what it printed.
func (u dunstUser) ctl(t *testing.T, args ...string) string {
	t.Helper()
	c := asUser(nobody, exec.Command("dunstctl", args...))
	c.Env = u.env
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("dunstctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// checkCriticalOnScreen takes a screenshot of display and checks that it
// shows a critical notification; DKMSD_NOTIFICATION_SCREENSHOT names
// where to keep it.
func checkCriticalOnScreen(t *testing.T, display string) {
	t.Helper()
	shot := filepath.Join(t.TempDir(), "notification-failure.png")
	imp := exec.Command("import", "-display", display, "-window", "root", shot)
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("import: %v: %s", err, out)
	}
	if n := criticalPixels(t, shot); n < 5000 {
		t.Errorf("the screenshot shows no critical notification (%d pixels of its #900000 background)", n)
	}
	if dst := os.Getenv("DKMSD_NOTIFICATION_SCREENSHOT"); dst != "" {
		b, err := os.ReadFile(shot)
		if err == nil {
			err = os.WriteFile(dst, b, 0o644)
		}
		if err != nil {
			t.Errorf("saving the screenshot: %v", err)
		}
	}
}

// checkAutoinstallNotifications checks what dunst showed for the failing
// autoinstall on k: one build-failed notification naming the module, the
// kernel and log, and one summary (none for the no-op before it).
func checkAutoinstallNotifications(t *testing.T, history []dunstNotification, k, log string) {
	t.Helper()
	var buildFailed, summaries []dunstNotification
	for _, n := range history {
		switch {
		case n.Summary == "Kernel module build failed":
			buildFailed = append(buildFailed, n)
		case strings.HasPrefix(n.Summary, "Kernel modules"):
			summaries = append(summaries, n)
		default:
			t.Errorf("unexpected notification %+v", n)
		}
		if n.AppName != "dkmsd" {
			t.Errorf("notification from app %q, want dkmsd", n.AppName)
		}
	}
	if len(buildFailed) != 1 {
		t.Errorf("%d build-failed notifications, want 1: %+v", len(buildFailed), history)
	} else {
		n := buildFailed[0]
		for _, want := range []string{"<b>dkmsd_failbuild/1.0</b>", "<b>" + k + "</b>", "Build log: " + log} {
			if !strings.Contains(n.Body, want) {
				t.Errorf("build-failed notification lacks %q: %q", want, n.Body)
			}
		}
		if n.Category != "device.error" {
			t.Errorf("category %q, want device.error", n.Category)
		}
	}
	// The autoinstall's summary; none for the no-op before it.
	if len(summaries) != 1 || summaries[0].Summary != "Kernel modules: some failed to build" || summaries[0].Body != "0 installed, 1 failed, 0 skipped" {
		t.Errorf("summary notifications %+v, want one \"Kernel modules: some failed to build\" for the failing autoinstall and none for the no-op "+
			"(dkms exits right after TransactionFinished; report.RunNotifier then cannot get the sender's uid and drops it)", summaries)
	}
}

// dunstHistory decodes `dunstctl history` (dbus-send's JSON of aa{sv}).
func dunstHistory(t *testing.T, out string) []dunstNotification {
	t.Helper()
	type field struct {
		Data any `json:"data"`
	}
	var h struct {
		Data [][]map[string]field `json:"data"`
	}
	if err := json.Unmarshal([]byte(out), &h); err != nil {
		t.Fatalf("dunstctl history: %v\n%s", err, out)
	}
	var ns []dunstNotification
	if len(h.Data) == 0 {
		return nil
	}
	for _, m := range h.Data[0] {
		s := func(k string) string { v, _ := m[k].Data.(string); return v }
		ns = append(ns, dunstNotification{Summary: s("summary"), Body: s("body"), AppName: s("appname"), Category: s("category")})
	}
	return ns
}

// criticalPixels counts the pixels of dunst's critical background.
func criticalPixels(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r>>8 >= 0x88 && r>>8 <= 0x98 && g>>8 < 0x10 && bl>>8 < 0x10 {
				n++
			}
		}
	}
	return n
}
