package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"

	"github.com/u-root/u-root/pkg/cpio"
)

// newRecords are the records for the new files, with the directories the
// image lacks first (parents before children, at canonical paths, so no
// record ever replaces a symlink such as lib -> usr/lib).
func newRecords(exists func(string) bool, files map[string][]byte) []cpio.Record {
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
			if exists(d) {
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
func appendSegment(base *Base, c Compression, modules, indexes map[string][]byte) (Output, error) {
	files := map[string][]byte{}
	for n, d := range modules {
		files[n] = d
	}
	for n, d := range indexes {
		files[n] = d
	}
	seg, err := archive(newRecords(base.Index.Has, files), 1)
	if err != nil {
		return nil, err
	}
	packed, err := compress(c, seg, false)
	if err != nil {
		return nil, err
	}
	var pad []byte
	if base.Index.Last == Lz4 || c == None {
		// lz4 needs a zero size to stop; an uncompressed archive must start
		// 4-byte aligned in the image.
		pad = []byte{0, 0, 0, 0}
		for (len(base.Data)+len(pad))%4 != 0 {
			pad = append(pad, 0)
		}
	}
	return Output{base.Data, append(pad, packed...)}, nil
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
	recs = append(recs, newRecords(func(n string) bool { _, ok := img.view[n]; return ok }, replace)...)
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

// readBack parses what verify checks: after an append, the new segment
// alone (the base is the one indexed, byte for byte); after a rewrite, the
// whole new image.
func readBack(base *Base, out Output, rep *Report) (*Image, error) {
	if rep.Strategy == Append {
		if len(out) == 0 || &out[0][0] != &base.Data[0] || len(out[0]) != len(base.Data) {
			return nil, errors.New("the base image's bytes are not the image's start")
		}
		if len(out) == 1 {
			return &Image{view: map[string]cpio.Record{}}, nil
		}
		seg := out[1]
		for len(seg) > 0 && seg[0] == 0 {
			seg = seg[1:]
		}
		return Parse(seg)
	}
	return Parse(out.Bytes())
}

// verify reads the new image back: every added module is there with its
// bytes, modules.dep (the image's, or the one written) lists it, and the
// boot list names what must load.
func verify(base *Base, out Output, plan Plan, rep *Report, written map[string][]byte, stageDep []byte) error {
	img, err := readBack(base, out, rep)
	if err != nil {
		return err
	}
	depName := path.Join(rep.ModulesDir, "modules.dep")
	dep, err := img.Content(depName)
	if _, changed := written[depName]; err != nil && rep.Strategy == Append && !changed {
		// depmod wrote the image's own modules.dep again: it is in the
		// base, and the stage's copy is the same bytes.
		dep, err = stageDep, nil
	}
	if err != nil {
		return fmt.Errorf("no modules.dep: %w", err)
	}
	for _, f := range plan.Add {
		want, _ := os.ReadFile(f.Src)
		name := path.Join(rep.ModulesDir, f.Rel)
		got, err := img.Content(name)
		if rep.Strategy == Append && err != nil && base.Index.Files[f.Rel] == Digest(want) {
			continue // the base holds these very bytes
		}
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
