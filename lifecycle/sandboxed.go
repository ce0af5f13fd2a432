package lifecycle

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/dkmsd/dkmsd/lifecycle/sandbox"
	"github.com/dkmsd/dkmsd/tree"
)

// A build's own commands (patches, PRE_BUILD, make, POST_BUILD, strip)
// and the commands a dkms.conf runs ($(…)) run through the build sandbox
// (lifecycle/sandbox): as an unprivileged user, inside bwrap. Install,
// depmod and signing stay with root, outside.

// sandboxChoice is the runner builds use, chosen once per command.
type sandboxChoice struct {
	once sync.Once
	r    *sandbox.Runner
	err  error
}

// buildRunner is the runner framework.conf asks for. When auto falls
// back from the sandbox, it says so once per command.
func (e *Env) buildRunner(ctx context.Context) (*sandbox.Runner, error) {
	c := e.sandbox
	if c == nil {
		c = &sandboxChoice{}
	}
	c.once.Do(func() {
		c.r, c.err = sandbox.Choose(ctx, sandbox.Config{Mode: e.Framework.BuildSandbox, User: e.Framework.BuildUser})
		if c.err != nil || c.r.Fallback == "" {
			return
		}
		who := "root"
		if c.r.Kind == sandbox.User {
			who = c.r.UserName + " without a sandbox"
		}
		e.warn("Warning: builds run as %s: %s (build_sandbox=auto in framework.conf).", who, c.r.Fallback)
	})
	return c.r, c.err
}

// buildSandbox is how one module's commands run; nil runs them as dkmsd
// runs.
type buildSandbox struct {
	r      *sandbox.Runner
	spec   sandbox.Spec
	module string
	// optOut is the module's /etc/dkms/<module>.conf.
	optOut string
}

// optedOut reports whether the administrator's /etc/dkms/<module>.conf
// says BUILD_SANDBOX=no.
func (e *Env) optedOut(ctx context.Context, module string) bool {
	if module == "" {
		return false
	}
	v, err := tree.ModuleSetting(ctx, e.Layout, module, "BUILD_SANDBOX", e.Environ)
	if err != nil {
		return false
	}
	switch strings.ToLower(v) {
	case "no", "n", "false", "0", "off", "none":
		return true
	}
	return false
}

// sandboxFor is the sandbox of t's build (writable: its build dir), or
// of its dkms.conf's commands (confOnly: nothing writable).
func (e *Env) sandboxFor(ctx context.Context, t Target, confOnly bool) (*buildSandbox, error) {
	if e.optedOut(ctx, t.Module) {
		return nil, nil
	}
	r, err := e.buildRunner(ctx)
	if err != nil {
		return nil, fail(KindInternal, fmt.Sprintf("The build sandbox cannot be used: %v.", err),
			"Set build_sandbox in framework.conf (auto, bwrap, user or none), or BUILD_SANDBOX=no in "+filepath.Join(e.Layout.ConfDir, t.Module+".conf")+".")
	}
	if r.Kind == sandbox.Direct {
		return nil, nil
	}
	var expose []string
	if root := e.Layout.Root; root != "" && root != "/" {
		expose = append(expose, root)
	}
	if t.Module != "" {
		vdir := e.Layout.VersionDir(t.Module, t.Version)
		expose = append(expose, vdir, filepath.Join(vdir, "source"), e.moduleConfDir(t.Module))
	}
	if t.Kernel != "" {
		k := e.Layout.Kernel(t.Kernel)
		expose = append(expose, k.Dir, k.BuildDir)
	}
	s := &buildSandbox{r: r, module: t.Module, optOut: filepath.Join(e.Layout.ConfDir, t.Module+".conf"), spec: sandbox.Spec{
		Expose: expose,
		Mask:   []string{e.Layout.MOKKey, e.Framework.MOKSigningKey},
	}}
	if !confOnly {
		s.spec.Writable = filepath.Join(e.Layout.VersionDir(t.Module, t.Version), "build")
	}
	return s, nil
}

// confWrap is what a dkms.conf's commands for t run through: the
// sandbox, chosen only when the file runs a command.
func (e *Env) confWrap(ctx context.Context, t Target) func(*exec.Cmd) error {
	return func(cmd *exec.Cmd) error {
		s, err := e.sandboxFor(ctx, t, true)
		if err != nil {
			return err
		}
		return s.wrap(cmd)
	}
}

// wrap makes cmd run in the sandbox.
func (s *buildSandbox) wrap(cmd *exec.Cmd) error {
	if s == nil {
		return nil
	}
	return s.r.Wrap(cmd, s.spec)
}

// own gives the build dir to the build user: the only place it writes.
func (s *buildSandbox) own(dir string) error {
	if s == nil {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(p, int(s.r.UID), int(s.r.GID)); err != nil {
			return fmt.Errorf("give %s to the build user: %w", p, err)
		}
		return nil
	})
}

// builtFile is p, a file the build left in buildDir, for root to read:
// a symlink the build made that leads out of the build dir (to a key,
// /etc/shadow) is refused, since root would read or write through it.
func (s *buildSandbox) builtFile(buildDir, p string) (string, error) {
	if s == nil {
		return p, nil
	}
	base, err := filepath.EvalSymlinks(buildDir)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", err
	}
	fi, err := os.Lstat(real)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(real, base+"/") || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a file of the build dir (it leads to %s): refused", p, real)
	}
	return real, nil
}

// sandboxRefusals are what make.log shows when the sandbox refused a
// build something: a write outside the build dir, the network, root's
// files.
var sandboxRefusals = []string{
	"Read-only file system", "Permission denied", "Operation not permitted",
	"Network is unreachable", "Temporary failure in name resolution", "Could not resolve host",
	// dash's word for a path below the sandbox's private /tmp.
	"Directory nonexistent",
}

// refusalHint says, for a sandboxed build that failed in one of its
// commands and whose log shows the sandbox refused it something, so, and
// how to opt the module out.
func (s *buildSandbox) refusalHint(kind Kind, logPath string) []string {
	switch {
	case s == nil:
		return nil
	case kind != KindBuildFailed && kind != KindScriptFailed && kind != KindPatchFailed && kind != KindNoModuleBuilt:
		return nil
	}
	data, err := os.ReadFile(logPath)
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(data), "\n") {
		for _, m := range sandboxRefusals {
			if strings.Contains(line, m) {
				return []string{
					fmt.Sprintf("The build ran as user %s in dkmsd's build sandbox (%s), which refused it something: %q.", s.r.UserName, s.r.Kind, strings.TrimSpace(line)),
					fmt.Sprintf("If %s needs it, build it without the sandbox: BUILD_SANDBOX=no in %s.", s.module, s.optOut),
				}
			}
		}
	}
	return nil
}
