//! ext4: read in process through ext4-view, write through e2fsprogs (debugfs) on the
//! whole-disk image at the partition offset.
//!
//! A batch is checked against the filesystem first (feature gate, `e2fsck -fn`, parents,
//! types, space), then run as one debugfs script (what it replaces is deleted by a second run
//! once the first succeeded), then read back through a fresh ext4-view handle and checked with
//! `e2fsck -fn` again.

mod debugfs;
mod descriptors;
mod e2fsprogs;
mod free;
mod grow;
mod read;
mod superblock;
mod verify;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use ext4_view::Ext4;

pub use e2fsprogs::e2fsprogs_version;
pub use free::free_ranges;
pub use grow::grow;

use super::{DirEntry, Filesystem, FsError, FsInfo, FsKind, Op, Stat, path};
use debugfs::Plan;
use superblock::Superblock;

pub struct Ext4Fs {
    image: PathBuf,
    offset: u64,
    len: u64,
    view: Ext4,
    sb: Superblock,
    /// Checked once, on the first write.
    version_checked: bool,
}

impl Ext4Fs {
    /// Opens the ext4 filesystem in `[offset, offset + len)` of the whole-disk `image` for
    /// reading. Features that only block writing are refused by `apply`.
    pub fn open(image: &Path, offset: u64, len: u64) -> Result<Ext4Fs, FsError> {
        let file = File::open(image)?;
        let sb = Superblock::read(&file, offset)?;
        fits(&sb, len)?;
        // ext4-view replays a journal in memory, but fails on some it cannot replay; then the
        // advice to recover the journal is the useful one.
        let view = read::load(file, offset, len).map_err(|e| match sb.recovery_gate() {
            Err(recover) => recover,
            Ok(()) => e,
        })?;
        Ok(Ext4Fs {
            image: image.to_path_buf(),
            offset,
            len,
            view,
            sb,
            version_checked: false,
        })
    }

    /// debugfs changed the image behind ext4-view's caches: start over from the superblock.
    fn reload(&mut self) -> Result<(), FsError> {
        let file = File::open(&self.image)?;
        self.sb = Superblock::read(&file, self.offset)?;
        fits(&self.sb, self.len)?;
        self.view = read::load(file, self.offset, self.len)?;
        Ok(())
    }
}

fn fits(sb: &Superblock, len: u64) -> Result<(), FsError> {
    if sb.size_bytes() > len {
        return Err(FsError::Corrupt(format!(
            "the filesystem ({} bytes) is larger than its partition ({len} bytes); if it was \
             just grown, open it again with the new length",
            sb.size_bytes()
        )));
    }
    Ok(())
}

impl Filesystem for Ext4Fs {
    fn kind(&self) -> FsKind {
        FsKind::Ext4
    }

    fn info(&mut self) -> Result<FsInfo, FsError> {
        let bs = u64::from(self.sb.block_size);
        Ok(FsInfo {
            kind: FsKind::Ext4,
            variant: self.sb.variant().into(),
            label: self.sb.label_string(),
            uuid: Some(self.sb.uuid_string()),
            size_bytes: self.sb.blocks_count * bs,
            free_bytes: self.sb.free_blocks * bs,
            block_size: self.sb.block_size,
            features: self.sb.feature_names(),
        })
    }

    fn lstat(&mut self, path: &str) -> Result<Option<Stat>, FsError> {
        read::lstat(&self.view, &path::normalize(path)?)
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>, FsError> {
        read::read_dir(&self.view, &path::normalize(path)?)
    }

    fn read_to(&mut self, path: &str, out: &mut dyn Write) -> Result<u64, FsError> {
        read::read_to(&self.view, &path::normalize(path)?, out)
    }

    fn read_head(&mut self, path: &str, max: usize) -> Result<Vec<u8>, FsError> {
        read::read_head(&self.view, &path::normalize(path)?, max)
    }

    fn read_link(&mut self, path: &str) -> Result<String, FsError> {
        read::read_link(&self.view, &path::normalize(path)?)
    }

    fn apply(&mut self, ops: &[Op], epoch: i64) -> Result<(), FsError> {
        if ops.is_empty() {
            return Ok(());
        }
        if !self.version_checked {
            e2fsprogs_version()?;
            self.version_checked = true;
        }
        // The image may have changed since open (another handle, a grow): gate on what is
        // there now.
        self.reload()?;
        self.sb.write_gate()?;
        if self.sb.has_journal() {
            e2fsprogs::journal_gate(&self.image, self.offset)?;
        }
        e2fsprogs::precheck(&self.image, self.offset, epoch)?;
        let plan = Plan::new(&self.view, &self.sb, ops, epoch)?;
        plan.check_space(&self.sb)?;
        if plan.is_empty() {
            return Ok(());
        }
        let ran = plan.run(&self.image, self.offset, epoch);
        self.reload()?;
        ran?;
        verify::verify(&self.view, &plan)?;
        e2fsprogs::check(&self.image, self.offset, epoch)
    }
}
