// Package hooks is what package managers run when a kernel arrives or
// leaves: each protocol's arguments (kernel-install, Debian's
// /etc/kernel/*.d and apt, dnf, pacman's targets) become a Request, and Run does the work
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
	// Reinstall: the kernel is being replaced at the same version (Debian's
	// preinst.d on upgrade). Its modules are marked for a rebuild at the
	// next Add, not removed now (dkms removes them here, so a failed
	// unpack leaves the old image without them).
	Reinstall Action = "reinstall"
)

// Request is one hook invocation.
type Request struct {
	Action Action
	Kernel string
	Arch   string
	// Hook names the protocol and phase, e.g. "kernel-install",
	// "debian-postinst", "debian-header_postinst", "apt-post-invoke".
	Hook string
	// Image is the kernel image's path where the protocol passes it
	// (Debian's preinst and postinst hooks).
	Image string
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
	if env.LockWait == 0 {
		env.LockWait = env.Framework.HookLockTimeout
	}
	if env.LockWait == 0 {
		env.LockWait = DefaultLockWait
	}
	env.RememberFailures = true
	unlock, err := lifecycle.LockTree(ctx, env)
	if lifecycle.IsBusy(err) {
		return busy(env, req, err)
	}
	if err != nil {
		warn(env, "dkmsd: %v", err)
		return Result{ExitCode: ExitOK, Skipped: "could not lock the tree"}
	}
	defer unlock()
	var res Result
	switch req.Action {
	case Remove:
		res = remove(ctx, env, req)
	case Flush:
		return flush(ctx, env, req)
	case Reinstall:
		res = reinstall(env, req)
	default:
		res = add(ctx, env, req)
	}
	// Kernels that other hooks left pending while this one held the lock.
	CatchUp(ctx, env)
	return res
}

// DefaultLockWait bounds a hook's wait for the tree lock, so that a
// build hanging in another dkms never hangs the package manager's
// transaction.
const DefaultLockWait = 60 * time.Second

// busy records what a hook could not do because another process held the
// tree lock past the bound: that process, or the next hook, does it
// (CatchUp).
func busy(env *lifecycle.Env, req Request, err error) Result {
	st := newState(env)
	switch req.Action {
	case Add:
		st.markPending(req.Kernel)
		info(env, "dkmsd: %v. Kernel %s is marked pending: its DKMS modules will be built when that process is done, or by the next kernel hook.", err, req.Kernel)
	case Remove:
		st.write(st.path("pending-remove", req.Kernel), []byte(time.Now().Format(time.RFC3339)+"\n"))
		info(env, "dkmsd: %v. The DKMS modules of kernel %s will be removed when that process is done, or by the next kernel hook.", err, req.Kernel)
	case Reinstall:
		st.markReinstall(req.Kernel, req.Image)
		st.forgetDone(req.Kernel)
	default:
		info(env, "dkmsd: %v. Pending kernels are left to that process or the next kernel hook.", err)
	}
	return Result{ExitCode: ExitOK, Skipped: "tree busy"}
}

// CatchUp does, under the tree lock the caller holds, what hooks left
// pending: kernels whose headers have arrived since, or which a hook could
// not do because the tree was busy, and kernels removed meanwhile. Every
// process that takes the lock through dkms runs it before it lets go.
func CatchUp(ctx context.Context, env *lifecycle.Env) { catchUp(ctx, env, "catch-up", false) }

// catchUp is CatchUp reporting as hook; deferSummary keeps the results for
// the transaction's one summary (apt's Post-Invoke).
func catchUp(ctx context.Context, env *lifecycle.Env, hook string, deferSummary bool) {
	st := newState(env)
	for _, k := range st.list("pending-remove") {
		// The kernel's package has finished going: its own modules are
		// gone. Until then its prerm may still come.
		if _, err := os.Stat(filepath.Join(env.Layout.KernelDir(k), "kernel")); err == nil {
			continue
		}
		remove(ctx, env, Request{Action: Remove, Kernel: k, Arch: tree.MachineArch(), Hook: hook})
		os.Remove(st.path("pending-remove", k))
	}
	for _, k := range st.pending() {
		if env.Layout.Kernel(k).HasHeaders() {
			add(ctx, env, Request{Action: Add, Kernel: k, Arch: tree.MachineArch(), Hook: hook, DeferSummary: deferSummary})
		}
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
		noHeaders(env, req)
		st.markPending(req.Kernel)
		return Result{Skipped: "no headers"}
	}
	rebuild := st.replacedImage(env, req.Kernel, req.Image)
	fp := lifecycle.KernelFingerprint(env, req.Kernel, req.Arch, tree.RunningKernel())
	// A kernel with builds that keep failing is gone through again: each
	// hook run says so, and retries those whose inputs changed.
	if st.done(req.Kernel) == fp && len(lifecycle.FailureRecords(env, "", "", req.Kernel)) == 0 {
		st.clearPending(req.Kernel)
		return Result{Skipped: "already done for this kernel and tree"}
	}
	arrival := lifecycle.KernelArrival{
		Name:          req.Hook,
		Kernels:       []string{req.Kernel},
		Arch:          req.Arch,
		Reinstall:     rebuild,
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
	st.clearReinstall(req.Kernel)
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
	// Its results join the deferred ones taken below.
	catchUp(ctx, env, req.Hook, true)
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
	verifyInitrds(ctx, env, sum, arch)
}

// verifyInitrds boots each kernel the transaction installed modules for
// with its initrd, when framework.conf says verify_initrd="yes": the
// result goes to the sinks (journal, D-Bus); it never fails the hook.
func verifyInitrds(ctx context.Context, env *lifecycle.Env, sum *lifecycle.Summary, arch string) {
	if !env.Framework.VerifyInitrd {
		return
	}
	seen := map[string]bool{}
	for _, r := range sum.Results {
		if r.Outcome != lifecycle.OutcomeInstalled || seen[r.Kernel] || env.InitrdPath(r.Kernel) == "" {
			continue
		}
		seen[r.Kernel] = true
		if _, err := lifecycle.VerifyInitrd(ctx, env, r.Kernel, arch); err != nil {
			warn(env, "dkmsd: %v", err)
		}
	}
}

func fail(env *lifecycle.Env, req Request, err error) Result {
	if lifecycle.KindOf(err) == lifecycle.KindNoHeaders {
		noHeaders(env, req)
		newState(env).markPending(req.Kernel)
		return Result{Skipped: "no headers"}
	}
	warn(env, "dkmsd: %v", err)
	if failOnError(env) {
		return Result{ExitCode: ExitFailed}
	}
	return Result{}
}

// noHeaders says the kernel waits for its headers, naming the package
// the calling package manager would install them from.
func noHeaders(env *lifecycle.Env, req Request) {
	info(env, "dkmsd: the headers of kernel %s are not installed yet: install %s and its DKMS modules will be built then.", req.Kernel, headersPackage(env, req))
}

// headersPackage is the package that holds req.Kernel's headers for the
// package manager that ran the hook: dnf's kernel-devel, Debian's
// linux-headers, else the distribution's own naming.
func headersPackage(env *lifecycle.Env, req Request) string {
	switch {
	case req.Hook == "dnf":
		return "kernel-devel-" + req.Kernel
	case strings.HasPrefix(req.Hook, "debian-") || strings.HasPrefix(req.Hook, "apt-"):
		return "linux-headers-" + req.Kernel
	}
	if pkg := env.Distro.HeadersPackage(req.Kernel); pkg != "" {
		return pkg
	}
	return "your distribution's kernel headers package matching " + req.Kernel
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

func (s state) pending() []string { return s.list("pending") }

// list is the kernels recorded under kind.
func (s state) list(kind string) []string {
	entries, _ := os.ReadDir(s.path(kind))
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

func (s state) forgetDone(kernel string) { os.Remove(s.path("done", kernel)) }

func (s state) forget(kernel string) {
	os.Remove(s.path("reinstall", kernel))
	os.Remove(s.path("pending-remove", kernel))
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
