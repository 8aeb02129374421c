#!/usr/bin/env bash
# mkarm.sh LAYOUT ROOT.tar OUT.img: lay out a real Debian 12 arm64 root filesystem (the tarball
# made by tests/vm/mkroot-arm64.sh) the way a vendor lays out its image, so qemu-system-aarch64
# can boot it with the kernel, initrd and command line taken from the image, as the board's
# firmware would:
#
#   rpios-bookworm  Raspberry Pi OS Lite arm64 (bookworm)        research section 1
#   armbian-bpim5   Armbian for the Banana Pi M5 (bookworm)       research section 2
#   ubuntu-raspi    Ubuntu 24.04 preinstalled server arm64+raspi  research section 3
#
# Research: shared/research/vendor-images.md (section numbers above). Geometry, labels,
# partition types and root references are the ones tests/fixtures encodes (INDEX.md), with the
# root partition sized from the real tree by each vendor's own rule. What each layout contains
# and how it differs from the vendor's image: tests/vm/README.md, "ARM images".
#
# The userland is ALWAYS Debian 12 with Debian's generic arm64 kernel (the vendors' board
# kernels cannot boot on qemu's `virt` machine). ubuntu-raspi in particular is a Debian
# userland wearing Ubuntu 24.04's os-release: it proves what imagegen does with Ubuntu's
# layout and first-boot mechanism (cloud-init NoCloud on system-boot), not Ubuntu itself.
#
# Runs as root (tar must keep owners), without loop devices or mounts: the tarball is extracted
# to a scratch directory next to OUT (MKARM_WORKDIR to put it elsewhere, e.g. a tmpfs), each
# filesystem is made in its own file (mkfs.ext4 -d, mkfs.vfat + mcopy) and copied into the
# disk file with dd conv=notrunc,sparse; sfdisk writes the table. OUT appears atomically.
# Needs: tar, e2fsprogs, dosfstools, mtools, fdisk (sfdisk), gzip, openssl, openssh-client
# (ssh-keygen), u-boot-tools (mkimage, armbian-bpim5 only); zstd if the root's initramfs is
# zstd-compressed.
set -euo pipefail
# Never a producer piped into `grep -q` below: with pipefail, grep's early exit kills the producer with
# SIGPIPE and the pipeline fails.

PATH=$PATH:/usr/sbin:/sbin
export LC_ALL=C TZ=UTC MTOOLS_SKIP_CHECK=1
# mke2fs and libext2fs read these from the environment; none may leak in from the caller.
unset MKE2FS_CONFIG MKE2FS_SYNC MKE2FS_FIRST_META_BG MKE2FS_DEVICE_SECTSIZE MKE2FS_DEVICE_PHYS_SECTSIZE

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The vendors' mke2fs.conf copies, the stand-in bootloader pattern and the vendor file texts
# (lib/vendor-files.sh) are the fixtures' own.
FIXTURES=$HERE/../fixtures
# shellcheck source=../fixtures/lib/vendor-files.sh
. "$FIXTURES/lib/vendor-files.sh"

die() {
	echo "mkarm: $*" >&2
	exit 1
}

[[ $# -eq 3 ]] || die "usage: mkarm.sh rpios-bookworm|armbian-bpim5|ubuntu-raspi ROOT.tar OUT.img"
layout=$1 roottar=$2 out=$3
case $layout in
rpios-bookworm | armbian-bpim5 | ubuntu-raspi) ;;
*) die "unknown layout '$layout' (rpios-bookworm, armbian-bpim5, ubuntu-raspi)" ;;
esac
[[ -f $roottar ]] || die "$roottar: no such file (make it with tests/vm/mkroot-arm64.sh)"
[[ $(id -u) -eq 0 ]] || die "run as root: the root tarball's owners must survive extraction"

tools=(tar mke2fs tune2fs e2fsck mkfs.vfat fsck.fat mcopy mmd sfdisk dd truncate gzip openssl
	ssh-keygen du od stat)
[[ $layout == armbian-bpim5 ]] && tools+=(mkimage)
for t in "${tools[@]}"; do
	command -v "$t" >/dev/null ||
		die "$t not found (apt-get install tar e2fsprogs dosfstools mtools fdisk gzip zstd openssl openssh-client u-boot-tools)"
done

WORK=$(mktemp -d "${MKARM_WORKDIR:-$(dirname "$out")}/mkarm.XXXXXX")
staged=
cleanup() {
	rm -rf "$WORK"
	[[ -z $staged ]] || rm -f "$staged"
}
trap cleanup EXIT
TREE=$WORK/root # the root filesystem
BOOT=$WORK/boot # the FAT boot partition (rpios, ubuntu)
mkdir "$TREE" "$BOOT"

# ---------------------------------------------------------------------------------------------
# Helpers. Paths are as the booted system sees them.

# put PATH [MODE] < content: a root-owned file in the root tree.
put() {
	local p=$TREE/${1#/}
	mkdir -p "$(dirname "$p")"
	cat >"$p"
	chmod "${2:-0644}" "$p"
}

# bput PATH < content: a file on the FAT boot partition.
bput() {
	mkdir -p "$(dirname "$BOOT/${1#/}")"
	cat >"$BOOT/${1#/}"
}

# unit_enable UNIT TARGET: what `systemctl enable` leaves behind for a unit installed by a package
# (Debian 12's systemctl writes /lib/systemd/system targets). unit_disable UNIT TARGET undoes it.
unit_enable() {
	mkdir -p "$TREE/etc/systemd/system/$2.wants"
	ln -sfn "/lib/systemd/system/$1" "$TREE/etc/systemd/system/$2.wants/$1"
}
unit_disable() {
	rm -f "$TREE/etc/systemd/system/$2.wants/$1"
}
unit_mask() {
	ln -sfn /dev/null "$TREE/etc/systemd/system/$1"
}

# group_add NAME: a system group (gid counting down from 999, as groupadd -r), unless present.
group_add() {
	local gid=999
	if awk -F: -v n="$1" '$1 == n { found = 1 } END { exit !found }' "$TREE/etc/group"; then
		return
	fi
	while awk -F: -v g="$gid" '$3 == g { found = 1 } END { exit !found }' "$TREE/etc/group"; do
		gid=$((gid - 1))
	done
	echo "$1:x:$gid:" >>"$TREE/etc/group"
	echo "$1:!::" >>"$TREE/etc/gshadow"
}

# group_member GROUP USER: add USER to GROUP's member list in group and gshadow (adduser U G).
group_member() {
	local f
	for f in group gshadow; do
		awk -F: -v OFS=: -v g="$1" -v u="$2" '
			$1 == g {
				n = split($NF, m, ",")
				for (i = 1; i <= n; i++) if (m[i] == u) { print; next }
				$NF = ($NF == "" ? u : $NF "," u)
			}
			{ print }' "$TREE/etc/$f" >"$WORK/$f.new"
		cat "$WORK/$f.new" >"$TREE/etc/$f"
		rm -f "$WORK/$f.new"
	done
}

# shadow_days: today in days since the epoch, as passwd(5) records the last change.
shadow_days() {
	echo $(($(date +%s) / 86400))
}

# networkd_standin VENDOR_TOOL: the vendors configure the wired NIC with NetworkManager (RPi
# OS) or NetworkManager/netplan+networkd (Armbian); our root has neither, so systemd-networkd
# with DHCP on every wired NIC stands in. Enabled as `systemctl enable systemd-networkd` does.
networkd_standin() {
	put /etc/systemd/network/20-wired.network <<EOF
# imagegen test stand-in for $1: DHCP on every wired NIC (kernel names eth*,
# predictable names en*). The vendor's image has no such file.
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
	unit_enable systemd-networkd.service multi-user.target
	unit_enable systemd-networkd.socket sockets.target
	unit_enable systemd-networkd-wait-online.service network-online.target
	ln -sfn /lib/systemd/system/systemd-networkd.service \
		"$TREE/etc/systemd/system/dbus-org.freedesktop.network1.service"
}

# no_cloud_init: RPi OS bookworm and Armbian ship no cloud-init; our root has Debian's (for
# ubuntu-raspi). Switched off by its own documented switch, so nothing of it runs at boot.
no_cloud_init() {
	put /etc/cloud/cloud-init.disabled <<'EOF'
imagegen test image: this vendor ships no cloud-init (the shared Debian root has it).
EOF
}

# hosts HOSTNAME LINE: /etc/hostname and /etc/hosts (mmdebstrap leaves the build host's name).
hosts() {
	echo "$1" | put /etc/hostname
	put /etc/hosts
}

# mk_ext4 OUT SECTORS CONF LABEL [mke2fs options]: ext4 from the root tree, with the features
# of the vendor's build host (CONF: the fixtures' copy of that host's mke2fs.conf).
mk_ext4() {
	local img=$1 sectors=$2 conf=$3 label=$4
	shift 4
	truncate -s $((sectors * 512)) "$img"
	MKE2FS_CONFIG=$FIXTURES/lib/$conf mke2fs -q -F -t ext4 -T default -L "$label" \
		-E lazy_itable_init=0,lazy_journal_init=0,nodiscard -d "$TREE" "$@" "$img" ||
		die "mke2fs -d of the $label filesystem failed (too small a partition?)"
}

# mk_fat OUT SECTORS HIDDEN LABEL [mkfs.fat options]: FAT from the boot tree. HIDDEN is the
# partition start, as mkfs.fat writes it when run on the partition device (the vendors' case).
mk_fat() {
	local img=$1 sectors=$2 hidden=$3 label=$4
	shift 4
	truncate -s $((sectors * 512)) "$img"
	# (mkfs.fat warns that a lowercase label "might not work": the vendors' labels are.)
	local err
	err=$(mkfs.vfat -n "$label" -h "$hidden" "$@" "$img" 2>&1) || die "mkfs.vfat $label failed: $err"
	(cd "$BOOT" && mcopy -s -m -i "$img" ./* ::/) || die "mcopy into $label failed"
	fsck.fat -n "$img" >/dev/null || die "fsck.fat -n $label not clean after build"
}

# place PART DISK START_SECTOR: copy a filesystem into the disk image, sparsely.
place() {
	dd if="$1" of="$2" bs=1M oflag=seek_bytes seek=$(($3 * 512)) conv=notrunc,sparse status=none
}

# partition DISK < sfdisk script
partition() {
	local err
	err=$(sfdisk --no-reread --no-tell-kernel -q "$1" 2>&1 >/dev/null) || die "sfdisk on $1 failed: $err"
}

check_ext4() {
	e2fsck -fn "$1" >/dev/null 2>&1 || die "e2fsck -fn $1 not clean after build"
}

# initrd_decompress IN: the initramfs as a plain cpio stream, whatever the compressor.
initrd_decompress() {
	case $(od -An -tx1 -N4 "$1" | tr -d ' \n') in
	28b52ffd)
		command -v zstd >/dev/null || die "zstd not found (apt-get install zstd)"
		zstd -dc "$1"
		;;
	1f8b*) gzip -dc "$1" ;;
	3037*) cat "$1" ;; # "07070": an uncompressed newc cpio
	*) die "$1: unknown initramfs compression" ;;
	esac
}

# ---------------------------------------------------------------------------------------------
# The root tree, common to all layouts.

# --numeric-owner: the tarball's uids are the image's; names would be mapped through the build
# host's passwd. /dev: devtmpfs at boot; its nodes need not (and in containers cannot) exist.
tar -x -p --numeric-owner --xattrs --xattrs-include='*' -f "$roottar" -C "$TREE" --exclude='./dev/*'

shopt -s nullglob
kernels=("$TREE"/boot/vmlinuz-*)
shopt -u nullglob
[[ ${#kernels[@]} -eq 1 ]] || die "$roottar: want exactly one /boot/vmlinuz-*, found ${#kernels[@]}"
KVER=${kernels[0]##*/vmlinuz-}
# Debian 12's arm64 vmlinuz is an uncompressed Image (with an EFI stub header), not Image.gz.
VMLINUZ=$TREE/boot/vmlinuz-$KVER
INITRD=$TREE/boot/initrd.img-$KVER
[[ -f $INITRD ]] || die "$roottar: /boot/initrd.img-$KVER missing"
# The initramfs must find an ext4 root on virtio-blk: each driver is in it or built in.
[[ -f $TREE/boot/initrd.listing ]] || die "$roottar: /boot/initrd.listing missing"
for mod in virtio_blk virtio_pci ext4; do
	grep -q "/$mod\.ko" "$TREE/boot/initrd.listing" ||
		grep -q "/$mod\.ko\$" "$TREE/lib/modules/$KVER/modules.builtin" ||
		die "$mod is neither in the initramfs nor built into $KVER"
done
rm -f "$TREE/boot/initrd.listing" # a test artifact, not part of any vendor image
# The raw arm64 Image the Pi firmware (kernel8.img) and Armbian's U-Boot (Image) load.
case $(od -An -tx1 -N2 "$VMLINUZ" | tr -d ' \n') in
1f8b) gzip -dc "$VMLINUZ" >"$WORK/Image" ;;
*) cp "$VMLINUZ" "$WORK/Image" ;;
esac
DTBDIR=$TREE/usr/lib/linux-image-$KVER # Debian ships the upstream device trees here

# Debian's /etc/network/interfaces (ifupdown) configures lo only and sources interfaces.d, like
# Debian's cloud images; cloud-init (ubuntu-raspi) writes its NIC stanza there.
if [[ ! -f $TREE/etc/network/interfaces ]]; then
	put /etc/network/interfaces <<'EOF'
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback
EOF
fi
mkdir -p "$TREE/etc/network/interfaces.d"

# ---------------------------------------------------------------------------------------------
# rpios-bookworm: pi-gen bookworm-arm64 (export-image/prerun.sh, stage1/2, export-image),
# raspberrypi-sys-mods and userconf-pi (bookworm). Research section 1.

RPIOS_DISKID=d9c86127 # the disk id of 2025-05-13-raspios-bookworm-arm64-lite.img (fixtures too)
RPIOS_FIRSTBOOT=/usr/lib/raspberrypi-sys-mods/firstboot

rpios_tree() {
	rpios_rpi_issue imagegen-mkarm-stand-in | put /etc/rpi-issue
	rpios_hosts | hosts raspberrypi
	rpios_fstab "$RPIOS_DISKID" | put /etc/fstab
	# stage1/00-boot-files: the firmware files moved to /boot/firmware in bookworm.
	mkdir -p "$TREE/boot/firmware"
	ln -sfn firmware/overlays "$TREE/boot/overlays"
	ln -sfn firmware/issue.txt "$TREE/boot/issue.txt"
	local f
	for f in cmdline.txt config.txt; do
		printf "DO NOT EDIT THIS FILE\n\nThe file you are looking for has moved to %s\n" "/boot/firmware/$f" |
			put "/boot/$f"
	done

	# The first user: stage1 adduser --disabled-password pi (uid 1000), stage2 adds the groups.
	# Locked password as the fixture has it [unverified].
	echo "pi:x:1000:1000:,,,:/home/pi:/bin/bash" >>"$TREE/etc/passwd"
	echo "pi:!:$(shadow_days):0:99999:7:::" >>"$TREE/etc/shadow"
	echo "pi:x:1000:" >>"$TREE/etc/group"
	echo "pi:!::" >>"$TREE/etc/gshadow"
	for f in input spi i2c gpio netdev render; do group_add "$f"; done
	for f in adm dialout cdrom audio users sudo video games plugdev input gpio spi i2c netdev render; do
		group_member "$f" pi
	done
	mkdir -p "$TREE/home/pi"
	cp -a "$TREE/etc/skel/." "$TREE/home/pi/"
	chown -R 1000:1000 "$TREE/home/pi"
	chmod 0700 "$TREE/home/pi" # bookworm adduser's DIR_MODE [unverified]
	put /etc/sudoers.d/010_pi-nopasswd 0440 <<'EOF'
pi ALL=(ALL) NOPASSWD: ALL
EOF
	# adduser gives the first user subordinate ids when the files exist.
	for f in subuid subgid; do
		[[ ! -f $TREE/etc/$f ]] || echo "pi:100000:65536" >>"$TREE/etc/$f"
	done

	# stage2/01-sys-tweaks: ENABLE_SSH=0 (ssh disabled), regenerate_ssh_host_keys and
	# resize2fs_once enabled, journald volatile; stage1/02-net-tweaks: classic NIC names
	# (raspi-config do_net_names 1).
	unit_disable ssh.service multi-user.target
	rm -f "$TREE/etc/systemd/system/sshd.service"
	sed -i 's/^#\?Storage=.*/Storage=volatile/' "$TREE/etc/systemd/journald.conf"
	mkdir -p "$TREE/etc/systemd/network"
	ln -sfn /dev/null "$TREE/etc/systemd/network/99-default.link"
	ln -sfn /dev/null "$TREE/etc/systemd/network/73-usb-net-by-mac.link"

	# raspberrypi-sys-mods: firstboot (init=), regenerate_ssh_host_keys, sshswitch. Stand-ins
	# written from what the research (section 1.5) says the real ones do; not their code.
	put /usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys 0755 <<'EOF'
#!/bin/sh -e
# imagegen test stand-in for raspberrypi-sys-mods' regenerate_ssh_host_keys, shared by
# firstboot and regenerate_ssh_host_keys.service: new host keys, then the unit disables itself.
rm -f /etc/ssh/ssh_host_*_key*
ssh-keygen -A >/dev/null
systemctl -q disable regenerate_ssh_host_keys
EOF
	put "$RPIOS_FIRSTBOOT" 0755 <<'EOF'
#!/bin/sh
# imagegen test stand-in for raspberrypi-sys-mods' firstboot (bookworm). The kernel runs it as
# PID 1 (init= in cmdline.txt) on the first boot, root mounted read-only. Like the real one it
# takes its init= (and quiet, unless splash is there) out of cmdline.txt and regenerates the
# SSH host keys, then starts the real init.
#
# Left out: custom.toml (needs python3-toml), fix_partuuid (a new random disk id written into
# the MBR, fstab and cmdline.txt: the running kernel would keep the old PARTUUIDs until a
# reboot), the whiptail messages. The root partition resize the real image does in the
# initramfs (local-premount/firstboot: parted resizepart + resize2fs) is not in Debian's
# initramfs and does not happen at all.
#
# The real script ends with `reboot -f`, and the firmware then boots the edited cmdline.txt.
# Under qemu the command line is fixed for the life of the process (-append), so a reboot
# would boot the same init= again. Instead this execs /sbin/init with the root read-only again,
# which is the state the real second boot starts from.
log() { echo "firstboot (imagegen stand-in): $*" >/dev/console 2>&1 || true; }

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /run || mount -t tmpfs tmp /run
mkdir -p /run/systemd
mount / -o remount,ro

FWLOC=/boot/firmware
if mount "$FWLOC" -o rw; then
	sed -i 's| init=/usr/lib/raspberrypi-sys-mods/firstboot||' "$FWLOC/cmdline.txt"
	if ! grep -q splash "$FWLOC/cmdline.txt"; then
		sed -i 's/ quiet//g' "$FWLOC/cmdline.txt"
	fi
	log "cmdline.txt is now: $(cat "$FWLOC/cmdline.txt")"
	umount "$FWLOC"
else
	log "could not mount $FWLOC: cmdline.txt unchanged"
fi
sync

log "generating SSH host keys"
mount / -o remount,rw
/usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys || log "regenerate_ssh_host_keys failed"
mount / -o remount,ro
sync

log "done; starting /sbin/init instead of rebooting"
exec /sbin/init "$@"
EOF
	put /usr/lib/systemd/system/regenerate_ssh_host_keys.service <<'EOF'
# imagegen test stand-in for raspberrypi-sys-mods' unit.
[Unit]
Description=Regenerate SSH host keys
Before=ssh.service
ConditionFileIsExecutable=/usr/bin/ssh-keygen

[Service]
Type=oneshot
ExecStart=/usr/lib/raspberrypi-sys-mods/regenerate_ssh_host_keys

[Install]
WantedBy=multi-user.target
EOF
	unit_enable regenerate_ssh_host_keys.service multi-user.target
	put /usr/lib/raspberrypi-sys-mods/sshswitch 0755 <<'EOF'
#!/bin/sh -e
# imagegen test stand-in for raspberrypi-sys-mods' sshswitch: a file named ssh or ssh.txt on
# the boot partition turns sshd on (and is deleted).
found=0
for f in /boot/firmware/ssh /boot/firmware/ssh.txt; do
	[ -e "$f" ] || continue
	found=1
	rm -f "$f"
done
[ "$found" = 0 ] || systemctl enable --now --no-block ssh
EOF
	put /usr/lib/systemd/system/sshswitch.service <<'EOF'
# imagegen test stand-in for raspberrypi-sys-mods' unit.
[Unit]
Description=Turn on SSH if /boot/firmware/ssh is present
After=regenerate_ssh_host_keys.service boot-firmware.mount

[Service]
Type=oneshot
ExecStart=/usr/lib/raspberrypi-sys-mods/sshswitch

[Install]
WantedBy=multi-user.target
EOF
	unit_enable sshswitch.service multi-user.target

	# userconf-pi, as export-image/01-user-rename's `rename-user -f -s` leaves a Lite image:
	# userconfig enabled, getty@tty1 disabled (the wizard owns the console until a user is
	# set up), an sshd banner saying so. The real userconfig.service starts a rename wizard on
	# tty8 that waits for the keyboard forever when there is no userconf.txt, so boot never
	# finishes; only a successful rename re-enables getty@tty1 and removes the banner.
	put /usr/lib/userconf-pi/userconf-service 0755 <<'EOF'
#!/bin/sh
# imagegen test stand-in for userconf-pi's userconf-service. The real one applies
# /boot/firmware/userconf.txt or opens the interactive rename wizard on tty8 and waits there.
# This one only leaves a marker (and blocks nothing), so a test can prove the unit never ran.
mkdir -p /var/lib/userconf-pi
date -u +%FT%TZ >/var/lib/userconf-pi/imagegen-stand-in-ran
echo "userconfig (imagegen stand-in): the Raspberry Pi OS user rename wizard would start on tty8 now"
EOF
	put /usr/lib/systemd/system/userconfig.service <<'EOF'
# imagegen test stand-in for userconf-pi's unit (the real one: StandardInput=tty on tty8).
[Unit]
Description=User configuration dialog
After=systemd-user-sessions.service
Before=lightdm.service

[Service]
Type=oneshot
ExecStart=/usr/lib/userconf-pi/userconf-service

[Install]
WantedBy=multi-user.target
EOF
	unit_enable userconfig.service multi-user.target
	unit_disable getty@tty1.service getty.target
	put /usr/share/userconf-pi/sshd_banner <<'EOF'
Please note that SSH may not work until a valid user has been set up.

See http://rptl.io/newuser for details.
EOF
	put /etc/ssh/sshd_config.d/rename_user.conf <<'EOF'
Banner /usr/share/userconf-pi/sshd_banner
EOF

	# stage2/01-sys-tweaks/files/resize2fs_once, enabled in runlevel 3 (stand-in text; what it
	# does is the same: grow the root filesystem to its partition once, then remove itself).
	put /etc/init.d/resize2fs_once 0755 <<'EOF'
#!/bin/sh
### BEGIN INIT INFO
# Provides:          resize2fs_once
# Required-Start:
# Required-Stop:
# Default-Start: 3
# Default-Stop:
# Short-Description: Resize the root filesystem to fill partition
### END INIT INFO
# imagegen test stand-in for pi-gen's resize2fs_once.
case "$1" in
start)
	ROOT_DEV=$(findmnt / -o source -n) &&
		resize2fs "$ROOT_DEV" &&
		update-rc.d resize2fs_once remove &&
		rm /etc/init.d/resize2fs_once
	;;
*)
	echo "Usage: $0 start" >&2
	exit 3
	;;
esac
EOF
	mkdir -p "$TREE/etc/rc3.d"
	ln -sfn ../init.d/resize2fs_once "$TREE/etc/rc3.d/S01resize2fs_once"

	networkd_standin "Raspberry Pi OS's NetworkManager"
	no_cloud_init
}

rpios_boot() {
	echo "console=serial0,115200 console=tty1 root=PARTUUID=$RPIOS_DISKID-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=$RPIOS_FIRSTBOOT" |
		bput /cmdline.txt
	# pi-gen bookworm-arm64 stage1/00-boot-files/files/config.txt.
	rpios_config_txt | bput /config.txt
	bput /issue.txt <"$TREE/etc/rpi-issue"
	# auto_initramfs=1: kernel8.img (Pi 3/4) loads initramfs8, kernel_2712.img (Pi 5) loads
	# initramfs_2712. The Pi's kernel8.img is a raw Image; here both are Debian's generic kernel.
	cp "$WORK/Image" "$BOOT/kernel8.img"
	cp "$WORK/Image" "$BOOT/kernel_2712.img"
	cp "$INITRD" "$BOOT/initramfs8"
	cp "$INITRD" "$BOOT/initramfs_2712"
	cp "$DTBDIR"/broadcom/bcm2711-*.dtb "$DTBDIR"/broadcom/bcm2837-*.dtb "$BOOT/"
	bput /overlays/README <<'EOF'
imagegen test image: the real directory holds the Raspberry Pi device tree overlays.
EOF
}

rpios_build() {
	local disk=$1 root_size margin align=$((8 * 1024 * 1024)) root_bytes root_sectors
	rpios_tree
	rpios_boot
	# pi-gen export-image/prerun.sh: the rootfs size (apparent, without apt's archives and
	# /boot/firmware) + 20% + 200 MiB, rounded up to 8 MiB.
	root_size=$(du -x --apparent-size -s "$TREE" --exclude var/cache/apt/archives \
		--exclude boot/firmware --block-size=1 | cut -f 1)
	margin=$((root_size / 5 + 200 * 1024 * 1024))
	root_bytes=$(((root_size + margin + align - 1) / align * align))
	root_sectors=$((root_bytes / 512))
	# mkdosfs -n bootfs -F 32 -s 4; mkfs.ext4 -L rootfs -O ^64bit,^huge_file on a bookworm host.
	mk_fat "$WORK/bootfs.img" 1048576 16384 bootfs -F 32 -s 4
	mk_ext4 "$WORK/rootfs.img" "$root_sectors" bookworm.mke2fs.conf rootfs -O ^64bit,^huge_file
	check_ext4 "$WORK/rootfs.img"
	truncate -s $(((1064960 + root_sectors) * 512)) "$disk"
	place "$WORK/bootfs.img" "$disk" 16384
	place "$WORK/rootfs.img" "$disk" 1064960
	# parted mklabel msdos + mkpart primary fat32/ext4: no boot flag.
	partition "$disk" <<EOF
label: dos
label-id: 0x$RPIOS_DISKID
unit: sectors

start=16384, size=1048576, type=c
start=1064960, size=$root_sectors, type=83
EOF
}

# ---------------------------------------------------------------------------------------------
# armbian-bpim5: armbian/build (lib/functions/image/partitioning.sh, rootfs/distro-agnostic.sh,
# bsp/armbian-bsp-cli-deb.sh, compilation/kernel-debs.sh, packages/bsp/common), board
# bananapim5, RELEASE=bookworm (the board's default download). Research section 2.
#
# No boot.scr: U-Boot is not run. The harness builds the kernel command line as
# config/bootscripts/boot-meson64.cmd does on its "modern kernel boot" branch (no zImage):
#
#   setenv bootargs "root=${rootdev} rootwait rootfstype=${rootfstype} ${consoleargs} consoleblank=0 coherent_pool=2M loglevel=${verbosity} ubootpart=${partuuid} libata.force=noncq usb-storage.quirks=${usbstoragequirks} ${extraargs} ${extraboardargs}"
#   if test "${docker_optimizations}" = "on"; then setenv bootargs "${bootargs} cgroup_enable=memory swapaccount=1"; fi
#
# with the script's defaults (verbosity=1, console=both, docker_optimizations=on) overridden by
# /boot/armbianEnv.txt (`env import -t`), consoleargs="console=ttyAML0,115200 console=tty1" for
# console=both, partuuid = PARTUUID of partition 1 of the boot disk (<disk id>-01), and
# usbstoragequirks/extraargs/extraboardargs empty unless armbianEnv.txt sets them. It then
# loads ${prefix}uInitrd, ${prefix}Image and ${prefix}dtb/${fdtfile} (prefix=/boot/).

ARMBIAN_DISKID=3d1e7a5b # random on the real image; the fixture's, for reproducible tables
ARMBIAN_VERSION=25.2.1  # [unverified] any recent release; the fixture uses the same number

armbian_tree() {
	local uuid=$1 f
	# armbian-bsp-cli: /etc/armbian-release (fields as the fixture's, [unverified]); the image
	# build copies it to armbian-image-release.
	put /etc/armbian-release <<EOF
# PLEASE DO NOT EDIT THIS FILE
BOARD=bananapim5
BOARD_NAME="Banana Pi M5"
BOARDFAMILY=meson-sm1
BUILD_REPOSITORY_URL=https://github.com/armbian/build
BUILD_REPOSITORY_COMMIT=imagegen-mkarm-stand-in
LINUXFAMILY=meson64
ARCH=arm64
IMAGE_TYPE=stable
BOARD_TYPE=conf
INITRD_ARCH=arm64
KERNEL_IMAGE_TYPE=Image
VERSION=$ARMBIAN_VERSION
REVISION=$ARMBIAN_VERSION
BRANCH=current
DISTRIBUTION_CODENAME=bookworm
DISTRIBUTION_STATUS=supported
EOF
	{
		cat "$TREE/etc/armbian-release"
		echo "EXTENSIONS=''"
		echo "VENDORPRETTYNAME='Armbian'"
	} | put /etc/armbian-image-release
	# armbian-base-files: Debian's os-release, edited with sed -i through the /etc symlink (so
	# /etc/os-release becomes a regular file; /usr/lib/os-release stays Debian's).
	sed -e "s|^PRETTY_NAME=.*|PRETTY_NAME=\"Armbian $ARMBIAN_VERSION bookworm\"|" \
		-e 's|^HOME_URL=.*|HOME_URL="https://www.armbian.com/"|' \
		-e 's|^SUPPORT_URL=.*|SUPPORT_URL="https://community.armbian.com/"|' \
		-e 's|^BUG_REPORT_URL=.*|BUG_REPORT_URL="https://armbian.atlassian.net/"|' \
		"$TREE/usr/lib/os-release" >"$WORK/os-release"
	echo "ARMBIAN_PRETTY_NAME=\"Armbian $ARMBIAN_VERSION bookworm\"" >>"$WORK/os-release"
	rm -f "$TREE/etc/os-release"
	put /etc/os-release <"$WORK/os-release"
	armbian_bpim5_hosts | hosts bananapim5
	armbian_fstab "$uuid" | put /etc/fstab

	# /boot as Armbian's kernel, dtb and bsp packages leave it on an ext4 /boot: the kernel
	# as vmlinuz-<ver> (a raw Image on arm64) with an Image symlink, the initramfs gzip
	# compressed (the bsp sets COMPRESS=gzip) and wrapped for U-Boot by the bsp's
	# /etc/initramfs/post-update.d/99-uboot hook (mkimage ... -C gzip -n uInitrd, symlinked as
	# uInitrd), the device trees in dtb-<ver> with a dtb symlink.
	cp "$WORK/Image" "$VMLINUZ"
	ln -sfn "vmlinuz-$KVER" "$TREE/boot/Image"
	case $(od -An -tx1 -N2 "$INITRD" | tr -d ' \n') in
	1f8b) ;; # mkinitramfs already used gzip (it does when the root has no zstd)
	*)
		initrd_decompress "$INITRD" | gzip -9n >"$WORK/initrd.gz"
		cat "$WORK/initrd.gz" >"$INITRD"
		;;
	esac
	sed -i 's/^COMPRESS=.*/COMPRESS=gzip/' "$TREE/etc/initramfs-tools/initramfs.conf"
	SOURCE_DATE_EPOCH=$(stat -c %Y "$INITRD") \
		mkimage -A arm64 -O linux -T ramdisk -C gzip -n uInitrd -d "$INITRD" \
		"$TREE/boot/uInitrd-$KVER" >/dev/null
	ln -sfn "uInitrd-$KVER" "$TREE/boot/uInitrd"
	mkdir -p "$TREE/boot/dtb-$KVER"
	cp -a "$DTBDIR/amlogic" "$TREE/boot/dtb-$KVER/"
	ln -sfn "dtb-$KVER" "$TREE/boot/dtb"
	# config/bootenv/meson.txt, then overlay_prefix and fdtfile (distro-agnostic.sh), then
	# rootdev and rootfstype (partitioning.sh).
	armbian_bpim5_env_txt "$uuid" | put /boot/armbianEnv.txt

	# ROOTPWD=1234 (changed by the first-login wizard), root over SSH allowed for the first
	# boot, console autologin (CONSOLE_AUTOLOGIN=yes), the first-login marker.
	awk -F: -v OFS=: -v h="$(openssl passwd -6 1234)" '$1 == "root" { $2 = h } { print }' \
		"$TREE/etc/shadow" >"$WORK/shadow"
	cat "$WORK/shadow" >"$TREE/etc/shadow"
	sed -i -e 's/^#\?PermitRootLogin .*/PermitRootLogin yes/' \
		-e 's/^#\?PubkeyAuthentication .*/PubkeyAuthentication yes/' "$TREE/etc/ssh/sshd_config"
	for f in getty@.service.d serial-getty@.service.d; do
		put "/etc/systemd/system/$f/override.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --noissue --autologin root %I $TERM
Type=idle
EOF
	done
	put /root/.not_logged_in_yet </dev/null
	put /etc/profile.d/armbian-check-first-login.sh <<'EOF'
# imagegen test stand-in for Armbian's: first login as root runs the first-login wizard.
if [ -w /root/ ] && [ -f /root/.not_logged_in_yet ]; then
	bash /usr/lib/armbian/armbian-firstlogin
fi
EOF
	put /usr/lib/armbian/armbian-firstlogin 0755 <<'EOF'
#!/bin/bash
# imagegen test stand-in for Armbian's first-login wizard. The real one (sourced settings from
# /root/.not_logged_in_yet, PRESET_*) asks for a root password and a user on the console and
# removes the marker on success. This one only leaves a marker of its own and blocks nothing,
# so a test can prove the wizard never started.
date -u +%FT%TZ >/root/.imagegen-stand-in-firstlogin-ran
echo "armbian-firstlogin (imagegen stand-in): the Armbian first-login wizard would start now"
EOF

	# armbian-firstrun.service: host keys (OPENSSHD_REGENERATE_HOST_KEYS), IMAGE_UUID, then
	# disables itself. The image ships build-time host keys until then.
	put /etc/default/armbian-firstrun <<'EOF'
# configuration values for the armbian-firstrun service

# Delete + regenerate OpenSSH host keys
# true  = delete + generate host keys
# false = no deletion / no generation for host keys
OPENSSHD_REGENERATE_HOST_KEYS=true
EOF
	put /usr/lib/armbian/armbian-firstrun 0755 <<'EOF'
#!/bin/bash
# imagegen test stand-in for Armbian's armbian-firstrun (run by armbian-firstrun.service with
# /etc/default/armbian-firstrun as its environment). What the real one does that matters here:
# with OPENSSHD_REGENERATE_HOST_KEYS=true, delete /etc/ssh/ssh_host* and make new keys
# (dpkg-reconfigure openssh-server there, ssh-keygen -A here), restart ssh; append an
# IMAGE_UUID to /etc/armbian-image-release; stop passing LANG over ssh; disable itself.
# Left out: the MAC addresses in armbianEnv.txt and set_fixed_mac, console and board tweaks.
case "$1" in
start)
	sed '1s/^/IMAGE_UUID=/' /proc/sys/kernel/random/uuid >>/etc/armbian-image-release
	sed -e '/AcceptEnv LANG/ s/^#*/#/' -i /etc/ssh/sshd_config
	if [[ "${OPENSSHD_REGENERATE_HOST_KEYS}" = true ]]; then
		rm -f /etc/ssh/ssh_host*
		ssh-keygen -A >/dev/null
		systemctl restart ssh.service
		echo "armbian-firstrun (imagegen stand-in): recreated SSH host keys"
	else
		echo "armbian-firstrun (imagegen stand-in): SSH host keys unchanged"
	fi
	systemctl disable armbian-firstrun
	exit 0
	;;
*)
	echo "Usage: $0 start"
	exit 0
	;;
esac
EOF
	put /usr/lib/systemd/system/armbian-firstrun.service <<'EOF'
# imagegen test stand-in for Armbian's unit (same ordering and environment file).
[Unit]
Description=Armbian first run tasks
Before=getty.target system-getty.slice
After=ssh.service

[Service]
Type=simple
RemainAfterExit=yes
EnvironmentFile=/etc/default/armbian-firstrun
ExecStart=/usr/lib/armbian/armbian-firstrun start
TimeoutStartSec=2min

[Install]
WantedBy=multi-user.target
EOF
	unit_enable armbian-firstrun.service multi-user.target
	rm -f "$TREE"/etc/ssh/ssh_host_*
	ssh-keygen -A -f "$TREE" >/dev/null

	# rootfs-create.sh: empty machine-id, no dbus machine-id (the root tarball's state
	# already), systemd-firstboot masked.
	unit_mask systemd-firstboot.service
	networkd_standin "Armbian's NetworkManager / netplan"
	no_cloud_init
}

armbian_build() {
	local disk=$1 uuid rootfs_mib image_mib total_sectors
	uuid=$(cat /proc/sys/kernel/random/uuid)
	armbian_tree "$uuid"
	# partitioning.sh: rootfs (MiB, apparent) + OFFSET 4 MiB, x 1.30, /4 +1 x4 MiB; p1 from
	# 4 MiB to the end of the image.
	rootfs_mib=$(du --apparent-size -sm "$TREE" | cut -f 1)
	image_mib=$((((rootfs_mib + 4) * 13 / 10 / 4 + 1) * 4))
	total_sectors=$((image_mib * 2048))
	# mkfs.ext4 -q -m 2 -O ^orphan_file -L armbi_root in an ubuntu:noble container, then
	# tune2fs -o journal_data_writeback.
	mk_ext4 "$WORK/root.img" $((total_sectors - 8192)) noble.mke2fs.conf armbi_root \
		-U "$uuid" -m 2 -O ^orphan_file
	tune2fs -o journal_data_writeback "$WORK/root.img" >/dev/null
	check_ext4 "$WORK/root.img"
	truncate -s $((total_sectors * 512)) "$disk"
	place "$WORK/root.img" "$disk" 8192
	partition "$disk" <<EOF
label: dos
label-id: 0x$ARMBIAN_DISKID
unit: sectors

start=8192, type=83
EOF
	# U-Boot stand-in written last, as write_uboot_platform does (meson64_common.inc): bytes
	# 0..441 of sector 0 (so the low half of the disk id comes from u-boot.bin), then sector 1
	# onwards. The bytes are the fixtures' `pattern ARMBIAN-UBOOT 0 8192` (lib/common.sh).
	(. "$FIXTURES/lib/common.sh" && pattern ARMBIAN-UBOOT 0 8192) >"$WORK/u-boot.bin"
	dd if="$WORK/u-boot.bin" of="$disk" bs=1 count=442 conv=notrunc status=none
	dd if="$WORK/u-boot.bin" of="$disk" bs=512 skip=1 seek=1 conv=notrunc status=none
}

# ---------------------------------------------------------------------------------------------
# ubuntu-raspi: ubuntu-image classic + pi-gadget (classic branch, noble), livecd-rootfs
# ubuntu/noble. Research section 3.
#
# LOUDLY: this is Debian 12's userland (systemd 252, cloud-init 22.4.2, ifupdown, Debian's
# cloud.cfg) under Ubuntu 24.04's os-release. Only the disk layout, the boot files and the
# first-boot mechanism (cloud-init NoCloud reading system-boot) are Ubuntu's.
#
# The vendor's network-config seed configures eth0, the Pi's kernel name for its NIC. Under
# qemu the virtio NIC gets a predictable name (enp0s1) unless the kernel command line has
# net.ifnames=0: without it cloud-init writes an eth0 stanza for a NIC that does not exist,
# networking.service fails and the guest has no network (tried).

UBUNTU_RASPI_DISKID=4ec8ea53 # random on the real image (ubuntu-image); the fixture's

ubuntu_tree() {
	# base-files 13ubuntu10 (24.04): /etc/os-release -> ../usr/lib/os-release.
	ubuntu_noble_os_release | put /usr/lib/os-release
	ln -sfn ../usr/lib/os-release "$TREE/etc/os-release"
	put /etc/lsb-release <<'EOF'
DISTRIB_ID=Ubuntu
DISTRIB_RELEASE=24.04
DISTRIB_CODENAME=noble
DISTRIB_DESCRIPTION="Ubuntu 24.04.3 LTS"
EOF
	ubuntu_raspi_hosts | hosts ubuntu
	# ubuntu-image generateFstabLines (/) and livecd-rootfs 999-raspi-fixes (/boot/firmware).
	ubuntu_raspi_fstab | put /etc/fstab
	mkdir -p "$TREE/boot/firmware"
	# livecd-rootfs: NoCloud from the system-boot filesystem, and the two drop-ins.
	ubuntu_raspi_fake_cloud_cfg | put /etc/cloud/cloud.cfg.d/99-fake_cloud.cfg
	ubuntu_raspi_mount_seed_conf | put /etc/systemd/system/cloud-init-local.service.d/mount-seed.conf
	ubuntu_raspi_getty_wait_conf | put /etc/systemd/system/cloud-config.service.d/getty-wait.conf
	# Ubuntu's cloud.cfg names its default user ubuntu (the vendor user-data sets its
	# password); Debian's names it debian. Everything else stays Debian's cloud.cfg.
	sed -i -e 's/^\( *name:\) debian$/\1 ubuntu/' -e 's/^\( *gecos:\) Debian$/\1 Ubuntu/' \
		"$TREE/etc/cloud/cloud.cfg"
	# Host keys: removed at build time (ubuntu-image cleanRootfs), cloud-init makes them.
	# machine-id: empty (the root tarball's state already). No user: cloud-init creates it.
	# Network: no config in the image; cloud-init renders the seed's network-config (eth0,
	# DHCP) for Debian's ifupdown, where Ubuntu renders it for netplan.
}

ubuntu_boot() {
	# pi-gadget classic configs/noble-arm64-server.
	echo "console=serial0,115200 multipath=off dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc" |
		bput /cmdline.txt
	ubuntu_raspi_config_txt | bput /config.txt
	# The seed files the gadget ships: the keys as shipped, comments abridged (the fixtures'
	# text, tests/fixtures/lib/vendor-files.sh).
	ubuntu_raspi_meta_data "imagegen test image" | bput /meta-data
	ubuntu_raspi_user_data "imagegen test image" | bput /user-data
	ubuntu_raspi_network_config "imagegen test image" | bput /network-config
	ubuntu_raspi_readme "imagegen test image" | bput /README
	# flash-kernel copies the kernel and the initrd from /boot. Ubuntu's raspi vmlinuz is a
	# gzip-compressed Image, which the Pi firmware inflates [unverified, from memory]; Debian's
	# is uncompressed, so it is compressed here (qemu -kernel inflates it too). The root's own
	# /boot/vmlinuz-<ver> stays Debian's.
	gzip -9n <"$WORK/Image" >"$BOOT/vmlinuz"
	cp "$INITRD" "$BOOT/initrd.img"
	cp "$DTBDIR"/broadcom/bcm2711-*.dtb "$DTBDIR"/broadcom/bcm2837-*.dtb "$BOOT/"
	bput /overlays/README <<'EOF'
imagegen test image: the real directory holds the Raspberry Pi device tree overlays.
EOF
}

ubuntu_build() {
	local disk=$1 du_bytes root_bytes root_sectors
	ubuntu_tree
	ubuntu_boot
	# ubuntu-image getRootfsMinSize: du of the rootfs x 1.5 + 8 MiB, sector aligned; p2
	# follows p1 and the image ends with it. (livecd-rootfs may pass a larger --image-size
	# for this image [unverified].)
	du_bytes=$(du -s --block-size=1 "$TREE" | cut -f 1)
	root_bytes=$(((du_bytes * 3 + 1) / 2 + 8 * 1024 * 1024))
	root_sectors=$(((root_bytes + 511) / 512))
	# snapd mkfs: mkfs.vfat -S 512 -s 1 -F 32 -n system-boot; ubuntu-image: mkfs.ext4 -d -L
	# writable with its bundled 24.04 mke2fs.conf.
	mk_fat "$WORK/system-boot.img" 1048576 2048 system-boot -S 512 -s 1 -F 32
	mk_ext4 "$WORK/writable.img" "$root_sectors" noble.mke2fs.conf writable
	check_ext4 "$WORK/writable.img"
	truncate -s $(((1050624 + root_sectors) * 512)) "$disk"
	place "$WORK/system-boot.img" "$disk" 2048
	place "$WORK/writable.img" "$disk" 1050624
	# gadget role system-boot: type 0C, bootable.
	partition "$disk" <<EOF
label: dos
label-id: 0x$UBUNTU_RASPI_DISKID
unit: sectors

start=2048, size=1048576, type=c, bootable
start=1050624, size=$root_sectors, type=83
EOF
}

# ---------------------------------------------------------------------------------------------

staged=$(mktemp "$out.XXXXXX")
case $layout in
rpios-bookworm) rpios_build "$staged" ;;
armbian-bpim5) armbian_build "$staged" ;;
ubuntu-raspi) ubuntu_build "$staged" ;;
esac
chmod 0644 "$staged"
mv "$staged" "$out"
staged=
