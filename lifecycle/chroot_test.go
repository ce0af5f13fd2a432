package lifecycle

import "testing"

// TestChrootProbeDecision checks the order of the tests that tell a
// chroot (try_sign_modules=not_in_chroot): the real probe runs in a real
// chroot in cmd/dkms's TestTrySignModulesChrootRealHeaders.
func TestChrootProbeDecision(t *testing.T) {
	same, other := []byte("21 26 0:20 / /proc\n"), []byte("40 39 0:20 / /proc\n")
	for _, c := range []struct {
		name  string
		probe chrootProbe
		want  bool
	}{
		{"fakechroot", chrootProbe{fakechroot: true, initMounts: same, ownMounts: same, mountsRead: true}, true},
		{"mount tables differ", chrootProbe{initMounts: same, ownMounts: other, mountsRead: true, root: true, rootsRead: true}, true},
		// As ischroot: equal tables settle it, even when init's root
		// cannot be examined (a container whose init is not ours).
		{"mount tables equal, init's root unreadable", chrootProbe{initMounts: same, ownMounts: same, mountsRead: true, root: true}, false},
		{"no /proc, root", chrootProbe{root: true}, true},
		{"no mount tables, roots differ", chrootProbe{root: true, rootsRead: true, rootsDiffer: true}, true},
		{"no mount tables, same root", chrootProbe{root: true, rootsRead: true}, false},
		{"no /proc, not root", chrootProbe{}, false},
	} {
		if got := c.probe.inChroot(); got != c.want {
			t.Errorf("%s: inChroot = %v, want %v", c.name, got, c.want)
		}
	}
}
