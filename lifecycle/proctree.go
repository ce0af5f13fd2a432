package lifecycle

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A build's processes stay in dkms's process group (see runShell), so a
// build is ended through its process tree instead: the descendants of the
// process dkms started, found through /proc.

// procEntry is what /proc/<pid>/stat says of a process.
type procEntry struct {
	ppid  int
	state byte
	// start is the process's start time in clock ticks since boot: a pid
	// reused by a new process has another.
	start uint64
}

// readProc is /proc/<pid>/stat parsed; ok is false when the process is
// gone.
func readProc(pid int) (procEntry, bool) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procEntry{}, false
	}
	return parseProcStat(stat)
}

// parseProcStat parses "pid (comm) state ppid … starttime …"; comm may
// hold spaces and parentheses, so the fields are counted from its last
// ")".
func parseProcStat(stat []byte) (procEntry, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procEntry{}, false
	}
	f := strings.Fields(string(stat[i+1:]))
	// After comm: state(3) ppid(4) … starttime(22), numbered as in proc(5).
	if len(f) < 20 || len(f[0]) != 1 {
		return procEntry{}, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procEntry{}, false
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procEntry{}, false
	}
	return procEntry{ppid: ppid, state: f[0][0], start: start}, true
}

// processTable is every process on the machine.
func processTable() (map[int]procEntry, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	table := make(map[int]procEntry, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readProc(pid); ok {
			table[pid] = p
		}
	}
	return table, nil
}

// descendants are the processes below root in table.
func descendants(root int, table map[int]procEntry) []int {
	children := map[int][]int{}
	for pid, p := range table {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	var out []int
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// freezeTree stops root and every process below it with SIGSTOP,
// scanning /proc again until a scan finds none it has not stopped: a
// stopped process cannot fork, nor die and hand its children to init, so
// the set stops growing and holds the whole tree. It returns the stopped
// processes with their start times.
func freezeTree(root int) (map[int]uint64, error) {
	stopped := map[int]uint64{}
	stop := func(pid int, start uint64) bool {
		// A process already gone has nothing left to stop.
		if syscall.Kill(pid, syscall.SIGSTOP) != nil {
			return false
		}
		stopped[pid] = start
		return true
	}
	p, ok := readProc(root)
	if !ok || !stop(root, p.start) {
		return nil, os.ErrProcessDone
	}
	for {
		table, err := processTable()
		if err != nil {
			return stopped, err
		}
		grew := false
		for _, pid := range descendants(root, table) {
			if _, done := stopped[pid]; !done && stop(pid, table[pid].start) {
				grew = true
			}
		}
		if !grew {
			return stopped, nil
		}
	}
}

// killTree kills root and every process below it, leaving none running:
// the tree is frozen first (freezeTree), then each process gets SIGKILL,
// and killTree returns once they are gone (or zombies for their parents
// to reap). os.ErrProcessDone: root had ended already.
func killTree(root int) error {
	frozen, err := freezeTree(root)
	for pid := range frozen {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return err
		}
		// Without /proc only root itself is known.
		_ = syscall.Kill(root, syscall.SIGKILL)
		return fmt.Errorf("kill the processes of %d: %w", root, err)
	}
	waitGone(frozen, 5*time.Second)
	return nil
}

// signalTree sends sig to root and every process below it, as a signal
// to a process group would: the tree is frozen, signalled and let go, so
// that no process is missed and each handles sig as it would (make
// removes its half-written targets).
func signalTree(root int, sig syscall.Signal) error {
	frozen, err := freezeTree(root)
	for pid := range frozen {
		_ = syscall.Kill(pid, sig)
	}
	for pid := range frozen {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = syscall.Kill(root, sig)
		return fmt.Errorf("signal the processes of %d: %w", root, err)
	}
	return err
}

// waitGone waits, at most limit, until none of procs (pid → start time)
// runs: each has exited, is a zombie, or its pid is another process's.
func waitGone(procs map[int]uint64, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for len(procs) > 0 && time.Now().Before(deadline) {
		for pid, start := range procs {
			if p, ok := readProc(pid); !ok || p.state == 'Z' || p.state == 'X' || p.start != start {
				delete(procs, pid)
			}
		}
		if len(procs) > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
