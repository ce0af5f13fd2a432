package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// dropMOKEnv takes the shared test key (mok_* in the environment) off
// b's commands, so they sign with what the root itself says.
func (b *batchRoot) dropMOKEnv() {
	b.env = slices.DeleteFunc(slices.Clone(b.env), func(kv string) bool {
		return strings.HasPrefix(kv, "mok_signing_key=") || strings.HasPrefix(kv, "mok_certificate=")
	})
}

// mokRoot is a batch root whose commands sign with the key pair at key
// and cert (paths in the root), through framework.conf.
func mokRoot(t *testing.T, key, cert string) *batchRoot {
	t.Helper()
	b := newBatchRoot(t)
	b.dropMOKEnv()
	writeFramework(t, b, "mok_signing_key="+b.path(key)+"\nmok_certificate="+b.path(cert))
	b.cloneHello(t, "dkmsd_hello", "1.0", nil, nil)
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	return b
}

// pairMatches signs data with key and verifies the signature with the
// public key of cert, as a module's signature is checked.
func pairMatches(t *testing.T, key, cert string) bool {
	t.Helper()
	dir := t.TempDir()
	data, sig, pub := filepath.Join(dir, "data"), filepath.Join(dir, "sig"), filepath.Join(dir, "pub.pem")
	if err := os.WriteFile(data, []byte("dkmsd"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.MustRun(t, "openssl", "dgst", "-sha256", "-sign", key, "-out", sig, data)
	testkit.MustRun(t, "sh", "-c", "openssl x509 -inform DER -in '"+cert+"' -pubkey -noout > '"+pub+"'")
	return exec.Command("openssl", "dgst", "-sha256", "-verify", pub, "-signature", sig, data).Run() == nil
}

// TestMOKKeyKeptWhenCertificateMissing: the private key is never
// replaced. A key whose certificate is gone gets the certificate made
// from it (the key byte for byte the same, the module signed by it); a
// certificate whose key is gone is kept and nothing is signed; a
// configured path in a directory that does not exist gets no directory
// made; a key and certificate that are not a pair fail the build instead
// of installing an unsigned module.
func TestMOKKeyKeptWhenCertificateMissing(t *testing.T) {
	t.Parallel()
	b := mokRoot(t, "var/lib/dkms/mok.key", "var/lib/dkms/mok.pub")
	k := b.kernels[0]
	key, cert := b.path("var/lib/dkms/mok.key"), b.path("var/lib/dkms/mok.pub")
	b.mustRun(t, "generate_mok")
	orig := mustReadFile(t, key)
	if !pairMatches(t, key, cert) {
		t.Fatal("generate_mok made a key and certificate that are not a pair")
	}

	if err := os.Remove(cert); err != nil {
		t.Fatal(err)
	}
	r := b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
	if !bytes.Equal(mustReadFile(t, key), orig) {
		t.Errorf("the private key changed when its certificate was missing\n%s", r.Stdout)
	}
	if !strings.Contains(r.Stdout, "Certificate file "+cert+" not found, making it from the existing key "+key+"...") {
		t.Errorf("build did not say it made the certificate from the key:\n%s", r.Stdout)
	}
	if !pairMatches(t, key, cert) {
		t.Error("the certificate made from the key does not match it")
	}
	if signer := testkit.MustRun(t, "modinfo", "-F", "signer", onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k))); strings.TrimSpace(signer) != "DKMS module signing key" {
		t.Errorf("module signer %q", signer)
	}

	// A certificate without its key: kept, nothing generated, unsigned.
	b.mustRun(t, "unbuild", "dkmsd_hello/1.0", "-k", k)
	certBytes := mustReadFile(t, cert)
	if err := os.Rename(key, key+".away"); err != nil {
		t.Fatal(err)
	}
	r = b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
	if !strings.Contains(r.Stdout, "Key file "+key+" not found and can't be generated, modules won't be signed") {
		t.Errorf("build with the key gone:\n%s\n%s", r.Stdout, r.Stderr)
	}
	if _, err := os.Stat(key); err == nil {
		t.Error("a new key was generated beside a certificate that may be enrolled")
	}
	if !bytes.Equal(mustReadFile(t, cert), certBytes) {
		t.Error("the certificate changed while its key was missing")
	}
	if err := os.Rename(key+".away", key); err != nil {
		t.Fatal(err)
	}

	// A key and certificate that are not a pair: the build fails, says
	// why, and leaves nothing built.
	b.mustRun(t, "unbuild", "dkmsd_hello/1.0", "-k", k)
	other := t.TempDir()
	testkit.MustRun(t, "openssl", "req", "-new", "-x509", "-nodes", "-days", "1", "-subj", "/CN=other", "-newkey", "rsa:2048",
		"-keyout", filepath.Join(other, "k"), "-outform", "DER", "-out", cert)
	r = b.run(t, "build", "dkmsd_hello/1.0", "-k", k)
	if r.Code != 10 || !strings.Contains(r.Stderr, "Failed to sign module") || !strings.Contains(r.Stderr, "check that "+key+" and "+cert+" are a key and its certificate") {
		t.Errorf("build with a mismatched pair: exit %d, want 10 naming the pair\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
	}
	if _, err := os.Stat(b.path("var/lib/dkms/dkmsd_hello/1.0", k)); err == nil {
		t.Error("a build whose signing failed was kept")
	}
}

// TestMOKNoDirectoryMadeForBadPath: a configured key in a directory that
// does not exist is not generated and no directory is made; the module
// is built unsigned, as dkms says.
func TestMOKNoDirectoryMadeForBadPath(t *testing.T) {
	t.Parallel()
	b := mokRoot(t, "no/such/path.key", "no/such/path.pub")
	r := b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", b.kernels[0])
	if !strings.Contains(r.Stdout, "can't be generated, modules won't be signed") {
		t.Errorf("build output:\n%s", r.Stdout)
	}
	if _, err := os.Stat(b.path("no")); err == nil {
		t.Errorf("%s was created", b.path("no"))
	}
}

// TestMOKGenerationKilledNeverMismatched kills generate_mok with SIGKILL
// at moments spread over its run: after each kill, a key and certificate
// that are both there are a pair, and the next generate_mok leaves a
// pair that signs and verifies.
func TestMOKGenerationKilledNeverMismatched(t *testing.T) {
	// Not t.Parallel: timing-bound (docs/testing.md, "Using both cores").
	b := mokRoot(t, "var/lib/dkms/mok.key", "var/lib/dkms/mok.pub")
	key, cert := b.path("var/lib/dkms/mok.key"), b.path("var/lib/dkms/mok.pub")
	start := time.Now()
	b.mustRun(t, "generate_mok")
	dur := time.Since(start)
	const kills = 24
	landed := 0
	for i := 0; i < kills; i++ {
		os.Remove(key)
		os.Remove(cert)
		cmd := b.command(t.Context(), b.env, "generate_mok")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(dur * time.Duration(i) / kills):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			landed++
		}
		haveKey, haveCert := fileExists(key), fileExists(cert)
		if haveKey && haveCert && !pairMatches(t, key, cert) {
			t.Fatalf("kill %d at %v: a key and certificate that are not a pair", i, dur*time.Duration(i)/kills)
		}
		if !haveKey && haveCert {
			t.Fatalf("kill %d: a certificate without its key, which could never be completed", i)
		}
		b.mustRun(t, "generate_mok")
		if !pairMatches(t, key, cert) {
			t.Fatalf("kill %d: generate_mok after the kill left a key and certificate that are not a pair", i)
		}
		if left, _ := filepath.Glob(b.path("var/lib/dkms/*.dkmsd-new")); len(left) > 0 {
			t.Errorf("kill %d: temporary files left: %v", i, left)
		}
	}
	t.Logf("%d of %d runs killed while generating (generate_mok takes about %v)", landed, kills, dur)
	if landed < kills/2 {
		t.Errorf("only %d kills landed", landed)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
