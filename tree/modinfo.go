package tree

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// ModInfo is the .modinfo section of a kernel module: version, srcversion,
// vermagic, depends, alias, … (a key may repeat, as alias does).
type ModInfo map[string][]string

// Get returns the first value of key, or "".
func (m ModInfo) Get(key string) string {
	if v := m[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// ReadModuleFile returns the uncompressed bytes of a .ko, .ko.gz, .ko.xz or
// .ko.zst file.
func ReadModuleFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(path, ".gz"):
		r, err = gzip.NewReader(bytes.NewReader(raw))
	case strings.HasSuffix(path, ".xz"):
		r, err = xz.NewReader(bytes.NewReader(raw))
	case strings.HasSuffix(path, ".zst"):
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(raw))
		if err == nil {
			defer d.Close()
			r = d
		}
	default:
		return raw, nil
	}
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", path, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", path, err)
	}
	return out, nil
}

// ReadModInfo reads the .modinfo section of a module file.
func ReadModInfo(path string) (ModInfo, error) {
	data, err := ReadModuleFile(path)
	if err != nil {
		return nil, err
	}
	return ParseModInfo(data)
}

// ParseModInfo reads the .modinfo section of an uncompressed module.
func ParseModInfo(ko []byte) (ModInfo, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not a kernel module: %w", err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("not a kernel module: no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	info := ModInfo{}
	for _, entry := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(entry), "=")
		if ok {
			info[k] = append(info[k], v)
		}
	}
	return info, nil
}
