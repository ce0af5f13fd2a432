package lifecycle

import (
	"bytes"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// chrootProbe is what tells a chroot apart, as Debian's ischroot reads it.
type chrootProbe struct {
	// fakechroot: FAKECHROOT=true, FAKECHROOT_BASE set and libfakechroot
	// in LD_PRELOAD.
	fakechroot bool
	// initMounts and ownMounts are /proc/1/mountinfo and
	// /proc/self/mountinfo; mountsRead is false when either cannot be
	// read (no /proc).
	initMounts, ownMounts []byte
	mountsRead            bool
	// root: the process is root, so /proc/1/root can be examined;
	// rootsDiffer is whether it and / are different directories (device
	// and inode), rootsRead false when either could not be examined.
	root, rootsDiffer, rootsRead bool
}

// inChroot decides, in ischroot's order: fakechroot; then, when both
// mount tables can be read, whether they differ (a chroot, or another
// mount namespace, shows other mounts than init does) — equal tables
// settle it; then, for root only, whether init's root directory is
// another one, where one that cannot be examined (no /proc mounted, as in
// a bare chroot) counts as a chroot.
func (p chrootProbe) inChroot() bool {
	switch {
	case p.fakechroot:
		return true
	case p.mountsRead:
		return !bytes.Equal(p.initMounts, p.ownMounts)
	case p.root:
		return !p.rootsRead || p.rootsDiffer
	}
	return false
}

// probeChroot reads the probe of the running process, whose environment
// is environ.
func probeChroot(environ []string) chrootProbe {
	var p chrootProbe
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	_, baseSet := env["FAKECHROOT_BASE"]
	p.fakechroot = env["FAKECHROOT"] == "true" && baseSet && strings.Contains(env["LD_PRELOAD"], "libfakechroot.so")
	initMounts, err1 := os.ReadFile("/proc/1/mountinfo")
	ownMounts, err2 := os.ReadFile("/proc/self/mountinfo")
	if err1 == nil && err2 == nil {
		p.initMounts, p.ownMounts, p.mountsRead = initMounts, ownMounts, true
	}
	if os.Geteuid() == 0 {
		p.root = true
		var initRoot, ownRoot unix.Stat_t
		if unix.Stat("/proc/1/root", &initRoot) == nil && unix.Stat("/", &ownRoot) == nil {
			p.rootsRead = true
			p.rootsDiffer = initRoot.Dev != ownRoot.Dev || initRoot.Ino != ownRoot.Ino
		}
	}
	return p
}
