//go:build systemtest

// This test changes the machine itself (it swaps Debian's dkms for dkmsd's
// own package and back, installs *-dkms packages and a kernel), so it runs
// in make test's serial step: -tags systemtest -p 1.

package main

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// pkgDkms is the dkms command every *-dkms package calls.
const pkgDkms = "/usr/sbin/dkms"

// pkgModule is a Debian *-dkms package the test installs.
type pkgModule struct {
	deb        string   // the Debian package
	name       string   // its PACKAGE_NAME
	kos        []string // the modules it installs
	version    string   // its PACKAGE_VERSION: /usr/src/<name>-<version>
	debVersion string   // the Debian package's version
}

func pkgTestModules() []*pkgModule {
	return []*pkgModule{
		{deb: "v4l2loopback-dkms", name: "v4l2loopback", kos: []string{"v4l2loopback"}},
		{deb: "acpi-call-dkms", name: "acpi-call", kos: []string{"acpi_call"}},
	}
}

// pkgResult is how a command ended: stdout and stderr interleaved.
type pkgResult struct {
	out  string
	code int
}

// pkgRun runs argv in dir (the test's directory when "") with LC_ALL=C.
func pkgRun(t testing.TB, dir string, argv ...string) pkgResult {
	t.Helper()
	r := testkit.Cmd{Argv: argv, Dir: dir}.Run(t)
	return pkgResult{r.Out, r.Code}
}

// pkgMustRun runs argv and fails the test unless it exits 0.
func pkgMustRun(t testing.TB, dir string, argv ...string) string {
	t.Helper()
	return testkit.Cmd{Argv: argv, Dir: dir}.MustRun(t)
}

// pkgApt runs apt-get -y without recommends (testkit.AptGet).
func pkgApt(t testing.TB, args ...string) pkgResult {
	t.Helper()
	r := testkit.AptGet(t, args...)
	return pkgResult{r.Out, r.Code}
}

// pkgStates maps every package dpkg knows to "<status> <version>", e.g.
// "ii  3.0.10-8+deb12u1" or "rc  0.1.0".
func pkgStates(t testing.TB) map[string]string {
	t.Helper()
	out := pkgMustRun(t, "", "dpkg-query", "-W", "-f", "${binary:Package}\t${db:Status-Abbrev}${Version}\n")
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if name, st, ok := strings.Cut(l, "\t"); ok {
			m[strings.TrimSuffix(name, ":amd64")] = st
		}
	}
	return m
}

// pkgPresent says whether a package is on the machine at all, installed or
// with its configuration files left ("rc").
func pkgPresent(state string) bool {
	return state != "" && !strings.HasPrefix(state, "un") && !strings.HasPrefix(state, "pn")
}

// pkgInstalled says whether a package is installed ("ii").
func pkgInstalled(state string) bool { return strings.HasPrefix(state, "ii") }

// pkgDebBuild is the .deb, built once per test process.
var pkgDebBuild testkit.Once[string]

// pkgDebianPackage builds bin/dkmsd_<version>_amd64.deb with `make deb`
// once per test process and returns its path.
func pkgDebianPackage(t testing.TB) string {
	t.Helper()
	return pkgDebBuild.Get(t, func() (string, error) {
		repo := testkit.RepoRoot()
		changelog, err := os.ReadFile(filepath.Join(repo, "debian/changelog"))
		if err != nil {
			return "", err
		}
		m := regexp.MustCompile(`^dkmsd \(([^)]+)\)`).FindSubmatch(changelog)
		if m == nil {
			return "", fmt.Errorf("debian/changelog: no version in the first line")
		}
		version := string(m[1])
		cmd := exec.Command("make", "--no-print-directory", "deb", "VERSION="+version)
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("make deb: %v\n%s", err, out)
		}
		return filepath.Join(repo, "bin", "dkmsd_"+version+"_amd64.deb"), nil
	})
}

// pkgHeadersKernels are the kernels with headers (a
// /lib/modules/<k>/build/include), sorted.
func pkgHeadersKernels(t testing.TB) []string {
	t.Helper()
	testkit.Kernels(t, 2) // fails under CI=true, naming the packages
	heads, _ := filepath.Glob("/lib/modules/*/build/include")
	var ks []string
	for _, h := range heads {
		ks = append(ks, filepath.Base(filepath.Dir(filepath.Dir(h))))
	}
	slices.SortFunc(ks, tree.CompareVersions)
	return ks
}

// pkgRecord describes what is at path: "absent", "dir 755", "file 644
// <sha256>" or "link <target>".
func pkgRecord(path string) string {
	fi, err := os.Lstat(path)
	if err != nil {
		return "absent"
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(path)
		return "link " + target
	case fi.IsDir():
		return fmt.Sprintf("dir %o", fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "unreadable " + err.Error()
	}
	sum := sha256.Sum256(data)
	return fmt.Sprintf("file %o %s", fi.Mode().Perm(), hex.EncodeToString(sum[:8]))
}

// pkgStatus is the output of one dkms status query.
type pkgStatus struct {
	out  string
	code int
}

// pkgView is a DKMS setup as the test compares it: the output of each
// status query, each installed file of the test's modules, and the
// modules' entries in the DKMS tree.
type pkgView struct {
	status map[string]pkgStatus
	files  map[string]pkgModuleFile // "<kernel>/<path>"
	tree   []string                 // testkit.Tree of <dkms_tree>/<module>, build/ left out
}

// pkgModuleFile is an installed module: its .modinfo, and a digest of its
// bytes without signature and build-id (comparableModule); "" when the
// module holds the path of its build directory (v4l2loopback's __FILE__),
// which differs between the real tree and a relocated one.
type pkgModuleFile struct {
	info tree.ModInfo
	sum  string
}

// pkgSetup is where a dkms works: root "" for the machine's own trees, or
// a relocated root.
type pkgSetup struct {
	dkms func(args ...string) pkgStatus
	root string
}

// pkgStatusQueries are the status commands compared.
func pkgStatusQueries(mods []*pkgModule, kernels []string) [][]string {
	qs := [][]string{{"status"}}
	for _, m := range mods {
		qs = append(qs, []string{"status", "-m", m.name}, []string{"status", m.name + "/" + m.version})
	}
	for _, k := range kernels {
		qs = append(qs, []string{"status", "-k", k})
	}
	return qs
}

var pkgStatusLineRE = regexp.MustCompile(`^([^/\s,:]+)/[^\s,:]+[,:]`)

// pkgOwnLines drops status lines of modules other than the test's (the
// real tree may hold some); every other line stays.
func pkgOwnLines(out string, mods []*pkgModule) string {
	var keep []string
	for _, l := range strings.SplitAfter(out, "\n") {
		if m := pkgStatusLineRE.FindStringSubmatch(l); m != nil && !slices.ContainsFunc(mods, func(p *pkgModule) bool { return p.name == m[1] }) {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "")
}

// pkgViewOf reads a DKMS setup: status through its dkms (stdout only),
// the files under its install tree and its DKMS tree.
func pkgViewOf(t *testing.T, setup pkgSetup, mods []*pkgModule, kernels []string) pkgView {
	t.Helper()
	v := pkgView{status: map[string]pkgStatus{}, files: pkgModuleFiles(t, setup.root, mods, kernels)}
	for _, q := range pkgStatusQueries(mods, kernels) {
		s := setup.dkms(q...)
		s.out = pkgOwnLines(s.out, mods)
		v.status[strings.Join(q, " ")] = s
	}
	for _, m := range mods {
		dir := setup.root + "/var/lib/dkms/" + m.name
		if _, err := os.Lstat(dir); err != nil {
			continue
		}
		v.tree = append(v.tree, m.name+"/")
		for _, e := range testkit.Tree(t, dir) {
			// <version>/build/…: the build area, whatever make left there;
			// …/module/Module.symvers: dkmsd keeps it beside the modules
			// (dkms 3.0.10 does not).
			if parts := strings.Split(e, "/"); len(parts) >= 2 && parts[1] == "build" || strings.HasSuffix(e, "/module/Module.symvers") {
				continue
			}
			if setup.root != "" {
				e = strings.ReplaceAll(e, " -> "+setup.root+"/", " -> /")
			}
			v.tree = append(v.tree, m.name+"/"+e)
		}
	}
	return v
}

// pkgModuleFiles finds every file of the test's modules under
// <root>/lib/modules/<kernel> (kernel/ left out) and reads it.
func pkgModuleFiles(t *testing.T, root string, mods []*pkgModule, kernels []string) map[string]pkgModuleFile {
	t.Helper()
	installTree, buildDirs := root+"/lib/modules", []byte(root+"/var/lib/dkms/")
	files := map[string]pkgModuleFile{}
	for _, k := range kernels {
		dir := filepath.Join(installTree, k)
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if d.IsDir() && d.Name() == "kernel" && filepath.Dir(p) == dir {
				return fs.SkipDir
			}
			if !d.Type().IsRegular() {
				return nil
			}
			base := d.Name()
			for _, m := range mods {
				for _, ko := range m.kos {
					if base != ko+".ko" && !strings.HasPrefix(base, ko+".ko.") {
						continue
					}
					rel, _ := filepath.Rel(installTree, p)
					data, err := tree.ReadModuleFile(p)
					if err != nil {
						t.Errorf("%s: %v", p, err)
						continue
					}
					info, err := tree.ParseModInfo(data)
					if err != nil {
						t.Errorf("%s: %v", p, err)
					}
					f := pkgModuleFile{info: info}
					if !bytes.Contains(data, buildDirs) {
						sum := sha256.Sum256(comparableModule(t, p, data))
						f.sum = hex.EncodeToString(sum[:])
					}
					files[rel] = f
				}
			}
			return nil
		})
	}
	return files
}

// pkgCompareViews reports where got (dkmsd on the real tree) differs from
// want (dkms 3.0.10 on its relocated root).
func pkgCompareViews(t *testing.T, what string, got, want pkgView) {
	t.Helper()
	for _, q := range slices.Sorted(maps.Keys(want.status)) {
		g, w := got.status[q], want.status[q]
		if g != w {
			t.Errorf("%s: dkms %s\n--- got (exit %d):\n%s--- dkms 3.0.10 on the relocated root (exit %d):\n%s", what, q, g.code, g.out, w.code, w.out)
		}
	}
	gotFiles, wantFiles := slices.Sorted(maps.Keys(got.files)), slices.Sorted(maps.Keys(want.files))
	if !slices.Equal(gotFiles, wantFiles) {
		t.Errorf("%s: installed module files %q, dkms 3.0.10 installed %q", what, gotFiles, wantFiles)
	}
	// The whole .modinfo (vermagic, version, srcversion, depends, …), and
	// the bytes but for the signature and build-id.
	for f, w := range want.files {
		g, ok := got.files[f]
		if !ok {
			continue
		}
		keys := map[string]bool{}
		for k := range g.info {
			keys[k] = true
		}
		for k := range w.info {
			keys[k] = true
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			if !reflect.DeepEqual(g.info[k], w.info[k]) {
				t.Errorf("%s: %s: modinfo %s %q, dkms 3.0.10's %q", what, f, k, g.info[k], w.info[k])
			}
		}
		if g.sum != "" && w.sum != "" && g.sum != w.sum {
			t.Errorf("%s: %s differs from dkms 3.0.10's build beyond signature and build-id", what, f)
		}
	}
	if !slices.Equal(got.tree, want.tree) {
		t.Errorf("%s: the DKMS tree\n%s\n--- dkms 3.0.10's:\n%s", what, strings.Join(got.tree, "\n"), strings.Join(want.tree, "\n"))
	}
}

// pkgRealDkms is the machine's own setup, through /usr/sbin/dkms (stdout
// only).
func pkgRealDkms(t *testing.T) pkgSetup {
	return pkgSetup{dkms: func(args ...string) pkgStatus {
		t.Helper()
		r := testkit.Cmd{Argv: append([]string{pkgDkms}, args...)}.Run(t)
		return pkgStatus{r.Stdout, r.Code}
	}}
}

// pkgReference is what Debian's dkms 3.0.10 makes of the same module
// sources on a relocated root.
type pkgReference struct {
	built     map[string]map[string]bool // module → kernel → built (false: BUILD_EXCLUSIVE, exit 77)
	installed pkgView                    // every module added and installed for every kernel
	removed   pkgView                    // then acpi-call removed (remove --all)
}

// pkgBuildReference downloads the *-dkms packages, unpacks their /usr/src
// trees into a relocated root and runs dkms 3.0.10 add and install for each
// kernel, then remove of acpi-call. It sets each module's versions.
func pkgBuildReference(t *testing.T, mods []*pkgModule, kernels []string) *pkgReference {
	t.Helper()
	debs := t.TempDir()
	args := []string{"apt-get", "-o", "APT::Sandbox::User=root", "download"}
	for _, m := range mods {
		args = append(args, m.deb)
	}
	pkgMustRun(t, debs, args...)
	unpacked := t.TempDir()
	root := testkit.NewRoot(t, kernels...)
	for _, m := range mods {
		files, _ := filepath.Glob(filepath.Join(debs, m.deb+"_*.deb"))
		if len(files) != 1 {
			t.Fatalf("apt-get download %s: files %q", m.deb, files)
		}
		m.debVersion = strings.TrimSpace(pkgMustRun(t, "", "dpkg-deb", "-f", files[0], "Version"))
		pkgMustRun(t, "", "dpkg-deb", "-x", files[0], unpacked)
		srcs, _ := filepath.Glob(filepath.Join(unpacked, "usr/src", m.name+"-*"))
		if len(srcs) != 1 {
			t.Fatalf("%s: /usr/src/%s-* in the package: %q", m.deb, m.name, srcs)
		}
		m.version = strings.TrimPrefix(filepath.Base(srcs[0]), m.name+"-")
		pkgMustRun(t, "", "cp", "-a", srcs[0], filepath.Join(root, "usr/src")+"/")
	}

	keys := t.TempDir()
	key, cert := filepath.Join(keys, "mok.key"), filepath.Join(keys, "mok.pub")
	pkgMustRun(t, "", "openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=dkmsd package test",
		"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert)
	ref := side{name: "dkms-3.0.10", bin: referenceDkms, root: root,
		env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=/root", "mok_signing_key=" + key, "mok_certificate=" + cert, testkit.SignAnywhere}}
	setup := pkgSetup{root: root, dkms: func(args ...string) pkgStatus {
		r := ref.run(t, args...)
		return pkgStatus{r.Stdout, r.Code}
	}}
	rep := &pkgReference{built: map[string]map[string]bool{}}
	for _, m := range mods {
		if r := ref.run(t, "add", "-m", m.name, "-v", m.version); r.Code != 0 {
			t.Fatalf("dkms 3.0.10 add %s/%s: exit %d\n%s%s", m.name, m.version, r.Code, r.Stdout, r.Stderr)
		}
		rep.built[m.name] = map[string]bool{}
		for _, k := range kernels {
			r := ref.run(t, "install", m.name+"/"+m.version, "-k", k, "--no-depmod")
			switch r.Code {
			case 0:
				rep.built[m.name][k] = true
			case 77: // BUILD_EXCLUSIVE: not for this kernel
				t.Logf("dkms 3.0.10: %s/%s is not for %s (BUILD_EXCLUSIVE)", m.name, m.version, k)
			default:
				t.Fatalf("dkms 3.0.10 install %s/%s -k %s: exit %d\n%s%s", m.name, m.version, k, r.Code, r.Stdout, r.Stderr)
			}
		}
		if !slices.ContainsFunc(kernels, func(k string) bool { return rep.built[m.name][k] }) {
			t.Fatalf("dkms 3.0.10 built %s for none of %q: nothing to compare", m.name, kernels)
		}
	}
	rep.installed = pkgViewOf(t, setup, mods, kernels)
	t.Logf("dkms 3.0.10 on the relocated root:\n%s", rep.installed.status["status"].out)
	if r := ref.run(t, "remove", "acpi-call/"+pkgModuleNamed(mods, "acpi-call").version, "--all", "--no-depmod"); r.Code != 0 {
		t.Fatalf("dkms 3.0.10 remove acpi-call --all: exit %d\n%s%s", r.Code, r.Stdout, r.Stderr)
	}
	rep.removed = pkgViewOf(t, setup, mods, kernels)
	return rep
}

func pkgModuleNamed(mods []*pkgModule, name string) *pkgModule {
	for _, m := range mods {
		if m.name == name {
			return m
		}
	}
	panic("no module " + name)
}

// pkgDebFiles lists the paths a .deb installs ("/etc/…"), directories
// included.
func pkgDebFiles(t testing.TB, deb string) []string {
	t.Helper()
	out := pkgMustRun(t, "", "sh", "-c", `dpkg-deb --fsys-tarfile "$1" | tar -t`, "sh", deb)
	var paths []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSuffix(strings.TrimPrefix(l, "."), "/")
		if l != "" {
			paths = append(paths, l)
		}
	}
	return paths
}

// pkgListFiles is `dpkg -L pkg` without "/.".
func pkgListFiles(t testing.TB, pkg string) []string {
	t.Helper()
	var paths []string
	for _, l := range strings.Split(pkgMustRun(t, "", "dpkg-query", "-L", pkg), "\n") {
		if l != "" && l != "/." {
			paths = append(paths, l)
		}
	}
	return paths
}

// pkgOwners maps each path that some package holds to its packages
// (dpkg -S).
func pkgOwners(t testing.TB, paths []string) map[string][]string {
	t.Helper()
	owners := map[string][]string{}
	if len(paths) == 0 {
		return owners
	}
	r := pkgRun(t, "", append([]string{"dpkg-query", "-S"}, paths...)...)
	for _, l := range strings.Split(r.out, "\n") {
		if strings.HasPrefix(l, "diversion ") {
			continue
		}
		pkgs, path, ok := strings.Cut(l, ": ")
		if !ok || !strings.HasPrefix(path, "/") {
			continue
		}
		for _, p := range strings.Split(pkgs, ", ") {
			owners[path] = append(owners[path], strings.TrimSuffix(p, ":amd64"))
		}
	}
	return owners
}

// pkgConffiles maps each conffile of an installed package to its md5.
func pkgConffiles(t testing.TB, pkg string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, l := range strings.Split(pkgMustRun(t, "", "dpkg-query", "-W", "-f", "${Conffiles}\n", pkg), "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			m[f[0]] = f[1]
		}
	}
	return m
}

// pkgDkmsIntact lists what is wrong with Debian's dkms package on the
// machine: a file missing or changed (dpkg --verify), a conffile not as
// shipped (want: the md5s recorded before the test), a path of dpkg -L
// gone.
func pkgDkmsIntact(t testing.TB, conffiles map[string]string) []string {
	t.Helper()
	var bad []string
	if !pkgInstalled(pkgStates(t)["dkms"]) {
		return []string{"dkms is not installed"}
	}
	if r := pkgRun(t, "", "dpkg", "--verify", "dkms"); r.code != 0 || strings.TrimSpace(r.out) != "" {
		bad = append(bad, "dpkg --verify dkms: "+r.out)
	}
	for f, sum := range conffiles {
		data, err := os.ReadFile(f)
		if err != nil {
			bad = append(bad, fmt.Sprintf("conffile %s: %v", f, err))
			continue
		}
		if got := fmt.Sprintf("%x", md5.Sum(data)); got != sum {
			bad = append(bad, fmt.Sprintf("conffile %s is not dkms's (md5 %s, want %s)", f, got, sum))
		}
	}
	for _, p := range pkgListFiles(t, "dkms") {
		if _, err := os.Lstat(p); err != nil {
			bad = append(bad, fmt.Sprintf("%s (dpkg -L dkms) is gone", p))
		}
	}
	return bad
}

// pkgIsDkms3010 says what is wrong if /usr/sbin/dkms is not Debian's dkms
// 3.0.10 ("" when it is). dkmsd's own --version also prints dkms-3.0.10,
// so its owner and --help tell them apart.
func pkgIsDkms3010(t testing.TB) string {
	t.Helper()
	if v := pkgRun(t, "", pkgDkms, "--version"); strings.TrimSpace(v.out) != "dkms-3.0.10" {
		return fmt.Sprintf("%s --version: %q (exit %d)", pkgDkms, v.out, v.code)
	}
	if o := pkgOwners(t, []string{pkgDkms})[pkgDkms]; !slices.Equal(o, []string{"dkms"}) {
		return fmt.Sprintf("%s belongs to %q", pkgDkms, o)
	}
	if strings.Contains(pkgRun(t, "", pkgDkms, "--help").out, "dkmsd") {
		return pkgDkms + " --help mentions dkmsd"
	}
	return ""
}

// TestSystemDebianPackageLifecycle is the Debian package's verification
// list, on the machine's own trees, as root, in this order:
//
//   - make deb; lintian reports no error (E:);
//   - Debian's dkms 3.0.10 (still /usr/sbin/dkms) builds the /usr/src trees
//     of the v4l2loopback-dkms and acpi-call-dkms .debs on a relocated root,
//     for every kernel with headers: the reference status lines and files;
//   - apt-get install ./bin/dkmsd_<v>_amd64.deb swaps Debian's dkms out;
//     /usr/sbin/dkms is dkmsd's;
//   - apt-get install v4l2loopback-dkms acpi-call-dkms: their postinst
//     (dkmsd's common.postinst) builds and installs them for every kernel
//     with headers, except where BUILD_EXCLUSIVE says no (v4l2loopback
//     needs CONFIG_VIDEO_DEV, which cloud kernels lack); dkms status, the
//     installed files (.modinfo, bytes) and the tree entries are dkms
//     3.0.10's;
//   - the image and headers of a cloud kernel the machine does not have
//     (testkit.InstallableKernel) installed with apt get
//     acpi-call through the package's kernel hooks (v4l2loopback skipped),
//     and lose it when purged;
//   - apt-get remove acpi-call-dkms removes its modules;
//   - apt-get install dkms swaps back (dkms 3.0.10 reads the tree dkmsd
//     wrote), then apt-get purge dkmsd leaves no file of the package, keeps
//     the DKMS tree with v4l2loopback and Debian's dkms intact. (Purging
//     dkmsd while it is the only dkms would take v4l2loopback-dkms, which
//     depends on dkms, and its tree entry with it.)
//
// Everything is put back in t.Cleanup, also on failure: the packages the
// test installed are purged, Debian's dkms is installed again, the modules'
// trees and files, the initrds, depmod indexes, boot links and anything
// else under testkit.MachinePaths put back by testkit.GuardMachine, which
// fails the test for what it cannot put back. Run it alone:
//
//	go test -count=1 -tags systemtest -run SystemDebianPackage -v -timeout 40m ./cmd/dkms
//
// pkgLifecycle is what the steps of TestSystemDebianPackageLifecycle
// share.
type pkgLifecycle struct {
	kernels       []string          // kernels with headers
	oldKernel     string            // a kernel apt installs and purges
	oldPackages   []string          // its image and headers
	mods          []*pkgModule      // the *-dkms packages
	before        map[string]string // dpkg's package states before the test
	deb           string            // dkmsd's .deb
	dkmsConffiles map[string]string // Debian's dkms's conffiles and their md5s
	ref           *pkgReference     // what dkms 3.0.10 makes of the modules
	dkmsdFiles    []string          // dpkg -L dkmsd
}

// TestSystemDebianPackageLifecycle is the Debian package's verification
// list, on the machine's own trees, as root, in this order:
//
//   - make deb; lintian reports no error (E:);
//   - Debian's dkms 3.0.10 (still /usr/sbin/dkms) builds the /usr/src trees
//     of the v4l2loopback-dkms and acpi-call-dkms .debs on a relocated root,
//     for every kernel with headers: the reference status lines and files;
//   - apt-get install ./bin/dkmsd_<v>_amd64.deb swaps Debian's dkms out;
//     /usr/sbin/dkms is dkmsd's;
//   - apt-get install v4l2loopback-dkms acpi-call-dkms: their postinst
//     (dkmsd's common.postinst) builds and installs them for every kernel
//     with headers, except where BUILD_EXCLUSIVE says no (v4l2loopback
//     needs CONFIG_VIDEO_DEV, which cloud kernels lack); dkms status, the
//     installed files (.modinfo, bytes) and the tree entries are dkms
//     3.0.10's;
//   - the image and headers of a cloud kernel the machine does not have
//     (testkit.InstallableKernel) installed with apt get
//     acpi-call through the package's kernel hooks (v4l2loopback skipped),
//     and lose it when purged;
//   - apt-get remove acpi-call-dkms removes its modules;
//   - apt-get install dkms swaps back (dkms 3.0.10 reads the tree dkmsd
//     wrote), then apt-get purge dkmsd leaves no file of the package, keeps
//     the DKMS tree with v4l2loopback and Debian's dkms intact. (Purging
//     dkmsd while it is the only dkms would take v4l2loopback-dkms, which
//     depends on dkms, and its tree entry with it.)
//
// Everything is put back in t.Cleanup, also on failure: the packages the
// test installed are purged, Debian's dkms is installed again, the modules'
// trees and files, the initrds, depmod indexes, boot links and anything
// else under testkit.MachinePaths put back by testkit.GuardMachine, which
// fails the test for what it cannot put back. Run it alone:
//
//	go test -count=1 -tags systemtest -run SystemDebianPackage -v -timeout 40m ./cmd/dkms
func TestSystemDebianPackageLifecycle(t *testing.T) {
	l := pkgPreconditions(t)
	// 1. The package, and lintian on it. Neither changes the machine.
	l.deb = pkgDebianPackage(t)
	t.Run("lintian", l.lintian)
	l.guard(t)

	// must stops the test after a step the later ones need.
	must := func(ok bool) {
		if !ok {
			t.FailNow()
		}
	}
	// 6 (first, while /usr/sbin/dkms is Debian's): the reference.
	must(t.Run("reference", func(t *testing.T) {
		l.ref = pkgBuildReference(t, l.mods, l.kernels)
	}))
	must(t.Run("install-dkmsd", l.installDkmsd))
	must(t.Run("install-dkms-packages", l.installDkmsPackages))
	t.Run("kernel-install-remove", l.kernelInstallRemove)
	t.Run("remove-acpi-call", l.removeAcpiCall)
	t.Run("swap-back-purge", l.swapBackPurge)
}

// pkgPreconditions checks what the test needs and that the machine has
// nothing the test installs and purges, and returns the shared state.
func pkgPreconditions(t *testing.T) *pkgLifecycle {
	t.Helper()
	l := &pkgLifecycle{}
	testkit.RequireRoot(t)
	for tool, pkg := range map[string]string{"apt-get": "apt", "dpkg-buildpackage": "dpkg-dev", "dh": "debhelper",
		"lintian": "lintian", "make": "make", "gcc": "gcc", "openssl": "openssl", "update-initramfs": "initramfs-tools"} {
		testkit.RequireTool(t, tool, pkg)
	}
	if msg := pkgIsDkms3010(t); msg != "" {
		testkit.Missing(t, "Debian's dkms 3.0.10 as "+pkgDkms+" (apt-get install -y dkms): "+msg)
	}
	l.kernels = pkgHeadersKernels(t)
	// A kernel apt can install and the machine does not have.
	l.oldKernel = testkit.InstallableKernel(t)
	l.oldPackages = []string{"linux-image-" + l.oldKernel, "linux-headers-" + l.oldKernel}
	l.mods = pkgTestModules()
	l.before = pkgStates(t)
	for _, p := range append([]string{"dkmsd", "v4l2loopback-dkms", "acpi-call-dkms"}, l.oldPackages...) {
		if pkgPresent(l.before[p]) {
			t.Fatalf("%s is on the machine (%q): this test installs and purges it, so it must not be there (apt-get purge %s)", p, l.before[p], p)
		}
	}
	for _, p := range append([]string{"dkms", "v4l2loopback-dkms", "acpi-call-dkms"}, l.oldPackages...) {
		out := pkgRun(t, "", "apt-cache", "policy", p).out
		if !strings.Contains(out, "Candidate:") || strings.Contains(out, "Candidate: (none)") {
			testkit.Missing(t, p+" in apt's package lists (apt-get update; Debian 12 with bookworm-security)")
		}
	}
	for _, m := range l.mods {
		srcs, _ := filepath.Glob("/usr/src/" + m.name + "-*")
		for _, p := range append(srcs, "/var/lib/dkms/"+m.name) {
			if _, err := os.Lstat(p); err == nil {
				t.Fatalf("%s exists: a previous run was interrupted, or the module is in use; remove it first", p)
			}
		}
		for _, ko := range m.kos {
			if left, _ := filepath.Glob("/lib/modules/*/updates/dkms/" + ko + ".ko*"); len(left) > 0 {
				t.Fatalf("%q exist: remove them first", left)
			}
		}
	}
	if _, err := os.Lstat("/lib/modules/" + l.oldKernel); err == nil {
		t.Fatalf("/lib/modules/%s exists: the test installs and removes that kernel", l.oldKernel)
	}
	return l
}

// guard records what the test may change before it changes anything: it
// is put back after the packages are purged (t.Cleanup runs last first).
func (l *pkgLifecycle) guard(t *testing.T) {
	t.Helper()
	l.dkmsConffiles = pkgConffiles(t, "dkms")
	guarded := slices.Clone(testkit.MachinePaths)
	for _, p := range append(pkgListFiles(t, "dkms"), pkgDebFiles(t, l.deb)...) {
		// The packages' files, not the directories they share (/usr).
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			guarded = append(guarded, p)
		}
	}

	// Cleanup, last registered first run: the packages, then the guard
	// puts back the files; then the check that the packages are as before.
	t.Cleanup(func() {
		if msg := pkgIsDkms3010(t); msg != "" {
			t.Errorf("after the test: %s", msg)
		}
		now := pkgStates(t)
		for name, st := range l.before {
			if now[name] != st {
				t.Errorf("after the test: package %s is %q, was %q", name, now[name], st)
			}
		}
		for name, st := range now {
			if _, ok := l.before[name]; !ok && pkgPresent(st) {
				t.Errorf("after the test: package %s is %q, was not there", name, st)
			}
		}
	})
	testkit.GuardMachine(t, guarded...)
	t.Cleanup(func() {
		var purge []string
		for name, st := range pkgStates(t) {
			if pkgPresent(st) && !pkgPresent(l.before[name]) {
				purge = append(purge, name)
			}
		}
		if len(purge) > 0 {
			slices.Sort(purge)
			if r := pkgApt(t, append([]string{"purge"}, purge...)...); r.code != 0 {
				t.Errorf("cleanup: apt-get purge %v: exit %d\n%s", purge, r.code, r.out)
			}
		}
		if r := pkgApt(t, "install", "dkms"); r.code != 0 {
			t.Errorf("cleanup: apt-get install dkms: exit %d\n%s", r.code, r.out)
		}
		if bad := pkgDkmsIntact(t, l.dkmsConffiles); len(bad) > 0 {
			t.Logf("cleanup: Debian's dkms is not as before (%s): reinstalling it with its own conffiles", strings.Join(bad, "; "))
			if r := pkgApt(t, "install", "--reinstall", "-o", "Dpkg::Options::=--force-confmiss", "-o", "Dpkg::Options::=--force-confnew", "dkms"); r.code != 0 {
				t.Errorf("cleanup: apt-get install --reinstall dkms: exit %d\n%s", r.code, r.out)
			}
		}
		if pkgPresent(pkgStates(t)["dkmsd"]) {
			if r := pkgApt(t, "purge", "dkmsd"); r.code != 0 {
				t.Errorf("cleanup: apt-get purge dkmsd: exit %d\n%s", r.code, r.out)
			}
		}
	})

}

// lintian is step "lintian".
func (l *pkgLifecycle) lintian(t *testing.T) {
	r := pkgRun(t, "", "lintian", l.deb)
	t.Logf("lintian %s (exit %d):\n%s", filepath.Base(l.deb), r.code, r.out)
	for _, l := range strings.Split(r.out, "\n") {
		if strings.HasPrefix(l, "E: ") {
			t.Errorf("lintian error: %s", l)
		}
	}
}

// installDkmsd is step "install-dkmsd".
func (l *pkgLifecycle) installDkmsd(t *testing.T) {
	r := pkgApt(t, "install", l.deb)
	t.Logf("apt-get install %s (exit %d):\n%s", l.deb, r.code, r.out)
	if r.code != 0 {
		t.Fatalf("apt-get install %s: exit %d", l.deb, r.code)
	}
	states := pkgStates(t)
	if !pkgInstalled(states["dkmsd"]) || pkgInstalled(states["dkms"]) {
		t.Fatalf("after installing dkmsd: dkmsd %q, dkms %q; want dkmsd installed and dkms swapped out", states["dkmsd"], states["dkms"])
	}
	if r := pkgRun(t, "", "dpkg", "--verify", "dkmsd"); r.code != 0 || strings.TrimSpace(r.out) != "" {
		t.Errorf("dpkg --verify dkmsd: exit %d\n%s", r.code, r.out)
	}
	if o := pkgOwners(t, []string{pkgDkms})[pkgDkms]; !slices.Equal(o, []string{"dkmsd"}) {
		t.Errorf("%s belongs to %q, want dkmsd", pkgDkms, o)
	}
	if help := pkgRun(t, "", pkgDkms, "--help"); !strings.Contains(help.out, "dkmsd") {
		t.Errorf("%s --help does not mention dkmsd (exit %d):\n%s", pkgDkms, help.code, help.out)
	}
	l.dkmsdFiles = pkgListFiles(t, "dkmsd")
}

// installDkmsPackages is step "install-dkms-packages".
// 3. *-dkms packages build and install through dkmsd's
// common.postinst for every kernel with headers, as dkms 3.0.10 does.
func (l *pkgLifecycle) installDkmsPackages(t *testing.T) {
	args := []string{"install"}
	for _, m := range l.mods {
		args = append(args, m.deb)
	}
	r := pkgApt(t, args...)
	t.Logf("apt-get %s (exit %d):\n%s", strings.Join(args, " "), r.code, r.out)
	if r.code != 0 {
		t.Fatalf("apt-get %s: exit %d", strings.Join(args, " "), r.code)
	}
	states := pkgStates(t)
	for _, m := range l.mods {
		if want := "ii " + m.debVersion; states[m.deb] != want {
			t.Errorf("%s is %q, want %q (the version dkms 3.0.10 built)", m.deb, states[m.deb], want)
		}
		for _, k := range l.kernels {
			for _, ko := range m.kos {
				p := filepath.Join("/lib/modules", k, "updates/dkms", ko+".ko")
				info, err := tree.ReadModInfo(p)
				switch {
				case !l.ref.built[m.name][k]:
					if err == nil {
						t.Errorf("%s is installed, but %s is not for %s (BUILD_EXCLUSIVE; dkms 3.0.10 does not build it)", p, m.name, k)
					}
				case err != nil:
					t.Errorf("%s for kernel %s: %v", m.name, k, err)
				default:
					if v := strings.Fields(info.Get("vermagic")); len(v) == 0 || v[0] != k {
						t.Errorf("%s: vermagic %q, want %s …", p, info.Get("vermagic"), k)
					}
				}
			}
		}
	}
	pkgCompareViews(t, "after apt-get install of the *-dkms packages", pkgViewOf(t, pkgRealDkms(t), l.mods, l.kernels), l.ref.installed)
}

// kernelInstallRemove is step "kernel-install-remove".
// 5. A kernel installed with apt gets the modules through the
// package's hooks (acpi-call; v4l2loopback is BUILD_EXCLUSIVE for
// cloud kernels, whose .config has no CONFIG_VIDEO_DEV), and loses
// them when it goes. Before acpi-call's removal, so something is built.
func (l *pkgLifecycle) kernelInstallRemove(t *testing.T) {
	beforeKernel := pkgStates(t)
	r := pkgApt(t, append([]string{"install"}, l.oldPackages...)...)
	t.Logf("apt-get install %s (exit %d):\n%s", strings.Join(l.oldPackages, " "), r.code, r.out)
	if r.code != 0 {
		t.Fatalf("apt-get install: exit %d", r.code)
	}
	// What dkms 3.0.10 shows for a kernel of the same flavour.
	var like string
	for _, k := range l.kernels {
		if testkit.Flavour(k) == testkit.Flavour(l.oldKernel) {
			like = k
		}
	}
	got := pkgOwnLines(pkgRealDkms(t).dkms("status", "-k", l.oldKernel).out, l.mods)
	if like != "" {
		want := strings.ReplaceAll(l.ref.installed.status["status -k "+like].out, like, l.oldKernel)
		if got != want {
			t.Errorf("dkms status -k %s:\n%s--- want (dkms 3.0.10's for %s):\n%s", l.oldKernel, got, like, want)
		}
	}
	for _, m := range l.mods {
		built := like == "" || l.ref.built[m.name][like]
		for _, ko := range m.kos {
			p := filepath.Join("/lib/modules", l.oldKernel, "updates/dkms", ko+".ko")
			info, err := tree.ReadModInfo(p)
			switch {
			case !built && err == nil:
				t.Errorf("%s is installed; dkms 3.0.10 does not build %s for %s kernels", p, m.name, testkit.Flavour(l.oldKernel))
			case built && err != nil:
				t.Errorf("%s for the new kernel: %v", m.name, err)
			case built:
				if v := strings.Fields(info.Get("vermagic")); len(v) == 0 || v[0] != l.oldKernel {
					t.Errorf("%s: vermagic %q, want %s …", p, info.Get("vermagic"), l.oldKernel)
				}
			}
		}
	}
	// dkmsd's hooks did it, and reported it once.
	var tr lifecycle.Transaction
	if b, err := os.ReadFile("/var/lib/dkms/.dkmsd/last-transaction.json"); err != nil {
		t.Errorf("no transaction reported by dkmsd's hooks: %v", err)
	} else if err := json.Unmarshal(b, &tr); err != nil {
		t.Errorf("last-transaction.json: %v", err)
	} else if lines := strings.Join(tr.Lines, "\n"); tr.Failed != 0 || tr.Installed < 1 || !strings.Contains(lines, l.oldKernel) || !strings.Contains(lines, "acpi-call") {
		t.Errorf("dkmsd's hooks reported %q, %s; want acpi-call installed for %s and no failure (lines %q)", tr.Hook, tr.Summary, l.oldKernel, tr.Lines)
	}

	var purge []string
	for name, st := range pkgStates(t) {
		if pkgPresent(st) && !pkgPresent(beforeKernel[name]) {
			purge = append(purge, name)
		}
	}
	slices.Sort(purge)
	r = pkgApt(t, append([]string{"purge"}, purge...)...)
	t.Logf("apt-get purge %s (exit %d):\n%s", strings.Join(purge, " "), r.code, r.out)
	if r.code != 0 {
		t.Fatalf("apt-get purge: exit %d", r.code)
	}
	if got := pkgOwnLines(pkgRealDkms(t).dkms("status").out, l.mods); strings.Contains(got, l.oldKernel) {
		t.Errorf("dkms status after the kernel's removal:\n%s", got)
	}
	for _, m := range l.mods {
		left, _ := filepath.Glob(filepath.Join("/var/lib/dkms", m.name, "*", l.oldKernel))
		left2, _ := filepath.Glob(filepath.Join("/var/lib/dkms", m.name, "kernel-"+l.oldKernel+"-*"))
		if left = append(left, left2...); len(left) > 0 {
			t.Errorf("left in the DKMS tree after the kernel's removal: %q", left)
		}
	}
	if _, err := os.Lstat("/lib/modules/" + l.oldKernel); err == nil {
		t.Errorf("/lib/modules/%s is left after the kernel's removal: %q", l.oldKernel, testkit.Tree(t, "/lib/modules/"+l.oldKernel))
	}
	if left, _ := filepath.Glob("/boot/*" + l.oldKernel + "*"); len(left) > 0 {
		t.Errorf("left in /boot: %q", left)
	}
}

// removeAcpiCall is step "remove-acpi-call".
// 4. Removing a *-dkms package removes its modules.
func (l *pkgLifecycle) removeAcpiCall(t *testing.T) {
	acpi := pkgModuleNamed(l.mods, "acpi-call")
	r := pkgApt(t, "remove", acpi.deb)
	t.Logf("apt-get remove %s (exit %d):\n%s", acpi.deb, r.code, r.out)
	if r.code != 0 {
		t.Fatalf("apt-get remove %s: exit %d", acpi.deb, r.code)
	}
	for _, p := range []string{"/var/lib/dkms/" + acpi.name + "/" + acpi.version, "/usr/src/" + acpi.name + "-" + acpi.version} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is left after apt-get remove %s", p, acpi.deb)
		}
	}
	for _, k := range l.kernels {
		for _, ko := range acpi.kos {
			if left, _ := filepath.Glob(filepath.Join("/lib/modules", k, "*", "*", ko+".ko*")); len(left) > 0 {
				t.Errorf("left after apt-get remove %s: %q", acpi.deb, left)
			}
		}
	}
	pkgCompareViews(t, "after apt-get remove "+acpi.deb, pkgViewOf(t, pkgRealDkms(t), l.mods, l.kernels), l.ref.removed)
}

// swapBackPurge is step "swap-back-purge".
// 7. Back to Debian's dkms, then purge: no file of dkmsd's package is
// left, the DKMS tree and v4l2loopback stay.
func (l *pkgLifecycle) swapBackPurge(t *testing.T) {
	r := pkgApt(t, "install", "dkms")
	t.Logf("apt-get install dkms (exit %d):\n%s", r.code, r.out)
	if r.code != 0 {
		t.Fatalf("apt-get install dkms: exit %d", r.code)
	}
	if msg := pkgIsDkms3010(t); msg != "" {
		t.Errorf("after apt-get install dkms: %s", msg)
	}
	v4l := pkgModuleNamed(l.mods, "v4l2loopback")
	if st := pkgStates(t); !pkgInstalled(st[v4l.deb]) {
		t.Errorf("after apt-get install dkms: %s is %q", v4l.deb, st[v4l.deb])
	}
	// dkms 3.0.10 reads the tree dkmsd wrote.
	pkgCompareViews(t, "dkms 3.0.10 on the tree dkmsd wrote", pkgViewOf(t, pkgRealDkms(t), l.mods, l.kernels), l.ref.removed)

	r = pkgApt(t, "purge", "dkmsd")
	t.Logf("apt-get purge dkmsd (exit %d):\n%s", r.code, r.out)
	if r.code != 0 {
		t.Fatalf("apt-get purge dkmsd: exit %d", r.code)
	}
	if st := pkgStates(t)["dkmsd"]; pkgPresent(st) {
		t.Errorf("after apt-get purge dkmsd: dkmsd is %q", st)
	}
	var exist []string
	for _, p := range l.dkmsdFiles {
		if _, err := os.Lstat(p); err == nil {
			exist = append(exist, p)
		}
	}
	owners := pkgOwners(t, exist)
	for _, p := range exist {
		if len(owners[p]) == 0 {
			t.Errorf("%s (dpkg -L dkmsd) is left after apt-get purge dkmsd: %s", p, pkgRecord(p))
		}
	}
	if left, _ := filepath.Glob("/var/lib/dpkg/info/dkmsd.*"); len(left) > 0 {
		t.Errorf("left after the purge: %q", left)
	}
	for _, dir := range []string{"/etc/systemd", "/var/lib/systemd/deb-systemd-helper-enabled", "/var/lib/systemd/deb-systemd-user-helper-enabled"} {
		_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && strings.Contains(d.Name(), "dkmsd") {
				t.Errorf("left after the purge: %s", p)
			}
			return nil
		})
	}
	if bad := pkgDkmsIntact(t, l.dkmsConffiles); len(bad) > 0 {
		t.Errorf("Debian's dkms after apt-get purge dkmsd:\n%s", strings.Join(bad, "\n"))
	}
	for _, p := range []string{"/var/lib/dkms/.dkmsd", "/var/lib/dkms/.dkmsd.lock"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("dkmsd's bookkeeping %s is left after the purge", p)
		}
	}
	// The tree and the user's modules stay.
	for _, p := range []string{"/var/lib/dkms", "/var/lib/dkms/" + v4l.name + "/" + v4l.version + "/source"} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("after apt-get purge dkmsd: %v", err)
		}
	}
	pkgCompareViews(t, "after apt-get purge dkmsd", pkgViewOf(t, pkgRealDkms(t), l.mods, l.kernels), l.ref.removed)
}
