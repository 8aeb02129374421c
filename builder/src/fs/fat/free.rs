//! The free clusters of a FAT12/16/32 filesystem, read from its boot sector and its FATs, for
//! the block map: only space the filesystem itself calls free may be left unwritten on a card.
//!
//! Read directly rather than through fatfs, which exposes no cluster map, or `fsck.fat`,
//! which prints none. The layout is fixed by Microsoft's FAT specification ("FAT: General
//! Overview of On-Disk Format", sections 3 and 4): reserved sectors, then `BPB_NumFATs`
//! copies of the FAT, then (FAT12/16) the fixed root directory, then the data area whose
//! first cluster is number 2; the FAT type follows from the cluster count alone (< 4085:
//! FAT12, < 65525: FAT16, else FAT32), and an entry of 0 means free (FAT32: the low 28 bits).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::fs::FsError;

/// Entries read per step: keeps memory flat for a FAT32 of any size.
const CHUNK_ENTRIES: u64 = 256 * 1024;

/// The data clusters that every FAT copy marks free, as byte ranges relative to the start of
/// the filesystem, sorted and merged. Nothing before the data area is ever listed: boot sector,
/// reserved sectors, the FATs and a FAT12/16 root directory are metadata whatever they hold.
///
/// A cluster counts as free only when it is free in every copy: with mirroring switched off
/// (FAT32 `BPB_ExtFlags` bit 7) a second copy may be stale, and calling a cluster free that
/// one copy uses would let a card keep old bytes where a tool might look.
pub fn free_ranges(file: &File, offset: u64, len: u64) -> Result<Vec<Range<u64>>, FsError> {
    let mut b = [0u8; 512];
    file.read_exact_at(&mut b, offset)?;
    let layout = Layout::parse(&b, len)?;
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let last = layout.clusters + 2;
    let mut first = 2;
    while first < last {
        let count = CHUNK_ENTRIES.min(last - first);
        let mut free = vec![true; count as usize];
        for copy in 0..layout.fats {
            let entries = layout.read_entries(file, offset, copy, first, count)?;
            for (f, e) in free.iter_mut().zip(entries) {
                *f &= e == 0;
            }
        }
        for (i, _) in free.iter().enumerate().filter(|(_, f)| **f) {
            let at = layout.cluster_offset(first + i as u64);
            let end = at + layout.cluster_bytes;
            match ranges.last_mut() {
                Some(r) if r.end == at => r.end = end,
                _ => ranges.push(at..end),
            }
        }
        first += count;
    }
    Ok(ranges)
}

/// Where things are, from the BIOS parameter block.
#[derive(Debug)]
struct Layout {
    fats: u64,
    fat_bytes: u64,
    /// First byte of the first FAT.
    fat_start: u64,
    data_start: u64,
    cluster_bytes: u64,
    clusters: u64,
    /// 12, 16 or 32.
    entry_bits: u64,
}

impl Layout {
    fn parse(b: &[u8; 512], len: u64) -> Result<Layout, FsError> {
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
        let u32_at =
            |at: usize| u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
        let corrupt = |what: String| FsError::Corrupt(format!("FAT boot sector: {what}"));
        if b[510..512] != [0x55, 0xaa] {
            return Err(corrupt("no 0x55AA signature".into()));
        }
        let bytes_per_sector = u16_at(11);
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(corrupt(format!("{bytes_per_sector} bytes per sector")));
        }
        let per_cluster = u64::from(b[13]);
        if !per_cluster.is_power_of_two() {
            return Err(corrupt(format!("{per_cluster} sectors per cluster")));
        }
        let reserved = u16_at(14);
        let fats = u64::from(b[16]);
        let root_entries = u16_at(17);
        let total = match u16_at(19) {
            0 => u32_at(32),
            n => n,
        };
        let fat_sectors = match u16_at(22) {
            0 => u32_at(36),
            n => n,
        };
        if reserved == 0 || fats == 0 || fat_sectors == 0 {
            return Err(corrupt(format!(
                "{reserved} reserved sectors, {fats} FATs of {fat_sectors} sectors"
            )));
        }
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        if total <= data_sector || total * bytes_per_sector > len {
            return Err(corrupt(format!(
                "{total} sectors of {bytes_per_sector} bytes, data from sector {data_sector}, in \
                 a {len}-byte partition"
            )));
        }
        let clusters = (total - data_sector) / per_cluster;
        let entry_bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        let fat_bytes = fat_sectors * bytes_per_sector;
        if (clusters + 2) * entry_bits > fat_bytes * 8 {
            return Err(corrupt(format!(
                "{clusters} clusters do not fit in a {fat_bytes}-byte FAT"
            )));
        }
        Ok(Layout {
            fats,
            fat_bytes,
            fat_start: reserved * bytes_per_sector,
            data_start: data_sector * bytes_per_sector,
            cluster_bytes: per_cluster * bytes_per_sector,
            clusters,
            entry_bits,
        })
    }

    fn cluster_offset(&self, cluster: u64) -> u64 {
        self.data_start + (cluster - 2) * self.cluster_bytes
    }

    /// Entries `first..first + count` of FAT copy `copy`; `first` is even, so a FAT12 chunk
    /// starts on a whole byte.
    fn read_entries(
        &self,
        file: &File,
        offset: u64,
        copy: u64,
        first: u64,
        count: u64,
    ) -> Result<Vec<u32>, FsError> {
        debug_assert!(first.is_multiple_of(2));
        let start = first * self.entry_bits / 8;
        let end = ((first + count) * self.entry_bits).div_ceil(8);
        let mut bytes = vec![0u8; (end - start) as usize];
        file.read_exact_at(
            &mut bytes,
            offset + self.fat_start + copy * self.fat_bytes + start,
        )?;
        Ok((0..count)
            .map(|i| match self.entry_bits {
                12 => {
                    let at = (i + i / 2) as usize;
                    let pair = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
                    u32::from(if i % 2 == 0 { pair & 0xfff } else { pair >> 4 })
                }
                16 => {
                    let at = (i * 2) as usize;
                    u32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
                }
                _ => {
                    let at = (i * 4) as usize;
                    let e = &bytes[at..at + 4];
                    u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & 0x0fff_ffff
                }
            })
            .collect())
    }
}
