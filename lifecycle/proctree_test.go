package lifecycle

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// markedProcesses are the running (not zombie) processes whose command
// line holds marker, by pid.
func markedProcesses(marker string) map[int]string {
	out := map[int]string{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		raw, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || !bytes.Contains(raw, []byte(marker)) {
			continue
		}
		if p, ok := readProc(pid); !ok || p.state == 'Z' || p.state == 'X' {
			continue
		}
		out[pid] = string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '}))
	}
	return out
}

// sleepTree starts bash with three sleeps below it, one of them in a
// subshell (a grandchild), all sleeping 1000.<marker> seconds, and a
// sleep of the same marker outside the tree; it returns once all four
// sleeps run.
func sleepTree(t *testing.T) (tree, outside *exec.Cmd, marker string) {
	t.Helper()
	marker = fmt.Sprintf("1000.%d", rand.Uint32())
	tree = exec.Command("bash", "-c", fmt.Sprintf("sleep %[1]s & sleep %[1]s & (sleep %[1]s & wait) & wait", marker))
	outside = exec.Command("sleep", marker)
	for _, c := range []*exec.Cmd{tree, outside} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for pid := range markedProcesses(marker) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = tree.Wait()
		_ = outside.Wait()
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		sleeps := 0
		for _, cmdline := range markedProcesses(marker) {
			if strings.HasPrefix(cmdline, "sleep ") {
				sleeps++
			}
		}
		if sleeps == 4 {
			return tree, outside, marker
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sleeps did not start: %v", markedProcesses(marker))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantOnlyOutside checks that of the marked processes only the one
// outside the tree runs.
func wantOnlyOutside(t *testing.T, marker string, outside *exec.Cmd) {
	t.Helper()
	left := markedProcesses(marker)
	if _, ok := left[outside.Process.Pid]; !ok {
		t.Errorf("the sleep outside the tree was ended too")
	}
	delete(left, outside.Process.Pid)
	if len(left) > 0 {
		t.Errorf("processes of the tree still run: %v", left)
	}
}

// TestKillTreeLeavesNoDescendant: killTree kills the process and every
// descendant (children and grandchildren), nothing else, and returns only
// once they are gone.
func TestKillTreeLeavesNoDescendant(t *testing.T) {
	tree, outside, marker := sleepTree(t)
	if err := killTree(tree.Process.Pid); err != nil {
		t.Fatalf("killTree: %v", err)
	}
	wantOnlyOutside(t, marker, outside)
	if err := tree.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("bash ended with %v, want killed", err)
	}
}

// TestSignalTreeReachesEveryDescendant: signalTree gives every process of
// the tree the signal (SIGTERM ends sleeps that make never signals: a
// recipe's background command), and none outside it.
func TestSignalTreeReachesEveryDescendant(t *testing.T) {
	tree, outside, marker := sleepTree(t)
	if err := signalTree(tree.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatalf("signalTree: %v", err)
	}
	if err := tree.Wait(); err == nil || !strings.Contains(err.Error(), "terminated") {
		t.Errorf("bash ended with %v, want terminated", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(markedProcesses(marker)) > 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	wantOnlyOutside(t, marker, outside)
}

// TestParseProcStat reads the fields after a comm that holds spaces and
// parentheses.
func TestParseProcStat(t *testing.T) {
	stat := "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n"
	p, ok := parseProcStat([]byte(stat))
	if !ok || p.ppid != 17 || p.state != 'S' || p.start != 987654 {
		t.Errorf("parseProcStat = %+v, %v; want ppid 17, state S, start 987654", p, ok)
	}
	if _, ok := parseProcStat([]byte("4242 (x) S 17")); ok {
		t.Errorf("a truncated stat parsed")
	}
}
