package initrd_test

// Tests of Build (append a segment, or rewrite the main archive) on the
// fixtures of image_test.go holding real kernel modules from this
// machine, so that the real depmod indexes them, and on the machine's real
// Debian initrd; and of WriteAtomic and State.

import (
	"bufio"
	"bytes"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// hostModule is a real kernel module of this machine.
type hostModule struct {
	rel  string // kernel/lib/crc7.ko
	name string // crc7
	data []byte
}

var hostModulesOnce struct {
	sync.Once
	mods []hostModule
	err  string
}

// hostModules returns n small modules of this machine's kernel that
// depend on no other module, smallest first, skipping those skip
// rejects. A real .ko is what depmod expects; there is one in every
// kernel image package.
func hostModules(t testing.TB, n int, skip func(hostModule) bool) []hostModule {
	t.Helper()
	hostModulesOnce.Do(func() {
		dirs, _ := filepath.Glob("/lib/modules/*/modules.dep")
		// Prefer the newest cloud kernel, the one the Real tests boot.
		kernelOf := func(dep string) string { return filepath.Base(filepath.Dir(dep)) }
		sort.Slice(dirs, func(i, j int) bool {
			ci, cj := testkit.Flavour(kernelOf(dirs[i])) == testkit.CloudFlavour, testkit.Flavour(kernelOf(dirs[j])) == testkit.CloudFlavour
			if ci != cj {
				return ci
			}
			return tree.CompareVersions(kernelOf(dirs[i]), kernelOf(dirs[j])) > 0
		})
		if len(dirs) == 0 {
			hostModulesOnce.err = "kernel modules in /lib/modules (apt-get install -y linux-image-cloud-amd64)"
			return
		}
		f, err := os.Open(dirs[0])
		if err != nil {
			hostModulesOnce.err = err.Error()
			return
		}
		defer f.Close()
		type cand struct {
			rel  string
			size int64
		}
		var cands []cand
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			rel, deps, _ := strings.Cut(sc.Text(), ":")
			if strings.TrimSpace(deps) != "" || !strings.HasSuffix(rel, ".ko") {
				continue
			}
			if fi, err := os.Stat(filepath.Join(filepath.Dir(dirs[0]), rel)); err == nil {
				cands = append(cands, cand{rel, fi.Size()})
			}
		}
		sort.Slice(cands, func(i, j int) bool {
			if cands[i].size != cands[j].size {
				return cands[i].size < cands[j].size
			}
			return cands[i].rel < cands[j].rel
		})
		for _, c := range cands[:min(len(cands), 40)] {
			data, err := os.ReadFile(filepath.Join(filepath.Dir(dirs[0]), c.rel))
			if err != nil {
				continue
			}
			hostModulesOnce.mods = append(hostModulesOnce.mods, hostModule{rel: c.rel, name: strings.TrimSuffix(path.Base(c.rel), ".ko"), data: data})
		}
	})
	if hostModulesOnce.err != "" {
		testkit.Missing(t, hostModulesOnce.err)
	}
	var out []hostModule
	for _, m := range hostModulesOnce.mods {
		if len(out) < n && (skip == nil || !skip(m)) {
			out = append(out, m)
		}
	}
	if len(out) < n {
		testkit.Missing(t, "uncompressed kernel modules without dependencies in /lib/modules (apt-get install -y linux-image-cloud-amd64)")
	}
	return out
}

// depmodIndexes runs the real depmod over the modules (paths relative to
// lib/modules/<testKernel>) and returns the index files it wrote.
func depmodIndexes(t testing.TB, mods map[string][]byte) map[string][]byte {
	t.Helper()
	stage := t.TempDir()
	kdir := filepath.Join(stage, "lib", "modules", testKernel)
	for rel, data := range mods {
		p := filepath.Join(kdir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	testkit.MustRun(t, "depmod", "-a", "-b", stage, testKernel)
	idx := map[string][]byte{}
	files, _ := filepath.Glob(filepath.Join(kdir, "modules.*"))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		idx[filepath.Base(f)] = data
	}
	return idx
}

// buildFixture is an image for Build tests: a microcode segment, then a
// main archive compressed with c holding real modules and the indexes the
// real depmod made for them.
func buildFixture(t testing.TB, c codec, s mainSpec) []byte {
	t.Helper()
	s.indexes = depmodIndexes(t, s.modules)
	data, _ := assemble(t, part{recs: microcodeRecords(), codec: codecNamed(t, "none"), padTo: 512}, part{recs: mainRecords(s), codec: c})
	return data
}

func requireBuildTools(t testing.TB) {
	t.Helper()
	testkit.RequireTool(t, "depmod", "kmod")
	testkit.RequireTool(t, "modprobe", "kmod")
}

func parse(t testing.TB, data []byte) *initrd.Image {
	t.Helper()
	img, err := initrd.Parse(data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return img
}

func writeModule(t testing.TB, m hostModule) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), m.name+".ko")
	if err := os.WriteFile(p, m.data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// sameInfo compares what the kernel unpacks of a record: all but the
// inode number, which a rewrite renumbers.
func sameInfo(a, b cpio.Info) bool {
	a.Ino, b.Ino = 0, 0
	return a == b
}

// checkPreserved checks that every record of before's view is in after's
// with the same metadata and bytes, except the module indexes, the boot
// list and the removed modules.
func checkPreserved(t *testing.T, before, after *initrd.Image, modDir string, changed ...string) {
	t.Helper()
	view := lastWins(before.Segments)
	names := make([]string, 0, len(view))
	for n := range view {
		names = append(names, n)
	}
	sort.Strings(names)
	checked := 0
	for _, n := range names {
		if path.Dir(n) == modDir && strings.HasPrefix(path.Base(n), "modules.") || slices.Contains(changed, n) {
			continue
		}
		want := view[n]
		got, ok := after.Lookup(n)
		if !ok {
			t.Errorf("%s is gone", n)
			continue
		}
		if !sameInfo(got.Info, want.Info) {
			t.Errorf("%s changed:\n got %+v\nwant %+v", n, got.Info, want.Info)
		}
		if !bytes.Equal(content(t, got), content(t, want)) {
			t.Errorf("%s: the bytes changed", n)
		}
		checked++
	}
	if checked < len(names)/2 {
		t.Errorf("only %d of %d records compared", checked, len(names))
	}
}

// checkUnpackOrder replays the kernel's unpacking of the new image: a
// record whose parent directory does not exist yet is skipped silently by
// the kernel, and a record must never replace one of before's symlinks
// (lib -> usr/lib) or go through one.
func checkUnpackOrder(t *testing.T, before, after *initrd.Image) {
	t.Helper()
	links := map[string]string{}
	for n, r := range lastWins(before.Segments) {
		if r.Mode&cpio.S_IFMT == cpio.S_IFLNK {
			links[n] = string(content(t, r))
		}
	}
	exists := map[string]uint64{".": cpio.S_IFDIR}
	for i, s := range after.Segments {
		for _, r := range s.Records {
			if r.Name != "." {
				parent := path.Dir(r.Name)
				if typ, ok := exists[parent]; !ok || typ != cpio.S_IFDIR {
					t.Errorf("segment %d: %s comes before its directory %s", i, r.Name, parent)
				}
			}
			for d := path.Dir(r.Name); d != "."; d = path.Dir(d) {
				if target, ok := links[d]; ok {
					t.Errorf("segment %d: %s goes through the symlink %s -> %s", i, r.Name, d, target)
				}
			}
			if target, ok := links[r.Name]; ok && (r.Mode&cpio.S_IFMT != cpio.S_IFLNK || string(content(t, r)) != target) {
				t.Errorf("segment %d: %s (%o) replaces the symlink %s -> %s", i, r.Name, r.Mode, r.Name, target)
			}
			exists[r.Name] = r.Mode & cpio.S_IFMT
		}
	}
	for n, target := range links {
		if r, ok := after.Lookup(n); !ok || r.Mode&cpio.S_IFMT != cpio.S_IFLNK || string(content(t, r)) != target {
			t.Errorf("symlink %s -> %s is not in the new image's view", n, target)
		}
	}
}

// checkModule checks that the image holds the module at rel with exactly
// its bytes, that modules.dep lists it, and that kmod's modprobe, which
// reads only the binary indexes, finds it there.
func checkModule(t *testing.T, img *initrd.Image, modDir, kernel, rel string, want []byte) {
	t.Helper()
	r, ok := img.Lookup(path.Join(modDir, rel))
	if !ok {
		t.Errorf("%s is not in the image", rel)
		return
	}
	if r.Mode&cpio.S_IFMT != cpio.S_IFREG || !bytes.Equal(content(t, r), want) {
		t.Errorf("%s: mode %o, %d bytes; want a regular file of the module's %d bytes", rel, r.Mode, r.FileSize, len(want))
	}
	dep, err := img.Content(path.Join(modDir, "modules.dep"))
	if err != nil {
		t.Fatalf("modules.dep: %v", err)
	}
	if !slices.ContainsFunc(strings.Split(string(dep), "\n"), func(l string) bool { return strings.HasPrefix(l, rel+":") }) {
		t.Errorf("modules.dep does not list %s:\n%s", rel, dep)
	}
	name := strings.TrimSuffix(path.Base(rel), ".ko")
	if got := modprobePath(t, img, modDir, kernel, name); got != rel {
		t.Errorf("modprobe %s in the image loads %q, want %s", name, got, rel)
	}
}

// modprobePath asks kmod's modprobe, over the image's modules.* files,
// which file `modprobe name` would load ("" if none).
func modprobePath(t *testing.T, img *initrd.Image, modDir, kernel, name string) string {
	t.Helper()
	root := t.TempDir()
	kdir := filepath.Join(root, "lib", "modules", kernel)
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range img.Names(modDir) {
		if path.Dir(n) != modDir || !strings.HasPrefix(path.Base(n), "modules.") {
			continue
		}
		data, err := img.Content(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(kdir, path.Base(n)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := testkit.Run(t, "modprobe", "-d", root, "-S", kernel, "--show-depends", name).Out
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "insmod" && strings.HasSuffix(strings.TrimSuffix(f[1], ".ko")+".ko", name+".ko") {
			return strings.TrimPrefix(f[1], kdir+"/")
		}
	}
	return ""
}

// checkEarly checks that the new image starts with the old one's early
// segments, byte for byte and parsed alike.
func checkEarly(t *testing.T, before, after *initrd.Image) {
	t.Helper()
	for i, s := range before.Segments {
		if !s.Early {
			break
		}
		if i >= len(after.Segments) || !after.Segments[i].Early || after.Segments[i].Offset != s.Offset || after.Segments[i].Length != s.Length {
			t.Errorf("early segment %d (@%d+%d) is not where it was: %s", i, s.Offset, s.Length, describe(after))
			continue
		}
		if !bytes.Equal(after.Data[s.Offset:s.Offset+s.Length], before.Data[s.Offset:s.Offset+s.Length]) {
			t.Errorf("early segment %d: the bytes changed", i)
		}
	}
}

func checkHardLinks(t *testing.T, img *initrd.Image) {
	t.Helper()
	a, okA := img.Lookup("etc/ld.so.cache")
	b, okB := img.Lookup("etc/ld.so.cache.hl")
	if !okA || !okB || a.Ino != b.Ino || a.NLink != 2 || b.NLink != 2 || string(content(t, b)) != "hard-linked bytes\n" {
		t.Errorf("hard links: %+v %+v; want one inode with nlink 2, the data on the last", a.Info, b.Info)
	}
}

// TestBuild adds a real module to images in every format with both
// strategies, and checks the new image the kernel would unpack.
func TestBuild(t *testing.T) {
	requireBuildTools(t)
	mods := hostModules(t, 3, nil)
	base := map[string][]byte{mods[0].rel: mods[0].data, mods[1].rel: mods[1].data}
	add := mods[2]
	rel := "updates/dkms/" + add.name + ".ko"
	src := writeModule(t, add)
	for _, c := range codecs {
		data := buildFixture(t, c, mainSpec{modules: base, initramfsTools: true})
		before := parse(t, data)
		for _, strategy := range []initrd.Strategy{initrd.Append, initrd.Rewrite} {
			t.Run(c.name+"/"+string(strategy), func(t *testing.T) {
				tmp := t.TempDir()
				plan := initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: src, Rel: rel}}, Load: []string{add.name}, TmpDir: tmp}
				out, rep, err := initrd.Build(t.Context(), before, plan, strategy)
				if err != nil {
					t.Fatalf("Build: %v", err)
				}
				after := parse(t, out)
				wantComp := c.want
				if c.want == initrd.Lz4 {
					wantComp = initrd.Gzip // dkmsd never writes lz4
				}
				if rep.Strategy != strategy || rep.Reason != "" || rep.Compression != wantComp || rep.ModulesDir != testModDir ||
					!slices.Equal(rep.Added, []string{path.Join(testModDir, rel)}) || rep.LoadFile != "conf/modules" || rep.Size != len(out) {
					t.Errorf("Report = %+v", rep)
				}
				if !slices.Contains(rep.Indexes, path.Join(testModDir, "modules.dep")) || !slices.Contains(rep.Indexes, path.Join(testModDir, "modules.dep.bin")) {
					t.Errorf("Report.Indexes = %q, want modules.dep and modules.dep.bin among them", rep.Indexes)
				}
				if !bytes.Equal(before.Data, data) {
					t.Fatalf("Build changed the base image's bytes")
				}
				switch strategy {
				case initrd.Append:
					if !bytes.HasPrefix(out, data) {
						t.Errorf("append: the new image does not start with the old one")
					}
					if len(after.Segments) != len(before.Segments)+1 || after.Segments[len(after.Segments)-1].Compression != wantComp {
						t.Errorf("append: %s, want the old segments and one %s segment", describe(after), wantComp)
					}
				case initrd.Rewrite:
					if len(after.Segments) != 2 || after.Segments[1].Compression != wantComp || after.Segments[1].Early {
						t.Errorf("rewrite: %s, want the microcode and one %s main archive", describe(after), wantComp)
					}
					if after.Main != wantComp {
						t.Errorf("rewrite: Main = %s, want %s", after.Main, wantComp)
					}
				}
				checkEarly(t, before, after)
				checkPreserved(t, before, after, testModDir)
				checkUnpackOrder(t, before, after)
				checkHardLinks(t, after)
				checkModule(t, after, testModDir, testKernel, rel, add.data)
				for r := range base {
					checkModule(t, after, testModDir, testKernel, r, base[r])
				}
				if got, _ := after.Content("conf/modules"); string(got) != add.name+"\n" {
					t.Errorf("conf/modules = %q, want %q", got, add.name+"\n")
				}
				if d, ok := after.Lookup(path.Join(testModDir, "updates/dkms")); !ok || d.Mode != cpio.S_IFDIR|0o755 {
					t.Errorf("updates/dkms: %+v, %v; want a 0755 directory", d.Info, ok)
				}
				if left, _ := os.ReadDir(tmp); len(left) != 0 {
					t.Errorf("Build left %d entries in its TmpDir", len(left))
				}
			})
		}
	}
}

// TestBuildDebianCompressors appends to and rewrites main archives made by
// mkinitramfs's compressor commands (the real streams differ from the Go
// encoders': xz blocks and padding, lz4 -l without an end mark).
func TestBuildDebianCompressors(t *testing.T) {
	requireBuildTools(t)
	mods := hostModules(t, 2, nil)
	add := mods[1]
	rel := "updates/dkms/" + add.name + ".ko"
	src := writeModule(t, add)
	for _, dc := range debianCodecs {
		t.Run(dc.name, func(t *testing.T) {
			testkit.RequireTool(t, dc.argv[0], dc.pkg)
			c := codec{name: dc.name, want: dc.want, pack: func(t testing.TB, b []byte) []byte { return runFilter(t, dc.argv, b) }}
			before := parse(t, buildFixture(t, c, mainSpec{modules: map[string][]byte{mods[0].rel: mods[0].data}, initramfsTools: true}))
			for _, strategy := range []initrd.Strategy{initrd.Append, initrd.Rewrite} {
				out, _, err := initrd.Build(t.Context(), before, initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: src, Rel: rel}}}, strategy)
				if err != nil {
					t.Fatalf("Build %s: %v", strategy, err)
				}
				after := parse(t, out)
				checkEarly(t, before, after)
				checkPreserved(t, before, after, testModDir)
				checkModule(t, after, testModDir, testKernel, rel, add.data)
			}
		})
	}
}

// TestBuildLoadList checks the boot list: appended to conf/modules on
// initramfs-tools images, keeping what it held; left alone when it
// already names the module; etc/cmdline.d/50-dkmsd.conf (rd.driver.pre=)
// otherwise.
func TestBuildLoadList(t *testing.T) {
	requireBuildTools(t)
	mods := hostModules(t, 2, nil)
	add := mods[1]
	src := writeModule(t, add)
	for _, tc := range []struct {
		name           string
		initramfsTools bool
		confModules    string
		load           []string
		wantFile       string
		want           string
	}{
		{"initramfs-tools", true, "", []string{add.name}, "conf/modules", add.name + "\n"},
		{"initramfs-tools with a list", true, "# modules\nloop max_loop=8", []string{add.name}, "conf/modules", "# modules\nloop max_loop=8\n" + add.name + "\n"},
		{"initramfs-tools already listed", true, add.name + " opt=1\n", []string{add.name}, "", ""},
		{"two modules", true, "", []string{add.name, "other"}, "conf/modules", add.name + "\nother\n"},
		{"dracut", false, "", []string{add.name}, "etc/cmdline.d/50-dkmsd.conf", "rd.driver.pre=" + add.name + "\n"},
		{"no load", true, "", nil, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := mainSpec{modules: map[string][]byte{mods[0].rel: mods[0].data}, initramfsTools: tc.initramfsTools, confModules: tc.confModules}
			before := parse(t, buildFixture(t, codecNamed(t, "zstd"), spec))
			plan := initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: src, Rel: "updates/dkms/" + add.name + ".ko"}}, Load: tc.load}
			for _, strategy := range []initrd.Strategy{initrd.Append, initrd.Rewrite} {
				out, rep, err := initrd.Build(t.Context(), before, plan, strategy)
				if err != nil {
					t.Fatalf("Build %s: %v", strategy, err)
				}
				after := parse(t, out)
				if rep.LoadFile != tc.wantFile {
					t.Errorf("%s: LoadFile = %q, want %q", strategy, rep.LoadFile, tc.wantFile)
				}
				if tc.wantFile != "" {
					if got, _ := after.Content(tc.wantFile); string(got) != tc.want {
						t.Errorf("%s: %s = %q, want %q", strategy, tc.wantFile, got, tc.want)
					}
					checkPreserved(t, before, after, testModDir, tc.wantFile)
					checkUnpackOrder(t, before, after)
				} else {
					checkPreserved(t, before, after, testModDir)
				}
			}
		})
	}
}

// TestBuildRemove takes DKMS modules out: from the image's own archive
// only by rewriting it (an append asked for becomes a rewrite, and says
// why); from dkmsd's earlier segment by dropping that segment.
func TestBuildRemove(t *testing.T) {
	requireBuildTools(t)
	mods := hostModules(t, 3, nil)
	oldRel := "updates/dkms/" + mods[1].name + ".ko"
	add := mods[2]
	addRel := "updates/dkms/" + add.name + ".ko"
	for _, c := range []string{"zstd", "gzip", "xz", "none"} {
		t.Run(c, func(t *testing.T) {
			spec := mainSpec{modules: map[string][]byte{mods[0].rel: mods[0].data, oldRel: mods[1].data}, initramfsTools: true}
			data := buildFixture(t, codecNamed(t, c), spec)
			before := parse(t, data)
			checkModule(t, before, testModDir, testKernel, oldRel, mods[1].data)
			for _, strategy := range []initrd.Strategy{initrd.Rewrite, initrd.Append} {
				out, rep, err := initrd.Build(t.Context(), before, initrd.Plan{Kernel: testKernel, Remove: []string{oldRel}}, strategy)
				if err != nil {
					t.Fatalf("Build %s: %v", strategy, err)
				}
				if rep.Strategy != initrd.Rewrite {
					t.Errorf("%s: Report.Strategy = %s, want rewrite", strategy, rep.Strategy)
				}
				if strategy == initrd.Append && !strings.Contains(rep.Reason, oldRel) {
					t.Errorf("append: Report.Reason = %q, want it to name %s", rep.Reason, oldRel)
				}
				after := parse(t, out)
				if _, ok := after.Lookup(path.Join(testModDir, oldRel)); ok {
					t.Errorf("%s: %s is still in the image", strategy, oldRel)
				}
				if dep, _ := after.Content(path.Join(testModDir, "modules.dep")); bytes.Contains(dep, []byte(oldRel)) {
					t.Errorf("%s: modules.dep still lists %s:\n%s", strategy, oldRel, dep)
				}
				if got := modprobePath(t, after, testModDir, testKernel, mods[1].name); got != "" {
					t.Errorf("%s: modprobe %s still finds %s", strategy, mods[1].name, got)
				}
				if len(after.Segments) != 2 {
					t.Errorf("%s: %s, want the microcode and one main archive", strategy, describe(after))
				}
				checkEarly(t, before, after)
				checkPreserved(t, before, after, testModDir, path.Join(testModDir, oldRel))
				checkUnpackOrder(t, before, after)
				checkModule(t, after, testModDir, testKernel, mods[0].rel, mods[0].data)
			}

			// A module in dkmsd's own segment goes with the segment.
			first, _, err := initrd.Build(t.Context(), before, initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: writeModule(t, add), Rel: addRel}}}, initrd.Append)
			if err != nil {
				t.Fatal(err)
			}
			out, rep, err := initrd.Build(t.Context(), parse(t, first), initrd.Plan{Kernel: testKernel, BaseLen: len(data), Remove: []string{addRel}}, initrd.Append)
			if err != nil {
				t.Fatalf("Build with BaseLen: %v", err)
			}
			if rep.Strategy != initrd.Append || !bytes.Equal(out, data) {
				t.Errorf("removing the module of dkmsd's segment: %s, %d bytes; want the base image (%d bytes) back", rep.Strategy, len(out), len(data))
			}
		})
	}
}

// TestBuildBaseLen checks that appending again replaces dkmsd's segment
// instead of stacking another, and that an append with nothing new
// returns the image as it is.
func TestBuildBaseLen(t *testing.T) {
	requireBuildTools(t)
	mods := hostModules(t, 3, nil)
	data := buildFixture(t, codecNamed(t, "zstd"), mainSpec{modules: map[string][]byte{mods[0].rel: mods[0].data}, initramfsTools: true})
	before := parse(t, data)
	plan := initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: writeModule(t, mods[1]), Rel: "updates/dkms/" + mods[1].name + ".ko"}}, Load: []string{mods[1].name}}
	first, _, err := initrd.Build(t.Context(), before, plan, initrd.Append)
	if err != nil {
		t.Fatal(err)
	}
	img1 := parse(t, first)

	plan.BaseLen = len(data)
	again, _, err := initrd.Build(t.Context(), img1, plan, initrd.Append)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, first) {
		t.Errorf("appending the same module again: %s; want the same image as the first time: %s", describe(parse(t, again)), describe(img1))
	}

	plan.Add = append(plan.Add, initrd.File{Src: writeModule(t, mods[2]), Rel: "updates/dkms/" + mods[2].name + ".ko"})
	second, _, err := initrd.Build(t.Context(), img1, plan, initrd.Append)
	if err != nil {
		t.Fatal(err)
	}
	img2 := parse(t, second)
	if !bytes.HasPrefix(second, data) || len(img2.Segments) != len(before.Segments)+1 {
		t.Errorf("a second module: %s; want the base and one segment", describe(img2))
	}
	checkModule(t, img2, testModDir, testKernel, "updates/dkms/"+mods[1].name+".ko", mods[1].data)
	checkModule(t, img2, testModDir, testKernel, "updates/dkms/"+mods[2].name+".ko", mods[2].data)
	if got, _ := img2.Content("conf/modules"); string(got) != mods[1].name+"\n" {
		t.Errorf("conf/modules = %q: the boot list of the dropped segment must not be kept twice", got)
	}

	// The module is already in the image with these bytes: nothing to do.
	same, rep, err := initrd.Build(t.Context(), before, initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: writeModule(t, mods[0]), Rel: mods[0].rel}}}, initrd.Append)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(same, data) || len(rep.Added) != 0 {
		t.Errorf("nothing new: %d bytes, Added %q; want the image unchanged", len(same), rep.Added)
	}
}

// TestBuildReplacesModule puts a DKMS build of a module the image already
// has in updates/dkms; kmod must prefer it.
func TestBuildReplacesModule(t *testing.T) {
	requireBuildTools(t)
	mods := hostModules(t, 2, nil)
	before := parse(t, buildFixture(t, codecNamed(t, "zstd"), mainSpec{modules: map[string][]byte{mods[0].rel: mods[0].data, mods[1].rel: mods[1].data}, initramfsTools: true}))
	rel := "updates/dkms/" + mods[0].name + ".ko"
	for _, strategy := range []initrd.Strategy{initrd.Append, initrd.Rewrite} {
		out, _, err := initrd.Build(t.Context(), before, initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: writeModule(t, mods[0]), Rel: rel}}}, strategy)
		if err != nil {
			t.Fatalf("Build %s: %v", strategy, err)
		}
		after := parse(t, out)
		checkModule(t, after, testModDir, testKernel, rel, mods[0].data)
		checkPreserved(t, before, after, testModDir)
	}
}

// TestBuildErrors checks that a Build that cannot succeed says why and
// leaves nothing behind: Build only returns bytes, the image file is not
// touched, and its staging tree is gone.
func TestBuildErrors(t *testing.T) {
	requireBuildTools(t)
	mods := hostModules(t, 1, nil)
	dir := t.TempDir()
	imgPath := filepath.Join(dir, "initrd.img-"+testKernel)
	data := buildFixture(t, codecNamed(t, "zstd"), mainSpec{modules: map[string][]byte{mods[0].rel: mods[0].data}, initramfsTools: true})
	if err := os.WriteFile(imgPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := initrd.Read(imgPath)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	for _, tc := range []struct {
		name string
		plan initrd.Plan
		want string
	}{
		{"wrong kernel", initrd.Plan{Kernel: "6.1.0-0-other", Add: []initrd.File{{Src: writeModule(t, mods[0]), Rel: "updates/dkms/x.ko"}}}, "lib/modules/6.1.0-0-other"},
		{"missing module", initrd.Plan{Kernel: testKernel, Add: []initrd.File{{Src: filepath.Join(dir, "nope.ko"), Rel: "updates/dkms/nope.ko"}}}, "nope.ko"},
		{"bad BaseLen", initrd.Plan{Kernel: testKernel, BaseLen: 700}, "offset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.plan.TmpDir = tmp
			for _, strategy := range []initrd.Strategy{initrd.Append, initrd.Rewrite} {
				out, rep, err := initrd.Build(t.Context(), img, tc.plan, strategy)
				if err == nil {
					t.Fatalf("%s: Build succeeded: %+v", strategy, rep)
				}
				if !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: error %q does not mention %q", strategy, err, tc.want)
				}
				if out != nil || rep != nil {
					t.Errorf("%s: Build returned bytes or a report with its error", strategy)
				}
			}
		})
	}
	if got, err := os.ReadFile(imgPath); err != nil || !bytes.Equal(got, data) {
		t.Errorf("the image file changed")
	}
	if left, _ := os.ReadDir(dir); len(left) != 1 {
		t.Errorf("%s holds %d entries, want only the image", dir, len(left))
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("a failed Build left %d entries in its TmpDir", len(left))
	}
}

// TestBuildRealInitrd appends a real module to, and rewrites, this
// machine's Debian initrd (one zstd segment, usr-merged, made by
// initramfs-tools), and checks that every record survives byte for byte.
func TestBuildRealInitrd(t *testing.T) {
	requireBuildTools(t)
	realKernel := testkit.BootKernel(t)
	realInitrd := "/boot/initrd.img-" + realKernel
	before, err := initrd.Read(realInitrd)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	modDir, err := before.Resolve("lib/modules/" + realKernel)
	if err != nil || !before.IsDir(modDir) {
		t.Fatalf("Resolve(lib/modules/%s) = %q, %v; want a directory", realKernel, modDir, err)
	}
	if modDir != "usr/lib/modules/"+realKernel {
		t.Errorf("modules dir = %s, want the usr-merged usr/lib/modules/%s", modDir, realKernel)
	}
	t.Logf("%s: %s", realInitrd, describe(before))
	if _, ok := before.Lookup("scripts/functions"); !ok {
		t.Errorf("no scripts/functions: not an initramfs-tools image")
	}
	// A module of this kernel that is not in the image.
	add := hostModules(t, 1, func(m hostModule) bool {
		_, ok := before.Lookup(path.Join(modDir, m.rel))
		return ok
	})[0]
	rel := "updates/dkms/" + add.name + ".ko"
	src := writeModule(t, add)
	oldList, _ := before.Content("conf/modules")
	for _, strategy := range []initrd.Strategy{initrd.Append, initrd.Rewrite} {
		t.Run(string(strategy), func(t *testing.T) {
			out, rep, err := initrd.Build(t.Context(), before, initrd.Plan{Kernel: realKernel, Add: []initrd.File{{Src: src, Rel: rel}}, Load: []string{add.name}}, strategy)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			t.Logf("%s: %d -> %d bytes, %s, indexes %q", strategy, len(before.Data), len(out), rep.Compression, rep.Indexes)
			after := parse(t, out)
			if rep.Strategy != strategy || rep.Compression != before.Main || rep.ModulesDir != modDir {
				t.Errorf("Report = %+v", rep)
			}
			if strategy == initrd.Append && (!bytes.HasPrefix(out, before.Data) || len(after.Segments) != len(before.Segments)+1) {
				t.Errorf("append: %s; want the image and one segment", describe(after))
			}
			if strategy == initrd.Rewrite && len(after.Segments) != 1+earlyCount(before) {
				t.Errorf("rewrite: %s; want one main archive", describe(after))
			}
			checkEarly(t, before, after)
			checkPreserved(t, before, after, modDir, "conf/modules")
			checkUnpackOrder(t, before, after)
			checkModule(t, after, modDir, realKernel, rel, add.data)
			if got, _ := after.Content("conf/modules"); !bytes.HasPrefix(got, oldList) || !bytes.HasSuffix(got, []byte(add.name+"\n")) {
				t.Errorf("conf/modules = %q, want %q then %s", got, oldList, add.name)
			}
		})
	}
}

func earlyCount(img *initrd.Image) int {
	n := 0
	for _, s := range img.Segments {
		if s.Early {
			n++
		}
	}
	return n
}

// TestWriteAtomic replaces an image keeping its mode, and, where it
// cannot write, fails leaving the old image whole and no temporary file.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "initrd.img-"+testKernel)
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := initrd.WriteAtomic(p, []byte("new image")); err != nil {
		t.Fatalf("WriteAtomic: %v", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "new image" {
		t.Errorf("content = %q", got)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want the old 0600", fi.Mode())
	}
	if left, _ := os.ReadDir(dir); len(left) != 1 {
		t.Errorf("%d entries in the directory, want the image alone", len(left))
	}
	if err := initrd.WriteAtomic(filepath.Join(dir, "fresh"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "fresh")); fi.Mode().Perm() != 0o644 {
		t.Errorf("a new image's mode = %v, want 0644", fi.Mode())
	}
	if err := initrd.WriteAtomic(filepath.Join(dir, "no", "such", "dir", "img"), []byte("x")); err == nil {
		t.Errorf("WriteAtomic into a missing directory succeeded")
	}
}

// TestWriteAtomicRootTmpfs fails to write into a small /boot (a tmpfs it
// mounts, so it needs root): too little space, no inode left, read-only.
// The old image must stay whole.
func TestWriteAtomicRootTmpfs(t *testing.T) {
	testkit.RequireRoot(t)
	old := bytes.Repeat([]byte("old initrd "), 20_000) // 220 kB
	for _, tc := range []struct {
		name, opts string
		size       int
		remount    bool
		want       string
	}{
		{"no space", "size=1m", 2 << 20, false, "space"},
		{"no space for the margin", "size=1m", 600 << 10, false, "space"},
		{"no inode", "size=8m,nr_inodes=2", 1 << 10, false, "no space"},
		{"read-only", "size=8m", 1 << 10, true, "read-only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			boot := t.TempDir()
			if err := syscall.Mount("tmpfs", boot, "tmpfs", 0, tc.opts); err != nil {
				testkit.Missing(t, "the right to mount a tmpfs (root outside a restricted container): "+err.Error())
			}
			t.Cleanup(func() { syscall.Unmount(boot, syscall.MNT_DETACH) })
			p := filepath.Join(boot, "initrd.img-"+testKernel)
			if err := os.WriteFile(p, old, 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.remount {
				if err := syscall.Mount("tmpfs", boot, "tmpfs", syscall.MS_REMOUNT|syscall.MS_RDONLY, tc.opts); err != nil {
					t.Fatal(err)
				}
			}
			err := initrd.WriteAtomic(p, bytes.Repeat([]byte{0x28}, tc.size))
			if err == nil {
				t.Fatalf("WriteAtomic succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not mention %q and the image", err, tc.want)
			}
			if got, _ := os.ReadFile(p); !bytes.Equal(got, old) {
				t.Errorf("the old image changed (%d bytes)", len(got))
			}
			if left, _ := os.ReadDir(boot); len(left) != 1 {
				t.Errorf("%d entries left in the directory, want the image alone", len(left))
			}
		})
	}
}

// TestState records where the generator's bytes end, and forgets it when
// the image was regenerated or changed since.
func TestState(t *testing.T) {
	base := []byte("the generator's image")
	full := append(slices.Clone(base), "dkmsd segment"...)
	s := initrd.NewState(full, len(base), len(full))
	if got := s.BaseLenOf(full); got != len(base) {
		t.Errorf("BaseLenOf(the image written) = %d, want %d", got, len(base))
	}
	p := filepath.Join(t.TempDir(), "state", testKernel+".json")
	if err := s.Save(p); err != nil {
		t.Fatal(err)
	}
	loaded := initrd.LoadState(p)
	if loaded == nil || *loaded != *s {
		t.Errorf("LoadState = %+v, want %+v", loaded, s)
	}
	regenerated := append([]byte("THE generator's image"), "dkmsd segment"...)
	for _, tc := range []struct {
		name string
		s    *initrd.State
		data []byte
	}{
		{"no state", nil, full},
		{"regenerated, same length", s, regenerated},
		{"regenerated, other length", s, base},
		{"appended to since", s, append(slices.Clone(full), 'x')},
	} {
		if got := tc.s.BaseLenOf(tc.data); got != 0 {
			t.Errorf("%s: BaseLenOf = %d, want 0", tc.name, got)
		}
	}
	if initrd.LoadState(filepath.Join(t.TempDir(), "missing.json")) != nil {
		t.Errorf("LoadState(missing) is not nil")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte("{"), 0o644)
	if initrd.LoadState(bad) != nil {
		t.Errorf("LoadState(corrupt) is not nil")
	}
}
