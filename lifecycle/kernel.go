package lifecycle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
)

// KernelArrival is one "kernel K arrived" transaction, as dkms's
// autoinstall, kernel_postinst, kernel_preinst and match and every package
// manager's hook ask for it.
type KernelArrival struct {
	// Name says what started the transaction ("dkms autoinstall",
	// "kernel-install"); it is recorded with the summary.
	Name    string
	Kernels []string
	Arch    string
	// Template, when set, is a kernel whose installed module versions are
	// matched onto Kernels[0] first; Module narrows the match to one
	// module.
	Template, Module string
	// MatchOnly is dkms match: no autoinstall, and no summary lines (dkms
	// prints none for a match).
	MatchOnly bool
	// Reinstall is kernel_preinst, a kernel reinstalled at the same
	// version: what autoinstall will rebuild is removed first.
	Reinstall bool
	// InitrdFollows: the distribution's initrd generator runs next in the
	// same transaction, so the initrd is left to it.
	InitrdFollows bool
	Initrd        InitrdOptions
	// Defer leaves the summary unrecorded: the caller keeps it for the end
	// of a larger transaction (RecordTransaction).
	Defer bool
	// InitrdFailed and RecordFailed hear of what does not fail the
	// transaction — an initrd that could not be updated, a summary that
	// could not be recorded — each caller reporting it its own way.
	InitrdFailed, RecordFailed func(error)
}

// KernelArrived installs the modules the arrival calls for, brings the
// kernels' initrds up to date, shows the summary and records it. The
// summary is returned even when modules failed; the error is for a
// transaction that could not run (missing headers, an unreadable tree).
func KernelArrived(ctx context.Context, e *Env, a KernelArrival) (*Summary, error) {
	sum, err := a.install(ctx, e)
	if err != nil {
		return nil, err
	}
	if err := a.updateInitrds(ctx, e); err != nil && a.InitrdFailed != nil {
		a.InitrdFailed(err)
	}
	if !a.MatchOnly {
		for _, l := range sum.Lines(ExitCode) {
			e.info("%s", l)
		}
	}
	if a.Defer {
		return sum, nil
	}
	if err := RecordTransaction(e, a.Name, sum); err != nil && a.RecordFailed != nil {
		a.RecordFailed(err)
	}
	return sum, nil
}

// install runs the match and autoinstall jobs.
func (a KernelArrival) install(ctx context.Context, e *Env) (*Summary, error) {
	if a.Reinstall {
		for _, k := range a.Kernels {
			if err := KernelPrerm(ctx, e, k, a.Arch, true); err != nil {
				return nil, err
			}
		}
	}
	sum := &Summary{}
	if a.Template != "" {
		m, err := Match(ctx, e, a.Template, a.Kernels[0], a.Arch, a.Module)
		if err != nil {
			return nil, err
		}
		sum.Results = append(sum.Results, m.Results...)
	}
	if a.MatchOnly {
		return sum, nil
	}
	ai, err := Autoinstall(ctx, e, a.Kernels, a.Arch)
	if err != nil {
		return nil, err
	}
	sum.Results = append(sum.Results, ai.Results...)
	return sum, nil
}

// updateInitrds regenerates each kernel's initrd once, unless the command
// said --no-initrd or the distribution's generator comes next. A kernel
// without an initrd is left alone. The first failure is returned; the
// other kernels are still tried.
func (a KernelArrival) updateInitrds(ctx context.Context, e *Env) error {
	if e.NoInitrd {
		return nil
	}
	seen := map[string]bool{}
	var first error
	for _, k := range a.Kernels {
		if seen[k] {
			continue
		}
		seen[k] = true
		if a.InitrdFollows {
			e.InitrdHandled(k)
			continue
		}
		if _, err := RegenerateInitrd(ctx, e, k, a.Arch, a.Initrd); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// RecordTransaction ends a transaction: its summary, as dkms's lines, is
// kept for D-Bus's GetLastTransaction and reported to every sink.
func RecordTransaction(e *Env, name string, sum *Summary) error {
	return SaveTransaction(e, TransactionOf(name, sum, sum.Lines(ExitCode)))
}

// KernelFingerprint sums up what a KernelArrived for kernel depends on: the
// module versions in the tree (and their dkms.conf), which is installed
// for the kernel, the kernel's headers and the template kernel. Equal
// fingerprints mean a second arrival would do nothing; computing one reads
// no dkms.conf.
func KernelFingerprint(e *Env, kernel, arch, template string) string {
	h := sha256.New()
	mvs, _ := e.Layout.ModuleVersions("", "")
	for _, mv := range mvs {
		fmt.Fprintf(h, "%s/%s broken=%v installed=%s", mv.Name, mv.Version, mv.Broken, e.Layout.InstalledVersion(mv.Name, kernel, arch))
		if fi, err := os.Stat(e.Layout.ConfFile(mv.Name, mv.Version)); err == nil {
			fmt.Fprintf(h, " conf=%d/%d", fi.Size(), fi.ModTime().UnixNano())
		}
		// A failure a user's own command has forgotten is tried again.
		if fi, err := os.Stat(e.failureRecordPath(Target{Module: mv.Name, Version: mv.Version, Kernel: kernel, Arch: arch})); err == nil {
			fmt.Fprintf(h, " failed=%d", fi.ModTime().UnixNano())
		}
		fmt.Fprintln(h)
	}
	if fi, err := os.Stat(e.Layout.Kernel(kernel).HeadersDir()); err == nil {
		fmt.Fprintf(h, "headers=%d\n", fi.ModTime().UnixNano())
	}
	fmt.Fprintf(h, "template=%s\n", template)
	return hex.EncodeToString(h.Sum(nil))
}
