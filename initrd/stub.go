package initrd

import (
	"bytes"
	"debug/elf"
)

// depmodSections are the sections depmod (kmod's libkmod-elf) reads from
// a module: its modinfo (aliases, softdeps, depends), the symbols it
// exports and needs (with their CRCs) and the names of its sections. The
// rest — code, data, relocations, debug info — is most of a module's
// bytes and nothing depmod looks at.
var depmodSections = map[string]bool{
	".modinfo": true, "__ksymtab_strings": true, "__versions": true,
	".symtab": true, ".strtab": true, ".gnu.linkonce.this_module": true,
}

// depmodStub returns a module with only what depmod reads: the same ELF
// header and section table, the sections depmod reads kept byte for byte
// and every other section emptied. depmod gives a tree of stubs the very
// indexes it gives the real modules (a test compares them on the cloud
// kernel's initrd) in a fraction of the time. Anything that is not a
// plain ELF module (a compressed .ko.xz, a test fixture) comes back as
// it is.
func depmodStub(ko []byte) []byte {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return ko
	}
	defer f.Close()
	var shoff uint64
	var entsize, offOff, sizeOff, typeOff, word int
	switch f.Class {
	case elf.ELFCLASS64:
		shoff, entsize, offOff, sizeOff, typeOff, word = f.ByteOrder.Uint64(ko[0x28:]), 64, 24, 32, 4, 8
	case elf.ELFCLASS32:
		shoff, entsize, offOff, sizeOff, typeOff, word = uint64(f.ByteOrder.Uint32(ko[0x20:])), 40, 16, 20, 4, 4
	default:
		return ko
	}
	n := len(f.Sections)
	if n == 0 || shoff+uint64(n*entsize) > uint64(len(ko)) {
		return ko
	}
	ehsize := 64
	if f.Class == elf.ELFCLASS32 {
		ehsize = 52
	}
	out := append([]byte{}, ko[:ehsize]...)
	table := append([]byte{}, ko[shoff:shoff+uint64(n*entsize)]...)
	put := func(b []byte, v uint64) {
		if word == 8 {
			f.ByteOrder.PutUint64(b, v)
		} else {
			f.ByteOrder.PutUint32(b, uint32(v))
		}
	}
	contents := trimSymbols(f, ko, table, entsize)
	for i, s := range f.Sections {
		h := table[i*entsize : (i+1)*entsize]
		keep := i > 0 && (depmodSections[s.Name] || i == int(shstrndx(f, ko)))
		if !keep || s.Type == elf.SHT_NOBITS {
			if i > 0 {
				f.ByteOrder.PutUint32(h[typeOff:], uint32(elf.SHT_NOBITS))
				put(h[offOff:], 0)
				put(h[sizeOff:], 0)
			}
			continue
		}
		if s.Offset+s.Size > uint64(len(ko)) {
			return ko
		}
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		data, trimmed := contents[i]
		if !trimmed {
			data = ko[s.Offset : s.Offset+s.Size]
		}
		put(h[offOff:], uint64(len(out)))
		put(h[sizeOff:], uint64(len(data)))
		out = append(out, data...)
	}
	for len(out)%8 != 0 {
		out = append(out, 0)
	}
	newShoff := uint64(len(out))
	out = append(out, table...)
	if f.Class == elf.ELFCLASS64 {
		f.ByteOrder.PutUint64(out[0x28:], newShoff)
		f.ByteOrder.PutUint64(out[0x20:], 0) // no program headers
	} else {
		f.ByteOrder.PutUint32(out[0x20:], uint32(newShoff))
		f.ByteOrder.PutUint32(out[0x1c:], 0)
	}
	return out
}

// shstrndx is the index of the section-name string table.
func shstrndx(f *elf.File, ko []byte) uint16 {
	if f.Class == elf.ELFCLASS64 {
		return f.ByteOrder.Uint16(ko[0x3e:])
	}
	return f.ByteOrder.Uint16(ko[0x32:])
}

// exportSymbol reports whether a defined symbol is one of those the
// kernel's EXPORT_SYMBOL makes (__ksymtab_, __kstrtab_, __kstrtabns_,
// __crc_): kmod tells exported names from namespace names in
// __ksymtab_strings by them, and reads CRCs from them.
func exportSymbol(name []byte) bool {
	for _, p := range []string{"__ksymtab_", "__kstrtab_", "__kstrtabns_", "__crc_"} {
		if bytes.HasPrefix(name, []byte(p)) {
			return true
		}
	}
	return false
}

// trimSymbols returns the symbol table reduced to the symbols depmod uses
// — those the module needs (undefined) and those that describe its exports
// — and a string table holding only their names, by section
// index; it also sets the table's sh_info (first global symbol) to 1 in
// the section table. nil when the tables are not as expected: the stub
// then keeps them whole.
func trimSymbols(f *elf.File, ko, table []byte, entsize int) map[int][]byte {
	symsize, infoOff := 24, 44
	if f.Class == elf.ELFCLASS32 {
		symsize, infoOff = 16, 28
	}
	for i, s := range f.Sections {
		if s.Type != elf.SHT_SYMTAB {
			continue
		}
		link := int(s.Link)
		if link <= 0 || link >= len(f.Sections) || link == int(shstrndx(f, ko)) {
			return nil
		}
		st := f.Sections[link]
		if s.Offset+s.Size > uint64(len(ko)) || st.Offset+st.Size > uint64(len(ko)) || s.Size%uint64(symsize) != 0 {
			return nil
		}
		syms, strs := ko[s.Offset:s.Offset+s.Size], ko[st.Offset:st.Offset+st.Size]
		newSyms := append([]byte{}, syms[:symsize]...) // the null symbol
		newStrs := []byte{0}
		for off := symsize; off+symsize <= len(syms); off += symsize {
			e := syms[off : off+symsize]
			name, shndx := f.ByteOrder.Uint32(e), f.ByteOrder.Uint16(e[6:]) // Elf64_Sym
			if f.Class == elf.ELFCLASS32 {
				shndx = f.ByteOrder.Uint16(e[14:]) // Elf32_Sym
			}
			if int(name) >= len(strs) {
				return nil
			}
			end := bytes.IndexByte(strs[name:], 0)
			if end < 0 {
				return nil
			}
			n := strs[name : int(name)+end]
			if len(n) == 0 || (shndx != uint16(elf.SHN_UNDEF) && !exportSymbol(n)) {
				continue
			}
			kept := append([]byte{}, e...)
			f.ByteOrder.PutUint32(kept, uint32(len(newStrs)))
			newStrs = append(append(newStrs, n...), 0)
			newSyms = append(newSyms, kept...)
		}
		f.ByteOrder.PutUint32(table[i*entsize+infoOff:], 1)
		return map[int][]byte{i: newSyms, link: newStrs}
	}
	return nil
}
