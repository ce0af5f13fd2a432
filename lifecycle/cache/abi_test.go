package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestABIDigestFraming pins the ABI digest's bytes: each part as
// "name NUL length NUL data", in order. A change here would make every
// artifact already published miss.
func TestABIDigestFraming(t *testing.T) {
	dir := t.TempDir()
	symvers := "0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n"
	auto := "CONFIG_X=y\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14) 12.2.0\"\n"
	if err := os.MkdirAll(filepath.Join(dir, "include/config"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Module.symvers"), []byte(symvers), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "include/config/auto.conf"), []byte(auto), 0o644); err != nil {
		t.Fatal(err)
	}
	cc := "gcc-12 (Debian 12.2.0-14) 12.2.0"
	framed := fmt.Sprintf("Module.symvers\x00%d\x00%sauto.conf\x00%d\x00%scc\x00%d\x00%s", len(symvers), symvers, len(auto), auto, len(cc), cc)
	sum := sha256.Sum256([]byte(framed))
	want := "sha256:" + hex.EncodeToString(sum[:])
	got, err := ABIDigest(dir)
	if err != nil || got != want {
		t.Errorf("ABIDigest = %s, %v; want %s", got, err, want)
	}
	// Without headers' files, each is a part of its own.
	empty := t.TempDir()
	framed = "Module.symvers\x00absent\x000\x00auto.conf\x00absent\x000\x00cc\x000\x00"
	sum = sha256.Sum256([]byte(framed))
	if got, _ := ABIDigest(empty); got != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Errorf("ABIDigest of no headers = %s", got)
	}
}

// TestParseSymvers: CRC and symbol of each well-formed line, whatever
// follows them; malformed lines skipped.
func TestParseSymvers(t *testing.T) {
	data := "0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n" +
		"0xDEADBEEF\tkfree\tvmlinux\tEXPORT_SYMBOL_GPL\tNS\r\n" +
		"0x00000001\tshort\n" +
		"junk line\n" +
		"0x123456789\ttoolong\tvmlinux\n" +
		"0xzz\tbadhex\tvmlinux\n" +
		"\n" +
		"0x0000abcd\tlast\tmod"
	want := Symvers{"printk": 0x12345678, "kfree": 0xdeadbeef, "short": 1, "last": 0xabcd}
	if got := parseSymvers([]byte(data)); !maps.Equal(got, want) {
		t.Errorf("parseSymvers = %v, want %v", got, want)
	}
}

// TestPullFilesFetchesOnlyWhatIsWanted: a machine that signs modules
// itself does not fetch the publisher-signed copies; what it fetches is
// still checked.
func TestPullFilesFetchesOnlyWhatIsWanted(t *testing.T) {
	dir := t.TempDir()
	priv, pubFile := newKey(t, dir, "publisher")
	trust, s := trustedFileCache(t, dir, pubFile)
	files := []File{{Name: "m.ko", Data: []byte("module")}, {Name: "m.ko" + SignedSuffix, Data: []byte("module signed")}}
	if err := s.Push(t.Context(), Artifact{Key: testKey, Files: files}, priv); err != nil {
		t.Fatal(err)
	}
	// The signed copy's blob is gone: not fetched, so no failure.
	sum := sha256.Sum256([]byte("module signed"))
	if err := os.Remove(filepath.Join(dir, "cache", "blobs", "sha256", hex.EncodeToString(sum[:]))); err != nil {
		t.Fatal(err)
	}
	unsigned := func(name string) bool { return !strings.HasSuffix(name, SignedSuffix) }
	a, err := s.PullFiles(t.Context(), testKey, trust, unsigned)
	if err != nil || len(a.Files) != 1 || a.Files[0].Name != "m.ko" || string(a.Files[0].Data) != "module" {
		t.Fatalf("PullFiles: %+v, %v", a, err)
	}
	if _, err := s.Pull(t.Context(), testKey, trust); err == nil {
		t.Error("Pull of every file succeeded without the signed copy's blob")
	}
	// A wanted blob changed on disk is still refused.
	sum = sha256.Sum256([]byte("module"))
	if err := os.WriteFile(filepath.Join(dir, "cache", "blobs", "sha256", hex.EncodeToString(sum[:])), []byte("modulE"), 0o644); err != nil {
		t.Fatal(err)
	}
	var r *Refusal
	if _, err := s.PullFiles(t.Context(), testKey, trust, unsigned); !errors.As(err, &r) || !strings.Contains(r.Reason, "does not match its digest") {
		t.Errorf("PullFiles of a tampered module: %v", err)
	}
}
