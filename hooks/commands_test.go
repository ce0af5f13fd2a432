package hooks_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestHookCommandsExitCodes runs the hook commands as processes on a
// relocated root: what their protocol says to ignore (a kernel-install
// command they do not know, KERNEL_INSTALL_BYPASS, dpkg actions other than
// configure/remove) exits 0 and touches nothing; arguments their protocol
// does not have exit 2; a tree with no DKMS module is a quiet exit 0.
func TestHookCommandsExitCodes(t *testing.T) {
	bin := testkit.Binaries(t)
	const k = "6.1.0-55-cloud-amd64"
	image := "/boot/vmlinuz-" + k
	entry := "/boot/3d1219c7c4c5404aaa1f6d2a48adfda4/" + k
	for _, tc := range []struct {
		name    string
		env     []string
		argv    []string
		code    int
		touches bool // may create dkmsd's state in the root
	}{
		{"kernel-install unknown command", nil, []string{"dkmsd-kernel-install", "inspect", k, entry}, 0, false},
		{"kernel-install bypass", []string{"KERNEL_INSTALL_BYPASS=1"}, []string{"dkmsd-kernel-install", "add", k, entry, image}, 0, false},
		{"kernel-install no arguments", nil, []string{"dkmsd-kernel-install"}, 2, false},
		{"kernel-install add without kernel", nil, []string{"dkmsd-kernel-install", "add"}, 2, false},
		{"apt prerm on upgrade", []string{"DEB_MAINT_PARAMS=upgrade 6.1.192-2"}, []string{"dkmsd-apt", "prerm", k, image}, 0, false},
		{"apt postinst on abort-upgrade", []string{"DEB_MAINT_PARAMS=abort-upgrade 6.1.192-1"}, []string{"dkmsd-apt", "postinst", k, image}, 0, false},
		{"apt no arguments", nil, []string{"dkmsd-apt"}, 2, false},
		{"apt unknown phase", nil, []string{"dkmsd-apt", "postrm", k, image}, 2, false},
		{"apt postinst without kernel", nil, []string{"dkmsd-apt", "postinst"}, 2, false},
		{"dnf no arguments", nil, []string{"dkmsd-dnf"}, 2, false},
		{"dnf unknown flag", nil, []string{"dkmsd-dnf", "--kernel", "6.1.0-55.x86_64", "--bogus"}, 2, false},
		// Nothing to build: the hooks run, find no module, exit 0.
		{"apt header_postinst, no modules", nil, []string{"dkmsd-apt", "header_postinst", k}, 0, true},
		{"apt post-invoke, nothing pending", nil, []string{"dkmsd-apt", "post-invoke"}, 0, true},
		{"kernel-install add, no modules", nil, []string{"dkmsd-kernel-install", "add", k, entry, image}, 0, true},
		{"kernel-install remove, no modules", nil, []string{"dkmsd-kernel-install", "remove", k, entry}, 0, true},
		{"dnf, no modules", nil, []string{"dkmsd-dnf", "--kernel", "6.1.0-55.x86_64"}, 0, true},
	} {
		root := t.TempDir()
		argv := append([]string{filepath.Join(bin, tc.argv[0])}, tc.argv[1:]...)
		r := testkit.Cmd{Argv: argv, Env: append([]string{"DKMSD_ROOT=" + root}, tc.env...)}.Run(t)
		if r.Code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s", tc.name, r.Code, tc.code, r.Out)
		}
		if tc.code == 0 && !tc.touches {
			if left := testkit.Tree(t, root); len(left) > 0 {
				t.Errorf("%s: an ignored call wrote %v", tc.name, left)
			}
			if out := strings.TrimSpace(r.Out); out != "" {
				t.Errorf("%s: an ignored call printed %q", tc.name, out)
			}
		}
		if tc.code == 2 && !strings.Contains(r.Out, "usage") && !strings.Contains(r.Out, "flag") && !strings.Contains(r.Out, "unknown") {
			t.Errorf("%s: no usage message: %q", tc.name, r.Out)
		}
	}
}
