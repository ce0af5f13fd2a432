package lifecycle

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/dkmsd/dkmsd/tree"
)

// defaultSignFile is the signing command when framework.conf names none:
// the distribution's tool on PATH (Ubuntu's kmodsign), else its
// sign-file, else the kernel's own build/scripts/sign-file.
func (e *Env) defaultSignFile(row tree.DistroRow, kernel, buildDir string) string {
	if row.SignTool != "" {
		if p := findTool(e.Environ, row.SignTool); p != "" {
			return p
		}
	}
	f := strings.NewReplacer("{kernel}", kernel, "{kbuild}", trimLastComponent(kernel)).Replace(row.SignFile)
	if f == "" || !exists(f) {
		f = filepath.Join(buildDir, "scripts", "sign-file")
	}
	return f
}

// signingPair is the key and certificate modules are signed with —
// framework.conf's, else the distribution's own (Ubuntu's shim-signed MOK,
// Gentoo's Portage keys), else dkms's — printed as dkms prints them. ok is
// false when modules are not signed (the reason has been said). k is nil
// outside a build (generate_mok).
func (e *Env) signingPair(ctx context.Context, fw tree.Framework, k *buildKernel) (key, cert string, ok bool) {
	key, cert = fw.MOKSigningKey, fw.MOKCertificate
	row := e.Distro.Row()
	switch {
	case key != "":
	case row.MOKKey != "":
		key, cert = e.Layout.Root+row.MOKKey, e.Layout.Root+row.MOKCert
		if (!exists(key) || !exists(cert)) && !e.runKeyTool(ctx, row.KeyTool, cert) {
			return "", "", false
		}
	case row.PortageKeys:
		key, cert = e.portageKeys(k)
	}
	if key == "" {
		key = e.Layout.MOKKey
	}
	if cert == "" {
		cert = e.Layout.MOKCert
	}
	e.info("Signing key: %s", key)
	e.info("Public certificate (MOK): %s", cert)
	return key, cert, true
}

// runKeyTool makes the distribution's MOK pair with its own tool, as dkms
// 3.4.3 does on Ubuntu: update-secureboot-policy --new-key (which makes
// nothing while a certificate is there, so a lone certificate goes
// first), then --enroll-key, which queues it for MokManager at the next
// boot. A relocated root is never given the machine's tool.
func (e *Env) runKeyTool(ctx context.Context, tool, cert string) bool {
	path := findTool(e.Environ, tool)
	if path == "" {
		e.info("Binary %s not found, modules won't be signed", tool)
		return false
	}
	if e.Layout.Root != "" {
		e.info("Binary %s cannot make keys for the relocated root %s, modules won't be signed", tool, e.Layout.Root)
		return false
	}
	os.Remove(cert)
	e.info("Certificate or key are missing, generating them using %s...", tool)
	var quiet strings.Builder
	_ = runArgv(ctx, "", append(e.Environ, "SHIM_NOTRIGGER=y"), &quiet, path, "--new-key")
	_ = runArgv(ctx, "", e.Environ, &lineWriter{sink: e.Sink, typ: Info}, path, "--enroll-key")
	return true
}

// portageKeys is Gentoo's signing pair: MODULES_SIGN_KEY and
// MODULES_SIGN_CERT from the environment or /etc/portage/make.conf, else
// the kernel's CONFIG_MODULE_SIG_KEY, a PEM holding both (relative to
// the kernel's source dir).
func (e *Env) portageKeys(k *buildKernel) (key, cert string) {
	env := map[string]string{}
	for _, kv := range e.Environ {
		if n, v, ok := strings.Cut(kv, "="); ok {
			env[n] = v
		}
	}
	key, cert = env["MODULES_SIGN_KEY"], env["MODULES_SIGN_CERT"]
	makeConf := makeConfValues(e.Layout.Root + "/etc/portage/make.conf")
	if key == "" {
		key = makeConf["MODULES_SIGN_KEY"]
	}
	if cert == "" {
		cert = makeConf["MODULES_SIGN_CERT"]
	}
	if key == "" && k != nil {
		if v := strings.Trim(k.Config["CONFIG_MODULE_SIG_KEY"], `"`); v != "" {
			if !filepath.IsAbs(v) {
				v = filepath.Join(k.BuildDir, v)
			}
			if real, err := filepath.EvalSymlinks(v); err == nil {
				v = real
			}
			key, cert = v, v
		}
	}
	return key, cert
}

// makeConfValues reads NAME=value lines of a make.conf.
func makeConfValues(path string) map[string]string {
	out := map[string]string{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "="); ok {
			out[n] = strings.ReplaceAll(v, `"`, "")
		}
	}
	return out
}

// findTool is the path of a program on env's PATH, "" when absent.
func findTool(env []string, name string) string {
	p := lookPathIn(name, env)
	if !strings.Contains(p, "/") {
		return ""
	}
	return p
}
