package lifecycle

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// intent records an install or uninstall in progress, so that a process
// killed half-way is finished or undone by the next one that takes the
// tree lock: an install not yet committed (no kernel link) is rolled back;
// one committed (link in place) is rolled forward (depmod); an uninstall
// is always completed.
type intent struct {
	Op string `json:"op"` // "install" or "uninstall"
	Target
	// Files are the module files the operation places or deletes.
	Files []string `json:"files"`
}

func (e *Env) intentPath(t Target) string {
	return filepath.Join(e.Layout.IntentDir(), fmt.Sprintf("%s--%s--%s--%s.json", t.Module, t.Version, t.Kernel, t.Arch))
}

// begin records an intent before the first change.
func (e *Env) begin(op string, t Target, files []string) error {
	e.MarkInitrdPending(t.Kernel, t.Arch)
	if err := os.MkdirAll(e.Layout.IntentDir(), 0o755); err != nil {
		return diskError(e.Layout.IntentDir(), err)
	}
	b, err := json.Marshal(intent{Op: op, Target: t, Files: files})
	if err != nil {
		return err
	}
	return writeFileAtomic(e.intentPath(t), b, 0o644)
}

// commit drops the intent once the operation is complete.
func (e *Env) commit(t Target) {
	os.Remove(e.intentPath(t))
}

// commitKernel drops the intents a batch left for kernel once its depmod
// has run.
func (e *Env) commitKernel(kernel string) {
	matches, _ := filepath.Glob(filepath.Join(e.Layout.IntentDir(), "*--"+kernel+"--*.json"))
	for _, m := range matches {
		var in intent
		if b, err := os.ReadFile(m); err == nil && json.Unmarshal(b, &in) == nil && in.Kernel == kernel {
			os.Remove(m)
		}
	}
}

// Recover finishes or undoes the installs and uninstalls that a killed
// process left half-done, then regenerates the initrds it left stale —
// in that order, so each image is made from the modules as they end up.
// LockTree runs it; it must run under the lock.
func Recover(ctx context.Context, e *Env) {
	e.sweepTemps()
	e.resolveIntents(ctx)
	e.initrdPending(ctx)
}

// resolveIntents finishes or undoes each logged install and uninstall. Each
// one's first change marked its kernel's initrd pending, so the initrd
// step that follows sees the result.
func (e *Env) resolveIntents(ctx context.Context) {
	entries, err := os.ReadDir(e.Layout.IntentDir())
	if err != nil {
		return
	}
	for _, en := range entries {
		if !strings.HasSuffix(en.Name(), ".json") {
			continue
		}
		p := filepath.Join(e.Layout.IntentDir(), en.Name())
		b, err := os.ReadFile(p)
		var in intent
		if err != nil || json.Unmarshal(b, &in) != nil || checkNames(in.Module, in.Version) != nil {
			os.Remove(p)
			continue
		}
		t := in.Target
		linked := e.Layout.InstalledVersion(t.Module, t.Kernel, t.Arch) == t.Version
		switch {
		case in.Op == "install" && linked:
			e.warn("Completing the interrupted install of %s.", t)
			if err := e.depmod(ctx, t.Kernel); err != nil {
				e.warn("Warning: %v", err)
			}
		case in.Op == "install":
			e.warn("Undoing the interrupted install of %s.", t)
			built := filepath.Join(e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch), "module")
			for _, f := range in.Files {
				if src := filepath.Join(built, filepath.Base(f)); sameFile(src, f) {
					os.Remove(f)
				}
			}
			if _, err := e.restoreOriginals(t, ""); err != nil {
				e.warn("%v", err)
				continue // keep the intent: try again next time
			}
			if err := e.depmod(ctx, t.Kernel); err != nil {
				e.warn("Warning: %v", err)
			}
		default: // uninstall: finish it
			e.warn("Completing the interrupted uninstall of %s.", t)
			left := false
			for _, f := range in.Files {
				if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
					left = true
				}
			}
			if left {
				e.warn("Warning: could not delete the files of %s; it stays installed.", t)
				os.Remove(p)
				continue
			}
			if _, err := e.restoreOriginals(t, ""); err != nil {
				e.warn("%v", err)
				continue
			}
			if linked {
				os.Remove(e.Layout.KernelLink(t.Module, t.Kernel, t.Arch))
			}
			if err := e.depmod(ctx, t.Kernel); err != nil {
				e.warn("Warning: %v", err)
			}
		}
		os.Remove(p)
	}
}

// sweepTemps deletes the temporary files and directories a killed process
// left beside its targets (never a finished file: every name here is one
// dkmsd only uses before a rename).
func (e *Env) sweepTemps() {
	t := e.Layout.DKMSTree
	// Names at <tree>/<module>/<version>/<kernel>/<x> and
	// <tree>/<module>/<x>: each level is listed once and matched against
	// every name a killed process may leave there (this runs before every
	// command that takes the lock).
	level4, _ := filepath.Glob(filepath.Join(t, "*", "*", "*", "*"))
	level2, _ := filepath.Glob(filepath.Join(t, "*", ".dkmsd-*"))
	var swept []string
	for _, m := range inKernelDirs(level4) {
		for _, name := range []string{
			".tmp_*",           // build stages (and ldtarball's .tmp_load_*)
			".dkmsd-unbuild-*", // unbuild renames
			"*.dkmsd-old-*",    // forced rebuilds
		} {
			if ok, _ := filepath.Match(name, filepath.Base(m)); ok {
				swept = append(swept, m)
				break
			}
		}
	}
	for _, m := range level2 {
		if b := filepath.Base(m); strings.HasPrefix(b, ".dkmsd-remove-") || strings.HasPrefix(b, ".dkmsd-link-") {
			swept = append(swept, m) // remove renames, kernel links
		}
	}
	patterns := []string{
		filepath.Join(t, "*", "original_module", "*", "*", ".dkmsd-*"),
		filepath.Join(e.Layout.StateDir(), "*", ".dkmsd-*"),
		filepath.Join(e.Layout.StateDir(), ".dkmsd-*"),
		filepath.Join(e.Layout.InstallTree, "*", "updates", "dkms", ".dkmsd-*"),
		filepath.Join(e.Layout.BootDir, ".initrd.img-*.dkmsd-*"),
		filepath.Join(e.Layout.BootDir, ".initramfs-*.dkmsd-*"),
	}
	if entries, err := os.ReadDir(e.Layout.IntentDir()); err == nil {
		for _, en := range entries {
			var in intent
			if b, err := os.ReadFile(filepath.Join(e.Layout.IntentDir(), en.Name())); err == nil && json.Unmarshal(b, &in) == nil {
				for _, f := range in.Files {
					patterns = append(patterns, filepath.Join(filepath.Dir(f), ".dkmsd-*"))
				}
			}
		}
	}
	// Putting an archived original back (a finished uninstall, an undone
	// install) writes its temporary file beside the original's place,
	// which its .origin record names.
	origins, _ := filepath.Glob(filepath.Join(t, "*", "original_module", "*", "*", "*.origin"))
	for _, o := range origins {
		b, err := os.ReadFile(o)
		dest := strings.TrimSpace(string(b))
		if err != nil || !strings.HasPrefix(dest, e.Layout.InstallTree+"/") || strings.Contains(dest, "/../") {
			continue
		}
		patterns = append(patterns, filepath.Join(filepath.Dir(dest), ".dkmsd-"+filepath.Base(dest)+"-*"))
	}
	for _, p := range patterns {
		matches, _ := filepath.Glob(p)
		swept = append(swept, matches...)
	}
	for _, m := range swept {
		os.RemoveAll(m)
	}
	// A version dir whose last kernel dir held only a swept stage.
	kdirs, _ := filepath.Glob(filepath.Join(t, "*", "*", "[0-9]*"))
	for _, k := range kdirs {
		if entries, err := os.ReadDir(k); err == nil && len(entries) == 0 {
			os.Remove(k)
		}
	}
}

// inKernelDirs keeps the paths <version dir>/<dir>/<name> whose <dir> is
// a kernel's, where dkmsd makes its temporary names: never those under
// the source link, which leads into /usr/src and holds the package's own
// files (a source may ship a .tmp_versions of its own).
func inKernelDirs(paths []string) []string {
	var out []string
	for _, p := range paths {
		if d := filepath.Base(filepath.Dir(p)); d != "source" && d != "build" {
			out = append(out, p)
		}
	}
	return out
}

// MarkInitrdPending records that kernel's initrd needs regenerating; the
// initrd step clears it, and a process killed before that step leaves it
// for the next one.
func (e *Env) MarkInitrdPending(kernel, arch string) {
	if e.NoInitrd || e.InitrdPath(kernel) == "" {
		return
	}
	p := e.Layout.InitrdPendingFile(kernel)
	if os.MkdirAll(filepath.Dir(p), 0o755) == nil {
		_ = writeFileAtomic(p, []byte(arch+"\n"), 0o644)
	}
}

// InitrdHandled says the kernel's initrd is taken care of by someone else
// (the distribution's generator runs next): nothing is pending for it.
func (e *Env) InitrdHandled(kernel string) { os.Remove(e.Layout.InitrdPendingFile(kernel)) }

// initrdPending regenerates the initrds a killed process left stale.
func (e *Env) initrdPending(ctx context.Context) {
	matches, _ := filepath.Glob(e.Layout.InitrdPendingFile("*"))
	for _, m := range matches {
		kernel := strings.TrimSuffix(filepath.Base(m), ".pending")
		b, _ := os.ReadFile(m)
		arch := strings.TrimSpace(string(b))
		if arch == "" {
			continue
		}
		e.warn("Bringing the initrd of %s up to date after an interrupted command.", kernel)
		if _, err := RegenerateInitrd(ctx, e, kernel, arch, InitrdOptions{}); err != nil {
			e.warn("%v", err)
		}
	}
}
