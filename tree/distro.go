package tree

import (
	"os"
	"strings"
	"unicode"
)

// Distro is the distribution family as dkms derives it from os-release:
// "ubuntu" when ID is ubuntu, else ID_LIKE's value, else ID (Linux Mint's
// ID_LIKE="ubuntu debian" is Ubuntu's family, Rocky's "rhel centos fedora"
// Red Hat's). framework.conf's distribution= replaces it.
type Distro string

// DistroRow is what one distribution family changes in dkms's behaviour.
// The rows are dkms 3.4.3's case statements on the family, gathered in one
// table (distroRows) instead of spread over the code that uses them.
type DistroRow struct {
	// Name names the row; Prefixes are the family strings it is for.
	Name     string
	Prefixes []string
	// DestLocation replaces every module's DEST_MODULE_LOCATION ("":
	// the module's own is kept).
	DestLocation string
	// HeadersPackage names the package holding a kernel's headers, for
	// the messages that say what to install ("" when unknown).
	HeadersPackage func(kernel string) string
	// SignTool is looked up on PATH first (Ubuntu's kmodsign); SignFile
	// is the sign-file tried next, {kernel} and {kbuild} (the kernel
	// minus its last dot component) replaced. The kernel's own
	// build/scripts/sign-file is the fallback of every row.
	SignTool, SignFile string
	// MOKKey and MOKCert are the distribution's own signing pair, under
	// the root ("": dkms's /var/lib/dkms/mok.key and mok.pub), made when
	// missing by KeyTool --new-key (Ubuntu's update-secureboot-policy).
	MOKKey, MOKCert, KeyTool string
	// PortageKeys: the key comes from Portage's MODULES_SIGN_KEY and
	// MODULES_SIGN_CERT (environment, then /etc/portage/make.conf), else
	// the kernel's CONFIG_MODULE_SIG_KEY (Gentoo).
	PortageKeys bool
	// Debian: the Debian family's hooks and messages apply.
	Debian bool
}

// distroRows are the families dkms 3.4.3 tells apart; the last row is
// every other distribution.
var distroRows = []DistroRow{
	{Name: "ubuntu", Prefixes: []string{"ubuntu"}, DestLocation: "/updates/dkms", HeadersPackage: prefixed("linux-headers-"),
		SignTool: "kmodsign", SignFile: "/usr/src/linux-headers-{kernel}/scripts/sign-file",
		MOKKey: "/var/lib/shim-signed/mok/MOK.priv", MOKCert: "/var/lib/shim-signed/mok/MOK.der", KeyTool: "update-secureboot-policy", Debian: true},
	{Name: "debian", Prefixes: []string{"debian"}, DestLocation: "/updates/dkms", HeadersPackage: prefixed("linux-headers-"),
		SignFile: "/usr/lib/linux-kbuild-{kbuild}/scripts/sign-file", Debian: true},
	{Name: "arch", Prefixes: []string{"arch"}, DestLocation: "/updates/dkms", HeadersPackage: archHeaders},
	{Name: "redhat", Prefixes: []string{"fedora", "centos", "rhel"}, DestLocation: "/extra", HeadersPackage: prefixed("kernel-devel-")},
	{Name: "suse", Prefixes: []string{"sles", "suse", "opensuse"}, DestLocation: "/updates", HeadersPackage: suseHeaders},
	{Name: "gentoo", Prefixes: []string{"gentoo"}, SignFile: "/usr/src/linux-{kernel}/scripts/sign-file", PortageKeys: true},
	{Name: "other"},
}

// Row is the distribution's row of the defaults table.
func (d Distro) Row() DistroRow {
	for _, r := range distroRows {
		if hasAnyPrefix(string(d), r.Prefixes...) {
			return r
		}
	}
	return distroRows[len(distroRows)-1]
}

// DistroRows lists the table, for documentation and tests.
func DistroRows() []DistroRow { return append([]DistroRow(nil), distroRows...) }

// ReadDistro reads os-release under root (etc/os-release, then
// usr/lib/os-release), falling back to the machine's when the root has
// none, so relocated test roots behave as the machine they run on.
func ReadDistro(root string) Distro {
	for _, f := range []string{root + "/etc/os-release", root + "/usr/lib/os-release", "/etc/os-release", "/usr/lib/os-release"} {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		return ParseOSRelease(string(data))
	}
	return "unknown"
}

// ParseOSRelease is dkms's family of an os-release text.
func ParseOSRelease(text string) Distro {
	vals := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok {
			vals[k] = strings.Trim(v, `"'`)
		}
	}
	switch {
	case vals["ID"] == "ubuntu":
		return "ubuntu"
	case vals["ID_LIKE"] != "":
		return Distro(vals["ID_LIKE"])
	default:
		return Distro(vals["ID"])
	}
}

// DestLocation applies the distribution's override of
// DEST_MODULE_LOCATION, as dkms does (Debian, Ubuntu and Arch install
// DKMS modules under /updates/dkms so they take precedence over in-tree
// ones); ADDON_MODULES_DIR in the environment overrides every row.
func (d Distro) DestLocation(raw string) string {
	if dir := os.Getenv("ADDON_MODULES_DIR"); dir != "" {
		return "/" + dir
	}
	if loc := d.Row().DestLocation; loc != "" {
		return loc
	}
	return raw
}

// HeadersPackage names the package that holds a kernel's headers on this
// distribution, for messages that tell the user what to install; "" when
// the distribution's naming is unknown.
func (d Distro) HeadersPackage(kernel string) string {
	if h := d.Row().HeadersPackage; h != nil {
		return h(kernel)
	}
	return ""
}

// Debian reports the Debian family (Debian, Ubuntu and derivatives).
func (d Distro) Debian() bool { return d.Row().Debian }

func prefixed(p string) func(string) string {
	return func(kernel string) string { return p + kernel }
}

// archHeaders: Arch's kernels name their flavour last (6.6.63-1-lts,
// 6.12.1-zen1-1-zen, 6.12.1-2-cachyos); the stock kernel (6.12.1-arch1-1)
// has none.
func archHeaders(kernel string) string {
	if f := flavour(kernel); f != "" {
		return "linux-" + f + "-headers"
	}
	return "linux-headers"
}

// suseHeaders: SUSE's kernel-<flavour>-devel (6.4.0-150600.23.7-default).
func suseHeaders(kernel string) string {
	if f := flavour(kernel); f != "" {
		return "kernel-" + f + "-devel"
	}
	return "kernel-default-devel"
}

// flavour is a kernel release's last dash component when it is a word.
func flavour(kernel string) string {
	i := strings.LastIndex(kernel, "-")
	if i < 0 {
		return ""
	}
	f := kernel[i+1:]
	if f == "" || strings.IndexFunc(f, func(r rune) bool { return !unicode.IsLetter(r) }) >= 0 {
		return ""
	}
	return f
}
