package lifecycle

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
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
	// shown is the dir as dkms prints it: the default one with its
	// trailing slash, --archive's as given.
	dest := filepath.Join(e.Layout.VersionDir(module, version), "tarball")
	shown := dest + "/"
	if opts.Archive != "" {
		name = filepath.Base(opts.Archive)
		if i := strings.LastIndex(opts.Archive, "/"); i >= 0 {
			dest, shown = filepath.Dir(opts.Archive), opts.Archive[:i]
		}
	}
	out := filepath.Join(dest, name)
	e.info("")
	e.info("Tarball location: %s/%s", shown, name)
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
