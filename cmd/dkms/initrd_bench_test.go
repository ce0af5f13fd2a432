package main

import (
	"bytes"
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
// kernel's initrd, side by side in one run:
//
//   - append: `dkms initrd -k K --initrd-strategy=append` as a process,
//     adding the module to an image dkmsd knows: it wrote the file
//     itself (the image as the generator made it, after dkmsd cut its own
//     segment off) and keeps its index, the state of an installed
//     system. Outside the timer each round uninstalls the module, cuts
//     the image back and installs the module with --no-initrd;
//   - append-rehash: the same on a fresh copy of the machine's initrd
//     (copied outside the timer) whose index is kept but whose file
//     dkmsd did not write, so it reads and hashes the image to find it;
//   - append-first: the same with no index yet (it is read from the
//     decompressed image and kept);
//   - rewrite: --initrd-strategy=rewrite (the whole main archive written
//     again, the path removals take);
//   - update-initramfs: Debian's own way, update-initramfs -u's work —
//     mkinitramfs building the whole image, then sync — into a scratch
//     file (so the machine's /boot is never written).
//
// The ratio sub-benchmarks report how many times faster each dkmsd path
// was than update-initramfs:
//
//	go test -run '^$' -bench InitrdAddModule -benchtime 3x -timeout 30m ./cmd/dkms
func BenchmarkInitrdAddModule(b *testing.B) {
	bootKernel := requireBootKernel(b)
	testkit.RequireTool(b, "mkinitramfs", "initramfs-tools")
	bin := testkit.Binary(b, "dkms")
	original, err := os.ReadFile("/boot/initrd.img-" + bootKernel)
	if err != nil {
		b.Fatal(err)
	}
	root := bootRoot(b, bootKernel)
	dkmsOK(b, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel, "--no-initrd")
	img := filepath.Join(root, "boot", "initrd.img-"+bootKernel)
	stateDir := filepath.Join(root, "var/lib/dkms/.dkmsd/initrd")

	perOp := map[string]time.Duration{}
	// CPU time (user + system, the process and the children it waited
	// for) per op: on a machine shared with other work, wall time grows
	// with everyone's load, CPU time much less.
	cpuPerOp := map[string]time.Duration{}
	cpuOf := func(cmd *exec.Cmd) time.Duration {
		if cmd.ProcessState == nil {
			return 0
		}
		return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	dkmsd := func(name, strategy string, keepIndex bool) {
		b.Run(name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				if err := os.WriteFile(img, original, 0o644); err != nil {
					b.Fatal(err)
				}
				os.Remove(filepath.Join(stateDir, bootKernel+".json"))
				if !keepIndex {
					os.RemoveAll(filepath.Join(stateDir, bootKernel+".cache"))
				}
				b.StartTimer()
				cmd := exec.Command(bin, "--root", root, "initrd", "-k", bootKernel, "--initrd-strategy="+strategy)
				out, err := cmd.CombinedOutput()
				b.StopTimer()
				if err != nil {
					b.Fatalf("dkms initrd: %v\n%s", err, out)
				}
				cpuPerOp[name] += cpuOf(cmd) / time.Duration(b.N)
				checkBenchInitrd(b, bootKernel, img, original, strategy == "append")
				b.StartTimer()
			}
			perOp[name] = b.Elapsed() / time.Duration(b.N)
		})
	}
	// The index an installed system has: made by one append beforehand.
	tbWriteFile(b, img, original)
	dkmsOK(b, bin, "--root", root, "initrd", "-k", bootKernel)
	b.Run("append", func(b *testing.B) {
		for range b.N {
			b.StopTimer()
			dkmsOK(b, bin, "--root", root, "uninstall", "dkmsd_hello/1.0", "-k", bootKernel, "--no-initrd")
			dkmsOK(b, bin, "--root", root, "initrd", "-k", bootKernel)
			if got, err := os.ReadFile(img); err != nil || !bytes.Equal(got, original) {
				b.Fatalf("the image cut back is not the original (%d bytes, %v)", len(got), err)
			}
			dkmsOK(b, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel, "--no-initrd")
			b.StartTimer()
			cmd := exec.Command(bin, "--root", root, "initrd", "-k", bootKernel, "--initrd-strategy=append")
			out, err := cmd.CombinedOutput()
			b.StopTimer()
			if err != nil {
				b.Fatalf("dkms initrd: %v\n%s", err, out)
			}
			cpuPerOp["append"] += cpuOf(cmd) / time.Duration(b.N)
			checkBenchInitrd(b, bootKernel, img, original, true)
			b.StartTimer()
		}
		perOp["append"] = b.Elapsed() / time.Duration(b.N)
	})
	dkmsd("append-rehash", "append", true)
	dkmsd("append-first", "append", false)
	dkmsd("rewrite", "rewrite", true)
	b.Run("update-initramfs", func(b *testing.B) {
		scratch := b.TempDir()
		for range b.N {
			out := filepath.Join(scratch, "initrd.img-"+bootKernel+".new")
			cmd := exec.Command("mkinitramfs", "-o", out, bootKernel)
			if msg, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("mkinitramfs -o %s %s: %v\n%s", out, bootKernel, err, msg)
			}
			cpuPerOp["update-initramfs"] += cpuOf(cmd) / time.Duration(b.N)
			if msg, err := exec.Command("sync", "-f", out).CombinedOutput(); err != nil {
				b.Fatalf("sync: %v\n%s", err, msg)
			}
			b.StopTimer()
			if _, err := initrd.Read(out); err != nil {
				b.Fatalf("the initrd mkinitramfs made: %v", err)
			}
			os.Remove(out)
			b.StartTimer()
		}
		perOp["update-initramfs"] = b.Elapsed() / time.Duration(b.N)
	})

	for _, name := range []string{"append", "append-rehash", "append-first", "rewrite"} {
		logged := false
		b.Run("ratio-"+name, func(b *testing.B) {
			ours, theirs := perOp[name], perOp["update-initramfs"]
			ratio := reportRatio(b, ours, theirs, "update-initramfs", "update-initramfs")
			cpuOurs, cpuTheirs := cpuPerOp[name], cpuPerOp["update-initramfs"]
			cpuRatio := 0.0
			if cpuOurs > 0 {
				cpuRatio = float64(cpuTheirs) / float64(cpuOurs)
			}
			b.ReportMetric(cpuRatio, "x-less-cpu")
			b.ReportMetric(float64(cpuOurs.Milliseconds()), "dkmsd-cpu-ms/op")
			b.ReportMetric(float64(cpuTheirs.Milliseconds()), "update-initramfs-cpu-ms/op")
			if !logged {
				logged = true
				b.Logf("initrd add module, %s: dkmsd %.3f s (cpu %d ms), update-initramfs %.1f s (cpu %d ms): %.0fx faster, %.0fx less cpu",
					name, ours.Seconds(), cpuOurs.Milliseconds(), theirs.Seconds(), cpuTheirs.Milliseconds(), ratio, cpuRatio)
			}
		})
	}
}

// checkBenchInitrd checks that dkmsd put dkmsd_hello into the image,
// appended to the original bytes or not.
func checkBenchInitrd(b *testing.B, bootKernel, path string, original []byte, appended bool) {
	b.Helper()
	got, err := initrd.Read(path)
	if err != nil {
		b.Fatal(err)
	}
	if appended != (bytes.HasPrefix(got.Data, original) && len(got.Data) > len(original)) {
		b.Fatalf("%s: appended to the original image: %v, want %v", path, !appended, appended)
	}
	if _, ok := got.Lookup("usr/lib/modules/" + bootKernel + "/updates/dkms/dkmsd_hello.ko"); !ok {
		b.Fatalf("%s has no updates/dkms/dkmsd_hello.ko", path)
	}
	if list, _ := got.Content("conf/modules"); !strings.Contains(string(list), "dkmsd_hello\n") {
		b.Fatalf("%s: conf/modules = %q, want dkmsd_hello", path, list)
	}
}
