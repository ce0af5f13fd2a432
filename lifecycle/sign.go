package lifecycle

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/tree"
)

// signer signs built modules with the kernel's own scripts/sign-file.
type signer struct {
	file, hash, key, cert string
	// kernelTool: file is the kernel's sign-file, chosen by default,
	// whose work inProcess does without a process when the pair allows.
	kernelTool bool
	inProcess  *inProcessSigner
}

// prepareSigning decides how modules for kernel are signed, printing what
// dkms 3.0.10 prints in its order (sign command, key, certificate). A nil
// signer means modules are not signed (the reason has been reported). The
// MOK key pair, when missing, is generated when the first module is
// signed (ready), so that a build refused later leaves no key behind.
func (e *Env) prepareSigning(ctx context.Context, k buildKernel) (*signer, error) {
	kernel := k.Version
	fw, err := tree.ReadFramework(ctx, e.Layout.ConfDir, kernel, e.Environ, &lineWriter{sink: e.Sink, typ: Warning})
	if err != nil {
		return nil, fmt.Errorf("read framework.conf for signing: %w", err)
	}
	// try_sign_modules: "false" never signs; anything but "true" acts as
	// "not_in_chroot" (the default), which does not sign, nor make a MOK
	// key, inside a chroot (an image being built: the key would be
	// enrolled on no machine).
	switch {
	case fw.TrySignModules == "false":
		e.info("Module signing is disabled by policy, modules won't be signed")
		return nil, nil
	case fw.TrySignModules != "true" && probeChroot(e.Environ).inChroot():
		e.info("Running in chroot, modules won't be signed")
		return nil, nil
	}
	s := &signer{file: fw.SignFile}
	if s.file == "" {
		s.file = e.defaultSignFile(e.Distro.Row(), kernel, k.BuildDir)
		s.kernelTool = filepath.Base(s.file) == "sign-file"
	}
	e.info("Sign command: %s", s.file)
	if fi, err := os.Stat(s.file); err != nil || fi.Mode().Perm()&0o111 == 0 {
		e.info("Binary %s not found, modules won't be signed", s.file)
		return nil, nil
	}
	var ok bool
	if s.key, s.cert, ok = e.signingPair(ctx, fw, &k); !ok {
		return nil, nil
	}
	// dkms 3.0.10 guessed sha512 for a kernel without module signing;
	// dkms 3.1 does not sign for it, and neither does dkmsd.
	if k.ConfigFile == "" {
		e.info("Kernel config %s not found, modules won't be signed", filepath.Join(k.BuildDir, ".config"))
		return nil, nil
	}
	if s.hash = k.Config["CONFIG_MODULE_SIG_HASH"]; s.hash == "" {
		e.info("The kernel is built without module signing facility, modules won't be signed")
		return nil, nil
	}
	return s, nil
}

// ready makes sure the key pair exists before the first module is signed;
// false means modules are not signed (the reason has been reported).
func (s *signer) ready(ctx context.Context, e *Env) (bool, error) {
	ok, err := e.ensureMOK(ctx, s.key, s.cert)
	if ok && s.kernelTool && s.inProcess == nil {
		// A pair it cannot use is the tool's to sign with, or to refuse.
		s.inProcess, _ = newInProcessSigner(s.hash, s.key, s.cert)
	}
	return ok, err
}

// ensureMOK makes sure the key and certificate exist. It never replaces
// or deletes a private key (users enrol its certificate in their
// firmware): a key without its certificate gets the certificate made
// from it; a certificate without its key is refused; only when both are
// missing is a pair generated, and only in directories that exist. ok is
// false when modules cannot be signed (the reason has been said).
func (e *Env) ensureMOK(ctx context.Context, key, cert string) (ok bool, err error) {
	if strings.HasPrefix(key, "pkcs11:") {
		return true, nil
	}
	e.mokMu.Lock()
	defer e.mokMu.Unlock()
	tmpKey, tmpCert := key+".dkmsd-new", cert+".dkmsd-new"
	os.Remove(tmpKey) // left by a killed generation; never a finished file
	os.Remove(tmpCert)
	haveKey, haveCert := exists(key), exists(cert)
	switch {
	case haveKey && haveCert:
		return true, nil
	case !haveKey && haveCert:
		e.info("Key file %s not found and can't be generated, modules won't be signed", key)
		e.warn("Warning: the certificate %s is kept: it may be enrolled. Put its key back at %s, or remove the certificate to have a new pair made.", cert, key)
		return false, nil
	}
	if _, err := exec.LookPath("openssl"); err != nil {
		e.info("Certificate or key are missing, generating self signed certificate for MOK...")
		e.info("openssl not found, can't generate key and certificate.")
		return false, nil
	}
	if !isDir(filepath.Dir(cert)) {
		e.info("Certificate file %s not found and can't be generated, modules won't be signed", cert)
		return false, nil
	}
	var out strings.Builder
	subject := []string{"-days", "36500", "-subj", "/CN=DKMS module signing key", "-addext", "extendedKeyUsage=codeSigning", "-outform", "DER", "-out", tmpCert}
	if haveKey {
		// The key is kept byte for byte; only the certificate is new.
		e.info("Certificate file %s not found, making it from the existing key %s...", cert, key)
		err = runArgv(ctx, "", e.Environ, &out, append([]string{"openssl", "req", "-new", "-x509", "-key", key}, subject...)...)
	} else {
		if !isDir(filepath.Dir(key)) {
			e.info("Key file %s not found and can't be generated, modules won't be signed", key)
			return false, nil
		}
		e.info("Certificate or key are missing, generating self signed certificate for MOK...")
		err = runArgv(ctx, "", e.Environ, &out, append([]string{"openssl", "req", "-new", "-x509", "-nodes", "-newkey", "rsa:2048", "-keyout", tmpKey}, subject...)...)
	}
	if err != nil {
		os.Remove(tmpKey)
		os.Remove(tmpCert)
		return false, &Error{Kind: KindMOK, Lines: []string{"Could not generate the MOK signing key and certificate:", strings.TrimSpace(out.String())}, Err: err}
	}
	if !haveKey {
		if err := os.Chmod(tmpKey, 0o600); err != nil {
			return false, err
		}
		if err := syncFile(tmpKey); err != nil {
			return false, diskError(key, err)
		}
		// The key first: a crash before the certificate's rename leaves a
		// key alone, which the next run completes with its certificate. A
		// certificate alone could never get its key back.
		if err := os.Rename(tmpKey, key); err != nil {
			return false, diskError(key, err)
		}
	}
	if err := syncFile(tmpCert); err != nil {
		return false, diskError(cert, err)
	}
	if err := os.Rename(tmpCert, cert); err != nil {
		return false, diskError(cert, err)
	}
	return true, nil
}

// syncFile flushes a file's data to disk before it is renamed into place.
func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// sign signs one uncompressed module file in place, running sign-file in
// env.
func (s *signer) sign(ctx context.Context, env []string, ko string) error {
	if s.inProcess != nil {
		if err := s.inProcess.sign(ko); err != nil {
			return fmt.Errorf("sign %s: %w", ko, err)
		}
		return nil
	}
	var out strings.Builder
	if err := runArgv(ctx, "", env, &out, s.file, s.hash, s.key, s.cert, ko); err != nil {
		return fmt.Errorf("sign %s: %v: %s", ko, err, strings.TrimSpace(out.String()))
	}
	return nil
}

// GenerateMOK makes sure the MOK signing key and certificate exist,
// generating them if needed, and reports where they are.
func GenerateMOK(ctx context.Context, e *Env) error {
	fw, err := tree.ReadFramework(ctx, e.Layout.ConfDir, "", e.Environ, &lineWriter{sink: e.Sink, typ: Warning})
	if err != nil {
		return err
	}
	key, cert, ok := e.signingPair(ctx, fw, nil)
	if !ok {
		return fail(KindMOK, "The MOK signing key and certificate could not be generated.")
	}
	ok, err = e.ensureMOK(ctx, key, cert)
	if err != nil {
		return err
	}
	if !ok {
		return fail(KindMOK, "The MOK signing key and certificate could not be generated.")
	}
	return nil
}

// trimLastComponent is ${k%.*}: 6.1.0-56-amd64 → 6.1.
func trimLastComponent(k string) string {
	if i := strings.LastIndex(k, "."); i >= 0 {
		return k[:i]
	}
	return k
}
