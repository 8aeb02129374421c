//! The fixture images match the vendor layouts in shared/research/vendor-images.md, as seen by
//! the real tools (sfdisk, sgdisk, blkid, dumpe2fs, e2fsck, debugfs, fsck.fat, mtools). These
//! tests are the evidence that the fixtures every other test builds on are right.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::oracle::{
    self, SfdiskPartition, assert_e2fsck_clean, assert_fsck_fat_clean, blkid, debugfs, dumpe2fs,
    ext4_cat, fat_cat, mtools, partition, partitions, read_bytes, sfdisk_json,
};
use common::{LAYOUTS, cached_fixture};

const GPT_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const GPT_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const GPT_XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
const GPT_LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const GPT_LINUX_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// ext4 features of a Debian bookworm / Ubuntu noble host (metadata_csum on, no
/// metadata_csum_seed, no orphan_file).
const HOST_1_47_0_FEATURES: &[&str] = &[
    "has_journal",
    "ext_attr",
    "resize_inode",
    "dir_index",
    "filetype",
    "extent",
    "64bit",
    "flex_bg",
    "sparse_super",
    "large_file",
    "huge_file",
    "dir_nlink",
    "extra_isize",
    "metadata_csum",
];

fn features(img: &Path, start: u64) -> BTreeSet<String> {
    dumpe2fs(img, start)["Filesystem features"]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn feature_set(base: &[&str], remove: &[&str], add: &[&str]) -> BTreeSet<String> {
    base.iter()
        .filter(|f| !remove.contains(f))
        .chain(add)
        .map(|f| f.to_string())
        .collect()
}

fn image_sectors(img: &Path) -> u64 {
    std::fs::metadata(img).expect("stat image").len() / 512
}

fn last_sector(p: &SfdiskPartition) -> u64 {
    p.start + p.size - 1
}

/// The stand-in bootloader bytes documented in tests/fixtures/INDEX.md: sector `s` is 16 lines
/// of 32 bytes, "<TAG> sector <s>" padded with spaces and ended by a newline.
fn pattern(tag: &str, first: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for s in first..first + count {
        let line = format!("{:<31}\n", format!("{tag} sector {s}"));
        for _ in 0..16 {
            out.extend_from_slice(line.as_bytes());
        }
    }
    out
}

/// Checks every root filesystem must pass: 4 KiB blocks, 256-byte inodes, e2fsck clean, a
/// hash-indexed /etc, root-owned system files, and /etc/os-release -> ../usr/lib/os-release.
fn check_root_fs(img: &Path, start: u64) {
    assert_e2fsck_clean(img, start);
    let header = dumpe2fs(img, start);
    assert_eq!(header["Block size"], "4096");
    assert_eq!(header["Inode size"], "256");
    assert_eq!(header["Filesystem state"], "clean");
    let htree = debugfs(img, start, "htree /etc");
    assert!(
        htree.contains("Root node dump"),
        "/etc is not hash-indexed:\n{htree}"
    );
    assert!(htree.contains("fixture-000.conf"), "{htree}");
    let stat = debugfs(img, start, "stat /etc/passwd");
    assert!(
        stat.contains("User:     0   Group:     0"),
        "/etc/passwd owner:\n{stat}"
    );
    let stat = debugfs(img, start, "stat /etc/shadow");
    assert!(
        stat.contains("User:     0   Group:    42"),
        "/etc/shadow owner:\n{stat}"
    );
    assert!(stat.contains("Mode:  0640"), "/etc/shadow mode:\n{stat}");
    let stat = debugfs(img, start, "stat /etc/os-release");
    assert!(stat.contains("Type: symlink"), "{stat}");
    assert!(stat.contains("\"../usr/lib/os-release\""), "{stat}");
    let stat = debugfs(img, start, "stat /bin");
    assert!(
        stat.contains("Type: symlink") && stat.contains("\"usr/bin\""),
        "{stat}"
    );
}

#[test]
fn every_partition_passes_its_filesystem_checker() {
    for layout in LAYOUTS {
        let img = cached_fixture(layout);
        for p in partitions(&img) {
            match blkid(&img, p.start).get("TYPE").map(String::as_str) {
                Some("ext4") => assert_e2fsck_clean(&img, p.start),
                Some("vfat") => assert_fsck_fat_clean(&img, p.start, p.size),
                // BIOS boot partitions hold (stand-in) GRUB core.img, no filesystem.
                None => assert_eq!(p.type_, GPT_BIOS_BOOT, "{layout} p{}", p.number),
                Some(other) => panic!("{layout} p{}: unexpected {other}", p.number),
            }
        }
    }
}

#[test]
fn builds_are_deterministic() {
    // The smallest layout, rebuilt from scratch and compared with the cached build.
    let fresh = tempfile::Builder::new()
        .suffix(".img")
        .tempfile_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .into_temp_path();
    let script = common::fixtures_dir().join("mkimage.sh");
    oracle::run(
        "bash",
        &[
            script.to_str().unwrap(),
            "armbian-bpim5",
            fresh.to_str().unwrap(),
        ],
    );
    oracle::run(
        "cmp",
        &[
            cached_fixture("armbian-bpim5").to_str().unwrap(),
            fresh.to_str().unwrap(),
        ],
    );
}

#[test]
fn fixture_copies_are_private() {
    let a = common::fixture("armbian-bpim5");
    let b = common::fixture("armbian-bpim5");
    assert_ne!(*a, *b);
    std::fs::write(&a, b"scribbled").unwrap();
    assert_eq!(read_bytes(&b, 0, 9), pattern("ARMBIAN-UBOOT", 0, 1)[..9]);
}

fn check_rpios(layout: &str, suite: &str) {
    let img = cached_fixture(layout);
    let table = sfdisk_json(&img);
    assert_eq!(table["label"], "dos");
    assert_eq!(table["id"], "0xd9c86127");
    let parts = partitions(&img);
    assert_eq!(parts.len(), 2);
    let (boot, root) = (&parts[0], &parts[1]);
    assert_eq!(
        (boot.number, boot.start, boot.size, boot.type_.as_str()),
        (1, 16384, 1048576, "c")
    );
    assert_eq!(
        (root.number, root.start, root.type_.as_str()),
        (2, 1064960, "83")
    );
    assert!(!boot.bootable && !root.bootable, "pi-gen sets no boot flag");
    assert_eq!(
        last_sector(root) + 1,
        image_sectors(&img),
        "image ends at the end of p2"
    );

    let fat = blkid(&img, boot.start);
    assert_eq!(
        (fat["TYPE"].as_str(), fat["VERSION"].as_str()),
        ("vfat", "FAT32")
    );
    assert_eq!(fat["LABEL"], "bootfs");
    let cluster = if suite == "bookworm" { 4 } else { 1 };
    let info = mtools("minfo", &["-i", &oracle::fat_at(&img, boot.start)]);
    assert!(
        info.contains(&format!("cluster size: {cluster} sectors\n")),
        "{info}"
    );

    let id = table["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_owned();
    let cmdline = fat_cat(&img, boot.start, "/cmdline.txt");
    let tail = if suite == "bookworm" {
        "quiet init=/usr/lib/raspberrypi-sys-mods/firstboot"
    } else {
        "resize"
    };
    assert_eq!(
        cmdline,
        format!(
            "console=serial0,115200 console=tty1 root=PARTUUID={id}-02 rootfstype=ext4 \
             fsck.repair=yes rootwait {tail}\n"
        )
    );
    assert!(fat_cat(&img, boot.start, "/config.txt").contains("arm_64bit=1"));
    assert!(!fat_cat(&img, boot.start, "/kernel8.img").is_empty());
    let overlays = mtools(
        "mdir",
        &["-b", "-i", &oracle::fat_at(&img, boot.start), "::/overlays"],
    );
    assert!(overlays.contains("vc4-kms-v3d.dtbo"), "{overlays}");
    let seed = mtools(
        "mdir",
        &["-b", "-i", &oracle::fat_at(&img, boot.start), "::/"],
    );
    let has_seed = ["meta-data", "user-data", "network-config"].map(|f| seed.contains(f));
    if suite == "trixie" {
        assert_eq!(has_seed, [true; 3], "{seed}");
        let meta = fat_cat(&img, boot.start, "/meta-data");
        assert!(meta.contains("dsmode: local") && meta.contains("instance_id: rpios-image"));
    } else {
        assert_eq!(has_seed, [false; 3], "{seed}");
    }

    check_root_fs(&img, root.start);
    let header = dumpe2fs(&img, root.start);
    assert_eq!(header["Filesystem volume name"], "rootfs");
    let expected = if suite == "bookworm" {
        feature_set(HOST_1_47_0_FEATURES, &["64bit", "huge_file"], &[])
    } else {
        feature_set(
            HOST_1_47_0_FEATURES,
            &["64bit", "huge_file"],
            &["metadata_csum_seed", "orphan_file"],
        )
    };
    assert_eq!(features(&img, root.start), expected);
    let fstab = ext4_cat(&img, root.start, "/etc/fstab");
    let fstab_refs: Vec<(&str, &str)> = fstab
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?))
        })
        .collect();
    assert_eq!(
        fstab_refs,
        [
            ("proc", "/proc"),
            (&*format!("PARTUUID={id}-01"), "/boot/firmware"),
            (&*format!("PARTUUID={id}-02"), "/"),
        ]
    );
    assert!(
        ext4_cat(&img, root.start, "/usr/lib/os-release")
            .contains(&format!("VERSION_CODENAME={suite}\n"))
    );
    assert!(ext4_cat(&img, root.start, "/etc/rpi-issue").starts_with("Raspberry Pi reference"));
    assert_eq!(ext4_cat(&img, root.start, "/etc/hostname"), "raspberrypi\n");
    let machine_id = if suite == "bookworm" {
        ""
    } else {
        "uninitialized\n"
    };
    assert_eq!(ext4_cat(&img, root.start, "/etc/machine-id"), machine_id);
    assert!(ext4_cat(&img, root.start, "/etc/passwd").contains("\npi:x:1000:1000:"));
    let home = debugfs(&img, root.start, "stat /home/pi");
    assert!(home.contains("User:  1000   Group:  1000"), "{home}");
    assert!(
        ext4_cat(&img, root.start, "/usr/lib/raspberrypi-sys-mods/firstboot").starts_with("#!")
    );
    let ssh_keys = debugfs(&img, root.start, "ls /etc/ssh");
    assert!(
        !ssh_keys.contains("ssh_host_"),
        "pi-gen deletes host keys: {ssh_keys}"
    );
    if suite == "trixie" {
        assert!(
            ext4_cat(
                &img,
                root.start,
                "/etc/cloud/cloud.cfg.d/99_raspberry-pi.cfg"
            )
            .contains("seedfrom: file:///boot/firmware")
        );
    }
}

#[test]
fn rpios_bookworm_layout() {
    check_rpios("rpios-bookworm", "bookworm");
}

#[test]
fn rpios_trixie_layout() {
    check_rpios("rpios-trixie", "trixie");
}

#[test]
fn armbian_bpim5_layout() {
    let img = cached_fixture("armbian-bpim5");
    let table = sfdisk_json(&img);
    assert_eq!(table["label"], "dos");
    let parts = partitions(&img);
    assert_eq!(parts.len(), 1);
    let root = &parts[0];
    assert_eq!(
        (root.number, root.start, root.type_.as_str()),
        (1, 8192, "83")
    );
    assert_eq!(last_sector(root) + 1, image_sectors(&img));

    // U-Boot stand-in: bytes 0..441 of sector 0 (including the low half of the disk id) and
    // all of sectors 1..8191; the partition entries and the signature are the table's own.
    let uboot = pattern("ARMBIAN-UBOOT", 0, 8192);
    let head = read_bytes(&img, 0, 4 << 20);
    assert_eq!(head[..442], uboot[..442]);
    assert_eq!(head[512..], uboot[512..]);
    assert_eq!(head[510..512], [0x55, 0xaa]);
    let disk_id = u32::from_le_bytes(head[440..444].try_into().unwrap());
    assert_eq!(table["id"], format!("0x{disk_id:08x}"));

    check_root_fs(&img, root.start);
    let header = dumpe2fs(&img, root.start);
    assert_eq!(header["Filesystem volume name"], "armbi_root");
    assert_eq!(
        features(&img, root.start),
        feature_set(HOST_1_47_0_FEATURES, &[], &[])
    );
    assert!(header["Default mount options"].contains("journal_data_writeback"));
    let blocks: u64 = header["Block count"].parse().unwrap();
    let reserved: u64 = header["Reserved block count"].parse().unwrap();
    assert_eq!(reserved, blocks * 2 / 100, "-m 2");

    let uuid = blkid(&img, root.start)["UUID"].clone();
    let env = ext4_cat(&img, root.start, "/boot/armbianEnv.txt");
    assert!(
        env.lines().any(|l| l == format!("rootdev=UUID={uuid}")),
        "{env}"
    );
    assert!(
        env.contains("fdtfile=amlogic/meson-sm1-bananapi-m5.dtb\n"),
        "{env}"
    );
    let fstab = ext4_cat(&img, root.start, "/etc/fstab");
    assert!(
        fstab.starts_with(&format!("UUID={uuid} / ext4 ")),
        "{fstab}"
    );
    assert!(ext4_cat(&img, root.start, "/etc/armbian-release").contains("BOARD=bananapim5\n"));
    assert_eq!(ext4_cat(&img, root.start, "/root/.not_logged_in_yet"), "");
    assert_eq!(ext4_cat(&img, root.start, "/etc/machine-id"), "");
    let wants = debugfs(
        &img,
        root.start,
        "ls /etc/systemd/system/multi-user.target.wants",
    );
    assert!(wants.contains("armbian-firstrun.service"), "{wants}");
    let wants = debugfs(
        &img,
        root.start,
        "ls /etc/systemd/system/basic.target.wants",
    );
    assert!(
        wants.contains("armbian-resize-filesystem.service"),
        "{wants}"
    );
}

#[test]
fn ubuntu_raspi_layout() {
    let img = cached_fixture("ubuntu-raspi");
    let table = sfdisk_json(&img);
    assert_eq!(table["label"], "dos");
    let parts = partitions(&img);
    assert_eq!(parts.len(), 2);
    let (boot, root) = (&parts[0], &parts[1]);
    assert_eq!(
        (boot.number, boot.start, boot.size, boot.type_.as_str()),
        (1, 2048, 1048576, "c")
    );
    assert!(
        boot.bootable,
        "ubuntu-image sets the boot flag on system-boot"
    );
    assert_eq!(
        (root.number, root.start, root.type_.as_str()),
        (2, 1050624, "83")
    );
    assert!(!root.bootable);
    assert_eq!(last_sector(root) + 1, image_sectors(&img));

    let fat = blkid(&img, boot.start);
    assert_eq!(
        (fat["VERSION"].as_str(), fat["LABEL"].as_str()),
        ("FAT32", "system-boot")
    );
    let info = mtools("minfo", &["-i", &oracle::fat_at(&img, boot.start)]);
    assert!(info.contains("sector size: 512 bytes\n"), "{info}");
    assert!(info.contains("cluster size: 1 sectors\n"), "{info}");
    let cmdline = fat_cat(&img, boot.start, "/cmdline.txt");
    assert!(cmdline.contains(" root=LABEL=writable ") && cmdline.lines().count() == 1);
    assert!(fat_cat(&img, boot.start, "/meta-data").contains("instance_id: cloud-image"));
    assert!(fat_cat(&img, boot.start, "/user-data").starts_with("#cloud-config\n"));
    assert!(fat_cat(&img, boot.start, "/network-config").contains("dhcp4: true"));

    check_root_fs(&img, root.start);
    assert_eq!(
        dumpe2fs(&img, root.start)["Filesystem volume name"],
        "writable"
    );
    assert_eq!(
        features(&img, root.start),
        feature_set(HOST_1_47_0_FEATURES, &[], &[])
    );
    let fstab = ext4_cat(&img, root.start, "/etc/fstab");
    assert!(fstab.contains("LABEL=writable\t/\text4\t"), "{fstab}");
    assert!(fstab.contains("LABEL=system-boot ") && fstab.contains(" /boot/firmware "));
    assert!(
        ext4_cat(&img, root.start, "/etc/cloud/cloud.cfg.d/99-fake_cloud.cfg")
            .contains("fs_label: system-boot")
    );
    assert!(ext4_cat(&img, root.start, "/usr/lib/os-release").contains("VERSION_ID=\"24.04\""));
    assert_eq!(ext4_cat(&img, root.start, "/etc/machine-id"), "");
}

#[test]
fn ubuntu_cloud_amd64_layout() {
    let img = cached_fixture("ubuntu-cloud-amd64");
    let verify = oracle::run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
    let table = sfdisk_json(&img);
    assert_eq!(table["label"], "gpt");
    let geometry: Vec<(u32, u64, u64, &str)> = partitions(&img)
        .iter()
        .map(|p| {
            (
                p.number,
                p.start,
                last_sector(p),
                match p.type_.as_str() {
                    GPT_BIOS_BOOT => "bios",
                    GPT_ESP => "esp",
                    GPT_XBOOTLDR => "xbootldr",
                    GPT_LINUX_FS => "linux",
                    other => panic!("unexpected type {other}"),
                },
            )
        })
        .collect();
    let last_lba = table["lastlba"].as_u64().unwrap();
    assert_eq!(
        geometry,
        [
            (1, 2099200, last_lba, "linux"),
            (14, 2048, 10239, "bios"),
            (15, 10240, 227327, "esp"),
            (16, 227328, 2097152, "xbootldr"),
        ]
    );
    assert_eq!(
        last_lba + 34,
        image_sectors(&img),
        "p1 ends where the backup GPT starts"
    );

    // GRUB stand-ins: boot.img in the protective MBR's code area, core.img filling p14.
    assert_eq!(
        read_bytes(&img, 0, 440),
        pattern("UBUNTU-GRUB-BOOT", 0, 1)[..440]
    );
    assert_eq!(
        read_bytes(&img, 2048 * 512, 8192 * 512),
        pattern("UBUNTU-GRUB-CORE", 2048, 8192)
    );

    let esp = blkid(&img, 10240);
    assert_eq!(
        (esp["VERSION"].as_str(), esp["LABEL"].as_str()),
        ("FAT32", "UEFI")
    );
    let boot = blkid(&img, 227328);
    assert_eq!(
        (boot["TYPE"].as_str(), boot["LABEL"].as_str()),
        ("ext4", "BOOT")
    );
    let stub = fat_cat(&img, 10240, "/EFI/ubuntu/grub.cfg");
    assert!(
        stub.starts_with(&format!("search.fs_uuid {} root\n", boot["UUID"])),
        "{stub}"
    );
    let grub = ext4_cat(&img, 227328, "/grub/grub.cfg");
    assert!(grub.contains(" root=LABEL=cloudimg-rootfs "), "{grub}");
    assert_eq!(
        features(&img, 227328),
        feature_set(HOST_1_47_0_FEATURES, &[], &[])
    );

    check_root_fs(&img, 2099200);
    let header = dumpe2fs(&img, 2099200);
    assert_eq!(header["Filesystem volume name"], "cloudimg-rootfs");
    assert_eq!(header["Reserved block count"], "0", "-m 0");
    // -i 8192 (mke2fs rounds the count to whole inode-table blocks; the default is 16384).
    let inodes: u64 = header["Inode count"].parse().unwrap();
    let blocks: u64 = header["Block count"].parse().unwrap();
    let ratio = blocks * 4096 / inodes;
    assert!((8100..=8300).contains(&ratio), "bytes per inode {ratio}");
    assert_eq!(
        features(&img, 2099200),
        feature_set(HOST_1_47_0_FEATURES, &[], &[])
    );
    let fstab = ext4_cat(&img, 2099200, "/etc/fstab");
    let mounts: Vec<(&str, &str, &str)> = fstab
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("LABEL=cloudimg-rootfs", "/", "ext4"),
            ("LABEL=BOOT", "/boot", "ext4"),
            ("LABEL=UEFI", "/boot/efi", "vfat"),
        ]
    );
    assert!(ext4_cat(&img, 2099200, "/etc/cloud/cloud.cfg.d/90_dpkg.cfg").contains("NoCloud"));
    assert!(ext4_cat(&img, 2099200, "/usr/lib/os-release").contains("ID=ubuntu\n"));
    assert_eq!(ext4_cat(&img, 2099200, "/etc/machine-id"), "");
}

#[test]
fn debian_genericcloud_layout() {
    let img = cached_fixture("debian-genericcloud");
    let verify = oracle::run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
    let table = sfdisk_json(&img);
    assert_eq!(table["label"], "gpt");
    let last_lba = table["lastlba"].as_u64().unwrap();
    let p1 = partition(&img, 1);
    let p14 = partition(&img, 14);
    let p15 = partition(&img, 15);
    assert_eq!(
        (p14.start, last_sector(&p14), p14.type_.as_str()),
        (2048, 8191, GPT_BIOS_BOOT)
    );
    assert_eq!(
        (p15.start, last_sector(&p15), p15.type_.as_str()),
        (8192, 262143, GPT_ESP)
    );
    assert_eq!(
        (p1.start, last_sector(&p1), p1.type_.as_str()),
        (262144, last_lba, GPT_LINUX_ROOT_X86_64)
    );
    assert_eq!(
        read_bytes(&img, 0, 440),
        pattern("DEBIAN-GRUB-BOOT", 0, 1)[..440]
    );
    assert_eq!(
        read_bytes(&img, 2048 * 512, 6144 * 512),
        pattern("DEBIAN-GRUB-CORE", 2048, 6144)
    );

    assert_eq!(blkid(&img, p15.start)["TYPE"], "vfat");
    check_root_fs(&img, p1.start);
    assert_eq!(
        features(&img, p1.start),
        feature_set(HOST_1_47_0_FEATURES, &[], &[])
    );
    let root_partuuid = p1.uuid.unwrap().to_lowercase();
    let esp_partuuid = p15.uuid.unwrap().to_lowercase();
    let fstab = ext4_cat(&img, p1.start, "/etc/fstab");
    assert!(
        fstab.contains(&format!("PARTUUID={root_partuuid} / ext4 ")),
        "{fstab}"
    );
    assert!(
        fstab.contains(&format!("PARTUUID={esp_partuuid} /boot/efi vfat ")),
        "{fstab}"
    );
    let grub = ext4_cat(&img, p1.start, "/boot/grub/grub.cfg");
    assert!(
        grub.contains(&format!(" root=PARTUUID={root_partuuid} ")),
        "{grub}"
    );
    let root_uuid = blkid(&img, p1.start)["UUID"].clone();
    let stub = fat_cat(&img, p15.start, "/EFI/debian/grub.cfg");
    assert!(
        stub.starts_with(&format!("search.fs_uuid {root_uuid} root\n")),
        "{stub}"
    );
    let os = ext4_cat(&img, p1.start, "/usr/lib/os-release");
    assert!(os.contains("VERSION_CODENAME=bookworm\n") && os.contains("ID=debian\n"));
    assert_eq!(ext4_cat(&img, p1.start, "/etc/machine-id"), "");
}
