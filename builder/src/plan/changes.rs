//! The change collector: what `plan` and the distro families write into. Its own module, below
//! both, so a family can add changes without depending on the rest of `plan`.

use crate::fs::{Content, Meta, Op};

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

    pub fn file(&mut self, path: &str, content: Vec<u8>, mode: u32, uid: u32, gid: u32) {
        self.push(path, Content::Bytes(content), mode, uid, gid, false);
    }

    pub fn secret(&mut self, path: &str, content: Vec<u8>) {
        self.push(path, Content::Bytes(content), 0o600, 0, 0, true);
    }

    pub fn push(
        &mut self,
        path: &str,
        content: Content,
        mode: u32,
        uid: u32,
        gid: u32,
        secret: bool,
    ) {
        self.changes.push(Change {
            op: Op::WriteFile {
                path: path.into(),
                content,
                meta: Meta {
                    mode,
                    uid,
                    gid,
                    mtime: self.epoch,
                },
            },
            secret,
        });
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) {
        self.changes.push(Change {
            op: Op::Mkdir {
                path: path.into(),
                meta: Meta {
                    mode,
                    uid,
                    gid,
                    mtime: self.epoch,
                },
                parents: true,
            },
            secret: false,
        });
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
