package initrd

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/dkmsd/dkmsd/tree/atomicfile"
)

// Index is what dkmsd needs to know about an image's own bytes (its base:
// the image as its generator wrote it) to append a segment to it: read
// once from the decompressed archive and kept in a cache directory next
// to the image's state, keyed by the base's digest, so that appending a
// module never decompresses the main archive again. Beside index.json the
// directory holds depmod.meta, what depmod reads from each module of the
// image (its exports, needs, aliases), from which dkmsd computes the
// image's indexes with the new modules added; and, under stubs/, each
// module reduced to what depmod reads (depmodStub) and depmod's own
// inputs (modules.order, modules.builtin, modules.builtin.modinfo), for
// the real depmod where dkmsd cannot be sure of its answer.
type Index struct {
	// Digest is the sha256 of the base, Len its length.
	Digest string `json:"digest"`
	Len    int    `json:"len"`
	Kernel string `json:"kernel"`
	// ModulesDir is where lib/modules/<kernel> resolves in the image
	// (usr/lib/modules/<k> on usr-merged images); "" when it has none.
	ModulesDir string `json:"modules_dir"`
	// Main is the main archive's compression, Last the last segment's.
	Main Compression `json:"main"`
	Last Compression `json:"last"`
	// Files maps each regular file under ModulesDir (relative to it) to
	// the sha256 of its bytes.
	Files map[string]string `json:"files"`
	// Dirs lists every name in the image that is not a regular file
	// (directories, symlinks such as lib -> usr/lib): a new record must
	// never replace one, and its missing parents must be written.
	Dirs []string `json:"dirs"`
	// InitramfsTools: the image was made by initramfs-tools (it has
	// scripts/functions), so its boot list is conf/modules.
	InitramfsTools bool `json:"initramfs_tools"`
	// Lists holds the boot lists the image has (conf/modules,
	// etc/cmdline.d/50-dkmsd.conf), by name.
	Lists map[string]string `json:"lists"`

	dirs map[string]bool
	// depmod is what depmod reads from each module (depmod.meta).
	depmod *depmodMeta
}

// depmodInputs are the modules.* files depmod reads; every other
// modules.* file is one it writes.
var depmodInputs = map[string]bool{"modules.order": true, "modules.builtin": true, "modules.builtin.modinfo": true}

// bootLists are the files a boot list may live in.
var bootLists = []string{"conf/modules", dracutBootList}

// dracutBootList is dkmsd's boot list in a dracut image.
const dracutBootList = "etc/cmdline.d/50-dkmsd.conf"

// Digest is the hex sha256 of data, the key of a base's index.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Base is an image's own bytes with their index, ready for Build.
type Base struct {
	Data  []byte
	Index *Index
	// Dir is the index's cache directory (index.json, stubs/).
	Dir string
	img *Image
	// temp: Dir is a temporary directory, removed by Close.
	temp bool
	// KeepErr says why the index could not be kept in the cache
	// directory (it is in a temporary one, for this run only).
	KeepErr error
}

// OpenBase returns the base data with its index: the one kept in dir when
// it was made for these bytes (digest; "" to compute it), or a new one,
// made by parsing data once and stored in dir for the next time. When dir
// cannot be written (a read-only or full tree) the index goes to a
// temporary directory under tmp instead, for this run: KeepErr says why.
// Close removes that.
func OpenBase(data []byte, digest, kernel, dir, tmp string) (*Base, error) {
	if digest == "" {
		digest = Digest(data)
	}
	if idx := LoadIndex(dir, digest, kernel); idx != nil && idx.Len == len(data) {
		return &Base{Data: data, Index: idx, Dir: dir}, nil
	}
	img, err := Parse(data)
	if err != nil {
		return nil, err
	}
	idx, keepErr := WriteIndex(img, kernel, digest, dir)
	if keepErr == nil {
		return &Base{Data: data, Index: idx, Dir: dir, img: img}, nil
	}
	os.RemoveAll(dir)
	t, err := os.MkdirTemp(tmp, "dkmsd-index-")
	if err != nil {
		return nil, err
	}
	if idx, err = WriteIndex(img, kernel, digest, t); err != nil {
		os.RemoveAll(t)
		return nil, err
	}
	return &Base{Data: data, Index: idx, Dir: t, img: img, temp: true, KeepErr: keepErr}, nil
}

// Close removes a temporary index.
func (b *Base) Close() {
	if b.temp {
		os.RemoveAll(b.Dir)
	}
}

// Image parses the base (once): the rewrite path needs its records.
func (b *Base) Image() (*Image, error) {
	if b.img == nil {
		img, err := Parse(b.Data)
		if err != nil {
			return nil, err
		}
		b.img = img
	}
	return b.img, nil
}

// LoadIndex reads the index kept in dir; nil when there is none, or it
// was made for other bytes or another kernel.
func LoadIndex(dir, digest, kernel string) *Index {
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil
	}
	var idx Index
	if json.Unmarshal(b, &idx) != nil || idx.Digest != digest || idx.Kernel != kernel || idx.Files == nil {
		return nil
	}
	if idx.depmod = loadDepmodMeta(dir, digest); idx.depmod == nil {
		return nil // an index from before depmod.meta: made again
	}
	idx.fill()
	return &idx
}

func (idx *Index) fill() {
	idx.dirs = make(map[string]bool, len(idx.Dirs))
	for _, d := range idx.Dirs {
		idx.dirs[d] = true
	}
}

// Has reports whether name (canonical) is a directory or symlink in the
// image.
func (idx *Index) Has(name string) bool { return idx.dirs[name] }

// Modules lists the module files under ModulesDir (relative to it),
// sorted.
func (idx *Index) Modules() []string {
	var out []string
	for rel := range idx.Files {
		if _, ok := moduleFile(rel); ok {
			out = append(out, rel)
		}
	}
	sort.Strings(out)
	return out
}

// WriteIndex indexes a parsed base image for kernel and stores the index
// and the stubs in dir, replacing what was there. index.json is written
// last: a directory without it is never used.
func WriteIndex(img *Image, kernel, digest, dir string) (*Index, error) {
	idx := &Index{Digest: digest, Len: len(img.Data), Kernel: kernel, Main: img.Main, Files: map[string]string{}, Lists: map[string]string{}}
	if n := len(img.Segments); n > 0 {
		idx.Last = img.Segments[n-1].Compression
	}
	for name, r := range img.view {
		if r.Mode&cpio.S_IFMT != cpio.S_IFREG {
			idx.Dirs = append(idx.Dirs, name)
		}
	}
	sort.Strings(idx.Dirs)
	_, idx.InitramfsTools = img.Lookup("scripts/functions")
	for _, l := range bootLists {
		if c, err := img.Content(l); err == nil {
			idx.Lists[l] = string(c)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("initrd cache: %w", err)
	}
	stubs := filepath.Join(dir, "stubs")
	if err := os.MkdirAll(stubs, 0o755); err != nil {
		return nil, fmt.Errorf("initrd cache: %w", err)
	}
	idx.depmod = newDepmodMeta(digest)
	if modDir, err := img.Resolve("lib/modules/" + kernel); err == nil && img.IsDir(modDir) {
		idx.ModulesDir = modDir
		for _, name := range img.Names(modDir) {
			r := img.view[name]
			if r.Mode&cpio.S_IFMT != cpio.S_IFREG {
				continue
			}
			data, err := readAll(r)
			if err != nil {
				return nil, err
			}
			rel := strings.TrimPrefix(name, modDir+"/")
			idx.Files[rel] = Digest(data)
			base := path.Base(rel)
			_, isMod := moduleFile(rel)
			if !isMod && !depmodInputs[base] {
				continue
			}
			if isMod {
				if err := idx.depmod.add(rel, data); err != nil {
					return nil, err
				}
				data = depmodStub(data)
			}
			dst := filepath.Join(stubs, filepath.FromSlash(rel))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return nil, fmt.Errorf("initrd cache: %w", err)
			}
			if err := os.WriteFile(dst, data, 0o644); err != nil {
				return nil, fmt.Errorf("initrd cache: %w", err)
			}
		}
	}
	if err := idx.depmod.write(dir); err != nil {
		return nil, err
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, "index.json"), b, 0o644, ""); err != nil {
		var ae *atomicfile.Error
		if !errors.As(err, &ae) || ae.Op != atomicfile.OpSyncDir {
			return nil, fmt.Errorf("initrd cache: %w", err)
		}
	}
	idx.fill()
	return idx, nil
}

// moduleFile reports whether rel names a kernel module and returns its
// extension.
func moduleFile(rel string) (string, bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(rel, ext) {
			return ext, true
		}
	}
	return "", false
}
