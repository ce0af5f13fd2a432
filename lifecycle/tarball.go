package lifecycle

import (
	"archive/tar"
	"bytes"
	"compress/bzip2"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/dkmsd/dkmsd/tree"
)

// TarballOptions are mktarball's choices.
type TarballOptions struct {
	SourceOnly, BinariesOnly bool
	// Archive is --archive: a file name, or a path whose directory is
	// where the tarball goes.
	Archive string
}

// MakeTarball writes the dkms tarball of module/version: the layout dkms
// 3.x makes (./dkms_main_tree/<k>/<a>/{module,log}, and ./dkms_source_tree
// or ./dkms_binaries_only), for the targets given (each must be built). It
// returns the tarball's path.
func MakeTarball(ctx context.Context, e *Env, module, version string, targets []Target, opts TarballOptions) (string, error) {
	if err := e.RequireAdded(module, version); err != nil {
		return "", err
	}
	t0 := Target{Module: module, Version: version}
	if len(targets) > 0 {
		t0 = targets[0]
	}
	if _, err := e.readConf(ctx, e.confFile(module, version), t0, false); err != nil {
		return "", err
	}
	var files []tarEntry
	add := func(name, src string) error {
		return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(src, p)
			files = append(files, tarEntry{name: path.Join(name, filepath.ToSlash(rel)), src: p})
			return nil
		})
	}
	kernelList := ""
	files = append(files, tarEntry{name: "dkms_main_tree", dir: true})
	if !opts.SourceOnly && len(targets) == 0 {
		return "", fail(KindNotBuilt, fmt.Sprintf("%s/%s is not built for any kernel.", module, version), "Modules must already be in the built state before using mktarball.")
	}
	if opts.SourceOnly {
		kernelList = "source-only"
	} else {
		for _, t := range targets {
			dir := e.Layout.BuiltDir(module, version, t.Kernel, t.Arch)
			if !isDir(dir) {
				return "", fail(KindNotBuilt, fmt.Sprintf("No modules built for %s (%s).", t.Kernel, t.Arch), "Modules must already be in the built state before using mktarball.")
			}
			e.info("Marking modules for %s (%s) for archiving...", t.Kernel, t.Arch)
			if kernelList != "" {
				kernelList += "-"
			}
			kernelList += "kernel" + t.Kernel + "-" + t.Arch
			if err := add("dkms_main_tree/"+t.Kernel+"/"+t.Arch, dir); err != nil {
				return "", err
			}
		}
	}
	sourceDir := filepath.Join(e.Layout.VersionDir(module, version), "source")
	e.info("")
	if opts.BinariesOnly {
		e.info("Creating tarball structure to specifically accomodate binaries.")
		files = append(files,
			tarEntry{name: "dkms_binaries_only", dir: true},
			tarEntry{name: "dkms_binaries_only/PACKAGE_NAME", data: []byte(module + "\n")},
			tarEntry{name: "dkms_binaries_only/PACKAGE_VERSION", data: []byte(version + "\n")},
			tarEntry{name: "dkms_binaries_only/dkms.conf", src: e.confFile(module, version)})
	} else {
		e.info("Marking %s for archiving...", sourceDir)
		real, err := filepath.EvalSymlinks(sourceDir)
		if err != nil {
			return "", err
		}
		if err := add("dkms_source_tree", real); err != nil {
			return "", err
		}
	}
	if len(kernelList) > 200 {
		kernelList = "manykernels"
	}
	name := fmt.Sprintf("%s-%s-%s.dkms.tar.gz", module, version, kernelList)
	dest := filepath.Join(e.Layout.VersionDir(module, version), "tarball")
	if opts.Archive != "" {
		name = filepath.Base(opts.Archive)
		if strings.Contains(opts.Archive, "/") {
			dest = filepath.Dir(opts.Archive)
		}
	}
	out := filepath.Join(dest, name)
	e.info("")
	e.info("Tarball location: %s", out)
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return "", fail(KindTarballDest, fmt.Sprintf("Missing write permissions for %s.", dest))
	}
	data, err := writeTar(files, name)
	if err != nil {
		return "", &Error{Kind: KindTarball, Lines: []string{"Failed to make tarball: " + err.Error()}, Err: err}
	}
	if err := writeFileAtomic(out, data, 0o644); err != nil {
		return "", err
	}
	return out, nil
}

// tarEntry is one member of a tarball being made: a file or dir from the
// disk (src), or literal data.
type tarEntry struct {
	name string
	src  string
	data []byte
	dir  bool
}

// writeTar makes the tarball, compressed by its name's extension like
// `tar -caf`: .gz/.tgz gzip, .xz, .zst, or none for .tar.
func writeTar(entries []tarEntry, name string) ([]byte, error) {
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	now := time.Now().Truncate(time.Second)
	seen := map[string]bool{}
	mkdirs := func(name string) error {
		var parents []string
		for d := path.Dir(name); d != "." && !seen[d]; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			seen[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "./" + d + "/", Mode: 0o755, ModTime: now}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, en := range entries {
		if err := mkdirs(en.name); err != nil {
			return nil, err
		}
		if seen[en.name] {
			continue
		}
		seen[en.name] = true
		hdr := &tar.Header{Name: "./" + en.name, Mode: 0o644, ModTime: now}
		var body []byte
		switch {
		case en.dir:
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
		case en.src != "":
			fi, err := os.Lstat(en.src)
			if err != nil {
				return nil, err
			}
			// Whole seconds, rounded down: tar's default rounding dates
			// members up to half a second in the future.
			hdr.Mode, hdr.ModTime = int64(fi.Mode().Perm()), fi.ModTime().Truncate(time.Second)
			switch {
			case fi.IsDir():
				hdr.Typeflag, hdr.Name = tar.TypeDir, hdr.Name+"/"
			case fi.Mode()&os.ModeSymlink != 0:
				target, err := os.Readlink(en.src)
				if err != nil {
					return nil, err
				}
				hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
			case fi.Mode().IsRegular():
				if body, err = os.ReadFile(en.src); err != nil {
					return nil, err
				}
			default:
				continue
			}
		default:
			body = en.data
		}
		hdr.Size = int64(len(body))
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	var w io.WriteCloser
	var err error
	switch {
	case strings.HasSuffix(name, ".gz"), strings.HasSuffix(name, ".tgz"):
		w, err = gzip.NewWriterLevel(&out, gzip.DefaultCompression)
	case strings.HasSuffix(name, ".xz"):
		w, err = xz.NewWriter(&out)
	case strings.HasSuffix(name, ".zst"):
		w, err = zstd.NewWriter(&out)
	case strings.HasSuffix(name, ".tar"):
		return raw.Bytes(), nil
	default:
		return nil, fmt.Errorf("cannot tell the compression of %s (use .tar, .tar.gz, .tar.xz or .tar.zst)", name)
	}
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(raw.Bytes()); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

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

// LoadTarball loads a dkms tarball (or a plain source tarball) into the
// tree: sources into the source tree, prebuilt modules into the dkms tree
// in the built state. Nothing is written before the whole archive has been
// checked; existing modules and builds are kept unless Force is set.
func LoadTarball(ctx context.Context, e *Env, archive string, limit int64) (module, version string, err error) {
	if !exists(archive) {
		return "", "", fail(KindNoArchive, archive+" does not exist.")
	}
	if limit <= 0 {
		limit = DefaultTarballLimit
	}
	tr, closer, err := openTar(archive)
	if err != nil {
		return "", "", &Error{Kind: KindBadTarball, Lines: []string{fmt.Sprintf("%s: %v", archive, err)}, Err: err}
	}
	err = CheckTarball(tr, limit)
	closer.Close()
	if err != nil {
		return "", "", &Error{Kind: KindBadTarball, Lines: []string{fmt.Sprintf("Refusing %s: %v.", archive, err), "Nothing was written."}, Err: err}
	}
	tmp, err := os.MkdirTemp(e.Layout.TmpDir, "dkms.")
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
	tr, closer, err = openTar(archive)
	if err != nil {
		return "", "", err
	}
	err = extractTar(tr, tmp)
	closer.Close()
	if err != nil {
		return "", "", fmt.Errorf("unpack %s: %w", archive, err)
	}
	if !isDir(filepath.Join(tmp, "dkms_main_tree")) && !exists(filepath.Join(tmp, "dkms_source_tree", "dkms.conf")) && !exists(filepath.Join(tmp, "dkms_binaries_only", "dkms.conf")) {
		// A plain source tarball: the first dkms.conf in it is the module.
		conf := firstConf(tmp)
		if conf == "" {
			return "", "", fail(KindNoConfInTarball, "Tarball does not appear to be a correctly formed DKMS archive. No dkms.conf found within it.")
		}
		return AddSourceDir(ctx, e, filepath.Dir(conf), "", "")
	}
	loc := ""
	for _, l := range []string{"dkms_source_tree", "dkms_binaries_only"} {
		if exists(filepath.Join(tmp, l, "dkms.conf")) {
			loc = l
			break
		}
	}
	if loc == "" {
		return "", "", fail(KindNoConfInTarball, "No valid dkms.conf in dkms_source_tree or dkms_binaries_only.", archive+" is not a valid DKMS tarball.")
	}
	conf := filepath.Join(tmp, loc, "dkms.conf")
	stderr := &lineWriter{sink: e.Sink, typ: Warning}
	module, version, err = tree.ReadPackageIdentity(ctx, conf, tree.ConfContext{Layout: e.Layout, Distro: e.Distro, Env: e.Environ, Stderr: stderr, Timeout: e.ConfTimeout})
	stderr.Flush()
	if err != nil {
		return "", "", confFailure(archive+": "+loc+"/dkms.conf", err)
	}
	if loc == "dkms_binaries_only" {
		for file, want := range map[string]string{"PACKAGE_NAME": module, "PACKAGE_VERSION": version} {
			if b, err := os.ReadFile(filepath.Join(tmp, loc, file)); err == nil && strings.TrimSpace(string(b)) != want {
				return "", "", fail(KindBadTarball, fmt.Sprintf("Refusing %s: dkms_binaries_only/%s says %q but its dkms.conf says %q.", archive, file, strings.TrimSpace(string(b)), want), "Nothing was written.")
			}
		}
	}
	// Validate the whole dkms.conf before anything is written.
	if _, err := e.readConf(ctx, conf, Target{Module: module, Version: version}, false); err != nil {
		return "", "", err
	}
	builds, err := tarballBuilds(tmp)
	if err != nil {
		return "", "", &Error{Kind: KindBadTarball, Lines: []string{fmt.Sprintf("Refusing %s: %v.", archive, err), "Nothing was written."}, Err: err}
	}
	if _, added := e.Layout.Lookup(module, version); added && !e.Force {
		return "", "", fail(KindTarballAdded, fmt.Sprintf("%s-%s is already added!", module, version), "Aborting.")
	}
	e.info("")
	e.info("Loading tarball for %s-%s", module, version)
	srcInTree := e.Layout.SourceDir(module, version)
	switch {
	case loc == "dkms_source_tree":
		if isDir(srcInTree) && !e.Force {
			e.warn("Warning: %s already exists; keeping it (use --force to replace it).", srcInTree)
		} else {
			if e.Force {
				os.RemoveAll(srcInTree)
			}
			if err := copySourceInto(filepath.Join(tmp, loc), srcInTree); err != nil {
				return "", "", err
			}
		}
	case !isDir(srcInTree):
		stub := filepath.Join(e.Layout.VersionDir(module, version), "source")
		e.info("Creating %s", stub)
		if err := os.MkdirAll(stub, 0o755); err != nil {
			return "", "", diskError(stub, err)
		}
		e.info("Copying dkms.conf to %s ...", stub)
		if err := copyFileAtomic(conf, filepath.Join(stub, "dkms.conf")); err != nil {
			return "", "", err
		}
	}
	for _, ka := range builds {
		dst := filepath.Join(e.Layout.VersionDir(module, version), ka)
		if isDir(dst) && !e.Force {
			e.warn("Warning: %s already exists. Skipping...", dst)
			continue
		}
		e.info("Loading %s...", dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", "", diskError(dst, err)
		}
		stage, err := os.MkdirTemp(filepath.Dir(dst), ".tmp_load_")
		if err != nil {
			return "", "", diskError(dst, err)
		}
		if err := copyTree(filepath.Join(tmp, "dkms_main_tree", ka), filepath.Join(stage, "b")); err != nil {
			os.RemoveAll(stage)
			return "", "", err
		}
		err = replaceDir(filepath.Join(stage, "b"), dst)
		os.RemoveAll(stage)
		if err != nil {
			return "", "", err
		}
	}
	if mv, added := e.Layout.Lookup(module, version); !added || mv.Broken {
		if isDir(srcInTree) {
			if err := Add(ctx, e, module, version, "", ""); err != nil {
				return "", "", err
			}
		}
	}
	return module, version, nil
}

// tarballBuilds lists the <kernel>/<arch> dirs under dkms_main_tree.
func tarballBuilds(dir string) ([]string, error) {
	kernels, err := os.ReadDir(filepath.Join(dir, "dkms_main_tree"))
	if os.IsNotExist(err) {
		return nil, nil // a source-only tarball
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range kernels {
		if !k.IsDir() {
			continue
		}
		if err := checkName(k.Name()); err != nil {
			return nil, err
		}
		arches, _ := os.ReadDir(filepath.Join(dir, "dkms_main_tree", k.Name()))
		for _, a := range arches {
			if a.IsDir() {
				out = append(out, k.Name()+"/"+a.Name())
			}
		}
	}
	return out, nil
}

func checkName(n string) error {
	if n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
		return errors.New("bad kernel directory name " + n)
	}
	return nil
}

// firstConf finds the first dkms.conf under dir, in name order.
func firstConf(dir string) string {
	found := ""
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && found == "" && !d.IsDir() && d.Name() == "dkms.conf" {
			found = p
		}
		return nil
	})
	return found
}
