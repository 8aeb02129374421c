//! Copying a byte range of one file to an offset of another, reading only the data extents
//! of the source (see [`super::extents`]).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use rustix::io::Errno;

use super::BUFFER_SIZE;
use super::extents::data_extents;
use super::zero::{BLOCK, is_zero};

/// What to do with all-zero blocks inside the source's data extents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeros {
    /// Copy them like any data; the kernel may move the bytes itself (copy_file_range).
    Write,
    /// Leave them unwritten, so they stay holes in the destination. Blocks are
    /// [`BLOCK`]-sized and aligned to the destination offset.
    Skip,
}

/// Copies `range` of `src` to `dst` starting at `dst_off`. Holes of `src` (and, with
/// [`Zeros::Skip`], all-zero blocks) are not written: `dst` must already read as zeros there
/// (a new or truncated file). The length of `dst` is not set; a trailing hole is the
/// caller's `set_len`. Fails with `UnexpectedEof` if `src` is shorter than `range`.
pub fn copy_range(
    src: &File,
    range: Range<u64>,
    dst: &File,
    dst_off: u64,
    zeros: Zeros,
) -> io::Result<()> {
    let mut buf = Vec::new();
    for extent in data_extents(src, range.clone()) {
        let extent = extent?;
        let to = dst_off + (extent.start - range.start);
        match zeros {
            Zeros::Write => copy_all(src, extent, dst, to, &mut buf)?,
            Zeros::Skip => copy_skipping_zeros(src, extent, dst, to, &mut buf)?,
        }
    }
    Ok(())
}

fn shrank(at: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the source ended at byte {at}, inside the range being copied"),
    )
}

/// `[from.start, from.end)` of `src` to `to` in `dst`: copy_file_range, or read and write
/// where the kernel cannot (another filesystem, an old kernel).
fn copy_all(
    src: &File,
    from: Range<u64>,
    dst: &File,
    to: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let (mut at, mut out) = (from.start, to);
    while at < from.end {
        let want = usize::try_from(from.end - at)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut at), dst, Some(&mut out), want) {
            Ok(0) => return Err(shrank(at)),
            Ok(_) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP | Errno::PERM) => {
                return copy_skipping(src, at..from.end, dst, out, buf, false);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_skipping_zeros(
    src: &File,
    from: Range<u64>,
    dst: &File,
    to: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    copy_skipping(src, from, dst, to, buf, true)
}

/// Reads `from` in chunks and writes it at `to`, leaving out all-zero blocks if `skip`.
fn copy_skipping(
    src: &File,
    from: Range<u64>,
    dst: &File,
    to: u64,
    buf: &mut Vec<u8>,
    skip: bool,
) -> io::Result<()> {
    buf.resize(BUFFER_SIZE, 0);
    let mut at = from.start;
    while at < from.end {
        let want = usize::try_from(from.end - at).map_or(BUFFER_SIZE, |l| l.min(BUFFER_SIZE));
        let chunk = &mut buf[..want];
        src.read_exact_at(chunk, at).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                shrank(at)
            } else {
                e
            }
        })?;
        let out = to + (at - from.start);
        if skip {
            write_nonzero_runs(dst, chunk, out)?;
        } else {
            dst.write_all_at(chunk, out)?;
        }
        at += want as u64;
    }
    Ok(())
}

/// Writes `data` at `pos`, one write per run of blocks that are not all zeros.
fn write_nonzero_runs(dst: &File, data: &[u8], pos: u64) -> io::Result<()> {
    let mut i = 0;
    let mut run: Option<usize> = None;
    while i < data.len() {
        let to_boundary = (BLOCK - (pos + i as u64) % BLOCK) as usize;
        let end = (i + to_boundary).min(data.len());
        match (is_zero(&data[i..end]), run) {
            (true, Some(s)) => {
                dst.write_all_at(&data[s..i], pos + s as u64)?;
                run = None;
            }
            (false, None) => run = Some(i),
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run {
        dst.write_all_at(&data[s..], pos + s as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn read(f: &File, at: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        f.read_exact_at(&mut v, at).unwrap();
        v
    }

    fn sample() -> File {
        let src = tempfile::tempfile().unwrap();
        src.set_len(10 * MIB).unwrap();
        src.write_all_at(b"abc", 100).unwrap();
        src.write_all_at(b"xyz", 6 * MIB).unwrap();
        src.write_all_at(b"end", 10 * MIB - 3).unwrap();
        src
    }

    #[test]
    fn copies_a_range_of_a_sparse_file() {
        for zeros in [Zeros::Skip, Zeros::Write] {
            let src = sample();
            let dst = tempfile::tempfile().unwrap();
            copy_range(&src, 50..10 * MIB - 3, &dst, 0, zeros).unwrap();
            dst.set_len(10 * MIB - 53).unwrap();
            assert_eq!(read(&dst, 50, 3), b"abc");
            assert_eq!(read(&dst, 6 * MIB - 50, 3), b"xyz");
            assert_eq!(read(&dst, 10 * MIB - 56, 3), [0, 0, 0]);
            assert_eq!(read(&dst, 0, 50), [0; 50]);
        }
    }

    #[test]
    fn copies_to_an_offset_and_an_empty_range_writes_nothing() {
        let src = sample();
        let dst = tempfile::tempfile().unwrap();
        copy_range(&src, 5..5, &dst, 0, Zeros::Skip).unwrap();
        copy_range(&src, 0..0, &dst, 7, Zeros::Write).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), 0);
        copy_range(&src, 100..103, &dst, 4095, Zeros::Skip).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), 4098);
        assert_eq!(read(&dst, 4095, 3), b"abc");
    }

    #[test]
    fn a_range_past_the_end_of_the_source_copies_what_is_there() {
        let src = tempfile::tempfile().unwrap();
        src.write_all_at(&[1u8; 5000], 0).unwrap();
        for zeros in [Zeros::Skip, Zeros::Write] {
            let dst = tempfile::tempfile().unwrap();
            // Past the end of the file is a hole to SEEK_DATA, not a short read.
            copy_range(&src, 0..9000, &dst, 0, zeros).unwrap();
            assert_eq!(read(&dst, 0, 5000), [1u8; 5000]);
        }
    }

    #[test]
    fn zero_blocks_are_left_as_holes_and_odd_sizes_keep_their_tail() {
        let src = tempfile::tempfile().unwrap();
        let size = 3 * BLOCK + 17;
        let mut data = vec![0u8; size as usize];
        data[1] = 1; // block 0: data
        // block 1 and 2: zeros, written explicitly so they are data extents
        data[size as usize - 1] = 9; // the partial last block
        src.write_all_at(&data, 0).unwrap();
        let dst = tempfile::tempfile().unwrap();
        copy_range(&src, 0..size, &dst, 0, Zeros::Skip).unwrap();
        dst.set_len(size).unwrap();
        assert_eq!(read(&dst, 0, size as usize), data);
        // The two zero blocks were not written: less than the whole size is allocated.
        use std::os::unix::fs::MetadataExt;
        assert!(
            dst.metadata().unwrap().blocks() * 512 < size,
            "zero blocks were written"
        );
    }
}
