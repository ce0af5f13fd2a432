package hooks_test

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/hooks"
)

// env is a getenv over a fixed set of variables.
func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

// want is what a protocol parser should return: a request (ok) or nothing
// to do (!ok), or a usage error.
type want struct {
	req   hooks.Request
	ok    bool
	usage bool
}

func checkParse(t *testing.T, name string, got hooks.Request, ok bool, err error, w want) {
	t.Helper()
	if w.usage {
		if err == nil || !hooks.IsUsage(err) {
			t.Errorf("%s: err = %v, want a usage error", name, err)
		}
		return
	}
	if err != nil {
		t.Errorf("%s: unexpected error %v", name, err)
		return
	}
	if ok != w.ok {
		t.Errorf("%s: ok = %v, want %v", name, ok, w.ok)
		return
	}
	if ok && got != w.req {
		t.Errorf("%s:\n got %+v\nwant %+v", name, got, w.req)
	}
}

func TestKernelInstallArguments(t *testing.T) {
	const k = "6.1.0-55-cloud-amd64"
	entry := "/boot/3d1219c7c4c5404aaa1f6d2a48adfda4/" + k
	image := "/boot/vmlinuz-" + k
	add := func(initrdFollows bool) want {
		return want{ok: true, req: hooks.Request{Action: hooks.Add, Kernel: k, Hook: "kernel-install", InitrdFollows: initrdFollows}}
	}
	remove := want{ok: true, req: hooks.Request{Action: hooks.Remove, Kernel: k, Hook: "kernel-install"}}
	for _, tc := range []struct {
		name string
		args []string
		env  func(string) string
		want want
	}{
		// Debian 12: no install.conf, so no initrd generator: the initrd in
		// /boot is ours to update.
		{"add, no generator", []string{"add", k, entry, image}, env(), add(false)},
		// A generator (50-dracut) runs after 40-dkmsd and makes the initrd.
		{"add, generator, no initrd given", []string{"add", k, entry, image}, env("KERNEL_INSTALL_INITRD_GENERATOR", "dracut"), add(true)},
		// Initrds given on the command line: no generator will run.
		{"add, generator, initrd given", []string{"add", k, entry, image, "/boot/initrd.img-" + k}, env("KERNEL_INSTALL_INITRD_GENERATOR", "dracut"), add(false)},
		{"add, initrd given, no generator", []string{"add", k, entry, image, "/tmp/a", "/tmp/b"}, env(), add(false)},
		// A UKI carries its own initrd: never touch one.
		{"add, uki", []string{"add", k, entry, image}, env("KERNEL_INSTALL_IMAGE_TYPE", "uki"), add(true)},
		{"add, uki with initrd", []string{"add", k, entry, image, "/boot/initrd.img-" + k}, env("KERNEL_INSTALL_IMAGE_TYPE", "uki"), add(true)},
		{"add, other image type", []string{"add", k, entry, image}, env("KERNEL_INSTALL_IMAGE_TYPE", "pe"), add(false)},
		// Environment kernel-install always sets must not change anything.
		{"add, full environment", []string{"add", k, entry, image}, env(
			"KERNEL_INSTALL_MACHINE_ID", "3d1219c7c4c5404aaa1f6d2a48adfda4",
			"KERNEL_INSTALL_ENTRY_TOKEN", "3d1219c7c4c5404aaa1f6d2a48adfda4",
			"KERNEL_INSTALL_BOOT_ROOT", "/boot",
			"KERNEL_INSTALL_LAYOUT", "other",
			"KERNEL_INSTALL_INITRD_GENERATOR", "",
			"KERNEL_INSTALL_STAGING_AREA", "/tmp/kernel-install.staging.x",
			"KERNEL_INSTALL_VERBOSE", "1"), add(false)},
		{"remove", []string{"remove", k, entry}, env(), remove},
		{"remove without entry dir", []string{"remove", k}, env(), remove},
		{"remove, uki", []string{"remove", k, entry}, env("KERNEL_INSTALL_IMAGE_TYPE", "uki"), remove},
		{"remove, generator", []string{"remove", k, entry}, env("KERNEL_INSTALL_INITRD_GENERATOR", "dracut"), remove},
		// Commands kernel-install may grow: nothing to do, exit 0.
		{"unknown command", []string{"inspect", k, entry}, env(), want{ok: false}},
		{"unknown command add-all", []string{"add-all", k}, env(), want{ok: false}},
		{"no arguments", nil, env(), want{usage: true}},
		{"add without kernel", []string{"add"}, env(), want{usage: true}},
	} {
		req, ok, err := hooks.KernelInstall(tc.args, tc.env)
		checkParse(t, tc.name, req, ok, err, tc.want)
	}
}

func TestDebianKernelHookArguments(t *testing.T) {
	const k = "6.1.0-55-cloud-amd64"
	image := "/boot/vmlinuz-" + k
	req := func(a hooks.Action, phase string, initrdFollows, deferSummary bool) want {
		return want{ok: true, req: hooks.Request{Action: a, Kernel: k, Hook: "debian-" + phase, InitrdFollows: initrdFollows, DeferSummary: deferSummary}}
	}
	inDpkg := func(kv ...string) func(string) string {
		return env(append([]string{"DPKG_MAINTSCRIPT_PACKAGE", "linux-image-" + k, "DPKG_MAINTSCRIPT_NAME", "postinst"}, kv...)...)
	}
	for _, tc := range []struct {
		name  string
		phase string
		args  []string
		env   func(string) string
		want  want
	}{
		// Image postinst, fresh install: "configure " with an empty old
		// version. initramfs-tools' hook follows ours.
		{"postinst fresh install", "postinst", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "configure "), req(hooks.Add, "postinst", true, true)},
		{"postinst upgrade", "postinst", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "configure 6.1.192-1"), req(hooks.Add, "postinst", true, true)},
		// installkernel (make install): no DEB_MAINT_PARAMS, no dpkg: the
		// summary is reported at once.
		{"postinst from installkernel", "postinst", []string{k, image}, env(), req(hooks.Add, "postinst", true, false)},
		{"postinst, dpkg, apt hook off", "postinst", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "configure ", "DKMSD_APT_HOOK", "off"), req(hooks.Add, "postinst", true, false)},
		{"postinst, extra spaces", "postinst", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "  configure   6.1.192-1 "), req(hooks.Add, "postinst", true, true)},
		// Maintainer-script actions other than configure: nothing to do.
		{"postinst abort-upgrade", "postinst", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "abort-upgrade 6.1.192-1"), want{ok: false}},
		{"postinst abort-remove", "postinst", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "abort-remove"), want{ok: false}},
		{"postinst triggered", "postinst", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "triggered /usr/lib/x"), want{ok: false}},
		// linux-headers' perl postinst: KVER only, no DEB_MAINT_PARAMS; the
		// initrd (already made by the image) is ours to update.
		{"header_postinst", "header_postinst", []string{k}, env("DPKG_MAINTSCRIPT_PACKAGE", "linux-headers-"+k), req(hooks.Add, "header_postinst", false, true)},
		{"header_postinst alone", "header_postinst", []string{k}, env(), req(hooks.Add, "header_postinst", false, false)},
		// An image path is tolerated (installkernel-like callers).
		{"header_postinst with image", "header_postinst", []string{k, image}, env(), req(hooks.Add, "header_postinst", false, false)},
		{"prerm remove", "prerm", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "remove"), req(hooks.Remove, "prerm", false, true)},
		{"prerm without DEB_MAINT_PARAMS", "prerm", []string{k, image}, env(), req(hooks.Remove, "prerm", false, false)},
		// An upgrade of the same ABI keeps the kernel: nothing to remove.
		{"prerm upgrade", "prerm", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "upgrade 6.1.192-2"), want{ok: false}},
		{"prerm failed-upgrade", "prerm", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "failed-upgrade 6.1.192-2"), want{ok: false}},
		{"prerm deconfigure", "prerm", []string{k, image}, inDpkg("DEB_MAINT_PARAMS", "deconfigure in-favour x 1"), want{ok: false}},
		{"no kernel", "postinst", nil, env(), want{usage: true}},
		{"empty kernel", "header_postinst", []string{""}, env(), want{usage: true}},
		{"unknown phase", "postrm", []string{k, image}, env(), want{usage: true}},
		// preinst: an in-place upgrade marks the kernel for a rebuild; a
		// first install (or a reinstall after remove) has nothing built.
		{"preinst upgrade", "preinst", []string{k, image}, env("DPKG_MAINTSCRIPT_PACKAGE", "linux-image-"+k, "DEB_MAINT_PARAMS", "upgrade 6.1.192-1"), req(hooks.Reinstall, "preinst", false, true)},
		{"preinst without DEB_MAINT_PARAMS", "preinst", []string{k, image}, env(), req(hooks.Reinstall, "preinst", false, false)},
		{"preinst install", "preinst", []string{k, image}, env("DPKG_MAINTSCRIPT_PACKAGE", "linux-image-"+k, "DEB_MAINT_PARAMS", "install"), want{ok: false}},
		{"preinst abort-upgrade", "preinst", []string{k, image}, env("DPKG_MAINTSCRIPT_PACKAGE", "linux-image-"+k, "DEB_MAINT_PARAMS", "abort-upgrade 6.1.192-2"), want{ok: false}},
	} {
		if tc.want.ok && len(tc.args) > 1 {
			tc.want.req.Image = tc.args[1] // passed on: preinst compares it with the postinst's
		}
		r, ok, err := hooks.DebianKernelHook(tc.phase, tc.args, tc.env)
		checkParse(t, tc.name, r, ok, err, tc.want)
	}
}

func TestDnfArguments(t *testing.T) {
	const k = "6.1.0-55.x86_64"
	add := want{ok: true, req: hooks.Request{Action: hooks.Add, Kernel: k, Hook: "dnf"}}
	remove := want{ok: true, req: hooks.Request{Action: hooks.Remove, Kernel: k, Hook: "dnf"}}
	for _, tc := range []struct {
		name string
		args []string
		want want
	}{
		{"kernel", []string{"--kernel", k}, add},
		{"kernel=", []string{"--kernel=" + k}, add},
		{"single dash", []string{"-kernel", k}, add},
		{"remove", []string{"--kernel", k, "--remove"}, remove},
		{"remove first", []string{"--remove", "--kernel", k}, remove},
		{"no arguments", nil, want{usage: true}},
		{"kernel without value", []string{"--kernel"}, want{usage: true}},
		{"empty kernel", []string{"--kernel", ""}, want{usage: true}},
		{"remove only", []string{"--remove"}, want{usage: true}},
		{"unknown flag", []string{"--kernel", k, "--frobnicate"}, want{usage: true}},
		// An unsubstituted variable is a dnf problem, but must not be taken
		// for a flag.
		{"positional only", []string{k}, want{usage: true}},
	} {
		req, err := hooks.Dnf(tc.args, io.Discard)
		checkParse(t, tc.name, req, err == nil, err, tc.want)
	}
}

// repoFile reads a file of the repository (dist/…).
func repoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDnfActionFilesParse substitutes the variables of dist/dnf/dkmsd.action
// (dnf 4: ${ver}-${rel}.${arch}) and dist/dnf5/dkmsd.actions (dnf 5:
// ${pkg.*}) as each plugin would, splits the command as the plugin runs it
// (a shell; dnf 5 at spaces) and checks that hooks.Dnf reads what each line
// means: kernel-devel and kernel-core in → add, kernel-core out → remove.
func TestDnfActionFilesParse(t *testing.T) {
	const k = "6.1.0-55.x86_64"
	type line struct{ filter, direction, command string }
	parse := func(file string, fields int, pick func([]string) line) []line {
		var out []line
		for _, l := range strings.Split(repoFile(t, file), "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			f := strings.SplitN(l, ":", fields)
			if len(f) != fields {
				t.Fatalf("%s: bad line %q", file, l)
			}
			out = append(out, pick(f))
		}
		return out
	}
	dnf4 := parse("dist/dnf/dkmsd.action", 3, func(f []string) line { return line{f[0], f[1], f[2]} })
	dnf5 := parse("dist/dnf5/dkmsd.actions", 5, func(f []string) line {
		if f[0] != "post_transaction" {
			t.Errorf("dnf5 callback %q, want post_transaction", f[0])
		}
		if f[3] != "raise_error=0" {
			t.Errorf("dnf5 options %q: a failed module must never fail dnf", f[3])
		}
		return line{f[1], f[2], f[4]}
	})
	subst4 := strings.NewReplacer("${ver}", "6.1.0", "${rel}", "55", "${arch}", "x86_64")
	subst5 := strings.NewReplacer("${pkg.version}", "6.1.0", "${pkg.release}", "55", "${pkg.arch}", "x86_64")
	for _, set := range []struct {
		name  string
		lines []line
		subst *strings.Replacer
	}{{"dnf4", dnf4, subst4}, {"dnf5", dnf5, subst5}} {
		seen := map[string]hooks.Action{}
		for _, l := range set.lines {
			argv := strings.Fields(set.subst.Replace(l.command))
			if len(argv) == 0 || argv[0] != "/usr/libexec/dkmsd/dkmsd-dnf" {
				t.Errorf("%s: %q does not run /usr/libexec/dkmsd/dkmsd-dnf", set.name, l.command)
				continue
			}
			if strings.Contains(strings.Join(argv, " "), "$") {
				t.Errorf("%s: %q keeps a variable its plugin does not substitute", set.name, l.command)
			}
			req, err := hooks.Dnf(argv[1:], io.Discard)
			if err != nil {
				t.Errorf("%s: %q: %v", set.name, l.command, err)
				continue
			}
			if req.Kernel != k {
				t.Errorf("%s: %q: kernel %q, want %q", set.name, l.command, req.Kernel, k)
			}
			seen[l.filter+":"+l.direction] = req.Action
		}
		wantSeen := map[string]hooks.Action{"kernel-devel:in": hooks.Add, "kernel-core:in": hooks.Add, "kernel-core:out": hooks.Remove}
		for key, a := range wantSeen {
			if seen[key] != a {
				t.Errorf("%s: %s → %q, want %q (lines %+v)", set.name, key, seen[key], a, set.lines)
			}
		}
		// kernel-devel and kernel-core of one kernel in one transaction
		// give the same command, which dnf 4 runs once.
		cmds := map[string]int{}
		for _, l := range set.lines {
			if l.direction == "in" {
				cmds[set.subst.Replace(l.command)]++
			}
		}
		if len(cmds) != 1 {
			t.Errorf("%s: the 'in' lines differ after substitution (%v): dnf would run the hook more than once", set.name, cmds)
		}
	}
}

// TestDistHookScripts checks the shell wrappers and the apt hook: each
// Debian wrapper sits in a run-parts-valid name and execs dkmsd-apt with
// its own phase and run-parts' arguments; the kernel-install plugin is
// named *.install and passes its arguments through; apt's Post-Invoke
// runs "dkmsd-apt post-invoke" and cannot fail apt.
func TestDistHookScripts(t *testing.T) {
	runParts := regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	for _, phase := range []string{"preinst", "postinst", "header_postinst", "prerm"} {
		rel := "dist/kernel/" + phase + ".d/dkmsd"
		if !runParts.MatchString(filepath.Base(rel)) {
			t.Errorf("%s: run-parts would skip this name", rel)
		}
		text := repoFile(t, rel)
		if !strings.HasPrefix(text, "#!/bin/sh\n") {
			t.Errorf("%s: no #!/bin/sh line", rel)
		}
		want := "exec /usr/libexec/dkmsd/dkmsd-apt " + phase + ` "$@"`
		if !strings.Contains(text, want) {
			t.Errorf("%s: no %q in\n%s", rel, want, text)
		}
		if !strings.Contains(text, "[ -x /usr/libexec/dkmsd/dkmsd-apt ] || exit 0") {
			t.Errorf("%s: must exit 0 when dkmsd is uninstalled but the hook is left (conffile)", rel)
		}
	}
	ki := repoFile(t, "dist/kernel-install/40-dkmsd.install")
	if !strings.Contains(ki, `exec /usr/libexec/dkmsd/dkmsd-kernel-install "$@"`) {
		t.Errorf("40-dkmsd.install does not pass its arguments to dkmsd-kernel-install:\n%s", ki)
	}
	apt := repoFile(t, "dist/apt/95dkmsd")
	if !strings.Contains(apt, "DPkg::Post-Invoke") || !strings.Contains(apt, "/usr/libexec/dkmsd/dkmsd-apt post-invoke || true") {
		t.Errorf("95dkmsd: want a DPkg::Post-Invoke running dkmsd-apt post-invoke that never fails:\n%s", apt)
	}
}
