package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// hostileConfHead starts every hostile dkms.conf: a valid module whose
// source (dkmsd_hello's) would build.
const hostileConfHead = "PACKAGE_NAME=\"dkmsd_hostile\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_hostile\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n"

// hostileSource writes a module source outside the root: dkmsd_hello's
// code renamed dkmsd_hostile, with conf as its dkms.conf.
func hostileSource(t *testing.T, conf string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "dkmsd_hostile-1.0")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	from := filepath.Join(testkit.ModulesDir(), "dkmsd_hello-1.0")
	for _, f := range []string{"Makefile", "dkmsd_hello.c"} {
		data, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(data), "dkmsd_hello", "dkmsd_hostile")
		if err := os.WriteFile(filepath.Join(dir, strings.ReplaceAll(f, "dkmsd_hello", "dkmsd_hostile")), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "dkms.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// hostileResult is a process that may have been stopped at its limit.
type hostileResult struct {
	testkit.Result
	took     time.Duration
	maxRSS   int64 // bytes
	timedOut bool
}

// runWithin runs `dkms --root R args…` for at most limit, killing its
// process group then (and any process it left behind in the root).
func (b *batchRoot) runWithin(t *testing.T, limit time.Duration, args ...string) hostileResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	cmd := b.command(ctx, b.env, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	res, err := testkit.Exec(cmd)
	r := hostileResult{Result: res, took: time.Since(start), timedOut: ctx.Err() != nil}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.maxRSS = ru.Maxrss << 10
		}
	}
	if err != nil && !r.timedOut && !errors.Is(err, exec.ErrWaitDelay) {
		t.Fatalf("dkms %s: %v", strings.Join(args, " "), err)
	}
	// Commands a dkms.conf started (sleep 600 &) are not dkmsd's to keep.
	for pid := range processesUsing(b.root) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return r
}

// memAvailable is /proc/meminfo's MemAvailable in bytes, or 0.
func memAvailable() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestHostileInputRealHeaders feeds the dkms command hostile or broken
// input, each case on a root of its own: a dkms.conf that does not parse,
// loops forever, sleeps in a command substitution (also through a
// background grandchild that keeps the substitution's pipe open), makes
// the shell interpreter panic, floods a command substitution, leaves its trees through DEST_MODULE_LOCATION,
// BUILT_MODULE_LOCATION or PATCH, or names the module with "/" or spaces;
// MAKE empty or blank (both mean the default make) or "false"; a build
// that makes no .ko; a .ko built for another kernel in a kernel's built
// dir; corrupt initrds. Each refusal has its exit code and a clear error,
// ends within the dkms.conf time limit (10 s) and leaves the root byte for
// byte as it was (a failed build may leave its build dir and its log).
func TestHostileInputRealHeaders(t *testing.T) {
	t.Parallel()
	for _, c := range slices.Concat(hostileConfCases(), hostileBuildCases()) {
		t.Run(c.name, c.run)
	}
}

// hostileCase is one hostile input, run on a root of its own.
type hostileCase struct {
	name string
	// setup prepares the root and returns the command to run.
	setup func(t *testing.T, b *batchRoot) []string
	code  int
	want  []string
	// mayChange are path prefixes (relative to the root) the command
	// may change: a failed build keeps its build dir and log.
	mayChange []string
	// check, for the cases that must succeed, checks the result.
	check func(t *testing.T, b *batchRoot, r hostileResult)
	// memory cases need this much available memory to run safely.
	needMem int64
}

// hostileAdd is the setup that adds a module whose dkms.conf is
// hostileConfHead followed by body.
func hostileAdd(body string) func(*testing.T, *batchRoot) []string {
	return hostileAddRaw(hostileConfHead + body)
}

// unsandboxed runs setup with build_sandbox=none in the root's
// framework.conf: dkms.conf commands run as dkms runs them.
func unsandboxed(setup func(*testing.T, *batchRoot) []string) func(*testing.T, *batchRoot) []string {
	return func(t *testing.T, b *batchRoot) []string {
		f, err := os.OpenFile(b.path("etc/dkms/framework.conf"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = f.WriteString("build_sandbox=none\n")
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			t.Fatal(err)
		}
		return setup(t, b)
	}
}

// hostileAddRaw is the setup that adds a module whose dkms.conf is conf.
func hostileAddRaw(conf string) func(*testing.T, *batchRoot) []string {
	return func(t *testing.T, b *batchRoot) []string {
		return []string{"add", hostileSource(t, conf)}
	}
}

// hostileBuild is the setup that adds a module with body in its conf and
// returns its build command.
func hostileBuild(body string) func(*testing.T, *batchRoot) []string {
	return func(t *testing.T, b *batchRoot) []string {
		b.mustRun(t, "add", hostileSource(t, hostileConfHead+body))
		return []string{"build", "dkmsd_hostile/1.0", "-k", b.kernels[0]}
	}
}

// hostileBuilt checks a build that must succeed.
func hostileBuilt(t *testing.T, b *batchRoot, r hostileResult) {
	if r.Code != 0 {
		t.Errorf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	}
	b.wantStatus(t, statusLine("dkmsd_hostile", "1.0", b.kernels[0], "built"))
}

// hostileFailedBuild is what a failed build may leave: its build dir and
// its log.
var hostileFailedBuild = []string{"var/lib/dkms/dkmsd_hostile/1.0/build/", "var/lib/dkms/.dkmsd/"}

// hostileInitrd is the setup that puts corrupt(the machine's initrd of the
// second kernel) in the root's /boot and returns `dkms initrd` for it.
func hostileInitrd(corrupt func(real []byte) []byte) func(*testing.T, *batchRoot) []string {
	return func(t *testing.T, b *batchRoot) []string {
		k := b.kernels[1]
		real, err := os.ReadFile("/boot/initrd.img-" + k)
		if err != nil {
			testkit.Missing(t, "/boot/initrd.img-"+k+" (apt-get install -y linux-image-cloud-amd64)")
		}
		if err := os.WriteFile(b.path("boot", "initrd.img-"+k), corrupt(real), 0o644); err != nil {
			t.Fatal(err)
		}
		return []string{"initrd", "-k", k}
	}
}

// hostileForeignBuild is the setup that puts the first kernel's build of
// dkmsd_hello, by hand, where the second kernel's would be, and returns
// the install for the second kernel.
func hostileForeignBuild(t *testing.T, b *batchRoot) []string {
	k1, k2 := b.kernels[0], b.kernels[1]
	testkit.CopyModule(t, b.root, "dkmsd_hello-1.0")
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k1)
	from := b.path("var/lib/dkms/dkmsd_hello/1.0", k1, machineArch())
	to := b.path("var/lib/dkms/dkmsd_hello/1.0", k2, machineArch())
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	return []string{"install", "dkmsd_hello/1.0", "-k", k2}
}

// hostileConfCases are the dkms.conf files that must be refused when added.
func hostileConfCases() []hostileCase {
	return []hostileCase{
		{name: "syntax error", setup: hostileAdd("if [ -n \"$kernelver\" ]; then\nMAKE[0]=\"make\" )\nfi\n"),
			code: 8, want: []string{"line 6: syntax error", "Bad conf file."}},
		{name: "endless loop", setup: hostileAdd("while :; do :; done\n"),
			code: 8, want: []string{"gave up after 10s", "Bad conf file."}},
		{name: "sleeping command substitution", setup: hostileAdd("X=$(sleep 600)\n"),
			code: 8, want: []string{"gave up after 10s", "Bad conf file."}},
		// bash would wait the full 600 s for the pipe; dkmsd stops waiting a
		// second after the command itself exits, and says why.
		// Without the build sandbox (as dkms runs it).
		{name: "command substitution held open by a background grandchild", setup: unsandboxed(hostileAdd("X=$(sh -c 'sleep 600 &')\n")),
			code: 8, want: []string{"left a background process holding its output open", "Bad conf file."}},
		// In the sandbox (the default), the command's PID namespace dies
		// with it, taking the grandchild along: the output closes and the
		// add goes on.
		{name: "command substitution with a background grandchild, sandboxed", setup: hostileAdd("X=$(sh -c 'sleep 600 &')\n"),
			check: func(t *testing.T, b *batchRoot, r hostileResult) {
				if r.Code != 0 {
					t.Errorf("exit %d, want 0\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
				}
				b.wantStatus(t, "dkmsd_hostile/1.0: added")
			}},
		// bash prints an error and goes on; the evaluator must not crash
		// (mvdan/sh panics on it): an error naming the file will do.
		{name: "associative array assigned a list without keys", setup: hostileAdd("declare -A opts=(\"\")\n"),
			code: 8, want: []string{"dkms.conf", "Bad conf file."}},
		{name: "command substitution flooding output", setup: hostileAdd("X=$(yes)\n"),
			code: 8, want: []string{"printed more than 1048576 bytes", "Bad conf file."}, needMem: 8 << 30},
		{name: "DEST_MODULE_LOCATION escapes", setup: hostileAddRaw("PACKAGE_NAME=\"dkmsd_hostile\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_hostile\"\nDEST_MODULE_LOCATION[0]=\"/kernel/../../../../etc\"\n"),
			code: 8, want: []string{"'DEST_MODULE_LOCATION' '/kernel/../../../../etc' escapes", "line 4"}},
		{name: "BUILT_MODULE_LOCATION escapes", setup: hostileAdd("BUILT_MODULE_LOCATION[0]=\"../../../etc\"\n"),
			code: 8, want: []string{"'BUILT_MODULE_LOCATION' '../../../etc/' escapes", "line 5"}},
		{name: "PATCH escapes", setup: hostileAdd("PATCH[0]=\"../../../../etc/shadow\"\n"),
			code: 8, want: []string{"'PATCH[0]' '../../../../etc/shadow' escapes", "line 5"}},
		{name: "module name with a slash", setup: hostileAddRaw("PACKAGE_NAME=\"dkmsd/../../evil\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_hostile\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n"),
			code: 8, want: []string{"'PACKAGE_NAME' 'dkmsd/../../evil' contains '/'"}},
		{name: "module name with spaces", setup: hostileAddRaw("PACKAGE_NAME=\"dkmsd hostile\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_hostile\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n"),
			code: 8, want: []string{"'PACKAGE_NAME' 'dkmsd hostile' contains white space"}},
		{name: "version with a slash", setup: hostileAddRaw("PACKAGE_NAME=\"dkmsd_hostile\"\nPACKAGE_VERSION=\"../../1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_hostile\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n"),
			code: 8, want: []string{"'PACKAGE_VERSION' '../../1.0' contains '/'"}},
	}
}

// hostileBuildCases are the builds, installs and initrds of hostile
// modules or corrupt files.
func hostileBuildCases() []hostileCase {
	return []hostileCase{
		// An empty MAKE is dkms's default make; so is a blank one: bash
		// splits it into no command at all, and running nothing to then
		// report that no .ko was built helps no one.
		{name: "empty MAKE", setup: hostileBuild("MAKE[0]=\"\"\n"), check: hostileBuilt},
		{name: "blank MAKE", setup: hostileBuild("MAKE[0]=\"   \"\n"), check: hostileBuilt},
		{name: "MAKE false", setup: hostileBuild("MAKE[0]=\"false\"\n"),
			code: 10, want: []string{"Bad return status for module build on kernel"}, mayChange: hostileFailedBuild},
		{name: "build makes no .ko", setup: hostileBuild("BUILT_MODULE_NAME[1]=\"dkmsd_nothere\"\nDEST_MODULE_LOCATION[1]=\"/extra\"\n"),
			code: 7, want: []string{"Build of dkmsd_nothere.ko failed for: "}, mayChange: hostileFailedBuild},
		{name: "module built for another kernel", setup: hostileForeignBuild,
			code: 6, want: []string{"was built for kernel \"" + "%k1%" + "\"", "Refusing to install it"}},
		{name: "truncated initrd", setup: hostileInitrd(func(real []byte) []byte { return real[:len(real)*6/10] }),
			code: 1, want: []string{"%initrd%", "is unchanged"}},
		{name: "initrd of garbage behind a zstd magic", setup: hostileInitrd(func(real []byte) []byte {
			return append([]byte{0x28, 0xb5, 0x2f, 0xfd}, bytes.Repeat([]byte("garbage "), 4096)...)
		}), code: 1, want: []string{"%initrd%", "zstd segment at offset 0", "is unchanged"}},
		{name: "initrd of unknown format", setup: hostileInitrd(func(real []byte) []byte {
			return append([]byte("\x7fELF"), real[4:1<<16]...)
		}), code: 1, want: []string{"%initrd%", "unknown compression at offset 0", "is unchanged"}},
		{name: "empty initrd", setup: hostileInitrd(func([]byte) []byte { return nil }),
			code: 1, want: []string{"%initrd%", "empty image", "is unchanged"}},
	}
}

// run runs the case on a root of its own: within the time limit, within
// memory, with its exit code and messages, the root left as it was.
func (c hostileCase) run(t *testing.T) {
	t.Parallel()
	if c.needMem > 0 && memAvailable() < c.needMem {
		t.Skipf("needs %d GiB of available memory to run without risk", c.needMem>>30)
	}
	b := newBatchRoot(t)
	args := c.setup(t, b)
	before := contentDigests(t, b.root)
	r := b.runWithin(t, 25*time.Second, args...)
	t.Logf("dkms %s: exit %d in %v (max RSS %d MiB)\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.Code, r.took.Round(time.Millisecond), r.maxRSS>>20, r.Stdout, r.Stderr)
	if r.timedOut {
		t.Errorf("dkms %s still running after %v: the dkms.conf time limit (10 s) did not stop it", strings.Join(args, " "), 25*time.Second)
	}
	if c.needMem > 0 && r.maxRSS > 512<<20 {
		t.Errorf("dkms %s used %d MiB of memory: a dkms.conf can exhaust memory within its time limit", strings.Join(args, " "), r.maxRSS>>20)
	}
	if c.check != nil {
		c.check(t, b, r)
		return
	}
	if r.Code != c.code {
		t.Errorf("exit %d, want %d", r.Code, c.code)
	}
	for _, w := range c.want {
		w = strings.ReplaceAll(w, "%k1%", b.kernels[0])
		w = strings.ReplaceAll(w, "%initrd%", b.path("boot", "initrd.img-"+b.kernels[1]))
		if !strings.Contains(r.Stderr, w) {
			t.Errorf("stderr lacks %q", w)
		}
	}
	if strings.Contains(r.Stderr, "panic:") || strings.Contains(r.Stderr, "fatal error:") {
		t.Errorf("dkms crashed")
	}
	c.checkUnchanged(t, b, before)
}

// checkUnchanged checks that the refused command changed nothing in the
// root but the lock and what c.mayChange allows.
func (c hostileCase) checkUnchanged(t *testing.T, b *batchRoot, before map[string]string) {
	t.Helper()
	lock := "var/lib/dkms/.dkmsd.lock"
	var changed []string
	for _, d := range diffDigests(before, contentDigests(t, b.root)) {
		p := d[strings.Index(d, ": ")+2:]
		ok := p == lock
		for _, m := range c.mayChange {
			ok = ok || strings.HasPrefix(p, m)
		}
		if !ok {
			changed = append(changed, d)
		}
	}
	if len(changed) > 0 {
		t.Errorf("the refused command changed the root: %q", changed)
	}
}
