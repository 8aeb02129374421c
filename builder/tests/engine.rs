//! Acceptance of the image engine on every vendor layout: a batch of edits through the mount
//! view, checked with e2fsck, fsck.fat, debugfs and mtools; bytes outside the edited
//! filesystems untouched; the same edits give the same bytes.

mod common;

use common::oracle::{self, SfdiskPartition};
use common::{LAYOUTS, cached_fixture, fixture};
use imagegen::fs::{Content, Meta, Op};
use imagegen::image::Image;
use std::fs::File;
use std::io::Read;
use std::path::Path;

const EPOCH: i64 = 1_750_000_000;

/// Where the layout keeps its root and its FAT partition (by partition number), and where
/// the FAT one is mounted.
struct Shape {
    root: u32,
    fat: Option<(u32, &'static str)>,
}

fn shape(layout: &str) -> Shape {
    match layout {
        "rpios-bookworm" | "rpios-trixie" | "ubuntu-raspi" => Shape {
            root: 2,
            fat: Some((1, "/boot/firmware")),
        },
        "armbian-bpim5" => Shape { root: 1, fat: None },
        "ubuntu-cloud-amd64" | "debian-genericcloud" => Shape {
            root: 1,
            fat: Some((15, "/boot/efi")),
        },
        other => panic!("no shape for {other}"),
    }
}

/// 1 MiB of bytes that are not all alike (an LCG, so nothing compresses it away).
fn mebibyte() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..1 << 20)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
    Meta {
        mode,
        uid,
        gid,
        mtime: EPOCH,
    }
}

fn batch(fat_mount: Option<&str>) -> Vec<Op> {
    let mut ops = vec![
        Op::WriteFile {
            path: "/etc/imagegen-secret".into(),
            content: Content::Bytes(b"s3cret\n".to_vec()),
            meta: meta(0o600, 1000, 1000),
        },
        Op::Mkdir {
            path: "/opt/imagegen/a/b".into(),
            meta: meta(0o755, 0, 0),
            parents: true,
        },
        Op::WriteFile {
            path: "/opt/imagegen/a/b/big.bin".into(),
            content: Content::Bytes(mebibyte()),
            meta: meta(0o644, 0, 0),
        },
        Op::Symlink {
            path: "/etc/imagegen-link".into(),
            target: "hostname".into(),
            meta: meta(0o777, 0, 0),
        },
        Op::Remove {
            path: "/etc/fixture-007.conf".into(),
        },
        Op::WriteFile {
            path: "/etc/hostname".into(),
            content: Content::Bytes(b"edited\n".to_vec()),
            meta: meta(0o644, 0, 0),
        },
    ];
    if let Some(m) = fat_mount {
        ops.push(Op::WriteFile {
            path: format!("{m}/imagegen.txt"),
            content: Content::Bytes(b"on the FAT partition\n".to_vec()),
            meta: meta(0o644, 0, 0),
        });
    }
    ops
}

fn part(parts: &[SfdiskPartition], n: u32) -> &SfdiskPartition {
    parts
        .iter()
        .find(|p| p.number == n)
        .expect("partition exists")
}

/// `debugfs stat` fields we check.
fn stat(img: &Path, start: u64, path: &str) -> String {
    oracle::debugfs(img, start, &format!("stat \"{path}\""))
}

/// Byte ranges of `a` and `b` outside `skip` (sector ranges) are identical.
fn assert_same_outside(a: &Path, b: &Path, skip: &[(u64, u64)]) {
    let len = std::fs::metadata(a).unwrap().len();
    assert_eq!(len, std::fs::metadata(b).unwrap().len(), "sizes differ");
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let chunk = 1 << 20;
    let (mut ba, mut bb) = (vec![0u8; chunk], vec![0u8; chunk]);
    let mut off = 0u64;
    while off < len {
        let n = chunk.min((len - off) as usize);
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] == bb[..n] {
            off += n as u64;
            continue;
        }
        for i in 0..n {
            if ba[i] != bb[i] {
                let byte = off + i as u64;
                let inside = skip
                    .iter()
                    .any(|(s, c)| byte >= s * 512 && byte < (s + c) * 512);
                assert!(inside, "byte {byte} changed outside the edited filesystems");
            }
        }
        off += n as u64;
    }
}

fn edit_and_check(layout: &str) {
    let img = fixture(layout);
    let sh = shape(layout);
    let parts = oracle::partitions(&img);
    let root = part(&parts, sh.root);

    let mut image = Image::open(&img).unwrap();
    image.apply(&batch(sh.fat.map(|f| f.1)), EPOCH).unwrap();
    drop(image);

    // Every filesystem checks clean.
    for p in &parts {
        match oracle::blkid(&img, p.start).get("TYPE").map(String::as_str) {
            Some("ext4") => oracle::assert_e2fsck_clean(&img, p.start),
            Some("vfat") => oracle::assert_fsck_fat_clean(&img, p.start, p.size),
            _ => {}
        }
    }
    // Read back with debugfs.
    let r = root.start;
    assert_eq!(
        oracle::ext4_cat(&img, r, "/etc/imagegen-secret"),
        "s3cret\n"
    );
    let st = stat(&img, r, "/etc/imagegen-secret");
    assert!(st.contains("Mode:  0600"), "{st}");
    assert!(st.contains("User:  1000   Group:  1000"), "{st}");
    assert_eq!(oracle::ext4_cat(&img, r, "/etc/hostname"), "edited\n");
    let st = stat(&img, r, "/etc/imagegen-link");
    assert!(st.contains("Fast link dest: \"hostname\""), "{st}");
    let st = stat(&img, r, "/opt/imagegen/a/b");
    assert!(
        st.contains("Type: directory") && st.contains("Mode:  0755"),
        "{st}"
    );
    let dumped = tempfile::NamedTempFile::new().unwrap();
    oracle::debugfs(
        &img,
        r,
        &format!("dump /opt/imagegen/a/b/big.bin {}", dumped.path().display()),
    );
    assert!(
        std::fs::read(dumped.path()).unwrap() == mebibyte(),
        "1 MiB file differs"
    );
    let gone = oracle::output(
        "debugfs",
        &[
            "-R",
            "stat /etc/fixture-007.conf",
            &oracle::ext4_at(&img, r),
        ],
    );
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("File not found"),
        "removed file is still there"
    );
    // /etc is still hash-indexed after inserting into it.
    let htree = oracle::debugfs(&img, r, "htree /etc");
    assert!(htree.contains("Root node dump"), "{htree}");
    if let Some((n, _)) = sh.fat {
        let fat = part(&parts, n);
        assert_eq!(
            oracle::fat_cat(&img, fat.start, "/imagegen.txt"),
            "on the FAT partition\n"
        );
    }
    // Nothing outside the root and FAT filesystems moved.
    let mut edited = vec![(root.start, root.size)];
    if let Some((n, _)) = sh.fat {
        let f = part(&parts, n);
        edited.push((f.start, f.size));
    }
    assert_same_outside(&cached_fixture(layout), &img, &edited);
}

#[test]
fn batch_on_every_layout() {
    for layout in LAYOUTS {
        eprintln!("layout {layout}");
        edit_and_check(layout);
    }
}

#[test]
fn same_edits_give_same_bytes() {
    for layout in ["rpios-trixie", "ubuntu-cloud-amd64"] {
        let sh = shape(layout);
        let (a, b) = (fixture(layout), fixture(layout));
        for img in [&a, &b] {
            let mut image = Image::open(img).unwrap();
            image.apply(&batch(sh.fat.map(|f| f.1)), EPOCH).unwrap();
        }
        let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert!(
            x == y,
            "{layout}: two identical batches gave different bytes"
        );
    }
}

#[test]
fn mount_view_follows_fstab_and_symlinks() {
    // rpios: cmdline.txt lives on the FAT partition, reached as /boot/firmware/cmdline.txt.
    let img = cached_fixture("rpios-bookworm");
    let parts = oracle::partitions(&img);
    let mut image = Image::open(&img).unwrap();
    let via_view =
        String::from_utf8(image.read_file("/boot/firmware/cmdline.txt").unwrap()).unwrap();
    assert_eq!(
        via_view,
        oracle::fat_cat(&img, part(&parts, 1).start, "/cmdline.txt")
    );
    assert!(via_view.contains("root=PARTUUID=d9c86127-02"), "{via_view}");
    // /etc/os-release is a relative symlink to ../usr/lib/os-release.
    let os = image.os_release().unwrap().unwrap();
    assert_eq!(
        os.get("VERSION_CODENAME").map(String::as_str),
        Some("bookworm")
    );

    // Ubuntu cloud: /boot is its own ext4 (BOOT, p16), /boot/efi the ESP inside it.
    let img = cached_fixture("ubuntu-cloud-amd64");
    let parts = oracle::partitions(&img);
    let mut image = Image::open(&img).unwrap();
    let grub = String::from_utf8(image.read_file("/boot/grub/grub.cfg").unwrap()).unwrap();
    assert_eq!(
        grub,
        oracle::ext4_cat(&img, part(&parts, 16).start, "/grub/grub.cfg")
    );
    assert!(grub.contains("root=LABEL=cloudimg-rootfs"), "{grub}");
}
