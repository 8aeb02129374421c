//! Partition tables of whole-disk images: MBR and GPT.
//!
//! Reading gives one `PartitionTable` whatever the kind. Writing is limited to what imagegen
//! needs: growing the physically last partition after the image file was enlarged. Bytes that
//! are not ours (MBR boot code 0-439, anything between the table and the first partition, BIOS
//! boot partitions) are never written.

pub mod gpt;
pub mod mbr;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// Sector size of every image imagegen handles (all vendor images use 512).
pub const SECTOR: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartType {
    /// MBR partition type byte, e.g. 0x0c (FAT32 LBA), 0x83 (Linux).
    Mbr(u8),
    /// GPT partition type GUID, lowercase hyphenated.
    Gpt(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition number as the kernel names it (sda1 = 1); GPT: index in the entry array + 1.
    pub number: u32,
    /// Offset of the first byte, in bytes from the start of the image.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    pub part_type: PartType,
    /// The PARTUUID the kernel reports: GPT unique partition GUID (lowercase), or for MBR
    /// `<disk id as %08x>-<number as %02d>`.
    pub partuuid: String,
    /// GPT partition name (PARTLABEL); None on MBR or when empty.
    pub name: Option<String>,
    /// MBR boot flag (0x80).
    pub bootable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    pub kind: TableKind,
    /// MBR: the disk signature as %08x; GPT: the disk GUID, lowercase hyphenated.
    pub disk_id: String,
    /// Sorted by `number`.
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    /// The partition with the highest start offset, which is the one that can grow into space
    /// added at the end of the image (partition numbers say nothing about placement: Ubuntu
    /// cloud images put p1 last).
    pub fn physically_last(&self) -> Option<&Partition> {
        self.partitions.iter().max_by_key(|p| p.start)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("no partition table found (no 0x55AA boot signature in sector 0)")]
    NoTable,
    #[error("image is truncated: {0}")]
    Truncated(String),
    #[error("invalid partition table: {0}")]
    Invalid(String),
    #[error("cannot grow: {0}")]
    CannotGrow(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the partition table of a whole-disk image (GPT when sector 0 holds a protective
/// MBR, else MBR).
pub fn read(file: &mut File) -> Result<PartitionTable, DiskError> {
    read_from(file)
}

/// Same as [`read`], for any seekable reader (an in-memory image in tests and fuzzers). The
/// image length is taken from the end of the stream.
pub fn read_from<R: Read + Seek + ?Sized>(r: &mut R) -> Result<PartitionTable, DiskError> {
    let len = r.seek(SeekFrom::End(0))?;
    let mbr = mbr::Mbr::read_from(r, len)?;
    if mbr.is_protective() {
        Ok(gpt::Gpt::read_from(r, len)?.table())
    } else {
        mbr.table(len)
    }
}

/// Grows the physically last partition to the end of the image. The caller has already
/// enlarged the file to its new length. GPT: the backup header and entries move to the new end.
/// Returns the grown partition.
///
/// Not synced to disk: the image is a working copy that the caller syncs once when it is
/// complete (syncing here would flush every dirty page of a freshly copied base image).
pub fn grow_last_partition(file: &mut File) -> Result<Partition, DiskError> {
    grow_last_partition_in(file)
}

/// Same as [`grow_last_partition`], for any seekable read/write stream.
pub fn grow_last_partition_in<F: Read + Write + Seek + ?Sized>(
    f: &mut F,
) -> Result<Partition, DiskError> {
    let len = f.seek(SeekFrom::End(0))?;
    let mbr = mbr::Mbr::read_from(f, len)?;
    if mbr.is_protective() {
        gpt::grow_last_partition(f, &mbr, len)
    } else {
        mbr::grow_last_partition(f, &mbr, len)
    }
}

/// Formats a GUID stored in the mixed-endian GPT layout as lowercase hyphenated text.
fn guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Human-readable size for error messages (exact bytes and MiB).
fn describe_bytes(n: u64) -> String {
    format!("{n} bytes ({:.1} MiB)", n as f64 / (1024.0 * 1024.0))
}

/// Rejects overlapping partitions. `spans` are (number, first sector, sector count).
fn check_overlaps(spans: &mut [(u32, u64, u64)]) -> Result<(), DiskError> {
    spans.sort_by_key(|s| s.1);
    for w in spans.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.1 + a.2 > b.1 {
            return Err(DiskError::Invalid(format!(
                "partitions {} (sectors {}..{}) and {} (sectors {}..{}) overlap",
                a.0,
                a.1,
                a.1 + a.2 - 1,
                b.0,
                b.1,
                b.1 + b.2 - 1
            )));
        }
    }
    Ok(())
}

/// Fails when a partition runs past the end of the image: the usual sign of an interrupted
/// download or copy.
fn check_inside(number: u32, first: u64, count: u64, len: u64) -> Result<(), DiskError> {
    // GPT LBAs are 64-bit: a damaged entry can point past any byte offset u64 can hold.
    let end = first
        .checked_add(count)
        .and_then(|sectors| sectors.checked_mul(SECTOR));
    match end {
        Some(end) if end <= len => Ok(()),
        Some(end) => Err(DiskError::Truncated(format!(
            "partition {number} ends at byte {end} ({}) but the image is only {}; \
             the image was cut short (interrupted download or copy?): fetch it again",
            describe_bytes(end),
            describe_bytes(len)
        ))),
        None => Err(DiskError::Invalid(format!(
            "partition {number} starts at sector {first} and spans {count} sectors, beyond \
             any disk size"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_is_mixed_endian() {
        // The ESP type GUID as stored on disk.
        let raw = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(guid_string(&raw), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }
}
