package lifecycle

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// depmod regenerates the kernel's modules.dep and friends with the
// system's depmod. A relocated install tree is handled with -b, so depmod
// never writes into the machine's own /lib/modules for a test root.
func (e *Env) depmod(ctx context.Context, kernel string) error {
	if e.NoDepmod {
		return nil
	}
	base, cleanup, err := e.depmodBase()
	if err != nil {
		return err
	}
	defer cleanup()
	args := []string{"depmod", "-a"}
	if base != "" {
		args = append(args, "-b", base)
	}
	args = append(args, kernel)
	if sm := filepath.Join(e.Layout.BootDir, "System.map-"+kernel); exists(sm) {
		args = append(args, "-F", sm)
	}
	var out strings.Builder
	if err := runArgv(ctx, "", e.Environ, &out, args...); err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// depmodBase is depmod's -b for the install tree: "" for /lib/modules, the
// root above <root>/lib/modules, or a temporary dir whose lib/modules links
// to an install tree elsewhere.
func (e *Env) depmodBase() (string, func(), error) {
	it := filepath.Clean(e.Layout.InstallTree)
	if it == "/lib/modules" || it == "/usr/lib/modules" {
		return "", func() {}, nil
	}
	if base, ok := strings.CutSuffix(it, "/lib/modules"); ok {
		return base, func() {}, nil
	}
	tmp, err := os.MkdirTemp(e.Layout.TmpDir, "dkmsd-depmod-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(tmp) }
	if err := os.MkdirAll(filepath.Join(tmp, "lib"), 0o755); err != nil {
		cleanup()
		return "", nil, err
	}
	if err := os.Symlink(it, filepath.Join(tmp, "lib", "modules")); err != nil {
		cleanup()
		return "", nil, err
	}
	return tmp, cleanup, nil
}

// showDepmod runs depmod for kernel, shown as dkms shows it ("depmod...",
// even under --no-depmod, where it does nothing).
func (e *Env) showDepmod(ctx context.Context, kernel string) error {
	return e.invoke(step{Desc: "depmod", Command: "depmod -a " + kernel, Background: true}, func(io.Writer) error {
		return e.depmod(ctx, kernel)
	})
}
