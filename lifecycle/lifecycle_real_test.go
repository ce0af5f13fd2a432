package lifecycle_test

// Integration tests that build real modules from testdata/modules against
// the machine's real kernel headers (two kernels), in relocated roots made
// by testkit.NewRoot. They need root, the headers, kmod's depmod,
// openssl and gcc; a missing prerequisite fails under CI=true and skips
// otherwise.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// realArch is the architecture the headers are for (Debian's amd64 kernels).
const realArch = "x86_64"

// sigMarker ends every signed module (scripts/sign-file's trailer).
const sigMarker = "~Module signature appended~\n"

// realRoot is a relocated root over the real headers, with an Env whose
// events are recorded.
type realRoot struct {
	root string
	rec  *lifecycle.Recorder
	env  *lifecycle.Env
}

// newRealRoot makes a root for kernels holding the given testdata modules
// in its source tree.
func newRealRoot(t *testing.T, kernels []string, modules ...string) *realRoot {
	t.Helper()
	testkit.RequireTool(t, "depmod", "kmod")
	testkit.RequireTool(t, "openssl", "openssl")
	testkit.RequireTool(t, "make", "make")
	testkit.RequireTool(t, "gcc", "gcc")
	root := testkit.NewRoot(t, kernels...)
	for _, m := range modules {
		testkit.CopyModule(t, root, m)
	}
	rec := &lifecycle.Recorder{}
	env, err := lifecycle.NewEnv(t.Context(), tree.NewLayout(root), rec)
	if err != nil {
		t.Fatalf("NewEnv(%s): %v", root, err)
	}
	return &realRoot{root: root, rec: rec, env: env}
}

func (r *realRoot) path(rel ...string) string {
	return filepath.Join(append([]string{r.root}, rel...)...)
}

func realTarget(module, version, kernel string) lifecycle.Target {
	return lifecycle.Target{Module: module, Version: version, Kernel: kernel, Arch: realArch}
}

// status is `dkms status` as text lines.
func (r *realRoot) status(t *testing.T) []string {
	t.Helper()
	lines, err := lifecycle.Status(t.Context(), r.env, lifecycle.StatusQuery{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	out := []string{}
	for _, l := range lines {
		out = append(out, l.String())
	}
	return out
}

func (r *realRoot) wantStatus(t *testing.T, want ...string) {
	t.Helper()
	if want == nil {
		want = []string{}
	}
	if got := r.status(t); !slices.Equal(got, want) {
		t.Errorf("status lines:\n got %q\nwant %q", got, want)
	}
}

// events returns the recorded events of a type for a module (and kernel,
// unless "").
func (r *realRoot) events(typ lifecycle.EventType, module, kernel string) []lifecycle.Event {
	var out []lifecycle.Event
	for _, e := range r.rec.Events {
		if e.Type == typ && e.Module == module && (kernel == "" || e.Kernel == kernel) {
			out = append(out, e)
		}
	}
	return out
}

// infoText is every Info and Warning line recorded so far.
func (r *realRoot) infoText() string {
	var b strings.Builder
	for _, e := range r.rec.Events {
		if e.Type == lifecycle.Info || e.Type == lifecycle.Warning {
			b.WriteString(e.Text + "\n")
		}
	}
	return b.String()
}

// dkmsKernelOrder is kernels sorted as dkms lists them (shell glob order).
func dkmsKernelOrder(kernels []string) []string {
	s := slices.Clone(kernels)
	slices.Sort(s)
	return s
}

// dkmsLineOrder orders the status lines of one module version as dkms does
// (by kernel, byte-wise).
func dkmsLineOrder(lines ...string) []string {
	slices.Sort(lines)
	return lines
}

// mustKind fails unless err is a *lifecycle.Error of kind want, and returns it.
func mustKind(t *testing.T, what string, err error, want lifecycle.Kind) *lifecycle.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want kind %d", what, want)
	}
	var le *lifecycle.Error
	if !errors.As(err, &le) {
		t.Fatalf("%s: error %v (%T) is not a *lifecycle.Error, want kind %d", what, err, err, want)
	}
	if got := lifecycle.KindOf(err); got != want {
		t.Fatalf("%s: error kind %d, want %d: %v (lines %q)", what, got, want, err, le.Lines)
	}
	return le
}

func mustOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		var le *lifecycle.Error
		if errors.As(err, &le) {
			t.Fatalf("%s: kind %d: %v (lines %q)", what, le.Kind, err, le.Lines)
		}
		t.Fatalf("%s: %v", what, err)
	}
}

// sameTree reports the differences between two snapshots.
func sameTree(t *testing.T, what string, before, after []string) {
	t.Helper()
	if gone, added := testkit.Changes(before, after); len(gone) > 0 || len(added) > 0 {
		t.Errorf("%s changed:\n  gone/changed: %q\n  new/changed:  %q", what, gone, added)
	}
}

func pathExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return data
}

// mustModInfo reads a module's .modinfo.
func mustModInfo(t *testing.T, ko string) tree.ModInfo {
	t.Helper()
	mi, err := tree.ReadModInfo(ko)
	if err != nil {
		t.Fatalf("modinfo %s: %v", ko, err)
	}
	return mi
}

// modulesDep parses <root>/lib/modules/<k>/modules.dep: module path → its
// dependencies, as depmod wrote them.
func (r *realRoot) modulesDep(t *testing.T, kernel string) map[string]string {
	t.Helper()
	f := r.path("lib/modules", kernel, "modules.dep")
	data, err := os.ReadFile(f)
	if err != nil {
		t.Fatalf("modules.dep (did depmod -b run?): %v", err)
	}
	deps := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		mod, dep, ok := strings.Cut(sc.Text(), ":")
		if ok {
			deps[mod] = strings.TrimSpace(dep)
		}
	}
	return deps
}

// moduleFiles lists the module files under dir, relative to it, not following
// symlinks (so a kernel dir's build link is not entered).
func moduleFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && strings.Contains(d.Name(), ".ko") {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	slices.Sort(out)
	return out
}

// wantNothingBuilt checks that a refused build of module left no trace:
// no BuildStarted event (why says why there must be none), no module
// file anywhere in the root.
func (r *realRoot) wantNothingBuilt(t *testing.T, module, why string) {
	t.Helper()
	if n := len(r.events(lifecycle.BuildStarted, module, "")); n != 0 {
		t.Errorf("%d BuildStarted events %s", n, why)
	}
	if got := moduleFiles(t, r.root); len(got) != 0 {
		t.Errorf("module files in the root: %q", got)
	}
}

// checkInstalledModule asserts what every installed dkmsd module must be:
// in updates/dkms (Debian's override), the same bytes as the build, built
// for the kernel, of the package version, signed.
func (r *realRoot) checkInstalledModule(t *testing.T, module, version, kernel, destName string) tree.ModInfo {
	t.Helper()
	ko := r.path("lib/modules", kernel, "updates/dkms", destName+".ko")
	data, err := os.ReadFile(ko)
	if err != nil {
		t.Fatalf("installed module: %v", err)
	}
	built := r.path("var/lib/dkms", module, version, kernel, realArch, "module", destName+".ko")
	if b, err := os.ReadFile(built); err != nil || !bytes.Equal(b, data) {
		t.Errorf("%s differs from the build %s (err %v)", ko, built, err)
	}
	mi := mustModInfo(t, ko)
	if vm := mi.Get("vermagic"); !strings.HasPrefix(vm, kernel+" ") {
		t.Errorf("%s: vermagic %q, want it to start with %q", ko, vm, kernel+" ")
	}
	if v := mi.Get("version"); v != version {
		t.Errorf("%s: modinfo version %q, want %q", ko, v, version)
	}
	if !bytes.HasSuffix(data, []byte(sigMarker)) {
		t.Errorf("%s is not signed: it does not end with %q", ko, sigMarker)
	} else {
		r.verifySignature(t, ko, data)
	}
	link := r.path("var/lib/dkms", module, "kernel-"+kernel+"-"+realArch)
	if got, err := os.Readlink(link); err != nil || got != version+"/"+kernel+"/"+realArch {
		t.Errorf("kernel link %s -> %q (err %v), want %q", link, got, err, version+"/"+kernel+"/"+realArch)
	}
	return mi
}

// verifySignature checks a signed module's appended PKCS#7 signature
// against the root's MOK certificate with openssl: the module was signed
// with <root>/var/lib/dkms/mok.key, not some other key.
func (r *realRoot) verifySignature(t *testing.T, ko string, data []byte) {
	t.Helper()
	// <module><PKCS#7 DER><struct module_signature, 12 bytes><marker>
	rest := data[:len(data)-len(sigMarker)]
	if len(rest) < 12 {
		t.Errorf("%s: truncated signature", ko)
		return
	}
	info := rest[len(rest)-12:]
	sigLen := int(binary.BigEndian.Uint32(info[8:]))
	const pkeyIDPKCS7 = 2
	if info[2] != pkeyIDPKCS7 || sigLen <= 0 || sigLen > len(rest)-12 {
		t.Errorf("%s: module_signature id_type %d, sig_len %d: not a PKCS#7 signature", ko, info[2], sigLen)
		return
	}
	sig := rest[len(rest)-12-sigLen : len(rest)-12]
	body := rest[:len(rest)-12-sigLen]
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sigFile, bodyFile := write("sig.der", sig), write("body.bin", body)
	pem := filepath.Join(dir, "mok.pem")
	if res := testkit.Run(t, "openssl", "x509", "-inform", "DER", "-in", r.path("var/lib/dkms/mok.pub"), "-out", pem); res.Code != 0 {
		t.Errorf("root's MOK certificate: exit %d: %s", res.Code, res.Out)
		return
	}
	res := testkit.Run(t, "openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", sigFile,
		"-content", bodyFile, "-certfile", pem, "-nointern", "-noverify", "-out", os.DevNull)
	if res.Code != 0 {
		t.Errorf("%s: signature does not verify with %s: exit %d: %s", ko, r.path("var/lib/dkms/mok.pub"), res.Code, res.Out)
	}
}

// TestInstallRealHeadersHello runs the whole life of dkmsd_hello on two
// kernels: add, install (build, sign, depmod), status, uninstall, remove.
func TestInstallRealHeadersHello(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	r := newRealRoot(t, ks, "dkmsd_hello-1.0")
	ctx := t.Context()
	srcBefore := testkit.Snapshot(t, r.path("usr/src"))

	mustOK(t, "add", lifecycle.Add(ctx, r.env, "dkmsd_hello", "1.0", ks[0], realArch))
	if got, err := os.Readlink(r.path("var/lib/dkms/dkmsd_hello/1.0/source")); err != nil || got != r.path("usr/src/dkmsd_hello-1.0") {
		t.Errorf("source link -> %q (err %v), want %q", got, err, r.path("usr/src/dkmsd_hello-1.0"))
	}
	r.wantStatus(t, "dkmsd_hello/1.0: added")
	if n := len(r.events(lifecycle.Added, "dkmsd_hello", "")); n != 1 {
		t.Errorf("%d Added events, want 1", n)
	}

	start := time.Now()
	for _, k := range ks {
		mustOK(t, "install "+k, lifecycle.Install(ctx, r.env, realTarget("dkmsd_hello", "1.0", k)))
	}
	t.Logf("built and installed for %d kernels in %v", len(ks), time.Since(start).Round(time.Millisecond))

	t.Run("installed", func(t *testing.T) {
		for _, k := range ks {
			r.checkInstalledModule(t, "dkmsd_hello", "1.0", k, "dkmsd_hello")
			if got := moduleFiles(t, r.path("lib/modules", k)); !slices.Equal(got, []string{"updates/dkms/dkmsd_hello.ko"}) {
				t.Errorf("module files in lib/modules/%s: %q, want only updates/dkms/dkmsd_hello.ko (Debian ignores DEST_MODULE_LOCATION=/extra)", k, got)
			}
			deps := r.modulesDep(t, k)
			if d, ok := deps["updates/dkms/dkmsd_hello.ko"]; !ok || d != "" {
				t.Errorf("modules.dep of %s: dkmsd_hello entry %q (present %v), want a line with no dependencies; all: %v", k, d, ok, deps)
			}
			if fin := r.events(lifecycle.BuildFinished, "dkmsd_hello", k); len(fin) != 1 {
				t.Errorf("%s: %d BuildFinished events, want 1", k, len(fin))
			} else if want := r.path("var/lib/dkms/dkmsd_hello/1.0", k, realArch, "log/make.log"); fin[0].Log != want || !pathExists(want) {
				t.Errorf("%s: BuildFinished log %q (exists %v), want %q", k, fin[0].Log, pathExists(want), want)
			}
			if n := len(r.events(lifecycle.Installed, "dkmsd_hello", k)); n != 1 {
				t.Errorf("%s: %d Installed events, want 1", k, n)
			}
		}
		var want []string
		for _, k := range dkmsKernelOrder(ks) {
			want = append(want, fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: installed", k))
		}
		r.wantStatus(t, want...)
	})

	t.Run("signing key", func(t *testing.T) {
		key := r.path("var/lib/dkms/mok.key")
		if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("MOK key %s generated in the root: %v (err %v), want mode 0600", key, fi, err)
		}
		if !pathExists(r.path("var/lib/dkms/mok.pub")) {
			t.Errorf("MOK certificate %s not generated", r.path("var/lib/dkms/mok.pub"))
		}
	})

	t.Run("install again is a no-op", func(t *testing.T) {
		before := testkit.Snapshot(t, r.root)
		mustOK(t, "second install", lifecycle.Install(ctx, r.env, realTarget("dkmsd_hello", "1.0", ks[0])))
		sameTree(t, "root after a second install", before, testkit.Snapshot(t, r.root))
		if !strings.Contains(r.infoText(), "already installed on kernel "+ks[0]) {
			t.Errorf("no \"already installed\" message; got:\n%s", r.infoText())
		}
	})

	for _, k := range ks {
		mustOK(t, "uninstall "+k, lifecycle.Uninstall(ctx, r.env, realTarget("dkmsd_hello", "1.0", k)))
	}
	t.Run("uninstalled", func(t *testing.T) {
		var want []string
		for _, k := range ks {
			kdir := r.path("lib/modules", k)
			if p := filepath.Join(kdir, "updates/dkms/dkmsd_hello.ko"); pathExists(p) {
				t.Errorf("%s still exists after uninstall", p)
			}
			for _, d := range []string{"updates/dkms", "updates"} {
				if pathExists(filepath.Join(kdir, d)) {
					t.Errorf("empty %s/%s left behind", kdir, d)
				}
			}
			if _, ok := r.modulesDep(t, k)["updates/dkms/dkmsd_hello.ko"]; ok {
				t.Errorf("modules.dep of %s still lists dkmsd_hello after uninstall (depmod not rerun)", k)
			}
			if link := r.path("var/lib/dkms/dkmsd_hello", "kernel-"+k+"-"+realArch); pathExists(link) {
				t.Errorf("kernel link %s left after uninstall", link)
			}
			if !pathExists(r.path("var/lib/dkms/dkmsd_hello/1.0", k, realArch, "module/dkmsd_hello.ko")) {
				t.Errorf("uninstall of %s deleted the build", k)
			}
			if n := len(r.events(lifecycle.Uninstalled, "dkmsd_hello", k)); n != 1 {
				t.Errorf("%s: %d Uninstalled events, want 1", k, n)
			}
		}
		for _, k := range dkmsKernelOrder(ks) {
			want = append(want, fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: built", k))
		}
		r.wantStatus(t, want...)
	})

	all := lifecycle.BuiltTargets(r.env, "dkmsd_hello", "1.0")
	if len(all) != len(ks) {
		t.Errorf("BuiltTargets = %v, want one per kernel %v", all, ks)
	}
	mustOK(t, "remove", lifecycle.Remove(ctx, r.env, "dkmsd_hello", "1.0", all))
	t.Run("removed", func(t *testing.T) {
		if p := r.path("var/lib/dkms/dkmsd_hello"); pathExists(p) {
			t.Errorf("%s still exists after removing the only version: %q", p, testkit.Tree(t, p))
		}
		r.wantStatus(t)
		if n := len(r.events(lifecycle.Removed, "dkmsd_hello", "")); n != 1 {
			t.Errorf("%d Removed events, want 1", n)
		}
		sameTree(t, "usr/src (the module source)", srcBefore, testkit.Snapshot(t, r.path("usr/src")))
		for _, k := range ks {
			if got := moduleFiles(t, r.path("lib/modules", k)); len(got) != 0 {
				t.Errorf("module files left in lib/modules/%s: %q", k, got)
			}
		}
	})
}

// TestInstallRealHeadersTwoModules installs a package of two modules, one
// renamed by DEST_MODULE_NAME and depending on the other.
func TestInstallRealHeadersTwoModules(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	r := newRealRoot(t, ks, "dkmsd_twomods-2.1")
	ctx := t.Context()
	for _, k := range ks {
		mustOK(t, "install "+k, lifecycle.Install(ctx, r.env, realTarget("dkmsd_twomods", "2.1", k)))
	}
	var want []string
	for _, k := range ks {
		r.checkInstalledModule(t, "dkmsd_twomods", "2.1", k, "dkmsd_alpha")
		beta := r.checkInstalledModule(t, "dkmsd_twomods", "2.1", k, "dkmsd_beta_renamed")
		if d := beta.Get("depends"); d != "dkmsd_alpha" {
			t.Errorf("%s: dkmsd_beta_renamed.ko modinfo depends %q, want dkmsd_alpha", k, d)
		}
		wantFiles := []string{"updates/dkms/dkmsd_alpha.ko", "updates/dkms/dkmsd_beta_renamed.ko"}
		if got := moduleFiles(t, r.path("lib/modules", k)); !slices.Equal(got, wantFiles) {
			t.Errorf("module files in lib/modules/%s: %q, want %q", k, got, wantFiles)
		}
		wantBuilt := []string{"dkmsd_alpha.ko", "dkmsd_beta_renamed.ko"}
		if got := moduleFiles(t, r.path("var/lib/dkms/dkmsd_twomods/2.1", k, realArch, "module")); !slices.Equal(got, wantBuilt) {
			t.Errorf("built modules for %s: %q, want %q", k, got, wantBuilt)
		}
		deps := r.modulesDep(t, k)
		if d, ok := deps["updates/dkms/dkmsd_beta_renamed.ko"]; !ok || d != "updates/dkms/dkmsd_alpha.ko" {
			t.Errorf("modules.dep of %s: dkmsd_beta_renamed.ko depends on %q (present %v), want updates/dkms/dkmsd_alpha.ko", k, d, ok)
		}
		if d, ok := deps["updates/dkms/dkmsd_alpha.ko"]; !ok || d != "" {
			t.Errorf("modules.dep of %s: dkmsd_alpha.ko entry %q (present %v), want no dependencies", k, d, ok)
		}
	}
	for _, k := range dkmsKernelOrder(ks) {
		want = append(want, fmt.Sprintf("dkmsd_twomods/2.1, %s, x86_64: installed", k))
	}
	r.wantStatus(t, want...)
}

// TestInstallRealHeadersPatched applies PATCH[0] (without which the source
// does not compile) and not PATCH[1], whose PATCH_MATCH never matches.
func TestInstallRealHeadersPatched(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	r := newRealRoot(t, ks, "dkmsd_patched-1.0")
	ctx := t.Context()
	srcBefore := testkit.Snapshot(t, r.path("usr/src"))
	for _, k := range ks {
		mustOK(t, "install "+k, lifecycle.Install(ctx, r.env, realTarget("dkmsd_patched", "1.0", k)))
	}
	for _, k := range ks {
		mi := r.checkInstalledModule(t, "dkmsd_patched", "1.0", k, "dkmsd_patched")
		if p := mi.Get("dkmsd_patch"); p != "fix" {
			t.Errorf("%s: modinfo dkmsd_patch %q, want \"fix\" (fix.patch applied)", k, p)
		}
		log := string(mustRead(t, r.path("var/lib/dkms/dkmsd_patched/1.0", k, realArch, "log/make.log")))
		if !strings.Contains(log, "fix.patch") {
			t.Errorf("%s: make.log does not record fix.patch:\n%s", k, log)
		}
		if strings.Contains(log, "never.patch") {
			t.Errorf("%s: make.log mentions never.patch (PATCH_MATCH[1]=^0\\.0\\. must rule it out):\n%s", k, log)
		}
	}
	if text := r.infoText(); strings.Contains(text, "never.patch") {
		t.Errorf("events mention never.patch:\n%s", text)
	}
	sameTree(t, "usr/src (patches apply to the build copy only)", srcBefore, testkit.Snapshot(t, r.path("usr/src")))
}

// TestInstallRealHeadersScripted checks the PRE_/POST_ scripts run in
// dkms's order and that MAKE[0] saw $kernelver.
func TestInstallRealHeadersScripted(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	r := newRealRoot(t, ks, "dkmsd_scripted-1.0")
	ctx := t.Context()
	marker := r.path("var/lib/dkms/dkmsd_scripted.marker")
	wantMarker := func(want string) {
		t.Helper()
		got, err := os.ReadFile(marker)
		if err != nil || string(got) != want {
			t.Errorf("marker file %s = %q (err %v), want %q", marker, got, err, want)
		}
	}

	mustOK(t, "add", lifecycle.Add(ctx, r.env, "dkmsd_scripted", "1.0", ks[0], realArch))
	wantMarker("post_add\n")
	if text := r.infoText(); !strings.Contains(text, "dkmsd_scripted post_add: appended to "+marker) {
		t.Errorf("post_add's output is not in the events:\n%s", text)
	}

	for _, k := range ks {
		mustOK(t, "install "+k, lifecycle.Install(ctx, r.env, realTarget("dkmsd_scripted", "1.0", k)))
	}
	wantMarker("post_add\npre_install\npost_install\npre_install\npost_install\n")
	for _, k := range ks {
		mi := r.checkInstalledModule(t, "dkmsd_scripted", "1.0", k, "dkmsd_scripted")
		if b := mi.Get("built_for"); b != k {
			t.Errorf("%s: modinfo built_for %q, want %q (MAKE[0] passes SCRIPTED_KVER=${kernelver})", k, b, k)
		}
		if g := mi.Get("dkmsd_generated"); g != "generated by pre_build.sh" {
			t.Errorf("%s: modinfo dkmsd_generated %q, want the header PRE_BUILD wrote", k, g)
		}
		log := string(mustRead(t, r.path("var/lib/dkms/dkmsd_scripted/1.0", k, realArch, "log/make.log")))
		for _, s := range []string{"SCRIPTED_KVER=" + k, "dkmsd_scripted pre_build: wrote dkmsd_scripted_gen.h", "dkmsd_scripted post_build: dkmsd_scripted.ko present"} {
			if !strings.Contains(log, s) {
				t.Errorf("%s: make.log lacks %q:\n%s", k, s, log)
			}
		}
	}

	for _, k := range ks {
		mustOK(t, "uninstall "+k, lifecycle.Uninstall(ctx, r.env, realTarget("dkmsd_scripted", "1.0", k)))
	}
	wantMarker("post_add\npre_install\npost_install\npre_install\npost_install\npost_remove\npost_remove\n")
	var want []string
	for _, k := range dkmsKernelOrder(ks) {
		want = append(want, fmt.Sprintf("dkmsd_scripted/1.0, %s, x86_64: built", k))
	}
	r.wantStatus(t, want...)

	// Removing what is merely built runs no POST_REMOVE (dkms 3.0.10).
	mustOK(t, "remove", lifecycle.Remove(ctx, r.env, "dkmsd_scripted", "1.0", lifecycle.BuiltTargets(r.env, "dkmsd_scripted", "1.0")))
	wantMarker("post_add\npre_install\npost_install\npre_install\npost_install\npost_remove\npost_remove\n")
	r.wantStatus(t)
}

// TestBuildRealHeadersFailbuild checks a failing make: the error kind, the
// make.log kept for the user, the event naming it, and that nothing else
// in the root moved.
func TestBuildRealHeadersFailbuild(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	k := ks[0]
	r := newRealRoot(t, ks, "dkmsd_hello-1.0", "dkmsd_failbuild-1.0")
	ctx := t.Context()
	mustOK(t, "install hello", lifecycle.Install(ctx, r.env, realTarget("dkmsd_hello", "1.0", k)))
	r.checkInstalledModule(t, "dkmsd_hello", "1.0", k, "dkmsd_hello")

	watched := []string{"lib/modules", "var/lib/dkms/dkmsd_hello", "var/lib/dkms/mok.key", "var/lib/dkms/mok.pub"}
	take := func() map[string][]string {
		m := map[string][]string{}
		for _, w := range watched {
			p := r.path(w)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				m[w] = []string{fmt.Sprintf("sha256:%x", sha256.Sum256(mustRead(t, p)))}
				continue
			}
			m[w] = testkit.Snapshot(t, p)
		}
		return m
	}
	before := take()

	err := lifecycle.Build(ctx, r.env, realTarget("dkmsd_failbuild", "1.0", k))
	mustKind(t, "build failbuild", err, lifecycle.KindBuildFailed)

	logPath := r.path("var/lib/dkms/dkmsd_failbuild/1.0/build/make.log")
	log, lerr := os.ReadFile(logPath)
	if lerr != nil {
		t.Errorf("make.log kept for the user: %v", lerr)
	} else if !strings.Contains(string(log), `#error "dkmsd_failbuild: deliberate build failure"`) {
		t.Errorf("%s lacks the compiler's #error line:\n%s", logPath, log)
	}
	if !strings.Contains(err.Error(), logPath) {
		t.Errorf("error %q does not point at %s", err, logPath)
	}
	failed := r.events(lifecycle.BuildFailed, "dkmsd_failbuild", k)
	if len(failed) != 1 {
		t.Errorf("%d BuildFailed events, want 1: %+v", len(failed), failed)
	} else if failed[0].Version != "1.0" || failed[0].Arch != realArch {
		t.Errorf("BuildFailed event %+v, want version 1.0, arch %s", failed[0], realArch)
	} else {
		// The event's log is a per-kernel copy that the next kernel's
		// build cannot overwrite; it holds the same text.
		kept := r.path("var/lib/dkms/.dkmsd/failed/dkmsd_failbuild-1.0-" + k + "-" + realArch + ".log")
		if failed[0].Log != kept {
			t.Errorf("BuildFailed log %s, want %s", failed[0].Log, kept)
		}
		if b, err := os.ReadFile(kept); err != nil || string(b) != string(log) {
			t.Errorf("kept log %s differs from %s: %v", kept, logPath, err)
		}
	}
	if n := len(r.events(lifecycle.BuildFinished, "dkmsd_failbuild", "")); n != 0 {
		t.Errorf("%d BuildFinished events for a failed build", n)
	}

	after := take()
	for _, w := range watched {
		sameTree(t, w, before[w], after[w])
	}
	vdir := r.path("var/lib/dkms/dkmsd_failbuild/1.0")
	for _, p := range []string{filepath.Join(vdir, k), filepath.Join(vdir, k, realArch)} {
		if pathExists(p) {
			t.Errorf("half-built %s exists after a failed build: %q", p, testkit.Tree(t, p))
		}
	}
	if stale, _ := filepath.Glob(filepath.Join(vdir, "*", ".tmp_*")); len(stale) > 0 {
		t.Errorf("staging dirs left behind: %q", stale)
	}
	r.wantStatus(t, "dkmsd_failbuild/1.0: added", fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: installed", k))

	// remove cleans up what the failed build left (dkms's remove --all).
	mustOK(t, "remove failbuild", lifecycle.Remove(ctx, r.env, "dkmsd_failbuild", "1.0", lifecycle.BuiltTargets(r.env, "dkmsd_failbuild", "1.0")))
	if p := r.path("var/lib/dkms/dkmsd_failbuild"); pathExists(p) {
		t.Errorf("%s left after remove: %q", p, testkit.Tree(t, p))
	}
	sameTree(t, "lib/modules after removing failbuild", before["lib/modules"], testkit.Snapshot(t, r.path("lib/modules")))
	r.wantStatus(t, fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: installed", k))
}

// TestBuildRealHeadersExclusive checks BUILD_EXCLUSIVE_ARCH=aarch64 on
// x86_64: refused, nothing compiled or installed.
func TestBuildRealHeadersExclusive(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	r := newRealRoot(t, ks, "dkmsd_exclusive-1.0")
	ctx := t.Context()
	for _, k := range ks {
		le := mustKind(t, "build "+k, lifecycle.Build(ctx, r.env, realTarget("dkmsd_exclusive", "1.0", k)), lifecycle.KindExcluded)
		if !strings.Contains(strings.Join(le.Lines, "\n"), "BUILD_EXCLUSIVE") {
			t.Errorf("%s: error lines %q do not name the BUILD_EXCLUSIVE directive", k, le.Lines)
		}
		mustKind(t, "install "+k, lifecycle.Install(ctx, r.env, realTarget("dkmsd_exclusive", "1.0", k)), lifecycle.KindExcluded)
		if n := len(r.events(lifecycle.BuildSkipped, "dkmsd_exclusive", k)); n != 2 {
			t.Errorf("%s: %d BuildSkipped events, want 2 (build, install)", k, n)
		}
		if p := r.path("var/lib/dkms/dkmsd_exclusive/1.0", k); pathExists(p) {
			t.Errorf("%s exists: %q", p, testkit.Tree(t, p))
		}
	}
	r.wantNothingBuilt(t, "dkmsd_exclusive", "for an excluded module")
	if got := testkit.Tree(t, r.path("var/lib/dkms/dkmsd_exclusive/1.0/build")); len(got) != 0 {
		t.Errorf("build dir not empty: %q", got)
	}
	r.wantStatus(t, "dkmsd_exclusive/1.0: added")
}

// TestBuildRealHeadersMissingHeaders uses a root whose kernel dir has no
// build link, for a kernel whose headers the machine does have: the
// relocated root must not fall back to the machine's /lib/modules.
func TestBuildRealHeadersMissingHeaders(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	k := ks[0]
	r := newRealRoot(t, nil, "dkmsd_hello-1.0")
	if err := os.MkdirAll(r.path("lib/modules", k), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for name, op := range map[string]func() error{
		"build":   func() error { return lifecycle.Build(ctx, r.env, realTarget("dkmsd_hello", "1.0", k)) },
		"install": func() error { return lifecycle.Install(ctx, r.env, realTarget("dkmsd_hello", "1.0", k)) },
	} {
		le := mustKind(t, name, op(), lifecycle.KindNoHeaders)
		if text := strings.Join(le.Lines, "\n"); !strings.Contains(text, "linux-headers-"+k) {
			t.Errorf("%s: error lines %q do not name linux-headers-%s", name, le.Lines, k)
		}
	}
	if p := r.path("var/lib/dkms/dkmsd_hello/1.0", k); pathExists(p) {
		t.Errorf("%s exists: %q", p, testkit.Tree(t, p))
	}
	r.wantNothingBuilt(t, "dkmsd_hello", "without headers")
	if got := testkit.Tree(t, r.path("lib/modules", k)); len(got) != 0 {
		t.Errorf("lib/modules/%s changed: %q", k, got)
	}
	r.wantStatus(t, "dkmsd_hello/1.0: added")
}

// TestAddRealHeadersHostileConf feeds add, build and install dkms.conf
// files that try to leave their trees, or do not parse: each is refused
// with KindBadConf before anything is written, even though real headers
// would let the module build.
func TestAddRealHeadersHostileConf(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	const head = "PACKAGE_NAME=\"dkmsd_hostile\"\nPACKAGE_VERSION=\"1.0\"\n"
	cases := []struct {
		name, conf string
		// want is text the error must contain.
		want []string
	}{
		{"dest location escapes", head +
			"BUILT_MODULE_NAME[0]=\"dkmsd_hello\"\nDEST_MODULE_LOCATION[0]=\"/kernel/../../../etc\"\n",
			[]string{"DEST_MODULE_LOCATION", "line 4"}},
		{"built module name with slash", head +
			"BUILT_MODULE_NAME[0]=\"../../../../etc/dkmsd_hello\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n",
			[]string{"BUILT_MODULE_NAME", "line 3"}},
		{"dest module name with slash", head +
			"BUILT_MODULE_NAME[0]=\"dkmsd_hello\"\nDEST_MODULE_NAME[0]=\"../../../../etc/evil\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\n",
			[]string{"DEST_MODULE_NAME", "line 4"}},
		{"patch escapes", head +
			"BUILT_MODULE_NAME[0]=\"dkmsd_hello\"\nDEST_MODULE_LOCATION[0]=\"/extra\"\nPATCH[0]=\"../../x.patch\"\n",
			[]string{"PATCH[0]", "line 5"}},
		{"syntax error", head +
			"BUILT_MODULE_NAME[0]=\"dkmsd_hello\"\nif [ -n \"$kernelver\" ]; then\nDEST_MODULE_LOCATION[0]=\"/extra\" )\nfi\n",
			[]string{"line 5", "syntax error"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRealRoot(t, ks)
			// hello's source, which would build, under the hostile dkms.conf.
			files := testkit.HelloFiles(t, "dkmsd_hello", "1.0")
			files["dkms.conf"] = c.conf
			testkit.WriteModule(t, r.path("usr/src/dkmsd_hostile-1.0"), files)
			ctx := t.Context()
			tg := realTarget("dkmsd_hostile", "1.0", ks[0])
			for _, op := range []struct {
				name string
				run  func() error
			}{
				{"add", func() error { return lifecycle.Add(ctx, r.env, "dkmsd_hostile", "1.0", ks[0], realArch) }},
				{"build", func() error { return lifecycle.Build(ctx, r.env, tg) }},
				{"install", func() error { return lifecycle.Install(ctx, r.env, tg) }},
			} {
				before := testkit.Snapshot(t, r.root)
				err := op.run()
				le := mustKind(t, op.name, err, lifecycle.KindBadConf)
				text := strings.Join(le.Lines, "\n")
				if op.name == "add" {
					t.Logf("add refused: %s", text)
				}
				for _, w := range c.want {
					if !strings.Contains(text, w) {
						t.Errorf("%s: error lines do not contain %q:\n%s", op.name, w, text)
					}
				}
				sameTree(t, "root after a refused "+op.name, before, testkit.Snapshot(t, r.root))
			}
			r.wantStatus(t)
		})
	}
}

// TestInstallRealHeadersOriginalModule installs over a module of the same
// name (an older version) that the kernel already has: it is archived,
// reported by status, and put back byte for byte by uninstall.
func TestInstallRealHeadersOriginalModule(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	k, other := ks[0], ks[1]
	r := newRealRoot(t, ks, "dkmsd_hello-1.0")
	ctx := t.Context()

	// The original: a real dkmsd_hello.ko (built for the other kernel)
	// relabelled as version 0.9, so the version check lets 1.0 replace it.
	mustOK(t, "install "+other, lifecycle.Install(ctx, r.env, realTarget("dkmsd_hello", "1.0", other)))
	donor := mustRead(t, r.path("lib/modules", other, "updates/dkms/dkmsd_hello.ko"))
	if n := bytes.Count(donor, []byte("version=1.0\x00")); n != 1 {
		t.Fatalf("built module has %d \"version=1.0\" entries, want 1", n)
	}
	origBytes := bytes.Replace(donor, []byte("version=1.0\x00"), []byte("version=0.9\x00"), 1)
	orig := r.path("lib/modules", k, "updates/dkmsd_hello.ko")
	if err := os.MkdirAll(filepath.Dir(orig), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orig, origBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	if v := mustModInfo(t, orig).Get("version"); v != "0.9" {
		t.Fatalf("fake original has version %q, want 0.9", v)
	}

	mustOK(t, "install "+k, lifecycle.Install(ctx, r.env, realTarget("dkmsd_hello", "1.0", k)))
	r.checkInstalledModule(t, "dkmsd_hello", "1.0", k, "dkmsd_hello")
	if pathExists(orig) {
		t.Errorf("original %s still in place after install", orig)
	}
	saved := r.path("var/lib/dkms/dkmsd_hello/original_module", k, realArch, "dkmsd_hello.ko")
	if got, err := os.ReadFile(saved); err != nil || !bytes.Equal(got, origBytes) {
		t.Errorf("archived original %s: err %v, identical %v", saved, err, bytes.Equal(got, origBytes))
	}
	if got, err := os.ReadFile(saved + ".origin"); err != nil || !strings.Contains(string(got), orig) {
		t.Errorf("%s.origin = %q (err %v), want it to record %s", saved, got, err, orig)
	}
	deps := r.modulesDep(t, k)
	if _, ok := deps["updates/dkms/dkmsd_hello.ko"]; !ok {
		t.Errorf("modules.dep of %s lacks updates/dkms/dkmsd_hello.ko: %v", k, deps)
	}
	if _, ok := deps["updates/dkmsd_hello.ko"]; ok {
		t.Errorf("modules.dep of %s still lists the archived original updates/dkmsd_hello.ko", k)
	}
	r.wantStatus(t, dkmsLineOrder(fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: installed (original_module exists)", k),
		fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: installed", other))...)

	mustOK(t, "uninstall "+k, lifecycle.Uninstall(ctx, r.env, realTarget("dkmsd_hello", "1.0", k)))
	if got, err := os.ReadFile(orig); err != nil || !bytes.Equal(got, origBytes) {
		t.Errorf("original %s after uninstall: err %v, identical %v", orig, err, bytes.Equal(got, origBytes))
	}
	if p := r.path("lib/modules", k, "updates/dkms"); pathExists(p) {
		t.Errorf("%s left after uninstall", p)
	}
	if p := r.path("var/lib/dkms/dkmsd_hello/original_module"); pathExists(p) {
		t.Errorf("%s left after the original was restored: %q", p, testkit.Tree(t, p))
	}
	deps = r.modulesDep(t, k)
	if _, ok := deps["updates/dkmsd_hello.ko"]; !ok {
		t.Errorf("modules.dep of %s does not list the restored original updates/dkmsd_hello.ko: %v", k, deps)
	}
	if _, ok := deps["updates/dkms/dkmsd_hello.ko"]; ok {
		t.Errorf("modules.dep of %s still lists the uninstalled updates/dkms/dkmsd_hello.ko", k)
	}
	r.wantStatus(t, dkmsLineOrder(fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: built", k),
		fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: installed", other))...)
	// The other kernel is untouched.
	r.checkInstalledModule(t, "dkmsd_hello", "1.0", other, "dkmsd_hello")
}

// TestAddRealHeadersWaitsForLock holds the tree lock while the real dkms
// binary runs `dkms --root R add`: it must wait, say so on stderr, and
// finish once the lock is released.
func TestAddRealHeadersWaitsForLock(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	testkit.RequireTool(t, "go", "golang-go")
	r := newRealRoot(t, ks, "dkmsd_hello-1.0")
	bin := testkit.Binary(t, "dkms")

	unlock, err := lifecycle.LockTree(t.Context(), r.env)
	if err != nil {
		t.Fatalf("LockTree: %v", err)
	}
	unlocked := false
	defer func() {
		if !unlocked {
			unlock()
		}
	}()

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var stdout, stderr testkit.Buffer
	cmd := exec.CommandContext(ctx, bin, "--root", r.root, "add", "dkmsd_hello/1.0")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()

	lockPath := r.path("var/lib/dkms", lifecycle.LockFile)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(stderr.String(), "Waiting for") {
		select {
		case err := <-done:
			t.Fatalf("dkms add finished (%v) while the lock was held\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no \"Waiting for\" message on stderr after 20s\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	}
	msg := stderr.String()
	if !strings.Contains(msg, "Waiting for "+lockPath) {
		t.Errorf("waiting message %q does not name the lock %s", msg, lockPath)
	}
	if !strings.Contains(msg, ": process "+strconv.Itoa(os.Getpid())+" (") {
		t.Errorf("waiting message %q does not name the holder, process %d", msg, os.Getpid())
	}
	// Still waiting, and nothing added meanwhile.
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("dkms add finished (%v) while the lock was held", err)
	default:
	}
	if pathExists(r.path("var/lib/dkms/dkmsd_hello")) {
		t.Errorf("dkms add changed the tree while the lock was held: %q", testkit.Tree(t, r.path("var/lib/dkms")))
	}

	unlock()
	unlocked = true
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("dkms add after the lock was released: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("dkms add still running 30s after the lock was released\nstderr:\n%s", stderr.String())
	}
	if out := stdout.String(); !strings.Contains(out, "Creating symlink "+r.path("var/lib/dkms/dkmsd_hello/1.0/source")) {
		t.Errorf("dkms add stdout lacks the Creating symlink line:\n%s", out)
	}
	r.wantStatus(t, "dkmsd_hello/1.0: added")
}
