package lifecycle_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
)

// Adding a module needs no kernel headers: it registers the source in the
// dkms tree. Here every tree lives under a temporary root, as in the tests
// and `dkms --root`.
func ExampleAdd() {
	ctx := context.Background()
	root, err := os.MkdirTemp("", "lifecycle-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(root)
	layout := tree.NewLayout(root)
	src := layout.SourceDir("foo", "1.0")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "dkms.conf"), []byte(
		"PACKAGE_NAME=foo\nPACKAGE_VERSION=1.0\nBUILT_MODULE_NAME[0]=foo\nDEST_MODULE_LOCATION[0]=/updates\n"), 0o644)

	env, err := lifecycle.NewEnv(ctx, layout, lifecycle.Discard)
	if err != nil {
		panic(err)
	}
	unlock, err := lifecycle.LockTree(ctx, env)
	if err != nil {
		panic(err)
	}
	defer unlock()

	if err := lifecycle.Add(ctx, env, "foo", "1.0", "6.1.0-56-amd64", "x86_64"); err != nil {
		panic(err)
	}
	lines, err := lifecycle.Status(ctx, env, lifecycle.StatusQuery{})
	if err != nil {
		panic(err)
	}
	for _, l := range lines {
		fmt.Println(l)
	}

	// Adding it again is an error of a Kind, and the Kind is dkms's exit code.
	err = lifecycle.Add(ctx, env, "foo", "1.0", "6.1.0-56-amd64", "x86_64")
	var le *lifecycle.Error
	fmt.Println(errors.As(err, &le), lifecycle.ExitCode(err))
	// Output:
	// foo/1.0: added
	// true 3
}

// Installing builds first when needed. It needs the kernel's headers
// (/lib/modules/<kernel>/build) and write access to the trees, so this
// example is compiled but not run.
func ExampleInstall() {
	ctx := context.Background()
	kernel := "6.1.0-56-amd64" // illustrative; a kernel whose headers are installed
	env, err := lifecycle.NewEnv(ctx, tree.NewLayout(""), lifecycle.SinkFunc(func(ev lifecycle.Event) {
		if ev.Text != "" {
			fmt.Println(ev.Text)
		}
	}))
	if err != nil {
		fmt.Println(err)
		return
	}
	unlock, err := lifecycle.LockTree(ctx, env)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer unlock()
	err = lifecycle.Install(ctx, env, lifecycle.Target{Module: "foo", Version: "1.0", Kernel: kernel, Arch: "x86_64"})
	if err != nil {
		// dkms's exit status: 21 when the headers are missing, 10 when
		// make failed, …
		fmt.Println(err, "exit", lifecycle.ExitCode(err))
	}
}
