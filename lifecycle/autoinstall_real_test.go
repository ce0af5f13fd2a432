package lifecycle_test

// Integration tests of Autoinstall's scheduler (BUILD_DEPENDS ordering,
// failed dependencies, cycles) and of /etc/dkms/no-autoinstall, building
// real modules against the machine's headers for two kernels. They share
// newRealRoot and its helpers with lifecycle_real_test.go; the extra
// modules are clones of testdata's dkmsd_hello made here.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// cloneHello writes <root>/usr/src/<name>-<version>: testdata's
// dkmsd_hello-1.0 renamed to name and relabelled as version, its dkms.conf
// passed through edit (nil: unchanged). hello's dkms.conf ends with
// AUTOINSTALL="yes".
func cloneHello(t *testing.T, root, name, version string, edit func(conf string) string) {
	t.Helper()
	files := testkit.HelloFiles(t, name, version)
	if edit != nil {
		files["dkms.conf"] = edit(files["dkms.conf"])
	}
	testkit.WriteModule(t, filepath.Join(root, "usr/src", name+"-"+version), files)
}

// appendConf returns an edit adding lines to a dkms.conf.
func appendConf(lines ...string) func(string) string {
	return func(conf string) string { return conf + strings.Join(lines, "\n") + "\n" }
}

// shareMOK puts one MOK key pair, made once per test process, in the
// root's dkms tree, so that each root does not generate its own.
func shareMOK(t *testing.T, root string) {
	t.Helper()
	mokOnce.Do(func() {
		dir, err := os.MkdirTemp("", "dkmsd-mok-")
		if err != nil {
			mokErr = err
			return
		}
		mokKey, mokCert = filepath.Join(dir, "mok.key"), filepath.Join(dir, "mok.pub")
		if out, err := exec.Command("openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=dkmsd autoinstall test",
			"-newkey", "rsa:2048", "-keyout", mokKey, "-outform", "DER", "-out", mokCert).CombinedOutput(); err != nil {
			mokErr = fmt.Errorf("openssl: %v: %s", err, out)
		}
	})
	if mokErr != nil {
		t.Fatal(mokErr)
	}
	for src, dst := range map[string]string{mokKey: "var/lib/dkms/mok.key", mokCert: "var/lib/dkms/mok.pub"} {
		if err := os.WriteFile(filepath.Join(root, dst), mustRead(t, src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

var (
	mokOnce         sync.Once
	mokKey, mokCert string
	mokErr          error
)

// addAll adds every module version in the root's source tree.
func (r *realRoot) addAll(t *testing.T, kernel string, mvs ...[2]string) {
	t.Helper()
	for _, mv := range mvs {
		mustOK(t, "add "+mv[0]+"/"+mv[1], lifecycle.Add(t.Context(), r.env, mv[0], mv[1], kernel, realArch))
	}
}

// byJob indexes a summary's results by module and kernel, failing on a
// job reported twice.
func byJob(t *testing.T, sum *lifecycle.Summary) map[[2]string]lifecycle.JobResult {
	t.Helper()
	m := map[[2]string]lifecycle.JobResult{}
	for _, res := range sum.Results {
		k := [2]string{res.Module, res.Kernel}
		if _, dup := m[k]; dup {
			t.Errorf("two results for %s on %s", res.Module, res.Kernel)
		}
		m[k] = res
	}
	return m
}

// eventIndex is the position of the first recorded event of a type for a
// module on a kernel (with Text text, unless ""), or -1.
func (r *realRoot) eventIndex(typ lifecycle.EventType, module, kernel, text string) int {
	for i, e := range r.rec.Events {
		if e.Type == typ && e.Module == module && e.Kernel == kernel && (text == "" || e.Text == text) {
			return i
		}
	}
	return -1
}

// dependencyModules are the modules TestAutoinstallRealHeadersDependencies
// adds, in dkms status order.
var dependencyModules = []string{"dkmsd_cycle_x", "dkmsd_cycle_y", "dkmsd_dep_base", "dkmsd_dep_orphan", "dkmsd_dep_user", "dkmsd_failbuild", "dkmsd_hello"}

// dependencyRoot is a root for kernels with dependencyModules added:
// dkmsd_hello, dkmsd_failbuild and clones of hello whose BUILD_DEPENDS
// make a chain, a dependency on the failing build and a cycle.
func dependencyRoot(t *testing.T, ks []string) *realRoot {
	t.Helper()
	r := newRealRoot(t, ks, "dkmsd_hello-1.0", "dkmsd_failbuild-1.0")
	shareMOK(t, r.root)
	cloneHello(t, r.root, "dkmsd_dep_base", "1.0", nil)
	cloneHello(t, r.root, "dkmsd_dep_user", "1.0", appendConf(`BUILD_DEPENDS[0]="dkmsd_dep_base"`))
	cloneHello(t, r.root, "dkmsd_dep_orphan", "1.0", appendConf(`BUILD_DEPENDS[0]="dkmsd_failbuild"`))
	cloneHello(t, r.root, "dkmsd_cycle_x", "1.0", appendConf(`BUILD_DEPENDS[0]="dkmsd_cycle_y"`))
	cloneHello(t, r.root, "dkmsd_cycle_y", "1.0", appendConf(`BUILD_DEPENDS[0]="dkmsd_cycle_x"`))
	for _, m := range dependencyModules {
		r.addAll(t, ks[0], [2]string{m, "1.0"})
	}
	return r
}

// TestAutoinstallRealHeadersDependencies autoinstalls, for two kernels:
// dkmsd_dep_user, which BUILD_DEPENDS on dkmsd_dep_base; dkmsd_dep_orphan,
// which BUILD_DEPENDS on dkmsd_failbuild (whose build fails); the cycle
// dkmsd_cycle_x -> dkmsd_cycle_y -> dkmsd_cycle_x; and dkmsd_hello. base
// must install before user starts; orphan and the cycle are reported not
// built, with the reason, and nothing of them is built; the rest install.
func TestAutoinstallRealHeadersDependencies(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	r := dependencyRoot(t, ks)
	all := dependencyModules
	r.env.Jobs = 2

	sum, err := lifecycle.Autoinstall(t.Context(), r.env, ks, realArch)
	mustOK(t, "Autoinstall", err)
	if !sum.Failed() {
		t.Errorf("Summary.Failed() = false with a failed build")
	}
	t.Logf("summary:\n%s", strings.Join(sum.Lines(lifecycle.ExitCode), "\n"))
	res := byJob(t, sum)
	if len(res) != len(all)*len(ks) {
		t.Errorf("%d results, want one per module and kernel (%d): %+v", len(res), len(all)*len(ks), sum.Results)
	}
	for _, k := range ks {
		t.Run(k, func(t *testing.T) {
			r.wantDependenciesInstalled(t, res, k)
			r.wantFailbuildFailed(t, jobOutcome(t, res, "dkmsd_failbuild", k), k)
			r.wantDependentsNotBuilt(t, res, k)
			r.wantDependencyModuleFiles(t, k)
			wantDependencySummary(t, sum, k)
		})
	}
	for _, m := range []string{"dkmsd_dep_orphan", "dkmsd_cycle_x", "dkmsd_cycle_y"} {
		found := false
		for _, l := range sum.Lines(lifecycle.ExitCode) {
			found = found || strings.HasPrefix(l, m+"/1.0 autoinstall failed: ")
		}
		if !found {
			t.Errorf("summary lines lack \"%s/1.0 autoinstall failed: …\":\n%s", m, strings.Join(sum.Lines(lifecycle.ExitCode), "\n"))
		}
	}

	var want []string
	for _, m := range all {
		switch m {
		case "dkmsd_dep_base", "dkmsd_dep_user", "dkmsd_hello":
			for _, k := range dkmsKernelOrder(ks) {
				want = append(want, fmt.Sprintf("%s/1.0, %s, x86_64: installed", m, k))
			}
		default:
			want = append(want, m+"/1.0: added")
		}
	}
	r.wantStatus(t, want...)
}

// jobOutcome is the result of module m's job on kernel k (an error when
// the summary has none).
func jobOutcome(t *testing.T, res map[[2]string]lifecycle.JobResult, m, k string) lifecycle.JobResult {
	t.Helper()
	jr, ok := res[[2]string{m, k}]
	if !ok {
		t.Errorf("no result for %s", m)
	}
	return jr
}

// wantDependenciesInstalled checks that hello, base and user installed
// on kernel k, and base before user started.
func (r *realRoot) wantDependenciesInstalled(t *testing.T, res map[[2]string]lifecycle.JobResult, k string) {
	t.Helper()
	for _, m := range []string{"dkmsd_hello", "dkmsd_dep_base", "dkmsd_dep_user"} {
		if jr := jobOutcome(t, res, m, k); jr.Outcome != lifecycle.OutcomeInstalled {
			t.Errorf("%s: outcome %q (reason %q, err %v), want installed", m, jr.Outcome, jr.Reason, jr.Err)
		}
		r.checkInstalledModule(t, m, "1.0", k, m)
	}

	// base installed before user started: user's build could not
	// otherwise pass its BUILD_DEPENDS check either.
	baseDone := r.eventIndex(lifecycle.JobFinished, "dkmsd_dep_base", k, string(lifecycle.OutcomeInstalled))
	baseInstalled := r.eventIndex(lifecycle.Installed, "dkmsd_dep_base", k, "")
	userStart := r.eventIndex(lifecycle.JobStarted, "dkmsd_dep_user", k, "")
	userBuild := r.eventIndex(lifecycle.BuildStarted, "dkmsd_dep_user", k, "")
	if baseDone < 0 || baseInstalled < 0 || userStart < 0 || userBuild < 0 {
		t.Errorf("missing events: base JobFinished(installed) %d, base Installed %d, user JobStarted %d, user BuildStarted %d",
			baseDone, baseInstalled, userStart, userBuild)
	} else if baseDone > userStart || baseInstalled > userBuild {
		t.Errorf("dkmsd_dep_user started (event %d, build %d) before dkmsd_dep_base was installed (event %d, job end %d)",
			userStart, userBuild, baseInstalled, baseDone)
	}
}

// wantFailbuildFailed checks dkmsd_failbuild's result on kernel k: failed
// with KindBuildFailed, its make.log kept and named by the job's event.
func (r *realRoot) wantFailbuildFailed(t *testing.T, fb lifecycle.JobResult, k string) {
	t.Helper()
	if fb.Outcome != lifecycle.OutcomeFailed || lifecycle.KindOf(fb.Err) != lifecycle.KindBuildFailed {
		t.Errorf("dkmsd_failbuild: outcome %q, error kind %d (%v), want failed with KindBuildFailed", fb.Outcome, lifecycle.KindOf(fb.Err), fb.Err)
	}
	if fb.Log == "" {
		t.Errorf("dkmsd_failbuild: JobResult.Log is empty")
	} else if log, err := os.ReadFile(fb.Log); err != nil {
		t.Errorf("dkmsd_failbuild: JobResult.Log %s: %v", fb.Log, err)
	} else if !strings.Contains(string(log), `#error "dkmsd_failbuild: deliberate build failure"`) {
		t.Errorf("dkmsd_failbuild: %s lacks the compiler's #error line:\n%s", fb.Log, log)
	}
	if ev := r.events(lifecycle.JobFinished, "dkmsd_failbuild", k); len(ev) != 1 || ev[0].Log != fb.Log {
		t.Errorf("dkmsd_failbuild: JobFinished events %+v, want one naming the log %s", ev, fb.Log)
	}
}

// wantDependentsNotBuilt checks that on kernel k the orphan (its
// dependency failed) and the cycle are reported not built, with the
// reason, and that nothing of them, nor of the failed build, is left.
func (r *realRoot) wantDependentsNotBuilt(t *testing.T, res map[[2]string]lifecycle.JobResult, k string) {
	t.Helper()
	orphan := jobOutcome(t, res, "dkmsd_dep_orphan", k)
	if orphan.Outcome != lifecycle.OutcomeNotBuilt || !strings.Contains(orphan.Reason, "dkmsd_failbuild") {
		t.Errorf("dkmsd_dep_orphan: outcome %q, reason %q; want %q naming dkmsd_failbuild", orphan.Outcome, orphan.Reason, lifecycle.OutcomeNotBuilt)
	}
	if i, j := r.eventIndex(lifecycle.JobFinished, "dkmsd_failbuild", k, ""), r.eventIndex(lifecycle.JobFinished, "dkmsd_dep_orphan", k, string(lifecycle.OutcomeNotBuilt)); i < 0 || j < 0 || j < i {
		t.Errorf("dkmsd_dep_orphan's JobFinished(not built) at %d, dkmsd_failbuild's JobFinished at %d: want the orphan's after", j, i)
	}

	for _, pair := range [][2]string{{"dkmsd_cycle_x", "dkmsd_cycle_y"}, {"dkmsd_cycle_y", "dkmsd_cycle_x"}} {
		jr := jobOutcome(t, res, pair[0], k)
		rotations := []string{
			"BUILD_DEPENDS cycle " + pair[0] + " -> " + pair[1] + " -> " + pair[0],
			"BUILD_DEPENDS cycle " + pair[1] + " -> " + pair[0] + " -> " + pair[1],
		}
		if jr.Outcome != lifecycle.OutcomeNotBuilt || !slices.Contains(rotations, jr.Reason) {
			t.Errorf("%s: outcome %q, reason %q; want %q and one of %q", pair[0], jr.Outcome, jr.Reason, lifecycle.OutcomeNotBuilt, rotations)
		}
	}

	for _, m := range []string{"dkmsd_dep_orphan", "dkmsd_cycle_x", "dkmsd_cycle_y", "dkmsd_failbuild"} {
		if m != "dkmsd_failbuild" {
			if n := len(r.events(lifecycle.JobStarted, m, k)) + len(r.events(lifecycle.BuildStarted, m, k)); n != 0 {
				t.Errorf("%s: %d JobStarted/BuildStarted events, want none", m, n)
			}
		}
		if p := r.path("var/lib/dkms", m, "1.0", k); pathExists(p) {
			t.Errorf("%s: %s exists: %q", m, p, testkit.Tree(t, p))
		}
		if p := r.path("var/lib/dkms", m, "kernel-"+k+"-"+realArch); pathExists(p) {
			t.Errorf("%s: kernel link %s exists", m, p)
		}
	}
}

// wantDependencyModuleFiles checks that kernel k's module dir holds the
// three installed modules, each in modules.dep.
func (r *realRoot) wantDependencyModuleFiles(t *testing.T, k string) {
	t.Helper()
	wantFiles := []string{"updates/dkms/dkmsd_dep_base.ko", "updates/dkms/dkmsd_dep_user.ko", "updates/dkms/dkmsd_hello.ko"}
	if got := moduleFiles(t, r.path("lib/modules", k)); !slices.Equal(got, wantFiles) {
		t.Errorf("module files in lib/modules/%s: %q, want %q", k, got, wantFiles)
	}
	deps := r.modulesDep(t, k) // one depmod per kernel, after the jobs
	for _, f := range wantFiles {
		if _, ok := deps[f]; !ok {
			t.Errorf("modules.dep of %s lacks %s: %v", k, f, deps)
		}
	}
}

// wantDependencySummary checks kernel k's summary lines: failbuild
// failed, and the installed three, and only they, succeeded.
func wantDependencySummary(t *testing.T, sum *lifecycle.Summary, k string) {
	t.Helper()
	lines := sum.Lines(lifecycle.ExitCode)
	wantLines := []string{
		fmt.Sprintf("Autoinstall on %s failed for module(s) dkmsd_failbuild(10).", k),
	}
	for _, w := range wantLines {
		if !slices.Contains(lines, w) {
			t.Errorf("summary lines lack %q:\n%s", w, strings.Join(lines, "\n"))
		}
	}
	okLine := ""
	for _, l := range lines {
		if strings.HasPrefix(l, "Autoinstall on "+k+" succeeded for module(s) ") {
			okLine = l
		}
	}
	gotOK := strings.Fields(strings.TrimSuffix(strings.TrimPrefix(okLine, "Autoinstall on "+k+" succeeded for module(s) "), "."))
	slices.Sort(gotOK)
	if want := []string{"dkmsd_dep_base", "dkmsd_dep_user", "dkmsd_hello"}; !slices.Equal(gotOK, want) {
		t.Errorf("succeeded line %q names %q, want %q", okLine, gotOK, want)
	}
}

// TestAutoinstallRealHeadersNoAutoinstall checks <root>/etc/dkms/no-autoinstall:
// empty, it turns autoinstall off (nothing built); listing a module, it
// skips only that one. A module whose dkms.conf does not set AUTOINSTALL
// is never autoinstalled.
func TestAutoinstallRealHeadersNoAutoinstall(t *testing.T) {
	testkit.RequireRoot(t)
	ks := testkit.Kernels(t, 2)
	r := newRealRoot(t, ks, "dkmsd_hello-1.0")
	shareMOK(t, r.root)
	cloneHello(t, r.root, "dkmsd_listed", "1.0", nil)
	cloneHello(t, r.root, "dkmsd_noauto", "1.0", func(conf string) string {
		return strings.ReplaceAll(conf, "AUTOINSTALL=\"yes\"\n", "")
	})
	if conf := string(mustRead(t, r.path("usr/src/dkmsd_noauto-1.0/dkms.conf"))); strings.Contains(conf, "AUTOINSTALL") {
		t.Fatalf("dkmsd_noauto's dkms.conf still sets AUTOINSTALL:\n%s", conf)
	}
	r.addAll(t, ks[0], [2]string{"dkmsd_hello", "1.0"}, [2]string{"dkmsd_listed", "1.0"}, [2]string{"dkmsd_noauto", "1.0"})
	noAuto := r.path("etc/dkms/no-autoinstall")
	allAdded := []string{"dkmsd_hello/1.0: added", "dkmsd_listed/1.0: added", "dkmsd_noauto/1.0: added"}

	t.Run("empty file disables", func(t *testing.T) {
		if err := os.WriteFile(noAuto, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		before := testkit.Snapshot(t, r.root)
		sum, err := lifecycle.Autoinstall(t.Context(), r.env, ks, realArch)
		mustOK(t, "Autoinstall", err)
		if len(sum.Results) != 0 || sum.Failed() {
			t.Errorf("results %+v (failed %v), want none", sum.Results, sum.Failed())
		}
		if !strings.Contains(r.infoText(), "Automatic installation of modules has been disabled.") {
			t.Errorf("no \"disabled\" message; got:\n%s", r.infoText())
		}
		for _, typ := range []lifecycle.EventType{lifecycle.JobStarted, lifecycle.BuildStarted} {
			for _, m := range []string{"dkmsd_hello", "dkmsd_listed", "dkmsd_noauto"} {
				if n := len(r.events(typ, m, "")); n != 0 {
					t.Errorf("%s: %d %v events", m, n, typ)
				}
			}
		}
		sameTree(t, "root after a disabled autoinstall", before, testkit.Snapshot(t, r.root))
		r.wantStatus(t, allAdded...)
	})

	t.Run("listed module skipped", func(t *testing.T) {
		if err := os.WriteFile(noAuto, []byte("dkmsd_listed\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		sum, err := lifecycle.Autoinstall(t.Context(), r.env, ks, realArch)
		mustOK(t, "Autoinstall", err)
		if sum.Failed() {
			t.Errorf("Summary.Failed(): %+v", sum.Results)
		}
		var got []string
		for _, res := range sum.Results {
			got = append(got, fmt.Sprintf("%s %s %s", res.Module, res.Kernel, res.Outcome))
		}
		var want []string
		for _, k := range ks {
			want = append(want, fmt.Sprintf("dkmsd_hello %s installed", k))
		}
		if !slices.Equal(got, want) {
			t.Errorf("results %q, want %q (dkmsd_listed is listed in no-autoinstall, dkmsd_noauto has no AUTOINSTALL)", got, want)
		}
		for _, m := range []string{"dkmsd_listed", "dkmsd_noauto"} {
			if n := len(r.events(lifecycle.BuildStarted, m, "")); n != 0 {
				t.Errorf("%s: %d BuildStarted events", m, n)
			}
			if p := r.path("var/lib/dkms", m, "1.0"); len(testkit.Tree(t, p)) != 2 { // build/, source ->
				t.Errorf("%s: %s holds %q, want only build/ and source", m, p, testkit.Tree(t, p))
			}
		}
		for _, k := range ks {
			r.checkInstalledModule(t, "dkmsd_hello", "1.0", k, "dkmsd_hello")
			if got := moduleFiles(t, r.path("lib/modules", k)); !slices.Equal(got, []string{"updates/dkms/dkmsd_hello.ko"}) {
				t.Errorf("module files in lib/modules/%s: %q, want only dkmsd_hello", k, got)
			}
		}
		var status []string
		for _, k := range dkmsKernelOrder(ks) {
			status = append(status, fmt.Sprintf("dkmsd_hello/1.0, %s, x86_64: installed", k))
		}
		r.wantStatus(t, append(status, "dkmsd_listed/1.0: added", "dkmsd_noauto/1.0: added")...)
	})
}
