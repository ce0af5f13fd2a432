package tree

import (
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// CompressModule compresses a module for a kernel whose modules end in
// suffix (ReadModuleFile reads it back), with settings the kernel's
// in-kernel decompressors accept (xz needs CRC32 and a 1 MiB dictionary).
func CompressModule(data []byte, suffix string) ([]byte, error) {
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch suffix {
	case ".ko":
		return data, nil
	case ".ko.gz":
		w, err = gzip.NewWriterLevel(&buf, gzip.BestCompression)
	case ".ko.xz":
		w, err = xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}.NewWriter(&buf)
	case ".ko.zst":
		w, err = zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	default:
		return nil, fmt.Errorf("unknown module suffix %q", suffix)
	}
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
