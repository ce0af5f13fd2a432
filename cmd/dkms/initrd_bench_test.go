package main

import (
	"bytes"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// BenchmarkInitrdAddModule times putting one DKMS module into the cloud
// kernel's initrd: dkmsd (`dkms initrd -k K --initrd-strategy=append`, as
// a process, on a fresh copy of the machine's initrd each time, copied
// outside the timer) against Debian's own way, `update-initramfs -u -k K`,
// which rebuilds the whole image. update-initramfs writes
// /boot/initrd.img-K in place: the benchmark keeps the original bytes and
// puts them back when it ends, failed or not. The update-initramfs run
// does not include dkmsd_hello (that would mean installing it into the
// machine's /lib/modules); adding one module does not change its cost.
// The ratio sub-benchmark reports how many times faster dkmsd was:
//
//	go test -run '^$' -bench InitrdAddModule -benchtime 1x -timeout 30m ./cmd/dkms
func BenchmarkInitrdAddModule(b *testing.B) {
	bootKernel := requireBootKernel(b)
	testkit.RequireTool(b, "update-initramfs", "initramfs-tools")
	bin := testkit.Binary(b, "dkms")
	bootInitrd := "/boot/initrd.img-" + bootKernel
	original, err := os.ReadFile(bootInitrd)
	if err != nil {
		b.Fatal(err)
	}
	protectBootInitrd(b, bootInitrd, original)

	root := bootRoot(b, bootKernel)
	dkmsOK(b, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel, "--no-initrd")
	img := filepath.Join(root, "boot", "initrd.img-"+bootKernel)
	state := filepath.Join(root, "var/lib/dkms/.dkmsd/initrd", bootKernel+".json")

	perOp := map[string]time.Duration{}
	b.Run("dkmsd", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			if err := os.WriteFile(img, original, 0o644); err != nil {
				b.Fatal(err)
			}
			os.Remove(state)
			b.StartTimer()
			out, err := exec.Command(bin, "--root", root, "initrd", "-k", bootKernel, "--initrd-strategy=append").CombinedOutput()
			b.StopTimer()
			if err != nil {
				b.Fatalf("dkms initrd: %v\n%s", err, out)
			}
			checkBenchInitrd(b, bootKernel, img, original)
			b.StartTimer()
		}
		perOp["dkmsd"] = b.Elapsed() / time.Duration(b.N)
	})
	b.Run("update-initramfs", func(b *testing.B) {
		for range b.N {
			out, err := exec.Command("update-initramfs", "-u", "-k", bootKernel).CombinedOutput()
			if err != nil {
				b.Fatalf("update-initramfs -u -k %s: %v\n%s", bootKernel, err, out)
			}
			b.StopTimer()
			if _, err := initrd.Read(bootInitrd); err != nil {
				b.Fatalf("the initrd update-initramfs made: %v", err)
			}
			restoreBootInitrd(b, bootInitrd, original)
			b.StartTimer()
		}
		perOp["update-initramfs"] = b.Elapsed() / time.Duration(b.N)
	})

	logged := false
	b.Run("ratio", func(b *testing.B) {
		ours, theirs := perOp["dkmsd"], perOp["update-initramfs"]
		ratio := reportRatio(b, ours, theirs, "update-initramfs", "update-initramfs")
		if !logged {
			logged = true
			b.Logf("initrd add module: dkmsd %.2f s, update-initramfs %.1f s, ratio %.0fx", ours.Seconds(), theirs.Seconds(), ratio)
		}
	})
}

// checkBenchInitrd checks that dkmsd appended dkmsd_hello to the
// original image.
func checkBenchInitrd(b *testing.B, bootKernel, path string, original []byte) {
	b.Helper()
	got, err := initrd.Read(path)
	if err != nil {
		b.Fatal(err)
	}
	if !bytes.HasPrefix(got.Data, original) || len(got.Data) == len(original) {
		b.Fatalf("%s: dkmsd did not append to the original image", path)
	}
	if _, ok := got.Lookup("usr/lib/modules/" + bootKernel + "/updates/dkms/dkmsd_hello.ko"); !ok {
		b.Fatalf("%s has no updates/dkms/dkmsd_hello.ko", path)
	}
	if list, _ := got.Content("conf/modules"); !strings.Contains(string(list), "dkmsd_hello\n") {
		b.Fatalf("%s: conf/modules = %q, want dkmsd_hello", path, list)
	}
}

// protectBootInitrd puts the original bytes of the machine's initrd back
// when the benchmark ends, however it ends short of the process being
// killed, and removes the backups update-initramfs may leave. A copy is
// kept in the benchmark's temporary directory meanwhile.
func protectBootInitrd(b *testing.B, path string, original []byte) {
	b.Helper()
	backup := filepath.Join(b.TempDir(), filepath.Base(path))
	if err := os.WriteFile(backup, original, 0o644); err != nil {
		b.Fatal(err)
	}
	b.Logf("%s is kept in %s while update-initramfs runs", path, backup)
	var extra []string
	for _, p := range []string{path + ".dpkg-bak", path + ".bak"} {
		if _, err := os.Lstat(p); os.IsNotExist(err) {
			extra = append(extra, p)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		restoreBootInitrd(b, path, original)
		os.Chtimes(path, fi.ModTime(), fi.ModTime())
		for _, p := range extra {
			os.Remove(p)
		}
	})
}

// restoreBootInitrd writes the original bytes back (atomically) if the
// file differs from them.
func restoreBootInitrd(b *testing.B, path string, original []byte) {
	b.Helper()
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, original) {
		return
	}
	if err := initrd.WriteAtomic(path, original); err != nil {
		b.Errorf("could not restore %s: %v", path, err)
		return
	}
	cur, err := os.ReadFile(path)
	if err != nil || sha256.Sum256(cur) != sha256.Sum256(original) {
		b.Errorf("%s was not restored: %v", path, err)
	}
}
