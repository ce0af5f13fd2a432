package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// Uninstall removes t's modules from the kernel's module dir, puts back
// the originals it displaced and runs depmod. The module stays built.
func Uninstall(ctx context.Context, e *Env, t Target) error {
	installed, err := e.isInstalled(ctx, t)
	if err != nil {
		return err
	}
	if !installed {
		e.info("Module %s %s is not installed for kernel %s (%s). Skipping...", t.Module, t.Version, t.Kernel, t.Arch)
		return nil
	}
	return e.uninstall(ctx, t)
}

func (e *Env) uninstall(ctx context.Context, t Target) error {
	e.info("Module %s-%s for kernel %s (%s).", t.Module, t.Version, t.Kernel, t.Arch)
	conf, err := e.readConf(ctx, e.confFile(t.Module, t.Version), t, false)
	if err != nil {
		return err
	}
	active := e.Layout.InstalledVersion(t.Module, t.Kernel, t.Arch) == t.Version
	restored := false
	if active {
		e.info("Before uninstall, this module version was ACTIVE on this kernel.")
		if restored, err = e.removeModules(t, conf); err != nil {
			return err
		}
	} else {
		e.info("This module version was INACTIVE for this kernel.")
	}
	if conf.PostRemove != "" {
		_, _ = e.runShownScript(ctx, "post_remove", e.scriptDir(t.Module, e.sourceDir(t), conf.PostRemove), conf.PostRemove)
	}
	if e.Layout.Kernel(t.Kernel).Exists() && !e.DeferDepmod {
		_ = e.showDepmod(ctx, t.Kernel)
	}
	if !e.DeferDepmod {
		e.commit(t)
	}
	if active {
		orig := e.Layout.OriginalDir(t.Module, t.Kernel, t.Arch)
		if restored || isDir(orig) {
			e.info("")
			e.info("Removing original_module from DKMS tree for kernel %s (%s)", t.Kernel, t.Arch)
			os.RemoveAll(orig)
			removeEmptyParents(filepath.Dir(orig), e.Layout.ModuleDir(t.Module))
		}
		e.Sink.Emit(Event{Type: Uninstalled, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
			Text: fmt.Sprintf("%s/%s uninstalled from %s (%s)", t.Module, t.Version, t.Kernel, t.Arch)})
	}
	return nil
}

// removeModules deletes the installed files of an active version, puts
// back the originals they displaced and drops the kernel link, showing
// each module as dkms 3.0.10 does. restored says whether an original was
// put back.
func (e *Env) removeModules(t Target, conf *tree.Conf) (restored bool, err error) {
	builtDir := filepath.Join(e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch), "module")
	kdir := e.Layout.KernelDir(t.Kernel)
	var files []string
	for _, m := range conf.Modules {
		if f := e.installedCopy(t, m, builtDir); f != "" {
			files = append(files, f)
		}
	}
	if err := e.begin("uninstall", t, files); err != nil {
		return false, err
	}
	suffix := e.buildKernel(t.Kernel).moduleSuffix()
	for _, m := range conf.Modules {
		e.info("")
		e.info("%s%s:", m.DestName, suffix)
		e.info(" - Uninstallation")
		if f := e.installedCopy(t, m, builtDir); f == "" {
			e.info("   - Module was not found within %s/", kdir)
		} else {
			e.info("   - Deleting from: %s/", filepath.Dir(f))
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				if f == files[0] {
					e.commit(t) // nothing changed yet
				}
				return restored, diskError(f, err)
			}
			removeEmptyParents(filepath.Dir(f), kdir)
		}
		e.info(" - Original module")
		back, err := e.restoreOriginals(t, m.DestName)
		if err != nil {
			return restored, err // the link and the archive stay; the intent finishes it later
		}
		if !back {
			e.info("   - No original module was found for this module on this kernel.")
			e.info("   - Use the dkms install command to reinstall any previous module version.")
		}
		restored = restored || back
	}
	// Originals no module of this version names (a dkms.conf changed
	// since the install) go back too.
	if _, err := e.restoreOriginals(t, ""); err != nil {
		return restored, err
	}
	link := e.Layout.KernelLink(t.Module, t.Kernel, t.Arch)
	if err := os.Remove(link); err != nil && !os.IsNotExist(err) {
		return restored, fmt.Errorf("uninstall %s: %w", link, err)
	}
	return restored, atomicfile.SyncDir(filepath.Dir(link))
}

// installedCopy finds the installed file of module m: in the
// distribution's location or the dkms.conf's own, with the same version as
// the built copy.
func (e *Env) installedCopy(t Target, m tree.ModuleSpec, builtDir string) string {
	kdir := e.Layout.KernelDir(t.Kernel)
	locs := []string{m.DestLocation}
	if m.RawDestLocation != m.DestLocation && m.RawDestLocation != "" {
		locs = append(locs, m.RawDestLocation)
	}
	built := tree.FindModuleFile(builtDir, m.DestName)
	var want tree.ModInfo
	for _, l := range locs {
		f := tree.FindModuleFile(filepath.Join(kdir, l), m.DestName)
		if f == "" {
			continue
		}
		if built == "" || sameFile(built, f) {
			return f
		}
		if want == nil {
			want, _ = tree.ReadModInfo(built)
		}
		if want == nil {
			return f
		}
		if got, err := tree.ReadModInfo(f); err == nil && got.Get("version") == want.Get("version") {
			return f
		}
	}
	return ""
}

// Unbuild uninstalls t if needed and deletes its build.
func Unbuild(ctx context.Context, e *Env, t Target) error {
	if err := Uninstall(ctx, e, t); err != nil {
		return err
	}
	built, err := e.isBuilt(ctx, t)
	if err != nil {
		return err
	}
	if !built {
		e.info("Module %s %s is not built for kernel %s (%s). Skipping...", t.Module, t.Version, t.Kernel, t.Arch)
		return nil
	}
	return e.unbuild(t)
}

func (e *Env) unbuild(t Target) error {
	dir := e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch)
	// Rename first, then delete: a crash leaves no half-deleted build that
	// looks built.
	gone := fmt.Sprintf("%s/.dkmsd-unbuild-%s-%d", filepath.Dir(dir), t.Arch, os.Getpid())
	if err := os.Rename(dir, gone); err != nil {
		return fmt.Errorf("unbuild %s: %w", dir, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("unbuild %s: %w", dir, err)
	}
	removeIfNoSubdirs(filepath.Dir(dir))
	return nil
}

// removeIfNoSubdirs removes a kernel dir of the tree once no arch dir is
// left in it.
func removeIfNoSubdirs(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, en := range entries {
		if en.IsDir() {
			return
		}
	}
	os.RemoveAll(dir)
}

// Remove uninstalls and unbuilds module/version for each target kernel and
// deletes it from the tree once nothing is built any more. The source in
// the source tree is never touched.
func Remove(ctx context.Context, e *Env, module, version string, targets []Target) error {
	vdir := e.Layout.VersionDir(module, version)
	stale, _ := filepath.Glob(filepath.Join(vdir, "*", ".tmp_*"))
	stale = inKernelDirs(stale)
	for _, t := range targets {
		stale = append(stale, e.failedLog(t), e.failureRecordPath(t))
	}
	for _, s := range stale {
		os.RemoveAll(s)
	}
	for _, t := range targets {
		if err := Unbuild(ctx, e, t); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(vdir)
	if err != nil {
		return nil
	}
	for _, en := range entries {
		switch en.Name() {
		case "build", "tarball", "driver_disk", "rpm", "deb", "source":
			continue
		}
		if en.IsDir() && !strings.HasPrefix(en.Name(), ".") {
			return nil
		}
	}
	e.info("Deleting module %s-%s completely from the DKMS tree.", module, version)
	gone := filepath.Join(e.Layout.ModuleDir(module), fmt.Sprintf(".dkmsd-remove-%s-%d", version, os.Getpid()))
	if err := os.Rename(vdir, gone); err != nil {
		return fmt.Errorf("remove %s: %w", vdir, err)
	}
	if err := os.RemoveAll(gone); err != nil {
		return fmt.Errorf("remove %s: %w", vdir, err)
	}
	mdir := e.Layout.ModuleDir(module)
	if rest, err := os.ReadDir(mdir); err == nil && len(rest) == 0 {
		os.Remove(mdir)
	}
	// Failures on kernels nothing was built for go with the version.
	for _, r := range FailureRecords(e, module, version, "") {
		os.Remove(e.failedLog(r.Target))
		e.forgetFailure(r.Target)
	}
	e.Sink.Emit(Event{Type: Removed, Module: module, Version: version})
	return nil
}

// BuiltTargets lists every kernel/arch module/version is built for
// (dkms's --all), in version order.
func BuiltTargets(e *Env, module, version string) []Target {
	var out []Target
	for _, b := range e.Layout.Builds(module, version, "", "") {
		out = append(out, Target{Module: module, Version: version, Kernel: b.Kernel, Arch: b.Arch})
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && tree.CompareVersions(out[j-1].Kernel+"/"+out[j-1].Arch, out[j].Kernel+"/"+out[j].Arch) > 0; j-- {
			out[j-1], out[j] = out[j], out[j-1]
		}
	}
	return out
}
