package lifecycle

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestInProcessSignatureIsSignFiles: for each key form dkms and the
// kernel use (PKCS#8 key and DER certificate, PKCS#1 and PEM, both in one
// PEM file) and each CONFIG_MODULE_SIG_HASH, what dkmsd appends to a
// module is byte for byte what the kernel's own scripts/sign-file
// appends (RSA PKCS#1 v1.5 is deterministic, so equal bytes are the
// proof); a certificate that is not the key's is left to sign-file.
func TestInProcessSignatureIsSignFiles(t *testing.T) {
	openssl := testkit.RequireTool(t, "openssl", "openssl")
	k := testkit.Kernels(t, 1)[0]
	signFile, err := filepath.EvalSymlinks(filepath.Join("/lib/modules", k, "build", "scripts", "sign-file"))
	if err != nil {
		testkit.Missing(t, "the kernel's scripts/sign-file (linux-kbuild): "+err.Error())
	}
	dir := t.TempDir()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	// dkms's pair (PKCS#8 key, DER certificate), as ensureMOK makes it;
	// and a PKCS#1 key with a PEM certificate.
	run(openssl, "req", "-new", "-x509", "-nodes", "-newkey", "rsa:2048", "-keyout", p("mok.key"), "-days", "36500",
		"-subj", "/CN=DKMS module signing key", "-addext", "extendedKeyUsage=codeSigning", "-outform", "DER", "-out", p("mok.pub"))
	run(openssl, "genrsa", "-traditional", "-out", p("rsa.key"), "2048")
	run(openssl, "req", "-new", "-x509", "-key", p("rsa.key"), "-days", "30", "-subj", "/CN=other/O=dkmsd test", "-out", p("rsa.pem"))
	// The kernel's signing_key.pem form: key and certificate in one file.
	key, _ := os.ReadFile(p("rsa.key"))
	cert, _ := os.ReadFile(p("rsa.pem"))
	if err := os.WriteFile(p("combined.pem"), append(key, cert...), 0o600); err != nil {
		t.Fatal(err)
	}
	module := make([]byte, 200_000)
	if _, err := rand.Read(module); err != nil {
		t.Fatal(err)
	}
	pairs := [][2]string{{p("mok.key"), p("mok.pub")}, {p("rsa.key"), p("rsa.pem")}, {p("combined.pem"), p("combined.pem")}}
	for _, hash := range []string{"sha1", "sha224", "sha256", "sha384", "sha512"} {
		for _, pair := range pairs {
			want := p("want.ko")
			if err := os.WriteFile(want, module, 0o644); err != nil {
				t.Fatal(err)
			}
			run(signFile, hash, pair[0], pair[1], want)
			s, err := newInProcessSigner(hash, pair[0], pair[1])
			if err != nil {
				t.Fatalf("%s %s: %v", hash, filepath.Base(pair[0]), err)
			}
			got := p("got.ko")
			if err := os.WriteFile(got, module, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := s.sign(got); err != nil {
				t.Fatal(err)
			}
			w, _ := os.ReadFile(want)
			g, _ := os.ReadFile(got)
			if !bytes.Equal(g, w) {
				t.Errorf("%s with %s: dkmsd's signed module (%d bytes) is not sign-file's (%d bytes); tails:\n%x\n%x",
					hash, filepath.Base(pair[0]), len(g), len(w), g[len(module):], w[len(module):])
			}
		}
	}
	if _, err := newInProcessSigner("sha256", p("mok.key"), p("rsa.pem")); err == nil {
		t.Error("a certificate that is not the key's was taken")
	}
	if _, err := newInProcessSigner("sha256", "pkcs11:token=x", p("rsa.pem")); err == nil {
		t.Error("a PKCS#11 key was taken")
	}
}
