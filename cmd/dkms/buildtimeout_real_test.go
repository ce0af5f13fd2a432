package main

// build_timeout: a build that hangs is killed, process tree and all, and
// fails as a build does; a kernel hook meanwhile leaves its kernel pending
// for the process that holds the lock.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// sleeperModule writes dkmsd_sleeper/1.0, whose make never ends: one job
// sleeps, another runs a subshell that starts a background sleep and
// waits for it (a grandchild of make that make itself never signals).
// Every sleep's argument is 1000.<marker>, which the returned marker
// finds in /proc. confExtra are more dkms.conf lines.
func sleeperModule(t *testing.T, b *batchRoot, confExtra ...string) (marker string) {
	t.Helper()
	marker = fmt.Sprintf("1000.%d", rand.Uint32())
	conf := "PACKAGE_NAME=\"dkmsd_sleeper\"\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=\"dkmsd_sleeper\"\n" +
		"DEST_MODULE_LOCATION[0]=\"/extra\"\nMAKE[0]=\"make -f sleeper.mk\"\nAUTOINSTALL=\"yes\"\n" + strings.Join(confExtra, "\n") + "\n"
	mk := fmt.Sprintf("all: asleep waiting\nasleep:\n\tsleep %[1]s\nwaiting:\n\t( sleep %[1]s & wait ); echo never\n", marker)
	b.writeModuleFiles(t, "dkmsd_sleeper", "1.0", map[string]string{"dkms.conf": conf, "sleeper.mk": mk})
	// A test that fails leaves no sleep behind.
	t.Cleanup(func() {
		for _, p := range testkit.ProcessesWith(marker) {
			pid, _, _ := strings.Cut(p, ":")
			if n, err := strconv.Atoi(pid); err == nil {
				_ = syscall.Kill(n, syscall.SIGKILL)
			}
		}
	})
	return marker
}

// waitForSleeps waits until n processes with marker run, and fails the
// test when they do not come within limit.
func waitForSleeps(t *testing.T, marker string, n int, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for len(testkit.ProcessesWith(marker)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the build's sleeps did not start within %v: %q", limit, testkit.ProcessesWith(marker))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startDkms starts `dkms --root R args…` and returns a channel that gets
// its result and how long it ran.
func startDkms(t *testing.T, b *batchRoot, args ...string) <-chan timedResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	cmd := b.command(ctx, b.env, args...)
	done := make(chan timedResult, 1)
	start := time.Now()
	go func() {
		defer cancel()
		r, err := testkit.Exec(cmd)
		done <- timedResult{r, err, time.Since(start)}
	}()
	return done
}

type timedResult struct {
	testkit.Result
	err  error
	took time.Duration
}

// wantFailedBuildTree checks that the sleeper's timed-out build left the
// tree as a failed build does: the build dir with its make.log (which says
// the build was killed at the limit), nothing built for the kernel, no
// temporary file, and the lock free.
func wantFailedBuildTree(t *testing.T, b *batchRoot, kernel string, secs int) {
	t.Helper()
	log, err := os.ReadFile(b.path("var/lib/dkms/dkmsd_sleeper/1.0/build/make.log"))
	if err != nil {
		t.Fatalf("make.log of the failed build: %v", err)
	}
	if want := fmt.Sprintf("# dkmsd: the build reached build_timeout (%d seconds) and every process of it was killed.\n", secs); !strings.Contains(string(log), want) {
		t.Errorf("make.log lacks %q:\n%s", want, log)
	}
	if _, err := os.Stat(b.path("var/lib/dkms/dkmsd_sleeper/1.0", kernel)); err == nil {
		t.Errorf("the timed-out build left %s", b.path("var/lib/dkms/dkmsd_sleeper/1.0", kernel))
	}
	if left := dkmsdTempFiles(b.root); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
	lock, err := os.OpenFile(b.path("var/lib/dkms", lifecycle.LockFile), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("the tree lock is still held: %v", err)
	}
}

// timeoutError is what dkms prints when the sleeper's build reaches the
// limit.
func timeoutError(b *batchRoot, kernel string, secs int) string {
	return fmt.Sprintf("Error! Build of dkmsd_sleeper/1.0 for %s (%s) timed out after %d seconds (build_timeout in framework.conf); the build's processes were killed.\nConsult %s for more information.\n",
		kernel, machineArch(), secs, b.path("var/lib/dkms/dkmsd_sleeper/1.0/build/make.log"))
}

// TestBuildTimeoutKillsBuildRealHeaders: a build that never ends is
// stopped at build_timeout: dkms install fails with a build failure's exit
// code (10) and an error naming the limit, soon after it; no process of
// the build is left; the tree is as after a failed build.
func TestBuildTimeoutKillsBuildRealHeaders(t *testing.T) {
	// Not t.Parallel: timing-bound (docs/testing.md, "Using both cores").
	const secs = 3
	b := newBatchRoot(t)
	k := b.kernels[0]
	marker := sleeperModule(t, b)
	writeFramework(t, b, "build_timeout="+strconv.Itoa(secs))
	done := startDkms(t, b, "install", "dkmsd_sleeper/1.0", "-k", k)
	// The make and the sleeps under it, before the limit.
	waitForSleeps(t, marker, 3, secs*time.Second)
	r := <-done
	if r.err != nil {
		t.Fatalf("dkms install: %v\n%s", r.err, r.Out)
	}
	if r.Code != 10 || !strings.Contains(r.Stderr, timeoutError(b, k, secs)) {
		t.Errorf("dkms install: exit %d, stderr:\n%s\nwant exit 10 and\n%s", r.Code, r.Stderr, timeoutError(b, k, secs))
	}
	if r.took < secs*time.Second || r.took > (secs+5)*time.Second {
		t.Errorf("dkms install took %v; want a little over the %d s limit", r.took, secs)
	}
	if left := testkit.ProcessesWith(marker); len(left) > 0 {
		t.Errorf("processes of the build still run: %q", left)
	}
	if left := processesUsing(b.root); len(left) > 0 {
		t.Errorf("processes in the root still run: %v", left)
	}
	wantFailedBuildTree(t, b, k, secs)
	b.wantStatus(t, "dkmsd_sleeper/1.0: added")
}

// TestBuildTimeoutCancelEndsBuildRealHeaders: dkms stopped by SIGTERM
// while it builds (no limit reached) passes SIGTERM to every process of
// the build, so none outlives it, not even the background sleep make never
// signals.
func TestBuildTimeoutCancelEndsBuildRealHeaders(t *testing.T) {
	// Not t.Parallel: timing-bound (docs/testing.md, "Using both cores").
	b := newBatchRoot(t)
	k := b.kernels[0]
	marker := sleeperModule(t, b)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := b.command(ctx, b.env, "install", "dkmsd_sleeper/1.0", "-k", k)
	done := make(chan timedResult, 1)
	go func() {
		r, err := testkit.Exec(cmd)
		done <- timedResult{Result: r, err: err}
	}()
	waitForSleeps(t, marker, 3, 30*time.Second)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || ctx.Err() != nil {
		t.Fatalf("dkms install after SIGTERM: %v (deadline: %v)\n%s", r.err, ctx.Err(), r.Out)
	}
	if r.Code == 0 {
		t.Errorf("dkms install stopped by SIGTERM exited 0\n%s", r.Out)
	}
	if left := testkit.ProcessesWith(marker); len(left) > 0 {
		t.Errorf("processes of the build outlived dkms: %q", left)
	}
}

// TestBuildTimeoutBusyTreeHookCatchesUpRealHeaders is the whole story of a
// hanging build under a package manager: while `dkms install` of a module
// whose make never ends holds the tree lock, a kernel arrives; its hook
// waits only hook_lock_timeout, leaves the kernel pending, says so and
// lets the transaction go on; at build_timeout the build is killed, and
// before letting the lock go that dkms builds the pending kernel's
// modules (the sleeper is for the first kernel only).
func TestBuildTimeoutBusyTreeHookCatchesUpRealHeaders(t *testing.T) {
	// Not t.Parallel: timing-bound (docs/testing.md, "Using both cores").
	// Long enough for dkmsd_hello's real build, which the catch-up does
	// under the same limit, on a busy machine.
	const secs = 25
	b := newBatchRoot(t)
	k, other := b.kernels[0], b.kernels[1]
	marker := sleeperModule(t, b, `BUILD_EXCLUSIVE_KERNEL="^`+regexp.QuoteMeta(k)+`$"`)
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	writeFramework(t, b, "build_timeout="+strconv.Itoa(secs), "hook_lock_timeout=2")
	done := startDkms(t, b, "install", "dkmsd_sleeper/1.0", "-k", k)
	waitForSleeps(t, marker, 3, secs*time.Second)

	ctx, cancel := context.WithTimeout(t.Context(), secs*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, testkit.Binary(t, "dkmsd-apt"), "postinst", other, "/boot/vmlinuz-"+other)
	cmd.Env = append(slices.Clone(b.env), "DKMSD_ROOT="+b.root, "DKMSD_APT_HOOK=off", "DEB_MAINT_PARAMS=configure ")
	start := time.Now()
	hr, err := testkit.Exec(cmd)
	took := time.Since(start)
	if err != nil || ctx.Err() != nil || hr.Code != 0 {
		t.Fatalf("postinst with the tree busy: %v (deadline: %v), exit %d after %v\n%s", err, ctx.Err(), hr.Code, took, hr.Out)
	}
	if took > 6*time.Second {
		t.Errorf("postinst took %v with hook_lock_timeout=2", took)
	}
	if want := "Kernel " + other + " is marked pending: its DKMS modules will be built when that process is done, or by the next kernel hook."; !strings.Contains(hr.Out, want) {
		t.Errorf("postinst output lacks %q:\n%s", want, hr.Out)
	}
	pending := b.path("var/lib/dkms/.dkmsd/hooks/pending", other)
	if _, err := os.Stat(pending); err != nil {
		t.Errorf("the kernel is not marked pending: %v", err)
	}
	if len(testkit.ProcessesWith(marker)) == 0 {
		t.Fatalf("the build ended before the hook gave up: the hook did not meet a busy tree")
	}

	r := <-done
	if r.err != nil {
		t.Fatalf("dkms install: %v\n%s", r.err, r.Out)
	}
	if r.Code != 10 || !strings.Contains(r.Stderr, timeoutError(b, k, secs)) {
		t.Errorf("dkms install: exit %d, stderr:\n%s\nwant exit 10 and\n%s", r.Code, r.Stderr, timeoutError(b, k, secs))
	}
	if left := testkit.ProcessesWith(marker); len(left) > 0 {
		t.Errorf("processes of the build still run: %q", left)
	}
	wantFailedBuildTree(t, b, k, secs)
	if _, err := os.Stat(pending); err == nil {
		t.Errorf("%s is still pending after the lock holder let go", other)
	}
	if want := "Error! Build of dkmsd_hello"; strings.Contains(r.Out, want) {
		t.Errorf("the catch-up's build of dkmsd_hello failed:\n%s", r.Out)
	}
	b.wantStatus(t,
		statusLine("dkmsd_hello", "1.0", other, "installed"),
		"dkmsd_sleeper/1.0: added")
	if ko := onlyKo(t, b.path("lib/modules", other)); !strings.Contains(filepath.Base(ko), "dkmsd_hello.ko") {
		t.Errorf("installed for %s: %s, want dkmsd_hello", other, ko)
	}
}
