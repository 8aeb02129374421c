//! Where the emitter reads the raw image from: a sparse file whose holes are skipped without
//! being read, or any plain stream.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;

/// A raw disk image, read front to back once.
pub trait RawSource {
    /// The image size in bytes.
    fn size(&self) -> u64;

    /// The next region at or after `pos` that may hold data; `None` when only holes follow.
    /// Everything between `pos` and the region's start reads as zeros.
    fn next_data(&mut self, pos: u64) -> io::Result<Option<Range<u64>>>;

    /// Fills `buf` from offset `pos`. Calls come in increasing, non-overlapping order.
    fn read_exact_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()>;
}

/// A sparse file: SEEK_DATA/SEEK_HOLE find the data, so holes cost nothing to read.
pub struct SparseFile {
    file: File,
    size: u64,
}

impl SparseFile {
    pub fn new(file: File) -> io::Result<Self> {
        let size = file.metadata()?.len();
        // Read front to back once: on Linux this doubles the read-ahead window
        // (mm/fadvise.c, POSIX_FADV_SEQUENTIAL). Only advice; ignored where unsupported.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Ok(SparseFile { file, size })
    }
}

impl RawSource for SparseFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn next_data(&mut self, pos: u64) -> io::Result<Option<Range<u64>>> {
        crate::io::extents::next_extent(&self.file, pos, self.size)
    }

    fn read_exact_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, pos).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    "the raw image got shorter while it was being read",
                )
            } else {
                e
            }
        })
    }
}

/// A stream of `size` bytes with no hole information: all-zero blocks are still found by
/// looking at them.
pub struct StreamSource<R> {
    inner: R,
    size: u64,
    pos: u64,
}

impl<R: Read> StreamSource<R> {
    pub fn new(inner: R, size: u64) -> Self {
        StreamSource {
            inner,
            size,
            pos: 0,
        }
    }
}

impl<R: Read> RawSource for StreamSource<R> {
    fn size(&self) -> u64 {
        self.size
    }

    fn next_data(&mut self, pos: u64) -> io::Result<Option<Range<u64>>> {
        Ok((pos < self.size).then_some(pos..self.size))
    }

    fn read_exact_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        if pos != self.pos {
            return Err(io::Error::other(format!(
                "stream read out of order: at {}, asked for {pos}",
                self.pos
            )));
        }
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }
}
