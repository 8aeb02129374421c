//! Distro families: which one an image is, from what the vendor leaves in it, and what each
//! needs so a node boots straight into its hardened, keyboard-free state. One file per family
//! behind [`Family`] (afterburn's one file per provider): first-boot wizards disarmed, the
//! vendor's root expansion kept, cloud-init fed or switched off on purpose, and the node's
//! identity protected from vendor regeneration.
//! Facts: shared/research/vendor-images.md sections 1.5, 1.6, 2.5, 3.5, 4.5.
//!
//! Families write into [`crate::plan::changes::Plan`], the change collector, and nothing else
//! of `plan`: `plan` calls the families, never the other way round.

pub mod armbian;
pub mod cloud;
pub mod raspios;
pub mod ubuntu_raspi;

use crate::fs::{FileType, FsError, FsKind};
use crate::image::{Image, ImageError};
use crate::plan::changes::Plan;
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

    /// The family file that answers for this image.
    pub fn family(self) -> &'static dyn Family {
        match self {
            Vendor::RpiOsBookworm => &raspios::BOOKWORM,
            Vendor::RpiOsTrixie => &raspios::TRIXIE,
            Vendor::Armbian => &armbian::Armbian,
            Vendor::UbuntuRaspi => &ubuntu_raspi::UbuntuRaspi,
            Vendor::UbuntuCloud => &cloud::UBUNTU,
            Vendor::DebianCloud => &cloud::DEBIAN,
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// What a family needs to know about the node.
pub struct Context<'a> {
    pub node: &'a str,
    /// The build places the node's own SSH host keys: no vendor step may replace them.
    pub has_identity: bool,
}

/// The network stack a family's image brings its interfaces up with on first boot, and so the
/// format `[network]` is written in (`plan::network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkStack {
    /// NetworkManager keyfiles in /etc/NetworkManager/system-connections.
    NetworkManager,
    /// netplan YAML in /etc/netplan, rendered at boot by the image's netplan generator.
    Netplan,
    /// systemd-networkd `.network` files in /etc/systemd/network (wpa_supplicant for Wi-Fi).
    Networkd,
}

/// Where a family's network settings go: its stack and the interface names of its boards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkDefaults {
    pub stack: NetworkStack,
    /// The Ethernet interface `[network]` addresses are for unless `interface` says otherwise;
    /// a glob where the name depends on the machine.
    pub ethernet: &'static str,
    /// The Wi-Fi interface.
    pub wifi: &'static str,
}

/// The questions every distro family answers. Each `plan_*` method adds that family's changes
/// (none by default); [`plan`] calls them in this order.
pub trait Family: Sync {
    /// Where the FAT partition the agent reads its seed from and writes its status to is
    /// mounted.
    fn boot_mount(&self) -> &'static str;

    /// The network stack and interface names of the family's images.
    fn network(&self) -> NetworkDefaults;

    /// Where a copy of the node's SSH host keys is kept, for families whose first boot
    /// replaces them unconditionally; `plan` writes the copy there.
    fn host_key_copy_dir(&self) -> Option<&'static str> {
        None
    }

    /// Disarms the family's first-boot wizard (the admin account comes from imagegen).
    fn plan_wizard(
        &self,
        _image: &mut Image,
        _ctx: &Context,
        _p: &mut Plan,
    ) -> Result<(), VendorError> {
        Ok(())
    }

    /// Keeps the node's own host keys through the family's first boot.
    fn plan_host_keys(
        &self,
        _image: &mut Image,
        _ctx: &Context,
        _p: &mut Plan,
    ) -> Result<(), VendorError> {
        Ok(())
    }

    /// cloud-init: fed a seed that keeps the root expansion, or switched off on purpose.
    fn plan_cloud_init(
        &self,
        _image: &mut Image,
        _ctx: &Context,
        _p: &mut Plan,
    ) -> Result<(), VendorError> {
        Ok(())
    }
}

/// Every change the family of `vendor` needs, then sshd enabled.
pub fn plan(
    vendor: Vendor,
    image: &mut Image,
    ctx: &Context,
    p: &mut Plan,
) -> Result<(), VendorError> {
    let f = vendor.family();
    f.plan_wizard(image, ctx, p)?;
    f.plan_host_keys(image, ctx, p)?;
    f.plan_cloud_init(image, ctx, p)?;
    enable_ssh(image, p)?;
    Ok(())
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
    #[error("{0}")]
    Invalid(String),
}

/// What detection looks at, read once from the image.
pub struct Facts {
    pub rpi_issue: bool,
    pub armbian_release: bool,
    /// `ID` and `VERSION_CODENAME` of /etc/os-release ("" when missing).
    pub id: String,
    pub codename: String,
    /// Labels of the ext4 and FAT filesystems.
    pub labels: Vec<String>,
}

impl Facts {
    pub fn has_label(&self, l: &str) -> bool {
        self.labels.iter().any(|x| x.eq_ignore_ascii_case(l))
    }
}

/// Each family file's detector, asked in this order; the first answer wins.
type Detector = fn(&Facts) -> Option<Result<Vendor, VendorError>>;
const DETECTORS: &[Detector] = &[
    raspios::detect,
    armbian::detect,
    ubuntu_raspi::detect,
    cloud::detect,
];

/// Detects the family from /etc/rpi-issue, /etc/armbian-release, /etc/os-release and the
/// filesystem labels the vendors use.
pub fn detect(image: &mut Image) -> Result<Vendor, VendorError> {
    let os = image.os_release()?.unwrap_or_default();
    let facts = Facts {
        id: os.get("ID").cloned().unwrap_or_default(),
        codename: os.get("VERSION_CODENAME").cloned().unwrap_or_default(),
        labels: labels(image)?,
        rpi_issue: exists(image, "/etc/rpi-issue")?,
        armbian_release: exists(image, "/etc/armbian-release")?,
    };
    if let Some(found) = DETECTORS.iter().find_map(|d| d(&facts)) {
        return found;
    }
    let what = match os.get("PRETTY_NAME") {
        Some(n) => format!("{n}, filesystem labels: {}", facts.labels.join(" ")),
        None => "no /etc/os-release found".into(),
    };
    Err(VendorError::Unrecognized(what, supported()))
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

fn exists(image: &mut Image, path: &str) -> Result<bool, ImageError> {
    Ok(image.lstat(path)?.is_some())
}

/// Sets `NAME=value` in a shell-style defaults file (/etc/default/*), keeping everything else.
pub fn set_shell_var(text: &str, name: &str, value: &str) -> String {
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.strip_prefix(name).is_some_and(|r| r.starts_with('=')) {
                found = true;
                format!("{name}={value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.push(format!("{name}={value}"));
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn read_text(image: &mut Image, path: &str) -> Result<Option<String>, VendorError> {
    match image.read_file(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(ImageError::Fs(FsError::NotFound(_))) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes sure sshd starts at boot: Raspberry Pi OS ships it disabled (sshswitch enables it
/// only when a file named `ssh` is on the boot partition). Ubuntu 24.04 starts it through
/// ssh.socket; enabling the service too would make them fight over port 22.
fn enable_ssh(image: &mut Image, p: &mut Plan) -> Result<(), VendorError> {
    let enabled = [
        "/etc/systemd/system/multi-user.target.wants/ssh.service",
        "/etc/systemd/system/sockets.target.wants/ssh.socket",
        "/etc/systemd/system/multi-user.target.wants/sshd.service",
    ];
    for e in enabled {
        if image.lstat(e)?.is_some() {
            return Ok(());
        }
    }
    for unit in [
        "/usr/lib/systemd/system/ssh.service",
        "/lib/systemd/system/ssh.service",
    ] {
        if image
            .lstat(unit)?
            .is_some_and(|s| s.file_type == FileType::Regular)
        {
            p.dir("/etc/systemd/system/multi-user.target.wants", 0o755);
            p.symlink(
                "/etc/systemd/system/multi-user.target.wants/ssh.service",
                unit,
            );
            if image.lstat("/etc/systemd/system/sshd.service")?.is_none() {
                p.symlink("/etc/systemd/system/sshd.service", unit);
            }
            return Ok(());
        }
    }
    Err(VendorError::Invalid(
        "the image has no ssh.service: install openssh-server in the base image, or nobody \
         can log in to the node"
            .into(),
    ))
}
