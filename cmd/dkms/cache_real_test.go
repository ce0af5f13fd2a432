package main

// The fleet module cache end to end: a real docker-registry on loopback,
// one relocated root (the build host) building and publishing a hello
// module for a real kernel's headers, twenty other roots installing it
// with no compiler run, and each refusal falling back to a local build
// that says why. Compiler and make runs are counted by PATH wrappers that
// log every exec.

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/hooks/report"
	"github.com/dkmsd/dkmsd/lifecycle"
	"github.com/dkmsd/dkmsd/lifecycle/cache"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

const cacheModule, cacheVersion = "dkmsd_cached", "1.0"

// cacheFleet is one fleet: its registry, publisher keys and tools.
type cacheFleet struct {
	kernel, registry, storage string
	trust, key                string // the publisher's public and private key files
	wrappers, execLog         string // PATH dir of make/gcc wrappers, and the log they append to
	bin                       string
	// limit bounds one dkms command (default 3 minutes: a hello build).
	limit time.Duration
	// rootEnv is more environment for the dkms commands on a root.
	mu      sync.Mutex
	rootEnv map[string][]string
}

// newCacheFleet starts a registry and writes the publisher's keys and the
// exec-recording wrappers.
func newCacheFleet(t testing.TB) *cacheFleet { return newCacheFleetOn(t, testkit.Registry) }

// newCacheFleetOn is newCacheFleet with the registry start chooses.
func newCacheFleetOn(t testing.TB, start func(testing.TB) (addr, storage string)) *cacheFleet {
	testkit.RequireRoot(t)
	f := &cacheFleet{kernel: testkit.Kernels(t, 1)[0], bin: testkit.Binary(t, "dkms"), rootEnv: map[string][]string{}}
	f.registry, f.storage = start(t)
	dir := t.TempDir()
	f.trust, f.key = writeKeyPair(t, dir, "publisher")
	f.wrappers, f.execLog = filepath.Join(dir, "bin"), filepath.Join(dir, "exec.log")
	if err := os.MkdirAll(f.wrappers, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"make", "gcc", "gcc-12", "cc", "ld", "as"} {
		real := "/usr/bin/" + tool
		if _, err := os.Stat(real); err != nil {
			continue
		}
		script := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >> %s\nexec %s \"$@\"\n", tool, f.execLog, real)
		if err := os.WriteFile(filepath.Join(f.wrappers, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// writeKeyPair writes an ed25519 key pair as PEM: name.pub (PKIX) and
// name.key (PKCS#8).
func writeKeyPair(t testing.TB, dir, name string) (pub, priv string) {
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(pk)
	privDER, _ := x509.MarshalPKCS8PrivateKey(sk)
	pub, priv = filepath.Join(dir, name+".pub"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// root is a relocated root holding the module's source and a
// framework.conf naming the cache.
func (f *cacheFleet) root(t *testing.T, conf string) string {
	root := testkit.NewRoot(t, f.kernel)
	testkit.WriteModule(t, filepath.Join(root, "usr/src", cacheModule+"-"+cacheVersion), testkit.HelloFiles(t, cacheModule, cacheVersion))
	if err := os.WriteFile(filepath.Join(root, "etc/dkms/framework.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The make and compiler wrappers log to a file outside the build
	// dir, which the build sandbox (tested on its own) would make
	// read-only: the count of compiler runs needs the module let out.
	if err := os.WriteFile(filepath.Join(root, "etc/dkms", cacheModule+".conf"), []byte("BUILD_SANDBOX=no\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// conf is a framework.conf for the cache at url, trusting trust.
func (f *cacheFleet) conf(url, trust string, extra ...string) string {
	lines := append([]string{"module_cache=" + url, "module_cache_trust=" + trust, "parallel_jobs=2"}, extra...)
	return strings.Join(lines, "\n") + "\n"
}

// execs is how many make/compiler runs the wrappers have logged.
func (f *cacheFleet) execs(t testing.TB) int {
	data, err := os.ReadFile(f.execLog)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(data, []byte("\n"))
}

// dkms runs the dkms command on root with the wrappers first on PATH.
func (f *cacheFleet) dkms(t testing.TB, root string, args ...string) (testkit.Result, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cmp.Or(f.limit, 3*time.Minute))
	defer cancel()
	s := side{name: "dkmsd", bin: f.bin, root: root, env: f.env(root)}
	cmd := s.command(ctx, args...)
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	r, err := testkit.Exec(cmd)
	took := time.Since(start)
	if err != nil || ctx.Err() != nil {
		t.Fatalf("dkms %v: %v (%v)\n%s", args, err, ctx.Err(), r.Out)
	}
	return r, took
}

// env is the environment dkms runs in on root: the wrappers first on PATH.
func (f *cacheFleet) env(root string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{"PATH=" + f.wrappers + ":/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "HOME=" + root, "DKMSD_ROOT=" + root}, f.rootEnv[root]...)
}

func (f *cacheFleet) mustDkms(t testing.TB, root string, args ...string) testkit.Result {
	t.Helper()
	r, _ := f.dkms(t, root, args...)
	if r.Code != 0 {
		t.Fatalf("dkms %s: exit %d\n%s", strings.Join(args, " "), r.Code, r.Out)
	}
	return r
}

// moduleFile is the built module in root's DKMS tree, and the make.log.
func (f *cacheFleet) built(t *testing.T, root string) (ko []byte, makeLog string) {
	t.Helper()
	dir := filepath.Join(root, "var/lib/dkms", cacheModule, cacheVersion, f.kernel, "x86_64")
	files, _ := filepath.Glob(filepath.Join(dir, "module", cacheModule+".ko*"))
	if len(files) != 1 {
		t.Fatalf("want one built module in %s/module, found %q", dir, files)
	}
	ko, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(filepath.Join(dir, "log", "make.log"))
	if err != nil {
		t.Fatal(err)
	}
	return ko, string(log)
}

// unsignedModule is a module file without the signature sign-file
// appends (module_signature struct, then the magic string).
func unsignedModule(ko []byte) []byte {
	const magic = "~Module signature appended~\n"
	if !bytes.HasSuffix(ko, []byte(magic)) {
		return ko
	}
	end := len(ko) - len(magic) - 12
	sigLen := int(binary.BigEndian.Uint32(ko[end+8:]))
	return ko[:end-sigLen]
}

func TestCacheRealHeadersFleet(t *testing.T) {
	f := newCacheFleet(t)
	url := "oci://" + f.registry + "/fleet/modules"

	// The build host builds and publishes.
	host := f.root(t, f.conf(url, f.trust, "module_cache_publish=yes", "module_cache_key="+f.key))
	r := f.mustDkms(t, host, "install", cacheModule+"/"+cacheVersion, "-k", f.kernel)
	if n := f.execs(t); n == 0 {
		t.Fatalf("the build host's build ran no make or compiler through the wrappers: the count proves nothing\n%s", r.Out)
	}
	hostKo, hostLog := f.built(t, host)
	if strings.Contains(hostLog, "module cache") && !strings.Contains(hostLog, "no build for this key") {
		t.Errorf("the build host's make.log:\n%s", hostLog)
	}
	hostStatus := testkit.StatusLines(t, f.bin, []string{"DKMSD_ROOT=" + host})
	ls := f.mustDkms(t, host, "cache", "ls")
	if want := fmt.Sprintf("%s/%s, %s, x86_64: signed, published ", cacheModule, cacheVersion, f.kernel); !strings.HasPrefix(ls.Stdout, want) || strings.Count(ls.Stdout, "\n") != 1 {
		t.Fatalf("dkms cache ls:\n%s\nwant one line starting %q", ls.Stdout, want)
	}
	published := f.artifact(t, url)

	t.Run("twenty roots pull", func(t *testing.T) {
		before := f.execs(t)
		for i := range 20 {
			root := f.root(t, f.conf(url, f.trust))
			if i%2 == 0 {
				f.mustDkms(t, root, "install", cacheModule+"/"+cacheVersion, "-k", f.kernel)
			} else { // what the kernel hooks run
				f.mustDkms(t, root, "add", cacheModule+"/"+cacheVersion)
				f.mustDkms(t, root, "autoinstall", "-k", f.kernel)
			}
			ko, log := f.built(t, root)
			if !bytes.Equal(unsignedModule(ko), unsignedModule(hostKo)) || !bytes.Equal(unsignedModule(ko), published) {
				t.Errorf("root %d: its module (%d bytes) is not the build host's (%d bytes) before signing", i, len(ko), len(hostKo))
			}
			if !strings.Contains(log, "not built here. The modules come from the module cache "+url) {
				t.Errorf("root %d: make.log does not say where the module came from:\n%s", i, log)
			}
			if got := testkit.StatusLines(t, f.bin, []string{"DKMSD_ROOT=" + root}); !slices.Equal(got, hostStatus) {
				t.Errorf("root %d: status %q, build host %q", i, got, hostStatus)
			}
		}
		if n := f.execs(t) - before; n != 0 {
			data, _ := os.ReadFile(f.execLog)
			t.Fatalf("twenty pulling roots ran make or a compiler %d times:\n%s", n, data)
		}
	})

	t.Run("D-Bus CacheList and CachePull", func(t *testing.T) {
		root := f.root(t, f.conf(url, f.trust))
		before := f.execs(t)
		listed := f.busPull(t, root)
		if len(listed) != 1 || listed[0][0] != cacheModule || listed[0][2] != f.kernel {
			t.Errorf("CacheList = %q", listed)
		}
		ko, _ := f.built(t, root)
		if f.execs(t) != before || !bytes.Equal(unsignedModule(ko), published) {
			t.Errorf("CachePull did not put the published module in the tree without compiling")
		}
		want := fmt.Sprintf("%s/%s, %s, x86_64: built", cacheModule, cacheVersion, f.kernel)
		if got := testkit.StatusLines(t, f.bin, []string{"DKMSD_ROOT=" + root}); !slices.Equal(got, []string{want}) {
			t.Errorf("status after CachePull: %q, want %q", got, want)
		}
	})

	t.Run("another ABI under the same release misses", func(t *testing.T) {
		root := f.root(t, f.conf(url, f.trust))
		headers := changedHeaders(t, root, f.kernel)
		before := f.execs(t)
		f.mustDkms(t, root, "install", cacheModule+"/"+cacheVersion, "-k", f.kernel)
		_, log := f.built(t, root)
		if f.execs(t) == before || !strings.Contains(log, "the module cache has no build for this key") {
			t.Errorf("a kernel with another Module.symvers was not built here with a miss; make.log:\n%s", log)
		}
		// The CRC check refuses the published module for those headers
		// even if a key had matched.
		symvers, err := cache.ReadSymvers(filepath.Join(headers, "Module.symvers"))
		if err != nil {
			t.Fatal(err)
		}
		if err := cache.CheckModule("m.ko", published, f.kernel, symvers); err == nil || !strings.Contains(err.Error(), "CRC") {
			t.Errorf("CheckModule against the changed Module.symvers: %v, want a CRC refusal", err)
		}
	})

	refusals := []struct {
		name, repo, want string
		prepare          func(t *testing.T) (restore func())
	}{
		{name: "unsigned manifest", repo: "unsigned", want: "the manifest is not signed",
			prepare: func(t *testing.T) func() { f.copyArtifact(t, url, "unsigned", stripSignature); return nil }},
		{name: "untrusted key", repo: "untrusted", want: "which module_cache_trust does not list",
			prepare: func(t *testing.T) func() { f.copyArtifact(t, url, "untrusted", resignWith(t)); return nil }},
		{name: "tampered blob", repo: "modules", want: "does not match its digest",
			prepare: func(t *testing.T) func() { return f.tamper(t, published) }},
	}
	// The refusals' local builds run two at a time; the tampered blob,
	// which every repository of the registry shares, comes after them.
	t.Run("refusals", func(t *testing.T) {
		for _, c := range refusals[:2] {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				c.prepare(t)
				f.wantLocalBuild(t, f.root(t, f.conf("oci://"+f.registry+"/fleet/"+c.repo, f.trust)), c.want)
			})
		}
		t.Run("registry down", func(t *testing.T) {
			t.Parallel()
			f.wantFastFallback(t, "oci://"+testkit.ClosedPort(t)+"/fleet/modules", "connection refused")
		})
		t.Run("registry never answers", func(t *testing.T) {
			t.Parallel()
			f.wantFastFallback(t, "oci://"+testkit.SilentListener(t)+"/fleet/modules", "did not answer")
		})
	})
	t.Run(refusals[2].name, func(t *testing.T) {
		defer refusals[2].prepare(t)()
		f.wantLocalBuild(t, f.root(t, f.conf(url, f.trust)), refusals[2].want)
	})

	t.Run("file cache", func(t *testing.T) {
		dir := t.TempDir()
		f.exportLayout(t, url, dir)
		root := f.root(t, f.conf("file://"+dir, f.trust))
		before := f.execs(t)
		f.mustDkms(t, root, "install", cacheModule+"/"+cacheVersion, "-k", f.kernel)
		ko, log := f.built(t, root)
		if f.execs(t) != before || !bytes.Equal(unsignedModule(ko), published) || !strings.Contains(log, "from the module cache file://"+dir) {
			t.Errorf("the file:// cache was not used; make.log:\n%s", log)
		}
	})
}

// wantLocalBuild installs on root, beside a journald of its own, and
// wants a local build whose stderr, make.log and journal entry (a
// cache-miss whose DKMS_ERROR is the refusal) say why the cache was not
// used.
func (f *cacheFleet) wantLocalBuild(t *testing.T, root, why string) {
	t.Helper()
	journalPrereqs(t)
	before := f.execs(t)
	jdir := filepath.Join(t.TempDir(), "journal")
	if err := os.MkdirAll(jdir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"install", cacheModule + "/" + cacheVersion, "-k", f.kernel,
		"--dkmstree", filepath.Join(root, "var/lib/dkms"), "--sourcetree", filepath.Join(root, "usr/src"),
		"--installtree", filepath.Join(root, "lib/modules")}
	r := inJournalNamespace(t, jdir, f.env(root), args...)
	if r.Code != 0 {
		t.Fatalf("dkms install: exit %d\n%s", r.Code, r.Out)
	}
	_, log := f.built(t, root)
	if f.execs(t) == before {
		t.Errorf("no local build after the refusal\n%s", r.Out)
	}
	if !strings.Contains(r.Stderr, "dkmsd: module cache: not using it for") || !strings.Contains(r.Stderr, why) || !strings.Contains(log, why) {
		t.Errorf("want %q on stderr and in make.log;\nstderr:\n%s\nmake.log:\n%s", why, r.Stderr, log)
	}
	var found bool
	for _, e := range journalEntries(t, jdir) {
		if e["MESSAGE_ID"] == report.MessageIDs[lifecycle.CacheMiss] && e["DKMS_RESULT"] == "refused" &&
			e["DKMS_MODULE"] == cacheModule && strings.Contains(e["DKMS_ERROR"], why) {
			found = true
		}
	}
	if !found {
		t.Errorf("no cache-miss journal entry refusing with %q among:\n%v", why, journalEntries(t, jdir))
	}
}

// wantFastFallback: `dkms cache pull` from an unusable registry fails in
// under 5 seconds, process start included (module_cache_timeout=2 leaves
// room for a loaded machine), and an install falls back to a local build.
func (f *cacheFleet) wantFastFallback(t *testing.T, url, why string) {
	t.Helper()
	root := f.root(t, f.conf(url, f.trust, "module_cache_timeout=2"))
	f.mustDkms(t, root, "add", cacheModule+"/"+cacheVersion)
	r, took := f.dkms(t, root, "cache", "pull", cacheModule+"/"+cacheVersion, "-k", f.kernel)
	if r.Code == 0 || !strings.Contains(r.Stderr, why) {
		t.Errorf("dkms cache pull: exit %d, want a failure saying %q:\n%s", r.Code, why, r.Out)
	}
	if took >= 5*time.Second {
		t.Errorf("dkms cache pull took %v against %s; the bound is 5s", took, url)
	}
	f.wantLocalBuild(t, root, why)
}
