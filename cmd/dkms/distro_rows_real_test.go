package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

// TestDistroRowsRealHeaders: one build, made under Gentoo's os-release,
// signs with Portage's MODULES_SIGN_KEY and MODULES_SIGN_CERT; the built
// module is then installed under each distribution row's os-release, into
// that row's directory (the module's own /kernel/extra where the row has
// none), and a kernel without headers names that row's
// headers package.
func TestDistroRowsRealHeaders(t *testing.T) {
	b := ubuntuRoot(t)
	k := b.kernels[0]
	key, cert := b.path("portage/signing_key.pem"), b.path("portage/signing_key.x509")
	writeRootFile(t, b.root, "portage/.keep", "", 0o644)
	testkit.MustRun(t, "openssl", "req", "-new", "-x509", "-nodes", "-days", "365", "-subj", "/CN=Gentoo portage test key",
		"-newkey", "rsa:2048", "-keyout", key, "-outform", "DER", "-out", cert)
	writeRootFile(t, b.root, "etc/os-release", "NAME=Gentoo\nID=gentoo\n", 0o644)
	b.env = append(b.env, "MODULES_SIGN_KEY="+key, "MODULES_SIGN_CERT="+cert)
	b.cloneHello(t, "dkmsd_hello", "1.0", []string{`DEST_MODULE_LOCATION[0]="/kernel/extra"`}, nil)
	b.mustRun(t, "add", "dkmsd_hello/1.0")
	r := b.mustRun(t, "build", "dkmsd_hello/1.0", "-k", k)
	if !strings.Contains(r.Stdout, "Signing key: "+key+"\n") {
		t.Errorf("Gentoo build does not sign with MODULES_SIGN_KEY:\n%s", r.Stdout)
	}
	ko := onlyKo(t, b.path("var/lib/dkms/dkmsd_hello/1.0", k))
	if signer := strings.TrimSpace(testkit.MustRun(t, "modinfo", "-F", "signer", ko)); signer != "Gentoo portage test key" {
		t.Errorf("module signer %q, want Portage's key", signer)
	}
	// A kernel dir with no headers, for the advice each row gives.
	if err := os.MkdirAll(b.path("lib/modules/9.9.9-1"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ osRelease, dir, headers string }{
		{"ID=debian\n", "updates/dkms", "Please install the linux-headers-9.9.9-1 package"},
		{"ID=ubuntu\nID_LIKE=debian\n", "updates/dkms", "Please install the linux-headers-9.9.9-1 package"},
		{"ID=cachyos\nID_LIKE=arch\n", "updates/dkms", "Please install the linux-headers package"},
		{"ID=fedora\n", "extra", "Please install the kernel-devel-9.9.9-1 package"},
		{"ID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n", "updates", "Please install the kernel-default-devel package"},
		{"ID=gentoo\n", "kernel/extra", "Please install your distribution's kernel headers package matching 9.9.9-1"},
		{"ID=alpine\n", "kernel/extra", "Please install your distribution's kernel headers package matching 9.9.9-1"},
	} {
		writeRootFile(t, b.root, "etc/os-release", c.osRelease, 0o644)
		b.mustRun(t, "install", "dkmsd_hello/1.0", "-k", k, "--no-initrd")
		if got := onlyKo(t, b.path("lib/modules", k)); filepath.Dir(got) != b.path("lib/modules", k, c.dir) {
			t.Errorf("%q: installed as %s, want under %s", c.osRelease, got, c.dir)
		}
		b.mustRun(t, "uninstall", "dkmsd_hello/1.0", "-k", k, "--no-initrd")
		if r := b.run(t, "build", "dkmsd_hello/1.0", "-k", "9.9.9-1"); r.Code != 21 || !strings.Contains(r.Stderr, c.headers) {
			t.Errorf("%q: build without headers: exit %d, want 21 and %q:\n%s", c.osRelease, r.Code, c.headers, r.Stderr)
		}
	}
}
