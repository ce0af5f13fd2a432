package lifecycle

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree"
)

// TestSweepTempsLeftovers: every temporary name a killed process can leave
// is removed, with an empty version dir a swept stage left; the tree's
// own files, the kept initrd index and names that merely look alike stay.
func TestSweepTempsLeftovers(t *testing.T) {
	root := t.TempDir()
	l := tree.NewLayout(root)
	e := &Env{Layout: l, Sink: Discard}
	tr := l.DKMSTree
	k := "6.1.0-99-test"
	gone := []string{
		"foo/1.0/" + k + "/.tmp_build-1/x.o",          // a build stage
		"foo/1.0/" + k + "/.tmp_load_7/dkms.conf",     // an ldtarball stage
		"foo/1.0/" + k + "/.dkmsd-unbuild-3/log",      // an unbuild rename
		"foo/1.0/" + k + "/x86_64.dkmsd-old-5/module", // a forced rebuild's old dir
		"foo/.dkmsd-remove-9/1.0/x",                   // a remove rename
		"foo/.dkmsd-link-4",                           // a kernel link being made
		"foo/original_module/" + k + "/x86_64/.dkmsd-foo.ko-2",
		".dkmsd/initrd/.dkmsd-" + k + ".json-8",
		".dkmsd/.dkmsd-state-1",
		"bar/2.0/" + k + "/.tmp_x/y", // the only thing in bar/2.0/<k>
	}
	kept := []string{
		"foo/1.0/" + k + "/x86_64/module/foo.ko",
		"foo/1.0/" + k + "/x86_64/log/make.log",
		"foo/original_module/" + k + "/x86_64/foo.ko",
		"foo/1.0/" + k + "/tmp_not_hidden",
		".dkmsd/initrd/" + k + ".json",
		".dkmsd/initrd/" + k + ".cache/index.json",
		"foo/.dkmsd-other",
		"foo/1.0/source", // the link (Walk lists it as a file)
	}
	for _, f := range append(append([]string{}, gone...), kept[:len(kept)-1]...) {
		p := filepath.Join(tr, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The source link leads into /usr/src, to the package's own files,
	// which may hold a .tmp_versions of their own.
	src := filepath.Join(root, "usr/src/foo-1.0")
	own := filepath.Join(src, ".tmp_versions", "foo.mod")
	os.MkdirAll(filepath.Dir(own), 0o755)
	os.WriteFile(own, []byte("x"), 0o644)
	if err := os.Symlink(src, filepath.Join(tr, "foo/1.0/source")); err != nil {
		t.Fatal(err)
	}
	boot := filepath.Join(l.BootDir, ".initrd.img-"+k+".dkmsd-6")
	os.MkdirAll(l.BootDir, 0o755)
	os.WriteFile(boot, []byte("x"), 0o644)

	e.sweepTemps()

	var left []string
	filepath.Walk(tr, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(tr, p)
			left = append(left, rel)
		}
		return nil
	})
	sort.Strings(left)
	want := append([]string{}, kept...)
	sort.Strings(want)
	if strings.Join(left, "\n") != strings.Join(want, "\n") {
		t.Errorf("files after the sweep:\n  %s\nwant:\n  %s", strings.Join(left, "\n  "), strings.Join(want, "\n  "))
	}
	if _, err := os.Stat(filepath.Join(tr, "bar/2.0", k)); !os.IsNotExist(err) {
		t.Errorf("the kernel dir whose only content was a swept stage is still there (%v)", err)
	}
	if _, err := os.Stat(own); err != nil {
		t.Errorf("the package's own %s, under the source link, was swept: %v", own, err)
	}
	if _, err := os.Stat(boot); !os.IsNotExist(err) {
		t.Errorf("the half-written initrd %s is still there (%v)", boot, err)
	}
}
