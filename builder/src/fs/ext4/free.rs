//! The free blocks of an ext2/3/4 filesystem, for the block map: only blocks the block bitmap
//! calls free may be left unwritten on a card.
//!
//! Read with `dumpe2fs` rather than from the bitmaps directly. A group flagged BLOCK_UNINIT
//! has no bitmap on disk: its bitmap is implied, and getting it right means marking the
//! group's superblock backup and descriptor copies (sparse_super, sparse_super2, meta_bg), its
//! reserved GDT blocks and the bitmaps and inode tables that flex_bg may place in it for other
//! groups. libext2fs does exactly that when it loads the bitmaps (lib/ext2fs/rw_bitmaps.c,
//! `mark_uninit_bg_group_blocks`), verifies the descriptor checksums, and handles 64bit and
//! bigalloc; dumpe2fs then prints each group's free blocks as absolute block numbers,
//! "  Free blocks: a-b, c, d-e" (misc/dumpe2fs.c, `print_free`). A second reader of ours
//! would be one more place to get a feature combination wrong, with a card keeping stale
//! metadata as the price; e2fsprogs is already required (DESIGN.md: writes go through it)
//! and one dumpe2fs run takes milliseconds (a line per group, 128 MiB each).

use std::ops::Range;
use std::path::Path;

use super::e2fsprogs;
use crate::fs::FsError;

/// The free blocks of the filesystem at `offset` in `image`, as byte ranges relative to the
/// start of the filesystem, sorted and merged, within its block count.
pub fn free_ranges(image: &Path, offset: u64) -> Result<Vec<Range<u64>>, FsError> {
    // The clock does not matter to a read-only tool; 0 keeps the environment fixed.
    let out = e2fsprogs::run("dumpe2fs", [e2fsprogs::device(image, offset)?], 0)?;
    if !out.status.success() {
        return Err(FsError::Unsupported(format!(
            "dumpe2fs cannot read the filesystem ({}): {}",
            out.status,
            e2fsprogs::output_text(&out)
        )));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Reads dumpe2fs's output: "Block size:" and "Block count:" from the superblock part, then
/// one indented "Free blocks:" line per "Group N:" line. The unindented "Free blocks:" of the
/// superblock part is a count, not a list.
fn parse(text: &str) -> Result<Vec<Range<u64>>, FsError> {
    let bad = |what: String| FsError::Tool {
        tool: "dumpe2fs".into(),
        detail: format!("unexpected output: {what}"),
    };
    let field = |name: &str| -> Result<u64, FsError> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad(format!("no number in {name:?}")))
    };
    let block_size = field("Block size")?;
    let blocks = field("Block count")?;
    // "Group 3: (Blocks ...", not "Group descriptor size:".
    let groups = text
        .lines()
        .filter(|l| {
            l.strip_prefix("Group ")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    let mut lists = 0;
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for list in text
        .lines()
        .filter_map(|l| l.strip_prefix("  Free blocks:"))
    {
        lists += 1;
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let number = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| bad(format!("free block range {item:?}")))
            };
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(item)?, number(item)?),
            };
            if first > last || last >= blocks {
                return Err(bad(format!(
                    "free block range {item:?} outside the {blocks} blocks"
                )));
            }
            let (start, end) = (first * block_size, (last + 1) * block_size);
            match ranges.last_mut() {
                Some(r) if r.end == start => r.end = end,
                Some(r) if r.end > start => {
                    return Err(bad(format!("free block range {item:?} out of order")));
                }
                _ => ranges.push(start..end),
            }
        }
    }
    if groups == 0 || lists != groups {
        return Err(bad(format!(
            "{groups} groups but {lists} lists of free blocks"
        )));
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "Filesystem volume name:   rootfs\nFree blocks:              59977\n\
                        Group descriptor size:    64\n\
                        First block:              0\nBlock size:               4096\n\
                        Block count:              65536\n";

    #[test]
    fn reads_the_group_lists_not_the_superblock_count() {
        let text = format!(
            "{HEAD}\nGroup 0: (Blocks 0-32767) csum 0x3327 [ITABLE_ZEROED]\n  \
             Free blocks: 1446-32767\n  Free inodes: 414-8192\n\
             Group 1: (Blocks 32768-65535) csum 0x8a10 [INODE_UNINIT, ITABLE_ZEROED]\n  \
             Free blocks: 36881-36990, 37000, 37002-65535\n"
        );
        assert_eq!(
            parse(&text).unwrap(),
            [
                1446 * 4096..32768 * 4096,
                36881 * 4096..36991 * 4096,
                37000 * 4096..37001 * 4096,
                37002 * 4096..65536 * 4096,
            ]
        );
    }

    #[test]
    fn a_full_group_has_an_empty_list() {
        let text = format!("{HEAD}Group 0: (Blocks 0-32767)\n  Free blocks: \n");
        assert_eq!(parse(&text).unwrap(), []);
    }

    #[test]
    fn output_it_does_not_understand_is_an_error() {
        for body in [
            "",
            "Group 0: (Blocks 0-32767)\n",
            "Group 0: (Blocks 0-32767)\n  Free blocks: 5-x\n",
            "Group 0: (Blocks 0-32767)\n  Free blocks: 70000-70001\n",
            "Group 0: (Blocks 0-32767)\n  Free blocks: 9-10, 3-4\n",
        ] {
            let text = format!("{HEAD}{body}");
            assert!(parse(&text).is_err(), "{body:?}");
        }
    }
}
