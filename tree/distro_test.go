package tree

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDistroRows: each row of the defaults table, reached from a real
// distribution's os-release text as dkms 3.4.3 reads it, gives that
// distribution's module destination, headers package and signing
// defaults.
func TestDistroRows(t *testing.T) {
	t.Setenv("ADDON_MODULES_DIR", "")
	cases := []struct {
		row, osRelease, kernel  string
		dest, headers, signFile string
		key                     string
	}{
		{"ubuntu", "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n", "6.8.0-49-generic",
			"/updates/dkms", "linux-headers-6.8.0-49-generic", "/usr/src/linux-headers-{kernel}/scripts/sign-file", "/var/lib/shim-signed/mok/MOK.priv"},
		// Linux Mint is Ubuntu's family through ID_LIKE's first word.
		{"ubuntu", "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n", "6.8.0-49-generic",
			"/updates/dkms", "linux-headers-6.8.0-49-generic", "/usr/src/linux-headers-{kernel}/scripts/sign-file", "/var/lib/shim-signed/mok/MOK.priv"},
		{"debian", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n", "6.1.0-56-amd64",
			"/updates/dkms", "linux-headers-6.1.0-56-amd64", "/usr/lib/linux-kbuild-{kbuild}/scripts/sign-file", ""},
		{"arch", "NAME=\"Arch Linux\"\nID=arch\n", "6.12.1-arch1-1", "/updates/dkms", "linux-headers", "", ""},
		{"arch", "NAME=\"Manjaro Linux\"\nID=manjaro\nID_LIKE=arch\n", "6.6.63-1-lts", "/updates/dkms", "linux-lts-headers", "", ""},
		{"arch", "NAME=\"CachyOS Linux\"\nID=cachyos\nID_LIKE=arch\n", "6.12.1-2-cachyos", "/updates/dkms", "linux-cachyos-headers", "", ""},
		{"redhat", "NAME=\"Fedora Linux\"\nID=fedora\n", "6.11.4-301.fc41.x86_64", "/extra", "kernel-devel-6.11.4-301.fc41.x86_64", "", ""},
		{"redhat", "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n", "5.14.0-503.el9.x86_64", "/extra", "kernel-devel-5.14.0-503.el9.x86_64", "", ""},
		{"suse", "NAME=\"openSUSE Tumbleweed\"\nID=\"opensuse-tumbleweed\"\nID_LIKE=\"opensuse suse\"\n", "6.11.8-1-default", "/updates", "kernel-default-devel", "", ""},
		{"suse", "ID=\"sles\"\n", "6.4.0-150600.23.7-rt", "/updates", "kernel-rt-devel", "", ""},
		{"gentoo", "NAME=Gentoo\nID=gentoo\n", "6.6.62-gentoo-dist", "/kernel/extra", "", "/usr/src/linux-{kernel}/scripts/sign-file", ""},
		{"other", "NAME=\"Alpine Linux\"\nID=alpine\n", "6.6.62-0-lts", "/kernel/extra", "", "", ""},
	}
	for _, c := range cases {
		t.Run(c.row+"/"+c.kernel, func(t *testing.T) {
			d := ParseOSRelease(c.osRelease)
			r := d.Row()
			if r.Name != c.row {
				t.Fatalf("row of %q = %s, want %s", c.osRelease, r.Name, c.row)
			}
			if got := d.DestLocation("/kernel/extra"); got != c.dest {
				t.Errorf("DestLocation = %s, want %s", got, c.dest)
			}
			if got := d.HeadersPackage(c.kernel); got != c.headers {
				t.Errorf("HeadersPackage = %q, want %q", got, c.headers)
			}
			if r.SignFile != c.signFile || r.MOKKey != c.key {
				t.Errorf("signing = %q, %q; want %q, %q", r.SignFile, r.MOKKey, c.signFile, c.key)
			}
			if r.Name == "ubuntu" && (r.SignTool != "kmodsign" || r.KeyTool != "update-secureboot-policy" || r.MOKCert != "/var/lib/shim-signed/mok/MOK.der") {
				t.Errorf("ubuntu signs with %s, keys from %s, cert %s", r.SignTool, r.KeyTool, r.MOKCert)
			}
			if (r.Name == "gentoo") != r.PortageKeys {
				t.Errorf("PortageKeys = %v on %s", r.PortageKeys, r.Name)
			}
			if d.Debian() != (r.Name == "debian" || r.Name == "ubuntu") {
				t.Errorf("Debian() = %v on %s", d.Debian(), r.Name)
			}
		})
	}
	// Every row is reached by some case.
	seen := map[string]bool{}
	for _, c := range cases {
		seen[c.row] = true
	}
	for _, r := range DistroRows() {
		if !seen[r.Name] {
			t.Errorf("row %s has no case", r.Name)
		}
	}
}

// TestReadDistroFromRoot: os-release is read from the relocated root,
// /usr/lib/os-release when etc has none; framework.conf's distribution=
// replaces it.
func TestReadDistroFromRoot(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "usr/lib"), 0o755)
	os.WriteFile(filepath.Join(root, "usr/lib/os-release"), []byte("ID=arch\n"), 0o644)
	if d := ReadDistro(root); d != "arch" {
		t.Fatalf("ReadDistro = %q, want arch", d)
	}
	os.MkdirAll(filepath.Join(root, "etc/dkms"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/os-release"), []byte("ID=ubuntu\nID_LIKE=debian\n"), 0o644)
	if d := ReadDistro(root); d != "ubuntu" {
		t.Fatalf("ReadDistro = %q, want ubuntu", d)
	}
	os.WriteFile(filepath.Join(root, "etc/dkms/framework.conf"), []byte("distribution=fedora\n"), 0o644)
	fw, err := ReadFramework(t.Context(), filepath.Join(root, "etc/dkms"), "", nil, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if Distro(fw.Distribution).Row().Name != "redhat" {
		t.Fatalf("distribution=fedora gives row %s", Distro(fw.Distribution).Row().Name)
	}
}
