//! Digests computed while data streams through, so nothing is read twice.
//!
//! sha256 names everything imagegen keeps (the cache, the manifest); a vendor may vouch for
//! its image with another digest only (Debian's cloud images: `SHA512SUMS` and no
//! `SHA256SUMS` in cloud.debian.org/images/cloud/bookworm/latest/), so a [`Digester`]
//! computes sha256 and, when asked, that one too in the same pass.

use sha2::{Digest, Sha256, Sha512};
use std::fmt;
use std::io::{self, Read, Write};

/// The digests vendors publish for their images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// As `sha256sum`/`sha512sum` and the `sha256:` prefix spell it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The lowercase hex digests of one stream: always sha256, and those asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    others: Vec<(Algorithm, String)>,
}

impl Digests {
    /// A known sha256 and no other digest.
    pub fn of_sha256(sha256: String) -> Digests {
        Digests {
            sha256,
            others: Vec::new(),
        }
    }

    /// The digest in `algorithm`, if it was computed.
    pub fn get(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Sha256 => Some(&self.sha256),
            _ => self
                .others
                .iter()
                .find(|(a, _)| *a == algorithm)
                .map(|(_, hex)| hex.as_str()),
        }
    }
}

enum Other {
    Sha512(Sha512),
}

/// A sink that hashes everything written to it: sha256, plus the other algorithms asked for.
pub struct Digester {
    sha256: Sha256,
    others: Vec<Other>,
}

impl Digester {
    /// sha256 and each of `also` (sha256 itself is not computed twice).
    pub fn new(also: &[Algorithm]) -> Self {
        let mut others = Vec::new();
        for a in also {
            match a {
                Algorithm::Sha256 => {}
                Algorithm::Sha512 if others.iter().any(|o| matches!(o, Other::Sha512(_))) => {}
                Algorithm::Sha512 => others.push(Other::Sha512(Sha512::new())),
            }
        }
        Digester {
            sha256: Sha256::new(),
            others,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        for o in &mut self.others {
            match o {
                Other::Sha512(h) => h.update(data),
            }
        }
    }

    pub fn finish(self) -> Digests {
        Digests {
            sha256: hex::encode(self.sha256.finalize()),
            others: self
                .others
                .into_iter()
                .map(|o| match o {
                    Other::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
                })
                .collect(),
        }
    }
}

impl Write for Digester {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Lowercase hex SHA-256 of a byte slice.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Lowercase hex SHA-256 of a file's content, streamed.
pub fn sha256_file(path: &std::path::Path) -> io::Result<String> {
    digest_file(path, &[]).map(|d| d.sha256)
}

/// sha256 and each of `also` of a file's content, in one streamed read.
pub fn digest_file(path: &std::path::Path, also: &[Algorithm]) -> io::Result<Digests> {
    let mut digester = Digester::new(also);
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; super::BUFFER_SIZE];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(digester.finish()),
            Ok(n) => digester.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
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

    #[test]
    fn digester_computes_both_in_one_pass() {
        // FIPS 180-2 appendix C.1, SHA-512 of "abc".
        let abc512 = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                      2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
        let mut d = Digester::new(&[Algorithm::Sha512, Algorithm::Sha256, Algorithm::Sha512]);
        d.write_all(b"a").unwrap();
        d.write_all(b"bc").unwrap();
        let got = d.finish();
        assert_eq!(got.sha256, ABC);
        assert_eq!(got.get(Algorithm::Sha256), Some(ABC));
        assert_eq!(got.get(Algorithm::Sha512), Some(abc512));

        let only = Digester::new(&[]).finish();
        assert_eq!(only.get(Algorithm::Sha512), None);
        assert_eq!(Algorithm::Sha512.hex_len(), abc512.len());
    }
}
