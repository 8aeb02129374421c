//! Boards: one TOML file each under `boards/`, embedded in the binary.

use crate::arch::Arch;
use crate::emit::Format;
use serde::{Deserialize, Serialize};

const FILES: &[(&str, &str)] = &[
    ("rpi3", include_str!("../../boards/rpi3.toml")),
    ("rpi4", include_str!("../../boards/rpi4.toml")),
    ("rpi5", include_str!("../../boards/rpi5.toml")),
    ("bpi-m5", include_str!("../../boards/bpi-m5.toml")),
    ("x86-64", include_str!("../../boards/x86-64.toml")),
    ("kvm", include_str!("../../boards/kvm.toml")),
    (
        "arm64-generic",
        include_str!("../../boards/arm64-generic.toml"),
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    pub id: String,
    pub description: String,
    pub arch: Arch,
    /// Image path of the kernel command line file the firmware reads, when the board has one.
    #[serde(default)]
    pub kernel_cmdline_file: Option<String>,
    /// Arguments the node needs on the kernel command line (k3s: memory cgroup on Pis).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Vendor image families this board boots.
    pub accepts: Vec<String>,
    pub base: BaseImage,
    #[serde(default)]
    pub alternatives: Vec<BaseImage>,
    /// Format of the image `build` writes without `-o` (or into `--all`'s directory).
    #[serde(default = "default_output")]
    pub output: Format,
}

/// A compressed raw image: what a card or disk is flashed from.
fn default_output() -> Format {
    Format::Zstd
}

impl Board {
    /// The image file name `build` gives `node` when `-o` names no file.
    pub fn output_name(&self, node: &str) -> String {
        format!("{node}.{}", self.output)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    pub vendor: String,
    pub url: String,
    /// Pinned sha256 of the download.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The vendor's checksum file, used when nothing is pinned.
    #[serde(default)]
    pub checksum_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("unknown board {0:?}; known boards: {1}")]
    Unknown(String, String),
    #[error("boards/{0}.toml: {1}")]
    Invalid(String, String),
}

/// Every embedded board, in a stable order.
pub fn all() -> Result<Vec<Board>, BoardError> {
    FILES.iter().map(|(id, _)| get(id)).collect()
}

pub fn ids() -> Vec<&'static str> {
    FILES.iter().map(|(id, _)| *id).collect()
}

pub fn get(id: &str) -> Result<Board, BoardError> {
    let (_, text) = FILES
        .iter()
        .find(|(i, _)| *i == id)
        .ok_or_else(|| BoardError::Unknown(id.to_string(), ids().join(", ")))?;
    let board: Board =
        toml::from_str(text).map_err(|e| BoardError::Invalid(id.to_string(), e.to_string()))?;
    if board.id != id {
        return Err(BoardError::Invalid(
            id.to_string(),
            format!("id is {:?}, expected {id:?}", board.id),
        ));
    }
    Ok(board)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_parses_and_accepts_its_default_base() {
        for b in all().unwrap() {
            assert!(b.accepts.contains(&b.base.vendor), "{}", b.id);
            for alt in &b.alternatives {
                assert!(b.accepts.contains(&alt.vendor), "{}: {}", b.id, alt.vendor);
            }
            // Every default base can be verified: pinned, or with a vendor checksum file,
            // except where the vendor publishes none we can use (then the board says so).
            let s = b.base.sha256.as_deref().unwrap_or("");
            assert!(s.is_empty() || (s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())));
        }
    }

    #[test]
    fn vms_get_qcow2_and_the_rest_a_compressed_raw_image() {
        assert_eq!(get("kvm").unwrap().output_name("vm1"), "vm1.qcow2");
        assert_eq!(get("x86-64").unwrap().output_name("m"), "m.img.zst");
        assert_eq!(get("rpi4").unwrap().output, Format::Zstd);
        // Bare metal gets Debian's `generic` image, whose kernel has the hardware drivers.
        assert!(get("x86-64").unwrap().base.url.contains("-generic-amd64"));
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let e = get("rpi9").unwrap_err().to_string();
        assert!(e.contains("rpi4") && e.contains("x86-64"), "{e}");
    }
}
