package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dkmsd/dkmsd/tree"
)

// Add registers <source_tree>/<module>-<version> in the dkms tree (the
// source symlink) and runs its POST_ADD script. kernel and arch are what
// $kernelver and $arch are while the dkms.conf is read.
func Add(ctx context.Context, e *Env, module, version, kernel, arch string) error {
	if err := checkNames(module, version); err != nil {
		return err
	}
	vdir := e.Layout.VersionDir(module, version)
	link := filepath.Join(vdir, "source")
	if mv, ok := e.Layout.Lookup(module, version); ok && !mv.Broken {
		return fail(KindAlreadyAdded, fmt.Sprintf("DKMS tree already contains: %s-%s", module, version),
			"You cannot add the same module/version combo more than once.")
	}
	src := e.Layout.SourceDir(module, version)
	if !isDir(src) {
		return fail(KindNoSource, "Could not find module source directory.", fmt.Sprintf("Directory: %s does not exist.", src))
	}
	confFile := e.ConfFile
	if confFile == "" {
		confFile = filepath.Join(src, "dkms.conf")
	}
	t := Target{Module: module, Version: version, Kernel: kernel, Arch: arch}
	conf, err := e.readConf(ctx, confFile, t, true)
	if err != nil {
		return err
	}
	e.info("Creating symlink %s -> %s", link, src)
	if err := os.MkdirAll(filepath.Join(vdir, "build"), 0o755); err != nil {
		return diskError(vdir, err)
	}
	if err := symlinkAtomic(src, link); err != nil {
		return err
	}
	e.Sink.Emit(Event{Type: Added, Module: module, Version: version})
	if conf.PostAdd != "" {
		ran, err := e.runShownScript(ctx, "post_add", e.scriptDir(module, src, conf.PostAdd), conf.PostAdd)
		if ran && err != nil {
			return &Error{Kind: KindScriptFailed, Code: exitCode(err), Lines: []string{fmt.Sprintf("The post_add script of %s/%s failed (exit status %d).", module, version, exitCode(err))}, Err: err}
		}
	}
	return nil
}

// AddSourceDir copies a directory holding a dkms.conf into the source tree
// as <module>-<version> (unless it is already there) and adds it.
func AddSourceDir(ctx context.Context, e *Env, dir, kernel, arch string) (module, version string, err error) {
	from, err := filepath.Abs(dir)
	if err == nil {
		from, err = filepath.EvalSymlinks(from)
	}
	if err != nil || !exists(filepath.Join(from, "dkms.conf")) {
		return "", "", fail(KindNoDirConf, fmt.Sprintf("%s must contain a dkms.conf file!", dir))
	}
	stderr := &lineWriter{sink: e.Sink, typ: Warning}
	module, version, err = tree.ReadPackageIdentity(ctx, filepath.Join(from, "dkms.conf"), tree.ConfContext{
		Kernel: kernel, Arch: arch, Layout: e.Layout, KernelSourceDir: e.Layout.KernelBuildDir(kernel),
		Distro: e.Distro, Env: e.Environ, Stderr: stderr, Timeout: e.ConfTimeout,
		Wrap: e.confWrap(ctx, Target{Kernel: kernel, Arch: arch}),
	})
	stderr.Flush()
	if err != nil {
		// Every problem of the file is told, as when it is added by name.
		if _, full := e.readConf(ctx, filepath.Join(from, "dkms.conf"), Target{Kernel: kernel, Arch: arch}, false); full != nil {
			return "", "", full
		}
		return "", "", e.reportConfFailure(filepath.Join(from, "dkms.conf"), err)
	}
	if mv, ok := e.Layout.Lookup(module, version); ok && !mv.Broken {
		return "", "", fail(KindAlreadyAdded, fmt.Sprintf("DKMS tree already contains: %s-%s", module, version),
			"You cannot add the same module/version combo more than once.")
	}
	// Validate the whole dkms.conf before anything is copied.
	if _, err := e.readConf(ctx, filepath.Join(from, "dkms.conf"), Target{Module: module, Version: version, Kernel: kernel, Arch: arch}, false); err != nil {
		return "", "", err
	}
	dest := e.Layout.SourceDir(module, version)
	if e.Force && isDir(dest) && dest != from {
		e.info("Forcing install of %s-%s", module, version)
		if err := os.RemoveAll(dest); err != nil {
			return "", "", fmt.Errorf("replace %s: %w", dest, err)
		}
	}
	vdir := e.Layout.VersionDir(module, version)
	switch from {
	case dest, filepath.Join(vdir, "source"), filepath.Join(vdir, "build"):
	default:
		if err := copySourceInto(from, dest); err != nil {
			return "", "", err
		}
	}
	return module, version, Add(ctx, e, module, version, kernel, arch)
}

// copySourceInto copies a module source into dest through a temporary
// sibling, so an interrupted copy never leaves a half source tree behind.
// An existing dest is merged into, as cp does.
func copySourceInto(from, dest string) error {
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return diskError(dest, err)
	}
	if isDir(dest) {
		tmp, err := os.MkdirTemp(filepath.Dir(dest), ".dkmsd-src-*")
		if err != nil {
			return diskError(dest, err)
		}
		defer os.RemoveAll(tmp)
		if err := copyTree(from, filepath.Join(tmp, "s")); err != nil {
			return err
		}
		return mergeTree(filepath.Join(tmp, "s"), dest)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dest), ".dkmsd-src-*")
	if err != nil {
		return diskError(dest, err)
	}
	if err := copyTree(from, filepath.Join(tmp, "s")); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(filepath.Join(tmp, "s"), dest); err != nil {
		os.RemoveAll(tmp)
		return diskError(dest, err)
	}
	return os.RemoveAll(tmp)
}

// mergeTree moves every file of src into dst, replacing same-named files.
func mergeTree(src, dst string) error {
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		}
		if fi, err := os.Lstat(target); err == nil && fi.IsDir() {
			return fmt.Errorf("merge %s: %s is a directory", p, target)
		}
		return os.Rename(p, target)
	})
}

// checkNames refuses a module or version that would leave its tree.
func checkNames(module, version string) error {
	if module == "" || version == "" {
		return fail(KindMissingArgs, "Arguments <module> and <module-version> are not specified.")
	}
	for _, n := range []string{module, version} {
		if n == "." || n == ".." || filepath.Base(n) != n || n != filepath.Clean(n) {
			return fail(KindUsage, fmt.Sprintf("Invalid module name or version %q: it must be a single path component.", n))
		}
	}
	return nil
}
