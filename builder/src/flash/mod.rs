//! `imagegen flash`: writes an image (raw, .xz or .zst, streamed: never decompressed to disk)
//! onto a card, a USB disk or a file, writing only the blocks that hold data, then reads them
//! back to verify. The safety rules that keep it off the wrong disk are in [`device`].

pub mod device;
pub mod source;
pub mod verify;
pub mod write;

use crate::fetch::{Step, decode};
use crate::io::BUFFER_SIZE;
use crate::io::hash::HashReader;
use crate::io::progress::{ProgressWriter, bar};
use source::Source;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use verify::{Expected, VerifyError};
use write::{ImageWriter, Sink};

/// For tests only: flip the byte at this offset of the target between writing and verifying,
/// as a failing card would, so that the test sees verification catch it.
pub const CORRUPT_ENV: &str = "IMAGEGEN_TEST_CORRUPT_AT";

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(
        "{path} is too small: the image needs {image} bytes ({}), the target has {target} ({}); \
         nothing was written",
        device::human_size(*image), device::human_size(*target)
    )]
    TooSmall {
        path: PathBuf,
        image: u64,
        target: u64,
    },
    #[error("cannot open {path} for writing: {source}{hint}")]
    Open {
        path: PathBuf,
        source: io::Error,
        hint: String,
    },
    #[error("{path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "{path} does not match the sha256 in its .sha256 file (damaged download?): the target \
         holds a damaged image, do not boot it"
    )]
    Sha256 { path: PathBuf },
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// The open target.
pub struct Target {
    pub path: PathBuf,
    file: File,
    /// Logical block size of a block device (opened O_DIRECT); `None` for a regular file.
    block: Option<usize>,
    /// Device size, or the current length of a regular file (0: it grows to the image).
    size: u64,
    created: bool,
}

impl Target {
    /// Opens `path` for writing without writing anything: a block device exclusively
    /// (O_EXCL: the kernel refuses while it is mounted or claimed) and with O_DIRECT; a
    /// regular file as it is, created when missing.
    pub fn open(path: &Path) -> Result<Target, FlashError> {
        let open_err = |source: io::Error| FlashError::Open {
            hint: access_hint(path, &source),
            path: path.to_path_buf(),
            source,
        };
        let is_block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        if is_block {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT | libc::O_EXCL)
                .open(path)
                .map_err(open_err)?;
            let size = block_size_bytes(&file).map_err(open_err)?;
            let block = rustix::fs::ioctl_blksszget(&file).map_or(512, |b| b as usize);
            return Ok(Target {
                path: path.to_path_buf(),
                file,
                block: Some(block),
                size,
                created: false,
            });
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        Ok(Target {
            path: path.to_path_buf(),
            file,
            block: None,
            size,
            created: !existed,
        })
    }

    pub fn is_block_device(&self) -> bool {
        self.block.is_some()
    }

    /// The target's capacity, `None` for a file that grows to the image.
    pub fn capacity(&self) -> Option<u64> {
        (self.block.is_some() || self.size > 0).then_some(self.size)
    }

    /// Whether this file target was created by this run (and is removed if the run fails).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Refuses an image that does not fit, before anything is written.
    pub fn check_fits(&self, image_size: u64) -> Result<(), FlashError> {
        match self.capacity() {
            Some(cap) if cap < image_size => Err(FlashError::TooSmall {
                path: self.path.clone(),
                image: image_size,
                target: cap,
            }),
            _ => Ok(()),
        }
    }

    /// Asks the kernel to read the new partition table, so the desktop and `lsblk` show the
    /// new partitions rather than the card's old ones. Returns a warning when it cannot.
    pub fn reread_partitions(path: &Path) -> Option<String> {
        // A fresh, non-exclusive descriptor: the exclusive one makes the kernel see the disk
        // as busy.
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return Some(format!("cannot reopen {}: {e}", path.display())),
        };
        // BLKRRPART is _IO(0x12, 95) in linux/fs.h; neither libc nor rustix names it.
        const BLKRRPART: libc::Ioctl = 0x125f;
        use std::os::fd::AsRawFd;
        // SAFETY: BLKRRPART takes no argument and only acts on the descriptor.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART) };
        (rc != 0).then(|| {
            format!(
                "the kernel did not re-read the partition table of {} ({}): unplug and replug \
                 the card before using it on this machine",
                path.display(),
                io::Error::last_os_error()
            )
        })
    }
}

/// The size of a block device: seeking to its end is how the kernel reports it without an
/// ioctl (the same figure as BLKGETSIZE64).
fn block_size_bytes(file: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = file;
    f.seek(io::SeekFrom::End(0))
}

/// Says how a user who may not open the device gets access, instead of a bare EACCES.
fn access_hint(path: &Path, e: &io::Error) -> String {
    if e.kind() != io::ErrorKind::PermissionDenied {
        if e.raw_os_error() == Some(libc::EBUSY) {
            return " (the device is busy: a partition is mounted or in use; unmount it with \
                    udisksctl unmount -b PARTITION)"
                .to_string();
        }
        return String::new();
    }
    let group = std::fs::metadata(path)
        .ok()
        .and_then(|m| group_name(m.gid()));
    match group {
        Some(g) => format!(
            " ({} belongs to group `{g}`: add yourself with `sudo usermod -aG {g} $USER` and log \
             in again, or run the command with sudo)",
            path.display()
        ),
        None => " (run the command with sudo)".to_string(),
    }
}

fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?;
        (id.parse() == Ok(gid)).then(|| name.to_string())
    })
}

/// Totals of a flash, for the closing message and the benchmarks.
#[derive(Debug, Clone)]
pub struct Report {
    pub image_size: u64,
    pub written: u64,
    pub verified: Option<u64>,
    pub write_seconds: f64,
    pub verify_seconds: f64,
}

/// Writes `source` onto `target` and, if `check`, reads it back and verifies it. The target
/// has passed [`Target::check_fits`] and the user's consent.
pub fn write_and_verify(
    source: &Source,
    target: &mut Target,
    check: bool,
) -> Result<Report, FlashError> {
    target.check_fits(source.size)?;
    let write_err = |source| FlashError::Write {
        path: target.path.clone(),
        source,
    };
    // A regular file must end up reading as the image: a new one is all holes; an old one (a
    // VM disk) has its range punched out, so skipped zero blocks read as zeros there too.
    let mut skip_zeros = target.block.is_none();
    if target.block.is_none() {
        if target.size == 0 {
            target.file.set_len(source.size).map_err(write_err)?;
        } else {
            use rustix::fs::{FallocateFlags, fallocate};
            let punched = fallocate(
                &target.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                0,
                source.size,
            );
            skip_zeros = punched.is_ok();
        }
    }
    let started = std::time::Instant::now();
    let input = File::open(&source.path).map_err(|e| FlashError::Input {
        path: source.path.clone(),
        reason: e.to_string(),
    })?;
    let mut reader = BufReader::with_capacity(BUFFER_SIZE, HashReader::new(input));
    let writer = ImageWriter::new(
        Sink {
            file: &target.file,
            direct_block: target.block,
            skip_zeros,
        },
        source.size,
        source.bmap.as_ref(),
    );
    let mut out = ProgressWriter::new(writer, bar("flash", None, Some(source.size)));
    // Decoding and writing on one thread. Handing 4 MiB chunks to a writer thread (as bmaptool
    // overlaps a `zstd` process with its writes) was measured slower here: 7.7-8.0 s against
    // 5.5 s for the 3 GiB ci/bench image onto a file, 2 busy cores; the decoded data is then
    // hashed and copied on another core, out of this one's cache.
    let decoded = decode(source.format, &mut reader, &mut out);
    let (writer, progress) = out.into_parts();
    match decoded {
        Ok(()) => {}
        Err(Step::Write(e)) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(FlashError::Input {
                path: source.path.clone(),
                reason: e.to_string(),
            });
        }
        Err(Step::Write(e)) => return Err(write_err(e)),
        Err(Step::Read(e)) => {
            return Err(FlashError::Input {
                path: source.path.clone(),
                reason: format!("{} data is damaged: {e}", source.format.name()),
            });
        }
        Err(Step::Trailing) => {
            return Err(FlashError::Input {
                path: source.path.clone(),
                reason: Step::TRAILING.to_string(),
            });
        }
    }
    let written = writer.finish().map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FlashError::Input {
                path: source.path.clone(),
                reason: e.to_string(),
            }
        } else {
            write_err(e)
        }
    })?;
    let (_, input_sha256) = reader.into_inner().finish();
    if source.sha256.as_ref().is_some_and(|s| *s != input_sha256) {
        return Err(FlashError::Sha256 {
            path: source.path.clone(),
        });
    }
    let write_seconds = started.elapsed().as_secs_f64();
    progress.finish();

    if let Some(offset) = std::env::var(CORRUPT_ENV).ok().and_then(|v| v.parse().ok()) {
        flip_byte(&target.path, offset).map_err(write_err)?;
    }

    let started = std::time::Instant::now();
    let verified = if check {
        let expected = match (&source.bmap, &written.raw_sha256) {
            (Some(b), _) => Expected::Bmap(b),
            (None, Some(sha256)) => Expected::Whole {
                size: source.size,
                sha256,
            },
            (None, None) => unreachable!("the writer hashes the stream when there is no bmap"),
        };
        let total = match &expected {
            Expected::Bmap(b) => b.mapped_bytes(),
            Expected::Whole { size, .. } => *size,
        };
        let vbar = bar("verify", None, Some(total));
        let verified = verify::verify(&target.file, target.block, &expected, &vbar)?;
        vbar.finish();
        Some(verified)
    } else {
        None
    };
    Ok(Report {
        image_size: source.size,
        written: written.bytes,
        verified,
        write_seconds,
        verify_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The test hook of [`CORRUPT_ENV`]: a buffered write through another descriptor, synced, so
/// the O_DIRECT read-back sees it on the device.
fn flip_byte(path: &Path, offset: u64) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, offset)?;
    f.sync_all()
}
