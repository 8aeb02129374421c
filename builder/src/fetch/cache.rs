//! The download cache, content-addressed so that whatever sits under `blobs/` or `raw/` is
//! exactly what its name says:
//!
//! ```text
//! <cache>/lock                          held (exclusive) while a build fetches
//! <cache>/partial/<sha256(url)>.part    an interrupted download, with .json sidecar
//! <cache>/blobs/sha256/<hex>            verified downloads, named by their sha256
//! <cache>/blobs/sha512/<hex>            symlink to ../sha256/<hex of sha256>: the blob a
//!                                       vendor's sha512 vouched for (Debian publishes no
//!                                       sha256), so the next build finds it without a download
//! <cache>/raw/sha256/<hex>.img          the unpacked (sparse) image of blob <hex>
//! <cache>/tmp/                          unpacking in progress; emptied under the lock
//! <cache>/urls/<sha256(url)>.json      the blob last verified for a URL, and what vouched
//!                                       for it: what `--offline` builds use
//! <cache>/local/<sha256(path)>.json     the sha256 of a local base file and the stat it had
//!                                       (see `known_hash`)
//! ```
//!
//! Files only enter `blobs/` and `raw/` by rename once complete and verified; a sha512 link
//! is made only after the blob it points to was verified against that sha512.

use super::FetchError;
use super::checksum::{Algorithm, Expected, parse_sha256};
use crate::io::hash::sha256_hex;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

/// `$XDG_CACHE_HOME/imagegen`, else `~/.cache/imagegen`.
pub fn default_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|home| home.join(".cache"))
    })?;
    Some(base.join("imagegen"))
}

/// `urls/<sha256(url)>.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UrlEntry {
    pub url: String,
    pub sha256: String,
    /// The checksum file that vouched for it; none when a pinned sha256 did.
    pub checksum_url: Option<String>,
}

/// An open, locked cache. The lock is released on drop.
pub struct Cache {
    root: PathBuf,
    _lock: File,
}

/// What the server said about a partial download, so it can be resumed only if the file
/// did not change (`If-Range`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct PartialMeta {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Cache {
    /// Creates the layout if needed and takes the lock, waiting for another build to finish
    /// with the cache.
    pub fn open(root: &Path) -> Result<Cache, FetchError> {
        for sub in [
            "partial",
            "blobs/sha256",
            "blobs/sha512",
            "raw/sha256",
            "tmp",
            "urls",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| FetchError::io(&dir, "cannot create", e))?;
        }
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| FetchError::io(&lock_path, "cannot open", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                eprintln!(
                    "waiting for another imagegen to release the cache lock {}",
                    lock_path.display()
                );
                lock.lock()
                    .map_err(|e| FetchError::io(&lock_path, "cannot lock", e))?;
            }
            Err(TryLockError::Error(e)) => {
                return Err(FetchError::io(&lock_path, "cannot lock", e));
            }
        }
        let cache = Cache {
            root: root.to_path_buf(),
            _lock: lock,
        };
        // Anything in tmp/ belongs to a build that died: we hold the lock now.
        let tmp = cache.tmp_dir();
        let entries = fs::read_dir(&tmp).map_err(|e| FetchError::io(&tmp, "cannot list", e))?;
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(cache)
    }

    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    /// The sha256 of the blob that `want` vouches for, if the cache has it.
    pub fn find(&self, want: &Expected) -> Option<String> {
        let sha256 = match want.algorithm {
            Algorithm::Sha256 => want.hex.clone(),
            // A dangling or foreign link is no hit: the blob is downloaded again.
            other => {
                let target = fs::read_link(self.alias(other, &want.hex)).ok()?;
                parse_sha256(&target.file_name()?.to_string_lossy())?
            }
        };
        self.blob(&sha256).exists().then_some(sha256)
    }

    /// Records that `want` vouched for blob `sha256`, so [`Cache::find`] finds it by `want`.
    pub fn remember(&self, want: &Expected, sha256: &str) -> Result<(), FetchError> {
        if want.algorithm == Algorithm::Sha256 {
            return Ok(());
        }
        let link = self.alias(want.algorithm, &want.hex);
        let stored = match fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::os::unix::fs::symlink(Path::new("../sha256").join(sha256), &link),
        };
        stored.map_err(|e| FetchError::io(&link, "cannot store", e))
    }

    fn alias(&self, algorithm: Algorithm, hex: &str) -> PathBuf {
        self.root.join("blobs").join(algorithm.name()).join(hex)
    }

    pub fn raw(&self, sha256: &str) -> PathBuf {
        self.root.join("raw/sha256").join(format!("{sha256}.img"))
    }

    /// The remembered hashes of local base files.
    pub fn local_dir(&self) -> PathBuf {
        self.root.join("local")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Records that `url` last gave blob `sha256`, verified by `checksum_url` (else by a
    /// pinned sha256), for [`Cache::known`].
    pub fn remember_url(
        &self,
        url: &str,
        sha256: &str,
        checksum_url: Option<&str>,
    ) -> Result<(), FetchError> {
        let entry = UrlEntry {
            url: url.to_string(),
            sha256: sha256.to_string(),
            checksum_url: checksum_url.map(str::to_string),
        };
        let path = self.url_entry(url);
        let tmp = self.tmp_dir().join(format!("url-{sha256}.json"));
        let text = serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other);
        text.and_then(|t| fs::write(&tmp, t))
            .map_err(|e| FetchError::io(&tmp, "cannot write", e))?;
        self.commit(&tmp, &path)
    }

    /// The verified blob `url` last gave, if the cache still has it.
    pub fn known(&self, url: &str) -> Option<UrlEntry> {
        let text = fs::read(self.url_entry(url)).ok()?;
        let entry: UrlEntry = serde_json::from_slice(&text).ok()?;
        // A key collision or a hand-edited file is no hit.
        let sha = parse_sha256(&entry.sha256)?;
        (entry.url == url && self.blob(&sha).exists()).then_some(entry)
    }

    fn url_entry(&self, url: &str) -> PathBuf {
        let key = sha256_hex(url.as_bytes());
        self.root.join("urls").join(format!("{key}.json"))
    }

    /// The partial download of `url` and its sidecar.
    pub fn partial(&self, url: &str) -> (PathBuf, PathBuf) {
        let key = sha256_hex(url.as_bytes());
        let dir = self.root.join("partial");
        (
            dir.join(format!("{key}.part")),
            dir.join(format!("{key}.json")),
        )
    }

    pub fn read_meta(path: &Path) -> Option<PartialMeta> {
        let text = fs::read(path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn write_meta(path: &Path, meta: &PartialMeta) -> Result<(), FetchError> {
        let text = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other);
        text.and_then(|t| fs::write(path, t))
            .map_err(|e| FetchError::io(path, "cannot write", e))
    }

    /// Moves a complete, verified file into `blobs/` or `raw/` under its final name.
    pub fn commit(&self, from: &Path, to: &Path) -> Result<(), FetchError> {
        fs::rename(from, to).map_err(|e| FetchError::io(to, "cannot store", e))
    }
}
