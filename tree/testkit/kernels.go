package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/dkmsd/dkmsd/tree"
)

// The tests never name a Debian kernel ABI: the one they boot and the one
// they install with apt are discovered, so the suite survives Debian's next
// kernel update.

// CloudFlavour is the flavour of the kernel the tests boot under QEMU (it
// has virtio built in and boots in seconds) and install with apt.
const CloudFlavour = "cloud-amd64"

var (
	debianKernelPackage = regexp.MustCompile(`^linux-(image|headers)-(\d+\.\d+\.\d+-\d+)-([a-z0-9-]+?)(-unsigned)?$`)
	debianRelease       = regexp.MustCompile(`^\d+\.\d+\.\d+-\d+-(.+)$`)
)

// KernelOfPackage returns the kernel release a Debian kernel image or
// headers package is for ("linux-image-6.1.0-56-cloud-amd64" →
// "6.1.0-56-cloud-amd64", kind "image"); ok is false for metapackages,
// -dbg and -unsigned packages and anything else.
func KernelOfPackage(pkg string) (release, kind string, ok bool) {
	m := debianKernelPackage.FindStringSubmatch(pkg)
	if m == nil || m[4] != "" || strings.HasSuffix(m[3], "-dbg") || m[3] == "common" || strings.HasPrefix(m[3], "common-") {
		return "", "", false
	}
	return m[2] + "-" + m[3], m[1], true
}

// Flavour is a Debian kernel release's flavour: "cloud-amd64" for
// 6.1.0-56-cloud-amd64.
func Flavour(release string) string {
	if m := debianRelease.FindStringSubmatch(release); m != nil {
		return m[1]
	}
	return release
}

// releasesOf lists the releases of flavour for which every kind in kinds
// has a package in pkgs, newest first.
func releasesOf(pkgs []string, flavour string, kinds ...string) []string {
	have := map[string]map[string]bool{}
	for _, p := range pkgs {
		r, kind, ok := KernelOfPackage(strings.TrimSpace(p))
		if !ok || Flavour(r) != flavour {
			continue
		}
		if have[r] == nil {
			have[r] = map[string]bool{}
		}
		have[r][kind] = true
	}
	var out []string
	for r, k := range have {
		all := true
		for _, kind := range kinds {
			all = all && k[kind]
		}
		if all {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return tree.CompareVersions(out[i], out[j]) > 0 })
	return out
}

// NewestInstalledKernel picks the newest kernel of flavour whose image
// package is among installed (package names); the error says which
// package to install when there is none.
func NewestInstalledKernel(installed []string, flavour string) (string, error) {
	rs := releasesOf(installed, flavour, "image")
	if len(rs) == 0 {
		return "", fmt.Errorf("no linux-image-*-%s package is installed (apt-get install -y linux-image-%s)", flavour, flavour)
	}
	return rs[0], nil
}

// KernelToInstall picks a kernel of flavour that apt can install (image
// and headers among installable, package names) and that is not installed
// (its image package not among installed): the newest one older than the
// newest installed kernel of that flavour, so that installing it changes
// no default boot entry; when there is none older, the newest one. The
// error says what is missing.
func KernelToInstall(installed, installable []string, flavour string) (string, error) {
	have := map[string]bool{}
	for _, r := range releasesOf(installed, flavour, "image") {
		have[r] = true
	}
	for _, r := range releasesOf(installed, flavour, "headers") {
		have[r] = true
	}
	var candidates []string
	for _, r := range releasesOf(installable, flavour, "image", "headers") {
		if !have[r] {
			candidates = append(candidates, r)
		}
	}
	if len(candidates) == 0 {
		return "", fmt.Errorf("apt knows no linux-image-*-%[1]s with its linux-headers-*-%[1]s that is not installed already (apt-get update, with Debian 12's main and bookworm-security suites in /etc/apt/sources.list.d)", flavour)
	}
	newest, err := NewestInstalledKernel(installed, flavour)
	if err == nil {
		for _, r := range candidates {
			if tree.CompareVersions(r, newest) < 0 {
				return r, nil
			}
		}
	}
	return candidates[0], nil
}

// installedPackages lists the Debian packages dpkg has installed whose
// names match glob.
func installedPackages(t testing.TB, glob string) []string {
	t.Helper()
	RequireTool(t, "dpkg-query", "dpkg")
	out, _ := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n", glob).Output()
	var pkgs []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[0], "ii") {
			pkgs = append(pkgs, f[1])
		}
	}
	return pkgs
}

// BootKernel is the kernel the boot tests start under QEMU: the newest
// installed linux-image-*-cloud-amd64, with its image, initrd and headers.
func BootKernel(t testing.TB) string {
	t.Helper()
	k, err := NewestInstalledKernel(installedPackages(t, "linux-image-*"), CloudFlavour)
	if err != nil {
		Missing(t, err.Error())
	}
	for _, f := range []string{"/boot/vmlinuz-" + k, "/boot/initrd.img-" + k} {
		if _, err := os.Stat(f); err != nil {
			Missing(t, f+" (apt-get install --reinstall -y linux-image-"+k+")")
		}
	}
	if _, err := os.Stat("/lib/modules/" + k + "/build/include"); err != nil {
		Missing(t, "the headers of "+k+" (apt-get install -y linux-headers-"+k+")")
	}
	return k
}

// InstallableKernel is a cloud kernel the apt tests install and purge: one
// that apt can install with its headers and that is not installed (see
// KernelToInstall). It logs which.
func InstallableKernel(t testing.TB) string {
	t.Helper()
	RequireTool(t, "apt-cache", "apt")
	out, err := exec.Command("apt-cache", "search", "--names-only", `^linux-(image|headers)-[0-9.]+-[0-9]+-`+CloudFlavour+`$`).Output()
	if err != nil {
		t.Fatalf("apt-cache search: %v", err)
	}
	var available []string
	for _, l := range strings.Split(string(out), "\n") {
		if name, _, ok := strings.Cut(l, " - "); ok {
			available = append(available, name)
		}
	}
	installed := append(installedPackages(t, "linux-image-*"), installedPackages(t, "linux-headers-*")...)
	k, err := KernelToInstall(installed, available, CloudFlavour)
	if err != nil {
		Missing(t, err.Error())
	}
	t.Logf("kernel the test installs with apt and purges: %s (installable, not installed)", k)
	return k
}
