#!/bin/sh
# make demo: dkmsd's main job end to end on a sandboxed root. Every kernel
# with headers on this machine gets a relocated module dir whose build link
# points at the real headers; the real /lib/modules and /var/lib/dkms are
# never touched.
set -eu
DKMS=$(realpath "$1")
ROOT=${DEMO_ROOT:-$(mktemp -d /tmp/dkmsd-demo.XXXXXX)}
SRC=$(cd "$(dirname "$0")/.." && pwd)/testdata/modules

kernels=""
for inc in /lib/modules/*/build/include; do
	[ -d "$inc" ] || continue
	k=$(basename "$(dirname "$(dirname "$inc")")")
	kernels="$kernels $k"
	mkdir -p "$ROOT/lib/modules/$k"
	ln -sfn "$(readlink -f "/lib/modules/$k/build")" "$ROOT/lib/modules/$k/build"
done
[ -n "$kernels" ] || { echo "no kernel headers installed: apt-get install linux-headers-amd64" >&2; exit 1; }
mkdir -p "$ROOT/usr/src"
for m in dkmsd_hello-1.0 dkmsd_twomods-2.1 dkmsd_patched-1.0 dkmsd_failbuild-1.0; do
	cp -a "$SRC/$m" "$ROOT/usr/src/"
done

run() { echo; echo "\$ dkms $*"; "$DKMS" --root "$ROOT" "$@"; }
kargs=""
for k in $kernels; do kargs="$kargs -k $k"; done
first=$(echo $kernels | cut -d' ' -f1)
last=$(echo $kernels | awk '{print $NF}')

echo "sandbox root: $ROOT"
echo "kernels with headers:$kernels"

# The main job: a kernel arrives and the package manager's hook builds every
# DKMS module for it, in parallel, and puts the ones that belong into its
# initrd. dkmsd_hello is named in the sandbox's /etc/initramfs-tools/modules,
# so it goes into the initrd and loads early.
mkdir -p "$ROOT/etc/initramfs-tools" "$ROOT/boot"
echo dkmsd_hello > "$ROOT/etc/initramfs-tools/modules"
[ -f "/boot/initrd.img-$last" ] && cp "/boot/initrd.img-$last" "$ROOT/boot/"
run add dkmsd_hello/1.0
run add dkmsd_twomods/2.1
run add dkmsd_patched/1.0
echo
echo "\$ /etc/kernel/header_postinst.d/dkmsd $last    # a kernel's headers arrive"
DKMSD_ROOT="$ROOT" "$(dirname "$DKMS")/dkmsd-apt" header_postinst "$last"
echo
echo "\$ (the same hook again: it finds nothing left to do)"
DKMSD_ROOT="$ROOT" "$(dirname "$DKMS")/dkmsd-apt" header_postinst "$last"
run install dkmsd_hello/1.0 $kargs
run install dkmsd_twomods/2.1 $kargs
set +e
run build dkmsd_failbuild/1.0 $kargs
echo "(exit status $? — the build log is kept under $ROOT/var/lib/dkms/dkmsd_failbuild/1.0/build/make.log)"
set -e
run status
echo
echo "installed modules and what depmod recorded:"
for k in $kernels; do
	find "$ROOT/lib/modules/$k/updates" -name '*.ko*' | sort | while read -r f; do
		printf '  %s  vermagic: %s\n' "${f#$ROOT}" "$(modinfo -F vermagic "$f")"
	done
	sed 's/^/  modules.dep: /' "$ROOT/lib/modules/$k/modules.dep"
done
run uninstall dkmsd_twomods/2.1 -k "$first"
run status dkmsd_twomods
run remove dkmsd_hello/1.0 --all
run status
echo
echo "demo finished; sandbox left at $ROOT"
