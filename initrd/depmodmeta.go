package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// depmodMeta is what depmod reads from each module of an image, kept in
// the index directory (depmod.meta) beside index.json so that appending
// a module computes the image's indexes without reading its modules or
// their stubs again.
type depmodMeta struct {
	digest  string
	modules map[string]*DepmodModule // by path relative to ModulesDir
	// unsure holds the modules this package does not read as kmod does
	// (a compressed module, an ELF it cannot parse), with the reason: an
	// image holding one gets its indexes from the real depmod.
	unsure map[string]string
}

// depmodMetaFile is the file's name; depmodMetaHeader begins it and
// carries its format's version: an index directory whose file is missing
// or of another version is made again.
const (
	depmodMetaFile   = "depmod.meta"
	depmodMetaHeader = "dkmsd depmod-meta 1 "
)

func newDepmodMeta(digest string) *depmodMeta {
	return &depmodMeta{digest: digest, modules: map[string]*DepmodModule{}, unsure: map[string]string{}}
}

// add reads a module of the image.
func (m *depmodMeta) add(rel string, data []byte) error {
	mod, err := ReadDepmodModule(rel, data)
	switch {
	case errors.Is(err, errDepmodUnsure):
		m.unsure[rel] = err.Error()
	case err != nil:
		return err
	default:
		m.modules[rel] = mod
	}
	return nil
}

// The file is the header line, then NUL-ended fields: a tag and its
// values (no value has a NUL: they are C strings in the modules).
const (
	tagModule = "M" // name, rel
	tagExport = "E" // symbol
	tagNeed   = "N" // symbol
	tagWeak   = "W" // weak symbol needed
	tagInfo   = "I" // key, value
	tagUnsure = "U" // rel, reason
)

func (m *depmodMeta) encode() []byte {
	var b bytes.Buffer
	b.WriteString(depmodMetaHeader + m.digest + "\n")
	put := func(fields ...string) {
		for _, f := range fields {
			b.WriteString(f)
			b.WriteByte(0)
		}
	}
	rels := make([]string, 0, len(m.modules))
	for rel := range m.modules {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		mod := m.modules[rel]
		put(tagModule, mod.Name, mod.Rel)
		for _, s := range mod.Exports {
			put(tagExport, s)
		}
		weak := map[int]bool{}
		for _, i := range mod.Weak {
			weak[i] = true
		}
		for i, s := range mod.Needs {
			if weak[i] {
				put(tagWeak, s)
			} else {
				put(tagNeed, s)
			}
		}
		for _, kv := range mod.Info {
			put(tagInfo, kv[0], kv[1])
		}
	}
	for rel, why := range m.unsure {
		put(tagUnsure, rel, strings.ReplaceAll(why, "\x00", " "))
	}
	return b.Bytes()
}

// write stores the file in an index directory.
func (m *depmodMeta) write(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, depmodMetaFile), m.encode(), 0o644); err != nil {
		return fmt.Errorf("initrd cache: %w", err)
	}
	return nil
}

// loadDepmodMeta reads the file kept in an index directory for the base
// with that digest; nil when it is missing, of another format or for
// other bytes.
func loadDepmodMeta(dir, digest string) *depmodMeta {
	b, err := os.ReadFile(filepath.Join(dir, depmodMetaFile))
	if err != nil {
		return nil
	}
	head := depmodMetaHeader + digest + "\n"
	if !bytes.HasPrefix(b, []byte(head)) {
		return nil
	}
	m := newDepmodMeta(digest)
	body := string(b[len(head):])
	if body == "" {
		return m
	}
	if !strings.HasSuffix(body, "\x00") {
		return nil
	}
	// A cursor over the fields, not strings.Split: the file holds tens of
	// thousands of them and this runs on every append.
	next := func() (string, bool) {
		i := strings.IndexByte(body, 0)
		if i < 0 {
			return "", false
		}
		f := body[:i]
		body = body[i+1:]
		return f, true
	}
	var mod *DepmodModule
	var v [2]string
	for body != "" {
		tag, _ := next()
		n := metaArity(tag)
		if n == 0 || (mod == nil && tag != tagModule && tag != tagUnsure) {
			return nil
		}
		for j := range n {
			f, ok := next()
			if !ok {
				return nil
			}
			v[j] = f
		}
		switch tag {
		case tagModule:
			mod = &DepmodModule{Name: v[0], Rel: v[1]}
			m.modules[mod.Rel] = mod
		case tagExport:
			mod.Exports = append(mod.Exports, v[0])
		case tagWeak:
			mod.Weak = append(mod.Weak, len(mod.Needs))
			mod.Needs = append(mod.Needs, v[0])
		case tagNeed:
			mod.Needs = append(mod.Needs, v[0])
		case tagInfo:
			mod.Info = append(mod.Info, [2]string{v[0], v[1]})
		case tagUnsure:
			m.unsure[v[0]] = v[1]
		}
	}
	return m
}

// metaArity is how many values follow a tag; 0 for no tag.
func metaArity(tag string) int {
	switch tag {
	case tagExport, tagNeed, tagWeak:
		return 1
	case tagModule, tagInfo, tagUnsure:
		return 2
	}
	return 0
}
