package lifecycle

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/dkmsd/dkmsd/tree"
)

// TestModuleSuffixFollowsKernelConfig checks the suffix comes from the
// kernel's CONFIG_MODULE_COMPRESS_* and, failing that, its modules.dep.
func TestModuleSuffixFollowsKernelConfig(t *testing.T) {
	root := t.TempDir()
	e := &Env{Layout: tree.NewLayout(root)}
	kdir := filepath.Join(root, "lib/modules/6.9.0-1-test")
	build := filepath.Join(kdir, "build")
	if err := os.MkdirAll(build, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.buildKernel("6.9.0-1-test").moduleSuffix(); got != ".ko" {
		t.Errorf("no config: %q", got)
	}
	write(filepath.Join(kdir, "modules.dep"), "kernel/fs/x.ko.xz:\n")
	if got := e.buildKernel("6.9.0-1-test").moduleSuffix(); got != ".ko.xz" {
		t.Errorf("modules.dep with .ko.xz: %q", got)
	}
	write(filepath.Join(build, ".config"), "CONFIG_MODULE_COMPRESS_ZSTD=y\n")
	if got := e.buildKernel("6.9.0-1-test").moduleSuffix(); got != ".ko.zst" {
		t.Errorf("CONFIG_MODULE_COMPRESS_ZSTD=y: %q", got)
	}
}
