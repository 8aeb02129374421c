//! GPT partition tables, through gptman.
//!
//! gptman decodes and encodes headers and entries and computes the CRCs. The checks around it
//! are ours: its `GPT::read_from` trusts header fields (entry count and size, LBAs) enough to
//! panic or allocate without bound on a damaged table, and its `GPT::write_into` and
//! `GPTHeader::update_from` recompute `first_usable_lba` and the protective MBR, which are not
//! ours to change. So headers are validated here before their entries are read, and writes go
//! through `GPTHeader::write_into`, which writes exactly one 92-byte header and its entry array.

use std::io::{Read, Seek, SeekFrom, Write};

use gptman::{GPTHeader, GPTPartitionEntry};

use super::mbr::{self, Mbr};
use super::{
    DiskError, PartType, Partition, PartitionTable, SECTOR, TableKind, check_inside,
    check_overlaps, describe_bytes, guid_string,
};

/// gptman encodes entries as exactly this many bytes.
const ENTRY_SIZE: u32 = 128;
/// Far above any real table (128 is the norm) but bounds what a damaged header can make us read.
const MAX_ENTRIES: u32 = 16384;

/// A GPT read from an image: the header it was read through and its full entry array.
#[derive(Debug, Clone)]
pub struct Gpt {
    pub header: GPTHeader,
    pub entries: Vec<GPTPartitionEntry>,
    /// The primary header or its entries were damaged and this was read from the backup.
    pub from_backup: bool,
}

impl Gpt {
    /// Reads the primary GPT, or the backup in the image's last sector when the primary is
    /// damaged. `len` is the image length in bytes.
    pub fn read_from<R: Read + Seek + ?Sized>(r: &mut R, len: u64) -> Result<Gpt, DiskError> {
        let total = len / SECTOR;
        let primary = match read_copy(r, 1, total) {
            Ok(gpt) => return gpt.validated(len),
            Err(e) => e,
        };
        if total < 3 {
            return Err(DiskError::Truncated(format!(
                "sector 0 holds a GPT protective MBR but the image is only {}; its primary \
                 GPT header is unusable ({primary})",
                describe_bytes(len)
            )));
        }
        match read_copy(r, total - 1, total) {
            Ok(mut gpt) => {
                gpt.from_backup = true;
                gpt.validated(len)
            }
            Err(backup) => Err(DiskError::Invalid(format!(
                "sector 0 holds a GPT protective MBR but neither GPT header is usable: primary \
                 (sector 1): {primary}; backup (last sector, {}): {backup}",
                total - 1
            ))),
        }
    }

    /// Checks the entries against the header and the image length.
    fn validated(self, len: u64) -> Result<Gpt, DiskError> {
        let h = &self.header;
        let mut spans = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.is_unused() {
                continue;
            }
            let number = i as u32 + 1;
            if e.starting_lba < h.first_usable_lba
                || e.ending_lba > h.last_usable_lba
                || e.ending_lba < e.starting_lba
            {
                return Err(DiskError::Invalid(format!(
                    "GPT partition {number} spans sectors {}..{}, outside the usable sectors \
                     {}..{}",
                    e.starting_lba, e.ending_lba, h.first_usable_lba, h.last_usable_lba
                )));
            }
            let sectors = e.ending_lba - e.starting_lba + 1;
            check_inside(number, e.starting_lba, sectors, len)?;
            spans.push((number, e.starting_lba, sectors));
        }
        check_overlaps(&mut spans)?;
        let (primary_lba, backup_lba) = if self.from_backup {
            (h.backup_lba, h.primary_lba)
        } else {
            (h.primary_lba, h.backup_lba)
        };
        if primary_lba != 1 {
            return Err(DiskError::Invalid(format!(
                "the GPT header places the primary header at sector {primary_lba} instead of 1"
            )));
        }
        let total = len / SECTOR;
        if backup_lba >= total {
            return Err(DiskError::Truncated(format!(
                "the GPT describes a disk of {} but the image is only {}; the image was cut \
                 short (interrupted download or copy?): fetch it again",
                describe_bytes(backup_lba.saturating_add(1).saturating_mul(SECTOR)),
                describe_bytes(len)
            )));
        }
        Ok(self)
    }

    /// The partition of entry `index` (0-based), if that entry is used.
    pub fn partition(&self, index: usize) -> Option<Partition> {
        let e = self.entries.get(index).filter(|e| e.is_used())?;
        Some(to_partition(index, e))
    }

    pub fn table(&self) -> PartitionTable {
        PartitionTable {
            kind: TableKind::Gpt,
            disk_id: guid_string(&self.header.disk_guid),
            partitions: (0..self.entries.len())
                .filter_map(|i| self.partition(i))
                .collect(),
        }
    }
}

/// An entry already checked by `Gpt::validated` (ending LBA not before the starting one).
fn to_partition(index: usize, e: &GPTPartitionEntry) -> Partition {
    let name = e.partition_name.as_str();
    Partition {
        number: index as u32 + 1,
        start: e.starting_lba * SECTOR,
        size: (e.ending_lba - e.starting_lba + 1) * SECTOR,
        part_type: PartType::Gpt(guid_string(&e.partition_type_guid)),
        partuuid: guid_string(&e.unique_partition_guid),
        name: (!name.is_empty()).then(|| name.to_string()),
        bootable: false,
    }
}

/// Sectors taken by an entry array of `n` entries.
fn array_sectors(n: u32) -> u64 {
    (u64::from(n) * u64::from(ENTRY_SIZE)).div_ceil(SECTOR)
}

/// Reads and checks the header at `lba` and its entry array. Errors are phrased for a message
/// that names which copy failed.
fn read_copy<R: Read + Seek + ?Sized>(r: &mut R, lba: u64, total: u64) -> Result<Gpt, String> {
    if lba >= total {
        return Err("beyond the end of the image".to_string());
    }
    r.seek(SeekFrom::Start(lba * SECTOR))
        .map_err(|e| e.to_string())?;
    let h = GPTHeader::read_from(r).map_err(describe)?;
    if h.primary_lba != lba {
        return Err(format!(
            "header says it is at sector {} but was found at sector {lba}",
            h.primary_lba
        ));
    }
    if h.size_of_partition_entry != ENTRY_SIZE {
        return Err(format!(
            "partition entries of {} bytes are not supported (only {ENTRY_SIZE})",
            h.size_of_partition_entry
        ));
    }
    if h.number_of_partition_entries == 0 || h.number_of_partition_entries > MAX_ENTRIES {
        return Err(format!(
            "implausible number of partition entries: {}",
            h.number_of_partition_entries
        ));
    }
    let array = array_sectors(h.number_of_partition_entries);
    // Whether the usable sectors fit in the image is checked later, so that a truncated image
    // is reported as such rather than as a damaged header.
    if h.first_usable_lba > h.last_usable_lba {
        return Err(format!(
            "first usable sector {} is after the last usable sector {}",
            h.first_usable_lba, h.last_usable_lba
        ));
    }
    // The entry array sits between the primary header and the first usable sector, or between
    // the last usable sector and the backup header.
    let array_ok = if lba == 1 {
        h.partition_entry_lba >= 2
            && h.partition_entry_lba
                .checked_add(array)
                .is_some_and(|end| end <= h.first_usable_lba)
    } else {
        h.partition_entry_lba > h.last_usable_lba
            && h.partition_entry_lba
                .checked_add(array)
                .is_some_and(|end| end <= lba)
    };
    if !array_ok {
        return Err(format!(
            "partition entry array at sector {} ({array} sectors) overlaps the header or the \
             usable sectors",
            h.partition_entry_lba
        ));
    }
    let entries = h.read_partitions(r, SECTOR).map_err(describe)?;
    Ok(Gpt {
        header: h,
        entries,
        from_backup: false,
    })
}

fn describe(e: gptman::Error) -> String {
    match e {
        gptman::Error::Io(e) => e.to_string(),
        e => e.to_string(),
    }
}

/// Grows the physically last partition to the last usable sector of the enlarged image and
/// moves the backup GPT to the new end. Writes the backup header and array at the new end, the
/// primary header and array, and at most the 4-byte sector count of the protective MBR entry.
/// The old backup copy is left in place: it now lies in unpartitioned-then-grown space.
pub(super) fn grow_last_partition<F: Read + Write + Seek + ?Sized>(
    f: &mut F,
    pmbr: &Mbr,
    len: u64,
) -> Result<Partition, DiskError> {
    let mut gpt = Gpt::read_from(f, len)?;
    if gpt.from_backup {
        return Err(DiskError::CannotGrow(
            "the primary GPT is damaged and only the backup copy is intact; repair the image \
             first (gdisk: r, b, w) or use a fresh copy"
                .to_string(),
        ));
    }
    let Some(last) = (0..gpt.entries.len())
        .filter(|&i| gpt.entries[i].is_used())
        .max_by_key(|&i| gpt.entries[i].starting_lba)
    else {
        return Err(DiskError::CannotGrow(
            "the GPT has no partitions to grow".to_string(),
        ));
    };

    let total = len / SECTOR;
    let array = array_sectors(gpt.header.number_of_partition_entries);
    let old_backup_lba = gpt.header.backup_lba;
    let new_backup_lba = total - 1;
    // `validated` guarantees the old backup header lies inside the image, so this is at
    // least the old last usable sector whenever the backup used the standard layout.
    let new_last_usable = new_backup_lba
        .checked_sub(array + 1)
        .filter(|&l| l >= gpt.header.last_usable_lba)
        .ok_or_else(|| {
            DiskError::CannotGrow(format!(
                "the image ({}) leaves no room after the last usable sector {} for the backup \
                 GPT; enlarge it first",
                describe_bytes(len),
                gpt.header.last_usable_lba
            ))
        })?;
    if new_backup_lba == old_backup_lba && gpt.entries[last].ending_lba == new_last_usable {
        return Ok(to_partition(last, &gpt.entries[last]));
    }

    gpt.entries[last].ending_lba = new_last_usable;
    let mut primary = gpt.header.clone();
    primary.backup_lba = new_backup_lba;
    primary.last_usable_lba = new_last_usable;
    let mut backup = primary.clone();
    backup.primary_lba = new_backup_lba;
    backup.backup_lba = primary.primary_lba;
    backup.partition_entry_lba = new_last_usable + 1;

    // Backup first: until the primary is rewritten, the old primary and old backup still
    // describe the image consistently, so an interruption leaves a readable table.
    backup
        .write_into(f, SECTOR, &gpt.entries)
        .map_err(|e| DiskError::Io(std::io::Error::other(describe(e))))?;
    f.flush()?;
    primary
        .write_into(f, SECTOR, &gpt.entries)
        .map_err(|e| DiskError::Io(std::io::Error::other(describe(e))))?;
    f.flush()?;
    grow_protective_entry(f, pmbr, old_backup_lba + 1, total)?;

    Ok(to_partition(last, &gpt.entries[last]))
}

/// A protective entry that covered the whole old disk is extended to cover the new one.
/// Entries that already say 0xFFFFFFFF (too big to count) and hybrid layouts that never
/// covered the whole disk are left alone.
fn grow_protective_entry<F: Write + Seek + ?Sized>(
    f: &mut F,
    pmbr: &Mbr,
    old_total: u64,
    total: u64,
) -> Result<(), DiskError> {
    let Some(e) = pmbr.entries.iter().find(|e| e.part_type == mbr::PROTECTIVE) else {
        return Ok(());
    };
    let end = u64::from(e.start) + u64::from(e.sectors);
    if e.sectors == u32::MAX || end != old_total || total <= end {
        return Ok(());
    }
    let sectors = u32::try_from(total - u64::from(e.start)).unwrap_or(u32::MAX);
    f.seek(SeekFrom::Start(446 + 16 * e.index as u64 + 12))?;
    f.write_all(&sectors.to_le_bytes())?;
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use gptman::GPT;

    use super::*;
    use crate::disk;

    /// A GPT with valid CRCs whose last usable sector and one entry are set by the test.
    fn image(last_usable: u64, start: u64, end: u64) -> Cursor<Vec<u8>> {
        let mut img = Cursor::new(vec![0u8; 256 * 1024]);
        GPT::write_protective_mbr_into(&mut img, SECTOR).unwrap();
        let mut gpt = GPT::new_from(&mut img, SECTOR, [7; 16]).unwrap();
        gpt.header.last_usable_lba = last_usable;
        let mut entries: Vec<GPTPartitionEntry> = gpt.iter().map(|(_, e)| e.clone()).collect();
        entries[0] = GPTPartitionEntry {
            partition_type_guid: [1; 16],
            unique_partition_guid: [2; 16],
            starting_lba: start,
            ending_lba: end,
            attribute_bits: 0,
            partition_name: "x".into(),
        };
        gpt.header.write_into(&mut img, SECTOR, &entries).unwrap();
        img
    }

    #[test]
    fn sane_image_reads() {
        let t = disk::read_from(&mut image(400, 34, 400)).unwrap();
        assert_eq!(t.partitions[0].start, 34 * SECTOR);
    }

    /// Found by the `gpt` fuzz target: an entry near u64::MAX overflowed the end offset.
    #[test]
    fn huge_lbas_are_invalid_not_a_panic() {
        let err =
            disk::read_from(&mut image(u64::MAX - 1, u64::MAX / 2, u64::MAX - 2)).unwrap_err();
        assert!(
            matches!(err, DiskError::Invalid(ref m) if m.contains("beyond any disk size")),
            "{err}"
        );
        let err = disk::read_from(&mut image(u64::MAX - 1, 34, u64::MAX / 1024)).unwrap_err();
        assert!(matches!(err, DiskError::Truncated(_)), "{err}");
    }
}
