package lifecycle_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/tree"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// BenchmarkBuildSandbox builds the test modules (testdata's hello,
// twomods, patched, scripted) for one kernel with build_sandbox=none and
// with bwrap, alternating the two each round so that the machine's load
// falls on both alike, and reports each side's total and the sandbox's
// cost in percent (%overhead).
//
//	go test -run '^$' -bench BuildSandbox -benchtime 3x ./lifecycle/
func BenchmarkBuildSandbox(b *testing.B) {
	testkit.RequireRoot(b)
	testkit.RequireTool(b, "bwrap", "bubblewrap")
	k := testkit.Kernels(b, 1)[0]
	root := testkit.NewRoot(b, k)
	modules := []struct{ dir, name, version string }{
		{"dkmsd_hello-1.0", "dkmsd_hello", "1.0"}, {"dkmsd_twomods-2.1", "dkmsd_twomods", "2.1"},
		{"dkmsd_patched-1.0", "dkmsd_patched", "1.0"}, {"dkmsd_scripted-1.0", "dkmsd_scripted", "1.0"},
	}
	for _, m := range modules {
		testkit.CopyModule(b, root, m.dir)
	}
	build := func(mode string) time.Duration {
		conf := filepath.Join(root, "etc/dkms/framework.conf")
		if err := os.WriteFile(conf, []byte("build_sandbox="+mode+"\n"), 0o644); err != nil {
			b.Fatal(err)
		}
		env, err := lifecycle.NewEnv(b.Context(), tree.NewLayout(root), lifecycle.Discard)
		if err != nil {
			b.Fatal(err)
		}
		env.Force = true
		start := time.Now()
		for _, m := range modules {
			if err := lifecycle.Build(b.Context(), env, lifecycle.Target{Module: m.name, Version: m.version, Kernel: k, Arch: realArch}); err != nil {
				b.Fatalf("%s build of %s: %v", mode, m.name, err)
			}
		}
		return time.Since(start)
	}
	build("none") // the MOK key, caches
	var none, bwrap time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			none += build("none")
			bwrap += build("bwrap")
		} else {
			bwrap += build("bwrap")
			none += build("none")
		}
	}
	b.ReportMetric(none.Seconds()/float64(b.N), "none-s/op")
	b.ReportMetric(bwrap.Seconds()/float64(b.N), "bwrap-s/op")
	b.ReportMetric(100*(bwrap.Seconds()-none.Seconds())/none.Seconds(), "%overhead")
}
