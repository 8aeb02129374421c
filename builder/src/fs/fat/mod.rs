//! FAT16/FAT32 through fatfs 0.3.6, in place on the whole-disk image at the partition's offset.
//!
//! Files are written with fatfs. Its `create_dir` corrupts FAT32 (rust-fatfs #117), so
//! directories are made with mtools' `mmd` while fatfs has the image closed. Every batch is
//! checked with `fsck.fat -n` before and after, and read back through a fresh fatfs handle.

mod free;
mod fsck;
mod mtools;
mod plan;
mod time;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fatfs::{FatType, FileAttributes, FsOptions};

use super::{Content, DirEntry, FileType, FsError, FsInfo, FsKind, Stat};
use super::{Filesystem, Op, path};
use crate::io::compare::CompareWriter;
use crate::io::window::Window;
pub use free::free_ranges;
use plan::{Expect, Step};

type Fat = fatfs::FileSystem<Window>;
type FatDir<'a> = fatfs::Dir<'a, Window>;
type FatEntry<'a> = fatfs::DirEntry<'a, Window>;

/// A FAT16 or FAT32 filesystem in [offset, offset+len) of a disk image. It keeps no handle
/// open between calls: every call opens the image afresh, so external tools can take turns.
#[derive(Debug)]
pub struct FatFs {
    image: PathBuf,
    offset: u64,
    len: u64,
}

impl FatFs {
    /// Opens the FAT filesystem of the partition at `offset` (bytes) spanning `len` bytes.
    pub fn open(image: &Path, offset: u64, len: u64) -> Result<FatFs, FsError> {
        if image.to_string_lossy().contains("@@") {
            return Err(FsError::Unsupported(format!(
                "{}: mtools cannot address an image whose path contains \"@@\"; rename it",
                image.display()
            )));
        }
        let fs = FatFs {
            image: image.to_path_buf(),
            offset,
            len,
        };
        let boot = fs.boot_sector()?;
        if boot.size > len {
            return Err(FsError::Corrupt(format!(
                "the FAT boot sector says the filesystem is {} bytes, but its partition is {len}",
                boot.size
            )));
        }
        let fat = fs.mount(false)?;
        if fat.fat_type() == FatType::Fat12 {
            return Err(FsError::Unsupported(
                "FAT12 filesystems are not supported; vendor boot partitions are FAT16 or FAT32"
                    .into(),
            ));
        }
        Ok(fs)
    }

    fn mount(&self, write: bool) -> Result<Fat, FsError> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.image)?;
        // Reading must never change a byte: fatfs only writes access dates when asked to.
        let options = FsOptions::new()
            .update_accessed_date(false)
            .time_provider(&time::BATCH_CLOCK);
        fatfs::FileSystem::new(Window::new(file, self.offset, self.len), options)
            .map_err(|e| FsError::Corrupt(format!("not a FAT filesystem fatfs can read: {e}")))
    }

    /// The few boot sector fields fatfs does not expose.
    fn boot_sector(&self) -> Result<BootSector, FsError> {
        let mut b = [0u8; 512];
        File::open(&self.image)?
            .read_exact_at(&mut b, self.offset)
            .map_err(|e| FsError::Corrupt(format!("cannot read the FAT boot sector: {e}")))?;
        let bytes_per_sector = u64::from(u16::from_le_bytes([b[11], b[12]]));
        let total16 = u64::from(u16::from_le_bytes([b[19], b[20]]));
        let total32 = u64::from(u32::from_le_bytes([b[32], b[33], b[34], b[35]]));
        let sectors = if total16 != 0 { total16 } else { total32 };
        Ok(BootSector {
            size: sectors * bytes_per_sector,
        })
    }

    fn fsck(&self) -> Result<Result<(), String>, FsError> {
        fsck::check(&self.image, self.offset, self.len)
    }

    /// Runs the steps in order, with fatfs open for writing only between directory creations.
    fn run(&self, steps: &[Step]) -> Result<(), FsError> {
        let mut fat: Option<Fat> = None;
        for step in steps {
            match step {
                Step::Mkdirs { dirs, mtime } => {
                    if let Some(open) = fat.take() {
                        open.unmount()?;
                    }
                    mtools::mkdirs(&self.image, self.offset, dirs, *mtime)?;
                }
                Step::Write {
                    path,
                    content,
                    mtime,
                } => {
                    let fat = match &mut fat {
                        Some(open) => open,
                        None => fat.insert(self.mount(true)?),
                    };
                    write_file(fat, path, content, *mtime)?;
                }
                Step::Remove { path } => {
                    let fat = match &mut fat {
                        Some(open) => open,
                        None => fat.insert(self.mount(true)?),
                    };
                    let root = fat.root_dir();
                    if let Some(Found::Entry(e)) = lookup(&root, path)?
                        && !e.is_dir()
                    {
                        scrub(&mut e.to_file())?;
                    }
                    root.remove(rel(path))?;
                }
            }
        }
        if let Some(open) = fat.take() {
            open.unmount()?;
        }
        Ok(())
    }

    /// Reads every change back through a fresh handle.
    fn verify(&self, expect: &[(String, Expect)]) -> Result<(), FsError> {
        let fat = self.mount(false)?;
        let root = fat.root_dir();
        for (p, want) in expect {
            let fail = |detail: String| FsError::Verify {
                path: p.clone(),
                detail,
            };
            let found = lookup(&root, p)?;
            match (want, found.as_ref().map(|f| (f, f.stat()))) {
                (Expect::Absent, None) => {}
                (Expect::Absent, Some(_)) => return Err(fail("still exists".into())),
                (_, None) => return Err(fail("missing".into())),
                (Expect::Dir { mtime }, Some((_, st))) => {
                    if st.file_type != FileType::Directory {
                        return Err(fail("is not a directory".into()));
                    }
                    if let Some(t) = mtime.filter(|t| time::representable(*t) != st.mtime) {
                        return Err(fail(format!("mtime {} instead of {t}", st.mtime)));
                    }
                }
                (Expect::File { content, mtime }, Some((found, st))) => {
                    let Found::Entry(e) = found else {
                        return Err(fail("is the root directory".into()));
                    };
                    if st.file_type != FileType::Regular {
                        return Err(fail("is not a regular file".into()));
                    }
                    let t = time::representable(*mtime);
                    if st.mtime != t {
                        return Err(fail(format!("mtime {} instead of {t}", st.mtime)));
                    }
                    let mut cmp = CompareWriter::new(content_reader(content)?);
                    io::copy(&mut e.to_file(), &mut cmp)
                        .map_err(|e| fail(format!("reads back differently: {e}")))?;
                    cmp.finish().map_err(|e| fail(e.to_string()))?;
                }
            }
        }
        if fat.read_status_flags()?.dirty() {
            return Err(FsError::Verify {
                path: "/".into(),
                detail: "the FAT dirty flag is still set".into(),
            });
        }
        Ok(())
    }
}

struct BootSector {
    size: u64,
}

impl Filesystem for FatFs {
    fn kind(&self) -> FsKind {
        FsKind::Fat
    }

    fn info(&mut self) -> Result<FsInfo, FsError> {
        let size_bytes = self.boot_sector()?.size;
        let fat = self.mount(false)?;
        let stats = fat.stats()?;
        let variant = match fat.fat_type() {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        };
        // Like blkid: the root directory's volume label entry wins over the boot sector's copy.
        let label = fat
            .read_volume_label_from_root_dir()?
            .or_else(|| Some(fat.volume_label()).filter(|l| l.trim() != "NO NAME"))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty());
        let id = fat.volume_id();
        Ok(FsInfo {
            kind: FsKind::Fat,
            variant: variant.into(),
            label,
            uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff)),
            size_bytes,
            free_bytes: u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()),
            block_size: stats.cluster_size(),
            features: Vec::new(),
        })
    }

    fn lstat(&mut self, p: &str) -> Result<Option<Stat>, FsError> {
        let p = path::normalize(p)?;
        let fat = self.mount(false)?;
        Ok(lookup(&fat.root_dir(), &p)?.map(|f| f.stat()))
    }

    fn read_dir(&mut self, p: &str) -> Result<Vec<DirEntry>, FsError> {
        let p = path::normalize(p)?;
        let fat = self.mount(false)?;
        let dir = open_dir(&fat.root_dir(), &p)?;
        list(&dir)
    }

    fn read_to(&mut self, p: &str, out: &mut dyn Write) -> Result<u64, FsError> {
        let p = path::normalize(p)?;
        let fat = self.mount(false)?;
        let root = fat.root_dir();
        match lookup(&root, &p)? {
            None => Err(FsError::NotFound(p)),
            Some(Found::Root) => Err(FsError::IsADirectory(p)),
            Some(Found::Entry(e)) if e.is_dir() => Err(FsError::IsADirectory(p)),
            Some(Found::Entry(e)) => Ok(io::copy(&mut e.to_file(), out)?),
        }
    }

    fn read_head(&mut self, p: &str, max: usize) -> Result<Vec<u8>, FsError> {
        let p = path::normalize(p)?;
        let fat = self.mount(false)?;
        let root = fat.root_dir();
        match lookup(&root, &p)? {
            None => Err(FsError::NotFound(p)),
            Some(Found::Root) => Err(FsError::IsADirectory(p)),
            Some(Found::Entry(e)) if e.is_dir() => Err(FsError::IsADirectory(p)),
            Some(Found::Entry(e)) => {
                let mut head = Vec::with_capacity(max);
                e.to_file().take(max as u64).read_to_end(&mut head)?;
                Ok(head)
            }
        }
    }

    fn read_link(&mut self, p: &str) -> Result<String, FsError> {
        match self.lstat(p)? {
            Some(_) => Err(FsError::NotASymlink(p.to_string())),
            None => Err(FsError::NotFound(p.to_string())),
        }
    }

    /// Entries the batch creates or replaces get the op's `meta.mtime` as creation, access and
    /// modification time; directories whose entries change get `epoch` as modification time.
    fn apply(&mut self, ops: &[Op], epoch: i64) -> Result<(), FsError> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.mount(false)?.read_status_flags()?.dirty() {
            return Err(FsError::Unsupported(
                "the FAT filesystem is marked dirty (not cleanly unmounted); repair it with \
                 fsck.fat -a on a copy of the partition, or use a fresh image"
                    .into(),
            ));
        }
        if let Err(report) = self.fsck()? {
            return Err(FsError::Corrupt(format!(
                "fsck.fat -n finds problems before any change, so imagegen leaves this FAT \
                 filesystem alone; repair the source image or use a fresh one:\n{report}"
            )));
        }
        let plan = plan::plan(&self.mount(false)?, ops)?;
        {
            let _now = time::BatchTime::set(epoch);
            self.run(&plan.steps)?;
        }
        self.verify(&plan.expect)?;
        if let Err(report) = self.fsck()? {
            return Err(FsError::Verify {
                path: "/".into(),
                detail: format!("fsck.fat -n finds problems after the changes:\n{report}"),
            });
        }
        Ok(())
    }
}

/// What a path resolves to. The root directory has no entry of its own.
enum Found<'a> {
    Root,
    Entry(FatEntry<'a>),
}

impl Found<'_> {
    fn stat(&self) -> Stat {
        match self {
            // FAT keeps no times for the root directory.
            Found::Root => dir_stat(0),
            Found::Entry(e) => entry_stat(e),
        }
    }

    fn is_dir(&self) -> bool {
        match self {
            Found::Root => true,
            Found::Entry(e) => e.is_dir(),
        }
    }
}

fn dir_stat(mtime: i64) -> Stat {
    Stat {
        file_type: FileType::Directory,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime,
    }
}

fn entry_stat(e: &FatEntry) -> Stat {
    let mtime = time::from_dos(e.modified());
    if e.is_dir() {
        return dir_stat(mtime);
    }
    let read_only = e.attributes().contains(FileAttributes::READ_ONLY);
    Stat {
        file_type: FileType::Regular,
        mode: if read_only { 0o444 } else { 0o644 },
        uid: 0,
        gid: 0,
        size: e.len(),
        mtime,
    }
}

/// fatfs wants paths relative to the root directory.
fn rel(p: &str) -> &str {
    p.trim_start_matches('/')
}

/// FAT compares names without regard to case, by the long name or the 8.3 alias.
fn same_name(e: &FatEntry, name: &str) -> bool {
    let want = name.to_uppercase();
    e.file_name().to_uppercase() == want || e.short_file_name().to_uppercase() == want
}

fn find<'a>(dir: &FatDir<'a>, name: &str) -> io::Result<Option<FatEntry<'a>>> {
    for e in dir.iter() {
        let e = e?;
        if same_name(&e, name) {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// Resolves a normalized path; `None` when it or a parent does not exist (or a parent is a
/// file).
fn lookup<'a>(root: &FatDir<'a>, p: &str) -> io::Result<Option<Found<'a>>> {
    let mut found = Found::Root;
    for name in rel(p).split('/').filter(|c| !c.is_empty()) {
        let dir = match &found {
            Found::Root => root.clone(),
            Found::Entry(e) if e.is_dir() => e.to_dir(),
            Found::Entry(_) => return Ok(None),
        };
        match find(&dir, name)? {
            Some(e) => found = Found::Entry(e),
            None => return Ok(None),
        }
    }
    Ok(Some(found))
}

fn open_dir<'a>(root: &FatDir<'a>, p: &str) -> Result<FatDir<'a>, FsError> {
    match lookup(root, p)? {
        None => Err(FsError::NotFound(p.to_string())),
        Some(Found::Root) => Ok(root.clone()),
        Some(Found::Entry(e)) if e.is_dir() => Ok(e.to_dir()),
        Some(Found::Entry(_)) => Err(FsError::NotADirectory(p.to_string())),
    }
}

fn list(dir: &FatDir) -> Result<Vec<DirEntry>, FsError> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let name = e.file_name();
        if name != "." && name != ".." {
            out.push(DirEntry {
                stat: entry_stat(&e),
                name,
            });
        }
    }
    Ok(out)
}

/// Creates or replaces `p` (whose parent exists) with `content`, every time field at `mtime`.
fn write_file(fat: &Fat, p: &str, content: &Content, mtime: i64) -> Result<(), FsError> {
    let mut file = fat.root_dir().create_file(rel(p))?;
    scrub(&mut file)?;
    file.truncate()?;
    io::copy(&mut content_reader(content)?, &mut file)?;
    // The clock says `epoch`, and writing stamps it; the file's own times come from its meta.
    let t = time::to_dos(mtime);
    #[allow(deprecated)]
    {
        file.set_created(t);
        file.set_accessed(t.date);
        file.set_modified(t);
    }
    file.flush()?;
    Ok(())
}

/// Overwrites a file's content with zeros, so what a batch replaces or removes (a secret seed,
/// say) does not linger in free clusters of the image, and leaves the position at 0.
fn scrub(file: &mut fatfs::File<Window>) -> io::Result<()> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    io::copy(&mut io::repeat(0).take(len), file)?;
    file.flush()?;
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

fn content_reader(content: &Content) -> io::Result<Box<dyn Read + '_>> {
    Ok(match content {
        Content::Bytes(b) => Box::new(b.as_slice()),
        Content::HostFile(p) => Box::new(io::BufReader::new(
            File::open(p).map_err(|e| host_file_error(p, e))?,
        )),
    })
}

fn content_len(content: &Content) -> io::Result<u64> {
    Ok(match content {
        Content::Bytes(b) => b.len() as u64,
        Content::HostFile(p) => std::fs::metadata(p)
            .map_err(|e| host_file_error(p, e))?
            .len(),
    })
}

fn host_file_error(p: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}
