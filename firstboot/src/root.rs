//! The tree the agent works in (`--root`), and crash-safe writes into it.
//!
//! Every path the agent touches is an absolute path on the node, mapped under the root here, so tests
//! run the whole agent against a temporary directory. Writes go to a temp file in the same directory,
//! are fsynced and renamed over the target, then the directory is fsynced: a power cut leaves either
//! the old file or the new one, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Maps a node path (`/etc/x`) under the root. `..` components are dropped so a path from a
    /// config or seed can never leave the root.
    pub fn path(&self, node_path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.dir.clone();
        for c in node_path.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    pub fn read_to_string(&self, node_path: impl AsRef<Path>) -> io::Result<String> {
        fs::read_to_string(self.path(node_path))
    }

    pub fn exists(&self, node_path: impl AsRef<Path>) -> bool {
        self.path(node_path).exists()
    }

    /// Writes `content` to `node_path` atomically with `mode`, creating parent directories.
    /// Returns whether the file changed, so callers restart services only when needed.
    pub fn write_atomic(
        &self,
        node_path: impl AsRef<Path>,
        content: &[u8],
        mode: u32,
    ) -> io::Result<bool> {
        let target = self.path(node_path);
        if let Ok(old) = fs::read(&target)
            && old == content
            && fs::metadata(&target).map(|m| m.permissions().mode() & 0o7777)? == mode
        {
            return Ok(false);
        }
        let dir = target
            .parent()
            .ok_or_else(|| io::Error::other("cannot write the root itself"))?;
        fs::create_dir_all(dir)?;
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.imagegen-tmp"));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; secrets must end up exactly `mode`.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        sync_dir(dir)?;
        Ok(true)
    }

    /// Removes a file; a missing file is not an error (a rerun after a power cut).
    pub fn remove(&self, node_path: impl AsRef<Path>) -> io::Result<()> {
        let p = self.path(node_path);
        match fs::remove_file(&p) {
            Ok(()) => sync_dir(p.parent().unwrap_or(&self.dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotdot_cannot_escape() {
        let r = Root::new("/tmp/x");
        assert_eq!(
            r.path("/etc/../../passwd"),
            PathBuf::from("/tmp/x/etc/passwd")
        );
    }

    #[test]
    fn write_sets_exact_mode_and_reports_change() {
        let t = tempfile::tempdir().unwrap();
        let r = Root::new(t.path());
        assert!(r.write_atomic("/etc/a/secret", b"s", 0o600).unwrap());
        assert!(!r.write_atomic("/etc/a/secret", b"s", 0o600).unwrap());
        let m = fs::metadata(t.path().join("etc/a/secret")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(r.write_atomic("/etc/a/secret", b"s", 0o640).unwrap());
    }
}
