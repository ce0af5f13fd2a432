package tree

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/dkmsd/dkmsd/tree/kcompress"
)

// TestReadModuleFileCompressed reads back a module compressed in each
// format a kernel's modules may use (the files gzip, xz and zstd write
// are read in the real-headers tests).
func TestReadModuleFileCompressed(t *testing.T) {
	data := bytes.Repeat([]byte("\x7fELF module bytes "), 4096)
	for suffix, f := range map[string]kcompress.Format{".ko.gz": kcompress.Gzip, ".ko.xz": kcompress.Xz, ".ko.zst": kcompress.Zstd} {
		packed, err := kcompress.Encode(f, data, true)
		if err != nil {
			t.Fatalf("%s: %v", suffix, err)
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
	p := filepath.Join(t.TempDir(), "m.ko.xz")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadModuleFile(p); err == nil {
		t.Error("an uncompressed file named .ko.xz was read without an error")
	}
}
