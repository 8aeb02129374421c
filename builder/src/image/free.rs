//! The parts of a whole-disk image that nothing uses, so a block map may leave them out.
//!
//! A block left out of a `.bmap` is not written when flashing, so the card keeps whatever it
//! held before: on a reused card, an old system's bytes. That is harmless only where nothing
//! will read the block before writing it. An all-zero block is not enough: free FAT entries,
//! zeroed ext4 inode tables (ITABLE_ZEROED promises zeros), initialized bitmaps and directory
//! clusters are zeros that mean something, and stale bytes there corrupt the filesystem
//! (measured: flashing onto a card filled with 0x5a left `fsck.fat -n` reporting "Cluster 1022
//! out of range (173693530 > 261116)"). So a byte counts as free only when:
//!
//! - the filesystem that owns it says so: ext4 free in the block bitmap, FAT in a data cluster
//!   whose entry is 0 in every FAT; a partition whose filesystem is not recognized, or cannot
//!   be read, is used in full;
//! - or it lies between or after the partitions, outside the partition table structures (the
//!   primary and backup GPT headers and entry arrays, everything GPT keeps outside its usable
//!   sectors).
//!
//! Everything before the first partition is also counted as used although it lies outside
//! every partition: boards' boot ROMs look for loaders there (Rockchip at sector 64, Allwinner
//! at 8 KiB), so an image that carries none must not leave an old card's loader in place; it
//! costs at most the usual 1-8 MiB of alignment gap. An image without a readable partition
//! table is used in full.

use std::fs::File;
use std::ops::Range;
use std::path::Path;

use super::ImageError;
use super::probe;
use crate::disk::gpt::Gpt;
use crate::disk::{self, DiskError, SECTOR, TableKind};
use crate::fs::{FsError, FsKind, ext4, fat};

/// Free byte ranges of an image, each a whole number of blocks, sorted and disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeSpace {
    ranges: Vec<Range<u64>>,
}

impl FreeSpace {
    /// Nothing is free: every block is used.
    pub fn none() -> FreeSpace {
        FreeSpace::default()
    }

    /// The free space of the image at `path`, in whole blocks of `block` bytes: a block that is
    /// only partly free counts as used.
    pub fn of_image(path: &Path, block: u64) -> Result<FreeSpace, ImageError> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let table = match disk::read(&mut file) {
            Ok(t) => t,
            Err(DiskError::Io(e)) => return Err(e.into()),
            Err(_) => return Ok(FreeSpace::none()),
        };
        let mut parts = table.partitions.clone();
        parts.sort_by_key(|p| p.start);
        let Some(first) = parts.first() else {
            return Ok(FreeSpace::none());
        };

        let mut free = Vec::new();
        let mut used: Vec<Range<u64>> = Vec::new();
        used.push(0..first.start);
        if table.kind == TableKind::Gpt {
            let h = Gpt::read_from(&mut file, len)
                .map_err(|source| ImageError::Disk {
                    path: path.display().to_string(),
                    source,
                })?
                .header;
            let entries =
                u64::from(h.number_of_partition_entries) * u64::from(h.size_of_partition_entry);
            let at = h.partition_entry_lba.saturating_mul(SECTOR);
            used.push(0..h.first_usable_lba.saturating_mul(SECTOR));
            used.push(at..at.saturating_add(entries));
            used.push(h.last_usable_lba.saturating_add(1).saturating_mul(SECTOR)..len);
        }
        let mut end = first.start;
        for p in &parts {
            if p.start > end {
                free.push(end..p.start);
            }
            end = end.max(p.start + p.size);
            let kind = probe::probe(&mut file, p.start, p.size)?.kind;
            let inside = match kind {
                Some(FsKind::Fat) => fat::free_ranges(&file, p.start, p.size),
                Some(FsKind::Ext4) => ext4::free_ranges(path, p.start),
                None => Ok(Vec::new()),
            };
            match inside {
                Ok(ranges) => free.extend(
                    ranges
                        .into_iter()
                        .map(|r| p.start + r.start..(p.start + r.end).min(p.start + p.size))
                        .filter(|r| r.start < r.end),
                ),
                // A filesystem its reader refuses is unknown: the partition stays used in
                // full. A failed read or a missing tool is an error, not a reason to write less.
                Err(FsError::Corrupt(_) | FsError::Unsupported(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if end < len {
            free.push(end..len);
        }
        Ok(FreeSpace::from_parts(free, used, block))
    }

    /// `free` minus `used`, merged, then trimmed inward to whole blocks.
    fn from_parts(mut free: Vec<Range<u64>>, mut used: Vec<Range<u64>>, block: u64) -> FreeSpace {
        free.sort_by_key(|r| r.start);
        used.sort_by_key(|r| r.start);
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for r in free {
            let mut pieces = vec![r];
            for u in used.iter().filter(|u| u.start < u.end) {
                pieces = pieces
                    .into_iter()
                    .flat_map(|p| {
                        if u.end <= p.start || u.start >= p.end {
                            vec![p]
                        } else {
                            [p.start..u.start, u.end..p.end]
                                .into_iter()
                                .filter(|q| q.start < q.end)
                                .collect()
                        }
                    })
                    .collect();
            }
            for p in pieces {
                match ranges.last_mut() {
                    Some(last) if last.end >= p.start => last.end = last.end.max(p.end),
                    _ => ranges.push(p),
                }
            }
        }
        // Trimmed only once merged: a block that straddles two adjacent free ranges is free.
        let ranges = ranges
            .into_iter()
            .map(|r| r.start.next_multiple_of(block)..r.end / block * block)
            .filter(|r| r.start < r.end)
            .collect();
        FreeSpace { ranges }
    }

    /// The free ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Total free bytes.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// A reader for a front-to-back pass.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            ranges: &self.ranges,
            next: 0,
        }
    }
}

/// Answers "is this free?" for positions that never go backwards, in amortized O(1).
pub struct Cursor<'a> {
    ranges: &'a [Range<u64>],
    next: usize,
}

impl Cursor<'_> {
    /// From `pos`: `Ok(end)` when `pos..end` is free (and `end` is not), `Err(end)` when
    /// `pos..end` is used (and `end` is free, or `u64::MAX` when nothing further is).
    pub fn at(&mut self, pos: u64) -> Result<u64, u64> {
        while self.ranges.get(self.next).is_some_and(|r| r.end <= pos) {
            self.next += 1;
        }
        match self.ranges.get(self.next) {
            Some(r) if r.start <= pos => Ok(r.end),
            Some(r) => Err(r.start),
            None => Err(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_parts_and_partial_blocks_are_not_free() {
        let space = FreeSpace::from_parts(
            vec![100..20_000, 30_000..50_000, 50_000..60_000],
            vec![8192..12_288, 40_000..41_000],
            4096,
        );
        assert_eq!(
            space.ranges(),
            [4096..8192, 12_288..16_384, 32_768..36_864, 45_056..57_344]
        );
        let mut c = space.cursor();
        assert_eq!(c.at(0), Err(4096));
        assert_eq!(c.at(4096), Ok(8192));
        assert_eq!(c.at(8192), Err(12_288));
        assert_eq!(c.at(50_000), Ok(57_344));
        assert_eq!(c.at(57_344), Err(u64::MAX));
    }
}
