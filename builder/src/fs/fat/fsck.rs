//! `fsck.fat -n` as the judge of a FAT filesystem. fsck.fat has no offset option, so it runs on
//! a sparse copy of the partition's bytes.

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Command;

use crate::fs::FsError;
use crate::io::copy_range::{Zeros, copy_range};

/// Runs `fsck.fat -n` on [offset, offset+len) of `image`; `Err(report)` when it finds problems.
pub(super) fn check(image: &Path, offset: u64, len: u64) -> Result<Result<(), String>, FsError> {
    let copy = tempfile::NamedTempFile::new()?;
    // The copy may hold secrets (a personalize seed): gone on SIGTERM too, not only on drop.
    let _interrupted = crate::interrupt::Guard::new(copy.path());
    // Only the data extents are read: a vendor boot partition is mostly holes in a sparse
    // working copy, and reading those would cost more than the check itself.
    copy_range(
        &File::open(image)?,
        offset..offset + len,
        copy.as_file(),
        0,
        Zeros::Skip,
    )?;
    copy.as_file().set_len(len)?;
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
