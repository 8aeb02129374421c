#!/bin/sh
# Build a real Debian 12 (bookworm) arm64 root filesystem from Debian's own packages, as a
# tarball, for the ARM boot tests: tests/vm/mkarm.sh lays it out as Raspberry Pi OS, Armbian
# or Ubuntu raspi would, and qemu-system-aarch64 boots it.
#
#   tests/vm/mkroot-arm64.sh OUT.tar
#
# Runs the arm64 maintainer scripts through qemu-user (qemu-user-static + binfmt), so it is
# slow: the cost is cached by the Rust harness, keyed on this file's hash.
set -eu

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
# What the three vendor families have in common and what the tests check on a running node:
# systemd, sshd, sudo, nftables, rsync and nut-client for the agent's steps, cloud-init (Ubuntu
# raspi consumes its NoCloud seed; Raspberry Pi OS trixie ships it and imagegen switches it
# off), dosfstools (every image mounts and fscks a FAT /boot/firmware), Debian's generic arm64
# kernel (the vendors' board kernels cannot boot on qemu's `virt` machine).
PACKAGES="systemd systemd-sysv udev dbus libpam-systemd
linux-image-arm64 initramfs-tools e2fsprogs dosfstools
openssh-server sudo ca-certificates
ifupdown isc-dhcp-client netbase iproute2 iputils-ping
cloud-init cloud-guest-utils
rsync nftables nut-client
less procps kmod"

# Under qemu-user, mkinitramfs with the default MODULES=most takes most of the build (about
# 20 minutes measured). The test VMs need only the drivers that find an ext4 root on
# virtio-blk, so the initramfs gets exactly those (MODULES=list): a real Debian initramfs,
# just a smaller one. Real boards' initramfs is the vendor's and never comes from here.
INITRAMFS_MODULES="virtio_mmio virtio_pci virtio_blk virtio_net ext4 crc32c_generic"

if [ $# -ne 1 ]; then
	echo "usage: $0 OUT.tar" >&2
	exit 2
fi
out=$1
for tool in mmdebstrap arch-test; do
	command -v "$tool" >/dev/null || {
		echo "mkroot-arm64: $tool is missing (bash ci/install-deps)" >&2
		exit 1
	}
done
if ! arch-test arm64 >/dev/null 2>&1; then
	echo "mkroot-arm64: arm64 binaries do not run here: install qemu-user-static and register its binfmt (bash ci/install-deps)" >&2
	exit 1
fi

rm -f "$out.tmp"
# mmdebstrap may exit non-zero on a busy /proc at clean-up after the tarball is complete: the
# tarball is then checked for completeness below rather than trusted on the exit code alone.
status=0
mmdebstrap --mode=auto --variant=apt --architectures=arm64 --format=tar \
	--include="$(echo $PACKAGES | tr ' ' ,)" \
	--essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
	--essential-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/imagegen-test-vm"' \
	--essential-hook="printf '%s\n' $INITRAMFS_MODULES > \"\$1/usr/share/initramfs-tools/modules.d/imagegen-test-vm\"" \
	--customize-hook='rm -f "$1"/etc/ssh/ssh_host_* "$1/etc/resolv.conf" "$1/var/lib/dbus/machine-id"; : > "$1/etc/machine-id"' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb' \
	--customize-hook='chroot "$1" sh -c "lsinitramfs /boot/initrd.img-*" > "$1/boot/initrd.listing"' \
	"$SUITE" "$out.tmp" \
	"deb $MIRROR $SUITE main" \
	"deb $MIRROR $SUITE-updates main" \
	"deb $SECURITY $SUITE-security main" || status=$?

# Complete means: the kernel, its initramfs and sshd are in the tarball.
listing=$(tar -tf "$out.tmp" 2>/dev/null) || listing=
for want in './boot/vmlinuz-' './boot/initrd.img-' './usr/sbin/sshd' './boot/initrd.listing'; do
	case "$listing" in
	*"$want"*) ;;
	*)
		echo "mkroot-arm64: mmdebstrap exited $status and the tarball lacks $want" >&2
		exit 1
		;;
	esac
done
[ "$status" -eq 0 ] || echo "mkroot-arm64: mmdebstrap exited $status after writing a complete tarball; using it" >&2
mv "$out.tmp" "$out"
