package cache

import (
	"bufio"
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
	f, err := os.Open(file)
	if os.IsNotExist(err) {
		return Symvers{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := Symvers{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), "\t")
		if len(fields) < 2 {
			continue
		}
		crc, err := strconv.ParseUint(fields[0], 0, 32)
		if err != nil {
			continue
		}
		out[fields[1]] = uint32(crc)
	}
	return out, sc.Err()
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
