package secureboot

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// procKeys is /proc/keys as a Debian machine shows it to root: the
// trusted keyrings and the distribution's keys in them.
const procKeys = `11923611 I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 1
1fc577ef I------     1 perm 0f0b0000     0     0 keyring   .blacklist: empty
2b4c0f8e I------     1 perm 1f0b0000     0     0 keyring   .platform: 1
3a1d6c55 I------     1 perm 1f0f0000     0     0 keyring   .secondary_trusted_keys: 2
0b4d4e6d I------     1 perm 1f010000     0     0 asymmetri Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1: X509.rsa a7046c9a []
`

// certWithID writes a certificate with the given subject key id.
func certWithID(t *testing.T, dir string, skid []byte) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0x4d2), Subject: pkix.Name{CommonName: "DKMS module signing key"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), SubjectKeyId: skid}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "mok.pub")
	if err := os.WriteFile(p, der, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func write(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCheckProcKeysFixture: a certificate whose key id /proc/keys lists
// is enrolled, one it does not list is not; the SecureBoot variable and
// module.sig_enforce say whether that is enforced; with no /proc/keys
// nothing is known.
func TestCheckProcKeysFixture(t *testing.T) {
	root := t.TempDir()
	skid := []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04}
	cert := certWithID(t, root, skid)
	p := Probe{Root: root}

	st, err := p.Check(t.Context(), cert)
	if err != nil || st.Known {
		t.Fatalf("no /proc/keys: %+v, %v; want unknown", st, err)
	}
	write(t, filepath.Join(root, "proc/keys"), []byte(procKeys))
	if st, _ = p.Check(t.Context(), cert); !st.Known || st.Enrolled || st.Enforced {
		t.Fatalf("without the cert: %+v; want known, not enrolled, not enforced", st)
	}
	write(t, filepath.Join(root, SecureBootVar), []byte{6, 0, 0, 0, 1})
	if st, _ = p.Check(t.Context(), cert); !st.Enforced || st.Enrolled {
		t.Fatalf("SecureBoot=1: %+v; want enforced, not enrolled", st)
	}
	write(t, filepath.Join(root, SecureBootVar), []byte{6, 0, 0, 0, 0})
	if st, _ = p.Check(t.Context(), cert); st.Enforced {
		t.Fatalf("SecureBoot=0: %+v; want not enforced", st)
	}
	write(t, filepath.Join(root, "sys/module/module/parameters/sig_enforce"), []byte("Y\n"))
	if st, _ = p.Check(t.Context(), cert); !st.Enforced {
		t.Fatalf("sig_enforce=Y: %+v; want enforced", st)
	}
	enrolled := procKeys + "21d0b7a2 I------     1 perm 1f010000     0     0 asymmetri DKMS module signing key: deadbeef01020304: X509.ecdsa 01020304 []\n"
	write(t, filepath.Join(root, "proc/keys"), []byte(enrolled))
	if st, _ = p.Check(t.Context(), cert); !st.Enrolled || st.How != "/proc/keys" {
		t.Fatalf("with the cert: %+v; want enrolled from /proc/keys", st)
	}
}

// TestCheckSerialWhenNoSKID: a certificate without a subject key id is
// described by its serial number.
func TestCheckSerialWhenNoSKID(t *testing.T) {
	ids, err := CertIDs(certWithID(t, t.TempDir(), nil))
	if err != nil {
		t.Fatal(err)
	}
	// Go's x509 makes a SKID for CA certificates only; this one has none.
	line := "21d0b7a2 I------     1 perm 1f010000     0     0 asymmetri DKMS module signing key: 04d2: X509.ecdsa 01020304 []"
	if !Trusted(line, ids) {
		t.Fatalf("ids %v do not match %q", ids, line)
	}
	if Trusted("21d0b7a2 I------     1 perm 1f010000     0     0 asymmetri Other: 04d3: X509.rsa 0 []", ids) {
		t.Fatal("another serial matched")
	}
}
