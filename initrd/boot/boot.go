// Package boot starts a kernel with an initrd under QEMU — no disk, the
// serial console only — far enough for the probe initrd.Probe put in the
// image to load its modules, and reads from the console what the
// kernel's /proc/modules then said of them:
//
//	res, err := boot.Run(ctx, boot.Options{Kernel: "/boot/vmlinuz-K", Initrd: probe})
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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dkmsd/dkmsd/initrd"
)

// ErrNoQEMU: qemu-system-x86_64 is not installed.
var ErrNoQEMU = errors.New("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")

// Options say what to boot.
type Options struct {
	Kernel, Initrd string
	// Timeout bounds the boot (default 120 s).
	Timeout time.Duration
	// QEMU is the emulator (default qemu-system-x86_64 from PATH).
	QEMU string
}

// Result is what the console showed.
type Result struct {
	// Accel is kvm or tcg.
	Accel string
	// Reached: the probe loaded the modules and said what the kernel
	// holds, so a module it did not show is missing.
	Reached bool
	Took    time.Duration
	// Console is the serial console's text.
	Console string
	loaded  map[string]bool
	failed  map[string]string
}

// Loaded reports whether /proc/modules showed module name Live: loaded,
// its init function having returned 0 (a module whose init fails is
// unloaded again).
func (r *Result) Loaded(name string) bool { return r.loaded[Normalize(name)] }

// Failure is how module name's load failed ("" if it did not, or if the
// probe said nothing of it).
func (r *Result) Failure(name string) string { return r.failed[Normalize(name)] }

// Normalize is a module's name as the kernel spells it (dashes as
// underscores).
func Normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// The probe's lines: a module the kernel holds, with the rest of its
// /proc/modules line (size, references, users, state, address); a
// modprobe that failed; the end.
var (
	probeModuleRE = regexp.MustCompile(regexp.QuoteMeta(initrd.ProbeMarker) + ` module (\S+) \S+ \S+ \S+ (\S+)`)
	probeFailRE   = regexp.MustCompile(regexp.QuoteMeta(initrd.ProbeMarker) + ` modprobe (\S+): (exit \d+)`)
	probeEnd      = initrd.ProbeMarker + " end"
)

// stopMarkers end the boot without the probe having finished: the kernel
// panicked or powered off, or the initramfs stopped on the fallbacks the
// command line sets.
var stopMarkers = []string{
	"Kernel panic - not syncing", "reboot: Restarting system", "reboot: Power down",
	"Spawning shell within the initramfs", "Could not boot", "Entering emergency mode", "Refusing to continue",
}

// Cmdline is the kernel command line of a verification boot: the serial
// console; quiet (every console byte is an emulated port write); no
// timer check (it panics when a busy host emulates the timer late); a
// panic ending qemu (-no-reboot). The rest are fallbacks should the probe
// not run: the initramfs stops soon (initramfs-tools' break=premount,
// dracut giving up on a root device no disk provides) instead of
// waiting for a root device.
const Cmdline = "console=ttyS0 quiet panic=-1 no_timer_check break=premount root=/dev/dkmsd-verify-no-disk rd.shell=0 rd.retry=1 rd.timeout=5 rd.emergency=poweroff"

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
	var size int64
	for _, f := range []string{opts.Kernel, opts.Initrd} {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("boot: %w", err)
		}
		size = fi.Size()
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 120 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := &Result{Accel: Accel(), loaded: map[string]bool{}, failed: map[string]string{}}
	cmd := exec.CommandContext(ctx, bin, Args(res.Accel, opts.Kernel, opts.Initrd, size)...)
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
		return res, fmt.Errorf("the boot ended before the initramfs loaded the modules:\n%s", tail(res.Console, 20))
	}
	return res, nil
}

// Args are qemu's arguments for a boot of kernel with an initrd of
// initrdSize bytes. Each choice was measured (docs/testing.md, "dkms
// verify: where the time goes"): no default devices (no network card, whose option ROM the
// firmware would run; no disk, no display), the serial console alone;
// qboot, which jumps to the kernel where SeaBIOS probes devices; memory
// for the kernel, the initrd and the files it unpacks, not more (the
// kernel initialises every page it is given).
func Args(accel, kernel, initrd string, initrdSize int64) []string {
	args := []string{"-accel", accel, "-m", strconv.FormatInt(Memory(initrdSize), 10) + "M",
		"-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot"}
	if _, err := os.Stat(qboot); err == nil {
		args = append(args, "-bios", qboot)
	}
	return append(args, "-kernel", kernel, "-initrd", initrd, "-append", Cmdline)
}

// qboot is QEMU's minimal firmware (Debian's qemu-system-x86 ships it).
const qboot = "/usr/share/qemu/qboot.rom"

// Memory is the MiB a boot gets: 192 for the kernel and the probe, and
// room for the initrd six times over (held compressed while it is
// unpacked, a compressed image's files expanding to about four times its
// size).
func Memory(initrdSize int64) int64 {
	return 192 + 6*((initrdSize+1<<20-1)>>20)
}

// watch reads one console line and says whether the boot can stop.
func (r *Result) watch(line string) bool {
	if m := probeModuleRE.FindStringSubmatch(line); m != nil {
		n := Normalize(m[1])
		r.loaded[n] = m[2] == "Live"
		if m[2] != "Live" {
			r.failed[n] = "state " + m[2]
		}
	}
	if m := probeFailRE.FindStringSubmatch(line); m != nil {
		r.failed[Normalize(m[1])] = "modprobe " + m[2]
	}
	if strings.HasSuffix(strings.TrimSpace(line), probeEnd) {
		r.Reached = true
		return true
	}
	for _, mk := range stopMarkers {
		if strings.Contains(line, mk) {
			return true
		}
	}
	return false
}

func tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
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
