//go:build systemtest

package main

// A tracer that stops a command for good at a chosen step, for the sweep
// of crash_sweep_system_test.go: ptrace(2) from the test process, no
// other tool.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// traceStep is one step a traced command took: a system call that changes
// the file system, seen at its entry.
type traceStep struct {
	tid  int
	comm string // the thread's program name
	call string
	args string // what it changes
}

func (s traceStep) String() string {
	return fmt.Sprintf("%s[%d] %s(%s)", s.comm, s.tid, s.call, s.args)
}

// traceResult is a traced command's outcome.
type traceResult struct {
	pid    int // also its process group
	steps  []traceStep
	killed bool // SIGKILLed at the entry of its last step
	status unix.WaitStatus
}

// ptraceSyscallInfo is struct ptrace_syscall_info (linux/ptrace.h), as
// PTRACE_GET_SYSCALL_INFO (Linux 5.3) fills it: which stop this is, and
// at an entry the call and its arguments.
type ptraceSyscallInfo struct {
	op      uint8
	_       [3]uint8
	arch    uint32
	ip, sp  uint64
	nr      uint64
	args    [6]uint64
	retData uint32
	_       uint32
}

const ptraceSyscallInfoEntry = 1

// traceLimit ends a traced command that runs this long.
const traceLimit = 3 * time.Minute

// traceRun runs argv in a process group of its own under ptrace(2),
// following every thread and child, and stops at the entry of each step:
// a call of stepCalls that changes a path isStep accepts. At step killAt (counted from 1; 0: never) it SIGKILLs the
// whole process group while that thread is stopped at the call's entry:
// that call and every later step never run, every earlier one has. Steps
// are counted across all threads and processes in the order the tracer
// sees them, which for a command that does one thing at a time (dkms
// uninstall, then depmod, then the initrd) is the order they happen in.
func traceRun(argv, env []string, dir string, out *os.File, isStep func(path string) bool, killAt int) (traceResult, error) {
	var res traceResult
	// ptrace requests must come from the thread that is the tracer.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return res, err
	}
	defer devnull.Close()
	p, err := os.StartProcess(argv[0], argv, &os.ProcAttr{Dir: dir, Env: env, Files: []*os.File{devnull, out, out},
		Sys: &syscall.SysProcAttr{Ptrace: true, Setpgid: true}})
	if err != nil {
		return res, err
	}
	defer p.Release()
	pid := p.Pid
	res.pid = pid
	limit := time.AfterFunc(traceLimit, func() { _ = unix.Kill(-pid, unix.SIGKILL) })
	defer limit.Stop()
	// PTRACE_TRACEME stops the child with SIGTRAP once execve is done.
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
		return res, fmt.Errorf("wait for %s: %w", argv[0], err)
	}
	if !ws.Stopped() {
		return res, fmt.Errorf("%s did not stop after exec: %v", argv[0], ws)
	}
	opts := unix.PTRACE_O_TRACESYSGOOD | unix.PTRACE_O_TRACECLONE | unix.PTRACE_O_TRACEFORK |
		unix.PTRACE_O_TRACEVFORK | unix.PTRACE_O_TRACEEXEC | unix.PTRACE_O_EXITKILL
	if err := unix.PtraceSetOptions(pid, opts); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return res, fmt.Errorf("ptrace options: %w", err)
	}
	if err := unix.PtraceSyscall(pid, 0); err != nil {
		_ = unix.Kill(pid, unix.SIGKILL)
		return res, err
	}
	known := map[int]bool{pid: true}
	lastStep := map[int]traceStep{}
	for {
		// Every tracee is in the group: threads, and children that
		// did not leave it.
		tid, err := unix.Wait4(-pid, &ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ECHILD) {
			return res, nil
		}
		if err != nil {
			_ = unix.Kill(-pid, unix.SIGKILL)
			return res, fmt.Errorf("wait: %w", err)
		}
		if ws.Exited() || ws.Signaled() {
			if tid == pid {
				res.status = ws
			}
			continue
		}
		if !ws.Stopped() {
			continue
		}
		sig := 0
		switch s := ws.StopSignal(); {
		case res.killed:
			continue // dying: SIGKILL ends it where it stands
		case s == unix.SIGTRAP|0x80: // a system call's entry or exit
			if step, ok := traceStepAt(tid, isStep); ok && !continuedCopy(lastStep[tid], step) {
				lastStep[tid] = step
				res.steps = append(res.steps, step)
				if len(res.steps) == killAt {
					res.killed = true
					_ = unix.Kill(-pid, unix.SIGKILL)
					continue
				}
			}
		case s == unix.SIGTRAP && ws.TrapCause() > 0: // clone, fork, exec
		case s == unix.SIGSTOP && !known[tid]: // a new thread or child's first stop
			known[tid] = true
		default: // a signal for the program: deliver it
			sig = int(s)
		}
		if err := unix.PtraceSyscall(tid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			_ = unix.Kill(-pid, unix.SIGKILL)
			return res, fmt.Errorf("resume %d: %w", tid, err)
		}
	}
}

// continuedCopy says whether step goes on with the copy prev began: the
// kernel may do one copy_file_range in several calls, more or fewer from
// run to run, so only the first counts as a step (a kill between them
// leaves the same half-written temporary file as a kill before the next
// step does).
func continuedCopy(prev, step traceStep) bool {
	return step.call == "copy_file_range" && prev.call == step.call && prev.args == step.args
}

// traceStepAt describes the system call tid is stopped at, when that stop
// is the entry of a step: a call that changes a path isStep accepts.
func traceStepAt(tid int, isStep func(path string) bool) (traceStep, bool) {
	var info ptraceSyscallInfo
	_, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_GET_SYSCALL_INFO, uintptr(tid), unsafe.Sizeof(info), uintptr(unsafe.Pointer(&info)), 0, 0)
	if errno != 0 || info.op != ptraceSyscallInfoEntry {
		return traceStep{}, false
	}
	c, ok := stepCalls[info.nr]
	if !ok {
		return traceStep{}, false
	}
	if c.flags >= 0 && int(info.args[c.flags])&(unix.O_WRONLY|unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC) == 0 {
		return traceStep{}, false // an open for reading
	}
	var names []string
	inside := false
	for _, a := range c.names {
		var n string
		switch {
		case a.dirfd == argIsFd:
			n = traceFd(tid, int(int32(info.args[a.arg])))
		default:
			n = tracePath(tid, uintptr(info.args[a.arg]))
			if !filepath.IsAbs(n) {
				dir := "cwd"
				if a.dirfd >= 0 && int32(info.args[a.dirfd]) != unix.AT_FDCWD {
					dir = "fd/" + strconv.Itoa(int(int32(info.args[a.dirfd])))
				}
				base, _ := os.Readlink(fmt.Sprintf("/proc/%d/%s", tid, dir))
				n = filepath.Join(base, n)
			}
		}
		names = append(names, n)
		inside = inside || isStep(n)
	}
	if !inside {
		return traceStep{}, false
	}
	comm, _ := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/comm")
	return traceStep{tid: tid, comm: strings.TrimSpace(string(comm)), call: c.name, args: strings.Join(names, ", ")}, true
}

// tracePath reads the NUL-terminated string at addr in tid's memory.
func tracePath(tid int, addr uintptr) string {
	var out []byte
	buf := make([]byte, 64)
	for len(out) < 4096 {
		n, err := unix.PtracePeekData(tid, addr+uintptr(len(out)), buf)
		if i := bytes.IndexByte(buf[:n], 0); i >= 0 {
			return string(append(out, buf[:i]...))
		}
		out = append(out, buf[:n]...)
		if err != nil || n == 0 {
			break
		}
	}
	return string(out)
}

// traceFd names what tid's file descriptor fd is open on.
func traceFd(tid, fd int) string {
	s, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", tid, fd))
	if err != nil {
		return "fd " + strconv.Itoa(fd)
	}
	return s
}

// stepCall says how to read a step's arguments: which name what changes,
// and which (if any) holds the open flags.
type stepCall struct {
	name  string
	names []stepArg
	flags int
}

// stepArg is an argument naming what a call changes: a path, relative to
// the directory file descriptor in argument dirfd (cwdRelative: the
// working directory), or a file descriptor (dirfd argIsFd).
type stepArg struct{ arg, dirfd int }

const (
	cwdRelative = -1
	argIsFd     = -2
)

// stepAt is a path in argument arg relative to the directory in argument
// dirfd; stepFd is a file descriptor in argument arg.
func stepAt(dirfd, arg int) stepArg { return stepArg{arg, dirfd} }
func stepFd(arg int) stepArg        { return stepArg{arg, argIsFd} }

// stepCalls are the system calls that may make a step, by number: every
// call that changes a file, a directory or a link (the calls only amd64
// has are in legacyStepCalls). Syncs, locks and execs are not steps: they
// change nothing another process can see (this harness cuts no power), so
// a kill at one leaves what a kill at the step after the one before it
// leaves.
var stepCalls = func() map[uint64]stepCall {
	m := map[uint64]stepCall{
		unix.SYS_OPENAT:          {"openat", []stepArg{stepAt(0, 1)}, 2},
		unix.SYS_UNLINKAT:        {"unlinkat", []stepArg{stepAt(0, 1)}, -1},
		unix.SYS_RENAMEAT:        {"renameat", []stepArg{stepAt(0, 1), stepAt(2, 3)}, -1},
		unix.SYS_RENAMEAT2:       {"renameat2", []stepArg{stepAt(0, 1), stepAt(2, 3)}, -1},
		unix.SYS_LINKAT:          {"linkat", []stepArg{stepAt(2, 3)}, -1},
		unix.SYS_SYMLINKAT:       {"symlinkat", []stepArg{stepAt(1, 2)}, -1},
		unix.SYS_MKDIRAT:         {"mkdirat", []stepArg{stepAt(0, 1)}, -1},
		unix.SYS_FCHMODAT:        {"fchmodat", []stepArg{stepAt(0, 1)}, -1},
		unix.SYS_FCHOWNAT:        {"fchownat", []stepArg{stepAt(0, 1)}, -1},
		unix.SYS_TRUNCATE:        {"truncate", []stepArg{stepAt(cwdRelative, 0)}, -1},
		unix.SYS_FTRUNCATE:       {"ftruncate", []stepArg{stepFd(0)}, -1},
		unix.SYS_FALLOCATE:       {"fallocate", []stepArg{stepFd(0)}, -1},
		unix.SYS_FCHMOD:          {"fchmod", []stepArg{stepFd(0)}, -1},
		unix.SYS_FCHOWN:          {"fchown", []stepArg{stepFd(0)}, -1},
		unix.SYS_WRITE:           {"write", []stepArg{stepFd(0)}, -1},
		unix.SYS_PWRITE64:        {"pwrite64", []stepArg{stepFd(0)}, -1},
		unix.SYS_WRITEV:          {"writev", []stepArg{stepFd(0)}, -1},
		unix.SYS_PWRITEV:         {"pwritev", []stepArg{stepFd(0)}, -1},
		unix.SYS_COPY_FILE_RANGE: {"copy_file_range", []stepArg{stepFd(2)}, -1},
	}
	for nr, c := range legacyStepCalls {
		m[nr] = c
	}
	return m
}()
