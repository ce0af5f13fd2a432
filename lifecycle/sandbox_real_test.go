package lifecycle_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// sandboxUID is the uid builds run as by default: dkmsd-build's, else
// nobody's.
func sandboxUID(t *testing.T) string {
	for _, n := range []string{"dkmsd-build", "nobody"} {
		if u, err := user.Lookup(n); err == nil {
			return u.Uid
		}
	}
	t.Fatal("neither dkmsd-build nor nobody exists")
	return ""
}

// TestBuildRealHeadersHostileContained builds testdata's dkmsd_hostile,
// whose dkms.conf and Makefile try to write /etc, read root's files and
// the MOK key, reach a TCP listener of the test's, leave a daemon behind,
// delete $HOME and write the source and the headers. With the default
// sandbox every attempt runs (TRIED) and fails (no ESCAPED); the files
// are byte for byte unchanged, the listener got no connection, no
// process is left, and the dkms.conf's $(…) ran as the build user.
func TestBuildRealHeadersHostileContained(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "bwrap", "bubblewrap")
	k := testkit.Kernels(t, 1)[0]
	r := newRealRoot(t, []string{k}, "dkmsd_hostile-1.0")
	headers, err := filepath.EvalSymlinks(r.path("lib/modules", k, "build"))
	if err != nil {
		t.Fatal(err)
	}
	// What an escape would leave on the machine is cleaned up after.
	for _, p := range []string{"/etc/dkmsd-pwned", "/etc/dkmsd-pwned-conf", filepath.Join(headers, "pwned")} {
		if _, err := os.Lstat(p); err == nil {
			t.Fatalf("%s exists before the build", p)
		}
		t.Cleanup(func() { os.Remove(p) })
	}
	// Signing off, so that the key can be a marked file anyone may read:
	// only the sandbox's mask keeps it out.
	writeFile(t, r.path("etc/dkms/framework.conf"), "sign_file=/nonexistent\n", 0o644)
	key := r.path("var/lib/dkms/mok.key")
	writeFile(t, key, "MOK-KEY-MARKER-"+fmt.Sprint(rand.Uint64())+"\n", 0o644)
	secretDir := r.path("root/.ssh")
	writeFile(t, filepath.Join(secretDir, "id_ed25519"), "SSH-SECRET-MARKER\n", 0o600)
	if err := os.Chmod(secretDir, 0o700); err != nil {
		t.Fatal(err)
	}
	home := r.path("home/victim")
	writeFile(t, filepath.Join(home, ".profile"), "# keep me\n", 0o644)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sleep := fmt.Sprintf("3%d.5", rand.Uint32()%100000)
	t.Cleanup(func() {
		for _, p := range testkit.ProcessesWith(sleep) {
			pid, _, _ := strings.Cut(p, ":")
			if n, err := strconv.Atoi(pid); err == nil {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
		}
	})
	env, err := lifecycle.NewEnv(t.Context(), tree.NewLayout(r.root), r.rec)
	if err != nil {
		t.Fatal(err)
	}
	env.Environ = append(os.Environ(), "HOME="+home, "DKMSD_HOSTILE_KEY="+key,
		"DKMSD_HOSTILE_SECRET="+filepath.Join(secretDir, "id_ed25519"),
		"DKMSD_HOSTILE_PORT="+fmt.Sprint(ln.Addr().(*net.TCPAddr).Port), "DKMSD_HOSTILE_SLEEP="+sleep)
	watched := []string{home, r.path("root"), r.path("usr/src/dkmsd_hostile-1.0"), filepath.Dir(key), "/root/.ssh", headers}
	var before [][]string
	for _, w := range watched {
		before = append(before, snapshotFiles(t, w, key))
	}
	keyBefore, _ := os.ReadFile(key)
	start := time.Now()
	if err := lifecycle.Build(t.Context(), env, realTarget("dkmsd_hostile", "1.0", k)); err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Logf("hostile build: %v", time.Since(start))

	built := filepath.Join(r.path("var/lib/dkms/dkmsd_hostile/1.0", k, realArch))
	log, err := os.ReadFile(filepath.Join(built, "log/make.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, what := range []string{"write-etc", "read-root-ssh", "read-secret", "read-mok-key", "tcp", "daemon", "rm-home", "write-source", "write-headers"} {
		if !bytes.Contains(log, []byte("TRIED "+what)) {
			t.Errorf("make.log: %s was not tried", what)
		}
		if bytes.Contains(log, []byte("ESCAPED "+what)) {
			t.Errorf("make.log: %s escaped the sandbox", what)
		}
	}
	// The module holds what the build could read of the secrets: nothing.
	ko, err := os.ReadFile(filepath.Join(built, "module", "dkmsd_hostile_uid"+sandboxUID(t)+".ko"))
	if err != nil {
		t.Fatalf("the dkms.conf's $(id -u) did not run as the build user: %v", err)
	}
	if string(ko) != "built\n" {
		t.Errorf("the build read secrets: its module holds %q", ko)
	}
	if bytes.Contains(log, []byte("MARKER")) {
		t.Errorf("a secret reached make.log:\n%s", log)
	}
	for _, p := range []string{"/etc/dkmsd-pwned", "/etc/dkmsd-pwned-conf", filepath.Join(headers, "pwned")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was written", p)
		}
	}
	for i, w := range watched {
		if gone, added := testkit.Changes(before[i], snapshotFiles(t, w, key)); len(gone)+len(added) > 0 {
			t.Errorf("%s changed: gone %q, added %q", w, gone, added)
		}
	}
	if keyAfter, _ := os.ReadFile(key); !bytes.Equal(keyBefore, keyAfter) {
		t.Error("the MOK key changed")
	}
	if err := ln.(*net.TCPListener).SetDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Error("the build reached the test's TCP listener")
	}
	if left := testkit.ProcessesWith(sleep); len(left) > 0 {
		t.Errorf("the build's daemon outlived it: %q", left)
	}
}

// snapshotFiles is testkit.Snapshot of dir, less the entries of the dkms
// tree's own (dir's) that a build changes, keeping only key.
func snapshotFiles(t *testing.T, dir, key string) []string {
	snap := testkit.Snapshot(t, dir)
	if dir != filepath.Dir(key) {
		return snap
	}
	return slices.DeleteFunc(snap, func(l string) bool { return !strings.HasPrefix(l, filepath.Base(key)+" ") })
}

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// probeFiles is a module whose "build" records who ran it and in which
// PID and network namespaces, as its module file.
func probeFiles() map[string]string {
	return map[string]string{
		"dkms.conf": "PACKAGE_NAME=\"dkmsd_probe\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_probe\"\n" +
			"DEST_MODULE_LOCATION[0]=\"/extra\"\nSTRIP[0]=\"no\"\nMAKE[0]=\"sh ./probe.sh\"\n",
		"probe.sh": "{ echo uid=$(id -u); echo pid=$(readlink /proc/self/ns/pid); echo net=$(readlink /proc/self/ns/net); } > dkmsd_probe.ko\n",
	}
}

// TestBuildRealHeadersSandboxModes builds the probe module under each
// build_sandbox and build_user setting, and with BUILD_SANDBOX=no, and
// reads from its module file who built it and where: auto and bwrap as
// the build user in namespaces of their own, user as the build user in
// the machine's, none and the opt-out as root. auto without a build
// user falls back to root and says so once; bwrap without one fails.
func TestBuildRealHeadersSandboxModes(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "bwrap", "bubblewrap")
	k := testkit.Kernels(t, 1)[0]
	hostPID, _ := os.Readlink("/proc/self/ns/pid")
	hostNet, _ := os.Readlink("/proc/self/ns/net")
	uid := sandboxUID(t)
	sandboxed := "uid=" + uid + " isolated"
	cases := []struct {
		name, framework, moduleConf string
		want                        string // "uid=N isolated|host", or "fails"
		warning                     string
	}{
		{name: "default", want: sandboxed},
		{name: "bwrap", framework: "build_sandbox=bwrap\n", want: sandboxed},
		{name: "user", framework: "build_sandbox=user\n", want: "uid=" + uid + " host"},
		{name: "none", framework: "build_sandbox=none\n", want: "uid=0 host"},
		{name: "opt-out", moduleConf: "BUILD_SANDBOX=no\n", want: "uid=0 host"},
		{name: "auto-no-user", framework: "build_user=dkmsd-no-such-user\n", want: "uid=0 host",
			warning: "Warning: builds run as root: no build user exists (dkmsd-no-such-user) (build_sandbox=auto in framework.conf)."},
		{name: "bwrap-no-user", framework: "build_sandbox=bwrap\nbuild_user=dkmsd-no-such-user\n", want: "fails"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRealRoot(t, []string{k})
			// user mode has no sandbox to reach a root below 0700 dirs.
			for d := r.root; d != filepath.Clean(os.TempDir()) && d != "/"; d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			testkit.WriteModule(t, r.path("usr/src/dkmsd_probe-1.0"), probeFiles())
			writeFile(t, r.path("etc/dkms/framework.conf"), "sign_file=/nonexistent\n"+c.framework, 0o644)
			if c.moduleConf != "" {
				writeFile(t, r.path("etc/dkms/dkmsd_probe.conf"), c.moduleConf, 0o644)
			}
			env, err := lifecycle.NewEnv(t.Context(), tree.NewLayout(r.root), r.rec)
			if err != nil {
				t.Fatal(err)
			}
			env.Force = true
			tg := realTarget("dkmsd_probe", "1.0", k)
			err = lifecycle.Build(t.Context(), env, tg)
			if c.want == "fails" {
				if err == nil || !strings.Contains(err.Error(), "The build sandbox cannot be used") {
					t.Fatalf("build: %v, want the sandbox refused", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			if c.warning != "" { // a second build says nothing more
				if err := lifecycle.Build(t.Context(), env, tg); err != nil {
					t.Fatalf("second build: %v", err)
				}
			}
			ko, err := os.ReadFile(r.path("var/lib/dkms/dkmsd_probe/1.0", k, realArch, "module/dkmsd_probe.ko"))
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(string(ko)), "\n") {
				name, v, _ := strings.Cut(l, "=")
				got[name] = v
			}
			where := "mixed"
			switch {
			case got["pid"] == hostPID && got["net"] == hostNet:
				where = "host"
			case got["pid"] != hostPID && got["net"] != hostNet:
				where = "isolated"
			}
			if s := "uid=" + got["uid"] + " " + where; s != c.want {
				t.Errorf("built as %q (%q), want %q", s, ko, c.want)
			}
			if n := strings.Count(r.infoText(), "builds run as"); c.warning == "" && n > 0 || c.warning != "" && (n != 1 || !strings.Contains(r.infoText(), c.warning)) {
				t.Errorf("fallback said %d times, want %q once; output:\n%s", n, c.warning, r.infoText())
			}
		})
	}
}

// TestBuildRealHeadersSandboxSameBytes builds dkmsd_hello (kbuild, signed
// with the root's MOK key) as root without the sandbox and then in it:
// the module files are byte for byte the same.
func TestBuildRealHeadersSandboxSameBytes(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "bwrap", "bubblewrap")
	k := testkit.Kernels(t, 1)[0]
	r := newRealRoot(t, []string{k}, "dkmsd_hello-1.0")
	ko := r.path("var/lib/dkms/dkmsd_hello/1.0", k, realArch, "module/dkmsd_hello.ko")
	var built [][]byte
	for _, mode := range []string{"none", "bwrap"} {
		writeFile(t, r.path("etc/dkms/framework.conf"), "build_sandbox="+mode+"\n", 0o644)
		env, err := lifecycle.NewEnv(t.Context(), tree.NewLayout(r.root), r.rec)
		if err != nil {
			t.Fatal(err)
		}
		env.Force = true
		if err := lifecycle.Build(t.Context(), env, realTarget("dkmsd_hello", "1.0", k)); err != nil {
			t.Fatalf("%s build: %v", mode, err)
		}
		b, err := os.ReadFile(ko)
		if err != nil {
			t.Fatal(err)
		}
		built = append(built, b)
	}
	if !bytes.Contains(built[0], []byte(sigMarker)) {
		t.Error("the module was not signed")
	}
	if !bytes.Equal(built[0], built[1]) {
		t.Errorf("the sandboxed build differs: %d bytes against %d unsandboxed", len(built[1]), len(built[0]))
	}
}

// TestBuildRealHeadersSandboxRefusalSaid: a build that fails because the
// sandbox refused it a write outside its build dir fails as dkms's failed
// make does, then says the sandbox refused it and how to let the module
// out; let out with BUILD_SANDBOX=no, it builds.
func TestBuildRealHeadersSandboxRefusalSaid(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "bwrap", "bubblewrap")
	k := testkit.Kernels(t, 1)[0]
	r := newRealRoot(t, []string{k})
	stamp := r.path("var/lib/dkms/dkmsd_stamp.stamp")
	testkit.WriteModule(t, r.path("usr/src/dkmsd_stamp-1.0"), map[string]string{
		"dkms.conf": "PACKAGE_NAME=\"dkmsd_stamp\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_stamp\"\n" +
			"DEST_MODULE_LOCATION[0]=\"/extra\"\nSTRIP[0]=\"no\"\nMAKE[0]=\"sh ./stamp.sh " + stamp + "\"\n",
		"stamp.sh": "set -e\necho stamped > \"$1\"\necho built > dkmsd_stamp.ko\n",
	})
	writeFile(t, r.path("etc/dkms/framework.conf"), "sign_file=/nonexistent\n", 0o644)
	tg := realTarget("dkmsd_stamp", "1.0", k)
	err := lifecycle.Build(t.Context(), r.env, tg)
	var le *lifecycle.Error
	if !errors.As(err, &le) || le.Kind != lifecycle.KindBuildFailed {
		t.Fatalf("sandboxed build: %v, want a failed make", err)
	}
	want := []string{
		fmt.Sprintf("Bad return status for module build on kernel: %s (%s)", k, realArch),
		fmt.Sprintf("Consult %s for more information.", r.path("var/lib/dkms/dkmsd_stamp/1.0/build/make.log")),
		fmt.Sprintf("The build ran as user %s in dkmsd's build sandbox (bwrap), which refused it something: \"./stamp.sh: 2: cannot create %s: Read-only file system\".", sandboxUser(t), stamp),
		fmt.Sprintf("If dkmsd_stamp needs it, build it without the sandbox: BUILD_SANDBOX=no in %s.", r.path("etc/dkms/dkmsd_stamp.conf")),
	}
	if !slices.Equal(le.Lines, want) {
		t.Errorf("error lines:\n got %q\nwant %q", le.Lines, want)
	}
	writeFile(t, r.path("etc/dkms/dkmsd_stamp.conf"), "BUILD_SANDBOX=no\n", 0o644)
	if err := lifecycle.Build(t.Context(), r.env, tg); err != nil {
		t.Fatalf("build let out of the sandbox: %v", err)
	}
	if b, err := os.ReadFile(stamp); err != nil || string(b) != "stamped\n" {
		t.Errorf("stamp: %q, %v", b, err)
	}
}

// sandboxUser is the name builds run as by default.
func sandboxUser(t *testing.T) string {
	for _, n := range []string{"dkmsd-build", "nobody"} {
		if _, err := user.Lookup(n); err == nil {
			return n
		}
	}
	t.Fatal("neither dkmsd-build nor nobody exists")
	return ""
}
