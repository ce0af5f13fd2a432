package initrd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
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
	Size        int
}

// Build makes the new image bytes for plan with the given strategy; the
// strategy becomes Rewrite when the plan removes a module the base image
// holds.
func Build(ctx context.Context, img *Image, plan Plan, strategy Strategy) ([]byte, *Report, error) {
	base := img
	if plan.BaseLen > 0 && plan.BaseLen < len(img.Data) {
		b, err := Parse(img.Data[:plan.BaseLen])
		if err != nil {
			return nil, nil, fmt.Errorf("the image before dkmsd's segment: %w", err)
		}
		base = b
	}
	modDir, err := base.Resolve("lib/modules/" + plan.Kernel)
	if err != nil {
		return nil, nil, err
	}
	if !base.IsDir(modDir) {
		return nil, nil, fmt.Errorf("the image has no lib/modules/%s directory: it was not made for this kernel", plan.Kernel)
	}
	rep := &Report{Strategy: strategy, ModulesDir: modDir, Compression: writable(base.Main)}
	if strategy == Append {
		for _, r := range plan.Remove {
			if _, ok := base.Lookup(path.Join(modDir, r)); ok {
				rep.Strategy, rep.Reason = Rewrite, fmt.Sprintf("%s is in the image's own archive and can only be removed by rewriting it", r)
				break
			}
		}
	}

	stage, err := os.MkdirTemp(plan.TmpDir, "dkmsd-initrd-")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(stage)
	stageMod := filepath.Join(stage, "lib", "modules", plan.Kernel)
	removed := map[string]bool{}
	for _, r := range plan.Remove {
		removed[path.Join(modDir, r)] = true
	}
	if err := extract(base, modDir, stageMod, removed); err != nil {
		return nil, nil, err
	}
	added := map[string][]byte{}
	for _, f := range plan.Add {
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, nil, fmt.Errorf("module for the initrd: %w", err)
		}
		dst := filepath.Join(stageMod, filepath.FromSlash(f.Rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, nil, err
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			return nil, nil, err
		}
		if old, err := base.Content(path.Join(modDir, f.Rel)); err == nil && bytes.Equal(old, data) {
			continue // the image already has these very bytes
		}
		added[path.Join(modDir, f.Rel)] = data
		rep.Added = append(rep.Added, path.Join(modDir, f.Rel))
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-a", "-b", stage, plan.Kernel).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("depmod for the initrd: %v: %s", err, strings.TrimSpace(string(out)))
	}
	indexes, err := changedIndexes(base, modDir, stageMod)
	if err != nil {
		return nil, nil, err
	}
	for n := range indexes {
		rep.Indexes = append(rep.Indexes, n)
	}
	sort.Strings(rep.Indexes)
	if name, content, ok := loadList(base, plan.Load); ok {
		indexes[name] = content
		rep.LoadFile = name
	}

	var out []byte
	if rep.Strategy == Append && len(added) == 0 && len(indexes) == 0 {
		out = base.Data // nothing new: the base alone is the image
	} else if rep.Strategy == Append {
		out, err = appendSegment(base, rep.Compression, added, indexes)
	} else {
		out, err = rewrite(base, rep.Compression, added, indexes, removed)
	}
	if err != nil {
		return nil, nil, err
	}
	if err := verify(base, out, plan, rep); err != nil {
		return nil, nil, fmt.Errorf("the new image does not read back right: %w", err)
	}
	rep.Size = len(out)
	return out, rep, nil
}

// extract writes the image's module tree into dir so depmod can index it
// together with the new modules.
func extract(img *Image, modDir, dir string, skip map[string]bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, name := range img.Names(modDir) {
		if skip[name] {
			continue
		}
		r := img.view[name]
		dst := filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(name, modDir+"/")))
		switch r.Mode & cpio.S_IFMT {
		case cpio.S_IFDIR:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case cpio.S_IFREG:
			data, err := readAll(r)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				return err
			}
		case cpio.S_IFLNK:
			target, err := readAll(r)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.Symlink(string(target), dst); err != nil {
				return err
			}
		}
	}
	return nil
}

// changedIndexes returns the modules.* files depmod wrote that differ
// from (or are missing in) the image.
func changedIndexes(img *Image, modDir, stageMod string) (map[string][]byte, error) {
	entries, err := os.ReadDir(stageMod)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "modules.") || e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(stageMod, e.Name()))
		if err != nil {
			return nil, err
		}
		name := path.Join(modDir, e.Name())
		if old, err := img.Content(name); err == nil && bytes.Equal(old, data) {
			continue
		}
		out[name] = data
	}
	return out, nil
}

// loadList returns the initrd tool's boot list with the modules added:
// conf/modules for initramfs-tools (each line is modprobe'd early),
// etc/modules-load.d/dkmsd.conf for dracut/systemd images.
func loadList(img *Image, mods []string) (string, []byte, bool) {
	if len(mods) == 0 {
		return "", nil, false
	}
	name := "etc/modules-load.d/dkmsd.conf"
	if _, ok := img.Lookup("scripts/functions"); ok {
		name = "conf/modules"
	}
	old, _ := img.Content(name)
	have := map[string]bool{}
	for _, l := range strings.Split(string(old), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			have[f[0]] = true
		}
	}
	content := string(old)
	if content != "" && !strings.HasSuffix(content, "\n") {
		content += "\n"
	}
	changed := false
	for _, m := range mods {
		if !have[m] {
			content += m + "\n"
			have[m], changed = true, true
		}
	}
	if !changed {
		return "", nil, false
	}
	return name, []byte(content), true
}

// newRecords are the records for the new files, with the directories the
// image lacks first (parents before children, at canonical paths, so no
// record ever replaces a symlink such as lib -> usr/lib).
func newRecords(img *Image, files map[string][]byte) []cpio.Record {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var recs []cpio.Record
	dirs := map[string]bool{}
	for _, n := range names {
		var missing []string
		for d := path.Dir(n); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			if _, ok := img.view[d]; ok {
				break
			}
			missing = append([]string{d}, missing...)
			dirs[d] = true
		}
		for _, d := range missing {
			recs = append(recs, cpio.Directory(d, 0o755))
		}
	}
	for _, n := range names {
		recs = append(recs, cpio.StaticRecord(files[n], cpio.Info{Name: n, Mode: cpio.S_IFREG | 0o644, NLink: 1}))
	}
	return recs
}

// appendSegment is the image's bytes followed by one segment.
func appendSegment(img *Image, c Compression, modules, indexes map[string][]byte) ([]byte, error) {
	files := map[string][]byte{}
	for n, d := range modules {
		files[n] = d
	}
	for n, d := range indexes {
		files[n] = d
	}
	seg, err := archive(newRecords(img, files), 1)
	if err != nil {
		return nil, err
	}
	packed, err := compress(c, seg, false)
	if err != nil {
		return nil, err
	}
	out := append([]byte{}, img.Data...)
	last := img.Segments[len(img.Segments)-1]
	if last.Compression == Lz4 || c == None {
		// lz4 needs a zero size to stop; an uncompressed archive must start
		// 4-byte aligned in the image.
		out = append(out, 0, 0, 0, 0)
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
	}
	return append(out, packed...), nil
}

// rewrite keeps the early segments and writes one archive with every
// other record (last wins, first position), the removed modules left out
// and the changed files replaced or added.
func rewrite(img *Image, c Compression, modules, indexes map[string][]byte, removed map[string]bool) ([]byte, error) {
	var out []byte
	replace := map[string][]byte{}
	for n, d := range indexes {
		replace[n] = d
	}
	for n, d := range modules {
		replace[n] = d
	}
	var recs []cpio.Record
	seen := map[string]bool{}
	end := 0
	for _, s := range img.Segments {
		if s.Early {
			end = s.Offset + s.Length
			continue
		}
		for _, r := range s.Records {
			if seen[r.Name] {
				continue
			}
			seen[r.Name] = true
			if removed[r.Name] {
				continue
			}
			last := img.view[r.Name]
			if d, ok := replace[r.Name]; ok && last.Mode&cpio.S_IFMT == cpio.S_IFREG {
				last = cpio.StaticRecord(d, cpio.Info{Name: r.Name, Mode: last.Mode, NLink: 1, MTime: last.MTime})
				delete(replace, r.Name)
			}
			recs = append(recs, last)
		}
	}
	recs = append(recs, newRecords(img, replace)...)
	arch, err := archive(recs, 0)
	if err != nil {
		return nil, err
	}
	packed, err := compress(c, arch, true)
	if err != nil {
		return nil, err
	}
	out = append(out, img.Data[:end]...)
	for c == None && len(out)%4 != 0 {
		out = append(out, 0)
	}
	return append(out, packed...), nil
}

// archive writes records as one newc archive with a trailer. Inode numbers
// are made unique within it; records that were hard links keep sharing
// theirs. firstIno > 0 renumbers every record from there.
func archive(recs []cpio.Record, firstIno uint64) ([]byte, error) {
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	ino := uint64(1000)
	if firstIno > 0 {
		ino = firstIno
	}
	links := map[uint64]uint64{}
	for _, r := range recs {
		if r.NLink > 1 {
			if n, ok := links[r.Ino]; ok {
				r.Ino = n
			} else {
				links[r.Ino] = ino
				r.Ino = ino
				ino++
			}
		} else {
			r.Ino = ino
			ino++
		}
		if r.NLink == 0 {
			r.NLink = 1
		}
		if err := w.WriteRecord(r); err != nil {
			return nil, fmt.Errorf("write %s: %w", r.Name, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// readBack parses the new image. An appended compressed segment is read
// on its own over the base's view: the base was just read, and reading it
// again would double the cost.
func readBack(base *Image, out []byte, rep *Report) (*Image, error) {
	n := len(base.Data)
	if rep.Strategy != Append || rep.Compression == None || len(out) <= n || !bytes.Equal(out[:n], base.Data) {
		return Parse(out)
	}
	seg, err := Parse(out[n:])
	if err != nil {
		return nil, err
	}
	view := make(map[string]cpio.Record, len(base.view)+len(seg.view))
	for k, v := range base.view {
		view[k] = v
	}
	for k, v := range seg.view {
		view[k] = v
	}
	return &Image{Data: out, view: view}, nil
}

// verify reads the new image back: every added module is there with its
// bytes, modules.dep lists it, and the boot list names what must load.
func verify(base *Image, out []byte, plan Plan, rep *Report) error {
	img, err := readBack(base, out, rep)
	if err != nil {
		return err
	}
	dep, err := img.Content(path.Join(rep.ModulesDir, "modules.dep"))
	if err != nil {
		return fmt.Errorf("no modules.dep: %w", err)
	}
	for _, f := range plan.Add {
		want, _ := os.ReadFile(f.Src)
		got, err := img.Content(path.Join(rep.ModulesDir, f.Rel))
		if err != nil || !bytes.Equal(got, want) {
			return fmt.Errorf("%s is missing or differs", f.Rel)
		}
		if !bytes.Contains(dep, []byte(f.Rel+":")) {
			return fmt.Errorf("modules.dep does not list %s", f.Rel)
		}
	}
	for _, r := range plan.Remove {
		if _, ok := img.Lookup(path.Join(rep.ModulesDir, r)); ok {
			return fmt.Errorf("%s is still there", r)
		}
	}
	if rep.LoadFile != "" {
		list, _ := img.Content(rep.LoadFile)
		for _, m := range plan.Load {
			if !bytes.Contains(list, []byte(m+"\n")) {
				return fmt.Errorf("%s does not load %s", rep.LoadFile, m)
			}
		}
	}
	return nil
}
