//! Sparse output: all-zero blocks become holes, so a 4 GiB image with 1 GiB of data costs
//! 1 GiB of disk and of write bandwidth.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use super::zero::{BLOCK, is_zero};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    /// Writes `data` in pieces of `piece` bytes and returns the file's bytes.
    fn through(data: &[u8], piece: usize) -> (Vec<u8>, File) {
        let mut w = SparseWriter::new(tempfile::tempfile().unwrap());
        for chunk in data.chunks(piece.max(1)) {
            w.write_all(chunk).unwrap();
        }
        w.flush().unwrap();
        let (f, len) = w.finish().unwrap();
        assert_eq!(len, data.len() as u64);
        assert_eq!(f.metadata().unwrap().len(), len);
        let mut got = vec![0u8; data.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        (got, f)
    }

    fn sample(size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size];
        v[0] = 1; // data at the very start
        v[5000] = 2; // crosses nothing, inside block 1
        v[3 * BLOCK as usize - 1] = 3; // last byte of block 2
        if size > 10 * BLOCK as usize {
            v[size - 1] = 4; // data at the very end
        }
        v
    }

    #[test]
    fn empty_input_gives_an_empty_file() {
        let (got, _) = through(&[], 1);
        assert!(got.is_empty());
        let mut w = SparseWriter::new(tempfile::tempfile().unwrap());
        assert_eq!(w.write(&[]).unwrap(), 0);
        assert_eq!(w.finish().unwrap().1, 0);
    }

    #[test]
    fn any_write_sizes_give_the_same_bytes() {
        // A size that is not a block multiple, with data at both ends.
        let data = sample(12 * BLOCK as usize + 123);
        for piece in [1, 7, 4095, 4096, 4097, 10_000, data.len()] {
            let (got, _) = through(&data, piece);
            assert!(got == data, "piece size {piece}");
        }
    }

    #[test]
    fn holes_at_the_start_and_the_end_set_the_length() {
        let mut data = vec![0u8; 8 * BLOCK as usize + 5];
        data[4 * BLOCK as usize + 1] = 9;
        let (got, f) = through(&data, 3000);
        assert_eq!(got, data);
        // Only the one data block is allocated (on a filesystem with holes).
        assert!(f.metadata().unwrap().blocks() * 512 < data.len() as u64);
        let (got, _) = through(&vec![0u8; 3 * BLOCK as usize], 4096);
        assert!(is_zero(&got) && got.len() == 3 * BLOCK as usize);
    }
}
