package lifecycle

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/tree"
)

// Install puts t's built modules into the kernel's module dir, saving any
// module of the same name it displaces, marks the version active for the
// kernel and runs depmod. Unbuilt modules are built (and added) first. A
// module already installed is skipped unless Force is set.
func Install(ctx context.Context, e *Env, t Target) error {
	if err := checkNames(t.Module, t.Version); err != nil {
		return err
	}
	if mv, ok := e.Layout.Lookup(t.Module, t.Version); ok && mv.Broken {
		return brokenError(t.Module, t.Version)
	}
	installed, err := e.isInstalled(ctx, t)
	if err != nil {
		return err
	}
	if installed {
		if !e.Force {
			e.info("Module %s/%s already installed on kernel %s (%s), skip. You may override by specifying --force.", t.Module, t.Version, t.Kernel, t.Arch)
			return nil
		}
		if err := e.uninstall(ctx, t); err != nil {
			return err
		}
	}
	built, err := e.isBuilt(ctx, t)
	if err != nil {
		return err
	}
	if !built {
		if err := Build(ctx, e, t); err != nil {
			return err
		}
	}
	return e.install(ctx, t)
}

func (e *Env) install(ctx context.Context, t Target) error {
	k := e.Layout.Kernel(t.Kernel)
	if !k.Exists() {
		return fail(KindNoKernelDir, fmt.Sprintf("The directory %s doesn't exist.", k.Dir), "You cannot install a module onto a non-existant kernel.")
	}
	conf, err := e.readConf(ctx, e.confFile(t.Module, t.Version), t, true)
	if err != nil {
		return err
	}
	plan, err := e.planInstall(t, k, conf)
	if err != nil {
		return err
	}
	done, err := e.placeModules(ctx, t, k, conf, plan)
	if err != nil {
		return err
	}
	if err := symlinkAtomic(filepath.Join(t.Version, t.Kernel, t.Arch), e.Layout.KernelLink(t.Module, t.Kernel, t.Arch)); err != nil {
		return e.rollbackInstall(t, done, err)
	}
	if conf.PostInstall != "" {
		_, _ = e.runShownScript(ctx, "post_install", e.scriptDir(t.Module, e.sourceDir(t), conf.PostInstall), conf.PostInstall)
	}
	return e.finishInstall(ctx, t)
}

// plannedModule is a built module file and the record it installs as.
type plannedModule struct {
	spec  tree.ModuleSpec
	built string
}

// planInstall finds every built module file, refusing, before anything is
// written, a module built for another kernel: it would not load.
func (e *Env) planInstall(t Target, k tree.Kernel, conf *tree.Conf) ([]plannedModule, error) {
	builtDir := filepath.Join(e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch), "module")
	var plan []plannedModule
	release := k.Release()
	for _, m := range conf.Buildable() {
		f := tree.FindModuleFile(builtDir, m.DestName)
		if f == "" {
			return nil, fail(KindMissingBuilt, fmt.Sprintf("Missing module %s in %s", m.DestName, builtDir))
		}
		info, err := tree.ReadModInfo(f)
		if err != nil {
			return nil, fail(KindVermagic, fmt.Sprintf("%s is not a kernel module: %v", f, err))
		}
		if got, _, _ := strings.Cut(info.Get("vermagic"), " "); got != release {
			return nil, fail(KindVermagic, fmt.Sprintf("%s was built for kernel %q (vermagic %q), not for %s.", f, got, info.Get("vermagic"), release),
				"Refusing to install it; rebuild it with: dkms build --force "+t.Module+"/"+t.Version+" -k "+t.Kernel)
		}
		plan = append(plan, plannedModule{m, f})
	}
	return plan, nil
}

// placeModules records the intent, then puts each module that passes the
// sanity check in place, keeping the originals it displaces on a first
// install, and shows it as dkms 3.0.10 does. PRE_INSTALL runs once the
// first module has passed its check, where dkms runs it. It returns the
// files placed; on failure, everything is rolled back and the error says
// why.
func (e *Env) placeModules(ctx context.Context, t Target, k tree.Kernel, conf *tree.Conf, plan []plannedModule) ([]string, error) {
	hadLink := exists(e.Layout.KernelLink(t.Module, t.Kernel, t.Arch))
	var dests []string
	for _, p := range plan {
		dests = append(dests, filepath.Join(k.Dir, p.spec.DestLocation, filepath.Base(p.built)))
	}
	if err := e.begin("install", t, dests); err != nil {
		return nil, err
	}
	var done []string
	for i, p := range plan {
		name := filepath.Base(p.built)
		e.info("")
		e.info("%s:", name)
		e.info("Running module version sanity check.")
		ok, err := e.sanityCheck(t, conf, p.spec, p.built)
		if err != nil {
			return nil, e.rollbackInstall(t, done, err)
		}
		if !ok {
			continue
		}
		if i == 0 && conf.PreInstall != "" {
			ran, err := e.runShownScript(ctx, "pre_install", e.scriptDir(t.Module, e.sourceDir(t), conf.PreInstall), conf.PreInstall)
			if ran && err != nil && !e.Force {
				return nil, e.rollbackInstall(t, done, fail(KindPreInstall, "pre_install failed, aborting install.", "You may override by specifying --force."))
			}
		}
		if err := e.showOriginal(t, p, hadLink); err != nil {
			return nil, e.rollbackInstall(t, done, err)
		}
		destDir := filepath.Join(k.Dir, p.spec.DestLocation)
		if err := os.MkdirAll(destDir, 0o755); err != nil {
			return nil, e.rollbackInstall(t, done, diskError(destDir, err))
		}
		dest := filepath.Join(destDir, name)
		e.info(" - Installation")
		e.info("   - Installing to %s/", destDir)
		if e.SymlinkModules {
			err = symlinkAtomic(p.built, dest)
		} else {
			err = copyFileAtomic(p.built, dest)
		}
		if err != nil {
			return nil, e.rollbackInstall(t, done, err)
		}
		done = append(done, dest)
	}
	if len(plan) > 0 && len(done) == 0 {
		return nil, e.rollbackInstall(t, done, fail(KindInstallAborted, "Installation aborted."))
	}
	return done, nil
}

// showOriginal is dkms's " - Original module" step: on a first install
// for the kernel, a same-named module the kernel has is archived (see
// archiveOriginal).
func (e *Env) showOriginal(t Target, p plannedModule, hadLink bool) error {
	e.info(" - Original module")
	switch {
	case hadLink && tree.FindModuleFile(e.Layout.OriginalDir(t.Module, t.Kernel, t.Arch), p.spec.DestName) != "":
		e.info("   - An original module was already stored during a previous install")
	case hadLink:
		e.info("   - This kernel never originally had a module by this name")
	default:
		found, err := e.archiveOriginal(t, p.spec, p.built)
		if err != nil {
			return err
		}
		if !found {
			e.info("   - No original module exists within this kernel")
		}
	}
	return nil
}

// finishInstall runs depmod (a failure uninstalls the module again) and
// drops the intent, unless the batch runs depmod once for the kernel.
func (e *Env) finishInstall(ctx context.Context, t Target) error {
	// Under DeferDepmod the batch runs depmod for the kernel and then
	// drops the intent (commitKernel): a kill before that is rolled
	// forward.
	if !e.DeferDepmod {
		if err := e.showDepmod(ctx, t.Kernel); err != nil {
			_ = e.uninstall(ctx, t)
			e.commit(t)
			return &Error{Kind: KindDepmod, Err: err, Lines: []string{"Problems with depmod detected. Automatically uninstalling this module.", "Install Failed (depmod problems). Module rolled back to built state."}}
		}
		e.commit(t)
		e.loadNewModules(ctx, t.Kernel)
	}
	e.Sink.Emit(Event{Type: Installed, Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
		Text: fmt.Sprintf("%s/%s installed for %s (%s)", t.Module, t.Version, t.Kernel, t.Arch)})
	return nil
}

// rollbackInstall takes back what an install put in before it failed —
// its files, the originals it archived — and drops its intent. If that
// cannot be done either, the intent stays for the next command's recovery.
func (e *Env) rollbackInstall(t Target, done []string, cause error) error {
	for _, d := range done {
		os.Remove(d)
	}
	if _, err := e.restoreOriginals(t, ""); err != nil {
		e.warn("%v", err)
		return cause
	}
	e.commit(t)
	return cause
}

func (e *Env) sourceDir(t Target) string {
	return filepath.Join(e.Layout.VersionDir(t.Module, t.Version), "source")
}

// sanityCheck decides whether a module may replace what the kernel already
// has: OBSOLETE_BY, and a same-named module of a newer or equal version.
// false means skip this module (the reason has been reported).
func (e *Env) sanityCheck(t Target, conf *tree.Conf, m tree.ModuleSpec, built string) (bool, error) {
	if conf.ObsoleteBy != "" && !e.Force && obsoleted(t.Kernel, conf.ObsoleteBy) {
		e.warn("")
		e.warn("Module has been obsoleted due to being included\nin kernel %s.  We will avoid installing\nfor future kernels above %s.\nYou may override by specifying --force.", conf.ObsoleteBy, conf.ObsoleteBy)
		return false, nil
	}
	found := e.findInstalled(t.Kernel, m.DestName)
	ours, err := os.ReadFile(built)
	if err != nil {
		return false, err
	}
	var others []string
	for _, f := range found {
		// Our own file from an interrupted install is not a rival.
		if b, err := os.ReadFile(f); err == nil && bytes.Equal(b, ours) {
			continue
		}
		others = append(others, f)
	}
	if len(others) == 0 || e.ForceVersionOverride || e.Force {
		return true, nil
	}
	if len(others) > 1 {
		e.warn("Warning: Warning! Cannot do version sanity checking because multiple %s\nmodules were found in kernel %s.", filepath.Base(built), t.Kernel)
		return true, nil
	}
	theirs, err1 := tree.ReadModInfo(others[0])
	mine, err2 := tree.ReadModInfo(built)
	if err1 != nil || err2 != nil {
		return true, nil
	}
	tv, mv := theirs.Get("version"), mine.Get("version")
	switch {
	case tv == mv && srcVersion(theirs) == srcVersion(mine):
		e.warn("Module version %s for %s\nexactly matches what is already found in kernel %s.\nDKMS will not replace this module.\nYou may override by specifying --force.", mv, filepath.Base(built), t.Kernel)
		return false, nil
	case tv != "" && mv != "" && tv != mv && tree.CompareVersions(tv, mv) > 0:
		e.warn("Error! Module version %s for %s\nis not newer than what is already found in kernel %s (%s).\nYou may override by specifying --force.",
			mv, filepath.Base(built), t.Kernel, tv)
		return false, nil
	}
	return true, nil
}

func srcVersion(m tree.ModInfo) string { return m.Get("srcversion") }

// obsoleted is dkms's OBSOLETE_BY test: the kernel is at or above the
// version that includes the module.
func obsoleted(kernel, by string) bool {
	obs, my := strings.Split(by, "-"), strings.Split(kernel, "-")
	if tree.CompareVersions(my[0], obs[0]) > 0 {
		return true
	}
	if tree.CompareVersions(my[0], obs[0]) < 0 {
		return false
	}
	if len(obs) < 2 || len(my) < 2 {
		return true
	}
	return tree.CompareVersions(my[1], obs[1]) >= 0
}

// findInstalled lists files named <name>.ko[.ext] anywhere under the
// kernel's module dir (not following the build/source links).
func (e *Env) findInstalled(kernel, name string) []string {
	root := e.Layout.KernelDir(kernel)
	var found []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && p != root && (d.Name() == "build" || d.Name() == "source") && filepath.Dir(p) == root {
			return filepath.SkipDir
		}
		if (d.Type().IsRegular() || d.Type()&fs.ModeSymlink != 0) && isModuleFile(d.Name(), name) {
			found = append(found, p)
		}
		return nil
	})
	return found
}

// archiveOriginal moves a module the kernel already has under the same name
// into <dkms_tree>/<m>/original_module/<k>/<a>, with a .origin file that
// records where it came from, so uninstall can put it back. It says so as
// dkms 3.0.10 says it where it archives (not on Debian, where it left the
// original in place).
func (e *Env) archiveOriginal(t Target, m tree.ModuleSpec, built string) (found bool, err error) {
	kdir := e.Layout.KernelDir(t.Kernel)
	var candidates []string
	for _, dir := range []string{"extra", "updates", strings.TrimPrefix(m.DestLocation, "/")} {
		if f := tree.FindModuleFile(filepath.Join(kdir, dir), m.DestName); f != "" {
			candidates = append(candidates, f)
		}
	}
	if all := e.findInstalled(t.Kernel, m.DestName); len(all) == 1 {
		candidates = append(candidates, all[0])
	}
	ours, _ := os.ReadFile(built)
	for _, orig := range candidates {
		if b, err := os.ReadFile(orig); err == nil && bytes.Equal(b, ours) {
			continue
		}
		dir := e.Layout.OriginalDir(t.Module, t.Kernel, t.Arch)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, diskError(dir, err)
		}
		saved := filepath.Join(dir, filepath.Base(orig))
		e.info("   - Found %s", orig)
		e.info("   - Storing in %s/", dir)
		e.info("   - Archiving for uninstallation purposes")
		// The .origin file first: a crash between the two steps leaves a
		// record and the original still in place, never a lost module.
		if err := writeFileAtomic(saved+".origin", []byte(orig+"\n"), 0o644); err != nil {
			return false, err
		}
		if err := copyFileAtomic(orig, saved); err != nil {
			os.Remove(saved + ".origin")
			return false, err
		}
		if err := os.Remove(orig); err != nil {
			// The original stays where it is: drop the archive copy.
			os.Remove(saved)
			os.Remove(saved + ".origin")
			removeEmptyParents(dir, e.Layout.ModuleDir(t.Module))
			return false, diskError(orig, err)
		}
		return true, nil
	}
	return false, nil
}

// restoreOriginals moves archived originals back where they came from:
// those of the module named name, or every one when name is "". It fails,
// keeping the archive, when one cannot be put back: an archived original
// is never deleted before it is in place again. restored says whether one
// was put back.
func (e *Env) restoreOriginals(t Target, name string) (restored bool, err error) {
	dir := e.Layout.OriginalDir(t.Module, t.Kernel, t.Arch)
	origins, _ := filepath.Glob(filepath.Join(dir, "*.origin"))
	kdir := e.Layout.KernelDir(t.Kernel) + "/"
	var failed error
	for _, o := range origins {
		saved := strings.TrimSuffix(o, ".origin")
		if name != "" && !isModuleFile(filepath.Base(saved), name) {
			continue
		}
		data, err := os.ReadFile(o)
		if err != nil {
			continue
		}
		dest := strings.TrimSpace(string(data))
		if !strings.HasPrefix(dest, kdir) || strings.Contains(dest, "/../") {
			e.warn("Warning: Bad original location '%s' in %s", dest, o)
			continue
		}
		if !exists(saved) {
			// A kill between writing the record and copying the original:
			// the original never left its place.
			os.Remove(o)
			continue
		}
		if name != "" {
			e.info("   - Archived original module found in the DKMS tree")
			e.info("   - Moving it to: %s/", filepath.Dir(dest))
		} else {
			e.info("Restoring archived original module %s", dest)
		}
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			failed = diskError(dest, err)
			continue
		}
		if err := copyFileAtomic(saved, dest); err != nil {
			failed = err
			continue
		}
		os.Remove(saved)
		os.Remove(o)
		restored = true
	}
	removeEmptyParents(dir, e.Layout.ModuleDir(t.Module))
	if failed != nil {
		return restored, &Error{Kind: KindInternal, Err: failed, Lines: []string{
			fmt.Sprintf("Could not put back the original module(s) saved in %s: %v", dir, failed),
			"They stay there; run the command again once the problem is fixed."}}
	}
	return restored, nil
}

// isModuleFile reports whether file is module name, compressed or not.
func isModuleFile(file, name string) bool {
	for _, ext := range []string{".ko", ".ko.gz", ".ko.xz", ".ko.zst"} {
		if file == name+ext {
			return true
		}
	}
	return false
}
