//! `OUT.manifest.json`: what went into an image and what came out, so a build can be audited
//! and reproduced.
//!
//! Secrets never go in the manifest: no field here can hold file contents, only names, paths,
//! versions and hashes. A change whose content is secret (k3s token, NUT password, backup
//! credentials) is recorded with `secret: true` and no hash, because a hash of a short password
//! can be brute-forced.

use serde::{Deserialize, Serialize};

use super::format::{Compressor, Format};

/// The manifest as written. Field order here is the order in the JSON, and every list keeps the
/// order the pipeline gave it, so the same build gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub build: BuildRecord,
    pub output: Output,
}

/// Everything the build pipeline knows before emitting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// imagegen's version, e.g. `env!("CARGO_PKG_VERSION")`.
    pub imagegen_version: String,
    pub board: String,
    /// The node name; `None` for a generic image.
    pub node: Option<String>,
    /// The node's ZeroTier member address (10 hex digits, public: ZeroTier Central lists it),
    /// when it has `[zerotier]`; the same on every rebuild, since the identity is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zerotier_address: Option<String>,
    /// `SOURCE_DATE_EPOCH` the build used for timestamps.
    pub source_date_epoch: Option<i64>,
    pub inputs: Vec<Input>,
    pub tools: Vec<Tool>,
    pub changes: Vec<Change>,
}

/// A file the build read: base image, overlay, binary to stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    /// URL or local path it came from; a URL as [`public_url`] leaves it.
    pub source: String,
    pub sha256: String,
}

/// A URL without what may be a credential: the user and password before the host
/// (`https://user:pass@host/`), and the query and fragment (pre-signed download links carry
/// their signature there, e.g. `?X-Amz-Signature=`). The manifest is as readable as any
/// file the user makes, and `sha256` already says which bytes were used.
pub fn public_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// An external tool or library whose version can change the output bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

/// One file the build wrote into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Absolute path in the running system's view, e.g. `/etc/hostname`.
    pub path: String,
    /// Partition label or number it lives on.
    pub partition: String,
    /// sha256 of the bytes written; `None` for secrets and for directories and symlinks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    /// The content is a secret: no hash is recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub secret: bool,
    /// Permission bits, written in octal like `"0644"`.
    #[serde(with = "octal")]
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The emitted image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// File name of the output, without directory.
    pub file: String,
    pub format: Format,
    /// sha256 of the output file as written (also in `OUT.sha256`).
    pub sha256: String,
    /// sha256 and size of the raw disk image it holds (what ends up on the card).
    pub raw_sha256: String,
    pub raw_size: u64,
    /// Blocks of 4 KiB listed in `OUT.bmap`: the ones a flash writes (data, and zeros that are
    /// in use). A qcow2 output has no `.bmap`; the count is the raw image's all the same.
    pub mapped_blocks: u64,
    pub compressor: Option<Compressor>,
}

impl Manifest {
    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and integers into a String cannot fail.
        let mut json = serde_json::to_string_pretty(self).unwrap_or_default();
        json.push('\n');
        json
    }
}

mod octal {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let text = String::deserialize(d)?;
        u32::from_str_radix(&text, 8)
            .map_err(|_| D::Error::custom(format!("mode {text:?} is not an octal number")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            public_url("https://user:pa%40ss@example.com:8443/a/b.img.xz?X-Amz-Signature=s#f"),
            "https://example.com:8443/a/b.img.xz"
        );
        assert_eq!(
            public_url("http://example.com/x.img?token=1"),
            "http://example.com/x.img"
        );
        assert_eq!(public_url("https://example.com"), "https://example.com");
        assert_eq!(
            public_url("https://example.com/p@th/x.img"),
            "https://example.com/p@th/x.img"
        );
        assert_eq!(
            public_url("https://u@example.com#sha256=ab"),
            "https://example.com"
        );
    }

    #[test]
    fn json_keeps_field_order_and_hides_secret_hashes() {
        let manifest = Manifest {
            build: BuildRecord {
                imagegen_version: "0.1.0".into(),
                board: "rpi4".into(),
                node: Some("pi4-a".into()),
                zerotier_address: None,
                source_date_epoch: Some(1_700_000_000),
                inputs: vec![],
                tools: vec![Tool {
                    name: "e2fsprogs".into(),
                    version: "1.47.0".into(),
                }],
                changes: vec![Change {
                    path: "/etc/rancher/k3s/token".into(),
                    partition: "rootfs".into(),
                    sha256: None,
                    secret: true,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                }],
            },
            output: Output {
                file: "n.img.xz".into(),
                format: Format::Xz,
                sha256: "ab".into(),
                raw_sha256: "cd".into(),
                raw_size: 4096,
                mapped_blocks: 1,
                compressor: None,
            },
        };
        let json = manifest.to_json();
        let keys = [
            "\"imagegen_version\"",
            "\"board\"",
            "\"node\"",
            "\"inputs\"",
            "\"tools\"",
            "\"changes\"",
            "\"output\"",
        ];
        let positions: Vec<usize> = keys.iter().map(|k| json.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
        assert!(json.contains("\"mode\": \"0600\""), "{json}");
        assert!(json.contains("\"format\": \"img.xz\""), "{json}");
        assert!(!json.contains("\"sha256\": null"), "{json}");
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, manifest);
    }
}
