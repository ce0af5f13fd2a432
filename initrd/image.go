// Package initrd reads an initrd the way the kernel unpacks it — leading
// uncompressed cpio segments (early microcode), then compressed or plain
// segments, later entries overriding earlier ones — and writes a new one
// with DKMS modules added, through u-root's pkg/cpio:
//
//	img, err := initrd.Read("/boot/initrd.img-6.1.0-56-cloud-amd64")
//	plan := initrd.Plan{Kernel: k, Add: []initrd.File{{Src: ko, Rel: "updates/dkms/foo.ko"}}, Load: []string{"foo"}}
//	out, report, err := initrd.Build(ctx, img, plan, initrd.Append)
//	err = initrd.WriteAtomic(path, out)
package initrd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// Segment is one piece of an image, as the kernel sees it.
type Segment struct {
	// Offset and Length locate the segment in the image file.
	Offset, Length int
	Compression    Compression
	// Early marks the leading uncompressed segments (CPU microcode), which
	// are kept byte for byte in front of everything.
	Early bool
	// Records are the cpio records it holds, in order, trailers excluded.
	Records []cpio.Record
}

// Image is a parsed initrd.
type Image struct {
	Data     []byte
	Segments []Segment
	// Main is the compression of the main archive (the first non-early
	// segment).
	Main Compression
	view map[string]cpio.Record
	// expanded counts decompressed bytes against one budget for the
	// whole image: a tiny hostile image must not expand without bound.
	expanded int
}

// Read reads and parses the initrd at path.
func Read(path string) (*Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read initrd: %w", err)
	}
	img, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("initrd %s: %w", path, err)
	}
	return img, nil
}

// Parse splits data into segments and reads their records. A truncated or
// corrupt segment, or one in an unknown format, is an error naming its
// offset.
func Parse(data []byte) (*Image, error) {
	img := &Image{Data: data, view: map[string]cpio.Record{}}
	pos := 0
	early := true
	for {
		for pos < len(data) && data[pos] == 0 {
			pos++
		}
		if pos >= len(data) {
			break
		}
		c := sniff(data[pos:])
		seg := Segment{Offset: pos, Compression: c}
		switch c {
		case "":
			n := min(4, len(data)-pos)
			return nil, fmt.Errorf("unknown compression at offset %d (magic % x)", pos, data[pos:pos+n])
		case None:
			if pos%4 != 0 {
				return nil, fmt.Errorf("uncompressed archive at offset %d is not 4-byte aligned", pos)
			}
			end, err := archiveEnd(data, pos)
			if err != nil {
				return nil, fmt.Errorf("cpio archive at offset %d: %w", pos, err)
			}
			recs, err := readRecords(data[pos:end])
			if err != nil {
				return nil, fmt.Errorf("cpio archive at offset %d: %w", pos, err)
			}
			// Leading plain archives are early (microcode, ACPI tables)
			// only while they hold nothing else: an uncompressed main
			// archive (dracut --no-compress) is not.
			early = early && earlyOnly(recs)
			seg.Length, seg.Records, seg.Early = end-pos, recs, early
			if !early && img.Main == "" {
				img.Main = None
			}
		default:
			early = false
			out, n, err := decompress(c, data[pos:], maxDecompressed-img.expanded)
			if err != nil {
				return nil, fmt.Errorf("%s segment at offset %d: %w", c, pos, err)
			}
			img.expanded += len(out)
			recs, err := readArchives(out)
			if err != nil {
				return nil, fmt.Errorf("%s segment at offset %d: %w", c, pos, err)
			}
			seg.Length, seg.Records = n, recs
			if img.Main == "" {
				img.Main = c
			}
		}
		img.Segments = append(img.Segments, seg)
		for _, r := range seg.Records {
			img.view[r.Name] = r
		}
		pos += seg.Length
	}
	if len(img.Segments) == 0 {
		return nil, errors.New("empty image")
	}
	if budget := maxDecompressed; img.expanded > budget {
		return nil, fmt.Errorf("expands to more than %d bytes", budget)
	}
	if img.Main == "" {
		img.Main = None
	}
	return img, nil
}

// earlyOnly reports whether an archive holds only what the kernel's early
// loaders read from the leading uncompressed archives.
func earlyOnly(recs []cpio.Record) bool {
	for _, r := range recs {
		if r.Name != "." && r.Name != "kernel" && r.Name != "early_cpio" && !strings.HasPrefix(r.Name, "kernel/") {
			return false
		}
	}
	return true
}

// readArchives reads the archives a decompressed segment holds, one after
// the other, with zero padding between them.
func readArchives(data []byte) ([]cpio.Record, error) {
	var all []cpio.Record
	pos := 0
	for {
		for pos < len(data) && data[pos] == 0 {
			pos++
		}
		if pos >= len(data) {
			return all, nil
		}
		if sniff(data[pos:]) != None {
			return nil, fmt.Errorf("junk at offset %d of the decompressed data", pos)
		}
		end, err := archiveEnd(data, pos)
		if err != nil {
			return nil, fmt.Errorf("archive at offset %d of the decompressed data: %w", pos, err)
		}
		recs, err := readRecords(data[pos:end])
		if err != nil {
			return nil, err
		}
		all = append(all, recs...)
		pos = end
	}
}

// readRecords reads one newc archive with u-root's reader. Bodies are
// copied out so the image's buffers can go.
func readRecords(archive []byte) ([]cpio.Record, error) {
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(bytes.NewReader(archive)))
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// newcHeaderLen is the magic and 13 fields of 8 hex digits.
const newcHeaderLen = 110

// archiveEnd walks newc headers from start to the end of the archive's
// TRAILER!!! record (u-root's reader hides where an archive ends).
func archiveEnd(data []byte, start int) (int, error) {
	pos := start
	for {
		if pos+newcHeaderLen > len(data) {
			return 0, errors.New("truncated header")
		}
		h := data[pos : pos+newcHeaderLen]
		if !bytes.HasPrefix(h, []byte("07070")) {
			return 0, fmt.Errorf("bad magic %q at offset %d", h[:6], pos)
		}
		field := func(i int) (int, error) {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			return int(v), err
		}
		fileSize, err1 := field(6)
		nameSize, err2 := field(11)
		if err1 != nil || err2 != nil || nameSize == 0 {
			return 0, fmt.Errorf("corrupt header at offset %d", pos)
		}
		nameEnd := pos + newcHeaderLen + nameSize
		if nameEnd > len(data) {
			return 0, errors.New("truncated name")
		}
		name := string(data[pos+newcHeaderLen : nameEnd-1])
		body := align4(nameEnd-start) + start
		end := align4(body+fileSize-start) + start
		if end > len(data) {
			if name == cpio.Trailer && body <= len(data) {
				return len(data), nil
			}
			return 0, fmt.Errorf("truncated body of %q", name)
		}
		pos = end
		if name == cpio.Trailer {
			return pos, nil
		}
	}
}

func align4(n int) int { return (n + 3) &^ 3 }

// Lookup returns the record the kernel would leave at name (last wins).
func (img *Image) Lookup(name string) (cpio.Record, bool) {
	r, ok := img.view[cpio.Normalize(name)]
	return r, ok
}

// Resolve follows the image's own symlinks (lib -> usr/lib) through each
// component of name and returns the canonical path.
func (img *Image) Resolve(name string) (string, error) {
	parts := strings.Split(cpio.Normalize(name), "/")
	cur := ""
	for hops := 0; len(parts) > 0; {
		p := parts[0]
		parts = parts[1:]
		next := path.Join(cur, p)
		r, ok := img.view[next]
		if ok && r.Mode&cpio.S_IFMT == cpio.S_IFLNK {
			if hops++; hops > 40 {
				return "", fmt.Errorf("too many symlinks resolving %s", name)
			}
			target, err := readAll(r)
			if err != nil {
				return "", err
			}
			t := string(target)
			if strings.HasPrefix(t, "/") {
				cur = ""
			}
			parts = append(strings.Split(cpio.Normalize(path.Join(cur, t)), "/"), parts...)
			cur = ""
			continue
		}
		cur = next
	}
	return cur, nil
}

// IsDir reports whether name (canonical) is a directory in the image.
func (img *Image) IsDir(name string) bool {
	r, ok := img.view[name]
	return ok && r.Mode&cpio.S_IFMT == cpio.S_IFDIR
}

// Names lists the names in the last-wins view under dir (canonical),
// sorted.
func (img *Image) Names(dir string) []string {
	var out []string
	prefix := dir + "/"
	for n := range img.view {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Content returns a regular file's bytes.
func (img *Image) Content(name string) ([]byte, error) {
	r, ok := img.view[name]
	if !ok {
		return nil, os.ErrNotExist
	}
	return readAll(r)
}

func readAll(r cpio.Record) ([]byte, error) {
	if r.ReaderAt == nil || r.FileSize == 0 {
		return nil, nil
	}
	buf := make([]byte, r.FileSize)
	if _, err := io.ReadFull(io.NewSectionReader(r, 0, int64(r.FileSize)), buf); err != nil {
		return nil, fmt.Errorf("read %s: %w", r.Name, err)
	}
	return buf, nil
}
