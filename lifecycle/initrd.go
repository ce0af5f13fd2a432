package lifecycle

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree"
)

// InitrdPath is the kernel's initrd in the boot dir (Debian's
// initrd.img-<k>, or Fedora's initramfs-<k>.img), or "".
func (e *Env) InitrdPath(kernel string) string {
	for _, name := range []string{"initrd.img-" + kernel, "initramfs-" + kernel + ".img"} {
		p := filepath.Join(e.Layout.BootDir, name)
		if exists(p) {
			return p
		}
	}
	return ""
}

// InitrdOptions choose how an initrd is regenerated.
type InitrdOptions struct {
	// Strategy overrides framework.conf's initrd_strategy.
	Strategy initrd.Strategy
	// Required makes a missing initrd an error (dkms initrd); otherwise a
	// kernel without one is skipped.
	Required bool
}

// RegenerateInitrd puts the DKMS modules that belong in the kernel's
// initrd into it: modules whose dkms.conf says REMAKE_INITRD="yes",
// modules replacing one the initrd already has, and modules named in the
// initrd tool's configuration (those also load early), each with the
// modules it depends on. It returns nil, nil when nothing had to change.
func RegenerateInitrd(ctx context.Context, e *Env, kernel, arch string, opts InitrdOptions) (rep *initrd.Report, err error) {
	defer func() {
		if err == nil {
			os.Remove(e.Layout.InitrdPendingFile(kernel))
		}
	}()
	switch tool := e.Framework.InitrdTool; tool {
	case "none":
		return nil, nil
	case "update-initramfs", "dracut":
		return nil, e.runInitrdTool(ctx, tool, kernel)
	case "", "dkmsd":
	default:
		return nil, fail(KindUsage, fmt.Sprintf("Unknown initrd_tool %q in framework.conf: use dkmsd, update-initramfs, dracut or none.", tool))
	}
	imgPath := e.InitrdPath(kernel)
	if imgPath == "" {
		if !opts.Required {
			return nil, nil
		}
		return nil, fail(KindNoInitrd, fmt.Sprintf("Kernel %s has no initrd in %s (initrd.img-%s or initramfs-%s.img).", kernel, e.Layout.BootDir, kernel, kernel))
	}
	m, err := initrd.OpenMapped(imgPath)
	if err != nil {
		return nil, &Error{Kind: KindInitrd, Lines: []string{fmt.Sprintf("read initrd: %v", err), imgPath + " is unchanged."}, Err: err}
	}
	defer m.Close()
	err = initrd.Guard(func() error {
		var err error
		rep, err = e.regenerateMapped(ctx, kernel, arch, opts, imgPath, m)
		return err
	})
	if errors.Is(err, initrd.ErrChangedUnderfoot) {
		return nil, &Error{Kind: KindInitrd, Lines: []string{fmt.Sprintf("Could not regenerate %s: %v", imgPath, err), "Run the command again."}, Err: err}
	}
	return rep, err
}

// regenerateMapped is RegenerateInitrd on the image mapped in m: its
// base's bytes are read only when dkmsd did not write the file itself
// (State.Known), and written back file to file.
func (e *Env) regenerateMapped(ctx context.Context, kernel, arch string, opts InitrdOptions, imgPath string, m *initrd.Mapped) (*initrd.Report, error) {
	data := m.Data
	statePath := e.Layout.InitrdStateFile(kernel)
	baseLen, digest, known := e.initrdBase(kernel, m)
	// What dkmsd needs from the image was read once and kept, keyed by
	// the digest of its own bytes: no decompression on the append path.
	base, err := initrd.OpenBase(data[:baseLen], digest, kernel, e.Layout.InitrdCacheDir(kernel), e.Layout.TmpDir)
	if err != nil {
		err = fmt.Errorf("initrd %s: %w", imgPath, err)
		return nil, &Error{Kind: KindInitrd, Lines: []string{err.Error(), imgPath + " is unchanged."}, Err: err}
	}
	defer base.Close()
	if base.KeepErr != nil {
		e.warn("Warning: could not keep the index of %s in %s: %v", imgPath, e.Layout.InitrdCacheDir(kernel), base.KeepErr)
	}
	if baseLen == len(data) {
		baseLen = 0 // no segment of dkmsd's in it
	}
	plan, err := e.initrdPlan(ctx, base.Index, kernel, arch)
	if err != nil {
		return nil, err
	}
	plan.BaseLen = baseLen
	plan.TmpDir = e.Layout.TmpDir
	if len(plan.Add) == 0 && len(plan.Remove) == 0 && len(plan.Load) == 0 {
		if baseLen == 0 {
			if !known { // remembered, so the next run need not read it
				e.saveInitrdState(statePath, &initrd.State{BaseLen: len(data), BaseSHA256: base.Index.Digest, Len: len(data), File: initrd.IDOf(m.Info)})
			}
			return nil, nil // nothing of ours in it, nothing to add
		}
		// Our segment is all that must go: cut the image back to its base.
		id, err := initrd.WriteImage(imgPath, m, initrd.Output{data[:baseLen]})
		if err != nil {
			return nil, &Error{Kind: KindInitrd, Lines: []string{err.Error()}, Err: err}
		}
		e.saveInitrdState(statePath, &initrd.State{BaseLen: baseLen, BaseSHA256: base.Index.Digest, Len: baseLen, File: id})
		rep := &initrd.Report{Strategy: initrd.Append, Reason: "no DKMS module belongs in it any more", Size: baseLen}
		e.initrdEvent(kernel, arch, imgPath, rep)
		return rep, nil
	}
	strategy := opts.Strategy
	if strategy == "" {
		strategy = initrd.Strategy(e.Framework.InitrdStrategy)
	}
	if strategy == "" {
		strategy = initrd.Append
	}
	if strategy != initrd.Append && strategy != initrd.Rewrite {
		return nil, fail(KindUsage, fmt.Sprintf("Unknown initrd strategy %q: use append or rewrite.", strategy))
	}
	out, rep, err := initrd.BuildBase(ctx, base, plan, strategy)
	if err != nil {
		return nil, &Error{Kind: KindInitrd, Lines: []string{fmt.Sprintf("Could not regenerate %s: %v", imgPath, err), imgPath + " is unchanged."}, Err: err}
	}
	if out.Len() == len(data) && sameAs(out, data) {
		return nil, nil // already holds exactly this
	}
	id, err := initrd.WriteImage(imgPath, m, out)
	if err != nil {
		return nil, &Error{Kind: KindInitrd, Lines: []string{err.Error()}, Err: err}
	}
	if rep.Strategy == initrd.Append {
		e.saveInitrdState(statePath, &initrd.State{BaseLen: len(base.Data), BaseSHA256: base.Index.Digest, Len: out.Len(), File: id})
	} else if err := os.Remove(statePath); err != nil && !os.IsNotExist(err) {
		e.warn("Warning: could not remove the initrd state %s: %v", statePath, err)
	}
	e.initrdEvent(kernel, arch, imgPath, rep)
	return rep, nil
}

// initrdBase says where the generator's bytes end in the mapped image m
// and their digest ("" when not computed yet): from the state file alone
// (known) when m is the file dkmsd wrote, otherwise by hashing the image.
func (e *Env) initrdBase(kernel string, m *initrd.Mapped) (baseLen int, digest string, known bool) {
	state := initrd.LoadState(e.Layout.InitrdStateFile(kernel))
	if n, d, ok := state.Known(m.Info); ok {
		return n, d, true
	}
	n, d := state.BaseOf(m.Data)
	return n, d, false
}

// saveInitrdState records what dkmsd knows of the image; without it the
// next run reads and hashes the image again, nothing worse.
func (e *Env) saveInitrdState(path string, s *initrd.State) {
	if err := s.Save(path); err != nil {
		e.warn("Warning: could not record the initrd state in %s: %v", path, err)
	}
}

// sameAs says whether out's bytes are data's, comparing a part that is
// data's own memory (the base an append keeps) by position only.
func sameAs(out initrd.Output, data []byte) bool {
	off := 0
	for _, p := range out {
		if len(p) > 0 && &p[0] == &data[off] {
			off += len(p)
			continue
		}
		if !bytes.Equal(p, data[off:off+len(p)]) {
			return false
		}
		off += len(p)
	}
	return true
}

func (e *Env) initrdEvent(kernel, arch, imgPath string, rep *initrd.Report) {
	how := string(rep.Strategy)
	if rep.Compression != "" { // none when the image was cut back to its original bytes
		how += ", " + string(rep.Compression)
	}
	text := fmt.Sprintf("Regenerated %s (%s, %d modules added, %d bytes)", imgPath, how, len(rep.Added), rep.Size)
	if rep.Reason != "" {
		text += ": " + rep.Reason
	}
	if rep.DepmodRun != "" {
		text += "; the real depmod wrote its module indexes (" + rep.DepmodRun + ")"
	}
	e.Sink.Emit(Event{Type: InitrdRegenerated, Kernel: kernel, Arch: arch, Text: text, Log: imgPath})
	e.info("%s", text)
}

// initrdPlan decides which module files go into the initrd and which
// must leave it.
func (e *Env) initrdPlan(ctx context.Context, img *initrd.Index, kernel, arch string) (initrd.Plan, error) {
	plan := initrd.Plan{Kernel: kernel}
	if img.ModulesDir == "" {
		return plan, &Error{Kind: KindInitrd, Lines: []string{fmt.Sprintf("The initrd of %s has no lib/modules/%s: it was not made for this kernel.", kernel, kernel)}}
	}
	inImage := map[string]string{} // module name → path in the image
	for _, rel := range img.Modules() {
		if name, ok := moduleName(rel); ok {
			inImage[name] = rel
		}
	}
	wanted, early, omitted := e.initrdToolModules(ctx)
	kdir := e.Layout.KernelDir(kernel)
	add := map[string]string{} // rel → src
	var load []string
	specs, err := e.installedSpecs(ctx, kernel, arch)
	if err != nil {
		return plan, err
	}
	for _, is := range specs {
		n := normalizeModName(is.spec.DestName)
		if _, replaces := inImage[n]; (!is.remakeInitrd && !replaces && !wanted[n]) || omitted(n) {
			continue
		}
		builtDir := filepath.Join(e.Layout.BuiltDir(is.t.Module, is.t.Version, kernel, arch), "module")
		src := e.installedCopy(is.t, is.spec, builtDir)
		if src == "" {
			continue
		}
		rel, _ := filepath.Rel(kdir, src)
		add[filepath.ToSlash(rel)] = src
		if early[n] {
			load = append(load, is.spec.DestName)
		}
	}
	// The modules they depend on, from the install tree's modules.dep,
	// when the image does not have them.
	deps := readModulesDep(filepath.Join(kdir, "modules.dep"))
	for changed := true; changed; {
		changed = false
		for rel := range add {
			for _, d := range deps[rel] {
				name, _ := moduleName(d)
				if _, ok := inImage[name]; ok {
					continue
				}
				if _, ok := add[d]; !ok && exists(filepath.Join(kdir, d)) {
					add[d], changed = filepath.Join(kdir, d), true
				}
			}
		}
	}
	for rel, src := range add {
		plan.Add = append(plan.Add, initrd.File{Src: src, Rel: rel})
	}
	sort.Slice(plan.Add, func(i, j int) bool { return plan.Add[i].Rel < plan.Add[j].Rel })
	// DKMS modules the image carries that are no longer installed.
	for _, rel := range img.Modules() {
		if !strings.HasPrefix(rel, "updates/dkms/") {
			continue
		}
		if !exists(filepath.Join(kdir, rel)) {
			if _, adding := add[rel]; !adding {
				plan.Remove = append(plan.Remove, rel)
			}
		}
	}
	plan.Load = load
	return plan, nil
}

// InitrdModule is a DKMS module that belongs in a kernel's initrd.
type InitrdModule struct {
	Name string
	// Early: the initrd tool must load it at boot, not only carry it.
	Early bool
}

// InitrdModules lists the installed DKMS modules of a kernel that its
// initrd must carry whatever the image holds: REMAKE_INITRD="yes", or
// named in the initrd tool's configuration. The initramfs-tools hook
// (dist/initramfs-tools/hooks/dkmsd) asks for them, so update-initramfs
// keeps them when it regenerates the image.
func InitrdModules(ctx context.Context, e *Env, kernel, arch string) ([]InitrdModule, error) {
	wanted, early, omitted := e.initrdToolModules(ctx)
	specs, err := e.installedSpecs(ctx, kernel, arch)
	if err != nil {
		return nil, err
	}
	var out []InitrdModule
	for _, is := range specs {
		if n := normalizeModName(is.spec.DestName); (is.remakeInitrd || wanted[n]) && !omitted(n) {
			out = append(out, InitrdModule{Name: is.spec.DestName, Early: early[n]})
		}
	}
	return out, nil
}

// installedSpec is one module file of a module version installed for a
// kernel, as its dkms.conf describes it.
type installedSpec struct {
	t            Target
	spec         tree.ModuleSpec
	remakeInitrd bool
}

// installedSpecs lists the module files of every module version installed
// for kernel/arch.
func (e *Env) installedSpecs(ctx context.Context, kernel, arch string) ([]installedSpec, error) {
	mvs, err := e.Layout.ModuleVersions("", "")
	if err != nil {
		return nil, err
	}
	var out []installedSpec
	for _, mv := range mvs {
		if mv.Broken || e.Layout.InstalledVersion(mv.Name, kernel, arch) != mv.Version {
			continue
		}
		t := Target{Module: mv.Name, Version: mv.Version, Kernel: kernel, Arch: arch}
		conf, err := e.readConf(ctx, e.confFile(mv.Name, mv.Version), t, false)
		if err != nil {
			return nil, err
		}
		for _, m := range conf.Buildable() {
			out = append(out, installedSpec{t: t, spec: m, remakeInitrd: conf.RemakeInitrd})
		}
	}
	return out, nil
}

// moduleName is the module name of a .ko path (dashes as underscores).
func moduleName(p string) (string, bool) {
	base := path.Base(p)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if n, ok := strings.CutSuffix(base, ext); ok {
			return normalizeModName(n), true
		}
	}
	return "", false
}

func normalizeModName(n string) string { return strings.ReplaceAll(n, "-", "_") }

// readModulesDep parses modules.dep: module path → the paths it needs.
func readModulesDep(file string) map[string][]string {
	out := map[string][]string{}
	data, err := os.ReadFile(file)
	if err != nil {
		return out
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if ok {
			out[mod] = strings.Fields(deps)
		}
	}
	return out
}

// initrdToolModules reads the modules the administrator asked the initrd
// tool for: /etc/initramfs-tools/modules (all load early), and dracut's
// configuration (evaluated as dracut sources it): add_drivers, drivers and
// filesystems are included, force_drivers also load early; omitted are
// those omit_drivers keeps out.
func (e *Env) initrdToolModules(ctx context.Context) (wanted, early map[string]bool, omitted func(string) bool) {
	wanted, early = map[string]bool{}, map[string]bool{}
	etc := filepath.Join(e.Layout.Root, "/etc")
	if data, err := os.ReadFile(filepath.Join(etc, "initramfs-tools", "modules")); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			f := strings.Fields(l)
			if len(f) > 0 && !strings.HasPrefix(f[0], "#") {
				wanted[normalizeModName(f[0])], early[normalizeModName(f[0])] = true, true
			}
		}
	}
	warnings := &lineWriter{sink: e.Sink, typ: Warning}
	defer warnings.Flush()
	dc, err := tree.ReadDracutConf(ctx, filepath.Join(e.Layout.Root, "/"), e.Environ, warnings)
	if err != nil {
		e.warn("Warning: dracut's configuration: %v", err)
	}
	for _, list := range [][]string{dc.AddDrivers, dc.Drivers, dc.Filesystems, dc.ForceDrivers} {
		for _, name := range list {
			wanted[normalizeModName(name)] = true
		}
	}
	for _, name := range dc.ForceDrivers {
		early[normalizeModName(name)] = true
	}
	return wanted, early, dc.Omitted
}

// runInitrdTool hands the initrd to the distribution's own generator.
func (e *Env) runInitrdTool(ctx context.Context, tool, kernel string) error {
	args := []string{"update-initramfs", "-u", "-k", kernel}
	if tool == "dracut" {
		args = []string{"dracut", "-f", "--kver", kernel}
	}
	var out strings.Builder
	if err := runArgv(ctx, "", e.Environ, &out, args...); err != nil {
		return &Error{Kind: KindInitrd, Lines: []string{fmt.Sprintf("%s failed: %v", strings.Join(args, " "), err), strings.TrimSpace(out.String())}, Err: err}
	}
	e.Sink.Emit(Event{Type: InitrdRegenerated, Kernel: kernel, Text: "Regenerated the initrd of " + kernel + " with " + tool})
	return nil
}
