package initrd

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path"
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
func realDepmod(t testing.TB, k string, links map[string]string, args ...string) map[string][]byte {
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
	if out, err := exec.Command("depmod", append(args, "-a", "-b", stage, k)...).CombinedOutput(); err != nil {
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
}

// TestKmodTrieTinyTree writes the two index files of a tree with no
// modules — modules.builtin.bin from a hand-made modules.builtin and
// modules.builtin.alias.bin from a hand-made modules.builtin.modinfo —
// whose keys make the trie split prefixes, branch, hold several values
// for one key (newest first) and keep brackets and dashes as depmod
// does; both must be depmod's bytes.
func TestKmodTrieTinyTree(t *testing.T) {
	testkit.RequireTool(t, "depmod", "kmod")
	const k = "0.0.0-dkmsd-trie"
	builtin := "kernel/a/abcdef.ko\nkernel/a/abc.ko\nkernel/b/abd.ko\nkernel/ab.ko\nkernel/x-y.ko\nkernel/b.ko\n_bad line\n"
	modinfo := "abc.alias=pci:v0000*d[0-9-]*\x00abc.license=GPL\x00abd.alias=pci:v0000*d-1\x00" +
		"ab.alias=usb-ab\x00b.alias=usb-ab\x00x_y.alias=usb-ab\x00x_y.alias=bad]\x00nodot=alias\x00abd.alias=z\x00"
	dir := t.TempDir()
	files := map[string][]byte{"modules.builtin": []byte(builtin), "modules.builtin.modinfo": []byte(modinfo)}
	links := map[string]string{}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
		links[n] = filepath.Join(dir, n)
	}
	want := realDepmod(t, k, links)
	got, err := Depmod(&DepmodInput{Files: files, Config: &DepmodConfig{Searches: []string{"updates"}}})
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, want, got)
	if len(want["modules.builtin.alias.bin"]) < 100 || len(want["modules.builtin.bin"]) < 60 {
		t.Errorf("depmod's tries are %d and %d bytes: the tree did not give it the keys", len(want["modules.builtin.alias.bin"]), len(want["modules.builtin.bin"]))
	}
}

// TestKmodTrieBytes spells out the smallest trie: one key "a" with value
// "x" at priority 0 — the leaf (no prefix, one value) written first, then
// the root with its one child.
func TestKmodTrieBytes(t *testing.T) {
	trie := &kmodTrie{}
	if err := trie.insert("a", "x", 0); err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0xb0, 0x07, 0xf4, 0x57, 0, 2, 0, 1, 0x20, 0, 0, 22, // magic, version 2.1, root at 22 with children
		0, 0, 0, 1, 0, 0, 0, 0, 'x', 0, // leaf at 12: one value, priority 0, "x"
		'a', 'a', 0x40, 0, 0, 12, // root: children 'a'..'a', the leaf at 12 with values
	}
	if got := trie.bytes(); !bytes.Equal(got, want) {
		t.Errorf("trie bytes\n got %x\nwant %x", got, want)
	}
	if err := trie.insert("\xe9", "x", 0); !errors.Is(err, errDepmodUnsure) {
		t.Errorf("a non-ASCII key: %v, want errDepmodUnsure", err)
	}
}

// TestDepmodUnsure: each input whose depmod answer this package does not
// claim to know is refused, so the caller runs depmod.
func TestDepmodUnsure(t *testing.T) {
	cfg := &DepmodConfig{Searches: []string{"updates"}}
	mod := func(rel string, exports, needs []string, info ...[2]string) *DepmodModule {
		return &DepmodModule{Name: modnameOf(rel), Rel: rel, Exports: exports, Needs: needs, Info: info}
	}
	cases := []struct {
		name string
		in   *DepmodInput
		want string
	}{
		{"cycle", &DepmodInput{Config: cfg, Modules: []*DepmodModule{
			mod("kernel/a.ko", []string{"a_sym"}, []string{"b_sym"}), mod("kernel/b.ko", []string{"b_sym"}, []string{"a_sym"}),
		}}, "cycle"},
		{"equal priority", &DepmodInput{Config: cfg, Modules: []*DepmodModule{
			mod("kernel/a/foo.ko", nil, nil), mod("extra/foo.ko", nil, nil),
		}}, "equal priority"},
		{"non-ASCII alias", &DepmodInput{Config: cfg, Modules: []*DepmodModule{
			mod("kernel/a.ko", nil, nil, [2]string{"alias", "caf\xc3\xa9"}),
		}}, "non-ASCII"},
		{"external", &DepmodInput{Config: &DepmodConfig{Searches: []string{"external"}, External: true}}, "external"},
		{"built-in name", &DepmodInput{Config: cfg, Files: map[string][]byte{"modules.builtin": []byte("kernel/x/foo.ko\n")}, Modules: []*DepmodModule{
			mod("updates/dkms/foo.ko", nil, nil),
		}}, "built-in"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Depmod(tc.in); !errors.Is(err, errDepmodUnsure) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Depmod: %v, want errDepmodUnsure saying %q", err, tc.want)
			}
		})
	}
	// Priority decides: updates/ beats the image's kernel/ either way.
	out, err := Depmod(&DepmodInput{Config: cfg, Modules: []*DepmodModule{mod("kernel/a/foo.ko", nil, nil), mod("updates/dkms/foo.ko", nil, nil)}})
	if err != nil || string(out["modules.dep"]) != "updates/dkms/foo.ko:\n" {
		t.Errorf("Depmod: %v, modules.dep %q; want updates/dkms/foo.ko alone", err, out["modules.dep"])
	}
	for _, rel := range []string{"updates/foo.ko.xz", "updates/foo.ko.zst", "updates/foo.ko.gz"} {
		if _, err := ReadDepmodModule(rel, []byte("\xfd7zXZ")); !errors.Is(err, errDepmodUnsure) {
			t.Errorf("ReadDepmodModule(%s): %v, want errDepmodUnsure", rel, err)
		}
	}
	if _, err := ReadDepmodModule("updates/foo.ko", []byte("not an ELF file at all")); !errors.Is(err, errDepmodUnsure) {
		t.Errorf("ReadDepmodModule of a non-ELF: %v, want errDepmodUnsure", err)
	}
}

// TestDepmodConfigDifferential gives depmod and dkmsd the same depmod.d
// directory (depmod -C) and a tree where it decides: one module in
// kernel/, updates/ and custom/ under "search custom updates built-in"
// (written across a backslash-newline), one in kernel/ and extra/ with
// "override … extra", one also in updates/ with an override for kernel/
// whose kernel pattern does not match, and one only in an excluded
// directory. The ten files must be the same.
func TestDepmodConfigDifferential(t *testing.T) {
	testkit.RequireTool(t, "depmod", "kmod")
	k := installedModuleTrees(t)[0]
	dep, err := os.ReadFile(filepath.Join("/lib/modules", k, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	var picked []string
	for _, l := range strings.Split(string(dep), "\n") {
		if rel, deps, _ := strings.Cut(l, ":"); strings.HasSuffix(rel, ".ko") && strings.TrimSpace(deps) == "" && len(picked) < 4 {
			picked = append(picked, rel)
		}
	}
	if len(picked) < 4 {
		t.Fatalf("%s has %d modules without dependencies", k, len(picked))
	}
	a, b, c := path.Base(picked[0]), path.Base(picked[1]), path.Base(picked[2])
	src := func(rel string) string { return filepath.Join("/lib/modules", k, rel) }
	links := map[string]string{
		picked[0]: src(picked[0]), "updates/" + a: src(picked[0]), "custom/" + a: src(picked[0]),
		picked[1]: src(picked[1]), "extra/" + b: src(picked[1]),
		picked[2]: src(picked[2]), "updates/" + c: src(picked[2]),
		"skipme/" + path.Base(picked[3]): src(picked[3]),
	}
	conf := t.TempDir()
	// kmod compares an override with the file's path: the module's name
	// as its file spells it.
	stem := func(f string) string { return strings.TrimSuffix(f, ".ko") }
	text := "# dkmsd test\nsearch custom \\\n updates built-in\noverride " + stem(b) + " * extra\n" +
		"override " + stem(c) + " ^no-such-kernel " + path.Dir(picked[2]) + "\nexclude skipme\n"
	if err := os.WriteFile(filepath.Join(conf, "dkmsd.conf"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	const fake = "0.0.0-dkmsd-conf"
	want := realDepmod(t, fake, links, "-C", conf)
	cfg, err := LoadDepmodConfig([]string{conf}, fake)
	if err != nil {
		t.Fatal(err)
	}
	in := &DepmodInput{Files: map[string][]byte{}, Config: cfg}
	for rel, target := range links {
		data, err := os.ReadFile(target)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ReadDepmodModule(rel, data)
		if err != nil {
			t.Fatal(err)
		}
		in.Modules = append(in.Modules, m)
	}
	got, err := Depmod(in)
	if err != nil {
		t.Fatal(err)
	}
	compareDepmod(t, want, got)
	for _, line := range []string{"custom/" + a + ":", "extra/" + b + ":", "updates/" + c + ":"} {
		if !strings.Contains(string(want["modules.dep"]), line) {
			t.Errorf("depmod's modules.dep lacks %q: the configuration did not decide as meant", line)
		}
	}
	if n := strings.Count(string(want["modules.dep"]), "\n"); n != 3 {
		t.Errorf("depmod's modules.dep has %d modules, want 3 (skipme/ excluded)", n)
	}
}
