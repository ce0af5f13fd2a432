package lifecycle

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// DefaultTarballLimit bounds what a tarball may expand to (framework.conf
// can say otherwise): a decompression bomb is refused, not unpacked.
const DefaultTarballLimit = 1 << 30

// openTar opens a (compressed) tarball, the compression found by magic.
func openTar(file string) (*tar.Reader, io.Closer, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	var head [6]byte
	n, _ := io.ReadFull(f, head[:])
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, nil, err
	}
	var r io.Reader = f
	switch {
	case n >= 2 && head[0] == 0x1f && head[1] == 0x8b:
		zr, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		r = zr
	case n >= 6 && bytes.Equal(head[:6], []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		xr, err := xz.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		r = xr
	case n >= 4 && bytes.Equal(head[:4], []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, err
		}
		r = zr.IOReadCloser()
	case n >= 3 && string(head[:3]) == "BZh":
		r = bzip2.NewReader(f)
	}
	return tar.NewReader(r), f, nil
}

// CheckTarball reads a whole tarball and refuses it, naming the entry, if
// unpacking it could write outside its directory or create something
// dangerous: ".." components, absolute names, links pointing outside,
// device nodes or fifos, setuid/setgid bits, or more than limit bytes.
func CheckTarball(r *tar.Reader, limit int64) error {
	var total int64
	names := map[string]bool{}
	regular := map[string]bool{}
	links := map[string]bool{}
	targets := map[string]string{}
	var order []string
	for {
		hdr, err := r.Next()
		if err == io.EOF {
			// No entry may lie under a symlink of the archive: unpacking
			// it would follow the link.
			for _, n := range order {
				for d := path.Dir(n); d != "." && d != "/"; d = path.Dir(d) {
					if links[d] {
						return fmt.Errorf("entry %q: its path goes through the symlink %q", n, d)
					}
				}
			}
			// Nor may a symlink's target pass through another symlink:
			// only the link's own words were checked to stay inside.
			for name, target := range targets {
				if via := throughLink(name, target, links); via != "" {
					return fmt.Errorf("entry %q: a symlink to %q, which goes through the symlink %q", name, target, via)
				}
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("not a readable tar archive: %w", err)
		}
		name := hdr.Name
		clean := path.Clean(strings.TrimPrefix(name, "./"))
		switch {
		case strings.ContainsRune(name, 0):
			return fmt.Errorf("entry %q: a NUL byte in its name", name)
		case path.IsAbs(name):
			return fmt.Errorf("entry %q: an absolute path", name)
		case hasDotDot(name):
			return fmt.Errorf("entry %q: a '..' component", name)
		}
		if hdr.Mode&(04000|02000) != 0 {
			return fmt.Errorf("entry %q: setuid or setgid bit", name)
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeGNULongName, tar.TypeXHeader, tar.TypeXGlobalHeader:
		case tar.TypeSymlink:
			target := hdr.Linkname
			if path.IsAbs(target) || escapesFrom(path.Dir(clean), target) {
				return fmt.Errorf("entry %q: a symlink to %q, outside the archive", name, target)
			}
		case tar.TypeLink:
			// Only to an earlier regular file: a hard link to a symlink
			// would move the symlink where its target means something else.
			target := path.Clean(strings.TrimPrefix(hdr.Linkname, "./"))
			if path.IsAbs(hdr.Linkname) || hasDotDot(hdr.Linkname) || !regular[target] {
				return fmt.Errorf("entry %q: a hard link to %q, which is not an earlier regular file of the archive", name, hdr.Linkname)
			}
		case tar.TypeChar, tar.TypeBlock:
			return fmt.Errorf("entry %q: a device node", name)
		case tar.TypeFifo:
			return fmt.Errorf("entry %q: a fifo", name)
		default:
			return fmt.Errorf("entry %q: unsupported type %q", name, hdr.Typeflag)
		}
		if links[clean] {
			return fmt.Errorf("entry %q: replaces an earlier symlink of the same name", name)
		}
		if names[clean] && hdr.Typeflag == tar.TypeSymlink {
			return fmt.Errorf("entry %q: a symlink replacing an earlier entry of the same name", name)
		}
		names[clean] = true
		if hdr.Typeflag == tar.TypeReg {
			regular[clean] = true
		}
		order = append(order, clean)
		if hdr.Typeflag == tar.TypeSymlink {
			links[clean] = true
			targets[clean] = hdr.Linkname
		}
		if total += hdr.Size; total > limit || hdr.Size < 0 {
			return fmt.Errorf("entry %q: the archive expands to more than %d bytes", name, limit)
		}
		// Read the body so a truncated or lying archive fails here.
		n, err := io.Copy(io.Discard, io.LimitReader(r, limit-total+hdr.Size+1))
		if err != nil {
			return fmt.Errorf("entry %q: %w", name, err)
		}
		if n != hdr.Size {
			return fmt.Errorf("entry %q: %d bytes, header says %d", name, n, hdr.Size)
		}
	}
}

// throughLink returns the first symlink of the archive that the target of
// link name passes through before its last component, or "".
func throughLink(name, target string, links map[string]bool) string {
	var cur []string
	if d := path.Dir(name); d != "." {
		cur = strings.Split(d, "/")
	}
	parts := strings.Split(target, "/")
	for i, part := range parts {
		switch part {
		case "", ".":
			continue
		case "..":
			if len(cur) > 0 {
				cur = cur[:len(cur)-1]
			}
			continue
		}
		cur = append(cur, part)
		p := strings.Join(cur, "/")
		if i < len(parts)-1 && links[p] {
			return p
		}
	}
	return ""
}

func hasDotDot(p string) bool {
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return true
		}
	}
	return false
}

// escapesFrom reports whether a relative symlink target, followed from
// dir (relative to the archive root), leaves the archive.
func escapesFrom(dir, target string) bool {
	depth := 0
	if dir != "." {
		depth = len(strings.Split(dir, "/"))
	}
	for _, part := range strings.Split(target, "/") {
		switch part {
		case "", ".":
		case "..":
			if depth--; depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

// extractTar unpacks a checked tarball into dir.
func extractTar(r *tar.Reader, dir string) error {
	for {
		hdr, err := r.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		clean := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if clean == "." {
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(clean))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		mode := os.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, mode|0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			// Never write through a symlink, whatever the checks let pass.
			f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, mode|0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, r)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, dst); err != nil {
				return err
			}
		case tar.TypeLink:
			src := filepath.Join(dir, filepath.FromSlash(path.Clean(strings.TrimPrefix(hdr.Linkname, "./"))))
			if err := os.Link(src, dst); err != nil {
				return err
			}
		}
	}
}
