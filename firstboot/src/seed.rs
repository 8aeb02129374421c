//! The secret seed: secrets that `imagegen personalize` writes onto the FAT boot partition of a
//! generic image at flash time, and that the agent moves into place on first boot.
//!
//! Format: one file `<boot>/imagegen-seed.toml`:
//!
//! ```toml
//! [[file]]
//! path = "/etc/rancher/k3s/token"
//! mode = "0600"
//! content_base64 = "SzEw..."
//! ```
//!
//! Files are placed root-owned (the agent runs as root), atomically, with exactly `mode`. The seed is
//! then overwritten with zeros in place, fsynced and deleted, so the secret does not stay readable on
//! a partition any PC can mount. A power cut in between is harmless: placing is idempotent and the
//! seed is only wiped after every file is in place.
//!
//! A seed that does not parse or names an impossible file fails the same way on every boot, so
//! waiting is no use, and leaving it would keep its secrets on the FAT partition for good: it is
//! moved to [`REJECTED_PATH`] (root-only, for the operator to read) and wiped like a placed one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::root::{Root, sync_dir};

/// File name on the boot partition.
pub const SEED_FILE_NAME: &str = "imagegen-seed.toml";

/// Where a seed that cannot be used is kept, root-only, after it is wiped from the boot partition.
pub const REJECTED_PATH: &str = "/var/lib/imagegen/rejected-seed.toml";

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("seed {SEED_FILE_NAME}: {0}")]
    Parse(String),
    #[error("seed {SEED_FILE_NAME}: file {path:?}: {why}")]
    Invalid { path: String, why: String },
    #[error("seed {SEED_FILE_NAME}: cannot serialize: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("seed: {what}: {source}")]
    Io { what: String, source: io::Error },
    /// A seed that can never be used; `kept` says where it went instead of the boot partition.
    #[error("{reason}; wiped from the boot partition, {kept}")]
    Rejected {
        reason: Box<SeedError>,
        kept: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default, rename = "file")]
    pub files: Vec<SeedFile>,
}

/// One secret file to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    /// Absolute path on the node, without `..`.
    pub path: String,
    /// Octal permission bits as a string, e.g. `"0600"`.
    pub mode: String,
    pub content_base64: String,
}

impl SeedFile {
    pub fn new(path: &str, mode: u32, content: &[u8]) -> SeedFile {
        SeedFile {
            path: path.to_owned(),
            mode: format!("{mode:04o}"),
            content_base64: STANDARD.encode(content),
        }
    }

    fn invalid(&self, why: impl Into<String>) -> SeedError {
        SeedError::Invalid {
            path: self.path.clone(),
            why: why.into(),
        }
    }

    pub fn mode_bits(&self) -> Result<u32, SeedError> {
        match u32::from_str_radix(&self.mode, 8) {
            Ok(m) if m <= 0o777 => Ok(m),
            _ => Err(self.invalid(format!(
                "mode {:?} must be octal permission bits such as \"0600\"",
                self.mode
            ))),
        }
    }

    pub fn content(&self) -> Result<Vec<u8>, SeedError> {
        STANDARD
            .decode(self.content_base64.trim())
            .map_err(|e| self.invalid(format!("content_base64 is not base64: {e}")))
    }

    fn check_path(&self) -> Result<(), SeedError> {
        let p = Path::new(&self.path);
        if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(self.invalid("path must be absolute and must not contain .."));
        }
        Ok(())
    }
}

impl Seed {
    /// Parses and checks a seed. Errors name the line, never a value.
    pub fn from_toml_str(s: &str) -> Result<Seed, SeedError> {
        let seed: Seed = toml::from_str(s).map_err(|e| {
            let line = e
                .span()
                .map(|span| {
                    let n = s[..span.start.min(s.len())].matches('\n').count() + 1;
                    format!("line {n}: ")
                })
                .unwrap_or_default();
            SeedError::Parse(format!("{line}{}", e.message()))
        })?;
        for f in &seed.files {
            f.check_path()?;
            f.mode_bits()?;
            f.content()?;
        }
        Ok(seed)
    }

    pub fn to_toml_string(&self) -> Result<String, SeedError> {
        Ok(toml::to_string(self)?)
    }
}

/// What happened to the seed.
#[derive(Debug, PartialEq, Eq)]
pub enum Consumed {
    NoSeed,
    /// Paths placed (never contents).
    Placed(Vec<String>),
}

/// Places the seed found on the boot partition and wipes it.
pub fn consume(root: &Root, boot: &Path) -> Result<Consumed, SeedError> {
    let seed_path = root.path(boot).join(SEED_FILE_NAME);
    let bytes = match fs::read(&seed_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Consumed::NoSeed),
        Err(source) => {
            return Err(SeedError::Io {
                what: format!("read {}", seed_path.display()),
                source,
            });
        }
    };
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|e| SeedError::Parse(format!("not UTF-8 text ({e})")))
        .and_then(Seed::from_toml_str);
    let seed = match parsed {
        Ok(seed) => seed,
        Err(reason) => return Err(reject(root, &seed_path, &bytes, reason)),
    };
    let mut placed = Vec::new();
    for f in &seed.files {
        let content = f.content()?;
        root.write_atomic(&f.path, &content, f.mode_bits()?)
            .map_err(|source| SeedError::Io {
                what: format!("place {}", f.path),
                source,
            })?;
        placed.push(f.path.clone());
    }
    wipe(&seed_path, bytes.len()).map_err(|source| SeedError::Io {
        what: format!("wipe {}", seed_path.display()),
        source,
    })?;
    Ok(Consumed::Placed(placed))
}

/// Moves a seed that can never be used off the boot partition: a root-only copy for the
/// operator, then the same wipe as a consumed seed. The wipe happens even when the copy cannot be
/// written: secrets must not stay on the FAT partition.
fn reject(root: &Root, seed_path: &Path, bytes: &[u8], reason: SeedError) -> SeedError {
    eprintln!("seed: {reason}; rejecting it");
    let kept = match root.write_atomic(REJECTED_PATH, bytes, 0o600) {
        Ok(_) => format!("kept root-only in {REJECTED_PATH}"),
        Err(e) => {
            eprintln!("seed: cannot keep a copy in {REJECTED_PATH}: {e}");
            format!("not kept ({REJECTED_PATH}: {e})")
        }
    };
    if let Err(source) = wipe(seed_path, bytes.len()) {
        return SeedError::Io {
            what: format!("wipe rejected seed {}", seed_path.display()),
            source,
        };
    }
    SeedError::Rejected {
        reason: Box::new(reason),
        kept,
    }
}

/// Overwrites in place before deleting: FAT reuses the same clusters for an in-place overwrite,
/// so the secret does not linger in free space.
fn wipe(path: &Path, len: usize) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(&vec![0u8; len])?;
    f.sync_all()?;
    drop(f);
    fs::remove_file(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn places_wipes_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let seed = Seed {
            files: vec![SeedFile::new(
                "/etc/rancher/k3s/token",
                0o600,
                b"K10abc::node:pw",
            )],
        };
        fs::create_dir_all(t.path().join("boot/firmware")).unwrap();
        fs::write(
            t.path().join("boot/firmware").join(SEED_FILE_NAME),
            seed.to_toml_string().unwrap(),
        )
        .unwrap();
        let boot = Path::new("/boot/firmware");
        assert_eq!(
            consume(&root, boot).unwrap(),
            Consumed::Placed(vec!["/etc/rancher/k3s/token".into()])
        );
        let placed = t.path().join("etc/rancher/k3s/token");
        assert_eq!(fs::read(&placed).unwrap(), b"K10abc::node:pw");
        assert_eq!(
            fs::metadata(&placed).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!t.path().join("boot/firmware").join(SEED_FILE_NAME).exists());
        assert_eq!(consume(&root, boot).unwrap(), Consumed::NoSeed);
    }

    #[test]
    fn unusable_seeds_are_wiped_and_kept_root_only() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let boot = Path::new("/boot/firmware");
        let seed = t.path().join("boot/firmware").join(SEED_FILE_NAME);
        fs::create_dir_all(seed.parent().unwrap()).unwrap();
        let bad_path =
            "[[file]]\npath = \"etc/x\"\nmode = \"0600\"\ncontent_base64 = \"c2VjcmV0\"\n";
        for content in [bad_path.as_bytes(), b"\xff\xfe not text c2VjcmV0"] {
            fs::write(&seed, content).unwrap();
            let e = consume(&root, boot).unwrap_err().to_string();
            assert!(e.contains(REJECTED_PATH), "{e}");
            assert!(!e.contains("c2VjcmV0"), "{e}");
            assert!(!seed.exists());
            let kept = t.path().join(REJECTED_PATH.trim_start_matches('/'));
            assert_eq!(fs::read(&kept).unwrap(), content);
            assert_eq!(
                fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn escaping_path_is_refused() {
        let s = "[[file]]\npath = \"etc/../x\"\nmode = \"0600\"\ncontent_base64 = \"\"\n";
        let e = Seed::from_toml_str(s).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
    }
}
