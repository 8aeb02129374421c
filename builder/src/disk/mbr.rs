//! MBR (DOS) partition tables.
//!
//! Only the four primary entries are read. An extended partition is listed as it is (its type
//! byte says so) but its chain of logical partitions is not walked: no vendor image imagegen
//! supports uses one, and growing one is refused.

use std::io::{Read, Seek, SeekFrom, Write};

use super::{
    DiskError, PartType, Partition, PartitionTable, SECTOR, TableKind, check_inside, check_overlaps,
};

const ENTRIES_AT: usize = 446;
const ENTRY_LEN: usize = 16;
const DISK_ID_AT: usize = 440;
/// Type byte of the single entry of a GPT protective MBR.
pub const PROTECTIVE: u8 = 0xee;

/// One of the four primary entries, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// 0..=3; the kernel's partition number is `index + 1`.
    pub index: usize,
    pub boot: u8,
    pub part_type: u8,
    /// First sector.
    pub start: u32,
    /// Length in sectors.
    pub sectors: u32,
}

impl Entry {
    fn parse(index: usize, b: &[u8]) -> Entry {
        Entry {
            index,
            boot: b[0],
            part_type: b[4],
            start: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            sectors: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }

    /// Unused when the type is 0 (what fdisk shows) or the size is 0 (what the kernel skips).
    pub fn is_used(&self) -> bool {
        self.part_type != 0 && self.sectors != 0
    }

    pub fn is_extended(&self) -> bool {
        matches!(self.part_type, 0x05 | 0x0f | 0x85)
    }

    pub fn number(&self) -> u32 {
        self.index as u32 + 1
    }
}

/// Sector 0 of an image that carries the 0x55AA signature.
#[derive(Debug, Clone)]
pub struct Mbr {
    pub disk_id: u32,
    pub entries: [Entry; 4],
}

impl Mbr {
    /// Reads sector 0. `len` is the image length in bytes.
    pub fn read_from<R: Read + Seek + ?Sized>(r: &mut R, len: u64) -> Result<Mbr, DiskError> {
        if len < SECTOR {
            return Err(DiskError::NoTable);
        }
        let mut s = [0u8; SECTOR as usize];
        r.seek(SeekFrom::Start(0))?;
        r.read_exact(&mut s)?;
        Mbr::parse(&s)
    }

    /// Parses a 512-byte sector 0.
    pub fn parse(s: &[u8; SECTOR as usize]) -> Result<Mbr, DiskError> {
        if s[510..512] != [0x55, 0xaa] {
            return Err(DiskError::NoTable);
        }
        let entries: [Entry; 4] = std::array::from_fn(|i| {
            let at = ENTRIES_AT + i * ENTRY_LEN;
            Entry::parse(i, &s[at..at + ENTRY_LEN])
        });
        // Same test as the kernel: a FAT or NTFS boot sector also ends in 0x55AA, but its bytes
        // at the boot indicator offsets are rarely all 0x00 or 0x80. Like the kernel's GPT
        // code, a protective MBR is not held to it.
        let protective = entries.iter().any(|e| e.part_type == PROTECTIVE);
        if let Some(e) = entries
            .iter()
            .find(|e| !protective && e.boot != 0 && e.boot != 0x80)
        {
            return Err(DiskError::Invalid(format!(
                "sector 0 ends in 0x55AA but MBR entry {} has boot indicator {:#04x} (only 0x00 \
                 and 0x80 are valid): this is probably a filesystem without a partition table, \
                 not a whole-disk image",
                e.number(),
                e.boot
            )));
        }
        let disk_id = u32::from_le_bytes([
            s[DISK_ID_AT],
            s[DISK_ID_AT + 1],
            s[DISK_ID_AT + 2],
            s[DISK_ID_AT + 3],
        ]);
        if !entries.iter().any(Entry::is_used) && looks_like_fat_boot_sector(s) {
            return Err(DiskError::Invalid(
                "sector 0 is the boot sector of a FAT filesystem, not a partition table: \
                 this is a filesystem image, not a whole-disk image"
                    .to_string(),
            ));
        }
        Ok(Mbr { disk_id, entries })
    }

    /// True when an entry has type 0xEE: the real table is a GPT (hybrid MBRs included).
    pub fn is_protective(&self) -> bool {
        self.entries.iter().any(|e| e.part_type == PROTECTIVE)
    }

    /// The used entries, checked against each other and against the image length.
    pub fn used(&self, len: u64) -> Result<Vec<Entry>, DiskError> {
        let used: Vec<Entry> = self
            .entries
            .iter()
            .copied()
            .filter(Entry::is_used)
            .collect();
        for e in &used {
            if e.start == 0 {
                return Err(DiskError::Invalid(format!(
                    "MBR partition {} starts at sector 0, over the partition table itself",
                    e.number()
                )));
            }
            check_inside(e.number(), u64::from(e.start), u64::from(e.sectors), len)?;
        }
        let mut spans: Vec<(u32, u64, u64)> = used
            .iter()
            .map(|e| (e.number(), u64::from(e.start), u64::from(e.sectors)))
            .collect();
        check_overlaps(&mut spans)?;
        Ok(used)
    }

    pub fn partition(&self, e: &Entry) -> Partition {
        Partition {
            number: e.number(),
            start: u64::from(e.start) * SECTOR,
            size: u64::from(e.sectors) * SECTOR,
            part_type: PartType::Mbr(e.part_type),
            partuuid: format!("{:08x}-{:02}", self.disk_id, e.number()),
            name: None,
            bootable: e.boot == 0x80,
        }
    }

    pub fn table(&self, len: u64) -> Result<PartitionTable, DiskError> {
        let partitions = self.used(len)?.iter().map(|e| self.partition(e)).collect();
        Ok(PartitionTable {
            kind: TableKind::Mbr,
            disk_id: format!("{:08x}", self.disk_id),
            partitions,
        })
    }
}

/// A jump instruction and a FAT type string where FAT12/16 or FAT32 boot sectors keep them.
/// mkfs.vfat leaves bytes 446..510 zero, which reads as an MBR without partitions.
fn looks_like_fat_boot_sector(s: &[u8; SECTOR as usize]) -> bool {
    matches!(s[0], 0xeb | 0xe9) && (s[54..57] == *b"FAT" || s[82..85] == *b"FAT")
}

/// CHS address of `lba` in the 255-head, 63-sector geometry every partitioning tool assumes
/// for images, clamped to 1023/254/63 beyond the 8 GiB that CHS can express, as stored in an
/// entry (head, sector | cylinder high bits, cylinder low bits).
fn chs(lba: u64) -> [u8; 3] {
    let (c, h, s) = match lba / (255 * 63) {
        c if c > 1023 => (1023, 254, 63),
        c => (c, (lba / 63) % 255, lba % 63 + 1),
    };
    [
        h as u8,
        (s as u8) | (((c >> 2) & 0xc0) as u8),
        (c & 0xff) as u8,
    ]
}

/// Grows the physically last primary partition to the last whole sector of the image. Writes
/// only that entry's ending CHS and sector count.
pub(super) fn grow_last_partition<F: Read + Write + Seek + ?Sized>(
    f: &mut F,
    mbr: &Mbr,
    len: u64,
) -> Result<Partition, DiskError> {
    let used = mbr.used(len)?;
    let Some(last) = used.iter().max_by_key(|e| e.start) else {
        return Err(DiskError::CannotGrow(
            "the MBR has no partitions to grow".to_string(),
        ));
    };
    if last.is_extended() {
        return Err(DiskError::CannotGrow(format!(
            "the physically last partition {} is an extended partition (type {:#04x}); \
             growing extended and logical partitions is not supported",
            last.number(),
            last.part_type
        )));
    }
    let total = len / SECTOR;
    if total > u64::from(u32::MAX) {
        return Err(DiskError::CannotGrow(format!(
            "the image has {total} sectors, beyond the 2^32-1 sectors (2 TiB) an MBR can \
             address; use a smaller image size"
        )));
    }
    let sectors = total - u64::from(last.start);
    if sectors == u64::from(last.sectors) {
        return Ok(mbr.partition(last));
    }
    let mut grown = *last;
    // `total` fits in u32 and the partition is inside the image (checked by `used`).
    grown.sectors = sectors as u32;

    // Entry bytes 5..16: ending CHS, first sector (rewritten unchanged), sector count.
    let at = (ENTRIES_AT + last.index * ENTRY_LEN) as u64;
    let mut patch = [0u8; 11];
    patch[..3].copy_from_slice(&chs(total - 1));
    patch[3..7].copy_from_slice(&grown.start.to_le_bytes());
    patch[7..].copy_from_slice(&grown.sectors.to_le_bytes());
    f.seek(SeekFrom::Start(at + 5))?;
    f.write_all(&patch)?;
    f.flush()?;
    Ok(mbr.partition(&grown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_matches_the_usual_geometry() {
        // 0/32/33 is where fdisk places sector 2048.
        assert_eq!(chs(2047), [32, 32, 0]);
        assert_eq!(chs(2048), [32, 33, 0]);
        assert_eq!(chs(u64::from(u32::MAX)), [254, 0xff, 0xff]);
    }
}
