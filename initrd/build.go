package initrd

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Strategy is how a new image is made from the old one.
type Strategy string

const (
	// Append reuses the existing bytes and adds one compressed segment
	// holding the modules and the indexes that changed: fast.
	Append Strategy = "append"
	// Rewrite writes the whole main archive again: smaller, drops stale
	// copies, and is the only way to take a module out of an image that
	// has it in its base.
	Rewrite Strategy = "rewrite"
)

// File is a module file to put into the image: Src on the host, Rel
// relative to lib/modules/<kernel> (updates/dkms/foo.ko).
type File struct {
	Src, Rel string
}

// Plan says what the new image must hold.
type Plan struct {
	Kernel string
	// BaseLen, when not 0, is where the image's own bytes end: what
	// follows is an earlier dkmsd segment, dropped before appending so
	// segments never pile up.
	BaseLen int
	Add     []File
	// Remove lists module paths (relative to lib/modules/<kernel>) that
	// must no longer be in the image.
	Remove []string
	// Load lists modules that must be loaded early (the initrd tool's
	// boot list).
	Load []string
	// TmpDir is where the staging tree goes ("" for the default).
	TmpDir string
}

// Report says what Build did.
type Report struct {
	Strategy    Strategy
	Reason      string // why a strategy other than the one asked for was used
	Compression Compression
	ModulesDir  string   // where modules live in the image (usr/lib/modules/<k>)
	Added       []string // module files written
	Indexes     []string // modules.* files that changed
	LoadFile    string   // the boot list written, if any
	// DepmodRun says why the real depmod computed the image's indexes
	// ("" when dkmsd did, the usual case).
	DepmodRun string
	Size      int
}

// Build makes the new image bytes for plan with the given strategy; the
// strategy becomes Rewrite when the plan removes a module the base image
// holds. It indexes img (or its first plan.BaseLen bytes) in a temporary
// directory; BuildBase is the same with an index kept from an earlier
// run.
func Build(ctx context.Context, img *Image, plan Plan, strategy Strategy) ([]byte, *Report, error) {
	base := img
	if plan.BaseLen > 0 && plan.BaseLen < len(img.Data) {
		b, err := Parse(img.Data[:plan.BaseLen])
		if err != nil {
			return nil, nil, fmt.Errorf("the image before dkmsd's segment: %w", err)
		}
		base = b
	}
	dir, err := os.MkdirTemp(plan.TmpDir, "dkmsd-index-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(dir)
	idx, err := WriteIndex(base, plan.Kernel, Digest(base.Data), dir)
	if err != nil {
		return nil, nil, err
	}
	out, rep, err := BuildBase(ctx, &Base{Data: base.Data, Index: idx, Dir: dir, img: base}, plan, strategy)
	if err != nil {
		return nil, nil, err
	}
	return out.Bytes(), rep, nil
}

// Output is a new image in parts: on the append path the base's own bytes
// and the segment, which are written one after the other, never joined in
// memory.
type Output [][]byte

// Len is the image's length.
func (o Output) Len() int {
	n := 0
	for _, p := range o {
		n += len(p)
	}
	return n
}

// Bytes joins the parts.
func (o Output) Bytes() []byte {
	if len(o) == 1 {
		return o[0]
	}
	out := make([]byte, 0, o.Len())
	for _, p := range o {
		out = append(out, p...)
	}
	return out
}

// BuildBase makes the new image from a base and its index: the base's
// bytes followed by one segment (Append), or the base rewritten
// (Rewrite). The image's indexes are computed from the index's depmod
// data of its modules and the new modules (imageIndexes); the append
// path never decompresses the base.
func BuildBase(ctx context.Context, base *Base, plan Plan, strategy Strategy) (Output, *Report, error) {
	idx := base.Index
	modDir := idx.ModulesDir
	if modDir == "" || idx.Kernel != plan.Kernel {
		return nil, nil, fmt.Errorf("the image has no lib/modules/%s directory: it was not made for this kernel", plan.Kernel)
	}
	rep := &Report{Strategy: strategy, ModulesDir: modDir, Compression: writable(idx.Main)}
	if strategy == Append {
		for _, r := range plan.Remove {
			if _, ok := idx.Files[r]; ok {
				rep.Strategy, rep.Reason = Rewrite, fmt.Sprintf("%s is in the image's own archive and can only be removed by rewriting it", r)
				break
			}
		}
	}

	removed := map[string]bool{}
	for _, r := range plan.Remove {
		removed[path.Join(modDir, r)] = true
	}
	added, addData := map[string][]byte{}, map[string][]byte{}
	for _, f := range plan.Add {
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, nil, fmt.Errorf("module for the initrd: %w", err)
		}
		addData[f.Rel] = data
		if idx.Files[f.Rel] == Digest(data) {
			continue // the image already has these very bytes
		}
		added[path.Join(modDir, f.Rel)] = data
		rep.Added = append(rep.Added, path.Join(modDir, f.Rel))
	}
	written, err := imageIndexes(ctx, base, plan, addData, rep)
	if err != nil {
		return nil, nil, err
	}
	indexes := changedIndexes(idx, written)
	for n := range indexes {
		rep.Indexes = append(rep.Indexes, n)
	}
	sort.Strings(rep.Indexes)
	if name, content, ok := loadList(idx, plan.Load); ok {
		indexes[name] = content
		rep.LoadFile = name
	}

	var out Output
	switch {
	case rep.Strategy == Append && len(added) == 0 && len(indexes) == 0:
		out = Output{base.Data} // nothing new: the base alone is the image
	case rep.Strategy == Append:
		out, err = appendSegment(base, rep.Compression, added, indexes)
	default:
		var img *Image
		if img, err = base.Image(); err == nil {
			var b []byte
			b, err = rewrite(img, rep.Compression, added, indexes, removed)
			out = Output{b}
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if err := verify(base, out, plan, rep, indexes, written["modules.dep"]); err != nil {
		return nil, nil, fmt.Errorf("the new image does not read back right: %w", err)
	}
	rep.Size = out.Len()
	return out, rep, nil
}

// linkStubs fills the staging module dir with symlinks to the index's
// stubs of the image's modules and to depmod's inputs, leaving out the
// modules being removed.
func linkStubs(base *Base, stageMod string, remove []string) error {
	skip := map[string]bool{}
	for _, r := range remove {
		skip[r] = true
	}
	made := map[string]bool{}
	for rel := range base.Index.Files {
		_, isMod := moduleFile(rel)
		if skip[rel] || (!isMod && !depmodInputs[path.Base(rel)]) {
			continue
		}
		dst := filepath.Join(stageMod, filepath.FromSlash(rel))
		if d := filepath.Dir(dst); !made[d] {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			made[d] = true
		}
		if err := os.Symlink(filepath.Join(base.Dir, "stubs", filepath.FromSlash(rel)), dst); err != nil {
			return err
		}
	}
	return os.MkdirAll(stageMod, 0o755)
}

// changedIndexes returns the files depmod writes that differ from (or
// are missing in) the image, by name in the image.
func changedIndexes(idx *Index, written map[string][]byte) map[string][]byte {
	out := map[string][]byte{}
	for name, data := range written {
		if idx.Files[name] != Digest(data) {
			out[path.Join(idx.ModulesDir, name)] = data
		}
	}
	return out
}

// loadList returns the initrd tool's boot list with the modules added:
// conf/modules for initramfs-tools (each line is modprobe'd early);
// etc/cmdline.d/50-dkmsd.conf for dracut images, one rd.driver.pre=
// line per module (dracut reads etc/cmdline.d as kernel command line and
// modprobes rd.driver.pre early, with or without systemd, as it does for
// force_drivers).
func loadList(idx *Index, mods []string) (string, []byte, bool) {
	if len(mods) == 0 {
		return "", nil, false
	}
	name, prefix := dracutBootList, "rd.driver.pre="
	if idx.InitramfsTools {
		name, prefix = "conf/modules", ""
	}
	old := idx.Lists[name]
	have := map[string]bool{}
	for _, l := range strings.Split(old, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			have[strings.TrimPrefix(f[0], prefix)] = true
		}
	}
	content := old
	if content != "" && !strings.HasSuffix(content, "\n") {
		content += "\n"
	}
	changed := false
	for _, m := range mods {
		if !have[m] {
			content += prefix + m + "\n"
			have[m], changed = true, true
		}
	}
	if !changed {
		return "", nil, false
	}
	return name, []byte(content), true
}
