package lifecycle

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/dkmsd/dkmsd/lifecycle/memory"
	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// The job budget: how many builds run at once and how many jobs make gets
// through -j or the jobserver. The CPU budget (parallel_jobs, -j, the
// number of CPUs) is lowered to what the memory available allows, one
// job needing what the module's compiler took the last time dkmsd built
// it (users report -j$(nproc) taking 2 GB machines down on one module).

const (
	// defaultJobMemory is a job's memory before dkmsd has seen the module
	// build: kernel modules' compilers take 100-300 MiB; 512 leaves room
	// for the heavy ones.
	defaultJobMemory = 512 << 20
	// jobOverhead is added to a learned peak: beside each compiler run a
	// make, a gcc driver and the assembler, and another file of the
	// module may need more than the largest seen.
	jobOverhead = 64 << 20
)

// jobBudget is the number of jobs builds may run at once, and why.
type jobBudget struct {
	// Jobs is the budget: builds at once and make's -j (0: a bare -j,
	// no bound).
	Jobs int
	// CPU is the CPU budget it started from (0: no bound).
	CPU int
	// CPUOnly says why memory was not counted ("" when it was).
	CPUOnly string
	// Available is the memory available (bytes) and From where that
	// figure comes from.
	Available uint64
	From      string
	// PerJob is the memory one job needs (bytes): Module's, the largest
	// of the modules to build; Estimate says how it was found.
	PerJob   uint64
	Module   string
	Estimate string
}

// String is the budget as the make.log and --verbose show it.
func (b jobBudget) String() string {
	jobs := b.jobs()
	if b.CPUOnly != "" {
		return fmt.Sprintf("dkmsd: build budget: %s (CPU only: %s)", jobs, b.CPUOnly)
	}
	cpu := "no bound"
	if b.CPU > 0 {
		cpu = strconv.Itoa(b.CPU)
	}
	return fmt.Sprintf("dkmsd: build budget: %s (%d MiB available, %d MiB per job for %s; CPU budget %s, available memory from %s, per job %s)",
		jobs, b.Available>>20, b.PerJob>>20, b.Module, cpu, b.From, b.Estimate)
}

// jobs is "N jobs", "1 job" or "unbounded jobs".
func (b jobBudget) jobs() string {
	switch b.Jobs {
	case 0:
		return "unbounded jobs"
	case 1:
		return "1 job"
	}
	return fmt.Sprintf("%d jobs", b.Jobs)
}

// budgetFor is the budget for building modules at once, starting from
// the CPU budget cpu (0: no bound).
func (e *Env) budgetFor(cpu int, modules []string) jobBudget {
	b := jobBudget{Jobs: cpu, CPU: cpu}
	if e.Framework.NoMemoryBudget {
		b.CPUOnly = "build_memory_per_job=0"
		return b
	}
	avail, err := e.Host.Available()
	if err != nil {
		b.CPUOnly = "available memory unknown: " + err.Error()
		return b
	}
	b.Available, b.From = avail.Bytes, avail.From
	for _, m := range modules {
		if need, how := e.jobMemory(m); need > b.PerJob {
			b.PerJob, b.Module, b.Estimate = need, m, how
		}
	}
	if b.PerJob == 0 {
		b.CPUOnly = "no module to build"
		return b
	}
	b.Jobs = max(1, int(avail.Bytes/b.PerJob))
	if cpu > 0 {
		b.Jobs = min(cpu, b.Jobs)
	}
	return b
}

// buildBudget is the budget a build of module runs under: its batch's,
// or its own.
func (e *Env) buildBudget(module string) jobBudget {
	if e.budget != nil {
		return *e.budget
	}
	return e.budgetFor(e.Jobs, []string{module})
}

// jobMemory is the memory one job of module's build needs, and how that
// was found.
func (e *Env) jobMemory(module string) (uint64, string) {
	if mib := e.Framework.BuildMemoryPerJob; mib > 0 {
		return uint64(mib) << 20, "from build_memory_per_job"
	}
	if kib, ok := readPeak(e.Layout.MemoryFile(module)); ok {
		return kib<<10 + kib<<10/4 + jobOverhead, fmt.Sprintf("learned (its largest process took %d MiB)", kib>>10)
	}
	return defaultJobMemory, "by default (no complete build of it seen yet)"
}

// recordJobMemory keeps the peak (KiB) a build of module took. A failed
// build (killed by the OOM killer, say) may have stopped before its
// largest file: it only raises a record, and makes none, leaving the
// default in place. Failing to keep it only leaves the estimate as it
// was, so it is not an error of the build.
func (e *Env) recordJobMemory(module string, kib uint64, succeeded bool) {
	if kib == 0 {
		return
	}
	file := e.Layout.MemoryFile(module)
	old, ok := readPeak(file)
	if old == kib || (!succeeded && (!ok || old > kib)) {
		return
	}
	if os.MkdirAll(filepath.Dir(file), 0o755) != nil {
		return
	}
	_ = atomicfile.Write(file, []byte(strconv.FormatUint(kib, 10)+"\n"), 0o644, "")
}

// readPeak reads a recorded peak in KiB.
func readPeak(file string) (uint64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n, err == nil && n > 0
}

// killedRE finds what a process of a build killed by SIGKILL leaves in
// make.log: gcc's report of its compiler's death, make's of a recipe's,
// a shell's exit status 128+9.
var killedRE = regexp.MustCompile(`(?m)Killed signal terminated program|\] Killed$|\] Error 137$`)

// oomKilled reports whether a failed make was killed by the out-of-memory
// killer: something of it died of SIGKILL while an OOM kill counter rose
// (when no counter can be read, the SIGKILL alone tells).
func (e *Env) oomKilled(run makeRun, before memory.Kills, logPath string) bool {
	if n, known := e.Host.OOMKills().Since(before); known && n == 0 {
		return false
	}
	if run.killed {
		return true
	}
	data, err := os.ReadFile(logPath)
	return err == nil && killedRE.Match(data)
}

// oomLines say that the build was killed for want of memory, and what to
// change.
func (r *buildRun) oomLines() []string {
	t, where := r.t, ""
	if a, err := r.e.Host.Available(); err == nil && a.Limit > 0 {
		where = " (" + a.From + ")"
	}
	jobs := r.budget.jobs()
	if r.e.Jobserver != nil {
		jobs = jobBudget{Jobs: r.e.Jobserver.Slots}.jobs()
	}
	return []string{
		fmt.Sprintf("The build of %s/%s for kernel %s (%s) was killed by the out-of-memory killer%s.", t.Module, t.Version, t.Kernel, t.Arch, where),
		fmt.Sprintf("It ran with a budget of %s; lower parallel_jobs, or set build_memory_per_job in framework.conf to the memory one job needs.", jobs),
		fmt.Sprintf("Consult %s for more information.", r.logPath),
	}
}
