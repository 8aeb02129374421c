//! Directories are made with mtools' `mmd`, because fatfs 0.3.6 `create_dir` corrupts FAT32
//! (rust-fatfs #117: LFN entries before "." and "..", wrong ".." cluster).
//!
//! mtools 4.0.32 takes the time it stamps on new entries from SOURCE_DATE_EPOCH (checked: the
//! same `mmd` on two copies, run seconds apart, gives identical bytes; without it, the wall
//! clock). It converts to local time, so TZ is pinned to UTC. Times before 1980 wrap around
//! (300000000 came out as 2107), which `time::representable` rules out.

use std::io;
use std::path::Path;
use std::process::Command;

use super::time;
use crate::fs::FsError;

/// Makes `dirs` (absolute paths, parents first, each parent existing or earlier in the list)
/// with every timestamp at `mtime`. The image must not be open for writing elsewhere.
pub(super) fn mkdirs(
    image: &Path,
    offset: u64,
    dirs: &[String],
    mtime: i64,
) -> Result<(), FsError> {
    let mut drive = image.as_os_str().to_owned();
    drive.push(format!("@@{offset}"));
    let out = Command::new("mmd")
        .arg("-i")
        .arg(&drive)
        .args(dirs.iter().map(|d| format!("::{d}")))
        // The image is ours to judge (fsck.fat runs afterwards); no user config may change
        // how names are stored.
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLSRC", "/dev/null")
        .env("SOURCE_DATE_EPOCH", time::representable(mtime).to_string())
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FsError::Tool {
                tool: "mmd".into(),
                detail: "not installed; install the mtools package (imagegen makes FAT \
                         directories with it)"
                    .into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    // mmd reports some failures ("No directory slots") on stderr with exit status 0.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(FsError::Tool {
            tool: "mmd".into(),
            detail: format!(
                "making {} failed ({}): {}",
                dirs.join(", "),
                out.status,
                stderr.trim()
            ),
        });
    }
    Ok(())
}
