package tree_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dkmsd/dkmsd/tree"
)

// A dkms.conf is a shell file, evaluated for one kernel and architecture.
// Layout relocates every tree under a root, so nothing here reads the
// machine's /etc/dkms. On Debian, modules go to /updates/dkms whatever
// DEST_MODULE_LOCATION says, as with dkms.
func ExampleReadConf() {
	root, err := os.MkdirTemp("", "tree-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(root)

	layout := tree.NewLayout(root)
	src := layout.SourceDir("foo", "1.0")
	if err := os.MkdirAll(src, 0o755); err != nil {
		panic(err)
	}
	conf := `PACKAGE_NAME="foo"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="foo"
DEST_MODULE_LOCATION[0]="/kernel/drivers/misc"
MAKE[0]="make -C $kernel_source_dir KVER=$kernelver"
AUTOINSTALL="yes"
`
	file := filepath.Join(src, "dkms.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		panic(err)
	}

	c, err := tree.ReadConf(context.Background(), file, tree.ConfContext{
		Module: "foo", Version: "1.0",
		Kernel: "6.1.0-56-amd64", Arch: "x86_64",
		KernelSourceDir: "/lib/modules/6.1.0-56-amd64/build",
		Layout:          layout,
		Distro:          "debian", // tree.ReadDistro(root) reads os-release
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(c.PackageName, c.PackageVersion, c.AutoInstall)
	for _, m := range c.Modules {
		fmt.Println(m.BuiltName, m.RawDestLocation, "->", m.DestLocation)
	}
	fmt.Println(c.MakeCommand)
	// Output:
	// foo 1.0 true
	// foo /kernel/drivers/misc -> /updates/dkms
	// make -C /lib/modules/6.1.0-56-amd64/build KVER=6.1.0-56-amd64
}

// Versions sort the way dkms's VER() sorts them: numbers as numbers.
func ExampleCompareVersions() {
	fmt.Println(tree.CompareVersions("1.10", "1.9"))
	fmt.Println(tree.CompareVersions("2.0", "2.0"))
	// Output:
	// 1
	// 0
}
