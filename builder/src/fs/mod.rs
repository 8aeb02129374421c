//! One vocabulary of filesystem operations over the filesystems found in an image.
//!
//! Every backend works in place on the whole-disk image file, at the partition's byte offset.
//! Paths given to a backend are absolute within that filesystem ("/etc/hostname"), already
//! normalized by `path::normalize`, and free of symlinks in their parent components (the
//! `image` layer resolves symlinks across the mount view before it calls a backend).

pub mod ext4;
pub mod fat;
pub mod path;

use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsKind {
    Ext4,
    Fat,
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsKind::Ext4 => "ext4",
            FsKind::Fat => "vfat",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    /// Device nodes, fifos, sockets: listed, never created or written.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub file_type: FileType,
    /// Permission bits only (0o7777). FAT reports 0o755 for directories, 0o644 for files
    /// (0o444 when read-only).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub stat: Stat,
}

/// Ownership, permissions and time of something an `Op` creates. FAT ignores mode, uid and
/// gid (it has none) and stores mtime at its 2-second resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

impl Meta {
    pub fn root(mode: u32, mtime: i64) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    /// A file on the host, streamed (e.g. a 70 MB k3s binary).
    HostFile(PathBuf),
}

/// One change to a filesystem. A batch (`&[Op]`) is applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make a directory. `parents`: like `mkdir -p` (missing parents get the same meta, existing
    /// directories are left as they are); otherwise the parent must exist and the path must not.
    Mkdir {
        path: String,
        meta: Meta,
        parents: bool,
    },
    /// Create or replace a regular file (an existing file or symlink at `path` is replaced; a
    /// directory is an error). The parent must exist.
    WriteFile {
        path: String,
        content: Content,
        meta: Meta,
    },
    /// Create or replace a symlink (an existing file or symlink is replaced; a directory is an
    /// error). `meta.mode` is ignored (symlinks are 0o777). The parent must exist.
    Symlink {
        path: String,
        target: String,
        meta: Meta,
    },
    /// Remove a file, a symlink, or an empty directory.
    Remove { path: String },
    /// Change permissions and/or owner of an existing entry.
    SetMeta {
        path: String,
        mode: Option<u32>,
        owner: Option<(u32, u32)>,
    },
}

impl Op {
    pub fn path(&self) -> &str {
        match self {
            Op::Mkdir { path, .. }
            | Op::WriteFile { path, .. }
            | Op::Symlink { path, .. }
            | Op::Remove { path }
            | Op::SetMeta { path, .. } => path,
        }
    }
}

/// What `inspect` shows of a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub kind: FsKind,
    /// e.g. "FAT32", "FAT16", "ext4".
    pub variant: String,
    pub label: Option<String>,
    /// ext4: the filesystem UUID, lowercase hyphenated; FAT: the volume serial as "ABCD-1234"
    /// (what /dev/disk/by-uuid and fstab's UUID= use).
    pub uuid: Option<String>,
    pub size_bytes: u64,
    pub free_bytes: u64,
    pub block_size: u32,
    /// ext4 feature names as dumpe2fs prints them; empty for FAT.
    pub features: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0}: no such file or directory")]
    NotFound(String),
    #[error("{0}: already exists")]
    AlreadyExists(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("{0}: not a symlink")]
    NotASymlink(String),
    #[error("no space left on the {kind} filesystem: {needed} bytes needed, {free} free")]
    NoSpace {
        kind: FsKind,
        needed: u64,
        free: u64,
    },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// The filesystem is valid but imagegen refuses to edit it (unknown features, needs journal
    /// recovery, ...). The message says what to do.
    #[error("{0}")]
    Unsupported(String),
    #[error("corrupt filesystem: {0}")]
    Corrupt(String),
    /// An external tool (debugfs, e2fsck, resize2fs, mmd) failed or reported an error.
    #[error("{tool}: {detail}")]
    Tool { tool: String, detail: String },
    /// A change did not read back as written.
    #[error("verification failed for {path}: {detail}")]
    Verify { path: String, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A filesystem inside an image, opened in place at its partition offset.
pub trait Filesystem {
    fn kind(&self) -> FsKind;

    fn info(&mut self) -> Result<FsInfo, FsError>;

    /// Like lstat(2): does not follow a symlink in the last component. `Ok(None)` when the path
    /// (or one of its parents) does not exist.
    fn lstat(&mut self, path: &str) -> Result<Option<Stat>, FsError>;

    fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError>;

    /// Streams a regular file's content into `out`.
    fn read_to(&mut self, path: &str, out: &mut dyn Write) -> Result<u64, FsError>;

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FsError> {
        let mut buf = Vec::new();
        self.read_to(path, &mut buf)?;
        Ok(buf)
    }

    /// The first `max` bytes of a regular file (fewer if it is shorter), without reading the
    /// rest: enough for a header such as an ELF executable's.
    fn read_head(&mut self, path: &str, max: usize) -> Result<Vec<u8>, FsError>;

    fn read_link(&mut self, path: &str) -> Result<String, FsError>;

    /// Applies a batch in order. Checks what it can before changing anything (parents exist,
    /// free space suffices, names are valid), reads every change back afterwards, and checks
    /// the filesystem (ext4: `e2fsck -fn`). `epoch` is the time every timestamp the batch
    /// touches is set to (from SOURCE_DATE_EPOCH), so the same batch on the same input gives the
    /// same bytes.
    fn apply(&mut self, ops: &[Op], epoch: i64) -> Result<(), FsError>;
}
