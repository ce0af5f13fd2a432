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

// remove kills what is left in the group and removes it.
func (c *memoryCgroup) remove(t *testing.T) {
	for try := 0; try < 50; try++ {
		data, _ := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
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

// autoinstallIn runs `dkms autoinstall -k k` inside the cgroup: a shell
// writes its pid into the group and then becomes dkms, so that
// everything the build starts is in it.
func (b *batchRoot) autoinstallIn(t *testing.T, c *memoryCgroup, k string) testkit.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(c.dir, "cgroup.procs"),
		b.bin, "--root", b.root, "autoinstall", "-k", k)
	cmd.Env = b.env
	cmd.Dir = b.root
	r, err := testkit.Exec(cmd)
	if err != nil {
		t.Fatalf("dkms autoinstall: %v\nstdout:\n%s\nstderr:\n%s", err, r.Stdout, r.Stderr)
	}
	return r
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
// real Debian packages of many source files, openvpn-dco-dkms and evdi-dkms,
// with parallel_jobs=16, inside a memory cgroup limited to 640 MiB (a
// compiler of theirs takes up to ~150 MiB: 16 at once do not fit, 2 do).
// With the CPU-only budget (build_memory_per_job=0) the run is OOM-killed:
// the cgroup's OOM kill counter rises, the failures name the OOM killer,
// and the builds retried alone at -j16 are killed again. The modules are
// removed and added again and the same run goes with the memory budget
// (build_memory_per_job unset: learned from the first run's builds): no
// OOM kill, every module installed, the budget (fewer jobs than 16,
// learned) in each make.log.
func TestAutoinstallRealHeadersMemoryBudget(t *testing.T) {
	b := newBatchRoot(t)
	k := drmKernel(t, b)
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
	r := b.autoinstallIn(t, cg, k)
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

	// The same run from the same start, with the memory budget.
	for _, mv := range mvs {
		b.mustRun(t, "remove", mv, "--all")
		b.mustRun(t, "add", mv)
	}
	writeFramework(t, b, "parallel_jobs=16")
	for _, mv := range mvs {
		peak, _ := os.ReadFile(b.path("var/lib/dkms/.dkmsd/memory", strings.Split(mv, "/")[0]))
		t.Logf("%s: the first run recorded a peak of %s KiB", mv, strings.TrimSpace(string(peak)))
	}
	killsBefore = cg.oomKills(t)
	cg.resetPeak()
	start = time.Now()
	r = b.autoinstallIn(t, cg, k)
	kills = cg.oomKills(t) - killsBefore
	t.Logf("memory budget: exit %d in %v, %d OOM kills, peak %d MiB of %d\nstdout:\n%s\nstderr:\n%s",
		r.Code, time.Since(start).Round(time.Second), kills, cg.peakMiB(), limit>>20, r.Stdout, r.Stderr)
	if r.Code != 0 || kills != 0 {
		t.Errorf("memory budget: exit %d, %d OOM kills; want 0 and none%s", r.Code, kills, failedLogs(r.Stderr))
	}
	arch := machineArch()
	var st []string
	budgetRE := regexp.MustCompile(`^dkmsd: build budget: ([0-9]+) jobs? \(([0-9]+) MiB available, ([0-9]+) MiB per job for (\S+); CPU budget 16, available memory from memory cgroup /` +
		filepath.Base(cg.dir) + ` \(limit 640 MiB\), per job learned \(its largest process took [0-9]+ MiB\)\)$`)
	for _, mv := range mvs {
		name, version, _ := strings.Cut(mv, "/")
		st = append(st, statusLine(name, version, k, "installed"))
		line := budgetLine(t, b.path("var/lib/dkms", name, version, k, arch, "log/make.log"))
		t.Logf("%s: %s", mv, line)
		m := budgetRE.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("%s: make.log's budget %q, want %q", mv, line, budgetRE)
			continue
		}
		jobs, _ := strconv.Atoi(m[1])
		avail, _ := strconv.Atoi(m[2])
		perJob, _ := strconv.Atoi(m[3])
		if jobs < 1 || jobs >= 16 || jobs != max(1, avail/perJob) || avail > limit>>20 {
			t.Errorf("%s: budget %d jobs of %d MiB from %d MiB available: not floor(available/per job), or not under the limit", mv, jobs, perJob, avail)
		}
	}
	slices.Sort(st)
	b.wantStatus(t, st...)
}
