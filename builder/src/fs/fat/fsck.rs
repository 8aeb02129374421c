//! `fsck.fat -n` as the judge of a FAT filesystem. fsck.fat has no offset option, so it runs on
//! a sparse copy of the partition's bytes.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::fs::FsError;
use crate::io::extents::data_extents;

const CHUNK: usize = 1 << 20;

/// Runs `fsck.fat -n` on [offset, offset+len) of `image`; `Err(report)` when it finds problems.
pub(super) fn check(image: &Path, offset: u64, len: u64) -> Result<Result<(), String>, FsError> {
    let copy = tempfile::NamedTempFile::new()?;
    // The copy may hold secrets (a personalize seed): gone on SIGTERM too, not only on drop.
    let _interrupted = crate::interrupt::Guard::new(copy.path());
    copy_sparse(&File::open(image)?, offset, len, copy.as_file())?;
    let out = match Command::new("fsck.fat")
        .arg("-n")
        .arg(crate::argv::path(copy.path()).as_ref())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FsError::Tool {
                tool: "fsck.fat".into(),
                detail: "not installed; install the dosfstools package (imagegen checks every \
                         FAT filesystem it changes)"
                    .into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(Ok(())),
        Some(1) => Ok(Err(report.trim().to_string())),
        _ => Err(FsError::Tool {
            tool: "fsck.fat".into(),
            detail: format!("failed ({}): {}", out.status, report.trim()),
        }),
    }
}

/// Copies a byte range into `dst`, leaving holes where the source has holes or zeros. Only
/// the extents the file system reports as data are read: a vendor boot partition is mostly
/// holes in a sparse working copy, and reading those would cost more than the check itself.
fn copy_sparse(src: &File, offset: u64, len: u64, dst: &File) -> io::Result<()> {
    let end = offset + len;
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    for extent in data_extents(src, offset..end) {
        let Range { start, end: hole } = extent?;
        let mut at = start;
        while at < hole {
            let want = usize::try_from(hole - at).map_or(CHUNK, |left| left.min(CHUNK));
            src.read_exact_at(&mut buf[..want], at)?;
            if buf[..want] != zeros[..want] {
                dst.write_all_at(&buf[..want], at - offset)?;
            }
            at += want as u64;
        }
    }
    dst.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_range_of_a_sparse_file() {
        let src = tempfile::tempfile().unwrap();
        src.set_len(10 << 20).unwrap();
        src.write_all_at(b"abc", 100).unwrap();
        src.write_all_at(b"xyz", 6 << 20).unwrap();
        src.write_all_at(b"end", (10 << 20) - 3).unwrap();
        let dst = tempfile::tempfile().unwrap();
        copy_sparse(&src, 50, (10 << 20) - 53, &dst).unwrap();
        assert_eq!(dst.metadata().unwrap().len(), (10 << 20) - 53);
        let mut got = [0u8; 3];
        dst.read_exact_at(&mut got, 50).unwrap();
        assert_eq!(&got, b"abc");
        dst.read_exact_at(&mut got, (6 << 20) - 50).unwrap();
        assert_eq!(&got, b"xyz");
        dst.read_exact_at(&mut got, (10 << 20) - 56).unwrap();
        assert_eq!(&got, &[0, 0, 0]);
    }
}
