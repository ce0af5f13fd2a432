package tree

import (
	"bytes"
	"fmt"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// CompressModule compresses a module for a kernel whose modules end in
// suffix (ReadModuleFile reads it back), with settings the kernel's
// in-kernel decompressors accept (xz needs CRC32 and a 1 MiB dictionary).
func CompressModule(data []byte, suffix string) ([]byte, error) {
	var buf bytes.Buffer
	switch suffix {
	case ".ko":
		return data, nil
	case ".ko.gz":
		w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	case ".ko.xz":
		w, err := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}.NewWriter(&buf)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	case ".ko.zst":
		w, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(data); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown module suffix %q", suffix)
	}
	return buf.Bytes(), nil
}
