package main

// The memory-aware job budget, on real builds under a memory cgroup the
// test makes: the test modules and two real Debian *-dkms packages (their
// source downloaded and unpacked, not installed), autoinstalled with a
// high parallel_jobs, first with the CPU-only budget, then with the
// memory budget.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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

	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// memoryCgroup is a memory cgroup made for one test.
type memoryCgroup struct {
	dir string
	v2  bool
}

// newMemoryCgroup makes a memory cgroup limited to limit bytes, swap
// included: a child of the root of the v1 memory hierarchy
// (memory.limit_in_bytes, memory.memsw.limit_in_bytes), or of the v2
// hierarchy (memory.max, memory.swap.max) on a machine without v1's. It
// is removed at the end of the test, any process left in it killed.
func newMemoryCgroup(t *testing.T, limit int64) *memoryCgroup {
	t.Helper()
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	name := "dkmsd-test-" + hex.EncodeToString(suffix)
	var c *memoryCgroup
	switch {
	case pathPresent("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
		c = &memoryCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", name)}
	case controllerEnabled("/sys/fs/cgroup/cgroup.subtree_control", "memory"):
		c = &memoryCgroup{dir: filepath.Join("/sys/fs/cgroup", name), v2: true}
	default:
		testkit.Missing(t, "a memory cgroup controller (cgroup v1 /sys/fs/cgroup/memory, or v2 with memory in /sys/fs/cgroup/cgroup.subtree_control)")
	}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.remove(t) })
	n := strconv.FormatInt(limit, 10)
	if c.v2 {
		c.write(t, "memory.max", n)
		if pathPresent(filepath.Join(c.dir, "memory.swap.max")) {
			c.write(t, "memory.swap.max", "0")
		}
	} else {
		c.write(t, "memory.limit_in_bytes", n)
		if pathPresent(filepath.Join(c.dir, "memory.memsw.limit_in_bytes")) {
			c.write(t, "memory.memsw.limit_in_bytes", n)
		}
	}
	return c
}

// controllerEnabled reports whether a cgroup.subtree_control file lists
// controller.
func controllerEnabled(file, controller string) bool {
	data, err := os.ReadFile(file)
	return err == nil && strings.Contains(" "+strings.TrimSpace(string(data))+" ", " "+controller+" ")
}

func (c *memoryCgroup) write(t *testing.T, file, value string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(c.dir, file), []byte(value), 0o644); err != nil {
		t.Fatalf("cgroup %s: %v", file, err)
	}
}

// killAll kills every process left in the group (a make a killed dkms
// left behind), waiting up to 5 s for them to go; it reports whether the
// group is empty.
func (c *memoryCgroup) killAll() bool {
	for try := 0; try < 50; try++ {
		data, _ := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
		pids := strings.Fields(string(data))
		if len(pids) == 0 {
			return true
		}
		for _, f := range pids {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// remove kills what is left in the group and removes it.
func (c *memoryCgroup) remove(t *testing.T) {
	c.killAll()
	for try := 0; try < 50; try++ {
		if err := os.Remove(c.dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("could not remove the cgroup %s", c.dir)
}

// oomKills is the group's OOM kill counter (v1 memory.oom_control, v2
// memory.events).
func (c *memoryCgroup) oomKills(t *testing.T) int {
	t.Helper()
	file := "memory.oom_control"
	if c.v2 {
		file = "memory.events"
	}
	data, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		if n, ok := strings.CutPrefix(sc.Text(), "oom_kill "); ok {
			v, err := strconv.Atoi(n)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("%s/%s has no oom_kill counter:\n%s", c.dir, file, data)
	return 0
}

// peakMiB is the most memory the group has held (v1
// memory.max_usage_in_bytes, v2 memory.peak; -1 where there is none).
func (c *memoryCgroup) peakMiB() int64 {
	file := "memory.max_usage_in_bytes"
	if c.v2 {
		file = "memory.peak"
	}
	data, err := os.ReadFile(filepath.Join(c.dir, file))
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return -1
	}
	return n >> 20
}

// resetPeak starts the group's peak anew (where the kernel allows it).
func (c *memoryCgroup) resetPeak() {
	file := "memory.max_usage_in_bytes"
	if c.v2 {
		file = "memory.peak"
	}
	_ = os.WriteFile(filepath.Join(c.dir, file), []byte("0"), 0o644)
}

// runIn runs `dkms --root R args…` inside the cgroup: a shell writes its
// pid into the group and then becomes dkms, so that everything the build
// starts is in it.
func (b *batchRoot) runIn(t *testing.T, c *memoryCgroup, args ...string) testkit.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(c.dir, "cgroup.procs"),
		b.bin, "--root", b.root}, args...)...)
	cmd.Env = b.env
	cmd.Dir = b.root
	r, err := testkit.Exec(cmd)
	if !c.killAll() {
		t.Errorf("processes left in %s after dkms ended", c.dir)
	}
	if err != nil {
		t.Fatalf("dkms %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, r.Stdout, r.Stderr)
	}
	return r
}

// tmpfsDKMSTree mounts a tmpfs on the root's DKMS tree, where the builds
// run, until the end of the test. What they write there is then memory
// the kernel cannot drop (there is no swap), so at the cgroup's limit the
// OOM killer acts at once; on a disk, a cgroup at its limit can instead
// thrash for minutes on page cache it drops and reads back (the kernel
// retries while reclaim frees anything), with no OOM kill.
func tmpfsDKMSTree(t *testing.T, b *batchRoot) {
	t.Helper()
	dir := b.path("var/lib/dkms")
	if err := unix.Mount("dkmsd-test", dir, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// drmKernel is a kernel of the root whose configuration has DRM and I2C,
// which evdi's BUILD_EXCLUSIVE_CONFIG asks for (Debian's cloud kernels
// have neither).
func drmKernel(t *testing.T, b *batchRoot) string {
	t.Helper()
	for _, k := range b.kernels {
		cfg := tree.ReadKernelConfig(filepath.Join(b.path("lib/modules", k, "build"), ".config"))
		if cfg["CONFIG_DRM"] != "" && cfg["CONFIG_I2C"] != "" {
			return k
		}
	}
	testkit.Missing(t, "headers of a kernel with CONFIG_DRM and CONFIG_I2C (apt-get install -y linux-headers-amd64)")
	return ""
}

// budget is what a memory budget line says.
type budget struct {
	jobs, available, perJob int
	module                  string
}

// checkBudget parses a make.log's memory budget line for what (the
// cgroup's limit of 640 MiB deciding, the per-job estimate found as how
// says), and checks that its jobs are floor(available/per job), fewer
// than the CPU budget of 16, at least 1. nil when it does not parse.
func checkBudget(t *testing.T, what, line string, c *memoryCgroup, how string) *budget {
	t.Helper()
	re := regexp.MustCompile(`^dkmsd: build budget: ([0-9]+) jobs? \(([0-9]+) MiB available, ([0-9]+) MiB per job for (\S+); CPU budget 16, available memory from memory cgroup /` +
		filepath.Base(c.dir) + ` \(limit 640 MiB\), per job ` + how + `\)$`)
	m := re.FindStringSubmatch(line)
	if m == nil {
		t.Errorf("%s: make.log's budget %q, want %q", what, line, re)
		return nil
	}
	b := &budget{module: m[4]}
	b.jobs, _ = strconv.Atoi(m[1])
	b.available, _ = strconv.Atoi(m[2])
	b.perJob, _ = strconv.Atoi(m[3])
	// The line rounds MiB down: floor(available/per job) is between these.
	lo, hi := max(1, b.available/(b.perJob+1)), max(1, (b.available+1)/b.perJob)
	if b.jobs >= 16 || b.jobs < lo || b.jobs > hi || b.available > 640 {
		t.Errorf("%s: budget of %d jobs of %d MiB from %d MiB available: not floor(available/per job), or not under the limit", what, b.jobs, b.perJob, b.available)
	}
	return b
}

var budgetLineRE = regexp.MustCompile(`(?m)^dkmsd: build budget: .*$`)

// budgetLine is the budget a build's make.log starts with.
func budgetLine(t *testing.T, log string) string {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil {
		t.Errorf("make.log: %v", err)
		return ""
	}
	return string(budgetLineRE.Find(data))
}

// TestAutoinstallRealHeadersMemoryBudget autoinstalls dkmsd_hello and two
// real Debian packages of many source files, openvpn-dco-dkms and
// evdi-dkms, with parallel_jobs=16, inside a memory cgroup limited to 640
// MiB (a compiler of theirs takes up to ~150 MiB: 16 at once do not fit),
// the DKMS tree on a tmpfs (see tmpfsDKMSTree). With the CPU-only budget
// (build_memory_per_job=0) the run is OOM-killed: the cgroup's OOM kill
// counter rises, the failures name the OOM killer, and the builds retried
// alone at -j16 are killed again. The modules are removed and added again
// and the same run goes with the memory budget (build_memory_per_job
// unset): no OOM kill, every module installed, the budget in each
// make.log (512 MiB a job for a module never built completely: 1 job).
// Then a lone rebuild of dkmsd_hello counts what it took in that run.
func TestAutoinstallRealHeadersMemoryBudget(t *testing.T) {
	// Not t.Parallel: timing-bound (docs/testing.md, "Using both cores").
	b := newBatchRoot(t)
	k := drmKernel(t, b)
	tmpfsDKMSTree(t, b)
	testkit.CopyModule(t, b.root, "dkmsd_hello-1.0")
	mvs := []string{"dkmsd_hello/1.0"}
	for _, deb := range []string{"openvpn-dco-dkms", "evdi-dkms"} {
		name, version := testkit.CorpusModule(t, b.root, deb)
		mvs = append(mvs, name+"/"+version)
	}
	for _, mv := range mvs {
		b.mustRun(t, "add", mv)
	}
	const limit = 640 << 20
	cg := newMemoryCgroup(t, limit)

	writeFramework(t, b, "parallel_jobs=16", "build_memory_per_job=0")
	killsBefore := cg.oomKills(t)
	start := time.Now()
	r := b.runIn(t, cg, "autoinstall", "-k", k)
	kills := cg.oomKills(t) - killsBefore
	t.Logf("CPU-only budget: exit %d in %v, %d OOM kills, peak %d MiB of %d\nstdout:\n%s\nstderr:\n%s",
		r.Code, time.Since(start).Round(time.Second), kills, cg.peakMiB(), limit>>20, r.Stdout, r.Stderr)
	if kills == 0 {
		t.Errorf("CPU-only budget: the cgroup's OOM kill counter did not rise: the limit does not show anything")
	}
	oomRE := regexp.MustCompile(`(?m)^Error! The build of (\S+)/\S+ for kernel ` + regexp.QuoteMeta(k) + ` \(\S+\) was killed by the out-of-memory killer \(memory cgroup /` + filepath.Base(cg.dir) + ` \(limit 640 MiB\)\)\.\nIt was retried alone, with no other build running, and killed again\.$`)
	killed := oomRE.FindAllStringSubmatch(r.Stderr, -1)
	if r.Code != 11 || len(killed) == 0 {
		t.Errorf("CPU-only budget: exit %d and %d failures naming the OOM killer; want exit 11 and at least one %q", r.Code, len(killed), oomRE)
	}
	for _, m := range killed {
		warn := "Warning: The build of " + m[1] + "/"
		if !strings.Contains(r.Stderr, warn) || !strings.Contains(r.Stderr, "It is retried alone once the other builds are over.") {
			t.Errorf("CPU-only budget: no warning that %s is retried alone", m[1])
		}
		log := regexp.MustCompile(regexp.QuoteMeta(m[1]) + `/\S+, ` + regexp.QuoteMeta(k) + `, \S+: failed in \S+: The build of .*\(log: (\S+)\)`).FindStringSubmatch(r.Stderr)
		if log == nil {
			t.Errorf("CPU-only budget: no job line for %s naming the OOM killer and the log", m[1])
		} else if got := budgetLine(t, log[1]); got != "dkmsd: build budget: 16 jobs (CPU only: build_memory_per_job=0)" {
			t.Errorf("CPU-only budget: %s's make.log says %q", m[1], got)
		}
	}

	// The same run from the same start, with the memory budget. The
	// modules killed have no complete build on record: 512 MiB a job.
	for _, mv := range mvs {
		b.mustRun(t, "remove", mv, "--all")
		b.mustRun(t, "add", mv)
	}
	writeFramework(t, b, "parallel_jobs=16")
	killsBefore = cg.oomKills(t)
	cg.resetPeak()
	start = time.Now()
	r = b.runIn(t, cg, "autoinstall", "-k", k)
	kills = cg.oomKills(t) - killsBefore
	t.Logf("memory budget: exit %d in %v, %d OOM kills, peak %d MiB of %d\nstdout:\n%s\nstderr:\n%s",
		r.Code, time.Since(start).Round(time.Second), kills, cg.peakMiB(), limit>>20, r.Stdout, r.Stderr)
	if r.Code != 0 || kills != 0 {
		t.Errorf("memory budget: exit %d, %d OOM kills; want 0 and none%s", r.Code, kills, failedLogs(r.Stderr))
	}
	arch := machineArch()
	var st []string
	for _, mv := range mvs {
		name, version, _ := strings.Cut(mv, "/")
		st = append(st, statusLine(name, version, k, "installed"))
		line := budgetLine(t, b.path("var/lib/dkms", name, version, k, arch, "log/make.log"))
		t.Logf("%s: %s", mv, line)
		m := checkBudget(t, mv, line, cg, `by default \(no complete build of it seen yet\)`)
		if m != nil && (m.perJob != 512 || !slices.ContainsFunc(killed, func(k []string) bool { return k[1] == m.module })) {
			t.Errorf("%s: budget counted %d MiB a job for %s; want 512 for a module killed in the first run", mv, m.perJob, m.module)
		}
		peak, _ := os.ReadFile(b.path("var/lib/dkms/.dkmsd/memory", name))
		t.Logf("%s: recorded peak %s KiB", mv, strings.TrimSpace(string(peak)))
	}
	slices.Sort(st)
	b.wantStatus(t, st...)

	// A lone build counts what its module took last time.
	r = b.runIn(t, cg, "build", "dkmsd_hello/1.0", "-k", k, "--force", "--verbose")
	line := budgetLine(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k, arch, "log/make.log"))
	t.Logf("dkms build dkmsd_hello/1.0 --force --verbose: exit %d, %s", r.Code, line)
	if line == "" || !strings.Contains(r.Stdout, "\n"+line+"\n") {
		t.Errorf("--verbose does not show the budget of make.log:\n%s", r.Stdout)
	}
	if m := checkBudget(t, "dkmsd_hello rebuilt", line, cg, `learned \(its largest process took [0-9]+ MiB\)`); m != nil {
		if m.module != "dkmsd_hello" || !strings.Contains(r.Stdout, fmt.Sprintf("{ make -j%d KERNELRELEASE=", m.jobs)) {
			t.Errorf("dkmsd_hello rebuilt: budget for %s, make line not -j%d:\n%s", m.module, m.jobs, r.Stdout)
		}
	}
	slices.Sort(st)
	b.wantStatus(t, st...)
}
