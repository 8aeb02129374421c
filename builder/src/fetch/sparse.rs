//! A build's working copy of a cached base image: a sparse copy (see [`crate::io`]).

use crate::io::copy_range::{Zeros, copy_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Copies `src` to a new sparse file `dst` (replacing it), reading only the data extents
/// of `src` (SEEK_DATA/SEEK_HOLE) and leaving holes for all-zero blocks. Returns the size.
/// This is how a build makes its working copy of a cached base image.
pub fn copy_sparse(src: &Path, dst: &Path) -> io::Result<u64> {
    let input = File::open(src)?;
    let size = input.metadata()?.len();
    let output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    copy_range(&input, 0..size, &output, 0, Zeros::Skip).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                e.kind(),
                format!("{} shrank while being copied", src.display()),
            )
        } else {
            e
        }
    })?;
    output.set_len(size)?;
    Ok(size)
}
