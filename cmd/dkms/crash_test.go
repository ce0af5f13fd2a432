package main

// What the crash tests share: the probe, the invariant helpers that other
// tests use too, and the deterministic test of a kill just before the
// initrd step. The harnesses that kill dkms commands (at random moments,
// and at every step of an uninstall) are system tests, run one at a time
// by `make test` (crash_harness_system_test.go and the files beside it).

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/initrd"
)

// crashProbe is the cheapest command that takes the tree lock (and so runs
// the recovery of a killed install or uninstall) and changes nothing:
// uninstall of a module that is not in the tree locks first, then exits 3.
// The setup checks that it really waits for the lock.
var crashProbe = []string{"uninstall", "dkmsd_nonexistent/0"}

// liveProcess is a process found by processesUsing.
type liveProcess struct {
	cmdline string
	pgid    int
}

// processesUsing lists the live processes (not this one) whose command
// line names dir or whose working directory is under it.
func processesUsing(dir string) map[int]liveProcess {
	out := map[int]liveProcess{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		raw, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cmdline := strings.TrimSpace(string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
		cwd, _ := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if !strings.Contains(cmdline, dir) && cwd != dir && !strings.HasPrefix(cwd, dir+"/") {
			continue
		}
		// /proc/<pid>/stat: pid (comm) state ppid pgrp …
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		pgid, _ := strconv.Atoi(f[2])
		out[pid] = liveProcess{cmdline, pgid}
	}
	return out
}

// readOrEmpty is the file p holds, or nothing when it cannot be read.
func readOrEmpty(p string) []byte {
	data, _ := os.ReadFile(p)
	return data
}

// imageHasModule reports whether the image's view of the kernel's module
// dir holds a module named name.
func imageHasModule(img *initrd.Image, kernel, name string) bool {
	modDir, err := img.Resolve("lib/modules/" + kernel)
	if err != nil {
		return false
	}
	for _, n := range img.Names(modDir) {
		b := path.Base(n)
		for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
			if b == name+ext {
				return true
			}
		}
	}
	return false
}

// dkmsdTempFiles lists the temporary files and dirs dkmsd makes beside
// what it writes (write-beside files, build stages, dirs being deleted,
// initrd images being written) under the root's trees. The root's tmp/
// (TMPDIR) and source tree are not looked at.
func dkmsdTempFiles(root string) []string {
	var out []string
	for _, tr := range []string{"var/lib/dkms", "lib/modules", "boot"} {
		base := filepath.Join(root, tr)
		_ = filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
			if err != nil || p == base {
				return nil
			}
			n := fi.Name()
			if strings.HasPrefix(n, ".dkmsd-") || strings.HasPrefix(n, ".tmp_") || strings.Contains(n, ".dkmsd-old-") ||
				(tr == "boot" && strings.Contains(n, ".dkmsd-")) || (strings.HasSuffix(n, ".tmp") && strings.Contains(p, "/.dkmsd/")) {
				rel, _ := filepath.Rel(root, p)
				out = append(out, rel)
				if fi.IsDir() {
					return filepath.SkipDir
				}
			}
			return nil
		})
	}
	return out
}

// TestCrashSafetyKillBeforeInitrdRealHeaders puts the tree in the state a
// kill leaves between a command's work and its initrd step (the same
// command with --no-initrd), for install, uninstall and remove of a
// REMAKE_INITRD module, then runs the command again: the rerun must finish
// the job, initrd included — the image holds the module exactly when it
// is installed. The random kills of TestCrashSafetyKillRealHeaders hit
// this window only now and then.
func TestCrashSafetyKillBeforeInitrdRealHeaders(t *testing.T) {
	t.Parallel()
	b := newBatchRoot(t)
	k := b.kernelWithInitrd(t)
	img := b.path("boot", "initrd.img-"+k)
	copyBootFile(t, "/boot/initrd.img-"+k, img)
	b.cloneHello(t, "dkmsd_crashinitrd", "1.0", []string{`REMAKE_INITRD="yes"`}, nil)
	b.mustRun(t, "add", "dkmsd_crashinitrd/1.0")
	b.mustRun(t, "build", "dkmsd_crashinitrd/1.0", "-k", k)
	holds := func() bool {
		t.Helper()
		image, err := initrd.Read(img)
		if err != nil {
			t.Fatalf("%s: %v", img, err)
		}
		return imageHasModule(image, k, "dkmsd_crashinitrd")
	}
	for _, c := range []struct {
		args    []string
		holds   bool
		mayBe3  bool // remove: the killed run removed it already
		restore []string
	}{
		{[]string{"install", "dkmsd_crashinitrd/1.0", "-k", k}, true, false, nil},
		{[]string{"uninstall", "dkmsd_crashinitrd/1.0", "-k", k}, false, false, []string{"install", "dkmsd_crashinitrd/1.0", "-k", k}},
		{[]string{"remove", "dkmsd_crashinitrd/1.0", "--all"}, false, true, nil},
	} {
		what := "dkms " + strings.Join(c.args, " ")
		b.mustRun(t, append(slices.Clone(c.args), "--no-initrd")...)
		// A command killed before its initrd step leaves the marker its
		// first change wrote (--no-initrd writes none, by design): put it
		// back as such a kill would have left it.
		markInitrdPending(t, b.root, k)
		r := b.run(t, c.args...)
		if r.Code != 0 && !(c.mayBe3 && r.Code == 3) {
			t.Errorf("%s again: exit %d\nstderr:\n%s", what, r.Code, r.Stderr)
		}
		if got := holds(); got != c.holds {
			t.Errorf("after %s was cut before its initrd step and run again (exit %d), %s holds dkmsd_crashinitrd: %v, want %v\nstdout:\n%s\nstderr:\n%s",
				what, r.Code, img, got, c.holds, r.Stdout, r.Stderr)
		}
		if c.restore != nil {
			b.mustRun(t, c.restore...)
		}
	}
}

// markInitrdPending leaves <dkms_tree>/.dkmsd/initrd/<k>.pending, what a
// command killed between its change and its initrd step leaves behind.
func markInitrdPending(t *testing.T, root, k string) {
	t.Helper()
	dir := filepath.Join(root, "var/lib/dkms/.dkmsd/initrd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, k+".pending"), []byte(machineArch()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
