//! Distro families: which one an image is, from what the vendor leaves in it.
//! Facts: shared/research/vendor-images.md.

pub mod adapt;

use crate::fs::FsKind;
use crate::image::{Image, ImageError};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    RpiOsBookworm,
    RpiOsTrixie,
    Armbian,
    UbuntuRaspi,
    UbuntuCloud,
    DebianCloud,
}

pub const ALL: &[Vendor] = &[
    Vendor::RpiOsBookworm,
    Vendor::RpiOsTrixie,
    Vendor::Armbian,
    Vendor::UbuntuRaspi,
    Vendor::UbuntuCloud,
    Vendor::DebianCloud,
];

impl Vendor {
    /// The id used in board files and on the command line.
    pub fn id(self) -> &'static str {
        match self {
            Vendor::RpiOsBookworm => "rpios-bookworm",
            Vendor::RpiOsTrixie => "rpios-trixie",
            Vendor::Armbian => "armbian",
            Vendor::UbuntuRaspi => "ubuntu-raspi",
            Vendor::UbuntuCloud => "ubuntu-cloud",
            Vendor::DebianCloud => "debian-cloud",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Vendor::RpiOsBookworm => "Raspberry Pi OS (bookworm)",
            Vendor::RpiOsTrixie => "Raspberry Pi OS (trixie)",
            Vendor::Armbian => "Armbian",
            Vendor::UbuntuRaspi => "Ubuntu 24.04 preinstalled server for Raspberry Pi",
            Vendor::UbuntuCloud => "Ubuntu 24.04 cloud image",
            Vendor::DebianCloud => "Debian 12 cloud image (genericcloud)",
        }
    }

    pub fn from_id(id: &str) -> Result<Vendor, VendorError> {
        ALL.iter()
            .copied()
            .find(|v| v.id() == id)
            .ok_or_else(|| VendorError::UnknownId(id.to_string(), supported()))
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

fn supported() -> String {
    ALL.iter()
        .map(|v| format!("{} ({})", v.id(), v.description()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    #[error("unknown vendor {0:?}; supported: {1}")]
    UnknownId(String, String),
    #[error(
        "this image is not one imagegen knows how to customize ({0}); supported: {1}. \
         If it is one of these, say which with --vendor"
    )]
    Unrecognized(String, String),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Detects the family from /etc/rpi-issue, /etc/armbian-release, /etc/os-release and the
/// filesystem labels the vendors use.
pub fn detect(image: &mut Image) -> Result<Vendor, VendorError> {
    let exists =
        |image: &mut Image, p: &str| -> Result<bool, ImageError> { Ok(image.lstat(p)?.is_some()) };
    let os = image.os_release()?.unwrap_or_default();
    let id = os.get("ID").map_or("", String::as_str);
    let codename = os.get("VERSION_CODENAME").map_or("", String::as_str);
    let labels = labels(image)?;
    let has_label = |l: &str| labels.iter().any(|x| x.eq_ignore_ascii_case(l));

    if exists(image, "/etc/rpi-issue")? {
        return match codename {
            "bookworm" => Ok(Vendor::RpiOsBookworm),
            "trixie" => Ok(Vendor::RpiOsTrixie),
            other => Err(VendorError::Unrecognized(
                format!("Raspberry Pi OS with release {other:?}"),
                supported(),
            )),
        };
    }
    if exists(image, "/etc/armbian-release")? {
        return Ok(Vendor::Armbian);
    }
    match id {
        "ubuntu" if has_label("system-boot") => Ok(Vendor::UbuntuRaspi),
        "ubuntu" if has_label("cloudimg-rootfs") => Ok(Vendor::UbuntuCloud),
        "debian" if !has_label("bootfs") => Ok(Vendor::DebianCloud),
        _ => {
            let what = match os.get("PRETTY_NAME") {
                Some(n) => format!("{n}, filesystem labels: {}", labels.join(" ")),
                None => "no /etc/os-release found".into(),
            };
            Err(VendorError::Unrecognized(what, supported()))
        }
    }
}

fn labels(image: &mut Image) -> Result<Vec<String>, ImageError> {
    let mut out = Vec::new();
    for i in 0..image.slots().len() {
        if matches!(image.slots()[i].fs_kind, Some(FsKind::Ext4 | FsKind::Fat))
            && let Some(l) = image.info(i)?.label
        {
            out.push(l);
        }
    }
    Ok(out)
}
