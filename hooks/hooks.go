// Package hooks is what package managers run when a kernel arrives or
// leaves: each protocol's arguments (kernel-install, Debian's
// /etc/kernel/*.d and apt, dnf) become a Request, and Run does the work
// once per kernel and tree state:
//
//	req, ok, err := hooks.KernelInstall(os.Args[1:], os.Getenv)
//	if err != nil {
//		os.Exit(hooks.ExitUsage) // the package manager called it wrongly
//	}
//	if ok { // false: a command this hook ignores
//		os.Exit(hooks.Main(req)) // Main = NewEnv + Run on the machine's trees
//	}
//
// The work itself is lifecycle's kernel transaction: adding a kernel
// (lifecycle.KernelArrived) matches the modules installed for the running
// kernel onto it and autoinstalls the rest, building in parallel; removing
// one (lifecycle.KernelPrerm) uninstalls and unbuilds every module for it.
// hooks keeps the protocols, the once-per-kernel record and the reporting.
package hooks

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// Action is what happened to the kernel.
type Action string

const (
	Add    Action = "add"    // a kernel image or its headers arrived
	Remove Action = "remove" // a kernel is being removed
	// Flush ends a package-manager transaction (apt's Post-Invoke): catch
	// up on kernels whose headers came late, report one summary.
	Flush Action = "flush"
)

// Request is one hook invocation.
type Request struct {
	Action Action
	Kernel string
	Arch   string
	// Hook names the protocol and phase, e.g. "kernel-install",
	// "debian-postinst", "debian-header_postinst", "apt-post-invoke".
	Hook string
	// InitrdFollows: the distribution's initrd generator runs after this
	// hook in the same transaction (Debian's image postinst.d, where
	// initramfs-tools comes next), so regenerating it here would be done
	// twice.
	InitrdFollows bool
	// DeferSummary: the hook runs inside a larger transaction (dpkg) that
	// ends with a Flush; the summary waits for it.
	DeferSummary bool
}

// Result is how a hook run ended.
type Result struct {
	ExitCode int
	// Skipped says why nothing was done ("already done", "no headers").
	Skipped string
	Summary *lifecycle.Summary
}

// Run carries out req on env's trees, under the tree lock. It never fails
// the package manager's transaction unless framework.conf says
// hook_fail_on_error, except for errors in its own arguments.
func Run(ctx context.Context, env *lifecycle.Env, req Request) Result {
	if req.Arch == "" {
		req.Arch = tree.MachineArch()
	}
	unlock, err := lifecycle.LockTree(ctx, env)
	if err != nil {
		warn(env, "dkmsd: %v", err)
		return Result{ExitCode: ExitOK, Skipped: "could not lock the tree"}
	}
	defer unlock()
	switch req.Action {
	case Remove:
		return remove(ctx, env, req)
	case Flush:
		return flush(ctx, env, req)
	default:
		return add(ctx, env, req)
	}
}

func add(ctx context.Context, env *lifecycle.Env, req Request) Result {
	st := newState(env)
	mvs, err := env.Layout.ModuleVersions("", "")
	if err != nil {
		warn(env, "dkmsd: %v", err)
		return Result{}
	}
	if len(mvs) == 0 {
		return Result{Skipped: "no DKMS modules"}
	}
	k := env.Layout.Kernel(req.Kernel)
	if !k.HasHeaders() {
		info(env, "dkmsd: the headers of kernel %s are not installed yet: install %s and its DKMS modules will be built then.", req.Kernel, "linux-headers-"+req.Kernel)
		st.markPending(req.Kernel)
		return Result{Skipped: "no headers"}
	}
	fp := lifecycle.KernelFingerprint(env, req.Kernel, req.Arch, tree.RunningKernel())
	if st.done(req.Kernel) == fp {
		st.clearPending(req.Kernel)
		return Result{Skipped: "already done for this kernel and tree"}
	}
	arrival := lifecycle.KernelArrival{
		Name:          req.Hook,
		Kernels:       []string{req.Kernel},
		Arch:          req.Arch,
		InitrdFollows: req.InitrdFollows,
		Defer:         req.DeferSummary,
		InitrdFailed:  func(err error) { warn(env, "dkmsd: %v", err) },
		RecordFailed:  func(err error) { warn(env, "dkmsd: %v", err) },
	}
	// The running kernel is the template: what it has installed, the new
	// kernel gets too.
	if template := tree.RunningKernel(); template != req.Kernel && env.Layout.Kernel(template).Exists() {
		arrival.Template = template
	}
	sum, err := lifecycle.KernelArrived(ctx, env, arrival)
	if err != nil {
		return fail(env, req, err)
	}
	st.setDone(req.Kernel, lifecycle.KernelFingerprint(env, req.Kernel, req.Arch, tree.RunningKernel()))
	st.clearPending(req.Kernel)
	if req.DeferSummary {
		st.addDeferred(sum)
	} else {
		postTransaction(ctx, env, sum, req.Arch)
	}
	if sum.Failed() && failOnError(env) {
		return Result{ExitCode: ExitFailed, Summary: sum}
	}
	return Result{Summary: sum}
}

func remove(ctx context.Context, env *lifecycle.Env, req Request) Result {
	st := newState(env)
	err := lifecycle.KernelPrerm(ctx, env, req.Kernel, req.Arch, false)
	st.forget(req.Kernel)
	if err != nil {
		warn(env, "dkmsd: %v", err)
		if failOnError(env) {
			return Result{ExitCode: ExitFailed}
		}
	}
	return Result{}
}

// flush builds for kernels whose headers arrived after the hook that
// wanted them, then reports the transaction's summary once.
func flush(ctx context.Context, env *lifecycle.Env, req Request) Result {
	st := newState(env)
	for _, k := range st.pending() {
		if env.Layout.Kernel(k).HasHeaders() {
			// Its results join the deferred ones taken below.
			add(ctx, env, Request{Action: Add, Kernel: k, Arch: req.Arch, Hook: req.Hook, DeferSummary: true})
		}
	}
	sum := st.takeDeferred()
	if len(sum.Results) > 0 {
		if err := lifecycle.RecordTransaction(env, req.Hook, &sum); err != nil {
			warn(env, "dkmsd: %v", err)
		}
	}
	postTransaction(ctx, env, &sum, req.Arch)
	return Result{Summary: &sum}
}

// postTransaction ends a kernel transaction that installed modules, and
// had no failure, with framework.conf's post_transaction, as dkms's
// autoinstall does: once, at the end of the package manager's transaction
// when the summary was deferred to it.
func postTransaction(ctx context.Context, env *lifecycle.Env, sum *lifecycle.Summary, arch string) {
	if k, installed := sum.InstalledKernel(); installed && !sum.Failed() {
		lifecycle.PostTransaction(ctx, env, lifecycle.Target{Kernel: k, Arch: arch})
	}
}

func fail(env *lifecycle.Env, req Request, err error) Result {
	if lifecycle.KindOf(err) == lifecycle.KindNoHeaders {
		info(env, "dkmsd: the headers of kernel %s are not installed yet: install %s and its DKMS modules will be built then.", req.Kernel, "linux-headers-"+req.Kernel)
		newState(env).markPending(req.Kernel)
		return Result{Skipped: "no headers"}
	}
	warn(env, "dkmsd: %v", err)
	if failOnError(env) {
		return Result{ExitCode: ExitFailed}
	}
	return Result{}
}

// failOnError: framework.conf's hook_fail_on_error="yes" makes a failed
// module fail the package transaction.
func failOnError(env *lifecycle.Env) bool {
	return strings.EqualFold(env.Framework.HookFailOnError, "yes")
}

// state is what hooks remember between runs, under <dkms_tree>/.dkmsd.
type state struct{ dir string }

func newState(env *lifecycle.Env) state {
	return state{dir: env.Layout.HookStateDir()}
}

func (s state) path(parts ...string) string {
	return filepath.Join(append([]string{s.dir}, parts...)...)
}

func (s state) write(p string, data []byte) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return
	}
	// A record is a hint: a failed write only means the work is redone.
	_ = atomicfile.Write(p, data, 0o644, "")
}

func (s state) done(kernel string) string {
	b, _ := os.ReadFile(s.path("done", kernel))
	return strings.TrimSpace(string(b))
}

func (s state) setDone(kernel, fp string) { s.write(s.path("done", kernel), []byte(fp+"\n")) }

func (s state) markPending(kernel string) {
	s.write(s.path("pending", kernel), []byte(time.Now().Format(time.RFC3339)+"\n"))
}

func (s state) clearPending(kernel string) { os.Remove(s.path("pending", kernel)) }

func (s state) pending() []string {
	entries, _ := os.ReadDir(s.path("pending"))
	var out []string
	for _, e := range entries {
		// Skip the temporary files of a write a kill interrupted.
		if !strings.HasPrefix(e.Name(), ".") && !strings.HasSuffix(e.Name(), ".tmp") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func (s state) forget(kernel string) {
	os.Remove(s.path("done", kernel))
	os.Remove(s.path("pending", kernel))
}

// addDeferred keeps a hook's results for the transaction's summary.
func (s state) addDeferred(sum *lifecycle.Summary) {
	var all lifecycle.Summary
	if b, err := os.ReadFile(s.path("deferred.json")); err == nil {
		_ = json.Unmarshal(b, &all)
	}
	all.Results = append(all.Results, sum.Results...)
	b, err := json.Marshal(all)
	if err == nil {
		s.write(s.path("deferred.json"), b)
	}
}

func (s state) takeDeferred() lifecycle.Summary {
	var all lifecycle.Summary
	if b, err := os.ReadFile(s.path("deferred.json")); err == nil {
		_ = json.Unmarshal(b, &all)
	}
	os.Remove(s.path("deferred.json"))
	return all
}

func info(env *lifecycle.Env, format string, args ...any) {
	env.Sink.Emit(lifecycle.Event{Type: lifecycle.Info, Text: fmt.Sprintf(format, args...)})
}

func warn(env *lifecycle.Env, format string, args ...any) {
	env.Sink.Emit(lifecycle.Event{Type: lifecycle.Warning, Text: fmt.Sprintf(format, args...)})
}
