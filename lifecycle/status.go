package lifecycle

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/dkmsd/dkmsd/tree"
)

// StatusQuery filters `dkms status`: glob patterns for module and version,
// and kernel/arch pairs (each pair is one pass over the tree, as in dkms).
type StatusQuery struct {
	Module, Version string
	Kernels, Arches []string
}

// State is a module version's state in a status line.
type State string

const (
	StateAdded     State = "added"
	StateBuilt     State = "built"
	StateInstalled State = "installed"
	StateBroken    State = "broken"
)

// StatusLine is one line of `dkms status`.
type StatusLine struct {
	Module, Version, Kernel, Arch string
	State                         State
	// Notes are dkms 3.0.10's annotations, in order.
	Notes []string
	// Problem is a message for stderr (a broken module, a bad dkms.conf).
	Problem []string
	// Notices are dkmsd's own remarks for stderr: a hook's build of this
	// module that has been failing (FailureRecord.Notice).
	Notices []string
}

// Annotations dkms 3.0.10 appends to built/installed lines.
const (
	NoteOriginal = " (original_module exists)"
	NoteMissing  = " (WARNING! Missing some built modules!)"
	NoteDiff     = " (WARNING! Diff between built and installed module!)"
)

// String is the line exactly as dkms 3.0.10 prints it.
func (l StatusLine) String() string {
	switch l.State {
	case StateAdded, StateBroken:
		return fmt.Sprintf("%s/%s: %s", l.Module, l.Version, l.State)
	}
	return fmt.Sprintf("%s/%s, %s, %s: %s%s", l.Module, l.Version, l.Kernel, l.Arch, l.State, strings.Join(l.Notes, ""))
}

// Status computes `dkms status` lines. It reads the tree without the lock
// and checks module versions in parallel: a status is a snapshot.
func Status(ctx context.Context, e *Env, q StatusQuery) ([]StatusLine, error) {
	mvs, err := e.Layout.ModuleVersions(q.Module, q.Version)
	if err != nil {
		return nil, fmt.Errorf("read dkms tree %s: %w", e.Layout.DKMSTree, err)
	}
	type pass struct{ kernel, arch string }
	var passes []pass
	if len(q.Kernels) == 0 {
		a := ""
		if len(q.Arches) > 0 {
			a = q.Arches[0]
		}
		passes = append(passes, pass{"", a})
	}
	for i, k := range q.Kernels {
		a := ""
		if i < len(q.Arches) {
			a = q.Arches[i]
		}
		passes = append(passes, pass{k, a})
	}
	var out []StatusLine
	for _, p := range passes {
		results := make([][]StatusLine, len(mvs))
		sem := make(chan struct{}, runtime.NumCPU()*2)
		var wg sync.WaitGroup
		for i, mv := range mvs {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				results[i] = e.moduleStatus(ctx, mv, p.kernel, p.arch)
			}()
		}
		wg.Wait()
		for _, r := range results {
			out = append(out, r...)
		}
	}
	return out, nil
}

func (e *Env) moduleStatus(ctx context.Context, mv tree.ModuleVersion, kernelGlob, archGlob string) []StatusLine {
	if mv.Broken {
		return []StatusLine{{Module: mv.Name, Version: mv.Version, State: StateBroken, Problem: []string{
			fmt.Sprintf("%s/%s: Missing the module source directory or the symbolic link pointing to it.", mv.Name, mv.Version),
			"Manual intervention is required!"}}}
	}
	var lines []StatusLine
	confFile := e.Layout.ConfFile(mv.Name, mv.Version)
	for _, b := range e.Layout.Builds(mv.Name, mv.Version, kernelGlob, archGlob) {
		t := Target{Module: mv.Name, Version: mv.Version, Kernel: b.Kernel, Arch: b.Arch}
		conf, err := e.statusConf(ctx, confFile, t)
		if err != nil {
			// dkms 3.0.10 stops listing at a bad dkms.conf; dkmsd reports it
			// and goes on with the other modules.
			problem := []string{err.Error()}
			if le, ok := confFailure(confFile, err).(*Error); ok {
				problem = le.Lines
			}
			return []StatusLine{{Module: mv.Name, Version: mv.Version, State: StateAdded, Problem: problem}}
		}
		line, ok := e.buildStatus(t, b, conf)
		if ok {
			lines = append(lines, line)
		}
	}
	if len(lines) == 0 {
		lines = append(lines, StatusLine{Module: mv.Name, Version: mv.Version, State: StateAdded})
	}
	lines[len(lines)-1].Notices = e.failureStatusNotices(mv, kernelGlob, archGlob)
	return lines
}

// statusConf reads a dkms.conf quietly: status shows states, not the
// file's chatter.
func (e *Env) statusConf(ctx context.Context, file string, t Target) (*tree.Conf, error) {
	return tree.ReadConf(ctx, file, tree.ConfContext{
		Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch,
		Layout:          e.Layout,
		KernelSourceDir: e.Layout.KernelBuildDir(t.Kernel),
		KernelConfig:    e.kernelConfig(t.Kernel),
		ParallelJobs:    e.Jobs,
		Distro:          e.Distro,
		Env:             e.Environ,
		Timeout:         e.ConfTimeout,
		Cache:           e.confs,
	})
}

// buildStatus is the line for one built kernel/arch; ok is false when a
// module file is missing, which dkms 3.0.10 does not count as built.
func (e *Env) buildStatus(t Target, b tree.Build, conf *tree.Conf) (StatusLine, bool) {
	line := StatusLine{Module: t.Module, Version: t.Version, Kernel: t.Kernel, Arch: t.Arch, State: StateBuilt}
	if b.Installed {
		line.State = StateInstalled
	}
	modDir := filepath.Join(e.Layout.BuiltDir(t.Module, t.Version, t.Kernel, t.Arch), "module")
	for _, m := range conf.Buildable() {
		if tree.FindModuleFile(modDir, m.DestName) == "" {
			return line, false
		}
	}
	if isDir(e.Layout.OriginalDir(t.Module, t.Kernel, t.Arch)) {
		line.Notes = append(line.Notes, NoteOriginal)
	}
	if !b.Installed {
		return line, true
	}
	for _, m := range conf.Buildable() {
		built := tree.FindModuleFile(modDir, m.DestName)
		installed := e.installedCopy(t, m, modDir)
		if installed == "" || !sameFile(built, installed) {
			line.Notes = append(line.Notes, NoteDiff)
		}
	}
	return line, true
}

// sameFile compares two files' bytes (diff -q).
func sameFile(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil || fa.Size() != fb.Size() {
		return false
	}
	da, err1 := os.ReadFile(a)
	db, err2 := os.ReadFile(b)
	return err1 == nil && err2 == nil && bytes.Equal(da, db)
}
