package tree

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/interp"
	"mvdan.cc/sh/v3/syntax"
)

// DefaultEvalTimeout bounds one evaluation of a configuration file: a
// dkms.conf with an endless loop or a sleeping command substitution must not
// hang a kernel upgrade.
const DefaultEvalTimeout = 10 * time.Second

// Value is one harvested shell variable: a scalar is index 0 of an array,
// as in bash. Sparse arrays keep their indexes.
type Value struct {
	Elems map[int]string
}

// Get returns element i, or "" when it is unset.
func (v Value) Get(i int) string { return v.Elems[i] }

// Scalar is element 0, what "$NAME" gives in bash.
func (v Value) Scalar() string { return v.Elems[0] }

// Len is 1 + the highest index set, or 0.
func (v Value) Len() int {
	n := 0
	for i := range v.Elems {
		if i+1 > n {
			n = i + 1
		}
	}
	return n
}

// Indexes lists the set indexes in ascending order.
func (v Value) Indexes() []int {
	idx := make([]int, 0, len(v.Elems))
	for i := range v.Elems {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	return idx
}

// Set reports whether any element is set.
func (v Value) Set() bool { return len(v.Elems) > 0 }

// SyntaxError is a shell parse error in a configuration file.
type SyntaxError struct {
	File      string
	Line, Col uint
	Msg       string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("%s: line %d: syntax error: %s", e.File, e.Line, e.Msg)
}

// EvalError is a failure while running a configuration file, such as a
// time-out.
type EvalError struct {
	File string
	Err  error
}

func (e *EvalError) Error() string { return fmt.Sprintf("evaluate %s: %v", e.File, e.Err) }
func (e *EvalError) Unwrap() error { return e.Err }

// shellEval runs one shell file the way dkms sources it: in a scope of its
// own, with stdout discarded and stderr passed through, and harvests only the
// named variables. vars are visible to the file; env is the process
// environment it inherits. Assignments are recorded with their line so errors
// can point at them.
type shellEval struct {
	Vars map[string]string
	// Prelude holds directive values already read from earlier files: a
	// later override file sees them (dkms sources each file in a shell that
	// already holds the earlier ones) and changes single elements.
	Prelude map[string]Value
	Env     []string
	Stderr  io.Writer
	Timeout time.Duration
	// Wrap, when set, rewrites each external command before it runs
	// (the build sandbox).
	Wrap func(*exec.Cmd) error
}

// evalResult is what a file left behind.
type evalResult struct {
	Values map[string]Value
	// Lines is the first line on which each harvested name is assigned.
	Lines map[string]int
	// Others are the variables the file assigned and left set that are
	// not among the harvested names (see leftovers).
	Others []string
}

// parsedShell is a configuration file parsed once.
type parsedShell struct {
	prog *syntax.File
	// lines is the first line on which each harvested name is assigned.
	lines map[string]int
	// targetFree: the file runs no command and reads none of the
	// variables that differ between kernels, so its values are the same
	// for every kernel and arch.
	targetFree bool
}

// targetVars are the variables whose value differs between the kernels
// and arches one module version is evaluated for.
var targetVars = map[string]bool{"kernelver": true, "arch": true, "kernel_source_dir": true, "kernel_config": true}

func parseShell(file string, src []byte, names []string) (*parsedShell, error) {
	// CRLF files are common in packages prepared on Windows; upstream dkms
	// strips the carriage returns, and so do we (3.0.10 kept them in values).
	src = bytes.ReplaceAll(src, []byte("\r\n"), []byte("\n"))
	parser := syntax.NewParser(syntax.Variant(syntax.LangBash))
	// The name a program is parsed under is its $0: dkms's own path, as
	// in the bash that sources the file.
	prog, err := parser.Parse(bytes.NewReader(src), dkmsScript())
	if err != nil {
		var perr syntax.ParseError
		if errors.As(err, &perr) {
			return nil, &SyntaxError{File: file, Line: perr.Pos.Line(), Col: perr.Pos.Col(), Msg: perr.Text}
		}
		return nil, &SyntaxError{File: file, Msg: err.Error()}
	}
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	p := &parsedShell{prog: prog, lines: map[string]int{}, targetFree: true}
	syntax.Walk(prog, func(node syntax.Node) bool {
		switch n := node.(type) {
		case *syntax.Assign:
			if n.Name != nil && want[n.Name.Value] {
				if _, seen := p.lines[n.Name.Value]; !seen {
					p.lines[n.Name.Value] = int(n.Pos().Line())
				}
			}
		case *syntax.CmdSubst, *syntax.ProcSubst, *syntax.ArithmExp, *syntax.ArithmCmd, *syntax.LetClause:
			p.targetFree = false
		case *syntax.CallExpr:
			if len(n.Args) > 0 {
				p.targetFree = false
			}
		case *syntax.ParamExp:
			if n.Param == nil || targetVars[n.Param.Value] || n.Excl {
				p.targetFree = false
			}
		}
		return true
	})
	return p, nil
}

func (s shellEval) run(ctx context.Context, file string, src []byte, names []string) (evalResult, error) {
	p, err := parseShell(file, src, names)
	if err != nil {
		return evalResult{}, err
	}
	return s.exec(ctx, file, p, names)
}

func (s shellEval) exec(ctx context.Context, file string, p *parsedShell, names []string) (evalResult, error) {
	prog, lines := p.prog, p.lines
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	parser := syntax.NewParser(syntax.Variant(syntax.LangBash))

	// dkms unsets every directive before sourcing, so a PACKAGE_NAME in the
	// caller's environment never leaks into a module's configuration.
	var envList []string
	for _, kv := range s.Env {
		name, _, _ := strings.Cut(kv, "=")
		if !want[name] {
			envList = append(envList, kv)
		}
	}
	for k, v := range s.Vars {
		envList = append(envList, k+"="+v)
	}
	stderr := s.Stderr
	if stderr == nil {
		stderr = io.Discard
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultEvalTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// What bash's `source` gives the file in dkms: the working directory
	// of the command, the variable names dkms passes its safe_source as
	// positional parameters, and BASH_SOURCE naming the file, then dkms.
	runner, err := interp.New(
		interp.Env(expand.ListEnviron(envList...)),
		interp.StdIO(nil, io.Discard, stderr),
		interp.ExecHandlers(killOnCancel(s.Wrap)),
		interp.Params(append([]string{"--"}, names...)...),
	)
	if err != nil {
		return evalResult{}, fmt.Errorf("shell for %s: %w", file, err)
	}
	pre, err := parser.Parse(strings.NewReader(sourceVars(file)+preludeSource(s.Prelude)), "prelude")
	if err != nil {
		return evalResult{}, fmt.Errorf("prelude for %s: %w", file, err)
	}
	if err := safeRun(ctx, runner, pre); err != nil {
		return evalResult{}, fmt.Errorf("prelude for %s: %w", file, err)
	}
	runErr := safeRun(ctx, runner, prog)
	if ctx.Err() != nil {
		return evalResult{}, &EvalError{File: file, Err: fmt.Errorf("gave up after %v (an endless loop or a command that does not return?)", timeout)}
	}
	// A non-zero status from the last command is normal in sourced files
	// (dkms ignores it); only internal failures count.
	if runErr != nil {
		if _, ok := interp.IsExitStatus(runErr); !ok {
			return evalResult{}, &EvalError{File: file, Err: runErr}
		}
	}
	res := evalResult{Values: map[string]Value{}, Lines: lines}
	for _, n := range names {
		vr, ok := runner.Vars[n]
		// An element assignment (A[0]=x) to a fresh name leaves Set false
		// in mvdan/sh v3.14, so the value itself decides.
		if !ok || (!vr.IsSet() && vr.Kind != expand.Indexed && vr.Kind != expand.Associative) {
			continue
		}
		if v, ok := harvest(vr); ok {
			res.Values[n] = v
		}
	}
	res.Others = leftovers(prog, runner, want, envList)
	return res, nil
}

func harvest(vr expand.Variable) (Value, bool) {
	v := Value{Elems: map[int]string{}}
	switch vr.Kind {
	case expand.String:
		v.Elems[0] = vr.Str
	case expand.Indexed:
		for i, s := range vr.List {
			idx := i
			if vr.Indexes != nil {
				idx = vr.Indexes[i]
			}
			v.Elems[idx] = s
		}
	case expand.Associative:
		// dkms directives are indexed arrays; an associative array with
		// numeric keys is read the same way, anything else is ignored.
		for k, s := range vr.Map {
			if i, err := strconv.Atoi(k); err == nil && i >= 0 {
				v.Elems[i] = s
			}
		}
	default:
		return Value{}, false
	}
	return v, len(v.Elems) > 0
}

// safeRun runs prog, turning a panic of the interpreter (a file it
// cannot handle) into an error, and giving up when ctx ends even if a
// command's output pipe is still held open.
func safeRun(ctx context.Context, runner *interp.Runner, prog *syntax.File) (err error) {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("the shell interpreter failed on this file: %v", r)
			}
		}()
		done <- runner.Run(ctx, prog)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done:
			return err
		case <-time.After(2 * time.Second):
			return ctx.Err()
		}
	}
}

// maxSubstOutput caps what one command in a dkms.conf may print into a
// command substitution: $(yes) must not eat the machine's memory.
const maxSubstOutput = 1 << 20

// killOnCancel runs external commands (command substitutions such as
// $(uname -r) are common in dkms.conf) in a process group of their own,
// killed whole when the evaluation times out or prints too much. wrap,
// when set, rewrites each command first (the build sandbox).
func killOnCancel(wrap func(*exec.Cmd) error) func(interp.ExecHandlerFunc) interp.ExecHandlerFunc {
	return func(next interp.ExecHandlerFunc) interp.ExecHandlerFunc {
		return execHandler(wrap)
	}
}

func execHandler(wrap func(*exec.Cmd) error) interp.ExecHandlerFunc {
	return func(ctx context.Context, args []string) error {
		hc := interp.HandlerCtx(ctx)
		path, err := interp.LookPathDir(hc.Dir, hc.Env, args[0])
		if err != nil {
			fmt.Fprintln(hc.Stderr, err)
			return interp.ExitStatus(127)
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		cmd := exec.CommandContext(ctx, path)
		cmd.Args = args
		hc.Env.Each(func(name string, vr expand.Variable) bool {
			if vr.Exported && vr.Kind == expand.String {
				cmd.Env = append(cmd.Env, name+"="+vr.Str)
			}
			return true
		})
		cmd.Dir = hc.Dir
		cmd.Stdin = hc.Stdin
		capped := &cappedWriter{w: hc.Stdout, left: maxSubstOutput, over: cancel}
		cmd.Stdout = capped
		cmd.Stderr = hc.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = time.Second
		if wrap != nil {
			if err := wrap(cmd); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
		}
		err = cmd.Run()
		if capped.exceeded {
			return fmt.Errorf("%s printed more than %d bytes", args[0], maxSubstOutput)
		}
		if errors.Is(err, exec.ErrWaitDelay) {
			return fmt.Errorf("%s left a background process holding its output open", args[0])
		}
		if err == nil {
			return nil
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() >= 0 {
			return interp.ExitStatus(uint8(ee.ExitCode()))
		}
		if ctx.Err() != nil {
			return interp.ExitStatus(1)
		}
		return err
	}
}

// cappedWriter passes at most left bytes on, then calls over.
type cappedWriter struct {
	w        io.Writer
	left     int
	over     func()
	exceeded bool
}

func (c *cappedWriter) Write(p []byte) (int, error) {
	if len(p) > c.left {
		c.exceeded = true
		c.over()
		return 0, errors.New("too much output")
	}
	c.left -= len(p)
	return c.w.Write(p)
}

// dkmsScript is $0 and BASH_SOURCE[1] of a sourced file: the running
// dkms, as bash names the dkms script that sources it.
var dkmsScript = sync.OnceValue(func() string {
	if exe, err := os.Executable(); err == nil {
		return exe
	}
	return "/usr/sbin/dkms"
})

// sourceVars sets BASH_SOURCE as bash's `source` does: the file, then the
// script sourcing it (a file that finds its directory with
// `dirname $BASH_SOURCE` works).
func sourceVars(file string) string {
	var b strings.Builder
	b.WriteString("BASH_SOURCE=(")
	for i, s := range []string{file, dkmsScript()} {
		q, err := syntax.Quote(s, syntax.LangBash)
		if err != nil {
			continue
		}
		if i > 0 {
			b.WriteString(" ")
		}
		b.WriteString(q)
	}
	b.WriteString(")\n")
	return b.String()
}

// preludeSource writes values back as bash assignments, quoted so that they
// are not expanded a second time (3.0.10 re-expanded them; see README).
func preludeSource(vals map[string]Value) string {
	names := make([]string, 0, len(vals))
	for n := range vals {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		for _, i := range vals[n].Indexes() {
			q, err := syntax.Quote(vals[n].Elems[i], syntax.LangBash)
			if err != nil {
				// Only NUL bytes cannot be quoted, and a shell variable
				// cannot hold them anyway.
				continue
			}
			fmt.Fprintf(&b, "%s[%d]=%s\n", n, i, q)
		}
	}
	return b.String()
}
