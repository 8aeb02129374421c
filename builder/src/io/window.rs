//! A byte range of a file seen as a stream of its own: addressed from 0, and no read, write
//! or seek can reach a byte outside it (fatfs works on a partition of the image this way).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    pub fn new(file: File, start: u64, len: u64) -> Window {
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
                "write past the end of the window (the partition)",
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
                "seek before the start of the window (the partition)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn contents(f: &File) -> String {
        let mut buf = vec![0u8; f.metadata().unwrap().len() as usize];
        f.read_exact_at(&mut buf, 0).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn stays_inside_its_range() {
        let f = file(b"0123456789");
        let mut w = Window::new(f.try_clone().unwrap(), 2, 5);
        let mut s = String::new();
        w.read_to_string(&mut s).unwrap();
        assert_eq!(s, "23456");
        w.seek(SeekFrom::End(-1)).unwrap();
        assert!(w.write_all(b"xy").is_err());
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(b"ab").unwrap();
        assert_eq!(contents(&f), "01ab45x789");
        assert!(w.seek(SeekFrom::Current(-10)).is_err());
    }

    #[test]
    fn a_write_crossing_the_end_is_short_then_fails() {
        let f = file(b"0123456789");
        let mut w = Window::new(f.try_clone().unwrap(), 2, 5);
        w.seek(SeekFrom::Start(3)).unwrap();
        assert_eq!(w.write(b"abcd").unwrap(), 2);
        let err = w.write(b"cd").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert_eq!(w.write(b"").unwrap(), 0);
        assert_eq!(contents(&f), "01234ab789");
    }

    #[test]
    fn a_read_crossing_the_end_is_short_then_eof() {
        let f = file(b"0123456789");
        let mut w = Window::new(f, 2, 5);
        w.seek(SeekFrom::Start(3)).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(w.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"56");
        assert_eq!(w.read(&mut buf).unwrap(), 0);
        // Past the end: seeking is allowed, reading gives EOF.
        w.seek(SeekFrom::Start(100)).unwrap();
        assert_eq!(w.read(&mut buf).unwrap(), 0);
        assert_eq!(w.read(&mut []).unwrap(), 0);
    }

    #[test]
    fn an_empty_window_reads_nothing_and_takes_no_write() {
        let f = file(b"0123456789");
        let mut w = Window::new(f.try_clone().unwrap(), 4, 0);
        let mut v = Vec::new();
        assert_eq!(w.read_to_end(&mut v).unwrap(), 0);
        assert!(w.write(b"x").is_err());
        assert_eq!(w.seek(SeekFrom::End(0)).unwrap(), 0);
        assert_eq!(contents(&f), "0123456789");
    }

    #[test]
    fn the_window_may_run_past_the_end_of_the_file() {
        // A read stops at the file's end; a write extends the file inside the window.
        let f = file(b"0123");
        let mut w = Window::new(f.try_clone().unwrap(), 2, 6);
        let mut v = Vec::new();
        w.read_to_end(&mut v).unwrap();
        assert_eq!(v, b"23");
        w.seek(SeekFrom::Start(4)).unwrap();
        w.write_all(b"xy").unwrap();
        assert_eq!(f.metadata().unwrap().len(), 8);
    }
}
