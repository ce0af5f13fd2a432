// Package kcompress writes the compressed formats the kernel's own
// decompressors read back — initrd segments — with the settings they
// need, kept in one place: xz with CRC32 and a 1 MiB dictionary, zstd with
// a window of at most 8 MiB. (Modules are compressed by gzip, xz and zstd
// themselves, with framework.conf's compress_*_opts, as dkms does.)
//
//	packed, err := kcompress.Encode(kcompress.Zstd, data, true)
package kcompress

import (
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Format is a compression the kernel can read.
type Format string

const (
	Gzip Format = "gzip"
	Xz   Format = "xz"
	Zstd Format = "zstd"
)

// Encode compresses data in format f. small trades time for size (a
// whole-archive rewrite); otherwise speed wins (an appended initrd
// segment: zstd's fastest level, whose smaller tables cost a 300 KB
// segment about 10 ms less for 3 % more bytes). xz has one setting.
func Encode(f Format, data []byte, small bool) ([]byte, error) {
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch f {
	case Gzip:
		level := gzip.BestSpeed
		if small {
			level = gzip.BestCompression
		}
		w, err = gzip.NewWriterLevel(&buf, level)
	case Zstd:
		level := zstd.SpeedFastest
		if small {
			level = zstd.SpeedBestCompression
		}
		w, err = zstd.NewWriter(&buf, zstd.WithEncoderLevel(level), zstd.WithWindowSize(zstdWindow(len(data))),
			zstd.WithEncoderConcurrency(1))
	case Xz:
		w, err = xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}.NewWriter(&buf)
	default:
		return nil, fmt.Errorf("cannot write %s", f)
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

// zstdWindow is the window a zstd frame of n bytes needs: 8 MiB at most
// (the kernel's decompressors accept that much), and no more than the
// data, rounded up to a power of two, since a larger one compresses no
// better and its buffers cost an appended segment most of its time
// (20–33 ms for 8 MiB against 6–7 ms for a 300 KB segment here).
func zstdWindow(n int) int {
	w := zstd.MinWindowSize
	for w < n && w < 8<<20 {
		w <<= 1
	}
	return w
}
