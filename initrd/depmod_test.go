package initrd

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// depmodTreeInput reads lib/modules/<k> at dir as depmod's search does:
// every file under it (symlinks followed) whose name ends in .ko, and
// depmod's own inputs.
func depmodTreeInput(t testing.TB, dir string, cfg *DepmodConfig) (*DepmodInput, error) {
	t.Helper()
	in := &DepmodInput{Files: map[string][]byte{}, Config: cfg}
	for n := range depmodInputs {
		if b, err := os.ReadFile(filepath.Join(dir, n)); err == nil {
			in.Files[n] = b
		}
	}
	var walk func(rel string) error
	walk = func(rel string) error {
		entries, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			return err
		}
		for _, e := range entries {
			r := filepath.ToSlash(filepath.Join(rel, e.Name()))
			if !cfg.Searched(r) {
				continue
			}
			st, err := os.Stat(filepath.Join(dir, r))
			if err != nil {
				return err
			}
			if st.IsDir() {
				if err := walk(r); err != nil {
					return err
				}
				continue
			}
			if _, ok := moduleFile(r); !ok {
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, r))
			if err != nil {
				return err
			}
			m, err := ReadDepmodModule(r, data)
			if err != nil {
				return err
			}
			in.Modules = append(in.Modules, m)
		}
		return nil
	}
	return in, walk("")
}

// realDepmod runs the real depmod on a staging root whose
// lib/modules/<k> holds symlinks to links (relative path -> target),
// and returns the files it wrote.
func realDepmod(t testing.TB, k string, links map[string]string) map[string][]byte {
	t.Helper()
	stage := t.TempDir()
	mod := filepath.Join(stage, "lib/modules", k)
	for rel, target := range links {
		dst := filepath.Join(mod, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, dst); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("depmod", "-a", "-b", stage, k).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}
	got := map[string][]byte{}
	for _, n := range DepmodFiles {
		b, err := os.ReadFile(filepath.Join(mod, n))
		if err != nil {
			t.Fatalf("depmod wrote no %s: %v", n, err)
		}
		got[n] = b
	}
	return got
}

// compareDepmod fails for each file ours has different from depmod's,
// saying where they first differ.
func compareDepmod(t testing.TB, want, got map[string][]byte) {
	t.Helper()
	if len(got) != len(DepmodFiles) {
		t.Errorf("Depmod wrote %d files, want %d", len(got), len(DepmodFiles))
	}
	for _, n := range DepmodFiles {
		w, g := want[n], got[n]
		if bytes.Equal(w, g) {
			continue
		}
		i := 0
		for i < len(w) && i < len(g) && w[i] == g[i] {
			i++
		}
		lo := max(i-80, 0)
		t.Errorf("%s differs from depmod's (%d bytes, ours %d) at byte %d:\ndepmod: %q\nours:   %q", n, len(w), len(g), i, w[lo:min(i+80, len(w))], g[lo:min(i+80, len(g))])
	}
}

// installedModuleTrees are the /lib/modules/<k> directories of the
// installed kernels that have modules.
func installedModuleTrees(t testing.TB) []string {
	t.Helper()
	entries, _ := os.ReadDir("/lib/modules")
	var out []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join("/lib/modules", e.Name(), "modules.order")); err == nil {
			out = append(out, e.Name())
		}
	}
	if len(out) == 0 {
		testkit.Missing(t, "a kernel with modules under /lib/modules (apt-get install linux-image-cloud-amd64)")
	}
	return out
}

// TestDepmodFullTrees computes the indexes of each installed kernel's
// whole module tree (about a thousand modules for the cloud kernel:
// aliases, softdeps, devnames, builtin files) and compares them byte
// for byte with what the real depmod writes for the same tree.
func TestDepmodFullTrees(t *testing.T) {
	testkit.RequireTool(t, "depmod", "kmod")
	cfg, err := LoadDepmodConfig(DepmodConfigDirs, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range installedModuleTrees(t) {
		t.Run(k, func(t *testing.T) {
			dir := filepath.Join("/lib/modules", k)
			cfg, err := LoadDepmodConfig(DepmodConfigDirs, k)
			if err != nil {
				t.Fatal(err)
			}
			in, err := depmodTreeInput(t, dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			links := map[string]string{}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if n := e.Name(); e.IsDir() && cfg.Searched(n) || depmodInputs[n] {
					links[n] = filepath.Join(dir, n)
				}
			}
			want := realDepmod(t, k, links)
			got, err := Depmod(in)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d modules, modules.dep %d bytes, modules.alias %d bytes, modules.devname %d bytes", k, len(in.Modules), len(got["modules.dep"]), len(got["modules.alias"]), len(got["modules.devname"]))
			if len(in.Modules) < 100 || bytes.Count(want["modules.devname"], []byte("\n")) < 2 || len(want["modules.softdep"]) < 80 {
				t.Errorf("the tree is too small to test much: %d modules", len(in.Modules))
			}
			compareDepmod(t, want, got)
		})
	}
	_ = cfg
	_ = errors.Is
	_ = strings.Contains
}
