package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// debianDKMS is the dkms that dkmsd is measured and checked against.
const debianDKMS = "/usr/sbin/dkms"

// BenchmarkStatus40Modules2Kernels times `dkms status` run as a process on
// a tree of 40 modules × 2 kernels, half of them installed, for dkmsd and
// for Debian's dkms 3.0.10, after checking that both print the same bytes.
// The ratio sub-benchmark reports how many times faster dkmsd was; nothing
// is asserted on time. dkms 3.0.10 takes seconds per status, so run it with
// a count: go test -run '^$' -bench Status -benchtime 3x ./cmd/dkms
func BenchmarkStatus40Modules2Kernels(b *testing.B) {
	testkit.RequireRoot(b)
	requireDebianDKMS(b)
	kernels := testkit.Kernels(b, 2)
	bin := testkit.Binary(b, "dkms")
	root, want := statusBenchTree(b, bin, kernels)

	cmds := []statusCommand{
		{name: "dkmsd", argv: []string{bin, "--root", root, "status"}},
		{name: "dkms-3.0.10", argv: []string{debianDKMS, "status",
			"--dkmstree", filepath.Join(root, "var/lib/dkms"),
			"--sourcetree", filepath.Join(root, "usr/src"),
			"--installtree", filepath.Join(root, "lib/modules")}},
	}
	checkSameStatus(b, cmds, want)

	perOp := map[string]time.Duration{}
	for _, c := range cmds {
		b.Run(c.name, func(b *testing.B) {
			var stdout, stderr bytes.Buffer
			for b.Loop() {
				stdout.Reset()
				stderr.Reset()
				if err := c.run(&stdout, &stderr); err != nil {
					b.Fatalf("%s: %v\n%s", c, err, stderr.Bytes())
				}
			}
			perOp[c.name] = b.Elapsed() / time.Duration(b.N)
		})
	}

	logged := false
	b.Run("ratio", func(b *testing.B) {
		ours, theirs := perOp["dkmsd"], perOp["dkms-3.0.10"]
		if ours == 0 || theirs == 0 {
			b.Skip("the ratio needs both the dkmsd and the dkms-3.0.10 sub-benchmarks")
		}
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		ratio := float64(theirs) / float64(ours)
		b.ReportMetric(0, "ns/op") // no loop here: only the figures below mean something
		b.ReportMetric(ratio, "x-faster")
		b.ReportMetric(ms(ours), "dkmsd-ms/op")
		b.ReportMetric(ms(theirs), "dkms-ms/op")
		if !logged {
			logged = true
			b.Logf("status 40x2: dkmsd %.1f ms, dkms 3.0.10 %.0f ms, ratio %.0fx", ms(ours), ms(theirs), ratio)
		}
	})
}

// statusCommand is one implementation's `dkms status` on the benchmark tree.
type statusCommand struct {
	name string
	argv []string
}

func (c statusCommand) String() string { return c.name + ": " + strings.Join(c.argv, " ") }

// run runs the command in the C locale, so that dkms's globs list names in
// byte order.
func (c statusCommand) run(stdout, stderr *bytes.Buffer) error {
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd.Run()
}

// requireDebianDKMS checks that the dkms to compare with is 3.0.10.
func requireDebianDKMS(b *testing.B) {
	b.Helper()
	const install = "Debian's dkms 3.0.10 at " + debianDKMS + " (apt-get install -y dkms)"
	out, err := exec.Command(debianDKMS, "--version").Output()
	if err != nil {
		testkit.Missing(b, install)
	}
	if v := strings.TrimSpace(string(out)); v != "dkms-3.0.10" {
		testkit.Missing(b, install+"; found "+v)
	}
}

// statusBenchTree prepares a relocated root holding 40 modules × the given
// kernels: dkmsd_hello, built and installed by dkmsd, and bench_mod1…39,
// cloned from its build, the even ones installed. It returns the root and
// the status lines expected of it, in dkms's (byte) order.
func statusBenchTree(b *testing.B, bin string, kernels []string) (string, []byte) {
	b.Helper()
	root, err := filepath.EvalSymlinks(testkit.NewRoot(b, kernels...))
	if err != nil {
		b.Fatal(err)
	}
	testkit.CopyModule(b, root, "dkmsd_hello-1.0")
	for _, k := range kernels {
		out, err := exec.Command(bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", k).CombinedOutput()
		if err != nil {
			b.Fatalf("dkms install dkmsd_hello/1.0 -k %s: %v\n%s", k, err, out)
		}
	}
	hello := filepath.Join(root, "var/lib/dkms/dkmsd_hello/1.0")
	arches, err := os.ReadDir(filepath.Join(hello, kernels[0]))
	if err != nil || len(arches) != 1 {
		b.Fatalf("dkmsd_hello/1.0 for %s: want one arch directory, got %v (%v)", kernels[0], arches, err)
	}
	arch := arches[0].Name()
	// The built module may be compressed: keep its suffix (.ko, .ko.xz…).
	kos, _ := filepath.Glob(filepath.Join(hello, kernels[0], arch, "module", "dkmsd_hello.ko*"))
	if len(kos) != 1 {
		b.Fatalf("dkmsd_hello/1.0 for %s/%s: want one built module, got %v", kernels[0], arch, kos)
	}
	suffix := strings.TrimPrefix(filepath.Base(kos[0]), "dkmsd_hello")

	installed := map[string]bool{"dkmsd_hello": true}
	for i := 1; i <= 39; i++ {
		name := fmt.Sprintf("bench_mod%d", i)
		installed[name] = i%2 == 0
		src := filepath.Join(root, "usr/src", name+"-1.0")
		conf := fmt.Sprintf("PACKAGE_NAME=%q\nPACKAGE_VERSION=\"1.0\"\nBUILT_MODULE_NAME[0]=%q\nDEST_MODULE_LOCATION[0]=\"/updates\"\n", name, name)
		tbMkdirAll(b, src)
		tbWriteFile(b, filepath.Join(src, "dkms.conf"), []byte(conf))
		mv := filepath.Join(root, "var/lib/dkms", name, "1.0")
		tbMkdirAll(b, mv)
		tbSymlink(b, src, filepath.Join(mv, "source"))
		for _, k := range kernels {
			from := filepath.Join(hello, k, arch)
			to := filepath.Join(mv, k, arch)
			tbMkdirAll(b, filepath.Join(to, "module"))
			tbMkdirAll(b, filepath.Join(to, "log"))
			ko := mustReadFile(b, filepath.Join(from, "module", "dkmsd_hello"+suffix))
			tbWriteFile(b, filepath.Join(to, "module", name+suffix), ko)
			tbWriteFile(b, filepath.Join(to, "log", "make.log"), mustReadFile(b, filepath.Join(from, "log", "make.log")))
			if !installed[name] {
				continue
			}
			dest := filepath.Join(root, "lib/modules", k, "updates/dkms")
			tbMkdirAll(b, dest)
			tbWriteFile(b, filepath.Join(dest, name+suffix), ko)
			tbSymlink(b, filepath.Join("1.0", k, arch), filepath.Join(root, "var/lib/dkms", name, "kernel-"+k+"-"+arch))
		}
	}

	names := make([]string, 0, len(installed))
	for name := range installed {
		names = append(names, name)
	}
	sort.Strings(names)
	ks := append([]string(nil), kernels...)
	sort.Strings(ks)
	var want bytes.Buffer
	for _, name := range names {
		state := "built"
		if installed[name] {
			state = "installed"
		}
		for _, k := range ks {
			fmt.Fprintf(&want, "%s/1.0, %s, %s: %s\n", name, k, arch, state)
		}
	}
	return root, want.Bytes()
}

// checkSameStatus runs each command once and fails unless all print the
// same status, byte for byte, and that status is want (else the tree, not
// an implementation, is wrong).
func checkSameStatus(b *testing.B, cmds []statusCommand, want []byte) {
	b.Helper()
	outs := make([][]byte, len(cmds))
	for i, c := range cmds {
		var stdout, stderr bytes.Buffer
		if err := c.run(&stdout, &stderr); err != nil {
			b.Fatalf("%s: %v\n%s", c, err, stderr.Bytes())
		}
		if stderr.Len() > 0 {
			b.Logf("%s wrote to stderr:\n%s", c.name, stderr.Bytes())
		}
		outs[i] = stdout.Bytes()
	}
	for i := 1; i < len(cmds); i++ {
		if !bytes.Equal(outs[0], outs[i]) {
			b.Fatalf("dkms status differs between %s and %s:\n%s",
				cmds[0].name, cmds[i].name, unifiedDiff(b, cmds[0].name, outs[0], cmds[i].name, outs[i]))
		}
	}
	if !bytes.Equal(outs[0], want) {
		b.Fatalf("dkms status of the benchmark tree is not what it was built to show:\n%s",
			unifiedDiff(b, "want", want, "got", outs[0]))
	}
}

// unifiedDiff is diff -u of two outputs, labelled with their names.
func unifiedDiff(b *testing.B, xName string, x []byte, yName string, y []byte) string {
	b.Helper()
	dir := b.TempDir()
	fx, fy := filepath.Join(dir, "x"), filepath.Join(dir, "y")
	tbWriteFile(b, fx, x)
	tbWriteFile(b, fy, y)
	out, _ := exec.Command("diff", "-u", "--label", xName, "--label", yName, fx, fy).CombinedOutput()
	if len(out) == 0 {
		return fmt.Sprintf("--- %s\n%s\n+++ %s\n%s", xName, x, yName, y)
	}
	return string(out)
}

// reportRatio reports how many times faster dkmsd (ours per op) is than
// the implementation called name (theirs per op), and both times per op,
// theirs as the metric "<metric>-s/op"; it skips the benchmark when
// either sub-benchmark did not run.
func reportRatio(b *testing.B, ours, theirs time.Duration, name, metric string) float64 {
	b.Helper()
	if ours == 0 || theirs == 0 {
		b.Skip("the ratio needs both the dkmsd and the " + name + " sub-benchmarks")
	}
	ratio := float64(theirs) / float64(ours)
	b.ReportMetric(0, "ns/op") // no loop here: only the figures below mean something
	b.ReportMetric(ratio, "x-faster")
	b.ReportMetric(ours.Seconds(), "dkmsd-s/op")
	b.ReportMetric(theirs.Seconds(), metric+"-s/op")
	return ratio
}

func tbMkdirAll(tb testing.TB, dir string) {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
}

func tbWriteFile(tb testing.TB, name string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(name, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

func tbSymlink(tb testing.TB, target, link string) {
	tb.Helper()
	if err := os.Symlink(target, link); err != nil {
		tb.Fatal(err)
	}
}
