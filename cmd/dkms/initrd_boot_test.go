package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dkmsd/dkmsd/initrd"
	"github.com/dkmsd/dkmsd/tree/testkit"
)

// helloLoaded is what dkmsd_hello prints when it loads.
const helloLoaded = "dkmsd_hello: loaded 1.0"

// requireBootKernel returns the kernel the boot tests start under qemu:
// the newest installed Debian cloud kernel (its initrd made by
// initramfs-tools), with its image, initrd and headers; and checks for the
// build tools.
func requireBootKernel(tb testing.TB) string {
	tb.Helper()
	testkit.RequireRoot(tb)
	bootKernel := testkit.BootKernel(tb)
	for _, tool := range [][2]string{{"depmod", "kmod"}, {"make", "make"}, {"gcc", "gcc"}, {"openssl", "openssl"}} {
		testkit.RequireTool(tb, tool[0], tool[1])
	}
	return bootKernel
}

// bootRoot is a relocated root for bootKernel holding dkmsd_hello's
// source, a copy of the machine's initrd in its /boot, and an
// /etc/initramfs-tools/modules that names dkmsd_hello (so dkmsd puts it in
// the initrd and has it loaded early).
func bootRoot(tb testing.TB, bootKernel string) string {
	tb.Helper()
	root, err := filepath.EvalSymlinks(testkit.NewRoot(tb, bootKernel))
	if err != nil {
		tb.Fatal(err)
	}
	testkit.CopyModule(tb, root, "dkmsd_hello-1.0")
	conf := filepath.Join(root, "etc/initramfs-tools/modules")
	if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("# List of modules to include in the initramfs\ndkmsd_hello\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	return root
}

func copyBootFile(tb testing.TB, src, dst string) {
	tb.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// dkmsOK runs the dkms command and fails the test if it fails.
func dkmsOK(tb testing.TB, bin string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("dkms %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// bootResult is the serial console of one boot.
type bootResult struct {
	initrd string
	log    string
	took   time.Duration
	err    error
}

// startQEMU boots bootKernel with the initrd under qemu (tcg: no KVM
// needed) into the initramfs, which loads conf/modules, stops at
// break=premount and panics; panic=-1 with -no-reboot ends qemu. The
// result comes on the channel. qemu is killed after 120 s or when ctx
// (the test's) ends.
func startQEMU(ctx context.Context, bootKernel, initrdPath string) <-chan bootResult {
	return startQEMUWith(ctx, bootKernel, initrdPath, "console=ttyS0 panic=-1 break=premount ignore_loglevel")
}

// startQEMUWith is startQEMU with another kernel command line.
func startQEMUWith(ctx context.Context, bootKernel, initrdPath, cmdline string) <-chan bootResult {
	done := make(chan bootResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
			"-kernel", "/boot/vmlinuz-"+bootKernel, "-initrd", initrdPath,
			"-append", cmdline)
		cmd.WaitDelay = 5 * time.Second
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		done <- bootResult{initrd: initrdPath, log: out.String(), took: time.Since(start), err: err}
	}()
	return done
}

// bootLog waits for a boot and checks that the initramfs ran far enough
// to have loaded conf/modules, and that the kernel unpacked the whole
// initrd (a segment it cannot read is one line in the log, and boot goes
// on without it).
func bootLog(t *testing.T, boot <-chan bootResult) string {
	t.Helper()
	r := <-boot
	if r.err != nil {
		t.Fatalf("qemu with %s: %v after %s\n%s", r.initrd, r.err, r.took.Round(time.Second), consoleTail(r.log, 40))
	}
	t.Logf("booted with %s in %s", r.initrd, r.took.Round(100*time.Millisecond))
	for _, want := range []string{"Run /init as init process", "Loading essential drivers", "Spawning shell within the initramfs"} {
		if !strings.Contains(r.log, want) {
			t.Errorf("boot with %s: no %q on the console:\n%s", r.initrd, want, consoleTail(r.log, 40))
		}
	}
	if strings.Contains(r.log, "Initramfs unpacking failed") {
		t.Errorf("boot with %s: the kernel could not unpack the initrd:\n%s", r.initrd, consoleLines(r.log, "nitramfs"))
	}
	return r.log
}

func consoleTail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func consoleLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// helloInImage returns the path of dkmsd_hello's module in the initrd's
// last-wins view, or "".
func helloInImage(t *testing.T, img *initrd.Image, bootKernel string) string {
	t.Helper()
	modDir, err := img.Resolve("lib/modules/" + bootKernel)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range img.Names(modDir) {
		if strings.HasPrefix(path.Base(n), "dkmsd_hello.ko") {
			return n
		}
	}
	return ""
}

// checkHelloInitrd reads the initrd and checks it holds the installed
// dkmsd_hello byte for byte, that modules.dep lists it and that
// conf/modules loads it.
func checkHelloInitrd(t *testing.T, root, bootKernel, initrdPath string) *initrd.Image {
	t.Helper()
	img, err := initrd.Read(initrdPath)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	n := helloInImage(t, img, bootKernel)
	if n == "" {
		t.Fatalf("%s has no dkmsd_hello module", initrdPath)
	}
	modDir := path.Dir(path.Dir(path.Dir(n)))
	rel := strings.TrimPrefix(n, modDir+"/")
	installed, err := os.ReadFile(filepath.Join(root, "lib/modules", bootKernel, rel))
	if err != nil {
		t.Fatalf("the installed module: %v", err)
	}
	if got, _ := img.Content(n); !bytes.Equal(got, installed) {
		t.Errorf("%s in the initrd differs from the installed module", n)
	}
	if dep, _ := img.Content(path.Join(modDir, "modules.dep")); !bytes.Contains(dep, []byte(rel+":")) {
		t.Errorf("modules.dep in the initrd does not list %s", rel)
	}
	if list, _ := img.Content("conf/modules"); !strings.Contains("\n"+string(list), "\ndkmsd_hello\n") {
		t.Errorf("conf/modules = %q, want a dkmsd_hello line", list)
	}
	return img
}

// TestBootQEMURealInitrdHello installs dkmsd_hello with the dkms command
// in a relocated root whose /etc/initramfs-tools/modules names it, and
// boots the cloud kernel under qemu with the initrd dkmsd made from the
// machine's own: appended (the default), then rewritten (dkms initrd
// --initrd-strategy=rewrite); the module must load in the initramfs. With
// the original initrd it must not. dkms uninstall must take it out of the
// initrd: after an append, by cutting the image back to its original
// bytes; after a rewrite, by rewriting it again.
func TestBootQEMURealInitrdHello(t *testing.T) {
	// Not t.Parallel: timing-bound (docs/testing.md, "Using both cores").
	bootKernel := requireBootKernel(t)
	testkit.RequireTool(t, "qemu-system-x86_64", "qemu-system-x86")
	bin := testkit.Binary(t, "dkms")
	original := "/boot/initrd.img-" + bootKernel

	// The original initrd boots meanwhile: without the module.
	originalBoot := startQEMU(t.Context(), bootKernel, original)
	root := bootRoot(t, bootKernel)
	img := filepath.Join(root, "boot", "initrd.img-"+bootKernel)
	copyBootFile(t, original, img)
	origData, err := os.ReadFile(original)
	if err != nil {
		t.Fatal(err)
	}

	out := dkmsOK(t, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel)
	if !strings.Contains(out, "Regenerated "+img+" (append") {
		t.Errorf("dkms install did not say it regenerated the initrd by appending:\n%s", out)
	}
	appended := checkHelloInitrd(t, root, bootKernel, img)
	if !bytes.HasPrefix(appended.Data, origData) || len(appended.Segments) != 2 {
		t.Errorf("append: %d segments; want the original image and one segment", len(appended.Segments))
	}
	if log := bootLog(t, startQEMU(t.Context(), bootKernel, img)); !strings.Contains(log, helloLoaded) {
		t.Errorf("appended initrd: no %q on the console:\n%s", helloLoaded, consoleLines(log, "dkmsd"))
	}

	// Uninstalling cuts the image back to the original bytes (dkmsd
	// recorded where they end); installing again appends the same segment.
	dkmsOK(t, bin, "--root", root, "uninstall", "dkmsd_hello/1.0", "-k", bootKernel)
	if got, _ := os.ReadFile(img); !bytes.Equal(got, origData) {
		t.Errorf("after dkms uninstall: %d bytes, want the original %d bytes back", len(got), len(origData))
	}
	dkmsOK(t, bin, "--root", root, "install", "dkmsd_hello/1.0", "-k", bootKernel)
	if got, _ := os.ReadFile(img); !bytes.Equal(got, appended.Data) {
		t.Errorf("after dkms install again: %d bytes, want the %d bytes of the first install", len(got), len(appended.Data))
	}

	out = dkmsOK(t, bin, "--root", root, "initrd", "-k", bootKernel, "--initrd-strategy=rewrite")
	if !strings.Contains(out, "(rewrite") {
		t.Errorf("dkms initrd --initrd-strategy=rewrite:\n%s", out)
	}
	rewritten := checkHelloInitrd(t, root, bootKernel, img)
	if len(rewritten.Segments) != 1 || bytes.HasPrefix(rewritten.Data, origData) {
		t.Errorf("rewrite: %d segments; want one new main archive", len(rewritten.Segments))
	}
	if log := bootLog(t, startQEMU(t.Context(), bootKernel, img)); !strings.Contains(log, helloLoaded) {
		t.Errorf("rewritten initrd: no %q on the console:\n%s", helloLoaded, consoleLines(log, "dkmsd"))
	}

	if log := bootLog(t, originalBoot); strings.Contains(log, helloLoaded) {
		t.Errorf("the original initrd loaded dkmsd_hello")
	}

	dkmsOK(t, bin, "--root", root, "uninstall", "dkmsd_hello/1.0", "-k", bootKernel)
	after, err := initrd.Read(img)
	if err != nil {
		t.Fatalf("Read after uninstall: %v", err)
	}
	if n := helloInImage(t, after, bootKernel); n != "" {
		t.Errorf("after dkms uninstall, the initrd still holds %s", n)
	}
	if _, ok := after.Lookup("usr/lib/modules/" + bootKernel + "/updates/dkms/dkmsd_hello.ko"); ok {
		t.Errorf("after dkms uninstall, Lookup still finds updates/dkms/dkmsd_hello.ko")
	}
	modDir, _ := after.Resolve("lib/modules/" + bootKernel)
	if dep, _ := after.Content(path.Join(modDir, "modules.dep")); bytes.Contains(dep, []byte("dkmsd_hello")) {
		t.Errorf("after dkms uninstall, modules.dep still lists dkmsd_hello")
	}
}
