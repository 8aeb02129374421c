//! Turning a downloaded image into a raw, sparse disk image: sniff the format from its magic
//! bytes, stream it through the decoder, write zeros as holes.
//!
//! qcow2 (Ubuntu's cloud `.img`) goes through `qemu-img convert`: it is the reference
//! implementation of every qcow2 feature the vendors may switch on (zlib or zstd compressed
//! clusters, extended L2, v2/v3), it writes sparse output itself, and it is already a
//! dependency of the VM tests. The Rust readers are either unmaintained or skip compressed
//! clusters, and one vendor format does not justify auditing one.

use super::FetchError;
use super::sparse::copy_sparse;
use crate::io::BUFFER_SIZE;
use crate::io::progress::{ProgressReader, bar};
use crate::io::sparse_writer::SparseWriter;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Command;

/// Image container formats, told apart by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xz,
    Zstd,
    Gzip,
    Qcow2,
    Raw,
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const QCOW_MAGIC: &[u8] = b"QFI\xfb";

impl Format {
    /// The format's usual name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Gzip => "gzip",
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }

    pub fn sniff(head: &[u8]) -> Format {
        if head.starts_with(XZ_MAGIC) {
            Format::Xz
        } else if head.starts_with(ZSTD_MAGIC) {
            Format::Zstd
        } else if head.starts_with(GZIP_MAGIC) {
            Format::Gzip
        } else if head.starts_with(QCOW_MAGIC) {
            Format::Qcow2
        } else {
            Format::Raw
        }
    }

    pub fn of_file(path: &Path) -> Result<Format, FetchError> {
        let mut head = [0u8; 8];
        let mut f = File::open(path).map_err(|e| FetchError::io(path, "cannot open", e))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FetchError::io(path, "cannot read", e)),
            }
        }
        Ok(Format::sniff(&head[..n]))
    }
}

/// Memory the xz decoder may use for its threads before it falls back to one thread; the
/// whole build stays under 256 MiB.
const XZ_MEMLIMIT_THREADING: u64 = 160 << 20;

/// Unpacks `src` (xz, zstd, gzip, qcow2 or raw) into a new sparse raw image at `dst`,
/// replacing it. Returns the format found and the raw size. On error `dst` may hold a
/// partial image: write to a temporary name and rename on success.
pub fn unpack(src: &Path, dst: &Path) -> Result<(Format, u64), FetchError> {
    let format = Format::of_file(src)?;
    let size = match format {
        Format::Raw => {
            copy_sparse(src, dst).map_err(|e| FetchError::io(dst, "cannot copy to", e))?
        }
        Format::Qcow2 => qemu_img_convert(src, dst)?,
        Format::Xz | Format::Zstd | Format::Gzip => decompress(src, dst, format, true)?,
    };
    Ok((format, size))
}

/// As [`unpack`], for a compressed `src` only, into a scratch file that dies with the process
/// (the file commands reading a `.img.zst`): not synced, since nothing depends on it surviving
/// a crash, and a sync of gigabytes would only cost time.
pub fn unpack_scratch(src: &Path, dst: &Path, format: Format) -> Result<u64, FetchError> {
    match format {
        Format::Qcow2 => qemu_img_convert(src, dst),
        Format::Raw => Err(FetchError::io(
            src,
            "cannot unpack",
            io::Error::other("not compressed"),
        )),
        Format::Xz | Format::Zstd | Format::Gzip => decompress(src, dst, format, false),
    }
}

fn decompress(src: &Path, dst: &Path, format: Format, sync: bool) -> Result<u64, FetchError> {
    let input = File::open(src).map_err(|e| FetchError::io(src, "cannot open", e))?;
    let total = input.metadata().map(|m| m.len()).ok();
    let reader = ProgressReader::new(input, bar("unpack", None, total));
    let mut reader = BufReader::with_capacity(BUFFER_SIZE, reader);
    let output = File::create(dst).map_err(|e| FetchError::io(dst, "cannot create", e))?;
    let mut out = SparseWriter::new(output);
    let corrupt = |reason: String| FetchError::Corrupt {
        path: src.to_path_buf(),
        format,
        reason,
    };
    match decode(format, &mut reader, &mut out) {
        Ok(()) => {}
        Err(Step::Read(e)) => return Err(corrupt(e.to_string())),
        Err(Step::Trailing) => return Err(corrupt(Step::TRAILING.to_string())),
        Err(Step::Write(e)) => return Err(FetchError::io(dst, "cannot write", e)),
    }
    let (input, progress) = reader.into_inner().into_parts();
    drop(input);
    let (file, size) = out
        .finish()
        .map_err(|e| FetchError::io(dst, "cannot write", e))?;
    if sync {
        file.sync_all()
            .map_err(|e| FetchError::io(dst, "cannot write", e))?;
    }
    progress.finish();
    Ok(size)
}

/// Which side of a copy failed: a read error means bad input, a write error a full disk.
#[derive(Debug)]
pub enum Step {
    Read(io::Error),
    Write(io::Error),
    /// Data after the end of the compressed stream.
    Trailing,
}

impl Step {
    pub const TRAILING: &str = "trailing data after the compressed stream";
}

/// Streams the raw image held in `reader` (in `format`, which must not be qcow2: that needs
/// qemu-img and a file) into `out`, front to back. `imagegen flash` writes a card this way
/// without a decompressed copy on disk; `unpack` writes the build's working copy.
pub fn decode<R: BufRead, W: Write>(
    format: Format,
    reader: &mut R,
    out: &mut W,
) -> Result<(), Step> {
    match format {
        Format::Xz => unxz(reader, out)?,
        Format::Zstd => zstd::stream::read::Decoder::with_buffer(&mut *reader)
            .map_err(Step::Read)
            .and_then(|mut d| pump(&mut d, out))?,
        Format::Gzip => pump(&mut flate2::bufread::MultiGzDecoder::new(&mut *reader), out)?,
        Format::Raw => return pump(reader, out),
        Format::Qcow2 => {
            return Err(Step::Read(io::Error::other(
                "a qcow2 image cannot be streamed; convert it with qemu-img convert -O raw",
            )));
        }
    }
    // The decoders stop at the end of their data; anything after it is not ours to drop.
    if !reader.fill_buf().map_err(Step::Read)?.is_empty() {
        return Err(Step::Trailing);
    }
    Ok(())
}

fn pump(r: &mut impl Read, w: &mut impl Write) -> Result<(), Step> {
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        // Fill the buffer so the sparse writer sees whole, aligned blocks.
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Step::Read(e)),
            }
        }
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).map_err(Step::Write)?;
    }
}

/// xz streams one after another (as `xz` itself accepts), each decoded by the multithreaded
/// decoder, which spreads the blocks of a multi-block file (`xz -T0`) over the cores.
/// Stream padding (zero bytes) between and after streams is allowed; other data is not.
fn unxz<R: BufRead>(reader: &mut R, out: &mut impl Write) -> Result<(), Step> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    loop {
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(threads)
            .memlimit_threading(XZ_MEMLIMIT_THREADING)
            .memlimit_stop(u64::MAX)
            .decoder()
            .map_err(|e| Step::Read(io::Error::other(e)))?;
        let mut decoder = liblzma::bufread::XzDecoder::new_stream(&mut *reader, stream);
        pump(&mut decoder, out)?;
        // Skip stream padding, then either another stream or the end.
        loop {
            let buf = reader.fill_buf().map_err(Step::Read)?;
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            if zeros == 0 {
                break;
            }
            reader.consume(zeros);
        }
        let buf = reader.fill_buf().map_err(Step::Read)?;
        if buf.is_empty() || !buf.starts_with(XZ_MAGIC) {
            return Ok(());
        }
    }
}

/// `qemu-img convert` to raw, after refusing images that would make it read other files
/// (a backing file or an external data file).
fn qemu_img_convert(src: &Path, dst: &Path) -> Result<u64, FetchError> {
    let info = run_qemu_img(&[
        "info".as_ref(),
        "--output=json".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        crate::argv::path(src).as_os_str(),
    ])?;
    let info: serde_json::Value =
        serde_json::from_slice(&info).map_err(|e| FetchError::Corrupt {
            path: src.to_path_buf(),
            format: Format::Qcow2,
            reason: format!("qemu-img info gave unreadable output: {e}"),
        })?;
    let data_file = info.pointer("/format-specific/data/data-file");
    if info.get("backing-filename").is_some() || data_file.is_some() {
        return Err(FetchError::Corrupt {
            path: src.to_path_buf(),
            format: Format::Qcow2,
            reason: "it refers to another file (backing or data file); only self-contained \
                     images can be used"
                .to_string(),
        });
    }
    run_qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        crate::argv::path(src).as_os_str(),
        crate::argv::path(dst).as_os_str(),
    ])?;
    let size = std::fs::metadata(dst)
        .map_err(|e| FetchError::io(dst, "cannot read", e))?
        .len();
    Ok(size)
}

fn run_qemu_img(args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, FetchError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| FetchError::Tool {
            tool: "qemu-img",
            reason: format!("{e} (install the qemu-utils package)"),
        })?;
    if !out.status.success() {
        return Err(FetchError::Tool {
            tool: "qemu-img",
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}
