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

func (e *Env) intentDir() string { return filepath.Join(e.Layout.DKMSTree, ".dkmsd", "intent") }

func (e *Env) intentPath(t Target) string {
	return filepath.Join(e.intentDir(), fmt.Sprintf("%s--%s--%s--%s.json", t.Module, t.Version, t.Kernel, t.Arch))
}

// begin records an intent before the first change.
func (e *Env) begin(op string, t Target, files []string) error {
	if err := os.MkdirAll(e.intentDir(), 0o755); err != nil {
		return diskError(e.intentDir(), err)
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
	matches, _ := filepath.Glob(filepath.Join(e.intentDir(), "*--"+kernel+"--*.json"))
	for _, m := range matches {
		var in intent
		if b, err := os.ReadFile(m); err == nil && json.Unmarshal(b, &in) == nil && in.Kernel == kernel {
			os.Remove(m)
		}
	}
}

// Recover finishes or undoes the installs and uninstalls that a killed
// process left half-done. LockTree runs it; it must run under the lock.
func Recover(ctx context.Context, e *Env) {
	entries, err := os.ReadDir(e.intentDir())
	if err != nil {
		return
	}
	for _, en := range entries {
		if !strings.HasSuffix(en.Name(), ".json") {
			continue
		}
		p := filepath.Join(e.intentDir(), en.Name())
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
			e.restoreOriginals(t)
			if err := e.depmod(ctx, t.Kernel); err != nil {
				e.warn("Warning: %v", err)
			}
		default: // uninstall: finish it
			e.warn("Completing the interrupted uninstall of %s.", t)
			for _, f := range in.Files {
				os.Remove(f)
			}
			e.restoreOriginals(t)
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
