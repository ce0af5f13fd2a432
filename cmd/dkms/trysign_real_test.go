package main

// try_sign_modules inside and outside a real chroot.

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// chrootScript makes a chroot at $1 in a private mount namespace (the
// mounts vanish with it): the machine's /usr (and its /bin, /lib… links
// or dirs), /dev, /etc read-only, the dirs $BINDS at their own paths,
// /proc when $PROC=yes, an empty /tmp; then runs the rest of the command
// line inside it.
const chrootScript = `set -e
J=$1; shift
mkdir -p "$J/usr" "$J/dev" "$J/etc" "$J/proc" "$J/tmp"
chmod 1777 "$J/tmp"
for l in bin lib lib64 sbin; do
	if [ -L "/$l" ]; then ln -s "$(readlink "/$l")" "$J/$l"
	elif [ -d "/$l" ]; then mkdir -p "$J/$l"; mount --rbind "/$l" "$J/$l"; fi
done
mount --rbind /usr "$J/usr"
mount --rbind /dev "$J/dev"
mount --bind /etc "$J/etc"
mount -o remount,bind,ro "$J/etc"
for d in $BINDS; do mkdir -p "$J$d"; mount --bind "$d" "$J$d"; done
if [ "$PROC" = yes ]; then mount -t proc proc "$J/proc"; fi
exec chroot "$J" "$@"
`

// signRoot is a relocated root with dkmsd_hello for one kernel and
// framework.conf's try_sign_modules set to setting (none when "").
func signRoot(t *testing.T, k, setting string) string {
	t.Helper()
	root, err := filepath.EvalSymlinks(testkit.NewRoot(t, k))
	if err != nil {
		t.Fatal(err)
	}
	testkit.CopyModule(t, root, "dkmsd_hello-1.0")
	if setting != "" {
		writeRootFile(t, root, "etc/dkms/framework.conf", "try_sign_modules="+setting+"\n", 0o644)
	}
	return root
}

// signEnv is the environment dkms runs in here: the test's, less any MOK
// paths or signing settings it may carry, so the root's own key is the
// one generated or not.
func signEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch name, _, _ := strings.Cut(kv, "="); name {
		case "mok_signing_key", "mok_certificate", "sign_file", "try_sign_modules", "DKMSD_ROOT":
		default:
			env = append(env, kv)
		}
	}
	// testkit.Cmd puts the test process's environment first, where
	// TestMain set testkit.SignAnywhere: an empty value is the default.
	return append(env, "LC_ALL=C", "try_sign_modules=")
}

// TestTrySignModulesChrootRealHeaders builds dkmsd_hello with each
// try_sign_modules setting, outside and inside a real chroot (chroot(2)
// into a directory holding the machine's /usr, /dev and /etc, in a
// private mount namespace, with /proc mounted or not): by default
// (not_in_chroot) modules are signed outside and neither signed nor a MOK
// key made inside; "true" signs inside too; "false" never signs. The
// message says why, as dkms 3.4.3's does. (TestMain's SignAnywhere is
// cleared: these cases are about the default.)
func TestTrySignModulesChrootRealHeaders(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t)
	for tool, pkg := range map[string]string{"depmod": "kmod", "openssl": "openssl", "make": "make", "gcc": "gcc", "unshare": "util-linux", "chroot": "coreutils"} {
		testkit.RequireTool(t, tool, pkg)
	}
	k := testkit.Kernels(t, 1)[0]
	bin := testkit.Binary(t, "dkms")
	const (
		inChroot = "Running in chroot, modules won't be signed"
		disabled = "Module signing is disabled by policy, modules won't be signed"
	)
	for _, c := range []struct {
		name, setting string
		chroot, proc  bool
		signed        bool
		says, notSays string
	}{
		{name: "outside-default", signed: true, says: "Signing module ", notSays: inChroot},
		{name: "outside-false", setting: "false", says: disabled, notSays: "Sign command"},
		{name: "chroot-proc-default", chroot: true, proc: true, says: inChroot, notSays: "Sign command"},
		{name: "chroot-noproc-not_in_chroot", setting: "not_in_chroot", chroot: true, says: inChroot, notSays: "Sign command"},
		{name: "chroot-proc-true", setting: "true", chroot: true, proc: true, signed: true, says: "Signing module ", notSays: inChroot},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := signRoot(t, k, c.setting)
			argv := []string{bin, "--root", root, "build", "dkmsd_hello/1.0", "-k", k}
			env := signEnv()
			if c.chroot {
				jail := t.TempDir()
				argv = append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", chrootScript, "sh", jail}, argv...)
				env = append(env, "BINDS="+root+" "+filepath.Dir(bin))
				if c.proc {
					env = append(env, "PROC=yes")
				}
			} else {
				// Outside: dkms is the init of a pid namespace of its own,
				// which shares its root and mounts as a machine's init
				// does — so the case holds when the suite itself runs in a
				// chroot (a fresh debootstrap root).
				argv = append([]string{"unshare", "--pid", "--fork", "--mount-proc"}, argv...)
			}
			r := testkit.Cmd{Argv: argv, Env: env}.Run(t)
			if r.Code != 0 {
				t.Fatalf("dkms build: exit %d\n%s", r.Code, r.Out)
			}
			if !strings.Contains(r.Stdout, c.says) || strings.Contains(r.Out, c.notSays) {
				t.Errorf("output should say %q and not %q:\n%s", c.says, c.notSays, r.Out)
			}
			ko, err := os.ReadFile(filepath.Join(root, "var/lib/dkms/dkmsd_hello/1.0", k, machineArch(), "module/dkmsd_hello.ko"))
			if err != nil {
				t.Fatal(err)
			}
			if got := bytes.HasSuffix(ko, []byte("~Module signature appended~\n")); got != c.signed {
				t.Errorf("module signed = %v, want %v", got, c.signed)
			}
			for _, f := range []string{"mok.key", "mok.pub"} {
				if _, err := os.Stat(filepath.Join(root, "var/lib/dkms", f)); (err == nil) != c.signed {
					t.Errorf("%s exists = %v, want %v (a key is made only to sign)", f, err == nil, c.signed)
				}
			}
		})
	}
}
