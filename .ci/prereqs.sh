#!/bin/sh
# Installs what building and testing dkmsd needs on Debian 12, when run as
# root; otherwise lists what is missing and fails.
set -eu

PACKAGES="linux-headers-amd64 linux-headers-cloud-amd64 linux-image-cloud-amd64 qemu-system-x86 kmod openssl patch make gcc binutils bash dkms xorriso cpio dbus dunst xvfb xauth imagemagick debhelper dpkg-dev lintian rpm fakeroot"

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
fi
command -v go >/dev/null || { echo "dkmsd needs Go 1.26 or later on PATH (https://go.dev/dl/ or golang-go)" >&2; exit 1; }
go mod download
