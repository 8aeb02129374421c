#!/bin/sh
# Build a stand-in for Debian 12 "genericcloud" amd64 (debian-12-genericcloud-amd64.raw) from
# Debian's own packages, rootless: mmdebstrap, mkfs.ext4 -d, mkfs.vfat, sgdisk, dd. No loop
# device, no mount, no bootloader (tests boot it with qemu's -kernel/-initrd).
#
#   tests/vm/mkbase.sh OUT.img
#
# Writes OUT.img (2 GiB, sparse), OUT.img.vmlinuz, OUT.img.initrd and OUT.img.cmdline (the
# kernel arguments that select this image's root). See tests/vm/README.md for how this differs
# from the real image.
set -eu

# Everything that decides the image content is in this file: the Rust harness keys its cache on
# this file's hash, so any change here rebuilds the base.
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
SECURITY=http://deb.debian.org/debian-security
# debian-cloud-images installs these with --no-install-recommends (classes CLOUD, AMD64 with
# LINUX_IMAGE_CLOUD, plus what imagegen nodes need: rsync, nftables, nut-client, and
# wireguard-tools for a [wireguard] mesh, whose wg-quick the plan requires).
PACKAGES="systemd systemd-sysv udev dbus libpam-systemd
linux-image-cloud-amd64 initramfs-tools e2fsprogs
openssh-server sudo ca-certificates
ifupdown isc-dhcp-client netbase iproute2 iputils-ping
cloud-init cloud-initramfs-growroot
rsync nftables nut-client wireguard-tools
less procps kmod"

# Geometry of the real image (debian-cloud-images, hook partition.GRUB_CLOUD_AMD64), in sectors.
DISK_SECTORS=4194304 # 2 GiB
BIOS_START=2048
BIOS_SIZE=6144
ESP_START=8192
ESP_SIZE=253952
ROOT_START=262144
ROOT_SIZE=3930112

if [ "${1:-}" = --finish ]; then
	# Runs as mmdebstrap's customize hook, inside its (user) namespace, so file owners are
	# right when mkfs.ext4 -d copies the tree.
	root=$2
	work=$MKBASE_WORK

	cat >"$root/etc/fstab" <<EOF
# /etc/fstab: static file system information
PARTUUID=$MKBASE_ROOT_PARTUUID / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1
PARTUUID=$MKBASE_ESP_PARTUUID /boot/efi vfat defaults 0 0
EOF
	mkdir -p "$root/boot/efi"
	echo localhost >"$root/etc/hostname"
	# The NIC stanza comes from cloud-init at boot (50-cloud-init); the image itself only has lo.
	cat >"$root/etc/network/interfaces" <<'EOF'
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback
EOF
	mkdir -p "$root/etc/network/interfaces.d"

	# Prove the initramfs can find an ext4 root on virtio-blk before anyone waits for a boot:
	# each driver is either in the initramfs or built into the kernel.
	initrd=$(ls "$root"/boot/initrd.img-*)
	kernel=$(ls "$root"/boot/vmlinuz-*)
	version=${kernel##*/vmlinuz-}
	listing=$(chroot "$root" lsinitramfs "/boot/${initrd##*/}")
	for mod in virtio_blk virtio_pci ext4; do
		if ! printf '%s\n' "$listing" | grep -q "/$mod\.ko" &&
			! grep -q "/$mod\.ko\$" "$root/lib/modules/$version/modules.builtin"; then
			echo "mkbase: $mod is neither in the initramfs nor built into $version" >&2
			exit 1
		fi
	done
	# WireGuard is a module loaded from the root once it is mounted (wg-quick's `ip link add
	# type wireguard`), not from the initramfs: it must be among the root's modules.
	if ! grep -q "/wireguard\.ko" "$root/lib/modules/$version/modules.dep" &&
		! grep -q "/wireguard\.ko\$" "$root/lib/modules/$version/modules.builtin"; then
		echo "mkbase: wireguard is neither a module nor built into $version" >&2
		exit 1
	fi
	cp "$kernel" "$work/vmlinuz"
	cp "$initrd" "$work/initrd"

	# What debian-cloud-images' LAST/10-cleanup removes or empties.
	rm -f "$root"/etc/ssh/ssh_host_* "$root/var/lib/dbus/machine-id" "$root/etc/mailname"
	: >"$root/etc/machine-id"
	rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
	rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/log/dpkg.log \
		"$root"/var/log/alternatives.log "$root"/var/log/bootstrap.log
	rm -rf "$root/var/log/apt"
	# mmdebstrap leaves the build host's resolv.conf behind.
	rm -f "$root/etc/resolv.conf"

	# mmdebstrap has proc, sys and dev mounted in the chroot at this point: copy without them.
	mkdir "$work/tree"
	cp -a --one-file-system "$root/." "$work/tree/"
	mkfs.ext4 -q -F -d "$work/tree" "$work/root.ext4" "$((ROOT_SIZE / 2))k"
	tune2fs -c 0 -i 0 "$work/root.ext4" >/dev/null
	rm -rf "$work/tree"
	exit 0
fi

if [ $# -ne 1 ]; then
	echo "usage: $0 OUT.img" >&2
	exit 2
fi
out=$1
for tool in mmdebstrap mkfs.ext4 tune2fs mkfs.vfat sgdisk dd; do
	command -v "$tool" >/dev/null || {
		echo "mkbase: $tool is missing (apt-get install mmdebstrap e2fsprogs dosfstools gdisk)" >&2
		exit 1
	}
done

self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
work=$(mktemp -d "${out}.work.XXXXXX")
# mmdebstrap's unshare mode leaves the staged tree owned by sub-uids; a plain rm may need help.
trap 'rm -rf "$work" 2>/dev/null || true' EXIT

root_partuuid=$(cat /proc/sys/kernel/random/uuid)
esp_partuuid=$(cat /proc/sys/kernel/random/uuid)

mmdebstrap --mode=auto --variant=apt --format=null \
	--include="$(echo $PACKAGES | tr ' ' ,)" \
	--customize-hook="MKBASE_WORK='$work' MKBASE_ROOT_PARTUUID=$root_partuuid MKBASE_ESP_PARTUUID=$esp_partuuid '$self' --finish \"\$1\"" \
	"$SUITE" /dev/null \
	"deb $MIRROR $SUITE main" \
	"deb $MIRROR $SUITE-updates main" \
	"deb $SECURITY $SUITE-security main"

mkfs.vfat -C "$work/esp.vfat" "$((ESP_SIZE / 2))" >/dev/null

rm -f "$out.tmp"
truncate -s "$((DISK_SECTORS * 512))" "$out.tmp"
# Not -q: with it, sgdisk 1.0.9 exits 0 without writing the table.
sgdisk -o \
	-n 14:$BIOS_START:+$BIOS_SIZE -t 14:EF02 \
	-n 15:$ESP_START:+$ESP_SIZE -t 15:EF00 -u 15:"$esp_partuuid" \
	-n 1:$ROOT_START:+$ROOT_SIZE -t 1:8304 -u 1:"$root_partuuid" \
	"$out.tmp" >/dev/null
if ! sgdisk -i 1 "$out.tmp" | grep -qi "unique GUID: $root_partuuid"; then
	echo "mkbase: sgdisk did not write the partition table" >&2
	exit 1
fi
dd if="$work/esp.vfat" of="$out.tmp" bs=512 seek=$ESP_START conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$out.tmp" bs=1M seek=$((ROOT_START / 2048)) conv=notrunc,sparse status=none
sgdisk -v "$out.tmp" >/dev/null

mv "$work/vmlinuz" "$out.vmlinuz"
mv "$work/initrd" "$out.initrd"
echo "root=PARTUUID=$root_partuuid ro" >"$out.cmdline"
mv "$out.tmp" "$out"
