//! Reading back what was written, from the device rather than from the page cache, and
//! checking it against the image: each bmap range against its sha256, or, without a bmap, the
//! whole image against the sha256 of the stream that was written.

use super::write::{AlignedBuf, CHUNK};
use crate::emit::bmap::Bmap;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// What the read-back found wrong.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "verification failed: bytes {start}..{end} read back from the target differ from the \
         image; the card is not usable (a failing card or reader?): flash it again or use \
         another card"
    )]
    Mismatch { start: u64, end: u64 },
    #[error("cannot read back the target: {0}")]
    Io(#[from] io::Error),
}

/// What to compare against.
pub enum Expected<'a> {
    Bmap(&'a Bmap),
    Whole { size: u64, sha256: &'a str },
}

/// Reads the expected ranges of `file` back and checks them. `direct_block` is the logical
/// block size when `file` was opened with O_DIRECT (a block device): the page cache is bypassed; otherwise the cached pages of
/// the file are dropped first (posix_fadvise DONTNEED, after the writer's fsync made them
/// clean), so the bytes come from the disk.
pub fn verify(
    file: &File,
    direct_block: Option<usize>,
    expected: &Expected,
    bar: &crate::io::progress::Progress,
) -> Result<u64, VerifyError> {
    if direct_block.is_none() {
        // Advice only: where it is not supported (tmpfs) the reads simply hit the cache.
        let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
    }
    let mut buf = AlignedBuf::new(CHUNK);
    let mut read = 0;
    match expected {
        Expected::Bmap(bmap) => {
            for r in &bmap.ranges {
                let got = hash_range(file, direct_block, r.start, r.end, &mut buf, bar)?;
                read += r.end - r.start;
                if got != r.sha256 {
                    return Err(VerifyError::Mismatch {
                        start: r.start,
                        end: r.end,
                    });
                }
            }
        }
        Expected::Whole { size, sha256 } => {
            let got = hash_range(file, direct_block, 0, *size, &mut buf, bar)?;
            read = *size;
            if hex::encode(got) != *sha256 {
                return Err(VerifyError::Mismatch {
                    start: 0,
                    end: *size,
                });
            }
        }
    }
    Ok(read)
}

fn hash_range(
    file: &File,
    direct_block: Option<usize>,
    start: u64,
    end: u64,
    buf: &mut AlignedBuf,
    bar: &crate::io::progress::Progress,
) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut pos = start;
    while pos < end {
        let n = (end - pos).min(CHUNK as u64) as usize;
        // O_DIRECT reads whole aligned blocks; bmap ranges start on 4 KiB boundaries, and only
        // the image's last range may end inside one.
        let want = direct_block.map_or(n, |b| n.next_multiple_of(b));
        let chunk = &mut buf.as_mut_slice()[..want];
        file.read_exact_at(chunk, pos)?;
        hasher.update(&chunk[..n]);
        bar.inc(n as u64);
        pos += n as u64;
    }
    Ok(hasher.finalize().into())
}
