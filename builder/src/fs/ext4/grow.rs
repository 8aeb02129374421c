//! Growing an ext4 filesystem inside a whole-disk image.
//!
//! `resize2fs 'image?offset=N' SIZE` sets the length of the whole image file to SIZE (verified
//! with e2fsprogs 1.47.0), destroying everything after it. So the partition is copied out to
//! its own sparse file, grown there, and copied back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::e2fsprogs;
use super::superblock::Superblock;
use crate::fs::FsError;
use crate::io::copy_range::{Zeros, copy_range};
use crate::io::extents::data_extents;

const CHUNK: usize = 64 * 1024;

/// Grows the ext4 filesystem at `offset` in `image` from a partition of `old_len` bytes to
/// one of `new_len` bytes. The caller has already made the image file at least
/// `offset + new_len` long and grown the partition table. Bytes outside
/// `[offset, offset + new_len)` are not touched; bytes in `[offset + old_len, offset + new_len)`
/// become whatever resize2fs leaves there (zero where it writes nothing).
///
/// If this fails before the copy back, the image is unchanged. An `Ext4Fs` opened before is
/// stale afterwards: open it again with the new length.
pub fn grow(
    image: &Path,
    offset: u64,
    old_len: u64,
    new_len: u64,
    epoch: i64,
) -> Result<(), FsError> {
    e2fsprogs::e2fsprogs_version()?;
    let file = OpenOptions::new().read(true).write(true).open(image)?;
    let image_len = file.metadata()?.len();
    if new_len < old_len {
        return Err(FsError::Unsupported(format!(
            "cannot shrink an ext4 filesystem ({old_len} -> {new_len} bytes)"
        )));
    }
    if offset + new_len > image_len {
        return Err(FsError::Unsupported(format!(
            "the image ({image_len} bytes) is too short for a partition of {new_len} bytes at \
             offset {offset}: extend the image file first"
        )));
    }
    let sb = Superblock::read(&file, offset)?;
    sb.write_gate()?;
    if sb.has_journal() {
        e2fsprogs::journal_gate(image, offset)?;
    }
    if sb.size_bytes() > old_len {
        return Err(FsError::Corrupt(format!(
            "the filesystem ({} bytes) is larger than its partition ({old_len} bytes)",
            sb.size_bytes()
        )));
    }
    let new_blocks = new_len / u64::from(sb.block_size);
    if new_blocks <= sb.blocks_count {
        return Ok(());
    }

    let dir = match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Beside the image, so the copy lives on the same filesystem (space, speed, sparseness).
    let tmp = tempfile::Builder::new()
        .prefix(".imagegen-grow-")
        .suffix(".ext4")
        .tempfile_in(dir)?;
    // A copy of the whole partition, secrets included: gone on SIGTERM too.
    let _interrupted = crate::interrupt::Guard::new(tmp.path());
    // Holes stay holes; the kernel moves the bytes (copy_file_range).
    copy_range(
        &file,
        offset..offset + old_len,
        tmp.as_file(),
        0,
        Zeros::Write,
    )?;
    tmp.as_file().set_len(new_len)?;

    let tmp_path = crate::argv::path(tmp.path());
    let tmp_path = tmp_path.to_str().ok_or_else(|| FsError::InvalidPath {
        path: tmp.path().display().to_string(),
        reason: "the temporary path is not UTF-8".into(),
    })?;
    let fsck = e2fsprogs::run("e2fsck", ["-fy", tmp_path], epoch)?;
    if !fsck.status.success() {
        return Err(FsError::Tool {
            tool: "e2fsck -fy".into(),
            detail: format!(
                "the filesystem needed repairs before it could be grown ({}); check the source \
                 image:\n{}",
                fsck.status,
                e2fsprogs::output_text(&fsck)
            ),
        });
    }
    // -f: e2fsck just checked it, even if its last-check time (the epoch) is older than its
    // last mount.
    let resize = e2fsprogs::run(
        "resize2fs",
        ["-f", tmp_path, &new_blocks.to_string()],
        epoch,
    )?;
    if !resize.status.success() {
        return Err(FsError::Tool {
            tool: "resize2fs".into(),
            detail: format!("{}:\n{}", resize.status, e2fsprogs::output_text(&resize)),
        });
    }
    // resize2fs sets the file length to the new filesystem size, which is shorter than the
    // partition when the partition is not a whole number of blocks (a GPT's last usable
    // sector rarely is); the tail is slack, copied back as zeros.
    tmp.as_file().set_len(new_len)?;
    let grown = Superblock::read(tmp.as_file(), 0)?;
    if grown.blocks_count != new_blocks {
        return Err(FsError::Tool {
            tool: "resize2fs".into(),
            detail: format!(
                "the filesystem has {} blocks after resizing, expected {new_blocks}",
                grown.blocks_count
            ),
        });
    }
    copy_back(tmp.as_file(), &file, offset, new_len)?;
    e2fsprogs::check(image, offset, epoch)
}

/// The data (non-hole) ranges of `f` within `[start, end)`; see [`crate::io::extents`] for
/// what a filesystem without hole support reports.
fn data_ranges(f: &File, start: u64, end: u64) -> Result<Vec<(u64, u64)>, FsError> {
    let mut out = Vec::new();
    for r in data_extents(f, start..end) {
        let r = r?;
        out.push((r.start, r.end));
    }
    Ok(out)
}

/// Writes every byte range where `grown` differs from the image at `offset`: the image stays
/// sparse where both are holes, and bytes that are zero in the grown copy but not in the image
/// are overwritten with zeros.
fn copy_back(grown: &File, image: &File, offset: u64, len: u64) -> Result<(), FsError> {
    // Where either side has data; elsewhere both read as zeros.
    let mut ranges = data_ranges(grown, 0, len)?;
    ranges.extend(
        data_ranges(image, offset, offset + len)?
            .into_iter()
            .map(|(s, e)| (s - offset, e - offset)),
    );
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let mut new = vec![0u8; CHUNK];
    let mut old = vec![0u8; CHUNK];
    for (start, end) in merged {
        let mut at = start;
        while at < end {
            let n = CHUNK.min((end - at) as usize);
            grown.read_exact_at(&mut new[..n], at)?;
            image.read_exact_at(&mut old[..n], offset + at)?;
            if new[..n] != old[..n] {
                image.write_all_at(&new[..n], offset + at)?;
            }
            at += n as u64;
        }
    }
    Ok(())
}
