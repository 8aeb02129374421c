//! Output files that appear whole or not at all: written to a temp file beside the destination,
//! fsynced, renamed over it, and the directory fsynced. Until committed, dropping one (on an
//! error or a panic) deletes the temp file.

use std::fs::{File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written that will replace `dest` on `commit`.
pub struct PendingFile {
    tmp: NamedTempFile,
    dest: PathBuf,
    _interrupted: crate::interrupt::Guard,
}

impl PendingFile {
    /// A hidden temp file in `dest`'s directory (same filesystem, so the rename is atomic),
    /// mode 0644 like any file the user creates (the umask applies), not tempfile's 0600.
    pub fn create(dest: &Path) -> io::Result<PendingFile> {
        Self::create_with_mode(dest, 0o644)
    }

    /// Like [`PendingFile::create`], with the given permissions (before the umask).
    pub fn create_with_mode(dest: &Path, mode: u32) -> io::Result<PendingFile> {
        let dir = parent_dir(dest);
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} is not a file name", dest.display())))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(dir)?;
        Ok(PendingFile {
            _interrupted: crate::interrupt::Guard::new(tmp.path()),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// Flushes the data to disk, ready for `commit`.
    pub fn sync(&self) -> io::Result<()> {
        self.tmp.as_file().sync_all()
    }

    /// Renames it over the destination. The caller syncs the directory once all are renamed.
    pub fn commit(self) -> io::Result<()> {
        self.tmp.persist(&self.dest).map_err(|e| e.error)?;
        Ok(())
    }
}

/// Makes the renames in `dest`'s directory durable.
pub fn sync_dir_of(dest: &Path) -> io::Result<()> {
    File::open(parent_dir(dest))?.sync_all()
}

/// Writes `contents` to a pending file for `dest`, synced.
pub fn pending_with(dest: &Path, contents: &[u8]) -> io::Result<PendingFile> {
    let pending = PendingFile::create(dest)?;
    io::Write::write_all(&mut pending.file(), contents)?;
    pending.sync()?;
    Ok(pending)
}

/// Writes `contents` to `dest` with `mode`, whole or not at all: for a file that holds a
/// private key (a kubeconfig, a WireGuard client config), which must never be seen half-written
/// or with wider permissions, not even for a moment.
pub fn write_private(dest: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let pending = PendingFile::create_with_mode(dest, mode)?;
    io::Write::write_all(&mut pending.file(), contents)?;
    pending.sync()?;
    pending.commit()
}

/// The process's umask, read from `/proc/self/status` (Linux 4.7+): `umask(2)` can only read
/// it by setting it, which would race with other threads creating files. 022 if unreadable.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_pending_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.img");
        let pending = pending_with(&dest, b"data").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(pending);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        pending_with(&dest, b"data").unwrap().commit().unwrap();
        sync_dir_of(&dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"data");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
