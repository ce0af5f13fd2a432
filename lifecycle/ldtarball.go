package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/tree"
)

// LoadTarball loads a dkms tarball (or a plain source tarball) into the
// tree: sources into the source tree, prebuilt modules into the dkms tree
// in the built state. Nothing is written before the whole archive has been
// checked; existing modules and builds are kept unless Force is set.
func LoadTarball(ctx context.Context, e *Env, archive string, limit int64) (module, version string, err error) {
	tmp, err := e.unpackTarball(archive, limit)
	if err != nil {
		return "", "", err
	}
	defer os.RemoveAll(tmp)
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
	module, version, err = e.tarballIdentity(ctx, archive, tmp, loc)
	if err != nil {
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
	if err := e.loadTarballSource(tmp, loc, conf, module, version); err != nil {
		return "", "", err
	}
	if err := e.loadTarballBuilds(tmp, builds, module, version); err != nil {
		return "", "", err
	}
	if mv, added := e.Layout.Lookup(module, version); !added || mv.Broken {
		if isDir(e.Layout.SourceDir(module, version)) {
			if err := Add(ctx, e, module, version, "", ""); err != nil {
				return "", "", err
			}
		}
	}
	return module, version, nil
}

// unpackTarball checks the whole archive, then unpacks it into a new
// temporary dir, which the caller removes.
func (e *Env) unpackTarball(archive string, limit int64) (string, error) {
	if !exists(archive) {
		return "", fail(KindNoArchive, archive+" does not exist.")
	}
	if limit <= 0 {
		limit = DefaultTarballLimit
	}
	tr, closer, err := openTar(archive)
	if err != nil {
		return "", &Error{Kind: KindBadTarball, Lines: []string{fmt.Sprintf("%s: %v", archive, err)}, Err: err}
	}
	err = CheckTarball(tr, limit)
	closer.Close()
	if err != nil {
		return "", &Error{Kind: KindBadTarball, Lines: []string{fmt.Sprintf("Refusing %s: %v.", archive, err), "Nothing was written."}, Err: err}
	}
	tmp, err := os.MkdirTemp(e.Layout.TmpDir, "dkms.")
	if err != nil {
		return "", err
	}
	tr, closer, err = openTar(archive)
	if err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	err = extractTar(tr, tmp)
	closer.Close()
	if err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("unpack %s: %w", archive, err)
	}
	return tmp, nil
}

// tarballIdentity reads module and version from the dkms.conf at loc,
// checks dkms_binaries_only's own record of them, and validates the whole
// dkms.conf before anything is written.
func (e *Env) tarballIdentity(ctx context.Context, archive, tmp, loc string) (module, version string, err error) {
	conf := filepath.Join(tmp, loc, "dkms.conf")
	stderr := &lineWriter{sink: e.Sink, typ: Warning}
	module, version, err = tree.ReadPackageIdentity(ctx, conf, tree.ConfContext{Layout: e.Layout, Distro: e.Distro, Env: e.Environ, Stderr: stderr, Timeout: e.ConfTimeout})
	stderr.Flush()
	if err != nil {
		return "", "", e.reportConfFailure(archive+": "+loc+"/dkms.conf", err)
	}
	if loc == "dkms_binaries_only" {
		for file, want := range map[string]string{"PACKAGE_NAME": module, "PACKAGE_VERSION": version} {
			if b, err := os.ReadFile(filepath.Join(tmp, loc, file)); err == nil && strings.TrimSpace(string(b)) != want {
				return "", "", fail(KindBadTarball, fmt.Sprintf("Refusing %s: dkms_binaries_only/%s says %q but its dkms.conf says %q.", archive, file, strings.TrimSpace(string(b)), want), "Nothing was written.")
			}
		}
	}
	if _, err := e.readConf(ctx, conf, Target{Module: module, Version: version}, false); err != nil {
		return "", "", err
	}
	return module, version, nil
}

// loadTarballSource puts the archive's sources in the source tree, or for
// a binaries-only archive its dkms.conf where the tree expects the source.
func (e *Env) loadTarballSource(tmp, loc, conf, module, version string) error {
	srcInTree := e.Layout.SourceDir(module, version)
	switch {
	case loc == "dkms_source_tree":
		if isDir(srcInTree) && !e.Force {
			e.warn("Warning: %s already exists; keeping it (use --force to replace it).", srcInTree)
			return nil
		}
		if e.Force && isDir(srcInTree) {
			e.warn("")
			e.info("Forcing install of %s-%s", module, version)
			os.RemoveAll(srcInTree)
		}
		return copySourceInto(filepath.Join(tmp, loc), srcInTree)
	case !isDir(srcInTree):
		stub := filepath.Join(e.Layout.VersionDir(module, version), "source")
		e.info("Creating %s", stub)
		if err := os.MkdirAll(stub, 0o755); err != nil {
			return diskError(stub, err)
		}
		e.info("Copying dkms.conf to %s ...", stub)
		return copyFileAtomic(conf, filepath.Join(stub, "dkms.conf"))
	}
	return nil
}

// loadTarballBuilds puts each prebuilt <kernel>/<arch> in the tree, whole
// or not at all; existing ones are kept unless Force is set.
func (e *Env) loadTarballBuilds(tmp string, builds []string, module, version string) error {
	for _, ka := range builds {
		dst := filepath.Join(e.Layout.VersionDir(module, version), ka)
		if isDir(dst) && !e.Force {
			e.warn("Warning: %s already exists. Skipping...", dst)
			continue
		}
		e.info("Loading %s...", dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return diskError(dst, err)
		}
		stage, err := os.MkdirTemp(filepath.Dir(dst), ".tmp_load_")
		if err != nil {
			return diskError(dst, err)
		}
		if err := copyTree(filepath.Join(tmp, "dkms_main_tree", ka), filepath.Join(stage, "b")); err != nil {
			os.RemoveAll(stage)
			return err
		}
		err = replaceDir(filepath.Join(stage, "b"), dst)
		os.RemoveAll(stage)
		if err != nil {
			return err
		}
	}
	return nil
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
