//! `fsck.fat -n` as the judge of a FAT filesystem. fsck.fat has no offset option, so it runs on
//! a sparse copy of the partition's bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use crate::fs::FsError;

const CHUNK: usize = 1 << 20;

/// Runs `fsck.fat -n` on [offset, offset+len) of `image`; `Err(report)` when it finds problems.
pub(super) fn check(image: &Path, offset: u64, len: u64) -> Result<Result<(), String>, FsError> {
    let copy = tempfile::NamedTempFile::new()?;
    copy_sparse(&File::open(image)?, offset, len, copy.as_file())?;
    let out = match Command::new("fsck.fat").arg("-n").arg(copy.path()).output() {
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

/// Copies a byte range into `dst`, leaving holes where the source is all zeros.
fn copy_sparse(src: &File, offset: u64, len: u64, dst: &File) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).map_or(CHUNK, |left| left.min(CHUNK));
        src.read_exact_at(&mut buf[..want], offset + done)?;
        if buf[..want].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..want], done)?;
        }
        done += want as u64;
    }
    dst.set_len(len)
}
