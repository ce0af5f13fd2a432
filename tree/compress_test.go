package tree

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestCompressModuleRoundTrip compresses data for each kernel suffix and
// reads it back the way status and install read modules.
func TestCompressModuleRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte("\x7fELF module bytes "), 4096)
	for _, suffix := range []string{".ko", ".ko.gz", ".ko.xz", ".ko.zst"} {
		packed, err := CompressModule(data, suffix)
		if err != nil {
			t.Fatalf("%s: %v", suffix, err)
		}
		if suffix != ".ko" && len(packed) >= len(data) {
			t.Errorf("%s: %d bytes from %d: not compressed", suffix, len(packed), len(data))
		}
		p := filepath.Join(t.TempDir(), "m"+suffix)
		if err := os.WriteFile(p, packed, 0o644); err != nil {
			t.Fatal(err)
		}
		back, err := ReadModuleFile(p)
		if err != nil || !bytes.Equal(back, data) {
			t.Errorf("%s: round trip failed: %v", suffix, err)
		}
	}
	if _, err := CompressModule(data, ".ko.bz2"); err == nil {
		t.Error("an unknown suffix was accepted")
	}
}
