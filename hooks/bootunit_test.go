package hooks_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// upstreamUnitOrdering is the [Unit] ordering of dkms 3.4.3's
// dkms.service, which the test shows makes the cycle dkmsd's unit avoids.
const upstreamUnitOrdering = "Before=network-pre.target graphical.target"

// TestBootUnitNoOrderingCycleWithCloudInit enables dkmsd.service next to
// Debian 12's cloud-init units (unpacked from the package, enabled as
// its postinst enables them) on a machine networked by systemd-networkd
// and on one networked by ifupdown, and has systemd-analyze verify the
// boot transaction (multi-user.target). dkmsd's unit gives no ordering
// cycle; the same unit ordered as dkms 3.4.3's does, so the check can
// fail.
func TestBootUnitNoOrderingCycleWithCloudInit(t *testing.T) {
	testkit.RequireTool(t, "systemd-analyze", "systemd")
	cloudInit := testkit.UnpackedPackage(t, "cloud-init")
	ifupdown := testkit.UnpackedPackage(t, "ifupdown")
	unit := repoFile(t, "dist/systemd/dkmsd.service")
	for _, line := range strings.Split(unit, "\n") {
		if !strings.HasPrefix(line, "#") && strings.Contains(line, "network-pre.target") {
			t.Errorf("dkmsd.service: %q: no ordering against, nor pulling in, network-pre.target", line)
		}
	}
	upstream := strings.Replace(unit, "Before=graphical.target display-manager.service", upstreamUnitOrdering, 1)
	if upstream == unit {
		t.Fatal("dkmsd.service has no Before= line to swap for upstream's")
	}
	for _, network := range []struct {
		name string
		// enabled maps a target's .wants directory to the units it pulls
		// in; units are found in from, else the machine's systemd.
		enabled map[string][]string
		from    string
	}{
		{"systemd-networkd", map[string][]string{
			"multi-user.target":     {"systemd-networkd.service"},
			"network-online.target": {"systemd-networkd-wait-online.service"},
		}, ""},
		{"ifupdown", map[string][]string{
			"multi-user.target":     {"networking.service"},
			"network-online.target": {"networking.service"},
		}, filepath.Join(ifupdown, "lib/systemd/system")},
	} {
		for _, u := range []struct{ name, text string }{{"dkmsd", unit}, {"dkms-3.4.3-ordering", upstream}} {
			dir := t.TempDir()
			copyUnits(t, filepath.Join(cloudInit, "lib/systemd/system"), dir)
			if network.from != "" {
				copyUnits(t, network.from, dir)
			}
			if err := os.WriteFile(filepath.Join(dir, "dkmsd.service"), []byte(u.text), 0o644); err != nil {
				t.Fatal(err)
			}
			enable(t, dir, "cloud-init.target", "cloud-init-local.service", "cloud-init.service", "cloud-config.service", "cloud-final.service")
			enable(t, dir, "multi-user.target", "cloud-init.target", "dkmsd.service")
			for target, units := range network.enabled {
				enable(t, dir, target, units...)
			}
			r := testkit.Cmd{Argv: []string{"systemd-analyze", "verify", "multi-user.target"},
				Env: []string{"SYSTEMD_UNIT_PATH=" + dir + ":/lib/systemd/system"}}.Run(t)
			cycle := strings.Contains(r.Out, "ordering cycle")
			switch {
			case u.name == "dkmsd" && cycle:
				t.Errorf("%s, %s: systemd-analyze verify finds an ordering cycle:\n%s", network.name, u.name, r.Out)
			case u.name != "dkmsd" && !cycle:
				t.Errorf("%s, %s: no ordering cycle found; the check cannot tell a cyclic unit:\n%s", network.name, u.name, r.Out)
			}
		}
	}
}

// copyUnits copies the unit files of from into dir.
func copyUnits(t *testing.T, from, dir string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() {
			data, err := os.ReadFile(filepath.Join(from, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// enable links units into dir/<target>.wants, as systemctl enable does.
func enable(t *testing.T, dir, target string, units ...string) {
	t.Helper()
	wants := filepath.Join(dir, target+".wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		src := filepath.Join(dir, u)
		if _, err := os.Stat(src); err != nil {
			src = filepath.Join("/lib/systemd/system", u)
		}
		if err := os.Symlink(src, filepath.Join(wants, u)); err != nil {
			t.Fatal(err)
		}
	}
}
