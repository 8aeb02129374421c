//! A writer that writes to a primary sink first, then copies to a secondary sink only the
//! bytes the primary accepted: a hash fed this way always describes the bytes on disk.

use std::io::{self, Write};

pub struct Tee<A, B> {
    primary: A,
    secondary: B,
}

impl<A: Write, B: Write> Tee<A, B> {
    pub fn new(primary: A, secondary: B) -> Self {
        Tee { primary, secondary }
    }

    /// Both sinks, primary first.
    pub fn into_inner(self) -> (A, B) {
        (self.primary, self.secondary)
    }
}

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.primary.write(buf)?;
        self.secondary.write_all(&buf[..n])?;
        Ok(n)
    }

    /// Flushes the primary only: the secondary is expected to be a digest or a counter.
    fn flush(&mut self) -> io::Result<()> {
        self.primary.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts at most `max` bytes per write, and `room` in all.
    struct Short {
        got: Vec<u8>,
        max: usize,
        room: usize,
    }

    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.max).min(self.room - self.got.len());
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_secondary_sees_only_what_the_primary_took() {
        let short = Short {
            got: Vec::new(),
            max: 3,
            room: 100,
        };
        let mut tee = Tee::new(short, Vec::new());
        assert_eq!(tee.write(b"abcdef").unwrap(), 3);
        tee.write_all(b"ghijk").unwrap();
        let (a, b) = tee.into_inner();
        assert_eq!(a.got, b"abcghijk");
        assert_eq!(b, b"abcghijk");
    }

    #[test]
    fn a_full_primary_stops_the_write_and_the_secondary() {
        let short = Short {
            got: Vec::new(),
            max: 10,
            room: 4,
        };
        let mut tee = Tee::new(short, Vec::new());
        assert!(tee.write_all(b"abcdef").is_err());
        assert_eq!(tee.write(b"").unwrap(), 0);
        let (a, b) = tee.into_inner();
        assert_eq!(a.got, b"abcd");
        assert_eq!(b, b"abcd");
    }
}
