package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// buildEnviron is the environment of make and the build scripts: the
// caller's, less the compiler variables dkms unsets so that a user's CFLAGS
// cannot break a kernel build.
func (e *Env) buildEnviron(extra ...string) []string {
	drop := map[string]bool{"CC": true, "CXX": true, "CFLAGS": true, "CXXFLAGS": true, "LDFLAGS": true}
	var env []string
	for _, kv := range e.Environ {
		name, _, _ := strings.Cut(kv, "=")
		if !drop[name] {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// runShell runs a command line with bash (dkms evals its MAKE lines in
// bash) in dir, its output appended to log.
func runShell(ctx context.Context, dir, cmdline string, env []string, log io.Writer, extra ...*os.File) error {
	return shellCommand(ctx, nil, dir, cmdline, env, log, extra...).Run()
}

// shellCommand is the command runShell runs (in sb, the build sandbox,
// unless nil), for a caller that reads how it ended (its resource use)
// after Run.
func shellCommand(ctx context.Context, sb *buildSandbox, dir, cmdline string, env []string, log io.Writer, extra ...*os.File) *exec.Cmd {
	trace(ctx, dir, "bash", "-c", cmdline)
	cmd := exec.CommandContext(ctx, "bash", "-c", cmdline)
	cmd.Dir = dir
	cmd.Env = env
	cmd.ExtraFiles = extra
	cmd.Stdout, cmd.Stderr = log, log
	// make stays in dkms's process group, so killing the group (a kill of
	// a hook run, a service stop) never leaves a build writing into the
	// tree. When ctx ends, stopOnCancel ends make and its jobs.
	stopOnCancel(ctx, cmd)
	if err := sb.wrap(cmd); err != nil {
		cmd.Err = err
	}
	return cmd
}

// errBuildTimedOut is the cause of a build's context when build_timeout
// ends it.
var errBuildTimedOut = errors.New("build_timeout reached")

// buildTimedOut reports whether ctx ended at build_timeout.
func buildTimedOut(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errBuildTimedOut)
}

// stopOnCancel sets how cmd ends with ctx. At build_timeout its whole
// process tree is killed, so nothing of the build is left running. When
// dkms itself is stopped (a signal), every process of the tree gets
// SIGTERM, as a signal to dkms's process group would give them: make
// then removes its half-written targets, and a job's own children (a
// recipe's background command) do not outlive it. What ignores SIGTERM
// is killed after WaitDelay.
func stopOnCancel(ctx context.Context, cmd *exec.Cmd) {
	cmd.Cancel = func() error {
		// Through the process's own handle: a process already waited for
		// is not looked for by its pid, which may be another's now.
		if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
			return err
		}
		if buildTimedOut(ctx) {
			return killTree(cmd.Process.Pid)
		}
		return signalTree(cmd.Process.Pid, syscall.SIGTERM)
	}
	cmd.WaitDelay = 5 * time.Second
}

// runArgv runs a program with arguments, output to out. A program named
// without a slash is looked up in env's PATH (a build_environment may put
// its own tools first), as a shell would.
func runArgv(ctx context.Context, dir string, env []string, out io.Writer, argv ...string) error {
	return runArgvIn(ctx, nil, dir, env, out, argv...)
}

// runArgvIn is runArgv in sb, the build sandbox (nil: none).
func runArgvIn(ctx context.Context, sb *buildSandbox, dir string, env []string, out io.Writer, argv ...string) error {
	trace(ctx, dir, argv...)
	cmd := exec.CommandContext(ctx, lookPathIn(argv[0], env), argv[1:]...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	stopOnCancel(ctx, cmd)
	if err := sb.wrap(cmd); err != nil {
		return err
	}
	return cmd.Run()
}

// exitCode is a command's exit status, or -1.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// logBlock appends one step to a make.log in upstream dkms's format:
// description, command, output, exit code and elapsed time.
type logBlock struct {
	w     io.Writer
	start time.Time
}

func startLogBlock(w io.Writer, description, command string) *logBlock {
	fmt.Fprintf(w, "%s\n# command: %s\n", description, command)
	return &logBlock{w: w, start: time.Now()}
}

func (b *logBlock) end(err error) {
	el := time.Since(b.start).Round(time.Second)
	fmt.Fprintf(b.w, "\n# exit code: %d\n# elapsed time: %02d:%02d:%02d\n%s\n",
		exitCode(err), int(el.Hours()), int(el.Minutes())%60, int(el.Seconds())%60, strings.Repeat("-", 64))
}

// runShownScript runs a script from a dkms.conf (PRE_BUILD, POST_BUILD,
// POST_ADD, PRE_INSTALL, POST_INSTALL, POST_REMOVE) as dkms does: the
// first word is a file in dir that must be executable, the rest its
// arguments (no shell parsing: dkms execs it). Its output is shown under
// the heading dkms prints for it, and also written to also. ran is false
// when the script is not executable (dkms warns and carries on).
func (e *Env) runShownScript(ctx context.Context, kind, dir, script string, also ...io.Writer) (ran bool, err error) {
	return e.runShownScriptIn(ctx, nil, kind, dir, script, e.buildEnviron(), also...)
}

// runShownScriptIn is runShownScript in env (a build's, which
// build_environment may have changed) and sb, the build sandbox.
func (e *Env) runShownScriptIn(ctx context.Context, sb *buildSandbox, kind, dir, script string, env []string, also ...io.Writer) (ran bool, err error) {
	if !e.scriptRunnable(kind, dir, script) {
		return false, nil
	}
	e.info("")
	e.info("Running the %s script:", kind)
	out := &lineWriter{sink: e.Sink, typ: Info}
	defer out.Flush()
	words := strings.Fields(script)
	argv := append([]string{filepath.Join(dir, words[0])}, words[1:]...)
	return true, runArgvIn(ctx, sb, dir, env, io.MultiWriter(append([]io.Writer{out}, also...)...), argv...)
}

// scriptRunnable reports whether a script's file is executable, warning
// as dkms does when it is not.
func (e *Env) scriptRunnable(kind, dir, script string) bool {
	words := strings.Fields(script)
	if len(words) == 0 {
		return false
	}
	fi, err := os.Stat(filepath.Join(dir, words[0]))
	if err != nil || fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		e.info("")
		e.warn("Warning: The %s script is not executable.", kind)
		return false
	}
	return true
}

// lookPathIn finds name in the PATH of env (the last PATH= wins, as for
// exec); name itself when it has a slash, env has no PATH, or no
// directory holds an executable of that name (exec then reports it).
func lookPathIn(name string, env []string) string {
	if strings.Contains(name, "/") {
		return name
	}
	path, found := "", false
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path, found = v, true
		}
	}
	if !found {
		return name
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	return name
}
