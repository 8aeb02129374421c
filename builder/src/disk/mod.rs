//! Partition tables of whole-disk images: MBR and GPT.
//!
//! Reading gives one `PartitionTable` whatever the kind. Writing is limited to what imagegen
//! needs: growing the physically last partition after the image file was enlarged. Bytes that
//! are not ours (MBR boot code 0-439, anything between the table and the first partition, BIOS
//! boot partitions) are never written.

pub mod gpt;
pub mod mbr;

use std::fs::File;

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
    let _ = file;
    todo!("disk::read")
}

/// Grows the physically last partition to the end of the image. The caller has already
/// enlarged the file to its new length. GPT: the backup header and entries move to the new end.
/// Returns the grown partition.
pub fn grow_last_partition(file: &mut File) -> Result<Partition, DiskError> {
    let _ = file;
    todo!("disk::grow_last_partition")
}
