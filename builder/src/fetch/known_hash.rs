//! The sha256 of a local `--base` file, remembered between builds so that a 3 GiB raw base is
//! not read in full by every build (BENCHMARKS.md, note 2: 3.5 s of an 8 s build).
//!
//! A record is trusted only while the file is provably the one that was hashed: same device,
//! inode, size, mtime and ctime (both to the nanosecond). ctime is what catches a content
//! change whose mtime was put back (`touch -d`, `cp -p`, `rsync -t`): the kernel sets it on
//! every write and every metadata change, and no system call sets it back. Replacing the file
//! (a new inode) or moving another file into its place is caught by the inode and ctime too.
//!
//! Timestamps have a granularity (the kernel's coarse clock, a few ms; 2 s on FAT), so a file
//! changed twice within one tick could keep its stat. As git does for its index ("racy git"),
//! no record is written for a file whose mtime or ctime is within [`RACY`] of the moment its
//! hashing began: it is simply hashed again next time.
//!
//! Records live in `<cache>/local/<sha256 of the canonical path>.json`, written whole by
//! rename. A record that cannot be read, does not parse or names another path is ignored and
//! replaced; a write that fails only costs a rehash next time.

use crate::emit::atomic;
use crate::io::hash::sha256_hex;
use serde::{Deserialize, Serialize};
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How recent a change may be for its stat not to be trusted (FAT's 2 s mtime granularity is
/// the coarsest of the filesystems a base image is likely to sit on).
const RACY: Duration = Duration::from_secs(2);

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    fn of(meta: &Metadata) -> Identity {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Changed within `RACY` of `began` (or after it): a further change in the same clock
    /// tick would not show in the stat.
    fn is_racy(&self, began: SystemTime) -> bool {
        let began_ns = began
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let newest = self.mtime_ns.max(self.ctime_ns);
        newest + RACY.as_nanos() as i128 > began_ns
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    path: PathBuf,
    identity: Identity,
    sha256: String,
}

/// The remembered sha256 of local files, in one cache directory.
pub struct KnownHashes {
    dir: PathBuf,
}

/// A file's identity taken before hashing it, to be recorded with the hash if it still holds.
pub struct Pending {
    record: PathBuf,
    path: PathBuf,
    identity: Identity,
    began: SystemTime,
}

impl KnownHashes {
    pub fn new(dir: PathBuf) -> KnownHashes {
        KnownHashes { dir }
    }

    /// The remembered sha256 of `path` if its identity is unchanged since it was hashed;
    /// otherwise what to pass to [`KnownHashes::store`] once it has been hashed. `None` for
    /// both when the file cannot be stat'ed (reading it will give the error).
    pub fn lookup(&self, path: &Path) -> (Option<String>, Option<Pending>) {
        let began = SystemTime::now();
        let Ok(canonical) = fs::canonicalize(path) else {
            return (None, None);
        };
        let Ok(meta) = fs::metadata(&canonical) else {
            return (None, None);
        };
        let identity = Identity::of(&meta);
        let record = self.dir.join(format!(
            "{}.json",
            sha256_hex(canonical.as_os_str().as_encoded_bytes())
        ));
        let known = fs::read(&record)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .filter(|r| {
                r.path == canonical
                    && r.identity == identity
                    && crate::fetch::parse_sha256(&r.sha256).as_deref() == Some(r.sha256.as_str())
            })
            .map(|r| r.sha256);
        if known.is_some() {
            return (known, None);
        }
        let pending = Pending {
            record,
            path: canonical,
            identity,
            began,
        };
        (None, Some(pending))
    }

    /// Remembers `sha256` for the file of `pending`, if it was not changed while (or just
    /// before) being hashed.
    pub fn store(&self, pending: Pending, sha256: &str) {
        let Ok(meta) = fs::metadata(&pending.path) else {
            return;
        };
        if Identity::of(&meta) != pending.identity || pending.identity.is_racy(pending.began) {
            return;
        }
        let record = Record {
            path: pending.path,
            identity: pending.identity,
            sha256: sha256.to_string(),
        };
        let Ok(json) = serde_json::to_vec_pretty(&record) else {
            return;
        };
        // Best effort: without the record the next build hashes the file again.
        let _ = fs::create_dir_all(&self.dir)
            .and_then(|()| atomic::pending_with(&pending.record, &json))
            .and_then(atomic::PendingFile::commit);
    }
}
