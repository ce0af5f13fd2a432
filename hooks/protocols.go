package hooks

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// UsageError is a hook called with arguments its protocol does not have.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// KernelInstall reads systemd kernel-install's plugin arguments:
// "add KVER ENTRY_DIR IMAGE [INITRD…]" or "remove KVER [ENTRY_DIR]".
// ok is false for commands a plugin should ignore (kernel-install may grow
// new ones); the plugin then exits 0 — never 77, which would make
// kernel-install skip the initrd and boot-entry plugins after it.
func KernelInstall(args []string, getenv func(string) string) (req Request, ok bool, err error) {
	if len(args) > 0 && args[0] != "add" && args[0] != "remove" {
		return Request{}, false, nil
	}
	if len(args) < 2 {
		return Request{}, false, &UsageError{"usage: 40-dkmsd.install add|remove KERNEL-VERSION [ENTRY-DIR [KERNEL-IMAGE [INITRD…]]]"}
	}
	req = Request{Kernel: args[1], Hook: "kernel-install"}
	switch args[0] {
	case "add":
		req.Action = Add
		// A later plugin (50-dracut) makes the initrd when kernel-install
		// generates one itself; otherwise the image exists and is updated
		// here.
		req.InitrdFollows = getenv("KERNEL_INSTALL_INITRD_GENERATOR") != "" && len(args) <= 4
	case "remove":
		req.Action = Remove
	default:
		return Request{}, false, nil
	}
	if getenv("KERNEL_INSTALL_IMAGE_TYPE") == "uki" && req.Action == Add {
		// A unified kernel image carries its own signed initrd: build the
		// modules, but never touch an initrd.
		req.InitrdFollows = true
	}
	return req, true, nil
}

// DebianKernelHook reads the arguments of a hook in /etc/kernel/<phase>.d
// (run-parts passes KVER and, except for header_postinst, the image path;
// DEB_MAINT_PARAMS holds the maintainer script's own arguments).
func DebianKernelHook(phase string, args []string, getenv func(string) string) (req Request, ok bool, err error) {
	if len(args) < 1 || args[0] == "" {
		return Request{}, false, &UsageError{fmt.Sprintf("usage: /etc/kernel/%s.d/dkmsd KERNEL-VERSION [IMAGE]", phase)}
	}
	req = Request{Kernel: args[0], Hook: "debian-" + phase}
	if len(args) > 1 {
		req.Image = args[1]
	}
	inDpkg := getenv("DPKG_MAINTSCRIPT_PACKAGE") != ""
	// Inside dpkg the apt Post-Invoke hook ends the transaction with one
	// summary; alone (make install, dpkg -i) report at once.
	req.DeferSummary = inDpkg && getenv("DKMSD_APT_HOOK") != "off"
	maint := strings.Fields(getenv("DEB_MAINT_PARAMS"))
	switch phase {
	case "postinst":
		if len(maint) > 0 && maint[0] != "configure" {
			return Request{}, false, nil
		}
		req.Action = Add
		// initramfs-tools' own postinst.d hook runs after ours (run-parts
		// order) and makes the initrd with our modules in it.
		req.InitrdFollows = true
	case "header_postinst":
		req.Action = Add
	case "preinst":
		// "upgrade OLD" replaces the kernel at the same version: what was
		// built against the old image is rebuilt when the postinst
		// comes, if the image did change. A first install has nothing
		// built for it.
		if len(maint) > 0 && maint[0] != "upgrade" {
			return Request{}, false, nil
		}
		req.Action = Reinstall
	case "prerm":
		if len(maint) > 0 && maint[0] != "remove" {
			return Request{}, false, nil
		}
		req.Action = Remove
	default:
		return Request{}, false, &UsageError{"unknown kernel hook phase " + phase}
	}
	return req, true, nil
}

// Dnf reads dkmsd-dnf's arguments, as the dnf 4 post-transaction-actions
// and dnf 5 actions lines pass them: --kernel VERSION-RELEASE.ARCH
// [--remove].
func Dnf(args []string, stderr io.Writer) (Request, error) {
	fs := flag.NewFlagSet("dkmsd-dnf", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kernel := fs.String("kernel", "", "the kernel version (${ver}-${rel}.${arch})")
	remove := fs.Bool("remove", false, "the kernel is being removed")
	if err := fs.Parse(args); err != nil {
		return Request{}, &UsageError{err.Error()}
	}
	if *kernel == "" {
		return Request{}, &UsageError{"usage: dkmsd-dnf --kernel VERSION-RELEASE.ARCH [--remove]"}
	}
	req := Request{Action: Add, Kernel: *kernel, Hook: "dnf"}
	if *remove {
		req.Action = Remove
	}
	return req, nil
}

// IsUsage reports a usage error.
func IsUsage(err error) bool {
	var u *UsageError
	return errors.As(err, &u)
}
