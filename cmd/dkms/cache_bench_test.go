package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// BenchmarkCacheFleet: a fleet of N relocated roots (DKMSD_BENCH_FLEET,
// default 20) each getting a real corpus module (xtables-addons-dkms)
// for a kernel, one after the other on this machine: every root
// building, then one root building and publishing to a docker-registry
// and the others pulling. It reports the CPU seconds of every dkms
// process and its descendants (compilers included, from wait4's rusage;
// the registry's own CPU is not counted) and the wall time of each way,
// for the whole fleet and for its N-1 members other than the build host
// (the ratio a fleet sees when the build host is a machine of its own).
func BenchmarkCacheFleet(b *testing.B) {
	n := 20
	if v := os.Getenv("DKMSD_BENCH_FLEET"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 2 {
			b.Fatalf("DKMSD_BENCH_FLEET=%q: want a number of roots, at least 2", v)
		}
	}
	f := newCacheFleet(b)
	f.limit = 30 * time.Minute // one corpus build on a loaded machine
	url := "oci://" + f.registry + "/bench/modules"
	for range b.N {
		buildCPU, buildWall, buildRest := f.fleetRun(b, n, "", false)
		cacheCPU, cacheWall, pullRest := f.fleetRun(b, n, url, true)
		ratio := buildCPU.Seconds() / cacheCPU.Seconds()
		members := buildRest.Seconds() / pullRest.Seconds()
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(buildCPU.Seconds(), "all-build-cpu-s")
		b.ReportMetric(cacheCPU.Seconds(), "cache-cpu-s")
		b.ReportMetric(ratio, "x-less-cpu")
		b.ReportMetric(buildWall.Seconds(), "all-build-wall-s")
		b.ReportMetric(cacheWall.Seconds(), "cache-wall-s")
		b.ReportMetric(members, "x-less-cpu-members")
		b.Logf("N=%d xtables-addons for %s: all building %.1f CPU-s, %.1f s wall; one building + %d pulling %.1f CPU-s, %.1f s wall; %.1fx less CPU, %.1fx less wall; the %d members other than the build host: %.1f CPU-s building, %.1f pulling, %.1fx less",
			n, f.kernel, buildCPU.Seconds(), buildWall.Seconds(), n-1, cacheCPU.Seconds(), cacheWall.Seconds(), ratio, buildWall.Seconds()/cacheWall.Seconds(),
			n-1, buildRest.Seconds(), pullRest.Seconds(), members)
	}
}

// fleetRun installs the corpus module on n fresh roots in turn and
// returns the CPU time of the dkms processes (children included), the
// wall time, and the CPU time of every root but the first. With a cache
// url the first root publishes and the others must pull.
func (f *cacheFleet) fleetRun(b *testing.B, n int, url string, publish bool) (cpu, wall, rest time.Duration) {
	b.Helper()
	for i := range n {
		root := testkit.NewRoot(b, f.kernel)
		name, version := testkit.CorpusModule(b, root, "xtables-addons-dkms")
		conf := "parallel_jobs=2\n"
		if url != "" {
			conf = f.conf(url, f.trust)
			if i == 0 && publish {
				conf = f.conf(url, f.trust, "module_cache_publish=yes", "module_cache_key="+f.key)
			}
		}
		if err := os.WriteFile(filepath.Join(root, "etc/dkms/framework.conf"), []byte(conf), 0o644); err != nil {
			b.Fatal(err)
		}
		// The compiler wrappers' log is outside the build dir: out of the
		// build sandbox, or a pulling root's compile would go unseen.
		if err := os.WriteFile(filepath.Join(root, "etc/dkms", name+".conf"), []byte("BUILD_SANDBOX=no\n"), 0o644); err != nil {
			b.Fatal(err)
		}
		before := f.execs(b)
		r, took := f.dkms(b, root, "install", name+"/"+version, "-k", f.kernel)
		if r.Code != 0 {
			b.Fatalf("root %d: install %s/%s: exit %d\n%s", i, name, version, r.Code, r.Out)
		}
		if url != "" && i > 0 && f.execs(b) != before {
			b.Fatalf("root %d compiled instead of pulling:\n%s", i, r.Out)
		}
		cpu += r.CPU
		wall += took
		if i > 0 {
			rest += r.CPU
		}
		fmt.Fprintf(os.Stderr, "fleet root %d/%d (%s): %.1f CPU-s, %.1f s\n", i+1, n, map[bool]string{true: "cache", false: "build"}[url != ""], r.CPU.Seconds(), took.Seconds())
	}
	return cpu, wall, rest
}

// BenchmarkCachePull: what one machine of a fleet spends installing a
// module from the cache. A build host builds and publishes a module
// with several .ko (dkmsd_twomods; DKMSD_BENCH_PULL_CORPUS names a corpus
// package instead, e.g. xtables-addons-dkms), then each iteration is a
// fresh root, with a MOK key pair already there as on a machine that
// signed before, installing it: CPU seconds of dkms and its children
// (sign-file, depmod) and wall seconds per pull.
func BenchmarkCachePull(b *testing.B) {
	f := newCacheFleet(b)
	f.limit = 30 * time.Minute
	url := "oci://" + f.registry + "/bench/pull"
	deb := os.Getenv("DKMSD_BENCH_PULL_CORPUS")
	var mokKey, mokCert string
	root := func(publish bool) (dir, name, version string) {
		dir = testkit.NewRoot(b, f.kernel)
		if deb != "" {
			name, version = testkit.CorpusModule(b, dir, deb)
		} else {
			testkit.CopyModule(b, dir, "dkmsd_twomods-2.1")
			name, version = "dkmsd_twomods", "2.1"
		}
		conf := f.conf(url, f.trust)
		if publish {
			conf = f.conf(url, f.trust, "module_cache_publish=yes", "module_cache_key="+f.key)
		}
		if err := os.WriteFile(filepath.Join(dir, "etc/dkms/framework.conf"), []byte(conf), 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "etc/dkms", name+".conf"), []byte("BUILD_SANDBOX=no\n"), 0o644); err != nil {
			b.Fatal(err)
		}
		if mokKey != "" {
			for src, dst := range map[string]string{mokKey: "var/lib/dkms/mok.key", mokCert: "var/lib/dkms/mok.pub"} {
				data, err := os.ReadFile(src)
				if err != nil {
					b.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, dst), data, 0o600); err != nil {
					b.Fatal(err)
				}
			}
		}
		return dir, name, version
	}
	host, name, version := root(true)
	if r, _ := f.dkms(b, host, "install", name+"/"+version, "-k", f.kernel); r.Code != 0 {
		b.Fatalf("build host: exit %d\n%s", r.Code, r.Out)
	}
	mokKey, mokCert = filepath.Join(host, "var/lib/dkms/mok.key"), filepath.Join(host, "var/lib/dkms/mok.pub")
	var cpu, wall time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		dir, _, _ := root(false)
		before := f.execs(b)
		b.StartTimer()
		r, took := f.dkms(b, dir, "install", name+"/"+version, "-k", f.kernel)
		b.StopTimer()
		if r.Code != 0 || f.execs(b) != before || !strings.Contains(r.Stdout, "from the module cache") {
			b.Fatalf("the root did not pull (exit %d):\n%s", r.Code, r.Out)
		}
		cpu += r.CPU
		wall += took
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/pull")
	b.ReportMetric(wall.Seconds()/float64(b.N), "wall-s/pull")
}
