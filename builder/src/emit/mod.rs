//! The last stage: the finished raw working image becomes the output `OUT` (`.img` written
//! sparse, `.img.xz`, `.img.zst`, or `.qcow2` for VM hosts) with `OUT.sha256`, `OUT.bmap` and
//! `OUT.manifest.json` beside it (no `.bmap` beside a qcow2: nothing flashes one, and bmaptool
//! would write its container bytes to the card).
//!
//! One pass over the raw image does everything: holes are skipped with SEEK_DATA/SEEK_HOLE and
//! never read, the data is hashed (whole image and per bmap range) and fed to the writer. The
//! output's holes follow the content (a hole reads as zeros wherever it is); the bmap's follow
//! the content and the image's free space, found before the pass, because an unmapped block
//! keeps a reused card's old bytes (see `image::FreeSpace`). All
//! four files are written to temp files and renamed into place only when all are complete, so
//! a failed or interrupted emit leaves no `OUT`.
//!
//! A build's working copy sits beside `OUT` and is deleted after the emit; for `.img` output
//! [`emit_work_copy`] makes it `OUT` itself (hashed and mapped in place, its written zero
//! blocks punched out as the copy would have left them, fsynced, renamed), which saves writing
//! the image's data a second time (1.6 GB for the 3 GiB image of BENCHMARKS.md) and the unlink.

pub(crate) mod atomic;
pub mod bmap;
pub mod format;
pub mod manifest;
pub mod qcow2;
pub mod source;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::image::{Cursor, FreeSpace, ImageError};
use crate::io::BUFFER_SIZE;
use crate::io::hash::HashWriter;
use crate::io::hash_thread::HashThreadWriter;
use crate::io::offload::{Chunk, Offload};
use crate::io::progress;
use atomic::PendingFile;
use bmap::{BLOCK_SIZE, BmapBuilder};
use format::Encoder;
pub use format::{Compressor, EXTENSIONS, Format};
pub use manifest::{BuildRecord, Change, Input, Manifest, Output, Tool, public_url};
pub use source::{RawSource, SparseFile, StreamSource};

/// How to emit; the defaults suit every build.
#[derive(Debug, Clone, Default)]
pub struct EmitOptions {
    /// Compressor threads; `None` uses every core. The output bytes do not depend on it.
    pub threads: Option<u32>,
    /// The image holds secrets: only its owner may read it (mode 0600). The sidecars never
    /// hold secrets and stay readable.
    pub private: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("cannot tell the output format of {0}: its name must end in one of {EXTENSIONS}")]
    UnknownFormat(PathBuf),
    #[error("cannot read the raw image {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot tell which parts of the raw image {path} are in use: {source}")]
    Layout { path: PathBuf, source: ImageError },
    #[error("cannot write {path}: {source} (nothing was left in place of it)")]
    Write { path: PathBuf, source: io::Error },
}

/// Emits the raw image at `raw` to `out`, with its sidecar files, and returns the manifest as
/// written to `OUT.manifest.json`.
pub fn emit(
    raw: &Path,
    out: &Path,
    build: BuildRecord,
    options: &EmitOptions,
) -> Result<Manifest, EmitError> {
    let read_err = |source| EmitError::Read {
        path: raw.to_path_buf(),
        source,
    };
    let free = FreeSpace::of_image(raw, BLOCK_SIZE).map_err(|source| EmitError::Layout {
        path: raw.to_path_buf(),
        source,
    })?;
    let file = File::open(raw).map_err(read_err)?;
    let source = SparseFile::new(file).map_err(read_err)?;
    emit_from(source, &free, raw, out, build, options)
}

/// Like [`emit`] for a raw image the caller is done with (a build's working copy). When `OUT`
/// is a `.img` in the same directory, `work` itself becomes `OUT`: same bytes, holes,
/// sidecars and manifest as [`emit`] would write, but its data is not copied. Otherwise this is
/// [`emit`]. Either way the caller still removes `work` if it is there afterwards (on an
/// error it is left as it was, apart from written zero blocks turned into holes).
pub fn emit_work_copy(
    work: &Path,
    out: &Path,
    build: BuildRecord,
    options: &EmitOptions,
) -> Result<Manifest, EmitError> {
    if Format::from_path(out) != Some(Format::Raw) || !same_dir(work, out) {
        return emit(work, out, build, options);
    }
    let read_err = |source| EmitError::Read {
        path: work.to_path_buf(),
        source,
    };
    let free = FreeSpace::of_image(work, BLOCK_SIZE).map_err(|source| EmitError::Layout {
        path: work.to_path_buf(),
        source,
    })?;
    let file = File::options()
        .read(true)
        .write(true)
        .open(work)
        .map_err(read_err)?;
    let source = SparseFile::new(file.try_clone().map_err(read_err)?).map_err(read_err)?;
    let target = Target::InPlace {
        file,
        path: work.to_path_buf(),
    };
    emit_to(source, &free, work, out, target, build, options)
}

/// Whether `a` and `b` are in the same directory (so renaming one to the other cannot cross
/// filesystems).
fn same_dir(a: &Path, b: &Path) -> bool {
    let dir = |p: &Path| {
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::canonicalize(parent).ok()
    };
    matches!((dir(a), dir(b)), (Some(x), Some(y)) if x == y)
}

/// Where the output image is written.
enum Target {
    /// A new temp file beside `OUT`, renamed over it at the end.
    New(PendingFile),
    /// The raw image itself, in `OUT`'s directory, renamed over it at the end.
    InPlace { file: File, path: PathBuf },
}

impl Target {
    fn file(&self) -> &File {
        match self {
            Target::New(p) => p.file(),
            Target::InPlace { file, .. } => file,
        }
    }

    fn sync(&self) -> io::Result<()> {
        self.file().sync_all()
    }

    /// Renames it over `out`; the in-place image first gets the mode a new file would have.
    fn commit(self, out: &Path, mode: u32) -> io::Result<()> {
        match self {
            Target::New(p) => p.commit(),
            Target::InPlace { file, path } => {
                use std::os::unix::fs::PermissionsExt;
                let mode = mode & !atomic::umask();
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                std::fs::rename(path, out)
            }
        }
    }
}

/// Like [`emit`], reading from any [`RawSource`] whose free space is `free` (only free
/// all-zero blocks are left out of the bmap); `name` is used in error messages.
pub fn emit_from<S: RawSource>(
    source: S,
    free: &FreeSpace,
    name: &Path,
    out: &Path,
    build: BuildRecord,
    options: &EmitOptions,
) -> Result<Manifest, EmitError> {
    Format::from_path(out).ok_or_else(|| EmitError::UnknownFormat(out.into()))?;
    let mode = if options.private { 0o600 } else { 0o644 };
    let image = PendingFile::create_with_mode(out, mode).map_err(|source| EmitError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    emit_to(source, free, name, out, Target::New(image), build, options)
}

fn emit_to<S: RawSource>(
    mut source: S,
    free: &FreeSpace,
    name: &Path,
    out: &Path,
    image: Target,
    build: BuildRecord,
    options: &EmitOptions,
) -> Result<Manifest, EmitError> {
    let format = Format::from_path(out).ok_or_else(|| EmitError::UnknownFormat(out.into()))?;
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| EmitError::UnknownFormat(out.into()))?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EmitError::Write { path, source }
    };
    let read_err = |source| EmitError::Read {
        path: name.to_path_buf(),
        source,
    };

    let threads = options.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
    });
    let size = source.size();
    let mode = if options.private { 0o600 } else { 0o644 };
    let mut sink = match &image {
        Target::New(p) => Sink::new(format, p.file(), threads, size),
        Target::InPlace { file, .. } => Ok(Sink::InPlace { file, pos: 0 }),
    }
    .map_err(write_err(out))?;

    let bar = progress::bar("emit", Some(&file_name), Some(size));
    let scanned = scan(&mut source, free, &mut sink, &bar);
    if scanned.is_ok() {
        bar.finish();
    }
    let (raw_sha256, bmap, mapped_blocks) = match scanned {
        Ok(s) => s,
        Err(Failed::Read(e)) => return Err(read_err(e)),
        Err(Failed::Write(e)) => return Err(write_err(out)(e)),
    };
    let out_sha256 = sink
        .finish(size)
        .map_err(write_err(out))?
        .unwrap_or_else(|| raw_sha256.clone());
    image.sync().map_err(write_err(out))?;

    let manifest = Manifest {
        build,
        output: Output {
            file: file_name.clone(),
            format,
            sha256: out_sha256.clone(),
            raw_sha256,
            raw_size: size,
            mapped_blocks,
            compressor: format.compressor(),
        },
    };
    let sidecar = |suffix: &str, contents: &[u8]| {
        let mut path = out.as_os_str().to_owned();
        path.push(suffix);
        let path = PathBuf::from(path);
        atomic::pending_with(&path, contents).map_err(write_err(&path))
    };
    // Sidecars first: once OUT appears, everything that describes it is already there.
    let mut sidecars = vec![sidecar(
        ".sha256",
        format!("{out_sha256}  {file_name}\n").as_bytes(),
    )?];
    if format != Format::Qcow2 {
        sidecars.push(sidecar(".bmap", bmap.as_bytes())?);
    }
    sidecars.push(sidecar(".manifest.json", manifest.to_json().as_bytes())?);
    for pending in sidecars {
        pending.commit().map_err(write_err(out))?;
    }
    image.commit(out, mode).map_err(write_err(out))?;
    atomic::sync_dir_of(out).map_err(write_err(out))?;
    Ok(manifest)
}

enum Failed {
    Read(io::Error),
    Write(io::Error),
}

static ZEROS: [u8; BUFFER_SIZE] = [0; BUFFER_SIZE];

/// Reads the image once, front to back, and returns its sha256, bmap and mapped block count.
/// This thread reads and feeds the sink; the digests (the sha256 of every byte, holes
/// included, and the bmap with its per-range sha256) are computed on a thread of their own.
fn scan<S: RawSource>(
    source: &mut S,
    free: &FreeSpace,
    sink: &mut Sink<'_>,
    bar: &progress::Progress,
) -> Result<(String, String, u64), Failed> {
    let size = source.size();
    let free = free.clone();
    let digest = Offload::spawn("image-digest", move |chunks| {
        let mut raw = HashWriter::new(io::sink());
        let mut cursor = free.cursor();
        let mut bmap = BmapBuilder::new(size);
        chunks.for_each(|chunk| match chunk {
            Chunk::Data { pos, bytes } => {
                let _ = raw.write_all(bytes);
                blocks(bytes, pos, &mut cursor, &mut bmap);
            }
            Chunk::Zeros { pos, len } => {
                let mut left = len;
                while left > 0 {
                    let n = usize::try_from(left).map_or(BUFFER_SIZE, |n| n.min(BUFFER_SIZE));
                    let _ = raw.write_all(&ZEROS[..n]);
                    left -= n as u64;
                }
                zeros(pos, pos + len, &mut cursor, &mut bmap);
            }
        });
        let hashed = raw.count();
        let mapped_blocks = bmap.mapped_blocks();
        (hashed, raw.finish().1, bmap.finish(), mapped_blocks)
    })
    .map_err(Failed::Write)?;
    // Invariant: `pos` is block-aligned or at the end.
    let mut pos = 0;
    while pos < size {
        let (start, end) = match source.next_data(pos).map_err(Failed::Read)? {
            Some(region) => {
                let start = (region.start / BLOCK_SIZE * BLOCK_SIZE).max(pos);
                let end = region.end.next_multiple_of(BLOCK_SIZE).min(size);
                (start, end.max((start + BLOCK_SIZE).min(size)))
            }
            None => (size, size),
        };
        if start > pos {
            let len = start - pos;
            digest.zeros(pos, len).map_err(Failed::Write)?;
            sink.zeros(len).map_err(Failed::Write)?;
            bar.inc(len);
            pos = start;
        }
        while pos < end {
            let len = usize::try_from(end - pos).map_or(BUFFER_SIZE, |n| n.min(BUFFER_SIZE));
            let mut buf = digest.buffer().map_err(Failed::Write)?;
            source
                .read_exact_at(&mut buf[..len], pos)
                .map_err(Failed::Read)?;
            if sink.skips_zeros() {
                runs(&buf[..len], sink)?;
            } else {
                sink.data(&buf[..len]).map_err(Failed::Write)?;
            }
            digest.data(pos, buf, len).map_err(Failed::Write)?;
            bar.inc(len as u64);
            pos += len as u64;
        }
    }
    let (hashed, raw_sha256, bmap, mapped_blocks) = digest.finish().map_err(Failed::Write)?;
    if hashed != size {
        return Err(Failed::Read(io::Error::other(format!(
            "read {hashed} bytes of a {size} byte image"
        ))));
    }
    Ok((raw_sha256, bmap, mapped_blocks))
}

/// Maps the zeros of `pos..end` (a hole of the source) where they are in use.
fn zeros(mut pos: u64, end: u64, free: &mut Cursor<'_>, bmap: &mut BmapBuilder) {
    while pos < end {
        match free.at(pos) {
            Ok(until) => {
                bmap.unmapped(until.min(end) - pos);
                pos = until.min(end);
            }
            Err(until) => {
                bmap.mapped_zeros(until.min(end) - pos);
                pos = until.min(end);
            }
        }
    }
}

/// Maps every block of a block-aligned chunk that starts at `pos`, except the all-zero free
/// ones.
fn blocks(chunk: &[u8], pos: u64, free: &mut Cursor<'_>, bmap: &mut BmapBuilder) {
    for (i, block) in chunk.chunks(BLOCK_SIZE as usize).enumerate() {
        let offset = i * BLOCK_SIZE as usize;
        // Free ranges are whole blocks, so a block that starts in one lies wholly in it.
        if is_zero(block) && free.at(pos + offset as u64).is_ok() {
            bmap.unmapped(block.len() as u64);
        } else {
            bmap.mapped(block);
        }
    }
}

/// Splits a block-aligned chunk into runs of data and all-zero blocks for a sink that leaves
/// zeros out.
fn runs(chunk: &[u8], sink: &mut Sink<'_>) -> Result<(), Failed> {
    let mut run_start = 0;
    let mut run_zero = None;
    for (i, block) in chunk.chunks(BLOCK_SIZE as usize).enumerate() {
        let offset = i * BLOCK_SIZE as usize;
        let zero = is_zero(block);
        if run_zero.is_some_and(|z| z != zero) {
            run(&chunk[run_start..offset], run_zero == Some(true), sink)?;
            run_start = offset;
        }
        run_zero = Some(zero);
    }
    if run_start < chunk.len() {
        run(&chunk[run_start..], run_zero == Some(true), sink)?;
    }
    Ok(())
}

fn run(bytes: &[u8], zero: bool, sink: &mut Sink<'_>) -> Result<(), Failed> {
    if zero {
        sink.zeros(bytes.len() as u64).map_err(Failed::Write)?;
    } else {
        sink.data(bytes).map_err(Failed::Write)?;
    }
    Ok(())
}

/// OR-folding without an early exit lets the compiler vectorize; data blocks are a minority
/// of most images and memory bandwidth is far above the hashing speed anyway.
fn is_zero(block: &[u8]) -> bool {
    block.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Where the raw bytes go.
enum Sink<'a> {
    /// Raw output: data written in place, zeros left as holes.
    Raw { file: &'a File, pos: u64 },
    /// Compressed output, hashed as it is written.
    Compressed(Box<dyn Encoder<HashThreadWriter<&'a File>> + 'a>),
    /// qcow2: non-zero clusters stored, zero ones left unallocated.
    Qcow2(qcow2::Qcow2Writer<'a>),
    /// Raw output that is the raw image itself: data stays where it is, zero blocks become
    /// holes, as `Raw` would leave them.
    InPlace { file: &'a File, pos: u64 },
}

impl<'a> Sink<'a> {
    fn new(format: Format, file: &'a File, threads: u32, size: u64) -> io::Result<Sink<'a>> {
        Ok(match format {
            Format::Raw => Sink::Raw { file, pos: 0 },
            Format::Qcow2 => Sink::Qcow2(qcow2::Qcow2Writer::new(file, size, qcow2::CLUSTER_BITS)?),
            Format::Xz | Format::Zstd => Sink::Compressed(format::encoder(
                format,
                HashThreadWriter::new(file)?,
                threads,
                size,
            )?),
        })
    }

    /// Whether all-zero blocks are left out (holes, unallocated clusters) rather than stored
    /// like data: only then are chunks split into runs. A compressor is given the zeros as
    /// they are, which is the same stream.
    fn skips_zeros(&self) -> bool {
        !matches!(self, Sink::Compressed(_))
    }

    fn data(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Raw { file, pos } => {
                file.write_all_at(bytes, *pos)?;
                *pos += bytes.len() as u64;
                Ok(())
            }
            Sink::Compressed(enc) => enc.write_all(bytes),
            Sink::Qcow2(w) => w.data(bytes),
            Sink::InPlace { pos, .. } => {
                *pos += bytes.len() as u64;
                Ok(())
            }
        }
    }

    fn zeros(&mut self, len: u64) -> io::Result<()> {
        match self {
            Sink::Raw { pos, .. } => {
                *pos += len;
                Ok(())
            }
            Sink::Compressed(enc) => {
                let mut left = len;
                while left > 0 {
                    let n = usize::try_from(left).map_or(BUFFER_SIZE, |n| n.min(BUFFER_SIZE));
                    enc.write_all(&ZEROS[..n])?;
                    left -= n as u64;
                }
                Ok(())
            }
            Sink::Qcow2(w) => w.zeros(len),
            Sink::InPlace { file, pos } => {
                use rustix::fs::{FallocateFlags, fallocate};
                // Already a hole in most cases (then this does nothing). A filesystem that
                // cannot punch holes keeps the zeros written: the same bytes, less sparse.
                match fallocate(
                    file,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    *pos,
                    len,
                ) {
                    Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                    Err(e) => return Err(e.into()),
                }
                *pos += len;
                Ok(())
            }
        }
    }

    /// Completes the output; returns the sha256 of a compressed or qcow2 output (a raw
    /// output's bytes are the raw image's, already hashed).
    fn finish(self, size: u64) -> io::Result<Option<String>> {
        match self {
            // Extends the file over a trailing hole.
            Sink::Raw { file, .. } => file.set_len(size).map(|()| None),
            Sink::Compressed(enc) => Ok(Some(enc.finish_encoder()?.finish()?.1)),
            Sink::Qcow2(w) => w.finish().map(Some),
            Sink::InPlace { .. } => Ok(None),
        }
    }
}
