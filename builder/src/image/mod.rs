//! An image: its partition table, the filesystems on its partitions, and the mount view
//! given by the root filesystem's own /etc/fstab.
//!
//! Every path handed to `Image` is a path as the booted system would see it
//! ("/boot/firmware/cmdline.txt"); the mount view decides which partition and which path inside
//! that filesystem it lands on, and symlinks are followed the way the kernel would, across
//! mount points.

mod free;
pub mod fstab;
mod grow;
mod lock;
mod probe;
mod readable;

pub use free::{Cursor, FreeSpace};
pub use grow::{Grown, grow};
pub use lock::{ImageLock, LockError};
pub use readable::Readable;

use crate::disk::{self, Partition, PartitionTable};
use crate::fs::ext4::Ext4Fs;
use crate::fs::fat::FatFs;
use crate::fs::path::{join, normalize, split, writable};
use crate::fs::{DirEntry, FileType, Filesystem, FsError, FsInfo, FsKind, Op, Stat};
use fstab::Spec;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How many symlinks one lookup may follow (Linux's limit).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Disk {
        path: String,
        source: disk::DiskError,
    },
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("no root filesystem found: no ext4 partition holds /etc (partitions: {0})")]
    NoRoot(String),
    #[error("/etc/fstab line {line}: {detail}")]
    Fstab { line: usize, detail: String },
    #[error("too many levels of symbolic links resolving {0}")]
    SymlinkLoop(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One partition and what imagegen found on it.
pub struct Slot {
    pub partition: Partition,
    pub fs_kind: Option<FsKind>,
    /// ext4 superblock last-write time, for the default timestamp of edits.
    pub written_at: Option<i64>,
    fs: Option<Box<dyn Filesystem>>,
}

/// A mount of the mount view: `point` (normalized, "/" for root) is served by `slot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: String,
    pub slot: usize,
}

/// Where an image path lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub slot: usize,
    /// Normalized path inside that filesystem.
    pub path: String,
}

pub struct Image {
    path: PathBuf,
    table: PartitionTable,
    slots: Vec<Slot>,
    /// Longest mount point first, so the first prefix match wins.
    mounts: Vec<Mount>,
    /// fstab entries that name a partition this image does not have (e.g. a USB disk).
    pub unresolved_mounts: Vec<String>,
    /// Held from the first change (or from `open_for_write`) until dropped.
    lock: Option<ImageLock>,
}

/// A compressed image would fail as "no partition table"; say what it is and what to do.
fn compressed_hint(path: &Path) -> Result<(), ImageError> {
    use crate::fetch::Format;
    let Ok(format) = Format::of_file(path) else {
        return Ok(());
    };
    let (name, tool) = match format {
        Format::Xz => ("xz", "xz -dk"),
        Format::Zstd => ("zstd", "zstd -d"),
        Format::Gzip => ("gzip", "gzip -dk"),
        Format::Qcow2 => ("qcow2", "qemu-img convert -O raw"),
        Format::Raw => return Ok(()),
    };
    Err(ImageError::Unsupported(format!(
        "compressed image ({name}): decompress it first with `{tool} {}` \
         (`imagegen flash` writes it to a card as it is)",
        path.display()
    )))
}

impl Image {
    /// Takes the image's write lock (waiting for another imagegen to finish with it), then
    /// opens it: what is read and what is changed is then the same image.
    pub fn open_for_write(path: &Path) -> Result<Image, ImageError> {
        let lock = ImageLock::acquire(path)?;
        let mut image = Image::open(path)?;
        image.lock = Some(lock);
        Ok(image)
    }

    /// Opens an image, reads its partition table, probes each partition, finds the root
    /// filesystem and builds the mount view. Nothing is written, and no lock is taken until
    /// the first `apply`.
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        let display = path.display().to_string();
        compressed_hint(path)?;
        let mut file = File::open(path)?;
        let table = disk::read(&mut file).map_err(|source| ImageError::Disk {
            path: display.clone(),
            source,
        })?;
        let mut slots = Vec::with_capacity(table.partitions.len());
        for p in &table.partitions {
            let found = probe::probe(&mut file, p.start, p.size)?;
            slots.push(Slot {
                partition: p.clone(),
                fs_kind: found.kind,
                written_at: found.written_at,
                fs: None,
            });
        }
        let mut image = Image {
            path: path.to_path_buf(),
            table,
            slots,
            mounts: Vec::new(),
            unresolved_mounts: Vec::new(),
            lock: None,
        };
        image.build_mount_view()?;
        Ok(image)
    }

    pub fn table(&self) -> &PartitionTable {
        &self.table
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The mount point of a slot, if the mount view has one.
    pub fn mount_point(&self, slot: usize) -> Option<&str> {
        self.mounts
            .iter()
            .find(|m| m.slot == slot)
            .map(|m| m.point.as_str())
    }

    /// The filesystem of a slot, opened on first use.
    pub fn fs(&mut self, slot: usize) -> Result<&mut dyn Filesystem, ImageError> {
        let s = &mut self.slots[slot];
        if s.fs.is_none() {
            let (offset, len) = (s.partition.start, s.partition.size);
            let fs: Box<dyn Filesystem> = match s.fs_kind {
                Some(FsKind::Ext4) => Box::new(Ext4Fs::open(&self.path, offset, len)?),
                Some(FsKind::Fat) => Box::new(FatFs::open(&self.path, offset, len)?),
                None => {
                    return Err(ImageError::Unsupported(format!(
                        "partition {} holds no filesystem imagegen can read (only ext4 and FAT)",
                        s.partition.number
                    )));
                }
            };
            s.fs = Some(fs);
        }
        Ok(s.fs.as_deref_mut().expect("opened above"))
    }

    pub fn info(&mut self, slot: usize) -> Result<FsInfo, ImageError> {
        Ok(self.fs(slot)?.info()?)
    }

    /// The default time for edits when SOURCE_DATE_EPOCH is not set: the newest superblock
    /// write time of the image's ext4 filesystems, so the same edits on the same image give the
    /// same bytes without any setting.
    pub fn intrinsic_epoch(&self) -> i64 {
        self.slots
            .iter()
            .filter_map(|s| s.written_at)
            .max()
            .unwrap_or(0)
    }

    fn build_mount_view(&mut self) -> Result<(), ImageError> {
        let ext4: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].fs_kind == Some(FsKind::Ext4))
            .collect();
        // The root holds /etc; when several do (a rescue copy, a BOOT partition with stray
        // files), prefer the one with an fstab that mounts itself on "/".
        let mut candidates = Vec::new();
        for &i in &ext4 {
            if self.fs(i)?.lstat("/etc")?.map(|s| s.file_type) == Some(FileType::Directory) {
                candidates.push(i);
            }
        }
        let Some(&first) = candidates.first() else {
            let parts: Vec<String> = self
                .slots
                .iter()
                .map(|s| {
                    let kind = s.fs_kind.map_or("unknown".to_string(), |k| k.to_string());
                    format!("p{} {kind}", s.partition.number)
                })
                .collect();
            // An image with only a FAT partition (or nothing readable) still has a mount view:
            // its first filesystem at "/". The editing commands then address it directly.
            if let Some(i) = self.slots.iter().position(|s| s.fs_kind.is_some()) {
                self.mounts = vec![Mount {
                    point: "/".into(),
                    slot: i,
                }];
                return Ok(());
            }
            return Err(ImageError::NoRoot(parts.join(", ")));
        };
        let mut chosen = None;
        for &i in &candidates {
            let Some(entries) = self.read_fstab(i)? else {
                continue;
            };
            let mounts = self.mounts_from_fstab(&entries)?;
            if mounts.0.iter().any(|m| m.point == "/" && m.slot == i) {
                chosen = Some((i, mounts));
                break;
            }
            if chosen.is_none() {
                chosen = Some((i, mounts));
            }
        }
        let (root, (mut mounts, unresolved)) = chosen.unwrap_or((first, (Vec::new(), Vec::new())));
        mounts.retain(|m| m.point != "/");
        mounts.push(Mount {
            point: "/".into(),
            slot: root,
        });
        mounts.sort_by(|a, b| {
            b.point
                .len()
                .cmp(&a.point.len())
                .then(a.point.cmp(&b.point))
        });
        self.mounts = mounts;
        self.unresolved_mounts = unresolved;
        Ok(())
    }

    fn read_fstab(&mut self, slot: usize) -> Result<Option<Vec<fstab::FstabEntry>>, ImageError> {
        let fs = self.fs(slot)?;
        match fs.lstat("/etc/fstab")? {
            Some(st) if st.file_type == FileType::Regular => {}
            _ => return Ok(None),
        }
        let bytes = fs.read_file("/etc/fstab")?;
        let text = String::from_utf8_lossy(&bytes);
        fstab::parse(&text).map(Some).map_err(|e| match e {
            fstab::FstabError::Line { line, reason } => ImageError::Fstab {
                line,
                detail: reason,
            },
        })
    }

    /// Maps fstab entries to partitions. Entries for filesystems imagegen does not edit
    /// (proc, tmpfs, swap, network) are skipped; entries naming a partition this image does not
    /// have are reported back.
    #[allow(clippy::type_complexity)]
    fn mounts_from_fstab(
        &mut self,
        entries: &[fstab::FstabEntry],
    ) -> Result<(Vec<Mount>, Vec<String>), ImageError> {
        let mut mounts = Vec::new();
        let mut unresolved = Vec::new();
        for e in entries {
            if !e.mount_point.starts_with('/') || matches!(e.spec, Spec::Other(_)) {
                continue;
            }
            match self.find_slot(&e.spec)? {
                Some(slot) => {
                    let point = normalize(&e.mount_point)?;
                    mounts.push(Mount { point, slot });
                }
                None => unresolved.push(format!("{} (line {})", e.mount_point, e.line)),
            }
        }
        Ok((mounts, unresolved))
    }

    fn find_slot(&mut self, spec: &Spec) -> Result<Option<usize>, ImageError> {
        for i in 0..self.slots.len() {
            let p = &self.slots[i].partition;
            let hit = match spec {
                Spec::PartUuid(u) => p.partuuid.eq_ignore_ascii_case(u),
                Spec::PartLabel(l) => p.name.as_deref() == Some(l.as_str()),
                Spec::Device(dev) => device_partition_number(dev) == Some(p.number),
                Spec::Uuid(_) | Spec::Label(_) => {
                    if self.slots[i].fs_kind.is_none() {
                        continue;
                    }
                    let info = self.info(i)?;
                    match spec {
                        Spec::Uuid(u) => info.uuid.is_some_and(|x| x.eq_ignore_ascii_case(u)),
                        // FAT labels are stored upper-case by most tools, and the kernel's
                        // by-label links keep what is stored; compare as blkid users expect.
                        Spec::Label(l) => info.label.is_some_and(|x| match info.kind {
                            FsKind::Fat => x.eq_ignore_ascii_case(l),
                            FsKind::Ext4 => x == *l,
                        }),
                        _ => unreachable!("matched above"),
                    }
                }
                Spec::Other(_) => false,
            };
            if hit {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// The mount that serves a normalized image path, and the path inside it.
    pub fn locate(&self, path: &str) -> Location {
        for m in &self.mounts {
            if m.point == "/" {
                return Location {
                    slot: m.slot,
                    path: path.to_string(),
                };
            }
            if let Some(rest) = path.strip_prefix(m.point.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return Location {
                    slot: m.slot,
                    path: if rest.is_empty() {
                        "/".into()
                    } else {
                        rest.into()
                    },
                };
            }
        }
        unreachable!("the mount view always has a mount on /")
    }

    /// Resolves an image path through the mount view, following symlinks in every component
    /// but the last (and the last too when `follow_last`). Returns the normalized image path
    /// it ends on; it may not exist.
    pub fn resolve(&mut self, path: &str, follow_last: bool) -> Result<String, ImageError> {
        let start = normalize(path)?;
        let mut todo: Vec<String> = components(&start);
        todo.reverse();
        let mut cur = String::from("/");
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur = split(&cur).map_or("/".into(), |(p, _)| p.to_string());
                continue;
            }
            let next = join(&cur, &c);
            let last = todo.is_empty();
            if last && !follow_last {
                cur = next;
                break;
            }
            let loc = self.locate(&next);
            let st = self.fs(loc.slot)?.lstat(&loc.path)?;
            match st {
                // Nothing below a missing directory can be a symlink: the rest of the path is
                // taken as it is, and whoever uses it decides whether missing is an error
                // (mkdir -p creates it, cat reports it).
                None => {
                    cur = next;
                    while let Some(c) = todo.pop() {
                        cur = if c == ".." {
                            split(&cur).map_or("/".into(), |(p, _)| p.to_string())
                        } else {
                            join(&cur, &c)
                        };
                    }
                }
                Some(st) if st.file_type == FileType::Symlink => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        return Err(ImageError::SymlinkLoop(start));
                    }
                    let target = self.fs(loc.slot)?.read_link(&loc.path)?;
                    if target.starts_with('/') {
                        cur = "/".into();
                    }
                    let mut parts = components_raw(&target);
                    parts.reverse();
                    todo.extend(parts);
                }
                Some(st) if !last && st.file_type != FileType::Directory => {
                    return Err(FsError::NotADirectory(next).into());
                }
                Some(_) => cur = next,
            }
        }
        Ok(cur)
    }

    pub fn lstat(&mut self, path: &str) -> Result<Option<Stat>, ImageError> {
        let p = self.resolve(path, false)?;
        let loc = self.locate(&p);
        Ok(self.fs(loc.slot)?.lstat(&loc.path)?)
    }

    /// Lists a directory (following symlinks). Mount points inside it show what is mounted.
    pub fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, ImageError> {
        let p = self.resolve(path, true)?;
        let loc = self.locate(&p);
        let mut entries = self.fs(loc.slot)?.read_dir(&loc.path)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Streams a file (following symlinks) into `out`.
    pub fn read_to(&mut self, path: &str, out: &mut dyn Write) -> Result<u64, ImageError> {
        let p = self.resolve(path, true)?;
        let loc = self.locate(&p);
        let fs = self.fs(loc.slot)?;
        match fs.lstat(&loc.path)? {
            None => Err(FsError::NotFound(p).into()),
            Some(st) if st.file_type == FileType::Directory => Err(FsError::IsADirectory(p).into()),
            Some(_) => Ok(fs.read_to(&loc.path, out)?),
        }
    }

    /// The first `max` bytes of a file (following symlinks), without reading the rest.
    pub fn read_head(&mut self, path: &str, max: usize) -> Result<Vec<u8>, ImageError> {
        let p = self.resolve(path, true)?;
        let loc = self.locate(&p);
        Ok(self.fs(loc.slot)?.read_head(&loc.path, max)?)
    }

    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ImageError> {
        let mut buf = Vec::new();
        self.read_to(path, &mut buf)?;
        Ok(buf)
    }

    /// Applies ops given in image paths. Each op's path is resolved through the mount view
    /// (symlinks in parent components are followed, the last component is not), the ops are
    /// grouped per filesystem in their original order, and each group is one batch.
    pub fn apply(&mut self, ops: &[Op], epoch: i64) -> Result<(), ImageError> {
        if self.lock.is_none() {
            self.lock = Some(ImageLock::acquire(&self.path)?);
        }
        let mut batches: BTreeMap<usize, Vec<Op>> = BTreeMap::new();
        for op in ops {
            writable(op.path())?;
            let p = self.resolve(op.path(), false)?;
            let loc = self.locate(&p);
            if loc.path == "/"
                && !matches!(op, Op::SetMeta { .. } | Op::Mkdir { parents: true, .. })
            {
                return Err(FsError::InvalidPath {
                    path: op.path().to_string(),
                    reason: "is the root of a filesystem".into(),
                }
                .into());
            }
            let mut op = op.clone();
            set_path(&mut op, loc.path);
            batches.entry(loc.slot).or_default().push(op);
        }
        for (slot, batch) in batches {
            self.fs(slot)?.apply(&batch, epoch)?;
        }
        Ok(())
    }

    /// The detected operating system: the fields of /etc/os-release (or /usr/lib/os-release).
    pub fn os_release(&mut self) -> Result<Option<BTreeMap<String, String>>, ImageError> {
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            match self.read_file(p) {
                Ok(bytes) => return Ok(Some(parse_os_release(&String::from_utf8_lossy(&bytes)))),
                Err(ImageError::Fs(FsError::NotFound(_))) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

fn set_path(op: &mut Op, new: String) {
    match op {
        Op::Mkdir { path, .. }
        | Op::WriteFile { path, .. }
        | Op::Symlink { path, .. }
        | Op::Remove { path }
        | Op::SetMeta { path, .. } => *path = new,
    }
}

fn components(normalized: &str) -> Vec<String> {
    normalized
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// Components of a symlink target: like `components` but keeps "..", drops ".".
fn components_raw(target: &str) -> Vec<String> {
    target
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

/// `/dev/sda2`, `/dev/mmcblk0p2`, `/dev/nvme0n1p2`, `/dev/vda2` -> 2.
fn device_partition_number(dev: &str) -> Option<u32> {
    let name = dev.strip_prefix("/dev/")?;
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let (base, num) = name.split_at(name.len() - digits);
    // mmcblk0 / nvme0n1 / loop0 end in a digit, so their partitions carry a 'p'.
    let disk_ends_in_digit =
        base.starts_with("mmcblk") || base.starts_with("nvme") || base.starts_with("loop");
    if disk_ends_in_digit && !base.ends_with('p') {
        return None;
    }
    num.parse().ok()
}

fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_map_to_partition_numbers() {
        assert_eq!(device_partition_number("/dev/sda2"), Some(2));
        assert_eq!(device_partition_number("/dev/vda15"), Some(15));
        assert_eq!(device_partition_number("/dev/mmcblk0p2"), Some(2));
        assert_eq!(device_partition_number("/dev/nvme0n1p1"), Some(1));
        assert_eq!(device_partition_number("/dev/mmcblk0"), None);
        assert_eq!(device_partition_number("/dev/sda"), None);
        assert_eq!(device_partition_number("proc"), None);
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let m = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n# c\nVERSION_ID='12'\n",
        );
        assert_eq!(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["VERSION_ID"], "12");
    }
}
