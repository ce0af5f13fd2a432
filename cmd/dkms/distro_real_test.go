package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/lifecycle/secureboot"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// ubuntuRoot is a batch root whose os-release says Ubuntu, signing with
// the distribution's defaults (no mok_* in the environment).
func ubuntuRoot(t *testing.T) *batchRoot {
	t.Helper()
	b := newBatchRoot(t)
	b.dropMOKEnv()
	writeRootFile(t, b.root, "etc/os-release", "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\n", 0o644)
	return b
}

// TestUbuntuShimMOKRealHeaders: on Ubuntu, modules are signed by kmodsign
// with the MOK shim-signed enrolled at install time
// (/var/lib/shim-signed/mok/MOK.priv and MOK.der), and no key of dkms's
// own is made. The running kernel's keyrings (a /proc/keys without that
// certificate) and Secure Boot on make the build say that the key is not
// enrolled, with the command that enrols it. Then the key changes, and
// `dkms sign` signs the module again (resignAfterKeyChange).
func TestUbuntuShimMOKRealHeaders(t *testing.T) {
	b := ubuntuRoot(t)
	k := b.kernels[0]
	mok := b.path("var/lib/shim-signed/mok")
	if err := os.MkdirAll(mok, 0o700); err != nil {
		t.Fatal(err)
	}
	key, cert := filepath.Join(mok, "MOK.priv"), filepath.Join(mok, "MOK.der")
	testkit.MustRun(t, "openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=Ubuntu shim test MOK",
		"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert)
	// kmodsign is sign-file under another name (same arguments): the
	// kernel's own, found on PATH as Ubuntu's sbsigntool installs it.
	signFile, err := filepath.EvalSymlinks(b.path("lib/modules", k, "build", "scripts", "sign-file"))
	if err != nil {
		testkit.Missing(t, "the kernel's scripts/sign-file (apt-get install -y linux-headers-"+k+")")
	}
	bin := b.path("ubuntu-bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(signFile, filepath.Join(bin, "kmodsign")); err != nil {
		t.Fatal(err)
	}
	for i, kv := range b.env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			b.env[i] = "PATH=" + bin + ":" + v
		}
	}
	writeRootFile(t, b.root, "proc/keys", "11923611 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1\n"+
		"0b4d4e6d I------     1 perm 1f010000     0     0 asymmetri Canonical Ltd. Master Certificate Authority: ad91990bc22ab1f517048c23b6655a268e345a63: X509.rsa 4ad6d9f4 []\n", 0o644)
	writeRootFile(t, b.root, secureboot.SecureBootVar, "\x06\x00\x00\x00\x01", 0o644)

	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	r := b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k, "--no-initrd")
	for _, want := range []string{"Sign command: " + filepath.Join(bin, "kmodsign") + "\n", "Signing key: " + key + "\n", "Public certificate (MOK): " + cert + "\n"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.Stdout)
		}
	}
	ko := onlyKo(t, b.path("lib/modules", k, "updates", "dkms"))
	if signer := strings.TrimSpace(testkit.MustRun(t, "modinfo", "-F", "signer", ko)); signer != "Ubuntu shim test MOK" {
		t.Errorf("module signer %q, want the shim MOK's", signer)
	}
	serial := strings.TrimPrefix(strings.TrimSpace(testkit.MustRun(t, "openssl", "x509", "-inform", "DER", "-in", cert, "-noout", "-serial")), "serial=")
	if sigKey := strings.ReplaceAll(strings.TrimSpace(testkit.MustRun(t, "modinfo", "-F", "sig_key", ko)), ":", ""); !strings.EqualFold(sigKey, serial) {
		t.Errorf("module sig_key %s, want the shim MOK's serial %s", sigKey, serial)
	}
	for _, p := range []string{"var/lib/dkms/mok.key", "var/lib/dkms/mok.pub"} {
		if pathPresent(b.path(p)) {
			t.Errorf("%s was made: Ubuntu's MOK is there", p)
		}
	}
	want := "Warning: the module signing certificate " + cert + " is not enrolled, and Secure Boot is on:"
	if !strings.Contains(r.Stderr, want) || !strings.Contains(r.Stderr, "\n  mokutil --import "+cert+"\n") {
		t.Errorf("stderr does not say the key is not enrolled:\n%s", r.Stderr)
	}
	resignAfterKeyChange(t, b, k, ko)
}

// resignAfterKeyChange: after the key changes (framework.conf's), `dkms
// sign` signs the installed module and its built copy again with the new
// key — one signature, not two — keeps modules.dep, and, the new
// certificate being in none of the kernel's keyrings with Secure Boot now
// off, says so in one line.
func resignAfterKeyChange(t *testing.T, b *batchRoot, k, installed string) {
	t.Helper()
	built := onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k, tree.MachineArch(), "module"))
	key, cert := b.path("newkey/mok.key"), b.path("newkey/mok.der")
	writeRootFile(t, b.root, "newkey/.keep", "", 0o644)
	testkit.MustRun(t, "openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=dkmsd new key",
		"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert)
	writeFramework(t, b, "mok_signing_key="+key, "mok_certificate="+cert)
	if err := os.Remove(b.path(secureboot.SecureBootVar)); err != nil {
		t.Fatal(err)
	}

	r := b.mustRun(t, "sign", "dkmsd_hello/1.0", "-k", k)
	for _, ko := range []string{installed, built} {
		if signer := strings.TrimSpace(testkit.MustRun(t, "modinfo", "-F", "signer", ko)); signer != "dkmsd new key" {
			t.Errorf("%s signed by %q, want the new key", ko, signer)
		}
		data, err := tree.ReadModuleFile(ko)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.HasSuffix(lifecycle.StripSignature(data), []byte("~Module signature appended~\n")) {
			t.Errorf("%s carries two signatures", ko)
		}
		if !strings.Contains(r.Stdout, "Signing module "+ko+"\n") {
			t.Errorf("stdout does not name %s:\n%s", ko, r.Stdout)
		}
	}
	if dep := string(mustReadFile(t, b.path("lib/modules", k, "modules.dep"))); !strings.Contains(dep, "updates/dkms/"+filepath.Base(installed)+":") {
		t.Errorf("modules.dep lacks the module:\n%s", dep)
	}
	if want := lifecycle.EnrollmentAdvice(cert, false) + "\n"; !strings.HasSuffix(r.Stdout, want) {
		t.Errorf("stdout does not end with the enrolment line %q:\n%s", want, r.Stdout)
	}
}

// TestUbuntuNoMOKNoKeyTool: on Ubuntu without the shim-signed MOK and
// without update-secureboot-policy, no key is made (dkms 3.4.3: "Binary
// update-secureboot-policy not found").
func TestUbuntuNoMOKNoKeyTool(t *testing.T) {
	b := ubuntuRoot(t)
	for i, kv := range b.env {
		if strings.HasPrefix(kv, "PATH=") {
			b.env[i] = "PATH=/usr/bin:/bin" // no update-secureboot-policy (Debian has none)
		}
	}
	r := b.run(t, "generate_mok")
	if r.Code == 0 || !strings.Contains(r.Stdout, "Binary update-secureboot-policy not found, modules won't be signed\n") {
		t.Errorf("generate_mok: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	for _, p := range []string{"var/lib/dkms/mok.key", "var/lib/shim-signed/mok/MOK.priv"} {
		if pathPresent(b.path(p)) {
			t.Errorf("%s was made", p)
		}
	}
}
