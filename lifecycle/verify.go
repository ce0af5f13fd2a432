package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/initrd/boot"
)

// The results of a verification boot.
const (
	VerifyLoaded       = "loaded"       // every module that belongs in the initrd loaded
	VerifyMissing      = "missing"      // at least one did not
	VerifyUnverifiable = "unverifiable" // no qemu, no kernel image, or the boot did not get far enough
)

// VerifyReport is what a verification boot found.
type VerifyReport struct {
	Kernel, Initrd string
	// Result is VerifyLoaded, VerifyMissing or VerifyUnverifiable.
	Result          string
	Loaded, Missing []string
	// Detail says why the boot could not verify, or how a module failed.
	Detail string
	Accel  string
	Took   time.Duration
}

// Summary is the report's one line: "safe to reboot into K" or what K's
// initrd lacks.
func (r *VerifyReport) Summary() string {
	switch r.Result {
	case VerifyLoaded:
		if len(r.Loaded) == 0 {
			return fmt.Sprintf("No DKMS module belongs in the initrd of %s: nothing to verify.", r.Kernel)
		}
		return fmt.Sprintf("Safe to reboot into %s: its initrd loaded %s.", r.Kernel, strings.Join(r.Loaded, ", "))
	case VerifyMissing:
		return fmt.Sprintf("%s's initrd lacks %s: it did not load under QEMU.", r.Kernel, strings.Join(r.Missing, ", "))
	}
	return fmt.Sprintf("Cannot verify the initrd of %s: %s", r.Kernel, r.Detail)
}

// VerifyInitrd boots kernel with its initrd under QEMU (KVM when usable,
// emulation otherwise), no disk, until the initramfs has loaded its
// modules, and reports whether each DKMS module that belongs in that
// initrd (REMAKE_INITRD, or named in the initrd tool's configuration:
// InitrdModules) loaded. The boot uses a copy of the image with a probe
// appended (initrd.Probe) that loads those modules with the image's own
// modprobe before udev starts and prints /proc/modules, so a module for
// hardware QEMU lacks is checked too: it is in the image, its
// dependencies are, and the kernel accepts it. The image itself is not
// changed. The error is KindInitrdMissing when a module did not load
// and KindCannotVerify when the boot could not tell; the report is
// returned in both cases, and sent as an InitrdVerified event.
func VerifyInitrd(ctx context.Context, e *Env, kernel, arch string) (*VerifyReport, error) {
	rep := &VerifyReport{Kernel: kernel, Initrd: e.InitrdPath(kernel), Accel: boot.Accel()}
	if rep.Initrd == "" {
		return nil, fail(KindNoInitrd, fmt.Sprintf("Kernel %s has no initrd in %s (initrd.img-%s or initramfs-%s.img).", kernel, e.Layout.BootDir, kernel, kernel))
	}
	mods, err := InitrdModules(ctx, e, kernel, arch)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if len(names) > 0 {
		e.info("Verifying the initrd of %s under QEMU (%s): %s", kernel, rep.Accel, strings.Join(names, ", "))
		e.bootAndCheck(ctx, rep, names)
	} else {
		rep.Result = VerifyLoaded
	}
	for _, m := range rep.Loaded {
		e.info("%s: loaded", m)
	}
	for _, m := range rep.Missing {
		e.info("%s: missing", m)
	}
	if rep.Result == VerifyLoaded {
		e.info("%s", rep.Summary()) // otherwise the error says it
	}
	ev := Event{Type: InitrdVerified, Kernel: kernel, Arch: arch, Text: rep.Summary(), Log: rep.Initrd, Duration: rep.Took, Verify: rep}
	switch rep.Result {
	case VerifyMissing:
		err = &Error{Kind: KindInitrdMissing, Lines: []string{rep.Summary()}}
	case VerifyUnverifiable:
		err = &Error{Kind: KindCannotVerify, Lines: []string{rep.Summary()}}
	}
	ev.Err = err
	e.Sink.Emit(ev)
	return rep, err
}

// writeProbe writes to probePath a copy of the mapped image m that loads
// names at boot. The image's index (kept for the append path) says how;
// an index of the whole image is made in tmp when dkmsd's state does not
// describe it.
func (e *Env) writeProbe(m *initrd.Mapped, kernel string, names []string, tmp, probePath string) error {
	baseLen, digest, _ := e.initrdBase(kernel, m)
	dir := e.Layout.InitrdCacheDir(kernel)
	if baseLen == len(m.Data) && digest == "" {
		dir = filepath.Join(tmp, "index")
	}
	base, err := initrd.OpenBase(m.Data[:baseLen], digest, kernel, dir, tmp)
	if err != nil {
		return err
	}
	defer base.Close()
	probe, err := initrd.Probe(base.Index, m.Data, names)
	if err != nil {
		return err
	}
	_, err = initrd.WriteImage(probePath, m, probe)
	return err
}

// bootAndCheck boots a probe copy of the initrd and fills rep.
func (e *Env) bootAndCheck(ctx context.Context, rep *VerifyReport, names []string) {
	unverifiable := func(format string, args ...any) {
		rep.Result, rep.Detail = VerifyUnverifiable, fmt.Sprintf(format, args...)
	}
	vmlinuz := filepath.Join(e.Layout.BootDir, "vmlinuz-"+rep.Kernel)
	if !exists(vmlinuz) {
		unverifiable("no kernel image %s", vmlinuz)
		return
	}
	m, err := initrd.OpenMapped(rep.Initrd)
	if err != nil {
		unverifiable("%v", err)
		return
	}
	defer m.Close()
	tmp, err := os.MkdirTemp(e.Layout.TmpDir, "dkmsd-verify-")
	if err != nil {
		unverifiable("%v", err)
		return
	}
	defer os.RemoveAll(tmp)
	probePath := filepath.Join(tmp, "initrd.img")
	if err := initrd.Guard(func() error { return e.writeProbe(m, rep.Kernel, names, tmp, probePath) }); err != nil {
		unverifiable("%s: %v", rep.Initrd, err)
		return
	}
	res, err := boot.Run(ctx, boot.Options{Kernel: vmlinuz, Initrd: probePath})
	if res != nil {
		rep.Took = res.Took
	}
	if errors.Is(err, boot.ErrNoQEMU) {
		unverifiable("%v", err)
		return
	}
	if err != nil {
		unverifiable("%v", err)
		return
	}
	var failures []string
	for _, n := range names {
		if res.Loaded(n) {
			rep.Loaded = append(rep.Loaded, n)
			continue
		}
		rep.Missing = append(rep.Missing, n)
		if f := res.Failure(n); f != "" {
			failures = append(failures, n+": "+f)
		}
	}
	rep.Detail = strings.Join(failures, "; ")
	rep.Result = VerifyLoaded
	if len(rep.Missing) > 0 {
		rep.Result = VerifyMissing
	}
}
