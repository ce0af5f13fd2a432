package initrd

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestDepmodStubsRealInitrd indexes the machine's cloud-kernel initrd
// (the stubs of its modules, as the append path keeps them) and runs the
// real depmod over the stubs: every index depmod writes must be
// byte-for-byte the one the image holds, which initramfs-tools' depmod
// made from the whole modules; and the stubs must be a small fraction of
// the modules' size.
func TestDepmodStubsRealInitrd(t *testing.T) {
	testkit.RequireTool(t, "depmod", "kmod")
	k := testkit.BootKernel(t)
	img, err := Read("/boot/initrd.img-" + k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	idx, err := WriteIndex(img, k, Digest(img.Data), filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	if again := LoadIndex(filepath.Join(dir, "cache"), Digest(img.Data), k); again == nil || len(again.Files) != len(idx.Files) {
		t.Fatalf("LoadIndex did not return the index just written")
	}
	if LoadIndex(filepath.Join(dir, "cache"), Digest([]byte("other")), k) != nil {
		t.Errorf("LoadIndex returned an index for another digest")
	}
	stage := filepath.Join(dir, "stage")
	stageMod := filepath.Join(stage, "lib/modules", k)
	if err := linkStubs(&Base{Data: img.Data, Index: idx, Dir: filepath.Join(dir, "cache")}, stageMod, nil); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("depmod", "-a", "-b", stage, k).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	var full, stubs int64
	mods := idx.Modules()
	if len(mods) < 50 {
		t.Fatalf("the index lists %d modules; the cloud initrd has about 200", len(mods))
	}
	for _, rel := range mods {
		orig, _ := img.Content(idx.ModulesDir + "/" + rel)
		fi, err := os.Stat(filepath.Join(dir, "cache/stubs", rel))
		if err != nil {
			t.Fatal(err)
		}
		full, stubs = full+int64(len(orig)), stubs+fi.Size()
	}
	t.Logf("%d modules: %d bytes, stubs %d bytes", len(mods), full, stubs)
	if stubs*8 > full {
		t.Errorf("stubs are %d bytes for %d bytes of modules; want under an eighth", stubs, full)
	}
	entries, _ := os.ReadDir(stageMod)
	compared := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "modules.") || !e.Type().IsRegular() {
			continue
		}
		got, _ := os.ReadFile(filepath.Join(stageMod, e.Name()))
		want, err := img.Content(idx.ModulesDir + "/" + e.Name())
		if err != nil {
			continue // an index this depmod writes and the image's did not
		}
		compared++
		if !bytes.Equal(got, want) {
			t.Errorf("%s from the stubs differs from the image's (%d vs %d bytes)", e.Name(), len(got), len(want))
		}
	}
	if compared < 8 {
		t.Errorf("compared %d indexes; want modules.dep, .bin, alias, symbols, softdep, devname, builtin…", compared)
	}
}
