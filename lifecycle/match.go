package lifecycle

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
)

// Match installs on kernel the module versions installed on template (all
// modules, or only module when it is not ""), building what is missing with
// the same scheduler as autoinstall.
func Match(ctx context.Context, e *Env, template, kernel, arch, module string) (*Summary, error) {
	mvs, err := e.Layout.ModuleVersions(module, "")
	if err != nil {
		return nil, err
	}
	e.info("")
	e.info("Matching modules in kernel: %s (%s)", kernel, arch)
	e.info("to the configuration of kernel: %s (%s)", template, arch)
	var jobs []*job
	for _, mv := range mvs {
		if mv.Broken || e.Layout.InstalledVersion(mv.Name, template, arch) != mv.Version {
			continue
		}
		t := Target{Module: mv.Name, Version: mv.Version, Kernel: kernel, Arch: arch}
		conf, err := e.readConf(ctx, e.confFile(mv.Name, mv.Version), t, false)
		if err != nil {
			return nil, err
		}
		j := &job{Target: t, deps: conf.BuildDepends}
		if e.Layout.InstalledVersion(mv.Name, kernel, arch) == mv.Version {
			j.settled = &JobResult{Target: t, Outcome: OutcomeAlreadyInstalled}
		}
		jobs = append(jobs, j)
	}
	if len(jobs) == 0 {
		e.info("")
		e.info("There is nothing to be done for this match.")
		return &Summary{}, nil
	}
	// A dependency that is not part of the match must already be installed
	// on the kernel.
	inMatch := map[string]bool{}
	for _, j := range jobs {
		inMatch[j.Module] = true
	}
	for _, j := range jobs {
		var deps []string
		for _, d := range j.deps {
			if inMatch[d] || e.Layout.InstalledVersion(d, kernel, arch) != "" {
				deps = append(deps, d)
			} else if j.settled == nil {
				j.settled = &JobResult{Target: j.Target, Outcome: OutcomeNotBuilt, Reason: "missing dependencies: " + d}
			}
		}
		j.deps = deps
	}
	markCycles(jobs)
	return e.runPlanned(ctx, jobs)
}

// KernelPrerm removes every module built for a kernel that is going away:
// each is uninstalled and unbuilt, depmod runs once, and the kernel's
// module dir loses the directories that are left empty. With
// onlyAutoinstall (kernel_preinst: a kernel reinstalled at the same
// version) only the modules autoinstall will rebuild are removed.
func KernelPrerm(ctx context.Context, e *Env, kernel, arch string, onlyAutoinstall bool) error {
	mvs, err := e.Layout.ModuleVersions("", "")
	if err != nil {
		return err
	}
	je := *e
	je.DeferDepmod = true
	var failed []string
	removed := false
	for _, mv := range mvs {
		if mv.Broken || len(e.Layout.Builds(mv.Name, mv.Version, kernel, arch)) == 0 {
			continue
		}
		t := Target{Module: mv.Name, Version: mv.Version, Kernel: kernel, Arch: arch}
		if onlyAutoinstall {
			conf, err := e.readConf(ctx, e.confFile(mv.Name, mv.Version), t, false)
			if err != nil || !conf.AutoInstall {
				continue
			}
		}
		e.warn("dkms: removing module %s/%s for kernel %s (%s)", mv.Name, mv.Version, kernel, arch)
		if err := Unbuild(ctx, &je, t); err != nil {
			failed = append(failed, fmt.Sprintf("%s/%s(%v)", mv.Name, mv.Version, exitReason(err)))
			continue
		}
		removed = true
		e.info("")
	}
	kdir := e.Layout.KernelDir(kernel)
	if removed && isDir(kdir) {
		e.info("Running depmod...")
		if err := e.depmod(ctx, kernel); err != nil {
			e.warn("Warning: %v", err)
		}
	}
	e.commitKernel(kernel)
	removeEmptyDirs(kdir)
	if len(failed) > 0 {
		return fail(KindPrerm, fmt.Sprintf("dkms kernel_prerm for kernel %s (%s) failed for module(s) %s.", kernel, arch, joinSpace(failed)))
	}
	return nil
}

// removeEmptyDirs deletes the empty directories under dir (deepest first),
// never dir itself or what a symlink points to.
func removeEmptyDirs(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != dir {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		os.Remove(d) // fails, as it should, when not empty
	}
}

func joinSpace(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}
