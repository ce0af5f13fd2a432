package lifecycle

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle/memory"
	"github.com/dkmsd/dkmsd/tree"
)

// budgetEnv is an Env over a made-up machine whose /proc/meminfo shows
// availMiB available (none when 0), and an empty DKMS tree.
func budgetEnv(t *testing.T, availMiB int) *Env {
	t.Helper()
	host := t.TempDir()
	if availMiB > 0 {
		if err := os.MkdirAll(filepath.Join(host, "proc"), 0o755); err != nil {
			t.Fatal(err)
		}
		meminfo := []byte("MemTotal: 25165824 kB\nMemAvailable: " + strconv.Itoa(availMiB*1024) + " kB\n")
		if err := os.WriteFile(filepath.Join(host, "proc/meminfo"), meminfo, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &Env{Layout: tree.NewLayout(t.TempDir()), Host: memory.Host{Root: host}, Sink: Discard}
}

func TestJobBudget(t *testing.T) {
	e := budgetEnv(t, 2048)
	check := func(name string, b jobBudget, jobs int, want string) {
		t.Helper()
		if b.Jobs != jobs || b.String() != want {
			t.Errorf("%s: %d jobs, %q\nwant %d jobs, %q", name, b.Jobs, b.String(), jobs, want)
		}
	}
	check("default estimate", e.budgetFor(16, []string{"foo"}), 4,
		"dkmsd: build budget: 4 jobs (2048 MiB available, 512 MiB per job for foo; CPU budget 16, available memory from MemAvailable, per job by default (no complete build of it seen yet))")
	check("CPUs lower", e.budgetFor(2, []string{"foo"}), 2,
		"dkmsd: build budget: 2 jobs (2048 MiB available, 512 MiB per job for foo; CPU budget 2, available memory from MemAvailable, per job by default (no complete build of it seen yet))")

	// foo's compiler took 150 MiB: 150 + 25% + 64 = 251.5 MiB a job.
	e.recordJobMemory("foo", 150<<10, true)
	check("learned", e.budgetFor(16, []string{"foo"}), 8,
		"dkmsd: build budget: 8 jobs (2048 MiB available, 251 MiB per job for foo; CPU budget 16, available memory from MemAvailable, per job learned (its largest process took 150 MiB))")
	// The largest estimate of the batch decides: bar has no record.
	check("largest of the batch", e.budgetFor(16, []string{"foo", "bar"}), 4,
		"dkmsd: build budget: 4 jobs (2048 MiB available, 512 MiB per job for bar; CPU budget 16, available memory from MemAvailable, per job by default (no complete build of it seen yet))")
	check("bare -j", e.budgetFor(0, []string{"foo"}), 8,
		"dkmsd: build budget: 8 jobs (2048 MiB available, 251 MiB per job for foo; CPU budget no bound, available memory from MemAvailable, per job learned (its largest process took 150 MiB))")

	e.Framework.BuildMemoryPerJob = 4096
	check("configured, more than available", e.budgetFor(16, []string{"foo"}), 1,
		"dkmsd: build budget: 1 job (2048 MiB available, 4096 MiB per job for foo; CPU budget 16, available memory from MemAvailable, per job from build_memory_per_job)")
	e.Framework.BuildMemoryPerJob, e.Framework.NoMemoryBudget = 0, true
	check("off", e.budgetFor(16, []string{"foo"}), 16, "dkmsd: build budget: 16 jobs (CPU only: build_memory_per_job=0)")
	check("off, bare -j", e.budgetFor(0, []string{"foo"}), 0, "dkmsd: build budget: unbounded jobs (CPU only: build_memory_per_job=0)")

	unknown := budgetEnv(t, 0)
	if b := unknown.budgetFor(16, []string{"foo"}); b.Jobs != 16 || b.CPUOnly == "" {
		t.Errorf("no memory figure: %+v, want the CPU budget, saying why", b)
	}
	// Outside a batch a build gets its own module's budget; inside, the
	// batch's.
	e.Framework.NoMemoryBudget = false
	e.Jobs = 16
	if b := e.buildBudget("foo"); b.Jobs != 8 {
		t.Errorf("buildBudget(foo) = %d jobs, want 8", b.Jobs)
	}
	e.budget = &jobBudget{Jobs: 3}
	if b := e.buildBudget("foo"); b.Jobs != 3 {
		t.Errorf("buildBudget(foo) in a batch of 3 jobs = %d jobs", b.Jobs)
	}
}

// TestRecordJobMemory: a build's peak is kept per module; a failed build
// only raises a record, and makes none.
func TestRecordJobMemory(t *testing.T) {
	e := budgetEnv(t, 1024)
	file := e.Layout.MemoryFile("foo")
	peak := func() uint64 {
		t.Helper()
		n, _ := readPeak(file)
		return n
	}
	e.recordJobMemory("foo", 0, true)
	e.recordJobMemory("foo", 100_000, false)
	if _, err := os.Stat(file); err == nil {
		t.Errorf("a peak of 0 (make never ran), or of a failed build with no record before, was recorded")
	}
	for _, c := range []struct {
		kib       uint64
		succeeded bool
		want      uint64
	}{
		{200_000, true, 200_000},
		{100_000, false, 200_000}, // failed early: says nothing
		{300_000, false, 300_000}, // failed, but took more
		{150_000, true, 150_000},  // a complete build: this is its need
	} {
		e.recordJobMemory("foo", c.kib, c.succeeded)
		if got := peak(); got != c.want {
			t.Errorf("after %d KiB (succeeded %v): %d KiB recorded, want %d", c.kib, c.succeeded, got, c.want)
		}
	}
	if data, err := os.ReadFile(file); err != nil || string(data) != "150000\n" {
		t.Errorf("%s holds %q (%v), want \"150000\\n\"", file, data, err)
	}
}

// TestOOMKilled: a failed make counts as killed by the OOM killer when
// something of it died of SIGKILL while an OOM kill counter rose.
func TestOOMKilled(t *testing.T) {
	host := t.TempDir()
	vmstat := filepath.Join(host, "proc/vmstat")
	if err := os.MkdirAll(filepath.Dir(vmstat), 0o755); err != nil {
		t.Fatal(err)
	}
	setKills := func(n string) {
		if err := os.WriteFile(vmstat, []byte("nr_free_pages 1\noom_kill "+n+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logs := t.TempDir()
	writeLog := func(name, text string) string {
		p := filepath.Join(logs, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	gccKilled := writeLog("gcc", "  CC [M]  x.o\ngcc-12: fatal error: Killed signal terminated program cc1\ncompilation terminated.\nmake[2]: *** [scripts/Makefile.build:250: x.o] Error 1\n")
	makeKilled := writeLog("make", "make[1]: *** [Makefile:1: all] Killed\n")
	compileError := writeLog("error", "x.c:1:1: error: expected ';'\nmake[2]: *** [scripts/Makefile.build:250: x.o] Error 1\n")

	e := &Env{Host: memory.Host{Root: host}}
	setKills("4")
	before := e.Host.OOMKills()
	if e.oomKilled(makeRun{}, before, gccKilled) {
		t.Errorf("killed with no OOM kill counted")
	}
	setKills("5")
	for _, c := range []struct {
		name string
		run  makeRun
		log  string
		want bool
	}{
		{"gcc's compiler killed", makeRun{}, gccKilled, true},
		{"a recipe killed", makeRun{}, makeKilled, true},
		{"make itself killed", makeRun{killed: true}, compileError, true},
		{"a compile error while something else was killed", makeRun{}, compileError, false},
	} {
		if got := e.oomKilled(c.run, before, c.log); got != c.want {
			t.Errorf("%s: oomKilled = %v, want %v", c.name, got, c.want)
		}
	}
	// No counter to read: the SIGKILL alone tells.
	blind := &Env{Host: memory.Host{Root: t.TempDir()}}
	if !blind.oomKilled(makeRun{}, blind.Host.OOMKills(), gccKilled) || blind.oomKilled(makeRun{}, blind.Host.OOMKills(), compileError) {
		t.Errorf("without counters: want the SIGKILL to decide")
	}
}

// TestSchedulerOthersIdle: a retry waits until no job runs or can start.
func TestSchedulerOthersIdle(t *testing.T) {
	// 0 was killed and waits; 1 depends on 0; 2 runs; 3 depends on 2.
	s := &scheduler{
		jobs:     make([]*job, 4),
		deps:     [][]int{nil, {0}, nil, {2}},
		results:  make([]*JobResult, 4),
		deferred: []bool{true, false, false, false},
	}
	if s.othersIdle() {
		t.Errorf("idle while job 2 runs")
	}
	s.results[2] = &JobResult{}
	if s.othersIdle() {
		t.Errorf("idle while job 3 can start (2 is over)")
	}
	s.results[3] = &JobResult{}
	if !s.othersIdle() {
		t.Errorf("not idle with 2 and 3 over and 1 waiting for 0")
	}
}
