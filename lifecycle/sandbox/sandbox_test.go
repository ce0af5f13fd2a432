package sandbox

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestChooseFallsBack: auto goes from bwrap to the unprivileged user to
// root, saying why; an explicit mode that cannot be had is an error.
func TestChooseFallsBack(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "bwrap", "bubblewrap")
	ctx := context.Background()
	cases := []struct {
		name     string
		c        Config
		kind     Kind
		fallback string // part of Fallback; "error": Choose fails
	}{
		{"auto", Config{}, Bwrap, ""},
		{"auto-no-bwrap", Config{Bwrap: "/nonexistent/bwrap"}, User, "bwrap is not installed"},
		{"auto-bwrap-fails", Config{Bwrap: "/bin/false"}, User, "bwrap cannot make a sandbox here"},
		{"auto-no-user", Config{User: "dkmsd-no-such-user"}, Direct, "no build user exists (dkmsd-no-such-user)"},
		{"bwrap", Config{Mode: ModeBwrap}, Bwrap, ""},
		{"bwrap-missing", Config{Mode: ModeBwrap, Bwrap: "/nonexistent/bwrap"}, 0, "error"},
		{"bwrap-no-user", Config{Mode: ModeBwrap, User: "dkmsd-no-such-user"}, 0, "error"},
		{"user", Config{Mode: ModeUser}, User, ""},
		{"user-no-user", Config{Mode: ModeUser, User: "dkmsd-no-such-user"}, 0, "error"},
		{"none", Config{Mode: ModeNone, User: "dkmsd-no-such-user"}, Direct, ""},
		{"bad-mode", Config{Mode: "yes"}, 0, "error"},
	}
	for _, c := range cases {
		r, err := Choose(ctx, c.c)
		if c.fallback == "error" {
			if err == nil {
				t.Errorf("%s: Choose = %+v, want an error", c.name, r)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if r.Kind != c.kind || !strings.Contains(r.Fallback, c.fallback) || (c.fallback == "") != (r.Fallback == "") {
			t.Errorf("%s: kind %v, fallback %q; want %v, %q", c.name, r.Kind, r.Fallback, c.kind, c.fallback)
		}
		if r.Kind != Direct && r.UID == 0 {
			t.Errorf("%s: runs as uid 0", c.name)
		}
	}
}

// TestWrapView runs a shell in the sandbox with a test root below a 0700
// dir: the exposed dir is readable at its own path, only the writable dir
// takes writes, a secret's dir is masked (and a secret beside the
// writable dir, the file alone: an empty device node on a nodev mount,
// which cannot be opened), /tmp is private and writable, there is no
// network but loopback, and the shell is the build user in a PID
// namespace of its own (bwrap is its pid 1).
func TestWrapView(t *testing.T) {
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "bwrap", "bubblewrap")
	r, err := Choose(context.Background(), Config{Mode: ModeBwrap})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir() // 0700, below another 0700 dir
	mk := func(rel, content string, mode os.FileMode) string {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	mk("src/file", "source\n", 0o644)
	keyInDir := mk("keys/mok.key", "KEY1\n", 0o644)
	work := filepath.Join(root, "tree/m/build")
	keyBeside := mk("tree/mok.key", "KEY2\n", 0o644)
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(work, int(r.UID), int(r.GID)); err != nil {
		t.Fatal(err)
	}
	script := `echo uid=$(id -u)
cat ` + root + `/src/file
echo > ` + root + `/src/new && echo wrote-src
echo built > built && echo wrote-work
echo tmp > /tmp/t && echo wrote-tmp
echo key1=$(cat ` + keyInDir + ` 2>&1)
echo key2=$(cat ` + keyBeside + ` 2>&1)
echo net=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ,)
echo init=$(cat /proc/1/comm)
`
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = work
	if err := r.Wrap(cmd, Spec{Writable: work, Expose: []string{root}, Mask: []string{keyInDir, keyBeside}}); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	got := string(out)
	for _, want := range []string{"uid=" + itoa(r.UID) + "\n", "source\n", "wrote-work\n", "wrote-tmp\n",
		"key1=cat: " + keyInDir + ": No such file or directory\n", "key2=cat: " + keyBeside + ": Permission denied\n", "net=lo,\n", "init=bwrap\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("sandbox output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "wrote-src") || strings.Contains(got, "KEY") {
		t.Errorf("sandbox wrote the source or read a key:\n%s", got)
	}
	if b, err := os.ReadFile(filepath.Join(work, "built")); err != nil || string(b) != "built\n" {
		t.Errorf("the writable dir: %q, %v", b, err)
	}
}

func itoa(u uint32) string { return strconv.FormatUint(uint64(u), 10) }

// TestBuildUserNeverRoot: a build_user that is uid 0 is not a build user.
func TestBuildUserNeverRoot(t *testing.T) {
	if _, err := user.Lookup("root"); err != nil {
		t.Skip("no root account")
	}
	if _, err := buildUser("root"); err == nil {
		t.Error("buildUser(root) accepted uid 0")
	}
}

// TestWrapUserLeavesAClosedDir: as the build user without a sandbox, a
// command whose working dir the user may not enter runs in / rather
// than not at all.
func TestWrapUserLeavesAClosedDir(t *testing.T) {
	testkit.RequireRoot(t)
	r, err := Choose(context.Background(), Config{Mode: ModeUser})
	if err != nil {
		t.Fatal(err)
	}
	closed := t.TempDir() // 0700
	cmd := exec.Command("sh", "-c", "pwd; id -u")
	cmd.Dir = closed
	if err := r.Wrap(cmd, Spec{}); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if want := "/\n" + itoa(r.UID) + "\n"; err != nil || string(out) != want {
		t.Errorf("ran: %q, %v; want %q", out, err, want)
	}
}
