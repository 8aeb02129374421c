//! The change collector: what `plan` and the distro families write into. Its own module, below
//! both, so a family can add changes without depending on the rest of `plan`.

use crate::fs::{Content, Meta, Op};
use std::path::PathBuf;

/// Whose a change is. `build` applies every kind; `personalize` carries the node-specific ones
/// ([`Kind::is_node_specific`]) to a generic image in its seed, so the two cannot disagree on
/// what makes an image a given node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The same for every node of the board built from this config: a generic image has it.
    Public,
    /// Not secret but this node's: names it, or follows from its name or role (hostname,
    /// node.toml, its firewall, cloud-init's instance).
    Node,
    /// The node's identity from the state directory (host keys, k3s node password), the same on
    /// every rebuild.
    Identity,
    /// A secret of the cluster config (k3s token, NUT password, backup key file).
    Secret,
    /// Keeps an identity the build places through the vendor's own first boot (the masked key
    /// regeneration). A full build only: a seed's identity arrives after that first boot ran,
    /// and a generic image needs the vendor's keys until then.
    IdentityGuard,
}

impl Kind {
    /// What a seed carries to make a generic image this node.
    pub fn is_node_specific(self) -> bool {
        matches!(self, Kind::Node | Kind::Identity | Kind::Secret)
    }
}

/// One change, whose it is, and whether its content is a secret (then the manifest never
/// records its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub kind: Kind,
    pub secret: bool,
}

/// Collects changes; keeps the plan and the distro families readable.
pub struct Plan {
    changes: Vec<Change>,
    epoch: i64,
    /// The kind of what is added now (see [`Plan::as_kind`]).
    kind: Kind,
}

impl Plan {
    /// An empty plan whose files and directories get `epoch` as their mtime.
    pub fn new(epoch: i64) -> Plan {
        Plan {
            changes: Vec::new(),
            epoch,
            kind: Kind::Public,
        }
    }

    /// Runs `f` with every change it adds tagged `kind` (unless it says otherwise).
    pub fn as_kind<T>(&mut self, kind: Kind, f: impl FnOnce(&mut Plan) -> T) -> T {
        let outer = std::mem::replace(&mut self.kind, kind);
        let out = f(self);
        self.kind = outer;
        out
    }

    fn push(&mut self, op: Op) -> &mut Change {
        self.changes.push(Change {
            op,
            kind: self.kind,
            secret: false,
        });
        self.changes.last_mut().expect("just pushed")
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
        let meta = Meta::root(mode, self.epoch);
        FileChange(self.push(Op::WriteFile {
            path: path.into(),
            content,
            meta,
        }))
    }

    /// Makes directory `path` (and missing parents) with `mode`, owned by root;
    /// `.owner(uid, gid)` on the result changes that.
    pub fn dir(&mut self, path: &str, mode: u32) -> DirChange<'_> {
        let meta = Meta::root(mode, self.epoch);
        DirChange(self.push(Op::Mkdir {
            path: path.into(),
            meta,
            parents: true,
        }))
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let meta = Meta::root(0o777, self.epoch);
        self.push(Op::Symlink {
            path: path.into(),
            target: target.into(),
            meta,
        });
    }

    pub fn remove(&mut self, path: &str) {
        self.push(Op::Remove { path: path.into() });
    }

    /// Masks a systemd unit (a link to /dev/null), the documented way to switch a vendor's
    /// unit off for good.
    pub fn mask(&mut self, unit: &str) {
        self.symlink(&format!("/etc/systemd/system/{unit}"), "/dev/null");
    }
}

/// A file just added by [`Plan::file`] or [`Plan::host_file`]: root-owned, of the plan's
/// current kind and not secret unless changed here.
pub struct FileChange<'a>(&'a mut Change);

impl FileChange<'_> {
    /// Owned by `uid`:`gid` instead of root.
    pub fn owner(self, uid: u32, gid: u32) -> Self {
        set_owner(&mut self.0.op, uid, gid);
        self
    }

    /// Its content is a secret: the manifest never records its hash. A secret is never
    /// public: unless it is part of the node's identity it is a [`Kind::Secret`].
    pub fn secret(self) -> Self {
        self.0.secret = true;
        if matches!(self.0.kind, Kind::Public | Kind::Node) {
            self.0.kind = Kind::Secret;
        }
        self
    }

    /// Tagged `kind` instead of the plan's current one.
    pub fn kind(self, kind: Kind) -> Self {
        self.0.kind = kind;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_nest_and_secrets_are_never_public() {
        let mut p = Plan::new(0);
        p.file("/a", vec![], 0o644);
        p.as_kind(Kind::Identity, |p| {
            p.file("/b", vec![], 0o600).secret();
            p.as_kind(Kind::IdentityGuard, |p| p.mask("x.service"));
            p.file("/c", vec![], 0o644);
        });
        p.file("/d", vec![], 0o600).secret();
        p.file("/e", vec![], 0o644).kind(Kind::Node);
        let got: Vec<(&str, Kind, bool)> = p
            .changes
            .iter()
            .map(|c| (c.op.path(), c.kind, c.secret))
            .collect();
        assert_eq!(
            got,
            [
                ("/a", Kind::Public, false),
                ("/b", Kind::Identity, true),
                ("/etc/systemd/system/x.service", Kind::IdentityGuard, false),
                ("/c", Kind::Identity, false),
                ("/d", Kind::Secret, true),
                ("/e", Kind::Node, false),
            ]
        );
    }
}
