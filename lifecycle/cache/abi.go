package cache

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Symvers are a kernel's exported symbols and their CRCs, from its
// Module.symvers.
type Symvers map[string]uint32

// ReadSymvers parses a Module.symvers ("0xCRC\tsymbol\tmodule\t..."); a
// kernel without one has none.
func ReadSymvers(file string) (Symvers, error) {
	data, err := os.ReadFile(file)
	if os.IsNotExist(err) {
		return Symvers{}, nil
	}
	if err != nil {
		return nil, err
	}
	return parseSymvers(data), nil
}

// parseSymvers reads the CRC and symbol of each line; other lines are
// skipped. A kernel's has some 25,000 lines: they are cut in place, not
// split into strings.
func parseSymvers(data []byte) Symvers {
	out := make(Symvers, bytes.Count(data, []byte{'\n'})+1)
	for len(data) > 0 {
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		crcText, rest, ok := bytes.Cut(line, []byte{'\t'})
		if !ok {
			continue
		}
		sym, _, _ := bytes.Cut(rest, []byte{'\t'})
		crc, ok := parseCRC(crcText)
		if !ok {
			continue
		}
		out[string(sym)] = crc
	}
	return out
}

// parseCRC is a CRC as Module.symvers writes it (0x%08x); anything else
// strconv takes in base 0.
func parseCRC(b []byte) (uint32, bool) {
	if h, ok := bytes.CutPrefix(b, []byte("0x")); ok && len(h) > 0 && len(h) <= 8 {
		var v uint32
		for _, c := range h {
			switch {
			case c >= '0' && c <= '9':
				v = v<<4 | uint32(c-'0')
			case c >= 'a' && c <= 'f':
				v = v<<4 | uint32(c-'a'+10)
			case c >= 'A' && c <= 'F':
				v = v<<4 | uint32(c-'A'+10)
			default:
				return 0, false
			}
		}
		return v, true
	}
	v, err := strconv.ParseUint(string(b), 0, 32)
	return uint32(v), err == nil
}

// CheckModule holds a module built elsewhere against this machine's
// kernel: its vermagic must name the release, and each symbol CRC it
// records (__versions) that the kernel exports must be the kernel's.
func CheckModule(name string, ko []byte, release string, kernel Symvers) error {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return &Refusal{Reason: fmt.Sprintf("%s is not an ELF module: %v", name, err)}
	}
	defer f.Close()
	magic := ""
	if s := f.Section(".modinfo"); s != nil {
		data, err := s.Data()
		if err != nil {
			return &Refusal{Reason: fmt.Sprintf("%s: read .modinfo: %v", name, err)}
		}
		for _, kv := range bytes.Split(data, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("vermagic=")); ok {
				magic = string(v)
			}
		}
	}
	if got, _, _ := strings.Cut(magic, " "); got != release {
		return &Refusal{Reason: fmt.Sprintf("%s has vermagic %q, not for kernel %s", name, magic, release)}
	}
	s := f.Section("__versions")
	if s == nil {
		return nil // a kernel without CONFIG_MODVERSIONS
	}
	data, err := s.Data()
	if err != nil {
		return &Refusal{Reason: fmt.Sprintf("%s: read __versions: %v", name, err)}
	}
	// struct modversion_info: an unsigned long CRC, then a 64-byte
	// record's remaining bytes of NUL-padded name.
	word := 8
	if f.Class == elf.ELFCLASS32 {
		word = 4
	}
	const entry = 64
	for off := 0; off+entry <= len(data); off += entry {
		var crc uint64
		if word == 8 {
			crc = f.ByteOrder.Uint64(data[off:])
		} else {
			crc = uint64(f.ByteOrder.Uint32(data[off:]))
		}
		sym := string(bytes.TrimRight(data[off+word:off+entry], "\x00"))
		if want, ok := kernel[sym]; ok && uint32(crc) != want {
			return &Refusal{Reason: fmt.Sprintf("%s records CRC 0x%08x for %s; this kernel's Module.symvers has 0x%08x", name, uint32(crc), sym, want)}
		}
	}
	return nil
}
