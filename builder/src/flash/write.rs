//! Writing the raw image stream onto the target: only the bmap's mapped ranges, or, without a
//! bmap, every block except the all-zero ones where the target already reads zeros.
//!
//! Block devices are written with O_DIRECT from an aligned buffer of [`CHUNK`] bytes. Measured
//! here (512 MiB of random data onto a loop device, `dd bs=4M`): O_DIRECT 0.31 s, buffered +
//! fsync 0.65-0.87 s; with 1 MiB and 4 MiB requests O_DIRECT is fastest (0.29-0.30 s), at 64 KiB
//! it loses its lead (0.78 s). It also keeps the progress bar honest: buffered writes fill the
//! page cache at memory speed and then wait minutes in the final fsync on an SD card. Regular
//! files are written buffered and fsync'ed once: there O_DIRECT gained nothing (0.52 s against
//! 0.50-0.54 s) and tmpfs refuses it.

use crate::emit::bmap::{Bmap, ByteRange};
use crate::io::zero::{BLOCK, is_zero};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Bytes per write request (see the module comment for the measurement).
pub const CHUNK: usize = 4 << 20;

/// Alignment of O_DIRECT buffers and offsets: the largest logical block size in use (4Kn).
pub const ALIGN: usize = 4096;

/// Unmapped gaps up to this size between two mapped ranges are written as zeros (the image's
/// bytes there are zeros) so that the two ranges go out in one request: a request costs more
/// than 64 KiB of transfer on a USB card reader.
const GAP: u64 = 64 << 10;

/// A zero-filled buffer whose start is aligned to [`ALIGN`], as O_DIRECT needs; safe code only:
/// the slice starts at the first aligned byte of a slightly larger vector.
pub struct AlignedBuf {
    mem: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let mem = vec![0u8; len + ALIGN];
        let off = mem.as_ptr().align_offset(ALIGN);
        AlignedBuf { mem, off, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.mem[self.off..self.off + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.off..self.off + self.len]
    }
}

/// Where the bytes go: the file handle and, when it was opened with O_DIRECT, the device's
/// logical block size: every request is then padded to it (the device ends on such a
/// boundary, so padding never passes its end).
pub struct Sink<'a> {
    pub file: &'a File,
    pub direct_block: Option<usize>,
    /// Skip all-zero blocks when there is no bmap: the target reads zeros where nothing is
    /// written (a regular file with its range punched out). A card does not: zeros are written.
    pub skip_zeros: bool,
}

/// Totals of one write.
#[derive(Debug, Clone)]
pub struct Written {
    /// Bytes sent to the target (with gap fill and padding).
    pub bytes: u64,
    /// sha256 of the whole raw image as it streamed by; `None` when a bmap was used (its
    /// ranges were checked one by one instead).
    pub raw_sha256: Option<String>,
}

/// A `Write` that takes the raw image front to back and puts it on the target.
pub struct ImageWriter<'a> {
    sink: Sink<'a>,
    image_size: u64,
    ranges: Option<&'a [ByteRange]>,
    next: usize,
    range_hash: Sha256,
    raw_hash: Option<Sha256>,
    pos: u64,
    buf: AlignedBuf,
    start: u64,
    len: usize,
    written: u64,
}

impl<'a> ImageWriter<'a> {
    pub fn new(sink: Sink<'a>, image_size: u64, bmap: Option<&'a Bmap>) -> ImageWriter<'a> {
        ImageWriter {
            sink,
            image_size,
            ranges: bmap.map(|b| b.ranges.as_slice()),
            next: 0,
            range_hash: Sha256::new(),
            raw_hash: bmap.is_none().then(Sha256::new),
            pos: 0,
            buf: AlignedBuf::new(CHUNK),
            start: 0,
            len: 0,
            written: 0,
        }
    }

    /// Writes what is pending, checks the stream was as long as announced, and syncs.
    pub fn finish(mut self) -> io::Result<Written> {
        self.flush_pending()?;
        if self.pos != self.image_size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the image ended after {} of the {} bytes it announced",
                    self.pos, self.image_size
                ),
            ));
        }
        if let Some(r) = self.ranges.and_then(|r| r.get(self.next)) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the image ended before bytes {}..{} of its bmap",
                    r.start, r.end
                ),
            ));
        }
        self.sink.file.sync_all()?;
        Ok(Written {
            bytes: self.written,
            raw_sha256: self.raw_hash.map(|h| hex::encode(h.finalize())),
        })
    }

    fn push(&mut self, pos: u64, mut data: &[u8]) -> io::Result<()> {
        let end = self.start + self.len as u64;
        if self.len > 0 && pos != end {
            let gap = pos.saturating_sub(end);
            if pos > end && gap <= GAP && self.len + gap as usize <= CHUNK {
                self.buf.as_mut_slice()[self.len..self.len + gap as usize].fill(0);
                self.len += gap as usize;
            } else {
                self.flush_pending()?;
            }
        }
        let mut at = pos;
        while !data.is_empty() {
            if self.len == 0 {
                self.start = at;
            }
            let n = data.len().min(CHUNK - self.len);
            self.buf.as_mut_slice()[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            at += n as u64;
            data = &data[n..];
            if self.len == CHUNK {
                self.flush_pending()?;
            }
        }
        Ok(())
    }

    fn flush_pending(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let mut len = self.len;
        if let Some(block) = self.sink.direct_block {
            if !self.start.is_multiple_of(block as u64) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the bmap's blocks are smaller than the device's {block}-byte sectors"),
                ));
            }
            let padded = len.next_multiple_of(block);
            self.buf.as_mut_slice()[len..padded].fill(0);
            len = padded;
        }
        self.sink
            .file
            .write_all_at(&self.buf.as_slice()[..len], self.start)?;
        self.written += len as u64;
        self.len = 0;
        Ok(())
    }

    fn mapped(&mut self, buf: &[u8]) -> io::Result<()> {
        let ranges = self.ranges.unwrap_or_default();
        let mut off = 0;
        while off < buf.len() {
            let pos = self.pos + off as u64;
            let Some(r) = ranges.get(self.next) else {
                break;
            };
            let left = (buf.len() - off) as u64;
            if pos < r.start {
                off += left.min(r.start - pos) as usize;
                continue;
            }
            let n = left.min(r.end - pos) as usize;
            let data = &buf[off..off + n];
            self.range_hash.update(data);
            self.push(pos, data)?;
            off += n;
            if pos + n as u64 == r.end {
                let got: [u8; 32] = std::mem::take(&mut self.range_hash).finalize().into();
                if got != r.sha256 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "bytes {}..{} of the image do not match the sha256 its bmap gives \
                             for them: the image or its .bmap is damaged",
                            r.start, r.end
                        ),
                    ));
                }
                self.next += 1;
            }
        }
        Ok(())
    }

    fn blocks(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < buf.len() {
            let pos = self.pos + off as u64;
            let n = ((buf.len() - off) as u64).min(BLOCK - pos % BLOCK) as usize;
            let block = &buf[off..off + n];
            if !(self.sink.skip_zeros && n as u64 == BLOCK && is_zero(block)) {
                self.push(pos, block)?;
            }
            off += n;
        }
        Ok(())
    }
}

impl Write for ImageWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.image_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the image is longer than the {} bytes its bmap or header states; \
                     nothing past that was written",
                    self.image_size
                ),
            ));
        }
        if let Some(h) = &mut self.raw_hash {
            h.update(buf);
        }
        if self.ranges.is_some() {
            self.mapped(buf)?;
        } else {
            self.blocks(buf)?;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
