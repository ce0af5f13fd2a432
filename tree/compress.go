package tree

import (
	"fmt"

	"github.com/dkmsd/dkmsd/tree/kcompress"
)

// moduleFormats are the compressed module suffixes a kernel may use.
var moduleFormats = map[string]kcompress.Format{".ko.gz": kcompress.Gzip, ".ko.xz": kcompress.Xz, ".ko.zst": kcompress.Zstd}

// CompressModule compresses a module for a kernel whose modules end in
// suffix (ReadModuleFile reads it back), as small as the kernel's
// in-kernel decompressors allow.
func CompressModule(data []byte, suffix string) ([]byte, error) {
	if suffix == ".ko" {
		return data, nil
	}
	f, ok := moduleFormats[suffix]
	if !ok {
		return nil, fmt.Errorf("unknown module suffix %q", suffix)
	}
	return kcompress.Encode(f, data, true)
}
