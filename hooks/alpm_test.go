package hooks

import (
	"strings"
	"testing"
)

// TestAlpmTargets: pacman's targets become kernels and module versions,
// each once, whatever else the hook was given.
func TestAlpmTargets(t *testing.T) {
	in := "usr/lib/modules/6.12.1-arch1-1/build/include/\nusr/lib/modules/6.12.1-arch1-1/modules.order\n" +
		"usr/lib/modules/6.6.63-1-lts/build\nusr/src/nvidia-565.77/dkms.conf\nusr/src/zfs-2.2.7/dkms.conf\nusr/share/doc/x\n"
	op, tg, err := Alpm([]string{"install"}, strings.NewReader(in))
	if err != nil || op != Add {
		t.Fatalf("Alpm: %v, %v", op, err)
	}
	if got := strings.Join(tg.Kernels, " "); got != "6.6.63-1-lts 6.12.1-arch1-1" {
		t.Errorf("kernels %q", got)
	}
	var mods []string
	for _, m := range tg.Modules {
		mods = append(mods, m.Module+"/"+m.Version)
	}
	if got := strings.Join(mods, " "); got != "nvidia/565.77 zfs/2.2.7" {
		t.Errorf("modules %q", got)
	}
	if op, _, _ := Alpm([]string{"remove"}, strings.NewReader("")); op != Remove {
		t.Errorf("remove is %v", op)
	}
	if _, _, err := Alpm([]string{"upgrade"}, strings.NewReader("")); !IsUsage(err) {
		t.Errorf("unknown operation: %v, want a usage error", err)
	}
}
