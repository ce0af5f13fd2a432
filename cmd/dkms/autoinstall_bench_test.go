package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// BenchmarkAutoinstall times `dkms autoinstall` run as a process on a tree
// where nothing is built yet, for dkmsd and for Debian's dkms 3.0.10, in two
// scenarios: 40 small modules for one kernel (a new kernel arrives), and 8
// modules for two kernels. Both run in the C locale with parallel_jobs=2 and
// sign with one MOK key made here. dkms 3.0.10 takes one kernel per
// autoinstall, so one op runs it once per kernel; it runs depmod on the
// machine's real /lib/modules/<kernel>, dkmsd on the relocated root.
//
// Each scenario first runs both once, untimed, and fails unless both trees
// then show the same status, read by both implementations. That dkmsd run
// is also sampled every 5 ms to measure dkmsd's overhead: the share of its
// wall time during which no make it started was running (the sampling
// costs CPU, so the timed runs are not sampled). The timed runs each start
// from a fresh, unbuilt root. The ratio sub-benchmark reports how many
// times faster dkmsd was; nothing is asserted on time. A run takes minutes:
//
//	go test -run '^$' -bench Autoinstall -benchtime 1x -timeout 30m ./cmd/dkms
func BenchmarkAutoinstall(b *testing.B) {
	testkit.RequireRoot(b)
	requireDebianDKMS(b)
	testkit.RequireTool(b, "openssl", "openssl")
	kernels := testkit.Kernels(b, 2)
	bench := &autoinstallBench{
		bin:      testkit.Binary(b, "dkms"),
		env:      autoinstallEnviron(b),
		template: moduleTemplate(b, "dkmsd_hello-1.0", "dkmsd_hello"),
	}
	for _, sc := range []autoinstallScenario{
		{name: "40x1", modules: 40, kernels: kernels[:1]},
		{name: "8x2", modules: 8, kernels: kernels},
	} {
		b.Run(sc.name, func(b *testing.B) { bench.run(b, sc) })
	}
}

// autoinstallScenario is one autoinstall to time: this many new modules,
// none built, for these kernels.
type autoinstallScenario struct {
	name    string
	modules int
	kernels []string
}

// moduleNames are the scenario's modules, bench_a1…bench_a<n>.
func (sc autoinstallScenario) moduleNames() []string {
	names := make([]string, sc.modules)
	for i := range names {
		names[i] = fmt.Sprintf("bench_a%d", i+1)
	}
	return names
}

// autoinstallBench is what every scenario shares.
type autoinstallBench struct {
	bin      string   // dkmsd's dkms
	env      []string // the environment of both implementations
	template []moduleFile
}

// autoinstaller is one implementation: the commands of one autoinstall of
// a root, and its status command on a root.
type autoinstaller struct {
	name        string
	autoinstall func(root string, kernels []string) [][]string
	status      func(root string) []string
}

func (ab *autoinstallBench) implementations() []autoinstaller {
	dkmsd := autoinstaller{
		name: "dkmsd",
		autoinstall: func(root string, kernels []string) [][]string {
			argv := []string{ab.bin, "--root", root, "autoinstall"}
			for _, k := range kernels {
				argv = append(argv, "-k", k)
			}
			return [][]string{argv}
		},
		status: func(root string) []string { return []string{ab.bin, "--root", root, "status"} },
	}
	trees := func(root string) []string {
		return []string{"--dkmstree", filepath.Join(root, "var/lib/dkms"),
			"--sourcetree", filepath.Join(root, "usr/src"),
			"--installtree", filepath.Join(root, "lib/modules")}
	}
	dkms := autoinstaller{
		name: "dkms-3.0.10",
		// dkms 3.0.10's autoinstall works on the first -k only.
		autoinstall: func(root string, kernels []string) [][]string {
			var argvs [][]string
			for _, k := range kernels {
				argvs = append(argvs, append([]string{debianDKMS, "autoinstall", "-k", k}, trees(root)...))
			}
			return argvs
		},
		status: func(root string) []string { return append([]string{debianDKMS, "status"}, trees(root)...) },
	}
	// dkms first: the untimed check then leaves the headers in the page
	// cache for the sampled dkmsd run.
	return []autoinstaller{dkms, dkmsd}
}

// run checks and times one scenario.
func (ab *autoinstallBench) run(b *testing.B, sc autoinstallScenario) {
	impls := ab.implementations()
	usage := ab.check(b, sc, impls)

	perOp := map[string]time.Duration{}
	for _, impl := range impls {
		b.Run(impl.name, func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				root := ab.newRoot(b, sc)
				b.StartTimer()
				for _, argv := range impl.autoinstall(root, sc.kernels) {
					if out, err := ab.command(argv).CombinedOutput(); err != nil {
						b.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, tail(out, 40))
					}
				}
				b.StopTimer()
				if err := os.RemoveAll(root); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			perOp[impl.name] = b.Elapsed() / time.Duration(b.N)
			if impl.name == "dkmsd" {
				b.ReportMetric(usage.percentOutside(), "%overhead")
			}
		})
	}

	logged := false
	b.Run("ratio", func(b *testing.B) {
		ours, theirs := perOp["dkmsd"], perOp["dkms-3.0.10"]
		ratio := reportRatio(b, ours, theirs, "dkms-3.0.10", "dkms")
		b.ReportMetric(usage.percentOutside(), "%overhead")
		if !logged {
			logged = true
			b.Logf("autoinstall %s: dkmsd %.1f s, dkms 3.0.10 %.1f s, ratio %.1fx, dkmsd overhead outside make %.1f%% (%s)",
				sc.name, ours.Seconds(), theirs.Seconds(), ratio, usage.percentOutside(), usage.breakdown())
		}
	})
}

// check runs each implementation once on a fresh root, sampling dkmsd's
// run, and fails unless both roots then hold every module, signed and
// installed for every kernel, as both implementations' status shows.
func (ab *autoinstallBench) check(b *testing.B, sc autoinstallScenario, impls []autoinstaller) makeUsage {
	b.Helper()
	var usage makeUsage
	var cmds []statusCommand
	for _, impl := range impls {
		root := ab.newRoot(b, sc)
		for _, argv := range impl.autoinstall(root, sc.kernels) {
			var out bytes.Buffer
			cmd := ab.command(argv)
			cmd.Stdout, cmd.Stderr = &out, &out
			var err error
			if impl.name == "dkmsd" {
				usage, err = sampleMake(cmd)
			} else {
				err = cmd.Run()
			}
			if err != nil {
				b.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, tail(out.Bytes(), 40))
			}
		}
		checkSigned(b, impl.name, root, sc)
		for _, reader := range impls {
			cmds = append(cmds, statusCommand{name: fmt.Sprintf("%s status of %s's tree", reader.name, impl.name), argv: reader.status(root)})
		}
	}
	names := sc.moduleNames()
	sort.Strings(names)
	ks := append([]string(nil), sc.kernels...)
	sort.Strings(ks)
	var want bytes.Buffer
	for _, name := range names {
		for _, k := range ks {
			fmt.Fprintf(&want, "%s/1.0, %s, %s: installed\n", name, k, machineArch())
		}
	}
	checkSameStatus(b, cmds, want.Bytes())
	return usage
}

// checkSigned fails unless every module built on root is signed.
func checkSigned(b *testing.B, impl, root string, sc autoinstallScenario) {
	b.Helper()
	for _, name := range sc.moduleNames() {
		for _, k := range sc.kernels {
			ko := filepath.Join(root, "var/lib/dkms", name, "1.0", k, machineArch(), "module", name+".ko")
			data, err := os.ReadFile(ko)
			if err != nil {
				b.Fatalf("%s built no %s for %s (a compressed module is not checked here): %v", impl, name, k, err)
			}
			if !bytes.HasSuffix(data, []byte(moduleSigMagic)) {
				b.Fatalf("%s did not sign %s", impl, ko)
			}
		}
	}
}

// command is argv run with the benchmark's environment.
func (ab *autoinstallBench) command(argv []string) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = ab.env
	return cmd
}

// newRoot makes a relocated root holding the scenario's modules, added
// (the source link dkms add makes) and built for no kernel.
func (ab *autoinstallBench) newRoot(b *testing.B, sc autoinstallScenario) string {
	b.Helper()
	root, err := filepath.EvalSymlinks(testkit.NewRoot(b, sc.kernels...))
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range sc.moduleNames() {
		src := filepath.Join(root, "usr/src", name+"-1.0")
		tbMkdirAll(b, src)
		for _, f := range ab.template {
			tbWriteFile(b, filepath.Join(src, strings.ReplaceAll(f.name, f.module, name)),
				bytes.ReplaceAll(f.data, []byte(f.module), []byte(name)))
		}
		mv := filepath.Join(root, "var/lib/dkms", name, "1.0")
		tbMkdirAll(b, mv)
		tbSymlink(b, src, filepath.Join(mv, "source"))
	}
	return root
}

// moduleFile is one file of a test module's source, to be cloned under
// another module name.
type moduleFile struct {
	name, module string
	data         []byte
}

// moduleTemplate reads testdata/modules/<dir>, whose files name the module
// (dkms.conf, Makefile, <module>.c) so that replacing the name renames it.
func moduleTemplate(b *testing.B, dir, module string) []moduleFile {
	b.Helper()
	full := filepath.Join(testkit.ModulesDir(), dir)
	entries, err := os.ReadDir(full)
	if err != nil {
		b.Fatal(err)
	}
	var files []moduleFile
	for _, e := range entries {
		if !e.Type().IsRegular() {
			b.Fatalf("%s: %s is not a regular file", full, e.Name())
		}
		files = append(files, moduleFile{name: e.Name(), module: module, data: mustReadFile(b, filepath.Join(full, e.Name()))})
	}
	return files
}

// autoinstallEnviron is this process's environment, less any make
// jobserver it runs under, in the C locale, with parallel_jobs=2 and a
// MOK key pair made here, so that neither implementation spends its time
// generating one.
func autoinstallEnviron(b *testing.B) []string {
	b.Helper()
	keys := b.TempDir()
	key, cert := filepath.Join(keys, "mok.key"), filepath.Join(keys, "mok.pub")
	if out, err := exec.Command("openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=dkmsd autoinstall benchmark",
		"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert).CombinedOutput(); err != nil {
		b.Fatalf("openssl: %v: %s", err, out)
	}
	var env []string
	for _, kv := range os.Environ() {
		switch name, _, _ := strings.Cut(kv, "="); name {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL":
		default:
			env = append(env, kv)
		}
	}
	return append(env, "LC_ALL=C", "parallel_jobs=2", "mok_signing_key="+key, "mok_certificate="+cert, testkit.SignAnywhere)
}

// tail is the last n lines of out.
func tail(out []byte, n int) []byte {
	lines := bytes.SplitAfter(out, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, nil)
}

// makeUsage is how a command spent its wall time: with a make it started
// (directly or not) running, or without.
type makeUsage struct {
	wall, outside time.Duration
	// without splits the time outside make by the command's other
	// descendants alive then: "sign-file", "depmod+strip"…, or "" for
	// none (the command working alone).
	without map[string]time.Duration
}

func (u makeUsage) percentOutside() float64 {
	if u.wall == 0 {
		return 0
	}
	return 100 * float64(u.outside) / float64(u.wall)
}

// breakdown is the time outside make, largest share first.
func (u makeUsage) breakdown() string {
	type share struct {
		what string
		d    time.Duration
	}
	var shares []share
	for what, d := range u.without {
		if what == "" {
			what = "dkmsd alone"
		}
		shares = append(shares, share{what, d})
	}
	sort.Slice(shares, func(i, j int) bool { return shares[i].d > shares[j].d })
	parts := []string{fmt.Sprintf("%.2f s of %.1f s outside make", u.outside.Seconds(), u.wall.Seconds())}
	for i, s := range shares {
		if i == 5 {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.2f s", s.what, s.d.Seconds()))
	}
	return strings.Join(parts, ", ")
}

// sampleMake runs cmd, looking every 5 ms for a make descending from it;
// the time since the previous look goes to what the look found.
func sampleMake(cmd *exec.Cmd) (makeUsage, error) {
	u := makeUsage{without: map[string]time.Duration{}}
	before := procPIDs()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return u, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	last, lastMake, lastOthers := start, false, ""
	account := func(now time.Time, inMake bool, others string) {
		if d := now.Sub(last); !inMake {
			u.outside += d
			u.without[others] += d
		}
		last = now
	}
	for {
		select {
		case err := <-done:
			now := time.Now()
			account(now, lastMake, lastOthers)
			u.wall = now.Sub(start)
			return u, err
		case <-tick.C:
			lastMake, lastOthers = descendants(cmd.Process.Pid, before)
			account(time.Now(), lastMake, lastOthers)
		}
	}
}

// procPIDs are the processes alive now. A process alive before a command
// starts cannot descend from it, so the sampler need not read its stat.
func procPIDs() map[int]bool {
	pids := map[int]bool{}
	f, err := os.Open("/proc")
	if err != nil {
		return pids
	}
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			pids[pid] = true
		}
	}
	return pids
}

// descendants reports whether a make descending from root is alive, and
// names the other descendants alive ("a+b", sorted, "" for none).
func descendants(root int, before map[int]bool) (inMake bool, others string) {
	procs := map[int]procInfo{}
	for pid := range procPIDs() {
		if before[pid] {
			continue
		}
		if p, ok := readProcInfo(pid); ok {
			procs[pid] = p
		}
	}
	seen := map[string]bool{}
	for pid, p := range procs {
		if pid == root {
			continue
		}
		descends := false
		for q, hops := p.ppid, 0; hops < 64; hops++ {
			if q == root {
				descends = true
				break
			}
			parent, ok := procs[q]
			if !ok {
				break
			}
			q = parent.ppid
		}
		switch {
		case !descends:
		case p.comm == "make":
			inMake = true
		default:
			seen[p.comm] = true
		}
	}
	if inMake {
		return true, ""
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return false, strings.Join(names, "+")
}
