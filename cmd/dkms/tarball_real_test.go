package main

// End-to-end tests of mktarball, ldtarball and mkdriverdisk: the dkms
// command run as a process on relocated roots (DKMSD_ROOT), real modules
// built against the machine's headers carried from one root to another and
// installed byte for byte, interoperation with Debian's dkms 3.0.10 in both
// directions, and the driver disk read back with xorriso, gzip, cpio and
// modinfo. Tests whose name lacks RealHeaders need neither root nor
// headers.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ulikunitz/xz"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// tarballArch is the architecture of the machine's kernel headers.
const tarballArch = "x86_64"

// tarballEnv is the environment of every command these tests run.
var tarballEnv = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root", "parallel_jobs=2"}

// tarballDkmsd is dkmsd on a fresh relocated root over kernels; DKMSD_ROOT
// keeps everything it touches (framework.conf, MOK key, /boot) inside.
func tarballDkmsd(t *testing.T, env []string, kernels ...string) side {
	t.Helper()
	root := testkit.NewRoot(t, kernels...)
	return side{name: "dkmsd", bin: testkit.Binary(t, "dkms"), root: root, env: slices.Concat(env, []string{"DKMSD_ROOT=" + root})}
}

// tarballRun is side.run with a deadline, so a command that hangs (on a
// lock it already holds, say) fails the test instead of stalling it.
func tarballRun(t *testing.T, s side, args ...string) testkit.Result {
	t.Helper()
	limit := 30 * time.Second // loading, archiving, status: well under a second
	if len(args) > 0 && (args[0] == "build" || args[0] == "install") {
		limit = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	cmd := s.command(ctx, args...)
	cmd.WaitDelay = 5 * time.Second
	r, err := testkit.Exec(cmd)
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not finish within %v (deadlock?)\n--- stdout:\n%s--- stderr:\n%s", s.name, strings.Join(args, " "), limit, r.Stdout, r.Stderr)
	}
	if err != nil {
		t.Fatalf("%s %v: %v", s.name, args, err)
	}
	return r
}

// mustSucceed runs a command that must exit 0.
func mustSucceed(t *testing.T, s side, args ...string) testkit.Result {
	t.Helper()
	r := tarballRun(t, s, args...)
	if r.Code != 0 {
		t.Fatalf("%s %s: exit %d\n--- stdout:\n%s--- stderr:\n%s", s.name, strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r
}

// wantExit runs a command that must exit with code and whose stderr must
// hold each of msgs.
func wantExit(t *testing.T, s side, code int, msgs []string, args ...string) testkit.Result {
	t.Helper()
	r := tarballRun(t, s, args...)
	if r.Code != code {
		t.Errorf("%s %s: exit %d, want %d\n--- stdout:\n%s--- stderr:\n%s", s.name, strings.Join(args, " "), r.Code, code, r.Stdout, r.Stderr)
	}
	for _, m := range msgs {
		if !strings.Contains(r.Stderr, m) {
			t.Errorf("%s %s: stderr does not say %q:\n%s", s.name, strings.Join(args, " "), m, r.Stderr)
		}
	}
	return r
}

// tarItem is one member of a tarball read back.
type tarItem struct {
	typ   byte
	body  []byte
	mtime time.Time
}

// readTarball reads a gzip, xz or plain tarball into its members by name,
// without "./" and a directory's trailing "/"; "." is left out.
func readTarball(t *testing.T, file string) map[string]tarItem {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("tarball: %v", err)
	}
	var r io.Reader = bytes.NewReader(data)
	switch {
	case bytes.HasPrefix(data, []byte{0x1f, 0x8b}):
		if r, err = gzip.NewReader(r); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	case bytes.HasPrefix(data, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		if r, err = xz.NewReader(r); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
	}
	out := map[string]tarItem{}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("%s: %s: %v", file, hdr.Name, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if name == "" || name == "." {
			continue
		}
		out[name] = tarItem{hdr.Typeflag, body, hdr.ModTime}
	}
}

// wantMembers checks that a tarball has each of present and none of absent
// (an absent name ending in "/" stands for everything under it).
func wantMembers(t *testing.T, what string, items map[string]tarItem, present, absent []string) {
	t.Helper()
	for _, p := range present {
		if _, ok := items[p]; !ok {
			t.Errorf("%s: no %s in the tarball; it holds %v", what, p, sortedNames(items))
		}
	}
	for _, a := range absent {
		for n := range items {
			// "x/" means anything inside x (x itself may be there).
			if (!strings.HasSuffix(a, "/") && n == a) || (strings.HasSuffix(a, "/") && strings.HasPrefix(n, a)) {
				t.Errorf("%s: the tarball holds %s", what, n)
			}
		}
	}
}

func sortedNames(items map[string]tarItem) []string {
	var out []string
	for n := range items {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// datesNotRounded checks that each member copied from a file under dir
// (member prefix → dir) is not dated after that file: rounding an mtime to
// the nearest second instead of truncating it dates about half of them in
// the future, and GNU tar then warns "time stamp ... is ... s in the
// future" when it unpacks them.
func datesNotRounded(t *testing.T, what string, items map[string]tarItem, prefix, dir string) {
	t.Helper()
	checked := 0
	for _, n := range sortedNames(items) {
		rel, ok := strings.CutPrefix(n, prefix+"/")
		if !ok || items[n].typ != tar.TypeReg {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, rel))
		if err != nil {
			continue
		}
		checked++
		if items[n].mtime.After(fi.ModTime()) {
			t.Errorf("%s: %s is dated %v, after its file %s (%v)", what, n, items[n].mtime, filepath.Join(dir, rel), fi.ModTime())
		}
	}
	if checked == 0 {
		t.Errorf("%s: no member under %s to check", what, prefix)
	}
}

// builtTree lists the members mktarball must write for one built kernel
// of dkmsd_twomods.
func builtTree(kernel string) []string {
	d := "dkms_main_tree/" + kernel + "/" + tarballArch
	return []string{"dkms_main_tree", "dkms_main_tree/" + kernel, d, d + "/module", d + "/module/dkmsd_alpha.ko", d + "/module/dkmsd_beta_renamed.ko", d + "/log", d + "/log/make.log"}
}

var twomodsSource = []string{"dkms_source_tree", "dkms_source_tree/dkms.conf", "dkms_source_tree/Makefile", "dkms_source_tree/dkmsd_alpha.c",
	"dkms_source_tree/sub", "dkms_source_tree/sub/Makefile", "dkms_source_tree/sub/dkmsd_beta.c"}

var twomodsKos = []string{"dkmsd_alpha", "dkmsd_beta_renamed"}

// mustReadFile is the file p holds; the test fails when it cannot be read.
func mustReadFile(tb testing.TB, p string) []byte {
	tb.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func pathMissing(p string) bool {
	_, err := os.Lstat(p)
	return err != nil
}

// sameBytes checks that file got holds exactly the bytes of file want.
func sameBytes(t *testing.T, got, want string) {
	t.Helper()
	g, err := os.ReadFile(got)
	if err != nil {
		t.Errorf("%v", err)
		return
	}
	w := mustReadFile(t, want)
	if !bytes.Equal(g, w) {
		t.Errorf("%s (%d bytes, sha256 %x) is not byte-identical to %s (%d bytes, sha256 %x)", got, len(g), sha256.Sum256(g), want, len(w), sha256.Sum256(w))
	}
}

// builtKo is a built module in a root's dkms tree.
func builtKo(root, module, version, kernel, name string) string {
	return filepath.Join(root, "var/lib/dkms", module, version, kernel, tarballArch, "module", name+".ko")
}

// installedKo is a module installed by dkms on Debian (updates/dkms).
func installedKo(root, kernel, name string) string {
	return filepath.Join(root, "lib/modules", kernel, "updates/dkms", name+".ko")
}

func builtLines(module, version string, kernels ...string) string {
	var lines []string
	for _, k := range kernels {
		lines = append(lines, fmt.Sprintf("%s/%s, %s, %s: built\n", module, version, k, tarballArch))
	}
	slices.Sort(lines) // dkms lists kernels in glob order
	return strings.Join(lines, "")
}

// sameState fails the test if before and after (testkit.Snapshot) differ.
func sameState(t *testing.T, what string, before, after []string) {
	t.Helper()
	if gone, added := testkit.Changes(before, after); len(gone) > 0 || len(added) > 0 {
		t.Errorf("%s changed the root:\n  gone/changed: %q\n  new/changed:  %q", what, gone, added)
	}
}

// writeTarGz writes a .tar.gz of the given files (name → body; a name
// ending in "/" is a directory).
func writeTarGz(t *testing.T, file string, members [][2]string) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, m := range members {
		hdr := &tar.Header{Name: m[0], Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(m[1]))}
		if strings.HasSuffix(m[0], "/") {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(m[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(raw.Bytes())
	zw.Close()
	if err := os.WriteFile(file, gz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTarballExitCodes checks mktarball's and ldtarball's refusals and
// their exit codes (dkms 3.0.10's), on a module that is added but not
// built: nothing here needs headers.
func TestTarballExitCodes(t *testing.T) {
	t.Parallel()
	s := tarballDkmsd(t, tarballEnv)
	testkit.CopyModule(t, s.root, "dkmsd_hello-1.0")
	mustSucceed(t, s, "add", "dkmsd_hello/1.0")
	tarballDir := filepath.Join(s.root, "var/lib/dkms/dkmsd_hello/1.0/tarball")

	wantExit(t, s, 6, []string{"No modules built for 9.9.9-nonesuch"}, "mktarball", "dkmsd_hello/1.0", "-k", "9.9.9-nonesuch")
	// Without -k dkmsd archives every kernel the module is built for:
	// none is not a tarball of built modules (dkms 3.0.10 took the running
	// kernel and exited 6 too).
	wantExit(t, s, 6, []string{"built"}, "mktarball", "dkmsd_hello/1.0")
	if entries, _ := os.ReadDir(tarballDir); len(entries) > 0 {
		t.Errorf("a refused mktarball left %s/%s", tarballDir, entries[0].Name())
		os.RemoveAll(tarballDir)
	}
	wantExit(t, s, 3, nil, "mktarball", "dkmsd_nonesuch/1.0")
	wantExit(t, s, 8, []string{"--binaries-only and --source-only"}, "mktarball", "dkmsd_hello/1.0", "--source-only", "--binaries-only")

	mustSucceed(t, s, "mktarball", "dkmsd_hello/1.0", "--source-only")
	srcOnly := filepath.Join(tarballDir, "dkmsd_hello-1.0-source-only.dkms.tar.gz")
	items := readTarball(t, srcOnly)
	wantMembers(t, "--source-only", items,
		[]string{"dkms_source_tree", "dkms_source_tree/dkms.conf", "dkms_source_tree/Makefile", "dkms_source_tree/dkmsd_hello.c",
			"dkms_main_tree"}, // dkms 3.x always has it, empty here
		[]string{"dkms_main_tree/", "dkms_binaries_only/"})

	missing := filepath.Join(t.TempDir(), "nonesuch.dkms.tar.gz")
	wantExit(t, s, 2, []string{missing + " does not exist."}, "ldtarball", missing)
	wantExit(t, s, 2, []string{missing + " does not exist."}, "ldtarball", "--archive="+missing)
	wantExit(t, s, 2, nil, "ldtarball")

	// dkmsd_hello/1.0 is added: loading it again needs --force.
	before := testkit.Snapshot(t, s.root)
	wantExit(t, s, 8, []string{"dkmsd_hello-1.0 is already added!"}, "ldtarball", srcOnly)
	sameState(t, "ldtarball of an added module", before, testkit.Snapshot(t, s.root))

	t.Run("hostile", func(t *testing.T) {
		evil := filepath.Join(t.TempDir(), "evil.dkms.tar.gz")
		conf := string(mustReadFile(t, filepath.Join(testkit.ModulesDir(), "dkmsd_hello-1.0/dkms.conf")))
		writeTarGz(t, evil, [][2]string{{"dkms_source_tree/", ""}, {"dkms_source_tree/dkms.conf", conf}, {"dkms_source_tree/../../../../victim", "pwned\n"}})
		before := testkit.Snapshot(t, s.root)
		wantExit(t, s, 7, []string{`"dkms_source_tree/../../../../victim"`, "Nothing was written."}, "ldtarball", evil, "--force")
		sameState(t, "ldtarball of a hostile tarball", before, testkit.Snapshot(t, s.root))
	})

	t.Run("tarball_max_size", func(t *testing.T) {
		fw := filepath.Join(s.root, "etc/dkms/framework.conf")
		if err := os.WriteFile(fw, []byte("tarball_max_size=4096\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.Remove(fw)
		big := filepath.Join(t.TempDir(), "big.dkms.tar.gz")
		conf := strings.ReplaceAll(string(mustReadFile(t, filepath.Join(testkit.ModulesDir(), "dkmsd_hello-1.0/dkms.conf"))), "dkmsd_hello", "dkmsd_big")
		writeTarGz(t, big, [][2]string{{"dkms_source_tree/", ""}, {"dkms_source_tree/dkms.conf", conf}, {"dkms_source_tree/zeros", strings.Repeat("\x00", 64<<10)}})
		before := testkit.Snapshot(t, s.root)
		wantExit(t, s, 7, []string{`"dkms_source_tree/zeros"`, "4096", "Nothing was written."}, "ldtarball", big)
		sameState(t, "ldtarball of a tarball over tarball_max_size", before, testkit.Snapshot(t, s.root))
	})

	t.Run("add FILE", func(t *testing.T) {
		fresh := tarballDkmsd(t, tarballEnv)
		mustSucceed(t, fresh, "add", srcOnly)
		if r := tarballRun(t, fresh, "status"); r.Stdout != "dkmsd_hello/1.0: added\n" {
			t.Errorf("status after dkms add %s: %q", srcOnly, r.Stdout)
		}
		sameBytes(t, filepath.Join(fresh.root, "usr/src/dkmsd_hello-1.0/dkmsd_hello.c"), filepath.Join(s.root, "usr/src/dkmsd_hello-1.0/dkmsd_hello.c"))
	})

	t.Run("ldtarball --config", func(t *testing.T) {
		fresh := tarballDkmsd(t, tarballEnv)
		mustSucceed(t, fresh, "ldtarball", "--config", srcOnly)
		if r := tarballRun(t, fresh, "status"); r.Stdout != "dkmsd_hello/1.0: added\n" {
			t.Errorf("status after dkms ldtarball --config %s: %q", srcOnly, r.Stdout)
		}
	})
}

// TestTarballRealHeadersRoundTrip builds dkmsd_twomods for two kernels on
// one root, archives it in every layout, loads the archives on fresh roots
// and installs there without building: the installed modules are the
// original bytes (each root has its own MOK key and build dir, so a
// rebuild could not produce them).
func TestTarballRealHeadersRoundTrip(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t)
	testkit.RequireTool(t, "openssl", "openssl")
	ks := testkit.Kernels(t, 2)
	k1, k2 := ks[0], ks[1]
	a := tarballDkmsd(t, tarballEnv, ks...)
	testkit.CopyModule(t, a.root, "dkmsd_twomods-2.1")
	start := time.Now()
	mustSucceed(t, a, "build", "dkmsd_twomods/2.1", "-k", k1, "-k", k2)
	t.Logf("built for two kernels in %v", time.Since(start).Round(time.Millisecond))
	tarballDir := filepath.Join(a.root, "var/lib/dkms/dkmsd_twomods/2.1/tarball")
	aSource := filepath.Join(a.root, "usr/src/dkmsd_twomods-2.1")

	// Every layout, made once.
	mustSucceed(t, a, "mktarball", "dkmsd_twomods/2.1")
	full := filepath.Join(tarballDir, fmt.Sprintf("dkmsd_twomods-2.1-kernel%s-%s-kernel%s-%s.dkms.tar.gz", k1, tarballArch, k2, tarballArch))
	mustSucceed(t, a, "mktarball", "dkmsd_twomods/2.1", "-k", k1, "--binaries-only")
	binOnly := filepath.Join(tarballDir, fmt.Sprintf("dkmsd_twomods-2.1-kernel%s-%s.dkms.tar.gz", k1, tarballArch))
	mustSucceed(t, a, "mktarball", "dkmsd_twomods/2.1", "--source-only")
	srcOnly := filepath.Join(tarballDir, "dkmsd_twomods-2.1-source-only.dkms.tar.gz")
	xzFile := filepath.Join(t.TempDir(), "out/sub/x.tar.xz")
	mustSucceed(t, a, "mktarball", "dkmsd_twomods/2.1", "--archive="+xzFile)

	t.Run("layouts", func(t *testing.T) {
		items := readTarball(t, full)
		wantMembers(t, "default", items, slices.Concat(builtTree(k1), builtTree(k2), twomodsSource), []string{"dkms_binaries_only/"})
		for _, k := range ks {
			for _, m := range twomodsKos {
				name := "dkms_main_tree/" + k + "/" + tarballArch + "/module/" + m + ".ko"
				if !bytes.Equal(items[name].body, mustReadFile(t, builtKo(a.root, "dkmsd_twomods", "2.1", k, m))) {
					t.Errorf("default: %s is not the built module", name)
				}
			}
		}
		if !bytes.Equal(items["dkms_source_tree/dkmsd_alpha.c"].body, mustReadFile(t, filepath.Join(aSource, "dkmsd_alpha.c"))) {
			t.Errorf("default: dkms_source_tree/dkmsd_alpha.c is not the source")
		}
		datesNotRounded(t, "default", items, "dkms_source_tree", aSource)
		for _, k := range ks {
			datesNotRounded(t, "default", items, "dkms_main_tree/"+k+"/"+tarballArch, filepath.Join(a.root, "var/lib/dkms/dkmsd_twomods/2.1", k, tarballArch))
		}

		items = readTarball(t, binOnly)
		wantMembers(t, "--binaries-only", items,
			slices.Concat(builtTree(k1), []string{"dkms_binaries_only", "dkms_binaries_only/dkms.conf", "dkms_binaries_only/PACKAGE_NAME", "dkms_binaries_only/PACKAGE_VERSION"}),
			[]string{"dkms_source_tree/", "dkms_main_tree/" + k2 + "/"})
		for name, want := range map[string]string{
			"dkms_binaries_only/PACKAGE_NAME":    "dkmsd_twomods\n",
			"dkms_binaries_only/PACKAGE_VERSION": "2.1\n",
			"dkms_binaries_only/dkms.conf":       string(mustReadFile(t, filepath.Join(aSource, "dkms.conf"))),
		} {
			if got := string(items[name].body); got != want {
				t.Errorf("--binaries-only: %s holds %q, want %q", name, got, want)
			}
		}

		items = readTarball(t, srcOnly)
		wantMembers(t, "--source-only", items, slices.Concat(twomodsSource, []string{"dkms_main_tree"}), []string{"dkms_main_tree/", "dkms_binaries_only/"})

		data := mustReadFile(t, xzFile)
		if !bytes.HasPrefix(data, []byte{0xfd, '7', 'z', 'X', 'Z', 0}) {
			t.Errorf("--archive=%s is not xz-compressed: it starts % x", xzFile, data[:min(len(data), 6)])
		}
		if got, want := sortedNames(readTarball(t, xzFile)), sortedNames(readTarball(t, full)); !slices.Equal(got, want) {
			t.Errorf("--archive=x.tar.xz holds %v, the default tarball %v", got, want)
		}
		if names, _ := os.ReadDir(tarballDir); len(names) != 3 {
			t.Errorf("%s holds %d files, want the 3 default-named tarballs", tarballDir, len(names))
		}
	})

	t.Run("ldtarball and install without building", func(t *testing.T) {
		b := tarballDkmsd(t, tarballEnv, ks...)
		mustSucceed(t, b, "ldtarball", full)
		if r := tarballRun(t, b, "status"); r.Stdout != builtLines("dkmsd_twomods", "2.1", k1, k2) {
			t.Errorf("status after ldtarball:\n%s", r.Stdout)
		}
		bSource := filepath.Join(b.root, "usr/src/dkmsd_twomods-2.1")
		sameBytes(t, filepath.Join(bSource, "dkms.conf"), filepath.Join(aSource, "dkms.conf"))
		// Without its C sources nothing can be rebuilt.
		for _, c := range []string{"dkmsd_alpha.c", "sub/dkmsd_beta.c"} {
			if err := os.Remove(filepath.Join(bSource, c)); err != nil {
				t.Fatal(err)
			}
		}
		mustSucceed(t, b, "install", "dkmsd_twomods/2.1", "-k", k1, "-k", k2, "--no-depmod")
		for _, k := range ks {
			for _, m := range twomodsKos {
				sameBytes(t, installedKo(b.root, k, m), builtKo(a.root, "dkmsd_twomods", "2.1", k, m))
			}
			log := filepath.Join("var/lib/dkms/dkmsd_twomods/2.1", k, tarballArch, "log/make.log")
			sameBytes(t, filepath.Join(b.root, log), filepath.Join(a.root, log))
		}

		// Loaded again: already added, unless --force.
		before := testkit.Snapshot(t, b.root)
		wantExit(t, b, 8, []string{"dkmsd_twomods-2.1 is already added!"}, "ldtarball", full)
		wantExit(t, b, 8, []string{"dkmsd_twomods-2.1 is already added!"}, "ldtarball", srcOnly)
		sameState(t, "ldtarball of an added module", before, testkit.Snapshot(t, b.root))
		mustSucceed(t, b, "ldtarball", full, "--force")
		sameBytes(t, filepath.Join(bSource, "dkmsd_alpha.c"), filepath.Join(aSource, "dkmsd_alpha.c"))
	})

	t.Run("ldtarball --archive=x.tar.xz", func(t *testing.T) {
		c := tarballDkmsd(t, tarballEnv, ks...)
		mustSucceed(t, c, "ldtarball", "--archive="+xzFile)
		if r := tarballRun(t, c, "status"); r.Stdout != builtLines("dkmsd_twomods", "2.1", k1, k2) {
			t.Errorf("status after ldtarball --archive=%s:\n%s", xzFile, r.Stdout)
		}
	})

	t.Run("add binaries-only and install", func(t *testing.T) {
		d := tarballDkmsd(t, tarballEnv, ks...)
		mustSucceed(t, d, "add", binOnly)
		if r := tarballRun(t, d, "status"); r.Stdout != builtLines("dkmsd_twomods", "2.1", k1) {
			t.Errorf("status after dkms add %s:\n%s", binOnly, r.Stdout)
		}
		if !pathMissing(filepath.Join(d.root, "usr/src/dkmsd_twomods-2.1")) {
			t.Errorf("a binaries-only tarball put sources in %s", filepath.Join(d.root, "usr/src"))
		}
		mustSucceed(t, d, "install", "dkmsd_twomods/2.1", "-k", k1, "--no-depmod")
		for _, m := range twomodsKos {
			sameBytes(t, installedKo(d.root, k1, m), builtKo(a.root, "dkmsd_twomods", "2.1", k1, m))
		}
	})

	t.Run("ldtarball --source-only", func(t *testing.T) {
		e := tarballDkmsd(t, tarballEnv, ks...)
		mustSucceed(t, e, "ldtarball", srcOnly)
		if r := tarballRun(t, e, "status"); r.Stdout != "dkmsd_twomods/2.1: added\n" {
			t.Errorf("status after ldtarball of the source-only tarball: %q", r.Stdout)
		}
		sameBytes(t, filepath.Join(e.root, "usr/src/dkmsd_twomods-2.1/sub/dkmsd_beta.c"), filepath.Join(aSource, "sub/dkmsd_beta.c"))
		wantExit(t, e, 6, []string{"No modules built for " + k1}, "mktarball", "dkmsd_twomods/2.1", "-k", k1)
	})
}

// normalizedMembers is a tarball's member names, kernel versions replaced
// by KERNEL, without the Module.symvers dkmsd keeps beside the modules.
func normalizedMembers(t *testing.T, file string, kernels ...string) []string {
	t.Helper()
	var out []string
	for _, n := range sortedNames(readTarball(t, file)) {
		if filepath.Base(n) == "Module.symvers" {
			continue
		}
		for _, k := range kernels {
			n = strings.ReplaceAll(n, k, "KERNEL")
		}
		out = append(out, n)
	}
	return out
}

// TestTarballRealHeadersDkms3010 carries built modules between dkmsd and
// Debian's dkms 3.0.10 both ways. dkms 3.0.10 loads only the first kernel
// of a tarball ("local: kernel_arch_to_load: readonly variable" in
// load_tarball) and archives only the first of several (the same bug in
// make_tarball), so its tarballs here hold one kernel, and of dkmsd's
// two-kernel tarball it is only asked to install the first.
func TestTarballRealHeadersDkms3010(t *testing.T) {
	t.Parallel()
	dk, ref, ks := differentialSetup(t)
	k1, k2 := ks[0], ks[1]
	env := dk.env // the shared MOK key: a module signed on either side verifies on both
	tmp := t.TempDir()
	helloName := fmt.Sprintf("dkmsd_hello-1.0-kernel%s-%s.dkms.tar.gz", k1, tarballArch)

	// dkms 3.0.10 builds for k1 and archives it.
	testkit.CopyModule(t, ref.root, "dkmsd_hello-1.0")
	mustSucceed(t, ref, "build", "dkmsd_hello/1.0", "-k", k1)
	refBuilt := builtKo(ref.root, "dkmsd_hello", "1.0", k1, "dkmsd_hello")
	mustSucceed(t, ref, "mktarball", "dkmsd_hello/1.0", "-k", k1, "--binaries-only")
	refBin := filepath.Join(ref.root, "var/lib/dkms/dkmsd_hello/1.0/tarball", helloName)
	refFull := filepath.Join(tmp, "ref-full.dkms.tar.gz")
	mustSucceed(t, ref, "mktarball", "dkmsd_hello/1.0", "-k", k1, "--archive="+refFull)
	refSrc := filepath.Join(tmp, "ref-source-only.dkms.tar.gz")
	mustSucceed(t, ref, "mktarball", "dkmsd_hello/1.0", "--source-only", "--archive="+refSrc)

	// dkmsd builds for both kernels and archives them.
	s := tarballDkmsd(t, env, ks...)
	testkit.CopyModule(t, s.root, "dkmsd_hello-1.0")
	mustSucceed(t, s, "build", "dkmsd_hello/1.0", "-k", k1, "-k", k2)
	mustSucceed(t, s, "mktarball", "dkmsd_hello/1.0")
	ourFull := filepath.Join(s.root, "var/lib/dkms/dkmsd_hello/1.0/tarball", fmt.Sprintf("dkmsd_hello-1.0-kernel%s-%s-kernel%s-%s.dkms.tar.gz", k1, tarballArch, k2, tarballArch))
	ourK2Bin := filepath.Join(tmp, "ours-k2-binaries.dkms.tar.gz")
	mustSucceed(t, s, "mktarball", "dkmsd_hello/1.0", "-k", k2, "--binaries-only", "--archive="+ourK2Bin)

	t.Run("dkms 3.0.10 binaries-only to dkmsd", func(t *testing.T) {
		d := tarballDkmsd(t, env, ks...)
		mustSucceed(t, d, "ldtarball", refBin)
		if r := tarballRun(t, d, "status"); r.Stdout != builtLines("dkmsd_hello", "1.0", k1) {
			t.Errorf("dkmsd status after loading dkms 3.0.10's tarball:\n%s", r.Stdout)
		}
		// No source anywhere: install can only copy what was loaded.
		if !pathMissing(filepath.Join(d.root, "usr/src/dkmsd_hello-1.0")) {
			t.Errorf("a binaries-only tarball put sources in the source tree")
		}
		mustSucceed(t, d, "install", "dkmsd_hello/1.0", "-k", k1, "--no-depmod")
		sameBytes(t, installedKo(d.root, k1, "dkmsd_hello"), refBuilt)
		log := filepath.Join("var/lib/dkms/dkmsd_hello/1.0", k1, tarballArch, "log/make.log")
		sameBytes(t, filepath.Join(d.root, log), filepath.Join(ref.root, log))
	})

	t.Run("dkms 3.0.10 full to dkmsd", func(t *testing.T) {
		d := tarballDkmsd(t, env, ks...)
		mustSucceed(t, d, "ldtarball", refFull)
		if r := tarballRun(t, d, "status"); r.Stdout != builtLines("dkmsd_hello", "1.0", k1) {
			t.Errorf("dkmsd status after loading dkms 3.0.10's tarball:\n%s", r.Stdout)
		}
		for _, f := range []string{"Makefile", "dkmsd_hello.c"} {
			if err := os.Remove(filepath.Join(d.root, "usr/src/dkmsd_hello-1.0", f)); err != nil {
				t.Fatal(err)
			}
		}
		mustSucceed(t, d, "install", "dkmsd_hello/1.0", "-k", k1, "--no-depmod")
		sameBytes(t, installedKo(d.root, k1, "dkmsd_hello"), refBuilt)
	})

	t.Run("dkmsd to dkms 3.0.10", func(t *testing.T) {
		r2 := side{name: "dkms-3.0.10", bin: referenceDkms, root: testkit.NewRoot(t, ks...), env: ref.env}
		mustSucceed(t, r2, "ldtarball", ourFull)
		st := tarballRun(t, r2, "status").Stdout
		if !strings.Contains(st, fmt.Sprintf("dkmsd_hello/1.0, %s, %s: built\n", k1, tarballArch)) {
			t.Errorf("dkms 3.0.10 status after loading dkmsd's tarball:\n%s", st)
		}
		if !strings.Contains(st, k2) {
			t.Logf("dkms 3.0.10 loaded only %s of the two kernels (its readonly-variable bug in load_tarball)", k1)
		}
		mustSucceed(t, r2, "install", "dkmsd_hello/1.0", "-k", k1, "--no-depmod")
		sameBytes(t, installedKo(r2.root, k1, "dkmsd_hello"), builtKo(s.root, "dkmsd_hello", "1.0", k1, "dkmsd_hello"))
	})

	t.Run("dkmsd binaries-only to dkms 3.0.10", func(t *testing.T) {
		// dkms 3.0.10 exits 1 after loading a binaries-only tarball it
		// made itself (load_tarball's last test fails without a source
		// tree); dkmsd's must fare the same.
		r3 := side{name: "dkms-3.0.10", bin: referenceDkms, root: testkit.NewRoot(t, ks...), env: ref.env}
		own := tarballRun(t, r3, "ldtarball", refBin)
		r4 := side{name: "dkms-3.0.10", bin: referenceDkms, root: testkit.NewRoot(t, ks...), env: ref.env}
		ours := tarballRun(t, r4, "ldtarball", ourK2Bin)
		if ours.Code != own.Code {
			t.Errorf("dkms 3.0.10 ldtarball of dkmsd's binaries-only tarball: exit %d, of its own: exit %d\n%s", ours.Code, own.Code, ours.Stderr)
		}
		if st := tarballRun(t, r4, "status").Stdout; st != builtLines("dkmsd_hello", "1.0", k2) {
			t.Errorf("dkms 3.0.10 status after loading dkmsd's binaries-only tarball:\n%s", st)
		}
		mustSucceed(t, r4, "install", "dkmsd_hello/1.0", "-k", k2, "--no-depmod")
		sameBytes(t, installedKo(r4.root, k2, "dkmsd_hello"), builtKo(s.root, "dkmsd_hello", "1.0", k2, "dkmsd_hello"))
	})

	t.Run("same names and layouts as dkms 3.0.10", func(t *testing.T) {
		mustSucceed(t, s, "mktarball", "dkmsd_hello/1.0", "-k", k1, "--binaries-only")
		ourBin := filepath.Join(s.root, "var/lib/dkms/dkmsd_hello/1.0/tarball", helloName)
		ourFullK1 := filepath.Join(tmp, "ours-full-k1.dkms.tar.gz")
		mustSucceed(t, s, "mktarball", "dkmsd_hello/1.0", "-k", k1, "--archive="+ourFullK1)
		ourSrc := filepath.Join(tmp, "ours-source-only.dkms.tar.gz")
		mustSucceed(t, s, "mktarball", "dkmsd_hello/1.0", "--source-only", "--archive="+ourSrc)
		for _, c := range []struct{ what, ours, theirs string }{
			{"-k K --binaries-only (default name)", ourBin, refBin},
			{"-k K", ourFullK1, refFull},
			{"--source-only", ourSrc, refSrc},
		} {
			got, want := normalizedMembers(t, c.ours, ks...), normalizedMembers(t, c.theirs, ks...)
			if !slices.Equal(got, want) {
				t.Errorf("mktarball %s: dkmsd's tarball holds\n  %q\ndkms 3.0.10's\n  %q", c.what, got, want)
			}
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		missing := filepath.Join(tmp, "nonesuch.tar.gz")
		for _, c := range []struct {
			args      []string
			code      int
			ours, ref side
		}{
			{[]string{"ldtarball", "--archive=" + missing}, 2, s, ref},
			{[]string{"ldtarball", refFull}, 8, s, ref}, // both roots hold dkmsd_hello/1.0
			{[]string{"mktarball", "dkmsd_hello/1.0", "-k", "9.9.9-nonesuch"}, 6, s, ref},
			{[]string{"mktarball", "dkmsd_nonesuch/1.0", "-k", k1}, 3, s, ref},
		} {
			a, b := tarballRun(t, c.ours, c.args...), tarballRun(t, c.ref, c.args...)
			if a.Code != c.code || b.Code != c.code {
				t.Errorf("dkms %s: dkmsd exit %d, dkms 3.0.10 exit %d, want %d\n--- dkmsd stderr:\n%s--- dkms 3.0.10 stderr:\n%s", strings.Join(c.args, " "), a.Code, b.Code, c.code, a.Stderr, b.Stderr)
			}
		}
	})
}

// TestDriverDiskRealHeaders makes a Red Hat driver update disk of
// dkmsd_twomods for two kernels and reads it back with xorriso, gzip,
// cpio and modinfo; then as a tarball; and checks -d suse is refused.
func TestDriverDiskRealHeaders(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t)
	for _, tool := range [][2]string{{"openssl", "openssl"}, {"xorriso", "xorriso"}, {"cpio", "cpio"}, {"modinfo", "kmod"}, {"gzip", "gzip"}, {"tar", "tar"}} {
		testkit.RequireTool(t, tool[0], tool[1])
	}
	ks := testkit.Kernels(t, 2)
	k1, k2 := ks[0], ks[1]
	s := tarballDkmsd(t, tarballEnv, ks...)
	src := testkit.CopyModule(t, s.root, "dkmsd_twomods-2.1")
	// The packager's own files: a pcitable replacing the generated one,
	// and a file of its own.
	pcitable := "0x8086\t0x1234\t\"dkmsd_alpha\"\t\"dkmsd test: a packager's pcitable\"\n"
	readme := "Load with inst.dd.\n"
	if err := os.MkdirAll(filepath.Join(src, "redhat_driver_disk"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"pcitable": pcitable, "README.dd": readme} {
		if err := os.WriteFile(filepath.Join(src, "redhat_driver_disk", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustSucceed(t, s, "build", "dkmsd_twomods/2.1", "-k", k1, "-k", k2)
	ddDir := filepath.Join(s.root, "var/lib/dkms/dkmsd_twomods/2.1/driver_disk")

	t.Run("suse is not supported", func(t *testing.T) {
		before := testkit.Snapshot(t, filepath.Join(s.root, "var/lib/dkms"))
		wantExit(t, s, 1, []string{"suse", "not supported"}, "mkdriverdisk", "-d", "suse", "-m", "dkmsd_twomods", "-v", "2.1", "-k", k1)
		sameState(t, "mkdriverdisk -d suse", before, testkit.Snapshot(t, filepath.Join(s.root, "var/lib/dkms")))
	})

	mustSucceed(t, s, "mkdriverdisk", "-d", "redhat", "-m", "dkmsd_twomods", "-v", "2.1", "-k", k1+","+k2)
	iso := filepath.Join(ddDir, "dkmsd_twomods-2.1-dd.iso")
	diskFiles := []string{"rhdd", "modules.cgz", "modinfo", "modules.alias", "modules.dep", "pcitable", "README.dd"}

	out, err := exec.Command("xorriso", "-indev", iso, "-ls").CombinedOutput()
	if err != nil {
		t.Fatalf("xorriso -indev %s -ls: %v\n%s", iso, err, out)
	}
	var listed []string
	for _, l := range strings.Split(string(out), "\n") {
		if len(l) > 2 && l[0] == '\'' && l[len(l)-1] == '\'' {
			listed = append(listed, l[1:len(l)-1])
		}
	}
	for _, f := range diskFiles {
		if !slices.Contains(listed, f) {
			t.Errorf("xorriso -ls of the disk lists %q, no %s", listed, f)
		}
	}

	isoDir := t.TempDir()
	if out, err := exec.Command("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", isoDir).CombinedOutput(); err != nil {
		t.Fatalf("xorriso -extract: %v\n%s", err, out)
	}
	if got := string(mustReadFile(t, filepath.Join(isoDir, "pcitable"))); got != pcitable {
		t.Errorf("pcitable on the disk is %q, the packager's %q", got, pcitable)
	}
	if got := string(mustReadFile(t, filepath.Join(isoDir, "README.dd"))); got != readme {
		t.Errorf("README.dd on the disk is %q, the packager's %q", got, readme)
	}
	if rhdd := mustReadFile(t, filepath.Join(isoDir, "rhdd")); !bytes.Contains(rhdd, []byte("dkmsd_twomods")) {
		t.Errorf("rhdd %q does not name the module", rhdd)
	}
	if dep := string(mustReadFile(t, filepath.Join(isoDir, "modules.dep"))); !strings.Contains(dep, "dkmsd_beta_renamed: dkmsd_alpha\n") {
		t.Errorf("modules.dep does not say dkmsd_beta_renamed needs dkmsd_alpha:\n%s", dep)
	}
	if mi := string(mustReadFile(t, filepath.Join(isoDir, "modinfo"))); !strings.HasPrefix(mi, "Version 0\n") || !strings.Contains(mi, "dkmsd_alpha\n") || !strings.Contains(mi, "dkmsd_beta_renamed\n") {
		t.Errorf("modinfo file:\n%s", mi)
	}

	cpioDir := t.TempDir()
	unpack := exec.Command("sh", "-c", "gzip -dc \"$1\" | cpio -idm --quiet", "sh", filepath.Join(isoDir, "modules.cgz"))
	unpack.Dir = cpioDir
	if out, err := unpack.CombinedOutput(); err != nil {
		t.Fatalf("gzip -dc modules.cgz | cpio -idm: %v\n%s", err, out)
	}
	var want []string
	for _, k := range ks {
		for _, m := range twomodsKos {
			ko := filepath.Join(k, tarballArch, m+".ko")
			want = append(want, ko)
			sameBytes(t, filepath.Join(cpioDir, ko), builtKo(s.root, "dkmsd_twomods", "2.1", k, m))
			vm, err := exec.Command("modinfo", "-F", "vermagic", filepath.Join(cpioDir, ko)).Output()
			if err != nil || !strings.HasPrefix(string(vm), k+" ") {
				t.Errorf("modinfo -F vermagic %s: %q (%v), want it to start with %q", ko, vm, err, k+" ")
			}
		}
	}
	var got []string
	filepath.WalkDir(cpioDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			rel, _ := filepath.Rel(cpioDir, p)
			got = append(got, rel)
		}
		return err
	})
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("modules.cgz holds %q, want %q", got, want)
	}

	t.Run("media tar", func(t *testing.T) {
		mustSucceed(t, s, "mkdriverdisk", "-d", "redhat", "-m", "dkmsd_twomods", "-v", "2.1", "-k", k1+","+k2, "--media", "tar")
		tgz := filepath.Join(ddDir, "dkmsd_twomods-2.1-dd.tar.gz")
		tarDir := t.TempDir()
		if out, err := exec.Command("tar", "-xzf", tgz, "-C", tarDir).CombinedOutput(); err != nil {
			t.Fatalf("tar -xzf %s: %v\n%s", tgz, err, out)
		}
		if a, b := treeFiles(t, isoDir), treeFiles(t, tarDir); !slices.Equal(a, b) {
			t.Errorf("the tar disk holds\n  %q\nthe ISO\n  %q", b, a)
		}
	})
}

// treeFiles lists a directory's files with their content hashes.
func treeFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, fmt.Sprintf("%s %x", rel, sha256.Sum256(mustReadFile(t, p))))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}
