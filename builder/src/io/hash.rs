//! SHA-256 computed while data streams through, so nothing is read twice.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lowercase hex SHA-256 of a file's content, streamed.
pub fn sha256_file(path: &std::path::Path) -> io::Result<String> {
    let mut r = HashReader::new(std::fs::File::open(path)?);
    let mut buf = vec![0u8; super::BUFFER_SIZE];
    while r.read(&mut buf)? > 0 {}
    Ok(r.finish().1)
}

/// Hashes everything read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner reader and the lowercase hex digest of what was read.
    pub fn finish(self) -> (R, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes everything written through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer and the lowercase hex digest of what was written.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answer from FIPS 180-2, not from our own code.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn reader_and_writer_agree_with_the_standard_vector() {
        let mut r = HashReader::new(&b"abc"[..]);
        let mut sink = Vec::new();
        io::copy(&mut r, &mut sink).unwrap();
        assert_eq!(r.count(), 3);
        assert_eq!(r.finish().1, ABC);

        let mut w = HashWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (inner, digest) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(digest, ABC);
        assert_eq!(sha256_hex(b"abc"), ABC);
    }
}
