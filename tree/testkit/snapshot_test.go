package testkit

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestSnapshotSeesEveryChange changes a file's bytes, a mode and a link
// target, and adds a file: each shows in Changes, and a snapshot taken
// again without changes is equal.
func TestSnapshotSeesEveryChange(t *testing.T) {
	dir := t.TempDir()
	sub, file, link := filepath.Join(dir, "sub"), filepath.Join(dir, "sub", "f"), filepath.Join(dir, "l")
	WriteModule(t, sub, map[string]string{"f": "one"})
	if err := os.Symlink("sub/f", link); err != nil {
		t.Fatal(err)
	}
	before := Snapshot(t, dir)
	if again := Snapshot(t, dir); !slices.Equal(again, before) {
		t.Fatalf("two snapshots of an unchanged dir differ:\n%q\n%q", before, again)
	}
	if gone, added := Changes(before, before); len(gone)+len(added) != 0 {
		t.Errorf("Changes of a snapshot with itself: %q, %q", gone, added)
	}

	os.WriteFile(file, []byte("two"), 0o644)
	os.Chmod(sub, 0o700)
	os.Remove(link)
	os.Symlink("elsewhere", link)
	os.WriteFile(filepath.Join(dir, "new"), nil, 0o600)
	gone, added := Changes(before, Snapshot(t, dir))
	for _, want := range []string{"sub ", "sub/f ", "l "} {
		if !slices.ContainsFunc(gone, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("gone/changed %q lacks a line for %q", gone, want)
		}
	}
	for _, want := range []string{"sub ", "sub/f ", "l ", "new "} {
		if !slices.ContainsFunc(added, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("new/changed %q lacks a line for %q", added, want)
		}
	}
	if got := Snapshot(t, filepath.Join(dir, "absent")); len(got) != 0 {
		t.Errorf("snapshot of a missing dir: %q, want none", got)
	}
}
