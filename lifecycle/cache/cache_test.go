package cache

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newKey(t *testing.T, dir, name string) (ed25519.PrivateKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(pub)
	file := filepath.Join(dir, name+".pub")
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return priv, file
}

var testKey = Key{Module: "m", Version: "1", Kernel: "k", Arch: "x86_64", Source: "sha256:s", ABI: "sha256:a", Recipe: Recipe}

// TestFileCacheRefusals pushes to and pulls from a file:// cache (an OCI
// image layout) and holds each refusal to its reason.
func TestFileCacheRefusals(t *testing.T) {
	dir := t.TempDir()
	priv, pubFile := newKey(t, dir, "publisher")
	otherPriv, otherFile := newKey(t, dir, "other")
	trust, s := trustedFileCache(t, dir, pubFile)
	files := []File{{Name: "m.ko", Data: []byte("module bytes")}, {Name: "Module.symvers", Data: nil}}
	if _, err := s.Pull(t.Context(), testKey, trust); !errors.Is(err, ErrMiss) {
		t.Fatalf("pull from an empty cache: %v, want ErrMiss", err)
	}
	if err := s.Push(t.Context(), Artifact{Key: testKey, Files: files}, priv); err != nil {
		t.Fatal(err)
	}
	a, err := s.Pull(t.Context(), testKey, trust)
	if err != nil || len(a.Files) != 2 || string(a.Files[0].Data) != "module bytes" || a.Publisher != Fingerprint(priv.Public().(ed25519.PublicKey)) {
		t.Fatalf("pull: %+v, %v", a, err)
	}
	other := testKey
	other.ABI = "sha256:another"
	if _, err := s.Pull(t.Context(), other, trust); !errors.Is(err, ErrMiss) {
		t.Errorf("another ABI: %v, want ErrMiss", err)
	}
	otherTrust, _ := LoadTrust(otherFile)
	wantRefusal(t, s, testKey, otherTrust, "which module_cache_trust does not list")
	both, err := LoadTrust(dir) // a dir of keys
	if err != nil || both.Len() != 2 {
		t.Fatalf("LoadTrust(dir): %d keys, %v", both.Len(), err)
	}

	// Re-published by a key nobody trusts.
	if err := s.Push(t.Context(), Artifact{Key: testKey, Files: files}, otherPriv); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, s, testKey, trust, "which module_cache_trust does not list")

	// A blob changed on disk.
	if err := s.Push(t.Context(), Artifact{Key: testKey, Files: files}, priv); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("module bytes"))
	blob := filepath.Join(dir, "cache", "blobs", "sha256", hex.EncodeToString(sum[:]))
	if err := os.WriteFile(blob, []byte("module bytez"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantRefusal(t, s, testKey, trust, "does not match its digest")
}

func wantRefusal(t *testing.T, s *Store, k Key, trust Trust, reason string) {
	t.Helper()
	_, err := s.Pull(t.Context(), k, trust)
	var r *Refusal
	if !errors.As(err, &r) || !strings.Contains(r.Reason, reason) {
		t.Errorf("pull: %v, want a refusal saying %q", err, reason)
	}
}

func TestLoadTrustRefusesAFileWithoutKeys(t *testing.T) {
	f := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(f, []byte("not a key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTrust(f); err == nil || !strings.Contains(err.Error(), "no ed25519 public key") {
		t.Errorf("LoadTrust: %v", err)
	}
	if _, err := LoadTrust(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Error("LoadTrust of a missing file: no error")
	}
}

// TestKeyChangesWithEachPart: every part of the key changes its tag.
func TestKeyChangesWithEachPart(t *testing.T) {
	seen := map[string]bool{testKey.Tag(): true}
	for _, change := range []func(*Key){
		func(k *Key) { k.Module = "n" }, func(k *Key) { k.Version = "2" }, func(k *Key) { k.Kernel = "j" },
		func(k *Key) { k.Arch = "aarch64" }, func(k *Key) { k.Source = "sha256:t" }, func(k *Key) { k.ABI = "sha256:b" },
		func(k *Key) { k.Recipe = "dkmsd-0" },
	} {
		k := testKey
		change(&k)
		if seen[k.Tag()] {
			t.Errorf("%+v has a tag seen before", k)
		}
		seen[k.Tag()] = true
	}
	if len(testKey.Tag()) > 128 {
		t.Errorf("tag %q is longer than OCI allows", testKey.Tag())
	}
}

// TestABIDigestFollowsModuleSymvers: the same release with one CRC
// changed is another ABI.
func TestABIDigestFollowsModuleSymvers(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("include/config/auto.conf", "CONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14) 12.2.0\"\n")
	write("Module.symvers", "0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
	a, err := ABIDigest(dir)
	if err != nil {
		t.Fatal(err)
	}
	write("Module.symvers", "0x12345679\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
	b, _ := ABIDigest(dir)
	write("include/config/auto.conf", "CONFIG_CC_VERSION_TEXT=\"gcc-13\"\n")
	c, _ := ABIDigest(dir)
	if a == b || b == c {
		t.Errorf("ABI digests %s %s %s: want three different", a, b, c)
	}
	sv, err := ReadSymvers(filepath.Join(dir, "Module.symvers"))
	if err != nil || sv["printk"] != 0x12345679 {
		t.Errorf("ReadSymvers: %v %v", sv, err)
	}
}

// TestOpenRefusesOtherSchemes, and a registry that refuses costs no
// more than the timeout.
func TestOpenRefusesOtherSchemes(t *testing.T) {
	for _, u := range []string{"http://x/y", "file://relative", ""} {
		if _, err := Open(t.Context(), u, Options{}); err == nil {
			t.Errorf("Open(%q): no error", u)
		}
	}
	s, err := Open(t.Context(), "oci://127.0.0.1:1/x", Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = s.Pull(t.Context(), testKey, Trust{})
	if err == nil || !Unreachable(err) || time.Since(start) > 2*time.Second {
		t.Errorf("pull from a closed port: %v after %v; want an unreachable error within the timeout", err, time.Since(start))
	}
}

// trustedFileCache is a file:// cache under dir and the trust of the
// publisher key in pubFile.
func trustedFileCache(t *testing.T, dir, pubFile string) (Trust, *Store) {
	t.Helper()
	trust, err := LoadTrust(pubFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), "file://"+filepath.Join(dir, "cache"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return trust, s
}
