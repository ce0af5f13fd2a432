package testkit

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestRestoreMachine changes a small tree every way a system test does and
// checks that restoreMachine puts it back exactly, and names what it could
// not put back.
func TestRestoreMachine(t *testing.T) {
	dir := t.TempDir()
	p := func(rel string) string { return filepath.Join(dir, rel) }
	write := func(rel, data string, mode os.FileMode) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p(rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p(rel), []byte(data), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("boot/initrd.img-k", "original initrd", 0o644)
	write("lib/modules/k/modules.dep", "a.ko:\n", 0o644)
	write("lib/modules/k/kernel/a.ko", "module a", 0o644)
	write("lib/modules/k/modules.alias", "alias a", 0o644)
	write("etc/kernel/postinst.d/dkms", "#!/bin/sh\n", 0o755)
	if err := os.Symlink("boot/vmlinuz-k", p("vmlinuz")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(p("var"), 0o700); err != nil {
		t.Fatal(err)
	}
	paths := []string{p("boot"), p("lib"), p("etc"), p("vmlinuz"), p("vmlinuz.old"), p("var")}
	want := Tree(t, dir)
	wantBytes := map[string]string{}
	for _, f := range []string{"boot/initrd.img-k", "lib/modules/k/modules.dep", "lib/modules/k/modules.alias", "etc/kernel/postinst.d/dkms"} {
		b, _ := os.ReadFile(p(f))
		wantBytes[f] = string(b)
	}
	before, err := recordMachine(paths, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	// Replaced (as dpkg and depmod do), removed, created, relinked,
	// chmodded; a file replaced by the same bytes is no change.
	write(".new", "regenerated initrd", 0o644)
	if err := os.Rename(p(".new"), p("boot/initrd.img-k")); err != nil {
		t.Fatal(err)
	}
	write(".dep", "a.ko:\n", 0o644)
	if err := os.Rename(p(".dep"), p("lib/modules/k/modules.dep")); err != nil {
		t.Fatal(err)
	}
	// Same size, other bytes: only the contents tell.
	write(".alias", "alias b", 0o644)
	if err := os.Rename(p(".alias"), p("lib/modules/k/modules.alias")); err != nil {
		t.Fatal(err)
	}
	os.Remove(p("etc/kernel/postinst.d/dkms"))
	write("lib/modules/other/modules.alias", "alias x", 0o644)
	write("lib/modules/k/updates/dkms/hello.ko", "hello", 0o644)
	write("var/mok.key", "secret", 0o600)
	os.Remove(p("vmlinuz"))
	os.Symlink("boot/vmlinuz-other", p("vmlinuz"))
	os.Symlink("boot/vmlinuz-k", p("vmlinuz.old"))
	os.Chmod(p("var"), 0o755)

	restored, failed := restoreMachine(paths, before)
	if len(failed) > 0 {
		t.Errorf("could not put back: %q", failed)
	}
	if got := Tree(t, dir); !slices.Equal(got, want) {
		t.Errorf("after restore:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for f, w := range wantBytes {
		if b, _ := os.ReadFile(p(f)); string(b) != w {
			t.Errorf("%s = %q, want %q", f, b, w)
		}
	}
	if fi, _ := os.Stat(p("var")); fi.Mode().Perm() != 0o700 {
		t.Errorf("var is %o, want 700", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(p("etc/kernel/postinst.d/dkms")); fi == nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("postinst.d/dkms not back with mode 755: %v", fi)
	}
	for _, w := range []string{"lib/modules/other: new, removed", "var/mok.key: new, removed", "boot/initrd.img-k: changed, put back", "etc/kernel/postinst.d/dkms: gone, put back", "vmlinuz.old: new, removed"} {
		if !slices.ContainsFunc(restored, func(r string) bool {
			return strings.HasPrefix(r, p(w[:strings.Index(w, ":")])+w[strings.Index(w, ":"):])
		}) {
			t.Errorf("restored %q, want a line %q", restored, w)
		}
	}
	if slices.ContainsFunc(restored, func(r string) bool { return strings.Contains(r, "modules.dep") }) {
		t.Errorf("modules.dep replaced by the same bytes is reported as restored: %q", restored)
	}
	if again, failed := restoreMachine(paths, before); len(again)+len(failed) > 0 {
		t.Errorf("a second restore changed %q, failed %q; want nothing to do", again, failed)
	}

	// A small file rewritten in place (dkmsd's lock file) was copied, so
	// it is put back; a large one rewritten in place changed its hard-
	// linked copy too: named, not hidden.
	write("var/lock", "", 0o644)
	write("boot/big", strings.Repeat("x", smallFile+1), 0o644)
	before, err = recordMachine(paths, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"var/lock", "boot/big"} {
		f, err := os.OpenFile(p(f), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("rewritten in place!")
		f.Close()
	}
	_, failed = restoreMachine(paths, before)
	if len(failed) != 1 || !strings.Contains(failed[0], "boot/big") || !strings.Contains(failed[0], "in place") {
		t.Errorf("after in-place rewrites: failed %q, want one line naming boot/big and the in-place rewrite", failed)
	}
	if b, err := os.ReadFile(p("var/lock")); err != nil || len(b) != 0 {
		t.Errorf("var/lock after restore = %q, %v; want it empty again", b, err)
	}
}
