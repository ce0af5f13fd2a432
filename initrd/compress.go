package initrd

import (
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"

	"github.com/dkmsd/dkmsd/tree/kcompress"
)

// Compression is how one segment of an initrd is stored.
type Compression string

const (
	None  Compression = "none"
	Gzip  Compression = "gzip"
	Zstd  Compression = "zstd"
	Xz    Compression = "xz"
	Lz4   Compression = "lz4"
	Bzip2 Compression = "bzip2"
	Lzma  Compression = "lzma"
)

// sniff names the compression whose magic starts data, or "".
func sniff(data []byte) Compression {
	switch {
	case bytes.HasPrefix(data, []byte("070701")), bytes.HasPrefix(data, []byte("070702")):
		return None
	case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
		return Gzip
	case bytes.HasPrefix(data, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return Zstd
	case bytes.HasPrefix(data, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return Xz
	case bytes.HasPrefix(data, []byte{0x02, 0x21, 0x4c, 0x18}):
		return Lz4
	case bytes.HasPrefix(data, []byte("BZh")):
		return Bzip2
	case bytes.HasPrefix(data, []byte{0x5d, 0x00, 0x00}):
		return Lzma
	}
	return ""
}

// countingReader counts the bytes a decompressor consumed; it is an
// io.ByteReader so decompressors do not read ahead.
type countingReader struct {
	r *bytes.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// maxDecompressed bounds what a whole image may expand to: a corrupt or
// hostile image must not exhaust memory (real ones are well under 1 GiB).
const maxDecompressed = 1 << 30

// decompress decodes the compressed segment at the start of data and
// returns its contents and how many bytes of data it occupied; it fails
// when the contents would exceed limit bytes.
func decompress(c Compression, data []byte, limit int) ([]byte, int, error) {
	readAllLimited := func(r io.Reader) ([]byte, error) { return readLimited(r, limit) }
	switch c {
	case Gzip:
		cr := &countingReader{r: bytes.NewReader(data)}
		zr, err := gzip.NewReader(cr)
		if err != nil {
			return nil, 0, err
		}
		zr.Multistream(false)
		out, err := readAllLimited(zr)
		return out, cr.n, err
	case Zstd:
		n, err := zstdFrameLen(data)
		if err != nil {
			return nil, 0, err
		}
		d, err := zstd.NewReader(nil, zstd.WithDecoderMaxMemory(uint64(max(limit, 1))))
		if err != nil {
			return nil, 0, err
		}
		defer d.Close()
		out, err := d.DecodeAll(data[:n], nil)
		return out, n, err
	case Xz:
		cr := &countingReader{r: bytes.NewReader(data)}
		xr, err := xz.ReaderConfig{SingleStream: true}.NewReader(cr)
		if err != nil {
			return nil, 0, err
		}
		out, err := readAllLimited(xr)
		// The reader reads one byte past the stream to check for more;
		// find the stream's end from its footer.
		end, ferr := xzStreamEnd(data, cr.n)
		if ferr != nil {
			if err != nil {
				return nil, 0, err
			}
			return nil, 0, ferr
		}
		if err != nil && !isTrailingDataError(err) {
			return nil, 0, err
		}
		return out, end, nil
	case Lz4:
		n, err := lz4LegacyLen(data)
		if err != nil {
			return nil, 0, err
		}
		out, err := readAllLimited(lz4.NewReader(bytes.NewReader(data[:n])))
		return out, n, err
	case Bzip2:
		// No length in the format: a bzip2 segment runs to the end.
		out, err := readAllLimited(bzip2.NewReader(bytes.NewReader(data)))
		return out, len(data), err
	case Lzma:
		lr, err := lzma.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, 0, err
		}
		out, err := readAllLimited(lr)
		return out, len(data), err
	}
	return nil, 0, fmt.Errorf("cannot decompress %s", c)
}

func readLimited(r io.Reader, limit int) ([]byte, error) {
	out, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if len(out) > limit {
		return nil, fmt.Errorf("the image expands to more than %d bytes", maxDecompressed)
	}
	return out, err
}

func isTrailingDataError(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("unexpected data after stream"))
}

// xzStreamEnd finds the end of the xz stream that starts data, at or
// before read bytes: its 12-byte footer ends in "YZ" and carries a CRC32 of
// its middle 6 bytes.
func xzStreamEnd(data []byte, read int) (int, error) {
	if read > len(data) {
		read = len(data)
	}
	for end := read; end >= 24; end-- {
		f := data[end-12 : end]
		if f[10] != 'Y' || f[11] != 'Z' {
			continue
		}
		if crc32.ChecksumIEEE(f[4:10]) == binary.LittleEndian.Uint32(f[0:4]) {
			return end, nil
		}
	}
	return 0, errors.New("xz stream has no valid footer (truncated?)")
}

// zstdFrameLen walks one zstd frame's header and blocks and returns its
// length.
func zstdFrameLen(data []byte) (int, error) {
	short := errors.New("zstd frame truncated")
	if len(data) < 5 {
		return 0, short
	}
	fhd := data[4]
	pos := 5
	single := fhd&0x20 != 0
	if !single {
		pos++ // window descriptor
	}
	pos += []int{0, 1, 2, 4}[fhd&3]
	switch fhd >> 6 {
	case 0:
		if single {
			pos++
		}
	case 1:
		pos += 2
	case 2:
		pos += 4
	case 3:
		pos += 8
	}
	for {
		if pos+3 > len(data) {
			return 0, short
		}
		h := int(data[pos]) | int(data[pos+1])<<8 | int(data[pos+2])<<16
		pos += 3
		last, typ, size := h&1 == 1, (h>>1)&3, h>>3
		switch typ {
		case 0, 2: // raw, compressed
			pos += size
		case 1: // RLE
			pos++
		default:
			return 0, errors.New("zstd frame has a reserved block type (corrupt)")
		}
		if pos > len(data) {
			return 0, short
		}
		if last {
			break
		}
	}
	if fhd&0x04 != 0 {
		pos += 4
	}
	if pos > len(data) {
		return 0, short
	}
	return pos, nil
}

// lz4LegacyLen is the length of a legacy lz4 stream (the kernel's lz4 -l
// format): the magic, then blocks of a 4-byte size and data, ending at a
// zero size, at the end of the data, or where a size cannot be a block's
// (larger than LZ4_compressBound of the 8 MiB block: the next segment).
func lz4LegacyLen(data []byte) (int, error) {
	const magic = 0x184c2102
	const maxBlock = 8<<20 + (8<<20)/255 + 16
	pos := 4
	for pos+4 <= len(data) {
		size := int(binary.LittleEndian.Uint32(data[pos:]))
		switch {
		case size == magic:
			pos += 4
			continue
		case size == 0:
			return pos + 4, nil
		case size > maxBlock:
			return pos, nil
		case pos+4+size > len(data):
			return 0, fmt.Errorf("lz4 block at offset %d runs past the end (truncated)", pos)
		}
		pos += 4 + size
	}
	return pos, nil
}

// compress encodes a segment with c, in a form the kernel's decompressors
// accept. small trades time for size, for whole-archive rewrites.
func compress(c Compression, data []byte, small bool) ([]byte, error) {
	switch c {
	case None:
		return data, nil
	case Gzip, Zstd, Xz:
		return kcompress.Encode(kcompress.Format(c), data, small)
	}
	return nil, fmt.Errorf("cannot write %s segments", c)
}

// writable is the compression new segments get for an image whose main
// archive uses c: the same, or gzip where dkmsd has no tested writer.
func writable(c Compression) Compression {
	switch c {
	case Gzip, Zstd, Xz, None:
		return c
	}
	return Gzip
}
