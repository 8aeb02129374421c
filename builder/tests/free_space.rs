//! The free-space readers behind the bmap, on filesystems made by mkfs.vfat and mke2fs and
//! filled by mtools and `mke2fs -d`. Oracles: the free counts `fsck.fat -v` and the ext4
//! superblock report, and the property the bmap relies on: overwriting every byte a reader
//! calls free with stale bytes (0x5a, as on a reused card) leaves `fsck.fat -n` / `e2fsck -fn`
//! clean and the files' contents intact.

mod common;

use common::oracle;
use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// A few files of distinct content, some spanning many clusters, one in a nested directory.
fn staging(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..6u32)
        .map(|i| {
            let len = 1000 + (i as usize) * 70_001;
            let data = (0..len).map(|j| (j as u32 * 31 + i) as u8 | 1).collect();
            let name = if i % 2 == 0 {
                format!("f{i}.bin")
            } else {
                format!("sub/deeper/f{i}.bin")
            };
            (name, data)
        })
        .collect();
    for (name, data) in &files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
    files
}

/// Writes 0x5a over `ranges` of `img`.
fn stale(img: &Path, ranges: &[Range<u64>]) {
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    let junk = vec![0x5au8; MIB as usize];
    for r in ranges {
        let mut at = r.start;
        while at < r.end {
            let n = (r.end - at).min(MIB) as usize;
            f.write_all_at(&junk[..n], at).unwrap();
            at += n as u64;
        }
    }
}

fn total(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

/// Sorted, disjoint, non-empty and inside `len` bytes.
fn assert_well_formed(ranges: &[Range<u64>], len: u64) {
    for w in ranges.windows(2) {
        assert!(w[0].end < w[1].start, "{ranges:?}");
    }
    assert!(ranges.iter().all(|r| r.start < r.end && r.end <= len));
}

/// Every all-zero 4 KiB block of `img`: what the bmap used to leave out.
fn zero_blocks(img: &Path) -> Vec<Range<u64>> {
    let data = fs::read(img).unwrap();
    let mut out: Vec<Range<u64>> = Vec::new();
    for (i, b) in data.chunks(4096).enumerate() {
        if b.iter().all(|&x| x == 0) {
            let at = i as u64 * 4096;
            match out.last_mut() {
                Some(r) if r.end == at => r.end = at + b.len() as u64,
                _ => out.push(at..at + b.len() as u64),
            }
        }
    }
    out
}

fn fat_image(
    dir: &Path,
    size_mib: u64,
    mkfs: &[&str],
) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let img = dir.join("fat.img");
    let stage = dir.join("stage");
    let files = staging(&stage);
    let mut args = mkfs.to_vec();
    let blocks = (size_mib * 1024).to_string();
    args.extend(["-C", s(&img), &blocks]);
    oracle::run("mkfs.vfat", &args);
    let at = format!("{}@@0", s(&img));
    for entry in fs::read_dir(&stage).unwrap() {
        let p = entry.unwrap().path();
        oracle::mtools("mcopy", &["-s", "-i", &at, s(&p), "::/"]);
    }
    (img, files)
}

/// `fsck.fat -n -v`: (used, total) clusters and the cluster size, from its report.
fn fsck_fat_clusters(img: &Path) -> (u64, u64, u64) {
    let out = oracle::run("fsck.fat", &["-n", "-v", s(img)]);
    let size = out
        .lines()
        .find_map(|l| l.trim().strip_suffix(" bytes per cluster"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cluster size in:\n{out}"));
    let counts = out
        .lines()
        .rev()
        .find_map(|l| l.split(", ").nth(1)?.strip_suffix(" clusters"))
        .unwrap_or_else(|| panic!("no cluster counts in:\n{out}"));
    let (used, all) = counts.split_once('/').unwrap();
    (used.parse().unwrap(), all.parse().unwrap(), size)
}

fn check_fat(size_mib: u64, mkfs: &[&str]) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (img, files) = fat_image(dir.path(), size_mib, mkfs);
    let len = fs::metadata(&img).unwrap().len();
    let free = imagegen::fs::fat::free_ranges(&File::open(&img).unwrap(), 0, len).unwrap();
    assert_well_formed(&free, len);

    let (used, all, cluster) = fsck_fat_clusters(&img);
    assert_eq!(total(&free), (all - used) * cluster, "{mkfs:?}: {free:?}");
    assert!(total(&free) > len / 2, "{mkfs:?}: the image is mostly free");

    // The old rule (every all-zero block) loses the free FAT entries on a reused card.
    let old = dir.path().join("old.img");
    fs::copy(&img, &old).unwrap();
    stale(&old, &zero_blocks(&img));
    let out = oracle::output("fsck.fat", &["-n", s(&old)]);
    assert!(
        !out.status.success(),
        "{mkfs:?}: fsck.fat misses the old rule's damage"
    );

    stale(&img, &free);
    oracle::run("fsck.fat", &["-n", s(&img)]);
    let at = format!("{}@@0", s(&img));
    for (name, data) in files {
        let out = oracle::output_env(
            "mtype",
            &["-i", &at, &format!("::/{name}")],
            &[("MTOOLS_SKIP_CHECK", "1")],
        );
        assert!(
            out.status.success() && out.stdout == data,
            "{mkfs:?}: {name}"
        );
    }
}

#[test]
fn fat32_free_clusters_are_what_fsck_counts_and_safe_to_leave_stale() {
    check_fat(80, &["-F", "32", "-s", "1"]);
}

#[test]
fn fat16_free_clusters_are_what_fsck_counts_and_safe_to_leave_stale() {
    check_fat(64, &["-F", "16", "-s", "4"]);
}

#[test]
fn fat12_free_clusters_are_what_fsck_counts_and_safe_to_leave_stale() {
    check_fat(4, &["-F", "12", "-s", "2"]);
}

fn check_ext4(extended: &str, block: &str) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = dir.path().join("ext4.img");
    let stage = dir.path().join("stage");
    let files = staging(&stage);
    let mut args = vec!["-q", "-F", "-t", "ext4", "-b", block, "-d", s(&stage)];
    if !extended.is_empty() {
        args.extend(["-E", extended]);
    }
    args.extend([s(&img), "96M"]);
    oracle::run("mke2fs", &args);
    let len = fs::metadata(&img).unwrap().len();
    let free = imagegen::fs::ext4::free_ranges(&img, 0).unwrap();
    assert_well_formed(&free, len);

    // mke2fs writes exact counts: the bitmaps and the superblock agree.
    let sb = oracle::dumpe2fs(&img, 0);
    let free_blocks: u64 = sb["Free blocks"].parse().unwrap();
    let block_size: u64 = sb["Block size"].parse().unwrap();
    assert_eq!(
        total(&free),
        free_blocks * block_size,
        "{extended} -b {block}"
    );
    assert!(
        total(&free) > len / 2,
        "{extended}: the image is mostly free"
    );
    // No free range touches the inode tables, zeroed or not.
    let groups = oracle::run("dumpe2fs", &[s(&img)]);
    let tables: Vec<&str> = groups
        .lines()
        .filter_map(|l| l.strip_prefix("  Inode table at "))
        .collect();
    assert!(!tables.is_empty(), "{groups}");
    for line in tables {
        let table = line.split_whitespace().next().unwrap();
        let (a, b) = table.split_once('-').unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        let (a, b) = (a * block_size, (b + 1) * block_size);
        assert!(
            free.iter().all(|r| r.end <= a || r.start >= b),
            "inode table {a}..{b} listed free: {line}"
        );
    }

    stale(&img, &free);
    oracle::assert_e2fsck_clean(&img, 0);
    for (name, data) in files {
        let out = oracle::output("debugfs", &["-R", &format!("cat /{name}"), s(&img)]);
        assert!(
            out.status.success() && out.stdout == data,
            "{extended}: {name}"
        );
    }
}

#[test]
fn ext4_free_blocks_with_zeroed_inode_tables_are_safe_to_leave_stale() {
    check_ext4("lazy_itable_init=0", "4096");
}

#[test]
fn ext4_free_blocks_with_lazy_inode_tables_are_safe_to_leave_stale() {
    check_ext4("", "4096");
}

#[test]
fn ext4_free_blocks_with_1k_blocks_are_safe_to_leave_stale() {
    // First data block 1, many groups (8 MiB each), BLOCK_UNINIT ones among them.
    check_ext4("lazy_itable_init=1", "1024");
}
