//! The data extents of a file range, as the filesystem reports them (SEEK_DATA / SEEK_HOLE).
//!
//! Error policy, the same for every caller: a filesystem that cannot report holes (lseek
//! fails with EINVAL or EOPNOTSUPP) has all of the rest of the range reported as one data
//! extent, which is always correct, only slower to read. ENXIO from SEEK_DATA means only a
//! hole follows. Any other error propagates.

use std::fs::File;
use std::io;
use std::ops::Range;

use rustix::fs::{SeekFrom, seek};
use rustix::io::Errno;

/// The next extent at or after `pos` that may hold data, clipped to `end`; `None` when only
/// holes follow before `end`. Everything between `pos` and the extent's start reads as zeros.
pub fn next_extent(file: &File, pos: u64, end: u64) -> io::Result<Option<Range<u64>>> {
    if pos >= end {
        return Ok(None);
    }
    let start = match seek(file, SeekFrom::Data(pos)) {
        Ok(start) => start,
        Err(Errno::NXIO) => return Ok(None),
        Err(e) if unsupported(e) => return Ok(Some(pos..end)),
        Err(e) => return Err(e.into()),
    };
    if start >= end {
        return Ok(None);
    }
    let hole = match seek(file, SeekFrom::Hole(start)) {
        Ok(hole) => hole,
        Err(e) if unsupported(e) => end,
        Err(e) => return Err(e.into()),
    };
    Ok(Some(start.max(pos)..hole.min(end)))
}

/// EINVAL and EOPNOTSUPP: the filesystem does not know SEEK_DATA / SEEK_HOLE.
fn unsupported(e: Errno) -> bool {
    e == Errno::INVAL || e == Errno::OPNOTSUPP
}

/// Iterator over the data extents of `range` of `file`, in increasing order; see
/// [`next_extent`] and the module's error policy. Stops after the first error.
pub struct Extents<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

/// The data extents of `range` of `file`.
pub fn data_extents(file: &File, range: Range<u64>) -> Extents<'_> {
    Extents {
        file,
        at: range.start,
        end: range.end,
    }
}

impl Iterator for Extents<'_> {
    type Item = io::Result<Range<u64>>;

    fn next(&mut self) -> Option<Self::Item> {
        match next_extent(self.file, self.at, self.end) {
            Ok(Some(r)) => {
                self.at = r.end;
                Some(Ok(r))
            }
            Ok(None) => {
                self.at = self.end;
                None
            }
            Err(e) => {
                self.at = self.end;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    fn extents(f: &File, range: Range<u64>) -> Vec<Range<u64>> {
        data_extents(f, range).collect::<io::Result<_>>().unwrap()
    }

    /// The extents cover every non-zero byte and lie inside the range, whatever the
    /// filesystem's hole granularity (tmpfs, ext4, or none at all).
    fn covers(f: &File, range: Range<u64>, bytes: &[u64]) {
        let got = extents(f, range.clone());
        for w in got.windows(2) {
            assert!(w[0].end <= w[1].start, "{got:?}");
        }
        for r in &got {
            assert!(
                range.start <= r.start && r.end <= range.end && r.start < r.end,
                "{got:?}"
            );
        }
        for b in bytes.iter().filter(|b| range.contains(b)) {
            assert!(got.iter().any(|r| r.contains(b)), "{b} not in {got:?}");
        }
    }

    #[test]
    fn empty_file_and_empty_range_have_no_extents() {
        let f = tempfile::tempfile().unwrap();
        assert!(extents(&f, 0..0).is_empty());
        assert!(extents(&f, 0..MIB).is_empty());
        f.set_len(MIB).unwrap();
        f.write_all_at(b"x", 10).unwrap();
        assert!(extents(&f, 5..5).is_empty());
        let (from, to) = (7, 3);
        assert!(extents(&f, from..to).is_empty());
    }

    #[test]
    fn holes_at_the_start_and_the_end() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8 * MIB + 123).unwrap();
        f.write_all_at(b"data", 4 * MIB).unwrap();
        covers(&f, 0..8 * MIB + 123, &[4 * MIB, 4 * MIB + 3]);
        let got = extents(&f, 0..8 * MIB + 123);
        assert_eq!(got.len(), 1, "{got:?}");
        // A range that ends before the data, and one that starts after it.
        assert!(extents(&f, 0..MIB).is_empty());
        assert!(extents(&f, 6 * MIB..8 * MIB + 123).is_empty());
    }

    #[test]
    fn data_at_both_ends_of_a_size_not_block_aligned() {
        let f = tempfile::tempfile().unwrap();
        let size = 6 * MIB + 7;
        f.set_len(size).unwrap();
        f.write_all_at(b"a", 0).unwrap();
        f.write_all_at(b"z", size - 1).unwrap();
        covers(&f, 0..size, &[0, size - 1]);
        let got = extents(&f, 0..size);
        assert_eq!(got.first().unwrap().start, 0);
        assert_eq!(got.last().unwrap().end, size);
        // Clipped to a range inside the data.
        covers(&f, 1..size - 1, &[]);
        assert_eq!(extents(&f, 2..3), vec![2..3]);
    }

    #[test]
    fn next_extent_past_the_end_is_none() {
        let f = tempfile::tempfile().unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        assert_eq!(next_extent(&f, 0, 3).unwrap(), Some(0..3));
        assert_eq!(next_extent(&f, 3, 3).unwrap(), None);
        assert_eq!(next_extent(&f, 5, 100).unwrap(), None);
    }
}
