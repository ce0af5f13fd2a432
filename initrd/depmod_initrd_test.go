package initrd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// depmodBuilt are DKMS test modules built once for the boot kernel's
// headers: dkmsd_hello (testdata), dkmsd_alpha exporting a symbol that
// dkmsd_beta needs, all three with one shared alias, and a module named
// as one of the image's own (same), by file name.
type depmodBuilt struct {
	kernel string
	same   string // the image's module whose name "same" has
	files  map[string][]byte
}

var depmodBuild testkit.Once[*depmodBuilt]

// sameNameTarget is the image module most others depend on: replacing it
// changes many lines of modules.dep.
func sameNameTarget(idx *Index, dep []byte) string {
	users := map[string]int{}
	for _, l := range strings.Split(string(dep), "\n") {
		_, deps, _ := strings.Cut(l, ":")
		for _, d := range strings.Fields(deps) {
			users[d]++
		}
	}
	mods := idx.Modules()
	sort.SliceStable(mods, func(i, j int) bool { return users[mods[i]] > users[mods[j]] })
	return modnameOf(mods[0])
}

func buildDepmodModules(t *testing.T, img *Image, idx *Index) *depmodBuilt {
	t.Helper()
	testkit.RequireTool(t, "make", "make")
	k := idx.Kernel
	return depmodBuild.Get(t, func() (*depmodBuilt, error) {
		dep, err := img.Content(idx.ModulesDir + "/modules.dep")
		if err != nil {
			return nil, err
		}
		b := &depmodBuilt{kernel: k, same: sameNameTarget(idx, dep), files: map[string][]byte{}}
		dir, err := os.MkdirTemp("", "dkmsd-depmod-mods-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		hello, err := os.ReadFile(filepath.Join(testkit.ModulesDir(), "dkmsd_hello-1.0", "dkmsd_hello.c"))
		if err != nil {
			return nil, err
		}
		src := map[string]string{
			"dkmsd_hello.c": string(hello) + "MODULE_ALIAS(\"dkmsd-shared\");\nMODULE_ALIAS(\"char-major-511-7\");\nMODULE_ALIAS(\"devname:dkmsd/hello\");\nMODULE_SOFTDEP(\"pre: dkmsd_alpha\");\n",
			"dkmsd_alpha.c": "#include <linux/module.h>\nint dkmsd_alpha_answer(void) { return 42; }\nEXPORT_SYMBOL_GPL(dkmsd_alpha_answer);\nMODULE_LICENSE(\"GPL\");\nMODULE_ALIAS(\"dkmsd-shared\");\n",
			"dkmsd_beta.c":  "#include <linux/module.h>\nextern int dkmsd_alpha_answer(void);\nstatic int __init b_init(void) { return dkmsd_alpha_answer() - 42; }\nmodule_init(b_init);\nMODULE_LICENSE(\"GPL\");\nMODULE_ALIAS(\"dkmsd-shared\");\nMODULE_ALIAS(\"pci:v0000DEADd*sv*sd*bc*sc*i*\");\n",
			b.same + ".c":   "#include <linux/module.h>\nstatic int __init s_init(void) { return 0; }\nmodule_init(s_init);\nMODULE_LICENSE(\"GPL\");\nMODULE_ALIAS(\"dkmsd-same\");\n",
		}
		var objs []string
		for name, text := range src {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
				return nil, err
			}
			objs = append(objs, strings.TrimSuffix(name, ".c")+".o")
		}
		sort.Strings(objs)
		if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte("obj-m += "+strings.Join(objs, " ")+"\n"), 0o644); err != nil {
			return nil, err
		}
		if out, err := exec.Command("make", "-C", "/lib/modules/"+k+"/build", "M="+dir, "modules").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("building the test modules: %v\n%s", err, out)
		}
		for _, o := range objs {
			name := strings.TrimSuffix(o, ".o") + ".ko"
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return nil, err
			}
			b.files[name] = data
		}
		return b, nil
	})
}

// bootInitrdIndex indexes the machine's cloud-kernel initrd in a
// temporary directory.
func bootInitrdIndex(t *testing.T) (*Image, *Base) {
	t.Helper()
	k := testkit.BootKernel(t)
	img, err := Read("/boot/initrd.img-" + k)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "cache")
	if _, err := WriteIndex(img, k, Digest(img.Data), dir); err != nil {
		t.Fatal(err)
	}
	// The index as an append finds it: read back from the directory.
	idx := LoadIndex(dir, Digest(img.Data), k)
	if idx == nil {
		t.Fatal("LoadIndex did not return the index just written")
	}
	if len(idx.depmod.modules) < 50 || len(idx.depmod.unsure) != 0 {
		t.Fatalf("depmod.meta has %d modules, %d it cannot read (%v)", len(idx.depmod.modules), len(idx.depmod.unsure), idx.depmod.unsure)
	}
	return img, &Base{Data: img.Data, Index: idx, Dir: dir}
}

// TestDepmodInitrdDifferential computes the indexes of the machine's
// cloud-kernel initrd with DKMS modules added (or one of its own removed)
// from the index's depmod.meta, and compares them byte for byte with
// what the real depmod writes over the index's stubs and the same
// modules.
func TestDepmodInitrdDifferential(t *testing.T) {
	testkit.RequireTool(t, "depmod", "kmod")
	img, base := bootInitrdIndex(t)
	built := buildDepmodModules(t, img, base.Index)
	sameRel := ""
	for _, rel := range base.Index.Modules() {
		if modnameOf(rel) == built.same {
			sameRel = rel
		}
	}
	t.Logf("the DKMS module named as one of the image's: %s (%s)", built.same, sameRel)
	cases := []struct {
		name   string
		add    map[string]string // rel -> built file
		remove []string
		check  func(t *testing.T, dep string)
		files  func(t *testing.T, got map[string][]byte)
	}{
		{name: "hello", add: map[string]string{"updates/dkms/dkmsd_hello.ko": "dkmsd_hello.ko"}, files: func(t *testing.T, got map[string][]byte) {
			for name, line := range map[string]string{
				"modules.devname": "dkmsd_hello dkmsd/hello c511:7\n",
				"modules.softdep": "softdep dkmsd_hello pre: dkmsd_alpha\n",
				"modules.alias":   "alias dkmsd-shared dkmsd_hello\n",
				"modules.dep":     "updates/dkms/dkmsd_hello.ko:\n",
			} {
				if !strings.Contains(string(got[name]), line) {
					t.Errorf("%s lacks %q", name, line)
				}
			}
		}},
		{name: "three", add: map[string]string{
			"updates/dkms/dkmsd_hello.ko": "dkmsd_hello.ko", "updates/dkms/dkmsd_alpha.ko": "dkmsd_alpha.ko", "updates/dkms/dkmsd_beta.ko": "dkmsd_beta.ko",
		}, check: func(t *testing.T, dep string) {
			if !strings.Contains(dep, "updates/dkms/dkmsd_beta.ko: updates/dkms/dkmsd_alpha.ko\n") {
				t.Errorf("modules.dep does not make dkmsd_beta need dkmsd_alpha")
			}
		}},
		// A DKMS module named as one of the image's, under updates/dkms:
		// depmod's default search puts updates first.
		{name: "same-name", add: map[string]string{"updates/dkms/" + built.same + ".ko": built.same + ".ko"}, check: func(t *testing.T, dep string) {
			if strings.Contains(dep, sameRel) || !strings.Contains(dep, "updates/dkms/"+built.same+".ko:") {
				t.Errorf("modules.dep still lists %s or not updates/dkms/%s.ko", sameRel, built.same)
			}
		}},
		{name: "remove", remove: []string{sameRel}, add: map[string]string{"extra/dkmsd_hello.ko": "dkmsd_hello.ko"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			plan := Plan{Kernel: base.Index.Kernel, Remove: tc.remove, TmpDir: t.TempDir()}
			add := map[string][]byte{}
			for rel, f := range tc.add {
				add[rel] = built.files[f]
			}
			got, err := computeIndexes(base, plan, add)
			if err != nil {
				t.Fatal(err)
			}
			want, err := runDepmod(context.Background(), base, plan, add)
			if err != nil {
				t.Fatal(err)
			}
			compareDepmod(t, want, got)
			if tc.check != nil {
				tc.check(t, string(got["modules.dep"]))
			}
			if tc.files != nil {
				tc.files(t, got)
			}
		})
	}
}

// TestDepmodFallback: where dkmsd cannot be sure of depmod's answer —
// here a DKMS module named as one of the image's, put in a directory of
// the same search priority as the image's (extra/, not updates/): which
// one depmod keeps depends on the order it lists directories in — the
// append runs the real depmod and says why, and the image is right.
func TestDepmodFallback(t *testing.T) {
	testkit.RequireTool(t, "depmod", "kmod")
	img, base := bootInitrdIndex(t)
	built := buildDepmodModules(t, img, base.Index)
	rel := "extra/" + built.same + ".ko"
	plan := Plan{Kernel: base.Index.Kernel, TmpDir: t.TempDir()}
	if _, err := computeIndexes(base, plan, map[string][]byte{rel: built.files[built.same+".ko"]}); !errors.Is(err, errDepmodUnsure) || !strings.Contains(err.Error(), "equal priority") {
		t.Fatalf("Depmod: %v, want that it cannot be sure (equal priority)", err)
	}
	src := filepath.Join(t.TempDir(), built.same+".ko")
	if err := os.WriteFile(src, built.files[built.same+".ko"], 0o644); err != nil {
		t.Fatal(err)
	}
	plan.Add = []File{{Src: src, Rel: rel}}
	out, rep, err := BuildBase(context.Background(), base, plan, Append)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rep.DepmodRun, "equal priority") {
		t.Errorf("Report.DepmodRun = %q, want why the real depmod ran", rep.DepmodRun)
	}
	got, err := Parse(out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	dep, err := got.Content(path.Join(base.Index.ModulesDir, "modules.dep"))
	if err != nil {
		t.Fatal(err)
	}
	want, err := runDepmod(context.Background(), base, plan, map[string][]byte{rel: built.files[built.same+".ko"]})
	if err != nil {
		t.Fatal(err)
	}
	if string(dep) != string(want["modules.dep"]) {
		t.Errorf("the image's modules.dep is not the one depmod wrote")
	}

	// The usual case says nothing.
	plan.Add = []File{{Src: src, Rel: "updates/dkms/" + built.same + ".ko"}}
	if _, rep, err = BuildBase(context.Background(), base, plan, Append); err != nil || rep.DepmodRun != "" {
		t.Errorf("BuildBase: %v, DepmodRun %q; want dkmsd's own indexes", err, rep.DepmodRun)
	}
}

// BenchmarkDepmodAppend times what appending one module to the machine's
// cloud-kernel initrd costs around its indexes, in process: load-index
// (index.json and depmod.meta, as every append does), go (dkmsd's
// indexes from depmod.meta and the new module), depmod (the real depmod
// over a staging tree of the stubs, as before), and build (all of
// BuildBase's append: indexes, segment, read-back check).
//
//	go test -run '^$' -bench DepmodAppend -benchtime 10x ./initrd
func BenchmarkDepmodAppend(b *testing.B) {
	testkit.RequireTool(b, "depmod", "kmod")
	k := testkit.BootKernel(b)
	img, err := Read("/boot/initrd.img-" + k)
	if err != nil {
		b.Fatal(err)
	}
	dir := filepath.Join(b.TempDir(), "cache")
	if _, err := WriteIndex(img, k, Digest(img.Data), dir); err != nil {
		b.Fatal(err)
	}
	digest := Digest(img.Data)
	idx := LoadIndex(dir, digest, k)
	base := &Base{Data: img.Data, Index: idx, Dir: dir}
	// A module of the kernel's own tree stands for the DKMS one: the
	// benchmark needs no compiler.
	src := filepath.Join("/lib/modules", k, idx.Modules()[0])
	data, err := os.ReadFile(src)
	if err != nil {
		b.Fatal(err)
	}
	rel := "updates/dkms/dkmsd_bench.ko"
	add := map[string][]byte{rel: data}
	plan := Plan{Kernel: k, TmpDir: b.TempDir(), Add: []File{{Src: src, Rel: rel}}, Load: []string{"dkmsd_bench"}}
	b.Run("load-index", func(b *testing.B) {
		for range b.N {
			if LoadIndex(dir, digest, k) == nil {
				b.Fatal("no index")
			}
		}
	})
	b.Run("go", func(b *testing.B) {
		for range b.N {
			if _, err := computeIndexes(base, plan, add); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("depmod", func(b *testing.B) {
		for range b.N {
			if _, err := runDepmod(context.Background(), base, plan, add); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("build", func(b *testing.B) {
		for range b.N {
			if _, rep, err := BuildBase(context.Background(), base, plan, Append); err != nil || rep.DepmodRun != "" {
				b.Fatal(err, rep)
			}
		}
	})
}
