package hooks_test

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// debianDKMS is Debian 12's dkms 3.0.10.
const debianDKMS = "/usr/sbin/dkms"

// noopModules are the modules of the no-op benchmark, already installed
// for the kernel on both trees.
var noopModules = []testModule{
	{"dkmsd_hello", "1.0", []string{"dkmsd_hello"}},
	{"dkmsd_twomods", "2.1", []string{"dkmsd_alpha", "dkmsd_beta_renamed"}},
	{"dkmsd_patched", "1.0", []string{"dkmsd_patched"}},
}

// BenchmarkHookNoop times a kernel hook with nothing to do, run as a
// process: every module is already installed for the kernel. dkmsd:
// `dkmsd-apt header_postinst KVER` on a relocated root (DKMSD_ROOT), the
// hook's second run for that kernel. dkms 3.0.10: what its
// header_postinst.d hook (dkms_autoinstaller start KVER) comes down to,
// `dkms autoinstall -k KVER` with --dkmstree, --sourcetree and
// --installtree on an equivalent tree that it built itself. The ratio
// sub-benchmark reports both times and how many times faster dkmsd is;
// dkmsd's target is under 50 ms, reported, never asserted:
//
//	go test -run '^$' -bench HookNoop -benchtime 20x ./hooks
func BenchmarkHookNoop(b *testing.B) {
	testkit.RequireRoot(b)
	testkit.RequireTool(b, "make", "make")
	out, err := exec.Command(debianDKMS, "--version").Output()
	if err != nil || strings.TrimSpace(string(out)) != "dkms-3.0.10" {
		testkit.Missing(b, "Debian's dkms 3.0.10 at "+debianDKMS+" (apt-get install -y dkms)")
	}
	kernel := testkit.Kernels(b, 1)[0]
	bin := testkit.Binaries(b)
	dkmsd := filepath.Join(bin, "dkms")

	// dkmsd's tree: added, then built and installed by a first hook run.
	ours := testkit.NewRoot(b, kernel)
	for _, m := range noopModules {
		testkit.CopyModule(b, ours, m.name+"-"+m.version)
		testkit.MustRun(b, dkmsd, "--root", ours, "add", "-m", m.name, "-v", m.version)
	}
	hookEnv := []string{"DKMSD_ROOT=" + ours}
	hook := []string{filepath.Join(bin, "dkmsd-apt"), "header_postinst", kernel}
	hookRun := testkit.Cmd{Argv: hook, Env: hookEnv}
	hookRun.MustRun(b)
	if out := hookRun.MustRun(b); strings.Contains(out, "installed in") {
		b.Fatalf("the second hook run built something:\n%s", out)
	}

	// dkms 3.0.10's tree, built by dkms 3.0.10.
	theirs := testkit.NewRoot(b, kernel)
	trees := []string{"--dkmstree", filepath.Join(theirs, "var/lib/dkms"),
		"--sourcetree", filepath.Join(theirs, "usr/src"),
		"--installtree", filepath.Join(theirs, "lib/modules")}
	for _, m := range noopModules {
		testkit.CopyModule(b, theirs, m.name+"-"+m.version)
		testkit.MustRun(b, append([]string{debianDKMS, "add", "-m", m.name, "-v", m.version}, trees...)...)
	}
	autoinstall := append([]string{debianDKMS, "autoinstall", "-k", kernel}, trees...)
	testkit.MustRun(b, autoinstall...)

	// Both trees hold the same: every module installed for the kernel.
	for _, side := range []struct {
		name string
		argv []string
	}{
		{"dkmsd", []string{dkmsd, "--root", ours, "status"}},
		{"dkms-3.0.10", append([]string{debianDKMS, "status"}, trees...)},
	} {
		status := testkit.MustRun(b, side.argv...)
		for _, m := range noopModules {
			if line := fmt.Sprintf("%s/%s, %s, %s: installed", m.name, m.version, kernel, realArch); !strings.Contains(status, line) {
				b.Fatalf("%s status has no %q:\n%s", side.name, line, status)
			}
		}
	}

	perOp := map[string]time.Duration{}
	for _, side := range []struct {
		name string
		env  []string
		argv []string
	}{
		{"dkmsd", hookEnv, hook},
		{"dkms-3.0.10", nil, autoinstall},
	} {
		b.Run(side.name, func(b *testing.B) {
			for b.Loop() {
				if r := (testkit.Cmd{Argv: side.argv, Env: side.env}).Run(b); r.Code != 0 {
					b.Fatalf("%s: exit %d\n%s", strings.Join(side.argv, " "), r.Code, r.Out)
				}
			}
			perOp[side.name] = b.Elapsed() / time.Duration(b.N)
		})
	}
	logged := false
	b.Run("ratio", func(b *testing.B) {
		ours, theirs := perOp["dkmsd"], perOp["dkms-3.0.10"]
		if ours == 0 || theirs == 0 {
			b.Skip("the ratio needs both the dkmsd and the dkms-3.0.10 sub-benchmarks")
		}
		b.ReportMetric(0, "ns/op") // no loop: only the figures below mean something
		b.ReportMetric(float64(ours.Microseconds())/1000, "dkmsd-ms/op")
		b.ReportMetric(float64(theirs.Microseconds())/1000, "dkms-ms/op")
		b.ReportMetric(float64(theirs)/float64(ours), "x-faster")
		if logged {
			return
		}
		logged = true
		target := "met"
		if ours >= 50*time.Millisecond {
			target = "NOT met"
		}
		b.Logf("no-op hook, %d modules installed for %s: dkmsd %.1f ms, dkms 3.0.10 %.1f ms, %.1fx; dkmsd's 50 ms target %s",
			len(noopModules), kernel, float64(ours.Microseconds())/1000, float64(theirs.Microseconds())/1000, float64(theirs)/float64(ours), target)
	})
}
