// Package boot starts a kernel with an initrd under QEMU — no disk, the
// serial console only — far enough for the initramfs to load its modules,
// and reads from the console which modules the kernel loaded (the
// module_load trace event and initcall_debug's return values, printed
// through tp_printk and ignore_loglevel):
//
//	res, err := boot.Run(ctx, boot.Options{Kernel: "/boot/vmlinuz-K", Initrd: "/boot/initrd.img-K"})
//	if errors.Is(err, boot.ErrNoQEMU) {
//		// cannot verify here
//	}
//	fmt.Println(res.Loaded("zfs"), res.Reached)
package boot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"
)

// ErrNoQEMU: qemu-system-x86_64 is not installed.
var ErrNoQEMU = errors.New("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")

// Options say what to boot.
type Options struct {
	Kernel, Initrd string
	// Cmdline is added to the kernel command line (dracut's
	// rd.driver.pre=, for instance).
	Cmdline string
	// Timeout bounds the boot (default 120 s).
	Timeout time.Duration
	// QEMU is the emulator (default qemu-system-x86_64 from PATH).
	QEMU string
}

// Result is what the console showed.
type Result struct {
	// Accel is kvm or tcg.
	Accel string
	// Reached: the initramfs got past loading its modules (its marker
	// was on the console), so a module not loaded by then is missing.
	Reached bool
	Took    time.Duration
	// Console is the serial console's text.
	Console string
	loaded  map[string]bool
	failed  map[string]string
}

// Loaded reports whether the kernel loaded module name and its init
// function, if it ran, returned 0.
func (r *Result) Loaded(name string) bool {
	n := Normalize(name)
	return r.loaded[n] && r.failed[n] == ""
}

// Failure is how module name's init failed ("" if it did not).
func (r *Result) Failure(name string) string { return r.failed[Normalize(name)] }

// Normalize is a module's name as the kernel spells it (dashes as
// underscores).
func Normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// endMarkers are console lines showing that the initramfs has loaded its
// modules: initramfs-tools stops at break=premount after load_modules;
// dracut gives up waiting for the root device (a root= no disk provides,
// rd.retry=1, rd.timeout=5) after its cmdline hook loaded rd.driver.pre
// and udev settled.
var endMarkers = []string{
	"Spawning shell within the initramfs",
	"Could not boot",
	"Entering emergency mode",
	"Refusing to continue",
}

// stopMarkers end the boot without it having got that far.
var stopMarkers = []string{"Kernel panic - not syncing", "reboot: Restarting system", "reboot: Power down"}

var (
	moduleLoadRE = regexp.MustCompile(`module_load: (\S+)`)
	initcallRE   = regexp.MustCompile(`initcall \S+ \[(\S+)\] returned (-?\d+)`)
)

// Cmdline is the kernel command line of a verification boot: the serial
// console; module loads and init results on it; the initramfs stopped
// once its modules are loaded (initramfs-tools' break=premount; dracut
// giving up on the root device soon, with no shell, powering off); a panic
// ending qemu (-no-reboot).
const Cmdline = "console=ttyS0 panic=-1 ignore_loglevel initcall_debug trace_event=module:module_load tp_printk break=premount root=/dev/dkmsd-verify-no-disk rd.shell=0 rd.retry=1 rd.timeout=5 rd.emergency=poweroff"

// Run boots opts.Kernel with opts.Initrd and watches the console.
func Run(ctx context.Context, opts Options) (*Result, error) {
	qemu := opts.QEMU
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	bin, err := exec.LookPath(qemu)
	if err != nil {
		return nil, ErrNoQEMU
	}
	for _, f := range []string{opts.Kernel, opts.Initrd} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("boot: %w", err)
		}
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 120 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := &Result{Accel: Accel(), loaded: map[string]bool{}, failed: map[string]string{}}
	cmdline := Cmdline
	if opts.Cmdline != "" {
		cmdline += " " + opts.Cmdline
	}
	cmd := exec.CommandContext(ctx, bin, "-accel", res.Accel, "-m", "768", "-nographic", "-no-reboot",
		"-kernel", opts.Kernel, "-initrd", opts.Initrd, "-append", cmdline)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", qemu, err)
	}
	var console strings.Builder
	var once sync.Once
	stop := func() { once.Do(cancel) }
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		console.WriteString(line)
		console.WriteByte('\n')
		if res.watch(line) {
			stop()
		}
	}
	werr := cmd.Wait()
	res.Took = time.Since(start)
	res.Console = console.String()
	if !res.Reached {
		if ctx.Err() == context.DeadlineExceeded {
			return res, fmt.Errorf("the boot did not get past loading modules within %s", timeout)
		}
		if werr != nil && ctx.Err() == nil {
			return res, fmt.Errorf("%s: %w", qemu, werr)
		}
	}
	return res, nil
}

// watch reads one console line and says whether the boot can stop. It
// waits for the end marker even when the modules wanted have loaded: an
// init function that fails is reported after the module's load.
func (r *Result) watch(line string) bool {
	if m := moduleLoadRE.FindStringSubmatch(line); m != nil {
		r.loaded[Normalize(m[1])] = true
	}
	if m := initcallRE.FindStringSubmatch(line); m != nil && m[2] != "0" {
		r.failed[Normalize(m[1])] = "init returned " + m[2]
	}
	for _, mk := range endMarkers {
		if strings.Contains(line, mk) {
			r.Reached = true
			return true
		}
	}
	for _, mk := range stopMarkers {
		if strings.Contains(line, mk) {
			return true
		}
	}
	return false
}

// Accel is kvm when /dev/kvm can be opened, tcg (emulation) otherwise.
func Accel() string {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	return "kvm"
}
