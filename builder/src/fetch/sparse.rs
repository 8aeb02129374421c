//! Sparse output: all-zero blocks become holes, so a 4 GiB image with 1 GiB of data costs
//! 1 GiB of disk and of write bandwidth.

use crate::io::copy_range::{Zeros, copy_range};
use crate::io::zero::{BLOCK, is_zero};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;

/// Writes through to a fresh (empty) file, seeking over all-zero blocks instead of writing
/// them. Blocks are aligned to the output offset, so holes line up with filesystem blocks
/// whatever sizes the writes come in. Call [`SparseWriter::finish`] to set the final length.
pub struct SparseWriter {
    file: File,
    /// Logical position: bytes accepted so far.
    pos: u64,
    /// Where the file cursor really is (it lags `pos` after skipped blocks).
    file_pos: u64,
}

impl SparseWriter {
    /// `file` must be empty: skipped blocks rely on reading back as zeros.
    pub fn new(file: File) -> Self {
        SparseWriter {
            file,
            pos: 0,
            file_pos: 0,
        }
    }

    /// Sets the file length (a trailing hole is not written otherwise) and returns the file
    /// and the logical size.
    pub fn finish(self) -> io::Result<(File, u64)> {
        self.file.set_len(self.pos)?;
        Ok((self.file, self.pos))
    }

    fn write_run(&mut self, data: &[u8]) -> io::Result<()> {
        if self.file_pos != self.pos {
            self.file.seek(SeekFrom::Start(self.pos))?;
        }
        self.file.write_all(data)?;
        self.pos += data.len() as u64;
        self.file_pos = self.pos;
        Ok(())
    }
}

impl Write for SparseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        // Alternate between a run of non-zero blocks (one write) and a run of zero blocks
        // (skipped).
        while !rest.is_empty() {
            let mut data_len = 0;
            let mut offset = self.pos;
            loop {
                let to_boundary = (BLOCK - offset % BLOCK) as usize;
                let end = (data_len + to_boundary).min(rest.len());
                let chunk = &rest[data_len..end];
                if is_zero(chunk) {
                    break;
                }
                data_len = end;
                offset += chunk.len() as u64;
                if data_len == rest.len() {
                    break;
                }
            }
            if data_len > 0 {
                self.write_run(&rest[..data_len])?;
                rest = &rest[data_len..];
                continue;
            }
            // A run of zero blocks: skip them.
            let mut zero_len = 0;
            let mut offset = self.pos;
            while zero_len < rest.len() {
                let to_boundary = (BLOCK - offset % BLOCK) as usize;
                let end = (zero_len + to_boundary).min(rest.len());
                if !is_zero(&rest[zero_len..end]) {
                    break;
                }
                offset += (end - zero_len) as u64;
                zero_len = end;
            }
            self.pos += zero_len as u64;
            rest = &rest[zero_len..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copies `src` to a new sparse file `dst` (replacing it), reading only the data extents
/// of `src` (SEEK_DATA/SEEK_HOLE) and leaving holes for all-zero blocks. Returns the size.
/// This is how a build makes its working copy of a cached base image.
pub fn copy_sparse(src: &Path, dst: &Path) -> io::Result<u64> {
    let input = File::open(src)?;
    let size = input.metadata()?.len();
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    copy_range(&input, 0..size, &output, 0, Zeros::Skip).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                e.kind(),
                format!("{} shrank while being copied", src.display()),
            )
        } else {
            e
        }
    })?;
    output.set_len(size)?;
    Ok(size)
}
