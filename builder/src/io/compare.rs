//! A sink that checks what is written to it against an expected stream: reading a file back
//! (`io::copy(file, &mut CompareWriter::new(expected))`) without holding either in memory.

use std::io::{self, Read, Write};

/// A sink that checks what is written to it against an expected stream.
pub struct CompareWriter<R> {
    expected: R,
    offset: u64,
    buf: Vec<u8>,
}

impl<R: Read> CompareWriter<R> {
    pub fn new(expected: R) -> Self {
        CompareWriter {
            expected,
            offset: 0,
            buf: Vec::new(),
        }
    }

    /// Fails if the expected stream has bytes left over.
    pub fn finish(mut self) -> io::Result<()> {
        let mut one = [0u8; 1];
        if self.expected.read(&mut one)? != 0 {
            return Err(io::Error::other(format!(
                "{} bytes long, shorter than what was written",
                self.offset
            )));
        }
        Ok(())
    }
}

impl<R: Read> Write for CompareWriter<R> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.resize(data.len(), 0);
        let mut got = 0;
        while got < data.len() {
            match self.expected.read(&mut self.buf[got..])? {
                0 => {
                    return Err(io::Error::other(format!(
                        "longer than what was written ({} bytes)",
                        self.offset + got as u64
                    )));
                }
                n => got += n,
            }
        }
        if let Some(i) = data.iter().zip(&self.buf).position(|(a, b)| a != b) {
            return Err(io::Error::other(format!(
                "content differs at byte {}",
                self.offset + i as u64
            )));
        }
        self.offset += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `n` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn equal_streams_pass_whatever_the_read_and_write_sizes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut cmp = CompareWriter::new(Trickle(&data, 7));
        for chunk in data.chunks(1000) {
            cmp.write_all(chunk).unwrap();
        }
        cmp.finish().unwrap();
    }

    #[test]
    fn empty_against_empty_passes() {
        let mut cmp = CompareWriter::new(&b""[..]);
        cmp.write_all(b"").unwrap();
        cmp.finish().unwrap();
    }

    #[test]
    fn a_difference_is_reported_at_its_offset() {
        let mut cmp = CompareWriter::new(&b"abcdef"[..]);
        cmp.write_all(b"abc").unwrap();
        let err = cmp.write_all(b"dXf").unwrap_err();
        assert!(err.to_string().contains("byte 4"), "{err}");
    }

    #[test]
    fn written_more_than_expected_fails() {
        let mut cmp = CompareWriter::new(Trickle(b"abc", 1));
        let err = cmp.write_all(b"abcd").unwrap_err();
        assert!(err.to_string().contains("3 bytes"), "{err}");
    }

    #[test]
    fn written_less_than_expected_fails_at_finish() {
        let mut cmp = CompareWriter::new(&b"abcd"[..]);
        cmp.write_all(b"abc").unwrap();
        assert!(cmp.finish().is_err());
        let cmp = CompareWriter::new(&b"a"[..]);
        assert!(cmp.finish().is_err());
    }
}
