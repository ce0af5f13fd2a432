package lifecycle

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/lifecycle/secureboot"
	"github.com/dkmsd/dkmsd/tree"
)

// sigMagic ends a signed module; struct module_signature (12 bytes, the
// signature's length big-endian in its last 4) comes before it.
const sigMagic = "~Module signature appended~\n"

// ResignOptions says which installed modules `dkms sign` signs again.
type ResignOptions struct {
	// Module and Version ("" for every one) select module versions.
	Module, Version string
	Kernels         []string
	Arch            string
}

// Resign signs again, with the key framework.conf and the distribution
// give now, the installed modules of the kernels (and their built copies
// in the DKMS tree, which a later install copies): after a key change, a
// module signed with the old key would not load (dkms-project/dkms #372).
// Each file is replaced whole (its old signature removed, signed, compressed
// as before, renamed into place), then depmod runs once per kernel. It
// says, as a build does, whether the key is enrolled.
func Resign(ctx context.Context, e *Env, o ResignOptions) error {
	signed := 0
	for _, kernel := range o.Kernels {
		specs, err := e.installedSpecs(ctx, kernel, o.Arch)
		if err != nil {
			return err
		}
		var files []string
		for _, is := range specs {
			if (o.Module != "" && is.t.Module != o.Module) || (o.Version != "" && is.t.Version != o.Version) {
				continue
			}
			builtDir := filepath.Join(e.Layout.BuiltDir(is.t.Module, is.t.Version, kernel, o.Arch), "module")
			built := tree.FindModuleFile(builtDir, is.spec.DestName)
			if f := e.installedCopy(is.t, is.spec, builtDir); f != "" {
				if fi, err := os.Lstat(f); err == nil && fi.Mode()&os.ModeSymlink == 0 {
					files = append(files, f)
				}
			}
			if built != "" {
				files = append(files, built)
			}
		}
		if len(files) == 0 {
			continue
		}
		s, err := e.prepareSigning(ctx, e.buildKernel(kernel))
		if err != nil {
			return err
		}
		if s == nil {
			return fail(KindSignFailed, fmt.Sprintf("Modules for kernel %s cannot be signed.", kernel))
		}
		if ok, err := s.ready(ctx, e); err != nil || !ok {
			return fail(KindSignFailed, fmt.Sprintf("Modules for kernel %s cannot be signed: no key.", kernel))
		}
		for _, f := range files {
			e.info("Signing module %s", f)
			if err := e.resignFile(ctx, s, f); err != nil {
				return fail(KindSignFailed, fmt.Sprintf("Failed to sign module '%s'!", f), err.Error())
			}
			signed++
		}
		if err := e.depmod(ctx, kernel); err != nil {
			return err
		}
		e.sayEnrollment(ctx, s.cert)
	}
	if signed == 0 {
		e.info("No installed module to sign.")
	}
	return nil
}

// resignFile replaces one module file by a copy signed by s.
func (e *Env) resignFile(ctx context.Context, s *signer, path string) error {
	data, err := tree.ReadModuleFile(path)
	if err != nil {
		return err
	}
	data = StripSignature(data)
	suffix := ""
	for _, x := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(path, x) {
			suffix = x
		}
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".dkmsd-sign-")
	if err != nil {
		return diskError(path, err)
	}
	defer os.RemoveAll(dir)
	ko := filepath.Join(dir, strings.TrimSuffix(filepath.Base(path), suffix)+".ko")
	if suffix == "" {
		ko = filepath.Join(dir, filepath.Base(path))
	}
	if err := os.WriteFile(ko, data, 0o644); err != nil {
		return diskError(path, err)
	}
	if err := s.sign(ctx, e.Environ, ko); err != nil {
		return err
	}
	out := ko
	if suffix != "" {
		if out = e.compressModule(ctx, e.Environ, ko, suffix); out == ko {
			return fmt.Errorf("could not compress %s again", ko)
		}
	}
	if err := syncFile(out); err != nil {
		return diskError(path, err)
	}
	if fi, err := os.Stat(path); err == nil {
		os.Chmod(out, fi.Mode().Perm())
	}
	if err := os.Rename(out, path); err != nil {
		return diskError(path, err)
	}
	return nil
}

// StripSignature removes a module's appended signature, if it has one.
func StripSignature(data []byte) []byte {
	if !bytes.HasSuffix(data, []byte(sigMagic)) || len(data) < len(sigMagic)+12 {
		return data
	}
	end := len(data) - len(sigMagic)
	sigLen := int(binary.BigEndian.Uint32(data[end-4 : end]))
	start := end - 12 - sigLen
	if start < 0 {
		return data
	}
	return data[:start]
}

// sayEnrollment is checkEnrollment for `dkms sign`, a command dkms 3.0.10
// lacks: the line for Secure Boot off goes on the terminal too.
func (e *Env) sayEnrollment(ctx context.Context, cert string) {
	st, err := secureboot.Probe{Root: e.Layout.Root, Mokutil: findTool(e.Environ, "mokutil")}.Check(ctx, cert)
	if err == nil && st.Known && !st.Enrolled && !st.Enforced {
		e.info("%s", EnrollmentAdvice(cert, false))
	}
	e.checkEnrollment(ctx, cert)
}
