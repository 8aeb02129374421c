//! Growing an image: the file, its physically last partition, and that partition's ext4.

use super::{Image, ImageError, ImageLock};
use crate::disk::{self, SECTOR};
use crate::fs::{FsKind, ext4};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// What a grow did, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub partition: u32,
    pub old_image_size: u64,
    pub new_image_size: u64,
    pub old_partition_size: u64,
    pub new_partition_size: u64,
}

/// Sectors at each end of the disk that hold partition-table structures (MBR + primary GPT
/// header and entries at the start, backup entries and header at the end). Saved before and
/// restored on failure, together with the original length.
const TABLE_SECTORS: u64 = 34;

/// Grows the image at `path` to `new_len` bytes (rounded up to whole sectors), then the
/// physically last partition to the new end, then its ext4 filesystem. On failure the image
/// is put back to its original length and partition table. Takes the image's write lock:
/// drop any `Image` of the same file that has made changes first.
pub fn grow(path: &Path, new_len: u64, epoch: i64) -> Result<Grown, ImageError> {
    let _lock = ImageLock::acquire(path)?;
    let image = Image::open(path)?;
    let old_len = std::fs::metadata(path)?.len();
    // Rounding up to a sector wrapped the largest sizes around to 0 ("not larger than the
    // image (0 bytes)") in release builds and panicked in debug builds.
    let new_len = new_len
        .div_ceil(SECTOR)
        .checked_mul(SECTOR)
        .ok_or_else(|| too_large(new_len))?;
    if new_len <= old_len {
        return Err(ImageError::Unsupported(format!(
            "the new size ({new_len} bytes) is not larger than the image ({old_len} bytes); \
             imagegen only grows images"
        )));
    }
    let last = image
        .slots()
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s.partition.start)
        .map(|(i, _)| i)
        .ok_or_else(|| ImageError::Unsupported("the image has no partitions to grow".into()))?;
    let slot = &image.slots()[last];
    if slot.fs_kind != Some(FsKind::Ext4) {
        return Err(ImageError::Unsupported(format!(
            "the last partition (p{}) holds {}, not ext4; imagegen grows only an ext4 last \
             partition",
            slot.partition.number,
            slot.fs_kind
                .map_or("no known filesystem".into(), |k| k.to_string())
        )));
    }
    let old_part = slot.partition.clone();
    drop(image);

    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let saved = SavedTable::save(&mut file, old_len)?;
    let result = (|| -> Result<Grown, ImageError> {
        file.set_len(new_len)?;
        let grown = disk::grow_last_partition(&mut file).map_err(|source| ImageError::Disk {
            path: path.display().to_string(),
            source,
        })?;
        file.sync_all()?;
        ext4::grow(path, grown.start, old_part.size, grown.size, epoch)?;
        Ok(Grown {
            partition: grown.number,
            old_image_size: old_len,
            new_image_size: new_len,
            old_partition_size: old_part.size,
            new_partition_size: grown.size,
        })
    })();
    if result.is_err() {
        // Best effort: the original error is what the user needs to see.
        let _ = saved.restore(&mut file);
    }
    result
}

fn too_large(bytes: u64) -> ImageError {
    ImageError::Unsupported(format!(
        "the new size ({bytes} bytes) is too large for any disk image"
    ))
}

struct SavedTable {
    len: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl SavedTable {
    fn save(file: &mut File, len: u64) -> std::io::Result<SavedTable> {
        let span = (TABLE_SECTORS * SECTOR).min(len);
        let mut head = vec![0; span as usize];
        file.seek(SeekFrom::Start(0))?;
        file.read_exact(&mut head)?;
        let mut tail = vec![0; span as usize];
        file.seek(SeekFrom::Start(len - span))?;
        file.read_exact(&mut tail)?;
        Ok(SavedTable { len, head, tail })
    }

    fn restore(&self, file: &mut File) -> std::io::Result<()> {
        file.set_len(self.len)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&self.head)?;
        file.seek(SeekFrom::Start(self.len - self.tail.len() as u64))?;
        file.write_all(&self.tail)?;
        file.sync_all()
    }
}
