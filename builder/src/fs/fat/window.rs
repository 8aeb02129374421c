//! A byte range of the image file seen as a stream of its own, so fatfs addresses the
//! partition from 0 and cannot touch a byte outside it.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

pub(super) struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    pub(super) fn new(file: File, start: u64, len: u64) -> Window {
        Window {
            file,
            start,
            len,
            pos: 0,
        }
    }

    /// How many of `want` bytes fit between the position and the end of the window.
    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).map_or(want, |left| left.min(want))
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.room(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.room(buf.len());
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the FAT partition",
            ));
        }
        let put = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Window {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match target {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the FAT partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_inside_its_range() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"0123456789").unwrap();
        let mut w = Window::new(f.try_clone().unwrap(), 2, 5);
        let mut s = String::new();
        w.read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
        w.seek(SeekFrom::End(-1)).unwrap();
        assert!(w.write_all(b"xy").is_err());
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(b"ab").unwrap();
        let mut all = String::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_string(&mut all).unwrap();
        assert_eq!(all, "01ab45x789");
        assert!(w.seek(SeekFrom::Current(-10)).is_err());
    }
}
