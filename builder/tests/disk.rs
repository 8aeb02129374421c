//! Partition tables against real tools: images are laid out by sfdisk and sgdisk with the
//! geometry of the vendor images (research/vendor-images.md), read back by `disk::read` and
//! compared with `sfdisk --json`; grown images are checked by `sgdisk -v` / `sfdisk -V` and by
//! comparing every byte with the original outside the table structures.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imagegen::disk::{self, DiskError, PartType, PartitionTable, SECTOR, TableKind};

const MIB: u64 = 1024 * 1024;

/// Runs a tool; a missing tool fails the test with the package that provides it.
fn run(tool: &str, package: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool} ({e}): install the `{package}` package"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn sfdisk(args: &[&str], stdin: Option<&str>) -> String {
    run("sfdisk", "fdisk", args, stdin)
}

fn sgdisk(args: &[&str]) -> String {
    run("sgdisk", "gdisk", args, None)
}

fn sparse_file(path: &Path, len: u64) {
    File::create(path).unwrap().set_len(len).unwrap();
}

/// Inverts one byte.
fn flip(path: &Path, offset: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[!b[0]]).unwrap();
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// Bytes no partitioning tool would produce, so any change to them is visible.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn read_table(path: &Path) -> Result<PartitionTable, DiskError> {
    disk::read(&mut File::open(path).unwrap())
}

/// Compares a table with `sfdisk --json` (logical partitions, which `disk::read` does not
/// walk, are left out).
fn assert_matches_sfdisk(t: &PartitionTable, path: &Path) {
    let json: serde_json::Value =
        serde_json::from_str(&sfdisk(&["--json", path.to_str().unwrap()], None)).unwrap();
    let pt = &json["partitiontable"];
    let id = pt["id"].as_str().unwrap().to_lowercase();
    match pt["label"].as_str().unwrap() {
        "dos" => {
            assert_eq!(t.kind, TableKind::Mbr);
            assert_eq!(t.disk_id, id.trim_start_matches("0x"));
        }
        "gpt" => {
            assert_eq!(t.kind, TableKind::Gpt);
            assert_eq!(t.disk_id, id);
        }
        other => panic!("unexpected label {other}"),
    }
    let node_prefix = path.to_str().unwrap();
    let mut seen = 0;
    for p in pt["partitions"].as_array().unwrap() {
        let number: u32 = p["node"].as_str().unwrap()[node_prefix.len()..]
            .parse()
            .unwrap();
        if t.kind == TableKind::Mbr && number > 4 {
            continue;
        }
        seen += 1;
        let ours = t
            .partitions
            .iter()
            .find(|q| q.number == number)
            .unwrap_or_else(|| panic!("partition {number} missing from {t:?}"));
        assert_eq!(ours.start, p["start"].as_u64().unwrap() * SECTOR);
        assert_eq!(ours.size, p["size"].as_u64().unwrap() * SECTOR);
        let ty = p["type"].as_str().unwrap();
        match &ours.part_type {
            PartType::Mbr(b) => {
                assert_eq!(*b, u8::from_str_radix(ty, 16).unwrap());
                // The kernel's rule (research/vendor-images.md §0); sfdisk cannot print it.
                assert_eq!(ours.partuuid, format!("{}-{number:02}", t.disk_id));
                assert_eq!(ours.bootable, p["bootable"].as_bool().unwrap_or(false));
            }
            PartType::Gpt(g) => {
                assert_eq!(*g, ty.to_lowercase());
                assert_eq!(ours.partuuid, p["uuid"].as_str().unwrap().to_lowercase());
                assert_eq!(ours.name.as_deref(), p["name"].as_str());
            }
        }
    }
    assert_eq!(seen, t.partitions.len(), "{t:?}");
}

/// Asserts that `new` equals `old` everywhere outside `allowed`, and is zero beyond the old
/// length (where the caller's `set_len` added zeros) outside `allowed`.
fn assert_unchanged_except(old: &Path, new: &Path, allowed: &[Range<u64>]) {
    let allowed_at = |pos: u64| allowed.iter().any(|r| r.contains(&pos));
    let old_len = old.metadata().unwrap().len();
    let mut a = File::open(old).unwrap();
    let mut b = File::open(new).unwrap();
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut pos = 0u64;
    loop {
        let n = b.read(&mut bb).unwrap();
        if n == 0 {
            break;
        }
        let from_old = (old_len.saturating_sub(pos) as usize).min(n);
        a.read_exact(&mut ba[..from_old]).unwrap();
        ba[from_old..n].fill(0);
        if ba[..n] != bb[..n] {
            for i in 0..n {
                let at = pos + i as u64;
                assert!(
                    ba[i] == bb[i] || allowed_at(at),
                    "byte {at} changed from {:#04x} to {:#04x}",
                    ba[i],
                    bb[i]
                );
            }
        }
        pos += n as u64;
    }
}

/// Sparse copy: std::fs::copy would write out every hole of these mostly empty images.
fn copy(dir: &Path, from: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    run(
        "cp",
        "coreutils",
        &[
            "--sparse=always",
            from.to_str().unwrap(),
            to.to_str().unwrap(),
        ],
        None,
    );
    to
}

fn grow_file(path: &Path, by: u64) -> disk::Partition {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len + by).unwrap();
    disk::grow_last_partition(&mut f).unwrap()
}

/// Raspberry Pi OS geometry (2025-05-13 bookworm lite, disk id 0xd9c86127), with a smaller p2.
fn rpi_image(dir: &Path) -> PathBuf {
    let path = dir.join("rpi.img");
    sparse_file(&path, (1064960 + 163840) * SECTOR);
    sfdisk(
        &["-q", path.to_str().unwrap()],
        Some(
            "label: dos\nlabel-id: 0xd9c86127\nstart=16384, size=1048576, type=c\n\
             start=1064960, type=83\n",
        ),
    );
    path
}

/// Armbian (Banana Pi M5) geometry: one partition at 4 MiB, U-Boot written over MBR bytes
/// 0..446 and sectors 1..8191 after partitioning, as Armbian's write_uboot_platform does.
fn armbian_image(dir: &Path) -> PathBuf {
    let path = dir.join("armbian.img");
    sparse_file(&path, 24 * MIB);
    sfdisk(
        &["-q", path.to_str().unwrap()],
        Some("label: dos\nstart=8192, type=83\n"),
    );
    write_at(&path, 0, &pattern(7, 446));
    write_at(&path, SECTOR, &pattern(9, 8191 * SECTOR as usize));
    path
}

/// Ubuntu 24.04 cloud geometry (livecd-rootfs sgdisk arguments, smaller p16), GRUB boot.img
/// stand-in in MBR 0..440, core.img stand-in in p14, filler in the gap before p14.
fn ubuntu_image(dir: &Path) -> PathBuf {
    let path = dir.join("ubuntu.img");
    sparse_file(&path, 300 * MIB);
    let p = path.to_str().unwrap();
    sgdisk(&[
        "--new=14::+4M",
        "--new=15::+106M",
        "--new=16::+64M",
        "--typecode=16:ea00",
        "--new=1::",
        "-t",
        "14:ef02",
        "-t",
        "15:ef00",
        "-c",
        "1:cloudimg-rootfs",
        p,
    ]);
    write_at(&path, 0, &pattern(3, 440));
    write_at(
        &path,
        34 * SECTOR,
        &pattern(5, (2048 - 34) * SECTOR as usize),
    );
    write_at(&path, 2048 * SECTOR, &pattern(11, 4 * MIB as usize));
    path
}

#[test]
fn reads_mbr_like_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    for path in [rpi_image(dir.path()), armbian_image(dir.path())] {
        let t = read_table(&path).unwrap();
        assert_matches_sfdisk(&t, &path);
    }
    let t = read_table(&dir.path().join("rpi.img")).unwrap();
    assert_eq!(t.disk_id, "d9c86127");
    assert_eq!(t.partitions[1].partuuid, "d9c86127-02");
}

#[test]
fn reads_gpt_like_sfdisk() {
    let dir = tempfile::tempdir().unwrap();
    let path = ubuntu_image(dir.path());
    let t = read_table(&path).unwrap();
    assert_matches_sfdisk(&t, &path);
    let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 14, 15, 16]);
    assert_eq!(t.physically_last().unwrap().number, 1);
}

#[test]
fn grows_rpi_mbr_like_sfdisk_would_write_it() {
    let dir = tempfile::tempdir().unwrap();
    let orig = rpi_image(dir.path());
    let img = copy(dir.path(), &orig, "grown.img");
    let grown = grow_file(&img, 256 * MIB);
    let new_len = img.metadata().unwrap().len();
    assert_eq!(grown.number, 2);
    assert_eq!(grown.start + grown.size, new_len);

    sfdisk(&["-V", img.to_str().unwrap()], None);
    let t = read_table(&img).unwrap();
    assert_matches_sfdisk(&t, &img);
    assert_eq!(t.partitions[1], grown);
    // Only the ending CHS and sector count of partition 2 may change.
    assert_unchanged_except(&orig, &img, std::slice::from_ref(&(467..478)));

    // Oracle for the entry bytes, CHS included: sfdisk laying out the same partitions on a
    // file of the new size.
    let fresh = dir.path().join("fresh.img");
    sparse_file(&fresh, new_len);
    sfdisk(
        &["-q", fresh.to_str().unwrap()],
        Some(
            "label: dos\nlabel-id: 0xd9c86127\nstart=16384, size=1048576, type=c\n\
             start=1064960, type=83\n",
        ),
    );
    let sector0 = |p: &Path| {
        let mut s = vec![0u8; 512];
        File::open(p).unwrap().read_exact(&mut s).unwrap();
        s
    };
    assert_eq!(sector0(&img)[446..512], sector0(&fresh)[446..512]);
}

#[test]
fn grows_armbian_without_touching_u_boot() {
    let dir = tempfile::tempdir().unwrap();
    let orig = armbian_image(dir.path());
    let img = copy(dir.path(), &orig, "grown.img");
    let grown = grow_file(&img, 256 * MIB);
    assert_eq!(grown.start, 8192 * SECTOR);
    assert_eq!(grown.start + grown.size, img.metadata().unwrap().len());
    sfdisk(&["-V", img.to_str().unwrap()], None);
    assert_matches_sfdisk(&read_table(&img).unwrap(), &img);
    assert_unchanged_except(&orig, &img, std::slice::from_ref(&(451..462)));
}

#[test]
fn grows_ubuntu_gpt_and_moves_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let orig = ubuntu_image(dir.path());
    let before = read_table(&orig).unwrap();
    let img = copy(dir.path(), &orig, "grown.img");
    let grown = grow_file(&img, 256 * MIB);
    let len = img.metadata().unwrap().len();

    let verify = sgdisk(&["-v", img.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
    let t = read_table(&img).unwrap();
    assert_matches_sfdisk(&t, &img);
    assert_eq!(grown.number, 1);
    // Last usable sector: 33 sectors (entries + header) before the end, inclusive.
    assert_eq!(grown.start + grown.size, len - 33 * SECTOR);
    assert_eq!(t.partitions[1..], before.partitions[1..]);
    assert_eq!(t.disk_id, before.disk_id);

    let sectors = len / SECTOR;
    assert_unchanged_except(
        &orig,
        &img,
        &[
            // Protective MBR: the sector count of its entry.
            458..462,
            // Primary header (92 bytes) and entry array (128 x 128 bytes).
            SECTOR..SECTOR + 92,
            2 * SECTOR..34 * SECTOR,
            // New backup entry array and header.
            (sectors - 33) * SECTOR..(sectors - 1) * SECTOR + 92,
        ],
    );
    let json = sfdisk(&["--json", img.to_str().unwrap()], None);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["partitiontable"]["lastlba"].as_u64().unwrap(),
        sectors - 34
    );
}

#[test]
fn refuses_to_grow_mbr_past_2_tib() {
    let dir = tempfile::tempdir().unwrap();
    let img = armbian_image(dir.path());
    let before = std::fs::read(&img).unwrap();
    let mut f = File::options().read(true).write(true).open(&img).unwrap();
    f.set_len((u64::from(u32::MAX) + 1) * SECTOR).unwrap();
    let err = disk::grow_last_partition(&mut f).unwrap_err();
    assert!(
        matches!(err, DiskError::CannotGrow(ref m) if m.contains("2^32-1")),
        "{err}"
    );
    let mut head = vec![0u8; before.len()];
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_exact(&mut head).unwrap();
    assert!(head == before, "a refused grow wrote to the image");
}

#[test]
fn leaves_a_saturated_protective_mbr_alone() {
    let dir = tempfile::tempdir().unwrap();
    let img = ubuntu_image(dir.path());
    // Some tools always write 0xFFFFFFFF as the protective entry's size.
    write_at(&img, 446 + 12, &u32::MAX.to_le_bytes());
    let orig = copy(dir.path(), &img, "orig.img");
    grow_file(&img, 64 * MIB);
    let verify = sgdisk(&["-v", img.to_str().unwrap()]);
    assert!(verify.contains("No problems found"), "{verify}");
    let sectors = img.metadata().unwrap().len() / SECTOR;
    assert_unchanged_except(
        &orig,
        &img,
        &[
            SECTOR..SECTOR + 92,
            2 * SECTOR..34 * SECTOR,
            (sectors - 33) * SECTOR..(sectors - 1) * SECTOR + 92,
        ],
    );
}

#[test]
fn refuses_what_is_not_a_table() {
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 100, 1000, MIB] {
        let path = dir.path().join(format!("zero-{len}"));
        sparse_file(&path, len);
        let err = read_table(&path).unwrap_err();
        assert!(matches!(err, DiskError::NoTable), "{len}: {err}");
        assert!(err.to_string().contains("no partition table"), "{err}");
    }
    // A bare FAT filesystem also ends sector 0 in 0x55AA.
    let fat = dir.path().join("fat.img");
    sparse_file(&fat, 8 * MIB);
    run("mkfs.vfat", "dosfstools", &[fat.to_str().unwrap()], None);
    let err = read_table(&fat).unwrap_err();
    assert!(
        matches!(err, DiskError::Invalid(ref m) if m.contains("FAT filesystem")),
        "{err}"
    );
}

#[test]
fn reports_truncated_images_by_partition() {
    let dir = tempfile::tempdir().unwrap();
    let rpi = rpi_image(dir.path());

    let head = copy(dir.path(), &rpi, "head.img");
    File::options()
        .write(true)
        .open(&head)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let err = read_table(&head).unwrap_err();
    assert!(
        matches!(err, DiskError::Truncated(ref m) if m.contains("partition 1 ") && m.contains("only 1000 bytes")),
        "{err}"
    );

    let mid = copy(dir.path(), &rpi, "mid.img");
    let cut = 1064960 * SECTOR + MIB;
    File::options()
        .write(true)
        .open(&mid)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let err = read_table(&mid).unwrap_err();
    assert!(
        matches!(err, DiskError::Truncated(ref m) if m.contains("partition 2 ") && m.contains(&cut.to_string())),
        "{err}"
    );

    let ubuntu = ubuntu_image(dir.path());
    let cut = ubuntu.metadata().unwrap().len() - 10 * MIB;
    File::options()
        .write(true)
        .open(&ubuntu)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let err = read_table(&ubuntu).unwrap_err();
    assert!(
        matches!(err, DiskError::Truncated(ref m) if m.contains("partition 1 ")),
        "{err}"
    );
}

#[test]
fn rejects_overlapping_mbr_entries() {
    let dir = tempfile::tempdir().unwrap();
    let img = rpi_image(dir.path());
    // Move p2's start (entry 2, bytes 8..12) into p1.
    write_at(&img, 446 + 16 + 8, &(16384u32 + 1000).to_le_bytes());
    let err = read_table(&img).unwrap_err();
    assert!(
        matches!(err, DiskError::Invalid(ref m) if m.contains("partitions 1") && m.contains("overlap")),
        "{err}"
    );
    let err =
        disk::grow_last_partition(&mut File::options().read(true).write(true).open(&img).unwrap())
            .unwrap_err();
    assert!(matches!(err, DiskError::Invalid(_)), "{err}");
}

#[test]
fn refuses_to_grow_an_extended_partition() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext.img");
    sparse_file(&img, 20 * MIB);
    sfdisk(
        &["-q", img.to_str().unwrap()],
        Some(
            "label: dos\nstart=2048, size=4096, type=83\nstart=8192, type=5\nstart=10240, size=2048, type=83\n",
        ),
    );
    let t = read_table(&img).unwrap();
    assert_matches_sfdisk(&t, &img);
    assert_eq!(t.partitions[1].part_type, PartType::Mbr(5));
    let before = std::fs::read(&img).unwrap();
    let mut f = File::options().read(true).write(true).open(&img).unwrap();
    f.set_len(40 * MIB).unwrap();
    let err = disk::grow_last_partition(&mut f).unwrap_err();
    assert!(
        matches!(err, DiskError::CannotGrow(ref m) if m.contains("extended")),
        "{err}"
    );
    assert_eq!(std::fs::read(&img).unwrap()[..before.len()], before[..]);
}

#[test]
fn damaged_primary_gpt_reads_from_backup_and_refuses_to_grow() {
    let dir = tempfile::tempdir().unwrap();
    let orig = ubuntu_image(dir.path());
    let expected = read_table(&orig).unwrap();

    let img = copy(dir.path(), &orig, "damaged.img");
    // One flipped byte in the primary entry array breaks its CRC.
    flip(&img, 2 * SECTOR + 40);
    let verify = run("sgdisk", "gdisk", &["-v", img.to_str().unwrap()], None);
    assert!(!verify.contains("No problems found"), "{verify}");
    assert_eq!(read_table(&img).unwrap(), expected);

    let mut f = File::options().read(true).write(true).open(&img).unwrap();
    let len = f.metadata().unwrap().len();
    let err = disk::grow_last_partition(&mut f).unwrap_err();
    assert!(
        matches!(err, DiskError::CannotGrow(ref m) if m.contains("primary GPT is damaged")),
        "{err}"
    );
    // After enlarging, the backup is no longer in the last sector: nothing usable is left.
    f.set_len(len + MIB).unwrap();
    let err = disk::grow_last_partition(&mut f).unwrap_err();
    assert!(
        matches!(err, DiskError::Invalid(ref m) if m.contains("neither GPT header")),
        "{err}"
    );

    // Both copies damaged.
    let both = copy(dir.path(), &orig, "both.img");
    flip(&both, 2 * SECTOR + 40);
    flip(&both, len - SECTOR + 24);
    let err = read_table(&both).unwrap_err();
    assert!(
        matches!(err, DiskError::Invalid(ref m) if m.contains("primary (sector 1)") && m.contains("backup")),
        "{err}"
    );
}
