//! The change collector: what `plan` and the distro families write into. Its own module, below
//! both, so a family can add changes without depending on the rest of `plan`.

use crate::fs::{Content, Meta, Op};
use std::path::PathBuf;

/// One change, with whether its content is a secret (then the manifest never records its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub secret: bool,
}

/// Collects changes; keeps the plan and the distro families readable.
pub struct Plan {
    changes: Vec<Change>,
    epoch: i64,
}

impl Plan {
    /// An empty plan whose files and directories get `epoch` as their mtime.
    pub fn new(epoch: i64) -> Plan {
        Plan {
            changes: Vec::new(),
            epoch,
        }
    }

    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }

    /// Writes `content` at `path` with `mode`, owned by root and public (its hash goes into the
    /// manifest). `.owner(uid, gid)` and `.secret()` on the result change that:
    /// `p.file(KEY, key, 0o600).secret()`.
    pub fn file(&mut self, path: &str, content: Vec<u8>, mode: u32) -> FileChange<'_> {
        self.write(path, Content::Bytes(content), mode)
    }

    /// Like [`Plan::file`], the content streamed from `source` on the host.
    pub fn host_file(&mut self, path: &str, source: PathBuf, mode: u32) -> FileChange<'_> {
        self.write(path, Content::HostFile(source), mode)
    }

    fn write(&mut self, path: &str, content: Content, mode: u32) -> FileChange<'_> {
        self.changes.push(Change {
            op: Op::WriteFile {
                path: path.into(),
                content,
                meta: Meta::root(mode, self.epoch),
            },
            secret: false,
        });
        FileChange(self.changes.last_mut().expect("just pushed"))
    }

    /// Makes directory `path` (and missing parents) with `mode`, owned by root;
    /// `.owner(uid, gid)` on the result changes that.
    pub fn dir(&mut self, path: &str, mode: u32) -> DirChange<'_> {
        self.changes.push(Change {
            op: Op::Mkdir {
                path: path.into(),
                meta: Meta::root(mode, self.epoch),
                parents: true,
            },
            secret: false,
        });
        DirChange(self.changes.last_mut().expect("just pushed"))
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.changes.push(Change {
            op: Op::Symlink {
                path: path.into(),
                target: target.into(),
                meta: Meta::root(0o777, self.epoch),
            },
            secret: false,
        });
    }

    pub fn remove(&mut self, path: &str) {
        self.changes.push(Change {
            op: Op::Remove { path: path.into() },
            secret: false,
        });
    }

    /// Masks a systemd unit (a link to /dev/null), the documented way to switch a vendor's
    /// unit off for good.
    pub fn mask(&mut self, unit: &str) {
        self.symlink(&format!("/etc/systemd/system/{unit}"), "/dev/null");
    }
}

/// A file just added by [`Plan::file`] or [`Plan::host_file`]: root-owned and public unless
/// changed here.
pub struct FileChange<'a>(&'a mut Change);

impl FileChange<'_> {
    /// Owned by `uid`:`gid` instead of root.
    pub fn owner(self, uid: u32, gid: u32) -> Self {
        set_owner(&mut self.0.op, uid, gid);
        self
    }

    /// Its content is a secret: the manifest never records its hash.
    pub fn secret(self) -> Self {
        self.0.secret = true;
        self
    }
}

/// A directory just added by [`Plan::dir`]: root-owned unless changed here.
pub struct DirChange<'a>(&'a mut Change);

impl DirChange<'_> {
    /// Owned by `uid`:`gid` instead of root.
    pub fn owner(self, uid: u32, gid: u32) -> Self {
        set_owner(&mut self.0.op, uid, gid);
        self
    }
}

fn set_owner(op: &mut Op, uid: u32, gid: u32) {
    if let Op::WriteFile { meta, .. } | Op::Mkdir { meta, .. } = op {
        meta.uid = uid;
        meta.gid = gid;
    }
}
