package testkit_test

import (
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree/testkit"
)

func TestKernelOfPackage(t *testing.T) {
	for _, tc := range []struct{ pkg, release, kind string }{
		{"linux-image-6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64", "image"},
		{"linux-headers-6.1.0-9-amd64", "6.1.0-9-amd64", "headers"},
		{"linux-image-6.1.0-56-rt-amd64", "6.1.0-56-rt-amd64", "image"},
		{"linux-image-6.1.0-56-cloud-amd64-unsigned", "", ""},
		{"linux-image-6.1.0-56-cloud-amd64-dbg", "", ""},
		{"linux-headers-6.1.0-56-common", "", ""},
		{"linux-headers-6.1.0-56-common-rt", "", ""},
		{"linux-image-cloud-amd64", "", ""},
		{"linux-image-amd64", "", ""},
	} {
		r, kind, ok := testkit.KernelOfPackage(tc.pkg)
		if r != tc.release || kind != tc.kind || ok != (tc.release != "") {
			t.Errorf("KernelOfPackage(%q) = %q, %q, %v; want %q, %q", tc.pkg, r, kind, ok, tc.release, tc.kind)
		}
	}
}

func TestNewestInstalledKernel(t *testing.T) {
	installed := []string{"linux-image-6.1.0-9-cloud-amd64", "linux-image-6.1.0-10-cloud-amd64", "linux-image-6.1.0-11-amd64",
		"linux-image-cloud-amd64", "linux-image-6.1.0-12-cloud-amd64-dbg", "linux-headers-6.1.0-12-cloud-amd64"}
	if k, err := testkit.NewestInstalledKernel(installed, "cloud-amd64"); err != nil || k != "6.1.0-10-cloud-amd64" {
		t.Errorf("NewestInstalledKernel = %q, %v; want 6.1.0-10-cloud-amd64 (10 > 9 numerically; headers, -dbg and other flavours are not images of it)", k, err)
	}
	_, err := testkit.NewestInstalledKernel([]string{"linux-image-6.1.0-11-amd64", "linux-headers-6.1.0-11-cloud-amd64"}, "cloud-amd64")
	if err == nil || !strings.Contains(err.Error(), "apt-get install -y linux-image-cloud-amd64") {
		t.Errorf("no cloud image installed: error %v, want one naming apt-get install -y linux-image-cloud-amd64", err)
	}
}

func TestKernelToInstall(t *testing.T) {
	pkgs := func(kinds string, abis ...string) []string {
		var out []string
		for _, a := range abis {
			for _, k := range strings.Fields(kinds) {
				out = append(out, "linux-"+k+"-6.1.0-"+a+"-cloud-amd64")
			}
		}
		return out
	}
	installed := append(pkgs("image headers", "56"), "linux-image-cloud-amd64", "linux-headers-6.1.0-56-amd64")
	for _, tc := range []struct {
		name                 string
		installed, available []string
		want, wantErr        string
	}{
		{"the newest older ABI", installed, pkgs("image headers", "47", "54", "55", "56"), "6.1.0-55-cloud-amd64", ""},
		{"numeric, not lexical, order", pkgs("image headers", "100"), pkgs("image headers", "99", "100", "9"), "6.1.0-99-cloud-amd64", ""},
		{"an older one without headers is passed over", installed, append(pkgs("image headers", "54"), pkgs("image", "55")...), "6.1.0-54-cloud-amd64", ""},
		{"an older one before a newer one", installed, pkgs("image headers", "55", "57"), "6.1.0-55-cloud-amd64", ""},
		{"only newer ones: the newest", installed, pkgs("image headers", "56", "57", "58"), "6.1.0-58-cloud-amd64", ""},
		{"nothing installed: the newest", nil, pkgs("image headers", "55", "56"), "6.1.0-56-cloud-amd64", ""},
		{"installed headers alone count as installed", append(installed, pkgs("headers", "55")...), pkgs("image headers", "54", "55"), "6.1.0-54-cloud-amd64", ""},
		{"other flavours are not candidates", installed, []string{"linux-image-6.1.0-55-amd64", "linux-headers-6.1.0-55-amd64", "linux-image-6.1.0-55-cloud-amd64-dbg"}, "", "apt knows no linux-image-*-cloud-amd64"},
		{"only the installed one", installed, pkgs("image headers", "56"), "", "apt-get update"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testkit.KernelToInstall(tc.installed, tc.available, "cloud-amd64")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("KernelToInstall = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("KernelToInstall = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestDiscoveredKernels runs the discovery on this machine: prereqs
// installs linux-image-cloud-amd64, and apt's lists hold older ABIs.
func TestDiscoveredKernels(t *testing.T) {
	boot := testkit.BootKernel(t)
	inst := testkit.InstallableKernel(t)
	if testkit.Flavour(boot) != testkit.CloudFlavour || testkit.Flavour(inst) != testkit.CloudFlavour || inst == boot {
		t.Errorf("boot kernel %s, installable kernel %s: want two different %s kernels", boot, inst, testkit.CloudFlavour)
	}
	t.Logf("boot kernel %s, installable kernel %s", boot, inst)
}
