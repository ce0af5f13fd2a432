#!/bin/sh
# Installs what building and testing dkmsd needs on Debian 12, when run as
# root; otherwise lists what is missing and fails. The list is what a
# minimal debootstrap root lacks for `make demo` and `make test`: nothing may
# rely on what a full machine happens to have.
set -eu

# Kernels: headers of two flavours (two kernels to build for), the cloud
# image (a kernel and a real initrd to boot under QEMU, and the kernel the
# apt tests imitate). Build: make, gcc, binutils, patch, kmod (depmod,
# modinfo, modprobe), openssl (MOK). Reference: Debian's dkms 3.0.10.
# initrd: initramfs-tools, cpio and the compressors the tests compare
# against. Hooks: systemd (kernel-install, journald), apt, dnf with its
# post-transaction-actions plugin and createrepo-c (a real dnf transaction),
# rpm. Reporting: dbus, dunst, xvfb, xauth, imagemagick (a screenshot of the
# notification). Packaging: debhelper, dpkg-dev, lintian, fakeroot, xorriso
# (driver disks). Chroot checks: util-linux, mount. Fleet cache: docker-registry
# (a real OCI registry). Build sandbox: bubblewrap. dracut initrds: dracut-core
# (without dracut itself, which would replace initramfs-tools). Arch hooks:
# pacman-package-manager, makepkg, libarchive-tools (bsdtar, which makepkg
# packs with but Debian's makepkg does not pull in). Secure Boot enrolment:
# mokutil.
PACKAGES="linux-headers-amd64 linux-headers-cloud-amd64 linux-image-cloud-amd64 initramfs-tools qemu-system-x86
kmod openssl patch make gcc binutils bash dkms cpio gzip xz-utils zstd lz4 bzip2
systemd apt dnf dnf-plugins-core createrepo-c rpm
dbus dunst xvfb xauth imagemagick
debhelper dpkg-dev lintian fakeroot xorriso
util-linux mount debianutils diffutils tar ca-certificates
docker-registry bubblewrap dracut-core pacman-package-manager makepkg libarchive-tools mokutil"

missing() {
	out=""
	for p in $PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || out="$out $p"
	done
	echo "$out"
}

need=$(missing)
if [ -n "$need" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "dkmsd needs these Debian packages:$need" >&2
		echo "install them as root: apt-get update && apt-get install -y$need" >&2
		exit 1
	fi
	echo "installing:$need"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
	still=$(missing)
	if [ -n "$still" ]; then
		echo "apt-get did not install:$still" >&2
		exit 1
	fi
fi
command -v go >/dev/null || { echo "dkmsd needs Go 1.26 or later on PATH (https://go.dev/dl/ or golang-go)" >&2; exit 1; }
go mod download
