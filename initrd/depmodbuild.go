package initrd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// imageIndexes returns the files depmod writes for the image's module
// tree once plan is applied: the image's modules (from the index's
// depmod.meta), less those removed, with the new ones (add: their bytes
// by path relative to the modules directory). dkmsd computes them
// itself; where it cannot be sure of depmod's answer (see Depmod) it runs
// the real depmod over the index's stubs, as before, and says why in
// rep.DepmodRun.
func imageIndexes(ctx context.Context, base *Base, plan Plan, add map[string][]byte, rep *Report) (map[string][]byte, error) {
	out, err := computeIndexes(base, plan, add)
	if err == nil {
		return out, nil
	}
	if !errors.Is(err, errDepmodUnsure) {
		return nil, err
	}
	rep.DepmodRun = strings.TrimPrefix(err.Error(), errDepmodUnsure.Error()+": ")
	return runDepmod(ctx, base, plan, add)
}

// computeIndexes is Depmod over the image's modules and the plan.
func computeIndexes(base *Base, plan Plan, add map[string][]byte) (map[string][]byte, error) {
	idx := base.Index
	meta := idx.depmod
	if meta == nil {
		return nil, unsure("the index has no depmod.meta")
	}
	cfg, err := LoadDepmodConfig(DepmodConfigDirs, plan.Kernel)
	if err != nil {
		return nil, err
	}
	removed := map[string]bool{}
	for _, r := range plan.Remove {
		removed[r] = true
	}
	in := &DepmodInput{Files: map[string][]byte{}, Config: cfg}
	for rel := range idx.Files {
		_, isMod := moduleFile(rel)
		_, replaced := add[rel]
		switch {
		case removed[rel] || replaced || !cfg.Searched(rel):
		case isMod && meta.modules[rel] != nil:
			in.Modules = append(in.Modules, meta.modules[rel])
		case isMod && meta.unsure[rel] != "":
			return nil, unsure("%s", meta.unsure[rel])
		case isMod:
			return nil, unsure("depmod.meta lacks %s", rel)
		case depmodInputs[path.Base(rel)] && !strings.Contains(rel, "/"):
			b, err := os.ReadFile(filepath.Join(base.Dir, "stubs", rel))
			if err != nil {
				return nil, fmt.Errorf("initrd cache: %w", err)
			}
			in.Files[rel] = b
		}
	}
	for rel, data := range add {
		if !cfg.Searched(rel) {
			continue
		}
		m, err := ReadDepmodModule(rel, data)
		if err != nil {
			return nil, err
		}
		in.Modules = append(in.Modules, m)
	}
	return Depmod(in)
}

// runDepmod runs the real depmod in a staging tree of symlinks to the
// index's stubs and the new modules, and returns what it wrote.
func runDepmod(ctx context.Context, base *Base, plan Plan, add map[string][]byte) (map[string][]byte, error) {
	stage, err := os.MkdirTemp(plan.TmpDir, "dkmsd-initrd-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(stage)
	stageMod := filepath.Join(stage, "lib", "modules", plan.Kernel)
	if err := linkStubs(base, stageMod, plan.Remove); err != nil {
		return nil, err
	}
	for rel, data := range add {
		dst := filepath.Join(stageMod, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, err
		}
		os.Remove(dst) // a stub of the image's copy
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			return nil, err
		}
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-a", "-b", stage, plan.Kernel).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("depmod for the initrd: %v: %s", err, strings.TrimSpace(string(out)))
	}
	out := map[string][]byte{}
	for _, n := range DepmodFiles {
		b, err := os.ReadFile(filepath.Join(stageMod, n))
		if err != nil {
			return nil, fmt.Errorf("depmod for the initrd: %w", err)
		}
		out[n] = b
	}
	return out, nil
}
