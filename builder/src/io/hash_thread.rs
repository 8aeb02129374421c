//! A writer that passes everything to its inner writer and computes the sha256 of what that
//! accepted on a thread of its own ([`super::offload`]), for the compressed output: its
//! hash would otherwise run on the thread that feeds the compressor.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::offload::{Chunk, Offload};

/// Like [`super::hash::HashWriter`], hashing on another thread.
pub struct HashThreadWriter<W> {
    inner: W,
    hash: Offload<String>,
    pos: u64,
}

impl<W: Write> HashThreadWriter<W> {
    pub fn new(inner: W) -> io::Result<Self> {
        let hash = Offload::spawn("output-sha256", |chunks| {
            let mut sha = Sha256::new();
            chunks.for_each(|c| {
                if let Chunk::Data { bytes, .. } = c {
                    sha.update(bytes);
                }
            });
            hex::encode(sha.finalize())
        })?;
        Ok(HashThreadWriter {
            inner,
            hash,
            pos: 0,
        })
    }

    /// The inner writer and the lowercase hex digest of what was written.
    pub fn finish(self) -> io::Result<(W, String)> {
        Ok((self.inner, self.hash.finish()?))
    }
}

impl<W: Write> Write for HashThreadWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.copy(self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_standard_vector_over_many_writes() {
        // FIPS 180-2 appendix B.3: one million 'a'.
        let mut w = HashThreadWriter::new(Vec::new()).unwrap();
        for _ in 0..1000 {
            w.write_all(&[b'a'; 1000]).unwrap();
        }
        let (inner, digest) = w.finish().unwrap();
        assert_eq!(inner.len(), 1_000_000);
        assert_eq!(
            digest,
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }
}
