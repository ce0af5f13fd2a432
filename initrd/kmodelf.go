package initrd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// errDepmodUnsure says that this package cannot be sure what depmod
// would write for its input; the caller runs the real depmod.
var errDepmodUnsure = errors.New("depmod's answer is not certain without depmod")

// errBadAlias is an alias with an unmatched bracket: depmod skips it in
// modules.alias.bin.
var errBadAlias = errors.New("unmatched bracket")

// DepmodModule is what depmod reads from one module file, as libkmod's
// ELF reader returns it.
type DepmodModule struct {
	// Name is the module's name (from its file name), Rel its path
	// relative to lib/modules/<kernel>.
	Name, Rel string
	// Exports are the symbols it exports, in kmod's order: the
	// __crc_<sym> symbol table entries, or __ksymtab_strings without
	// them.
	Exports []string
	// Needs are the symbols it needs: the undefined symbol table entries,
	// then the __versions entries none of those named; Weak marks the
	// weak ones (by index into Needs).
	Needs []string
	Weak  []int
	// Info holds the .modinfo entries depmod's outputs read (alias,
	// softdep), in order, each as key and value.
	Info [][2]string
}

// kmodELF is a module file as libkmod-elf sees it: little-endian ELF,
// sections found by name.
type kmodELF struct {
	data    []byte
	is32    bool
	shoff   uint64
	shnum   int
	names   []byte // the section-name string table
	machine uint16
}

func unsure(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errDepmodUnsure}, a...)...)
}

// parseKmodELF is kmod_elf_new's checks. Big-endian and compressed files
// are refused: kmod reads them, this package does not claim to.
func parseKmodELF(data []byte) (*kmodELF, error) {
	if len(data) <= 16 || !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return nil, unsure("not an uncompressed ELF file")
	}
	e := &kmodELF{data: data}
	var ehsize, shsize uint64
	switch data[4] {
	case 1:
		e.is32, ehsize, shsize = true, 52, 40
	case 2:
		ehsize, shsize = 64, 64
	default:
		return nil, unsure("ELF class %d", data[4])
	}
	if data[5] != 1 {
		return nil, unsure("not a little-endian ELF file")
	}
	if uint64(len(data)) <= ehsize {
		return nil, unsure("ELF header cut short")
	}
	var entsize uint64
	var shstrndx int
	e.machine = uint16(e.u16(18))
	if e.is32 {
		e.shoff, entsize, e.shnum, shstrndx = e.u32(32), e.u16(46), int(e.u16(48)), int(e.u16(50))
	} else {
		e.shoff, entsize, e.shnum, shstrndx = e.u64(40), e.u16(58), int(e.u16(60)), int(e.u16(62))
	}
	if entsize != shsize || e.shoff > uint64(len(data)) || uint64(e.shnum)*shsize > uint64(len(data))-e.shoff {
		return nil, unsure("section table out of the file")
	}
	if shstrndx >= e.shnum {
		return nil, unsure("no section-name table")
	}
	off, size, _, ok := e.section(shstrndx)
	if !ok || size == 0 || data[off+size-1] != 0 {
		return nil, unsure("section-name table not NUL-ended")
	}
	e.names = data[off : off+size]
	return e, nil
}

func (e *kmodELF) u16(off uint64) uint64 { return uint64(binary.LittleEndian.Uint16(e.data[off:])) }
func (e *kmodELF) u32(off uint64) uint64 { return uint64(binary.LittleEndian.Uint32(e.data[off:])) }
func (e *kmodELF) u64(off uint64) uint64 { return binary.LittleEndian.Uint64(e.data[off:]) }

// section is elf_get_section_info: offset, size, name offset; false when
// the section lies outside the file.
func (e *kmodELF) section(i int) (off, size uint64, name uint32, ok bool) {
	if e.is32 {
		h := e.shoff + uint64(i)*40
		name, off, size = uint32(e.u32(h)), e.u32(h+16), e.u32(h+20)
	} else {
		h := e.shoff + uint64(i)*64
		name, off, size = uint32(e.u32(h)), e.u64(h+24), e.u64(h+32)
	}
	end := off + size
	return off, size, name, end >= off && end <= uint64(len(e.data))
}

// find is kmod_elf_get_section: the first section from index 1 with that
// name whose bytes are in the file.
func (e *kmodELF) find(name string) ([]byte, bool) {
	for i := 1; i < e.shnum; i++ {
		off, size, n, ok := e.section(i)
		if !ok || uint64(n) >= uint64(len(e.names)) {
			continue
		}
		end := bytes.IndexByte(e.names[n:], 0)
		if string(e.names[n:int(n)+end]) == name {
			return e.data[off : off+size], true
		}
	}
	return nil, false
}

// cstring is the NUL-ended string at off in the file; false when it runs
// to the end of the file (kmod would read past it).
func (e *kmodELF) cstring(off uint64) (string, bool) {
	if off >= uint64(len(e.data)) {
		return "", false
	}
	end := bytes.IndexByte(e.data[off:], 0)
	if end < 0 {
		return "", false
	}
	return string(e.data[off : off+uint64(end)]), true
}

// splitStrings is kmod_elf_get_strings (and the __ksymtab_strings
// reader): the non-empty NUL-separated strings of a section.
func splitStrings(b []byte) []string {
	var out []string
	for _, s := range bytes.Split(b, []byte{0}) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}
	return out
}

// offsetIn is where sub (a slice of e.data) starts in the file.
func (e *kmodELF) offsetIn(sub []byte) uint64 {
	if len(sub) == 0 {
		return 0
	}
	return uint64(cap(e.data) - cap(sub))
}

// symtab returns the symbol and string tables, each entry's size, and
// whether both are there and whole.
func (e *kmodELF) symtab() (syms, strs []byte, symlen int, ok bool) {
	strs, okStr := e.find(".strtab")
	syms, okSym := e.find(".symtab")
	symlen = 24
	if e.is32 {
		symlen = 16
	}
	return syms, strs, symlen, okStr && okSym && len(syms)%symlen == 0
}

// sym reads a symbol table entry: name offset, info, section index.
func (e *kmodELF) sym(ent []byte) (name uint32, info byte, shndx uint16) {
	if e.is32 {
		return binary.LittleEndian.Uint32(ent), ent[12], binary.LittleEndian.Uint16(ent[14:])
	}
	return binary.LittleEndian.Uint32(ent), ent[4], binary.LittleEndian.Uint16(ent[6:])
}

// exports is kmod_elf_get_symbols: the names after "__crc_" of the
// symbol table's __crc_ entries; without any (or without a usable symbol
// table), the strings of __ksymtab_strings.
func (e *kmodELF) exports() ([]string, error) {
	var out []string
	syms, strs, symlen, ok := e.symtab()
	if ok {
		for off := symlen; off+symlen <= len(syms); off += symlen {
			name, _, _ := e.sym(syms[off:])
			if uint64(name) >= uint64(len(strs)) {
				out, ok = nil, false
				break
			}
			n, whole := e.cstring(e.offsetIn(strs) + uint64(name))
			if !whole {
				return nil, unsure("symbol name runs off the file")
			}
			if strings.HasPrefix(n, "__crc_") {
				if n == "__crc_" {
					return nil, unsure("an empty __crc_ symbol")
				}
				out = append(out, n[len("__crc_"):])
			}
		}
	}
	if ok && len(out) > 0 {
		return out, nil
	}
	ks, _ := e.find("__ksymtab_strings")
	return splitStrings(ks), nil
}

// needs is kmod_elf_get_dependency_symbols: the undefined symbols in
// symbol table order, then the __versions entries that none of them
// named (module_layout), with the indexes of the weak ones.
func (e *kmodELF) needs() ([]string, []int, error) {
	const verlen = 64 // struct modversion_info, 32 and 64 bit
	crclen := uint64(8)
	if e.is32 {
		crclen = 4
	}
	versions, _ := e.find("__versions")
	if len(versions)%verlen != 0 {
		versions = nil
	}
	var verNames []string
	for off := 0; off < len(versions); off += verlen {
		n, ok := e.cstring(e.offsetIn(versions) + uint64(off) + crclen)
		if !ok {
			return nil, nil, unsure("__versions name runs off the file")
		}
		verNames = append(verNames, n)
	}
	visited := make([]bool, len(verNames))
	syms, strs, symlen, ok := e.symtab()
	if !ok {
		return nil, nil, unsure("no usable symbol table")
	}
	if e.machine == 2 || e.machine == 43 { // SPARC: register symbols
		return nil, nil, unsure("a SPARC module")
	}
	var out []string
	var weak []int
	for off := symlen; off+symlen <= len(syms); off += symlen {
		name, info, shndx := e.sym(syms[off:])
		if shndx != 0 {
			continue
		}
		if uint64(name) >= uint64(len(strs)) {
			return nil, nil, unsure("symbol name outside the string table")
		}
		n, whole := e.cstring(e.offsetIn(strs) + uint64(name))
		if !whole {
			return nil, nil, unsure("symbol name runs off the file")
		}
		if n == "" {
			continue
		}
		for i, v := range verNames {
			if v == n {
				visited[i] = true
				break
			}
		}
		if info>>4 == 2 { // STB_WEAK
			weak = append(weak, len(out))
		}
		out = append(out, n)
	}
	for i, v := range verNames {
		if !visited[i] {
			out = append(out, v)
		}
	}
	return out, weak, nil
}

// ReadDepmodModule reads from a module file (rel relative to
// lib/modules/<kernel>) what depmod reads: errDepmodUnsure when the
// file is not one this package reads exactly as kmod does.
func ReadDepmodModule(rel string, data []byte) (*DepmodModule, error) {
	if _, ok := moduleFile(rel); !ok || !strings.HasSuffix(rel, ".ko") {
		return nil, unsure("%s is not an uncompressed .ko file", rel)
	}
	m := &DepmodModule{Name: modnameOf(rel), Rel: rel}
	if len(rel) >= kmodPathMax || m.Name == "" {
		return nil, unsure("module path %q", rel)
	}
	e, err := parseKmodELF(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if m.Exports, err = e.exports(); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	if m.Needs, m.Weak, err = e.needs(); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	info, _ := e.find(".modinfo")
	for _, s := range splitStrings(info) {
		k, v, found := strings.Cut(s, "=")
		if !found {
			k, v = s, ""
		}
		if k == "alias" || k == "softdep" {
			m.Info = append(m.Info, [2]string{k, v})
		}
	}
	return m, nil
}
