//! What the kernel says about a disk, read from sysfs and /proc/self/mountinfo, and the safety
//! rules built on it. Raspberry Pi Imager lists only removable, unmounted, non-system drives;
//! coreos-installer refuses a device with mounted partitions. imagegen does both.
//!
//! Every path is read under a root directory, `/` normally; the tests point it at a fake tree
//! (`IMAGEGEN_SYSROOT`, see [`SYSROOT_ENV`]) with `sys/class/block/*`, `sys/dev/block/*`,
//! `proc/self/mountinfo` and `dev/*`.

pub use crate::io::progress::human_size;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The safety rules, for `imagegen flash --help`.
pub const RULES: &str = "Safety: DEVICE must be a whole disk that is removable, on USB or an SD \
card reader; a partition or a fixed disk is refused unless --force. A disk that is mounted, in \
use, read-only or holds the running system is always refused. The drive's model, size and bus \
are shown and confirmation asked unless --yes. An image larger than DEVICE is refused before \
anything is written. Without --no-verify, the written blocks are read back from the device and \
checked against the image's .bmap (or its whole sha256).";

/// For tests only: the directory that stands for `/` when looking up devices, their sysfs
/// entries and the mount table.
pub const SYSROOT_ENV: &str = "IMAGEGEN_SYSROOT";

/// The root that device facts are read under.
pub fn sysroot() -> PathBuf {
    std::env::var_os(SYSROOT_ENV).map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is neither a regular file nor a block device")]
    NotADisk(PathBuf),
}

/// The bus a disk hangs off, from its sysfs device path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bus {
    Usb,
    Mmc,
    /// Anything else, named by the path component that tells (nvme, ata, virtio...).
    Other(String),
}

impl std::fmt::Display for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bus::Usb => f.write_str("usb"),
            Bus::Mmc => f.write_str("mmc"),
            Bus::Other(s) => f.write_str(s),
        }
    }
}

/// A block device as sysfs describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Disk {
    /// Kernel name: sdb, mmcblk0, loop3.
    pub name: String,
    /// The device node to open (under the sysroot).
    #[serde(skip)]
    pub node: PathBuf,
    /// The user-facing path, /dev/NAME.
    pub path: String,
    pub size: u64,
    pub removable: bool,
    pub bus: Bus,
    pub model: String,
    pub read_only: bool,
    /// The whole disk this is a partition of.
    pub partition_of: Option<String>,
    /// (device name, mount point) of every mounted filesystem on the disk or its partitions.
    pub mounts: Vec<(String, String)>,
    /// Holds the filesystem mounted at `/` of the running system.
    pub system: bool,
    /// Devices built on this disk or its partitions (device mapper, md RAID, LUKS).
    pub holders: Vec<String>,
}

/// A rule the disk breaks. `forceable` ones give way to `--force`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub forceable: bool,
    pub reason: String,
}

/// What DEVICE turned out to be.
pub enum Target {
    File(PathBuf),
    Disk(Disk),
}

/// Finds out what `device` is. A block device is looked up by its device number in
/// `sys/dev/block`; under a test sysroot, where `dev/NAME` is a plain file, by name in
/// `sys/class/block`.
pub fn identify(root: &Path, device: &Path) -> Result<Target, DeviceError> {
    let node = under(root, device);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DeviceError::Io { path, source }
    };
    let meta = match fs::metadata(&node) {
        Ok(m) => m,
        // A new file (a VM disk to be).
        Err(e) if e.kind() == io::ErrorKind::NotFound && !device.starts_with("/dev") => {
            return Ok(Target::File(node));
        }
        Err(e) => return Err(io_err(device)(e)),
    };
    let entry = if meta.file_type().is_block_device() {
        let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
        root.join(format!("sys/dev/block/{major}:{minor}"))
    } else if meta.is_file() {
        let dev = root.join("dev").canonicalize().ok();
        let fake = node
            .canonicalize()
            .ok()
            .filter(|c| dev.is_some() && c.parent() == dev.as_deref())
            .and_then(|c| c.file_name().map(|n| root.join("sys/class/block").join(n)))
            .filter(|e| root != Path::new("/") && e.exists());
        match fake {
            Some(e) => e,
            None => return Ok(Target::File(node)),
        }
    } else {
        return Err(DeviceError::NotADisk(device.to_path_buf()));
    };
    let mut disk = read_disk(root, &entry).map_err(io_err(&entry))?;
    disk.node = node;
    Ok(Target::Disk(disk))
}

/// Every whole disk sysfs lists, with its facts; [`Disk::refusals`] tells the candidates.
pub fn list(root: &Path) -> Result<Vec<Disk>, DeviceError> {
    let dir = root.join("sys/block");
    let io_err = |source| DeviceError::Io {
        path: dir.clone(),
        source,
    };
    let mut disks = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_err)? {
        let e = e.map_err(io_err)?;
        let entry = e.path();
        let disk = read_disk(root, &entry).map_err(|source| DeviceError::Io {
            path: entry.clone(),
            source,
        })?;
        disks.push(disk);
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// `path` as seen under the sysroot: only device paths are moved there.
fn under(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) if root != Path::new("/") && path.starts_with("/dev") => root.join(rel),
        _ => path.to_path_buf(),
    }
}

fn read_attr(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn read_disk(root: &Path, entry: &Path) -> io::Result<Disk> {
    let dir = entry.canonicalize()?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A partition's sysfs directory has a `partition` file and sits inside its disk's.
    let partition_of = dir
        .join("partition")
        .exists()
        .then(|| dir.parent().and_then(|p| p.file_name()))
        .flatten()
        .map(|n| n.to_string_lossy().into_owned());
    let disk_dir = if partition_of.is_some() {
        dir.parent().unwrap_or(&dir).to_path_buf()
    } else {
        dir.clone()
    };
    let size = read_attr(&dir, "size").parse::<u64>().unwrap_or(0) * 512;
    let removable = read_attr(&disk_dir, "removable") == "1";
    let read_only = read_attr(&dir, "ro") == "1";
    let device = disk_dir.join("device");
    let model = [
        read_attr(&device, "vendor"),
        read_attr(&device, "model"),
        read_attr(&device, "name"),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    let bus = bus_of(&disk_dir);

    // Every block device of this disk: itself and its partitions, as (name, "major:minor").
    let mut members = vec![(
        disk_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        read_attr(&disk_dir, "dev"),
    )];
    let mut holders = Vec::new();
    let mut dirs = vec![disk_dir.clone()];
    for e in fs::read_dir(&disk_dir)?.flatten() {
        if e.path().join("partition").exists() {
            members.push((
                e.file_name().to_string_lossy().into_owned(),
                read_attr(&e.path(), "dev"),
            ));
            dirs.push(e.path());
        }
    }
    for d in &dirs {
        if let Ok(rd) = fs::read_dir(d.join("holders")) {
            holders.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    let mut mounts = Vec::new();
    let mut system = false;
    let mountinfo = fs::read_to_string(root.join("proc/self/mountinfo")).unwrap_or_default();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options... - fstype source superoptions
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(devno), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let source = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split(' ').nth(1))
            .unwrap_or("");
        let source_name = source.strip_prefix("/dev/").unwrap_or("");
        // btrfs reports an anonymous device number (0:N); its source names the device.
        if let Some((member, _)) = members.iter().find(|(n, d)| {
            (!d.is_empty() && d == devno) || (!source_name.is_empty() && n == source_name)
        }) {
            let point = unescape(point);
            system |= point == "/";
            mounts.push((member.clone(), point));
        }
    }
    Ok(Disk {
        path: format!("/dev/{name}"),
        node: PathBuf::from(format!("/dev/{name}")),
        name,
        size,
        removable,
        bus,
        model,
        read_only,
        partition_of,
        mounts,
        system,
        holders,
    })
}

/// The bus from the device's sysfs path: `.../usb2/2-1/...` or `.../mmc_host/mmc0/...`.
fn bus_of(disk_dir: &Path) -> Bus {
    let path = disk_dir.to_string_lossy();
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| p.starts_with("usb")) {
        Bus::Usb
    } else if parts
        .iter()
        .any(|p| *p == "mmc_host" || p.starts_with("mmc"))
    {
        Bus::Mmc
    } else if parts.contains(&"virtual") {
        Bus::Other("virtual".into())
    } else {
        let known = ["nvme", "ata", "virtio", "scsi", "host"];
        Bus::Other(
            parts
                .iter()
                .find_map(|p| known.iter().find(|k| p.starts_with(*k)))
                .map_or("internal", |k| k)
                .to_string(),
        )
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl Disk {
    /// Everything that speaks against writing to this disk.
    pub fn refusals(&self) -> Vec<Refusal> {
        let mut out = Vec::new();
        let refuse = |forceable, reason: String| Refusal { forceable, reason };
        // Never forceable: writing under a mounted filesystem corrupts both it and the new
        // image, and the system disk is the machine the user is working on. coreos-installer
        // refuses busy devices the same way, with no override.
        if self.system {
            out.push(refuse(
                false,
                format!("{} holds the running system's root filesystem", self.path),
            ));
        } else if !self.mounts.is_empty() {
            let list: Vec<String> = self
                .mounts
                .iter()
                .map(|(n, p)| format!("/dev/{n} on {p}"))
                .collect();
            let unmount: Vec<String> = self
                .mounts
                .iter()
                .map(|(n, _)| format!("udisksctl unmount -b /dev/{n}"))
                .collect();
            out.push(refuse(
                false,
                format!(
                    "{} is mounted ({}): unmount it first ({})",
                    self.path,
                    list.join(", "),
                    unmount.join("; ")
                ),
            ));
        }
        if !self.holders.is_empty() {
            out.push(refuse(
                false,
                format!(
                    "{} is in use by {} (device mapper, RAID or encryption): stop that first",
                    self.path,
                    self.holders.join(", ")
                ),
            ));
        }
        if self.read_only {
            out.push(refuse(
                false,
                format!("{} is read-only (the card's lock switch?)", self.path),
            ));
        }
        if let Some(disk) = &self.partition_of {
            out.push(refuse(
                true,
                format!(
                    "{} is a partition of /dev/{disk}: an image is written to the whole disk, \
                     /dev/{disk}",
                    self.path
                ),
            ));
        }
        if !self.removable && !matches!(self.bus, Bus::Usb | Bus::Mmc) {
            out.push(refuse(
                true,
                format!(
                    "{} is a fixed {} disk, not a removable, USB or SD card drive",
                    self.path, self.bus
                ),
            ));
        }
        if self.size == 0 {
            out.push(refuse(
                false,
                format!("{} has no medium (size 0)", self.path),
            ));
        }
        out
    }

    /// One line for the user: "/dev/sdb  29.7 GiB  usb  SanDisk Ultra".
    pub fn describe(&self) -> String {
        format!(
            "{}  {}  {}{}  {}",
            self.path,
            human_size(self.size),
            self.bus,
            if self.removable { ", removable" } else { "" },
            if self.model.is_empty() {
                "(no model name)"
            } else {
                &self.model
            }
        )
    }
}
