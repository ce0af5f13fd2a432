// Package sandbox runs a module's build commands as an unprivileged user
// inside a bubblewrap (bwrap) sandbox: the whole filesystem read-only, the
// module's build directory the only writable place, a private /tmp, no
// network, its own PID, IPC and UTS namespaces, and dying with dkmsd.
//
//	r, err := sandbox.Choose(ctx, sandbox.Config{Mode: "auto"})
//	cmd := exec.CommandContext(ctx, "make", "-C", kdir, "M="+buildDir)
//	cmd.Dir = buildDir
//	err = r.Wrap(cmd, sandbox.Spec{Writable: buildDir, Expose: []string{kdir}})
//	err = cmd.Run()
//
// bwrap itself runs as root (it needs no unprivileged user namespaces, so
// it works wherever root can make namespaces) and hands the command to
// setpriv, which becomes the build user and drops every capability. Paths
// inside are the paths outside, so the module's bytes do not depend on
// the sandbox.
package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Modes of framework.conf's build_sandbox.
const (
	ModeAuto  = "auto"
	ModeBwrap = "bwrap"
	ModeUser  = "user"
	ModeNone  = "none"
)

// DefaultUser is the build user the Debian package creates; "nobody" is
// used when it does not exist.
const DefaultUser = "dkmsd-build"

// Kind is how a Runner runs a command.
type Kind int

const (
	// Direct: as dkmsd itself runs (root, or the calling user).
	Direct Kind = iota
	// User: as the build user, without a sandbox.
	User
	// Bwrap: as the build user inside bwrap.
	Bwrap
)

func (k Kind) String() string {
	switch k {
	case User:
		return "user"
	case Bwrap:
		return "bwrap"
	}
	return "none"
}

// Config is what the administrator asked for.
type Config struct {
	// Mode is build_sandbox: auto (""), bwrap, user or none.
	Mode string
	// User is build_user ("": dkmsd-build, else nobody).
	User string
	// Bwrap and Setpriv name the programs ("": found on PATH).
	Bwrap, Setpriv string
}

// Runner runs commands the way Choose decided.
type Runner struct {
	Kind     Kind
	UID, GID uint32
	// UserName is the build user's name ("" for Direct).
	UserName string
	// Fallback says why auto chose less than the bwrap sandbox; "" when
	// it did not fall back (or the mode was set explicitly).
	Fallback string
	bwrap    string
	setpriv  string
}

// Choose decides how builds run. An explicit mode that cannot be had is
// an error; auto falls back from bwrap to the unprivileged user to
// Direct, saying why in Fallback.
func Choose(ctx context.Context, c Config) (*Runner, error) {
	mode := c.Mode
	if mode == "" {
		mode = ModeAuto
	}
	switch mode {
	case ModeNone:
		return &Runner{Kind: Direct}, nil
	case ModeAuto, ModeBwrap, ModeUser:
	default:
		return nil, fmt.Errorf("build_sandbox=%s is not one of auto, bwrap, user, none", mode)
	}
	if os.Geteuid() != 0 {
		// Not root: the build runs unprivileged already, and no other
		// user can be become.
		if mode == ModeAuto {
			return &Runner{Kind: Direct}, nil
		}
		return nil, fmt.Errorf("build_sandbox=%s needs dkms to run as root", mode)
	}
	u, err := buildUser(c.User)
	if err != nil {
		if mode == ModeAuto {
			return &Runner{Kind: Direct, Fallback: err.Error()}, nil
		}
		return nil, err
	}
	r := &Runner{Kind: User, UID: u.uid, GID: u.gid, UserName: u.name}
	if mode == ModeUser {
		return r, nil
	}
	if err := r.findBwrap(ctx, c); err != nil {
		r.Kind = User
		if mode == ModeAuto {
			r.Fallback = err.Error()
			return r, nil
		}
		return nil, err
	}
	r.Kind = Bwrap
	return r, nil
}

type account struct {
	name     string
	uid, gid uint32
}

// buildUser is build_user, else dkmsd-build, else nobody.
func buildUser(name string) (account, error) {
	names := []string{DefaultUser, "nobody"}
	if name != "" {
		names = []string{name}
	}
	for _, n := range names {
		u, err := user.Lookup(n)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue // never "unprivileged" as uid 0
		}
		return account{name: n, uid: uint32(uid), gid: uint32(gid)}, nil
	}
	return account{}, fmt.Errorf("no build user exists (%s)", strings.Join(names, ", "))
}

// findBwrap finds bwrap and setpriv and runs `true` in a sandbox once: a
// container without the right to make namespaces fails here, not in the
// middle of a build.
func (r *Runner) findBwrap(ctx context.Context, c Config) error {
	var err error
	if r.bwrap, err = lookup(c.Bwrap, "bwrap"); err != nil {
		return errors.New("bwrap is not installed (apt-get install bubblewrap)")
	}
	if r.setpriv, err = lookup(c.Setpriv, "setpriv"); err != nil {
		return errors.New("setpriv is not installed (util-linux)")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	probe := exec.CommandContext(ctx, "true")
	probe.Dir = "/"
	r.Kind = Bwrap
	if err := r.Wrap(probe, Spec{}); err != nil {
		return err
	}
	var out bytes.Buffer
	probe.Stdout, probe.Stderr = &out, &out
	if err := probe.Run(); err != nil {
		msg, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
		if msg == "" {
			msg = err.Error()
		}
		return fmt.Errorf("bwrap cannot make a sandbox here: %s", msg)
	}
	return nil
}

func lookup(given, name string) (string, error) {
	if given != "" {
		name = given
	}
	return exec.LookPath(name)
}

// Spec is what a wrapped command sees besides the read-only filesystem.
type Spec struct {
	// Writable is the one directory the command may write ("": none).
	Writable string
	// Expose are directories the command must see read-only at their
	// own paths, even below a directory the build user may not enter
	// (a test's 0700 temporary dir) or below /tmp (private inside).
	Expose []string
	// Mask are secrets hidden inside (the MOK private key): each file is
	// replaced by an empty one, and its directory by an empty one too
	// unless the command needs something below it.
	Mask []string
}

// Wrap turns cmd into the same command run as r says. cmd.Dir is where
// it runs (it is made reachable inside); cmd.SysProcAttr is kept.
func (r *Runner) Wrap(cmd *exec.Cmd, s Spec) error {
	if r == nil || r.Kind == Direct || cmd.Err != nil {
		return nil
	}
	attr := cmd.SysProcAttr
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr = attr
	if r.Kind == User {
		attr.Credential = &syscall.Credential{Uid: r.UID, Gid: r.GID, Groups: []uint32{}}
		// A working dir the user may not enter (dkms run from /root)
		// would stop the command from starting at all.
		if !newView(r.UID, r.GID).mayReach(cmd.Dir) {
			cmd.Dir = "/"
		}
		return nil
	}
	dir := cmd.Dir
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("sandbox: working directory: %w", err)
		}
		dir = wd
	}
	v := newView(r.UID, r.GID)
	for _, p := range s.Expose {
		v.reach(p, true)
	}
	if s.Writable != "" {
		v.reach(s.Writable, false)
	}
	v.reach(dir, false)
	if s.Writable != "" {
		v.args = append(v.args, "--bind", s.Writable, s.Writable)
	}
	keep := append(append([]string{}, s.Expose...), s.Writable, dir)
	for _, m := range s.Mask {
		v.mask(m, keep)
	}
	args := []string{r.bwrap,
		"--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp"}
	args = append(args, v.args...)
	args = append(args,
		"--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
		"--die-with-parent", "--new-session", "--unsetenv", "TMPDIR", "--chdir", dir, "--",
		r.setpriv, "--reuid="+strconv.Itoa(int(r.UID)), "--regid="+strconv.Itoa(int(r.GID)),
		"--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
		cmd.Path)
	cmd.Args = append(args, cmd.Args[1:]...)
	cmd.Path = r.bwrap
	return nil
}
