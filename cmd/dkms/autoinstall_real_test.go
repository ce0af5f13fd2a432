package main

// Integration tests of the batch actions run as processes (autoinstall,
// match, kernel_prerm) on relocated roots, building real modules against
// the machine's headers for two kernels: exit codes, what the processes
// print, concurrent processes on one tree, and the CPU budget that the
// make jobserver enforces. A missing prerequisite fails under CI=true.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// batchRoot is a relocated root for the dkms binary, with the environment
// its processes run in.
type batchRoot struct {
	bin, root string
	env       []string
	kernels   []string
}

// newBatchRoot makes a root over the real headers of two kernels. The
// processes run in the C locale, outside any make jobserver, with no
// parallel_jobs, signing with one MOK key pair made per test process.
func newBatchRoot(t *testing.T) *batchRoot {
	t.Helper()
	testkit.RequireRoot(t)
	for tool, pkg := range map[string]string{"depmod": "kmod", "openssl": "openssl", "make": "make", "gcc": "gcc"} {
		testkit.RequireTool(t, tool, pkg)
	}
	ks := testkit.Kernels(t, 2)
	root, err := filepath.EvalSymlinks(testkit.NewRoot(t, ks...))
	if err != nil {
		t.Fatal(err)
	}
	key, cert := batchMOK(t)
	var env []string
	for _, kv := range os.Environ() {
		switch name, _, _ := strings.Cut(kv, "="); name {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DKMSD_ROOT", "LC_ALL", "LANG",
			// framework.conf settings the environment may also give
			"parallel_jobs", "modprobe_on_install", "post_transaction", "sign_file",
			"mok_signing_key", "mok_certificate", "autoinstall_all_kernels",
			"try_sign_modules", "build_environment":
		default:
			env = append(env, kv)
		}
	}
	env = append(env, "LC_ALL=C", "mok_signing_key="+key, "mok_certificate="+cert, testkit.SignAnywhere)
	return &batchRoot{bin: testkit.Binary(t, "dkms"), root: root, env: env, kernels: ks}
}

var batchMOKPair struct {
	once      sync.Once
	key, cert string
	err       error
}

// batchMOK is a MOK key pair made once per test process.
func batchMOK(t *testing.T) (key, cert string) {
	t.Helper()
	p := &batchMOKPair
	p.once.Do(func() {
		dir, err := os.MkdirTemp("", "dkmsd-batch-mok-")
		if err != nil {
			p.err = err
			return
		}
		p.key, p.cert = filepath.Join(dir, "mok.key"), filepath.Join(dir, "mok.pub")
		if out, err := exec.Command("openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=dkmsd batch test",
			"-newkey", "rsa:2048", "-keyout", p.key, "-outform", "DER", "-out", p.cert).CombinedOutput(); err != nil {
			p.err = fmt.Errorf("openssl: %v: %s", err, out)
		}
	})
	if p.err != nil {
		t.Fatal(p.err)
	}
	return p.key, p.cert
}

func (b *batchRoot) path(rel ...string) string {
	return filepath.Join(append([]string{b.root}, rel...)...)
}

// command is `dkms --root R args…` with the root's environment, killed
// when ctx ends.
func (b *batchRoot) command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.bin, append([]string{"--root", b.root}, args...)...)
	cmd.Env = env
	cmd.Dir = b.root
	return cmd
}

// run runs `dkms --root R args…` (at most 3 minutes).
func (b *batchRoot) run(t *testing.T, args ...string) testkit.Result {
	t.Helper()
	return b.runEnv(t, b.env, args...)
}

// runEnv is run with env instead of the root's environment.
func (b *batchRoot) runEnv(t *testing.T, env []string, args ...string) testkit.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	r, err := testkit.Exec(b.command(ctx, env, args...))
	if err != nil {
		t.Fatalf("dkms %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, r.Stdout, r.Stderr)
	}
	return r
}

// mustRun runs a setup command that must exit 0.
func (b *batchRoot) mustRun(t *testing.T, args ...string) testkit.Result {
	t.Helper()
	r := b.run(t, args...)
	if r.Code != 0 {
		t.Fatalf("dkms %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r
}

// kernelWithInitrd is the newest of the root's kernels that has an initrd
// in the machine's /boot, to copy into the root's.
func (b *batchRoot) kernelWithInitrd(t *testing.T) string {
	t.Helper()
	k := ""
	for _, kk := range b.kernels {
		if _, err := os.Stat("/boot/initrd.img-" + kk); err == nil {
			k = kk
		}
	}
	if k == "" {
		testkit.Missing(t, "an initrd in /boot for "+strings.Join(b.kernels, " or ")+" (apt-get install -y linux-image-cloud-amd64)")
	}
	return k
}

// status is `dkms status` as lines.
func (b *batchRoot) status(t *testing.T) []string {
	t.Helper()
	out := strings.TrimSuffix(b.mustRun(t, "status").Stdout, "\n")
	if out == "" {
		return []string{}
	}
	return strings.Split(out, "\n")
}

func (b *batchRoot) wantStatus(t *testing.T, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if got := b.status(t); !slices.Equal(got, want) {
		t.Errorf("dkms status:\n got %q\nwant %q", got, want)
	}
}

// statusLine is one `dkms status` line for a built or installed version.
func statusLine(module, version, kernel, state string) string {
	return fmt.Sprintf("%s/%s, %s, %s: %s", module, version, kernel, machineArch(), state)
}

// sortedKernels is the kernels in the order dkms status lists them.
func sortedKernels(ks []string) []string {
	s := slices.Clone(ks)
	slices.Sort(s)
	return s
}

// writeModuleFiles writes <root>/usr/src/<name>-<version>/ from a map of
// file name to contents (testkit.WriteModule).
func (b *batchRoot) writeModuleFiles(t *testing.T, name, version string, files map[string]string) {
	t.Helper()
	testkit.WriteModule(t, b.path("usr/src", name+"-"+version), files)
}

// cloneHello writes testdata's dkmsd_hello-1.0 as <name>-<version> into
// the source tree, with extra dkms.conf lines and extra files.
func (b *batchRoot) cloneHello(t *testing.T, name, version string, confExtra []string, extra map[string]string) {
	t.Helper()
	files := testkit.HelloFiles(t, name, version)
	if len(confExtra) > 0 {
		files["dkms.conf"] += strings.Join(confExtra, "\n") + "\n"
	}
	for f, text := range extra {
		files[f] = text
	}
	b.writeModuleFiles(t, name, version, files)
}

// fileDigests maps every path under dir (not following symlinks) to its
// mode, content hash and modification time, or link target: to show that
// a dir was not touched.
func fileDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	return digestTree(t, dir, true)
}

// contentDigests is fileDigests without the modification times: a file
// rewritten with the same bytes is the same.
func contentDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	return digestTree(t, dir, false)
}

// digestTree maps every path under dir (not following symlinks) to its
// mode and content hash, with its modification time when withTimes, or
// to "" for a directory or a link (whose target is in the path).
func digestTree(t *testing.T, dir string, withTimes bool) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range testkit.Tree(t, dir) {
		if strings.HasSuffix(p, "/") || strings.Contains(p, " -> ") {
			out[p] = ""
			continue
		}
		full := filepath.Join(dir, p)
		fi, err := os.Lstat(full)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(full)
		if err != nil {
			t.Fatal(err)
		}
		out[p] = fmt.Sprintf("%v %x", fi.Mode(), sha256.Sum256(data))
		if withTimes {
			out[p] += fmt.Sprintf(" %v", fi.ModTime().UnixNano())
		}
	}
	return out
}

// diffDigests lists what differs between two digests of a tree: "gone:",
// "new:" or "changed:" and the path.
func diffDigests(before, after map[string]string) []string {
	var d []string
	for p, v := range before {
		if w, ok := after[p]; !ok {
			d = append(d, "gone: "+p)
		} else if v != w {
			d = append(d, "changed: "+p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			d = append(d, "new: "+p)
		}
	}
	slices.Sort(d)
	return d
}

// koFiles lists the module files under dir, relative to it, not following
// symlinks (a kernel dir's build link is not entered).
func koFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, p := range testkit.Tree(t, dir) {
		if strings.Contains(p, ".ko") && !strings.Contains(p, " -> ") && !strings.HasSuffix(p, "/") {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func pathPresent(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// failedLogs is the end of each build log named by a job line
// ("… (log: <path>)") of an output.
func failedLogs(stderr string) string {
	var b strings.Builder
	for _, m := range regexp.MustCompile(`\(log: (\S+)\)`).FindAllStringSubmatch(stderr, -1) {
		data, _ := os.ReadFile(m[1])
		fmt.Fprintf(&b, "--- %s:\n%s\n", m[1], tail(data, 30))
	}
	return b.String()
}

// summaryLines are the "Autoinstall on …" lines of an output.
func summaryLines(stdout string) []string {
	var out []string
	for _, l := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(l, "Autoinstall on ") {
			out = append(out, l)
		}
	}
	return out
}

// TestAutoinstallRealHeadersFailbuildExit11 autoinstalls dkmsd_hello and
// dkmsd_failbuild for two kernels: hello is installed on both, failbuild
// is reported failed with the path of a log holding the compiler's error,
// nothing of it is left half-installed, and dkms exits 11.
func TestAutoinstallRealHeadersFailbuildExit11(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k1, k2 := b.kernels[0], b.kernels[1]
	for _, m := range []string{"dkmsd_hello-1.0", "dkmsd_failbuild-1.0"} {
		testkit.CopyModule(t, b.root, m)
	}
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	b.mustRun(t, "add", "dkmsd_failbuild/1.0")

	r := b.run(t, "autoinstall", "-k", k1, "-k", k2)
	t.Logf("dkms autoinstall: exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	if r.Code != 11 {
		t.Errorf("exit %d, want 11 (a module failed)", r.Code)
	}
	var want []string
	for _, k := range []string{k1, k2} {
		want = append(want, "Autoinstall on "+k+" succeeded for module(s) dkmsd_hello.",
			"Autoinstall on "+k+" failed for module(s) dkmsd_failbuild(10).")
	}
	if got := summaryLines(r.Stdout); !slices.Equal(got, want) {
		t.Errorf("summary lines:\n got %q\nwant %q", got, want)
	}
	if !strings.Contains(r.Stderr, "One or more modules failed to install during autoinstall.") {
		t.Errorf("stderr lacks \"One or more modules failed to install during autoinstall.\"")
	}
	for _, k := range []string{k1, k2} {
		name := fmt.Sprintf("dkmsd_failbuild/1.0, %s, %s", k, machineArch())
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `: failed in [0-9.]+s: .*\(log: (\S+)\)$`)
		m := re.FindStringSubmatch(r.Stderr)
		if m == nil {
			t.Errorf("stderr has no line %q", re)
		} else if log, err := os.ReadFile(m[1]); err != nil {
			t.Errorf("%s: the log it names: %v", name, err)
		} else if !strings.Contains(string(log), `#error "dkmsd_failbuild: deliberate build failure"`) {
			t.Errorf("%s: %s lacks the compiler's #error line:\n%s", name, m[1], log)
		}
		if !regexp.MustCompile(`(?m)^dkmsd_hello/1\.0, ` + regexp.QuoteMeta(k) + `, ` + machineArch() + `: installed in [0-9.]+s$`).MatchString(r.Stdout) {
			t.Errorf("stdout lacks the installed line of dkmsd_hello on %s", k)
		}
		for _, p := range []string{
			b.path("var/lib/dkms/dkmsd_failbuild/1.0", k),
			b.path("var/lib/dkms/dkmsd_failbuild", "kernel-"+k+"-"+machineArch()),
		} {
			if pathPresent(p) {
				t.Errorf("%s exists after the failed build", p)
			}
		}
		if got, want := koFiles(t, b.path("lib/modules", k)), []string{"updates/dkms/dkmsd_hello.ko"}; !slices.Equal(got, want) {
			t.Errorf("module files in lib/modules/%s: %q, want %q", k, got, want)
		}
	}
	var st []string
	st = append(st, "dkmsd_failbuild/1.0: added")
	for _, k := range sortedKernels(b.kernels) {
		st = append(st, statusLine("dkmsd_hello", "1.0", k, "installed"))
	}
	b.wantStatus(t, st...)
}

// TestAutoinstallRealHeadersRepeatedKernel gives autoinstall one kernel
// twice (-k K -k K, as a hook script joining two lists might): the kernel
// is worked on once, dkmsd_hello installed, depmod run, exit 0.
func TestAutoinstallRealHeadersRepeatedKernel(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernels[0]
	testkit.CopyModule(t, b.root, "dkmsd_hello-1.0")
	b.mustRun(t, "add", "dkmsd_hello/1.0")

	r := b.run(t, "autoinstall", "-k", k, "-k", k)
	t.Logf("dkms autoinstall -k %s -k %s: exit %d\nstdout:\n%s\nstderr:\n%s", k, k, r.Code, r.Stdout, r.Stderr)
	if r.Code != 0 {
		t.Errorf("exit %d, want 0", r.Code)
	}
	if strings.Contains(r.Stderr, "panic:") {
		t.Errorf("dkms panicked")
	}
	if got, want := summaryLines(r.Stdout), []string{"Autoinstall on " + k + " succeeded for module(s) dkmsd_hello."}; !slices.Equal(got, want) {
		t.Errorf("summary lines\n got %q\nwant %q", got, want)
	}
	if n := strings.Count(r.Stdout, "dkmsd_hello/1.0, "+k+", "+machineArch()+": installed in "); n != 1 {
		t.Errorf("%d \"installed\" job lines for dkmsd_hello, want 1", n)
	}
	if dep, err := os.ReadFile(b.path("lib/modules", k, "modules.dep")); err != nil || !bytes.Contains(dep, []byte("updates/dkms/dkmsd_hello.ko:")) {
		t.Errorf("modules.dep of %s does not list dkmsd_hello (depmod did not run?): %v\n%s", k, err, dep)
	}
	b.wantStatus(t, statusLine("dkmsd_hello", "1.0", k, "installed"))
}

// TestAutoinstallRealHeadersConcurrentProcesses starts 8 `dkms
// autoinstall -k K1 -k K2` processes at once on one tree holding two
// modules whose PRE_BUILD script appends "<module> <kernel>" to a marker
// file: each module is built once per kernel, every process exits 0 with
// the same summary, those that found the tree locked say so, and status
// shows every module installed.
func TestAutoinstallRealHeadersConcurrentProcesses(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k1, k2 := b.kernels[0], b.kernels[1]
	marker := b.path("var/lib/dkms/dkmsd_count.builds")
	mods := []string{"dkmsd_count_a", "dkmsd_count_b"}
	for _, m := range mods {
		b.cloneHello(t, m, "1.0",
			[]string{`PRE_BUILD="count.sh ${dkms_tree}/dkmsd_count.builds ` + m + ` ${kernelver}"`},
			map[string]string{"count.sh": "#!/bin/sh\necho \"$2 $3\" >> \"$1\"\n"})
		b.letOut(t, m)
		b.mustRun(t, "add", m+"/1.0")
	}

	const n = 8
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	type proc struct {
		cmd         *exec.Cmd
		res         testkit.Result
		err         error
		start, done time.Time
	}
	procs := make([]*proc, n)
	var wg sync.WaitGroup
	for i := range procs {
		procs[i] = &proc{cmd: b.command(ctx, b.env, "autoinstall", "-k", k1, "-k", k2)}
	}
	begin := time.Now()
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.start = time.Now()
			p.res, p.err = testkit.Exec(p.cmd)
			p.done = time.Now()
		}()
	}
	wg.Wait()
	t.Logf("%d processes done in %v", n, time.Since(begin).Round(time.Millisecond))

	var want []string
	for _, k := range []string{k1, k2} {
		want = append(want, "Autoinstall on "+k+" succeeded for module(s) "+strings.Join(mods, " ")+".")
	}
	lockPath := b.path("var/lib/dkms", ".dkmsd.lock")
	waited := 0
	for i, p := range procs {
		if p.err != nil {
			t.Fatalf("process %d: %v\nstdout:\n%s\nstderr:\n%s", i, p.err, p.res.Stdout, p.res.Stderr)
		}
		r := p.res
		if r.Code != 0 {
			t.Errorf("process %d: exit %d\nstdout:\n%s\nstderr:\n%s", i, r.Code, r.Stdout, r.Stderr)
		}
		if got := summaryLines(r.Stdout); !slices.Equal(got, want) {
			t.Errorf("process %d: summary lines\n got %q\nwant %q\nstderr:\n%s", i, got, want, r.Stderr)
		}
		if strings.Contains(r.Stderr, "Waiting for "+lockPath) {
			waited++
		}
		t.Logf("process %d: %v, stderr: %q", i, p.done.Sub(p.start).Round(time.Millisecond), r.Stderr)
	}
	// One process takes the lock and builds everything while the others
	// wait: the builds take far longer than starting 8 processes.
	if waited != n-1 {
		t.Errorf("%d processes printed \"Waiting for %s\", want %d", waited, lockPath, n-1)
	}

	data, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("marker of the PRE_BUILD scripts: %v", err)
	}
	builds := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		builds[l]++
	}
	for _, m := range mods {
		for _, k := range []string{k1, k2} {
			if c := builds[m+" "+k]; c != 1 {
				t.Errorf("%s built %d times for %s, want once", m, c, k)
			}
			delete(builds, m+" "+k)
		}
	}
	if len(builds) > 0 {
		t.Errorf("unexpected marker lines: %v", builds)
	}
	var st []string
	for _, m := range mods {
		for _, k := range sortedKernels(b.kernels) {
			st = append(st, statusLine(m, "1.0", k, "installed"))
		}
	}
	b.wantStatus(t, st...)
	for _, k := range []string{k1, k2} {
		want := []string{"updates/dkms/dkmsd_count_a.ko", "updates/dkms/dkmsd_count_b.ko"}
		if got := koFiles(t, b.path("lib/modules", k)); !slices.Equal(got, want) {
			t.Errorf("module files in lib/modules/%s: %q, want %q", k, got, want)
		}
	}
}

// heavyModule writes a module of several source files, each including
// large kernel headers so that it compiles for a while.
func (b *batchRoot) heavyModule(t *testing.T, name string, parts int) {
	t.Helper()
	files := map[string]string{
		"dkms.conf": fmt.Sprintf("PACKAGE_NAME=%q\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=%q\nDEST_MODULE_LOCATION[0]=\"/extra\"\nAUTOINSTALL=\"yes\"\n", name, name),
	}
	var objs []string
	for i := range parts {
		objs = append(objs, fmt.Sprintf("part%d.o", i))
		src := fmt.Sprintf(`// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/netdevice.h>
#include <linux/skbuff.h>
#include <linux/sched/signal.h>
#include <linux/blkdev.h>
int %s_part%d(int x);
int %s_part%d(int x) { return x + %d; }
`, name, i, name, i, i)
		if i == 0 {
			src += fmt.Sprintf("MODULE_LICENSE(\"GPL\");\nMODULE_DESCRIPTION(\"dkmsd CPU budget test module %s\");\nMODULE_VERSION(\"1.0\");\n", name)
		}
		files[fmt.Sprintf("part%d.c", i)] = src
	}
	files["Makefile"] = fmt.Sprintf("obj-m += %s.o\n%s-y := %s\n", name, name, strings.Join(objs, " "))
	b.writeModuleFiles(t, name, "1.0", files)
}

// buildSamples is what sampling the process table during a run saw.
type buildSamples struct {
	samples int
	// maxCC1 is the most compilers (cc1) descending from the process alive
	// at one moment.
	maxCC1 int
	// overlap counts the samples in which make processes of two different
	// modules were alive.
	overlap int
	// modules are the modules a make was seen building.
	modules map[string]bool
}

var dkmsTreeModuleRE = regexp.MustCompile(`/var/lib/dkms/([^/\x00 ]+)/[^/\x00 ]+/build`)

// sampledResult is how a process that sampleBuilds ran ended (Out stays
// empty: its stdout and stderr were captured apart).
func sampledResult(t *testing.T, err error, stdout, stderr *bytes.Buffer) testkit.Result {
	t.Helper()
	r := testkit.Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("dkms autoinstall: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	return r
}

// sampleBuilds runs cmd, reading the process table every 5 ms.
func sampleBuilds(cmd *exec.Cmd) (buildSamples, error) {
	s := buildSamples{modules: map[string]bool{}}
	before := procTable(nil)
	if err := cmd.Start(); err != nil {
		return s, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return s, err
		case <-tick.C:
			s.sample(cmd.Process.Pid, before)
		}
	}
}

// procInfo is a process's parent and command name.
type procInfo struct {
	ppid int
	comm string
}

// procTable reads every process's parent and name, except the pids in
// skip (alive before the command started, so not its descendants).
func procTable(skip map[int]procInfo) map[int]procInfo {
	procs := map[int]procInfo{}
	names, _ := filepath.Glob("/proc/[0-9]*")
	for _, n := range names {
		pid, err := strconv.Atoi(filepath.Base(n))
		if err != nil {
			continue
		}
		if _, old := skip[pid]; old {
			continue
		}
		if p, ok := readProcInfo(pid); ok {
			procs[pid] = p
		}
	}
	return procs
}

// readProcInfo reads /proc/<pid>/stat; ok is false when the process is
// gone or the file does not parse.
func readProcInfo(pid int) (p procInfo, ok bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return p, false
	}
	// pid (comm) state ppid …; comm may hold spaces and parentheses.
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return p, false
	}
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 2 {
		return p, false
	}
	ppid, _ := strconv.Atoi(fields[1])
	return procInfo{ppid: ppid, comm: string(stat[open+1 : end])}, true
}

// sample counts the compilers under root and the modules its makes build.
func (s *buildSamples) sample(root int, before map[int]procInfo) {
	procs := procTable(before)
	// chain is pid's ancestry up to root, or nil when it does not descend
	// from root.
	chain := func(pid int) []int {
		var c []int
		for q, hops := pid, 0; hops < 64; hops++ {
			if q == root {
				return c
			}
			p, ok := procs[q]
			if !ok {
				return nil
			}
			c = append(c, q)
			q = p.ppid
		}
		return nil
	}
	cc1 := 0
	building := map[string]bool{}
	for pid, p := range procs {
		if pid == root || (p.comm != "cc1" && p.comm != "make") {
			continue
		}
		c := chain(pid)
		if c == nil {
			continue
		}
		if p.comm == "cc1" {
			cc1++
			continue
		}
		// The module: M=<tree>/<module>/<version>/build on the command
		// line of this make or of one it descends from.
		for _, q := range c {
			cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(q) + "/cmdline")
			if m := dkmsTreeModuleRE.FindSubmatch(cmdline); m != nil {
				building[string(m[1])] = true
				break
			}
		}
	}
	s.samples++
	s.maxCC1 = max(s.maxCC1, cc1)
	if len(building) >= 2 {
		s.overlap++
	}
	for m := range building {
		s.modules[m] = true
	}
}

// TestAutoinstallRealHeadersCPUBudget autoinstalls two modules of 8
// source files each, sampling the process table every 5 ms: with a budget
// of 2 jobs (parallel_jobs=2 in framework.conf) no more than 2 compilers
// run at once across both builds, and both modules' makes run at the same
// time; with a budget of 1 (parallel_jobs=1 in the environment, -j 1 over
// framework.conf's 2, or the caller's MAKEFLAGS=-j1 as README documents)
// one compiler at most and one make at a time.
func TestAutoinstallRealHeadersCPUBudget(t *testing.T) {
	t.Parallel()
	mods := []string{"dkmsd_heavy_a", "dkmsd_heavy_b"}
	for _, c := range []struct {
		name   string
		budget int
		// framework is the framework.conf to write ("" for none); env
		// and args are added to the command's environment and arguments.
		framework string
		env, args []string
	}{
		// (No "=" in the names: t.TempDir() would put it in the path,
		// which kbuild cannot build in.)
		{name: "jobs2_framework_conf", budget: 2, framework: "parallel_jobs=2\n"},
		{name: "jobs1_environment", budget: 1, env: []string{"parallel_jobs=1"}},
		{name: "jobs1_option_over_framework_conf", budget: 1, framework: "parallel_jobs=2\n", args: []string{"-j", "1"}},
		{name: "jobs1_caller_makeflags", budget: 1, env: []string{"MAKEFLAGS=-j1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := newBatchRoot(t)
			k := b.kernels[0]
			for _, m := range mods {
				b.heavyModule(t, m, 8)
				b.mustRun(t, "add", m+"/1.0")
			}
			if c.framework != "" {
				if err := os.WriteFile(b.path("etc/dkms/framework.conf"), []byte(c.framework), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			env := append(slices.Clone(b.env), c.env...)
			args := append([]string{"autoinstall", "-k", k}, c.args...)
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
			defer cancel()
			cmd := b.command(ctx, env, args...)
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			start := time.Now()
			s, err := sampleBuilds(cmd)
			r := sampledResult(t, err, &out, &errb)
			t.Logf("%v: %d samples, at most %d cc1 at once, makes of two modules alive in %d samples, modules seen %v",
				time.Since(start).Round(time.Millisecond), s.samples, s.maxCC1, s.overlap, s.modules)
			if r.Code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s%s", r.Code, r.Stdout, r.Stderr, failedLogs(r.Stderr))
			}
			if len(s.modules) != len(mods) {
				t.Errorf("the sampler saw makes of %v, want both %v: the samples say nothing", s.modules, mods)
			}
			if s.maxCC1 > c.budget {
				t.Errorf("%d compilers (cc1) ran at once, budget %d", s.maxCC1, c.budget)
			}
			if c.budget == 1 {
				if s.maxCC1 != 1 {
					t.Errorf("at most %d compilers at once, want 1", s.maxCC1)
				}
				if s.overlap != 0 {
					t.Errorf("makes of both modules alive in %d samples with a budget of 1 job", s.overlap)
				}
			} else if s.overlap == 0 {
				t.Errorf("the two modules never built at the same time with parallel_jobs=%d", c.budget)
			}
			var st []string
			for _, m := range mods {
				st = append(st, statusLine(m, "1.0", k, "installed"))
			}
			b.wantStatus(t, st...)
		})
	}
}

// TestMatchRealHeadersAndKernelPrerm installs dkmsd_hello 1.0 and
// dkmsd_multi 1.0 (2.0 is added, not installed) on kernel 1, builds hello
// for kernel 2, and runs `dkms match --templatekernel K1 -k K2`: exactly
// those versions are installed on K2, hello without a rebuild, multi
// built. Then `dkms kernel_prerm -k K1` removes every module built for K1
// and leaves K2 alone.
func TestMatchRealHeadersAndKernelPrerm(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k1, k2 := b.kernels[0], b.kernels[1]
	arch := machineArch()
	testkit.CopyModule(t, b.root, "dkmsd_hello-1.0")
	b.cloneHello(t, "dkmsd_multi", "1.0", nil, nil)
	b.cloneHello(t, "dkmsd_multi", "2.0", nil, nil)
	b.cloneHello(t, "dkmsd_spare", "1.0", nil, nil)
	for _, mv := range []string{"dkmsd_hello/1.0", "dkmsd_multi/1.0", "dkmsd_multi/2.0", "dkmsd_spare/1.0"} {
		b.mustRun(t, "add", mv)
	}
	b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k1)
	b.mustRun(t, "install", "dkmsd_multi/1.0", "-k", k1)
	b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k2)
	helloK2 := b.path("var/lib/dkms/dkmsd_hello/1.0", k2, arch, "module/dkmsd_hello.ko")
	builtBefore, err := os.Stat(helloK2)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("match", func(t *testing.T) {
		r := b.run(t, "match", "--templatekernel", k1, "-k", k2)
		t.Logf("dkms match: exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
		if r.Code != 0 {
			t.Fatalf("exit %d", r.Code)
		}
		for _, w := range []string{
			fmt.Sprintf("Matching modules in kernel: %s (%s)", k2, arch),
			fmt.Sprintf("to the configuration of kernel: %s (%s)", k1, arch),
		} {
			if !strings.Contains(r.Stdout, w) {
				t.Errorf("stdout lacks %q", w)
			}
		}
		for _, m := range []string{"dkmsd_hello", "dkmsd_multi"} {
			ko := b.path("lib/modules", k2, "updates/dkms", m+".ko")
			mi, err := tree.ReadModInfo(ko)
			if err != nil {
				t.Errorf("%s: %v", m, err)
				continue
			}
			if v := mi.Get("version"); v != "1.0" {
				t.Errorf("%s on %s: modinfo version %q, want 1.0 (the version installed on %s)", m, k2, v, k1)
			}
			if vm := mi.Get("vermagic"); !strings.HasPrefix(vm, k2+" ") {
				t.Errorf("%s on %s: vermagic %q", m, k2, vm)
			}
			link := b.path("var/lib/dkms", m, "kernel-"+k2+"-"+arch)
			if got, err := os.Readlink(link); err != nil || got != "1.0/"+k2+"/"+arch {
				t.Errorf("kernel link %s -> %q (err %v), want 1.0/%s/%s", link, got, err, k2, arch)
			}
		}
		if got, want := koFiles(t, b.path("lib/modules", k2)), []string{"updates/dkms/dkmsd_hello.ko", "updates/dkms/dkmsd_multi.ko"}; !slices.Equal(got, want) {
			t.Errorf("module files in lib/modules/%s: %q, want %q", k2, got, want)
		}
		if after, err := os.Stat(helloK2); err != nil || !os.SameFile(builtBefore, after) || !after.ModTime().Equal(builtBefore.ModTime()) {
			t.Errorf("dkmsd_hello, already built for %s, was rebuilt by match (err %v)", k2, err)
		}
		if dep, err := os.ReadFile(b.path("lib/modules", k2, "modules.dep")); err != nil ||
			!bytes.Contains(dep, []byte("updates/dkms/dkmsd_hello.ko:")) || !bytes.Contains(dep, []byte("updates/dkms/dkmsd_multi.ko:")) {
			t.Errorf("modules.dep of %s does not list both modules (err %v):\n%s", k2, err, dep)
		}
		var st []string
		for _, m := range []string{"dkmsd_hello", "dkmsd_multi"} {
			for _, k := range sortedKernels(b.kernels) {
				st = append(st, statusLine(m, "1.0", k, "installed"))
			}
		}
		b.wantStatus(t, append(st, "dkmsd_multi/2.0: added", "dkmsd_spare/1.0: added")...)
	})

	t.Run("kernel_prerm", func(t *testing.T) {
		// hello only built on K1, multi installed there.
		b.mustRun(t, "uninstall", "dkmsd_hello/1.0", "-k", k1)
		keep := map[string]map[string]string{}
		watch := []string{b.path("lib/modules", k2)}
		for _, mv := range []string{"dkmsd_hello/1.0", "dkmsd_multi/1.0"} {
			watch = append(watch, b.path("var/lib/dkms", mv, k2))
		}
		for _, w := range watch {
			keep[w] = fileDigests(t, w)
		}

		r := b.run(t, "kernel_prerm", "-k", k1)
		t.Logf("dkms kernel_prerm: exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
		if r.Code != 0 {
			t.Errorf("exit %d, want 0", r.Code)
		}
		if got := koFiles(t, b.path("lib/modules", k1)); len(got) != 0 {
			t.Errorf("module files left in lib/modules/%s: %q", k1, got)
		}
		if p := b.path("lib/modules", k1, "updates"); pathPresent(p) {
			t.Errorf("%s left: %q", p, testkit.Tree(t, p))
		}
		if !pathPresent(b.path("lib/modules", k1, "build")) {
			t.Errorf("kernel_prerm removed the build link of %s", k1)
		}
		if dep, err := os.ReadFile(b.path("lib/modules", k1, "modules.dep")); err == nil && bytes.Contains(dep, []byte("dkmsd_")) {
			t.Errorf("modules.dep of %s still lists dkmsd modules:\n%s", k1, dep)
		}
		for _, m := range []string{"dkmsd_hello", "dkmsd_multi"} {
			for _, p := range []string{b.path("var/lib/dkms", m, "1.0", k1), b.path("var/lib/dkms", m, "kernel-"+k1+"-"+arch)} {
				if pathPresent(p) {
					t.Errorf("%s left after kernel_prerm", p)
				}
			}
		}
		for _, w := range watch {
			if d := diffDigests(keep[w], fileDigests(t, w)); len(d) > 0 {
				t.Errorf("kernel_prerm -k %s changed %s: %q", k1, w, d)
			}
		}
		b.wantStatus(t,
			statusLine("dkmsd_hello", "1.0", k2, "installed"),
			statusLine("dkmsd_multi", "1.0", k2, "installed"),
			"dkmsd_multi/2.0: added",
			"dkmsd_spare/1.0: added")
	})
}
