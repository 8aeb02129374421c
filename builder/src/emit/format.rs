//! Output formats and their encoders, pinned so the same raw image always gives the same bytes.
//!
//! Both compressors are multithreaded with a fixed block (xz) or job (zstd) size: the stream is
//! cut into independent pieces at fixed offsets, so the output does not depend on how many
//! threads did the work. Both libraries are built from the sources bundled in their crates
//! (liblzma `static`, zstd-sys), so the host's library version cannot change the bytes either;
//! their versions go into the manifest.

use serde::{Deserialize, Serialize};
use std::ffi::CStr;
use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use liblzma::stream::{Check, MtStreamBuilder};
use liblzma::write::XzEncoder;

/// The accepted output file name endings, for error messages.
pub const EXTENSIONS: &str = ".img, .img.xz, .img.zst, .qcow2";

/// xz preset 6 is xz's own default: a good ratio at a tolerable speed for a one-off build.
const XZ_PRESET: u32 = 6;
/// Fixed xz block size; each block is compressed independently, by whichever thread. Each
/// thread holds about three blocks besides its 94 MiB of match finder, so 8 MiB (rather than
/// xz's default of 24 MiB) is what lets two threads fit in the budget, at a small cost in ratio.
const XZ_BLOCK_SIZE: u64 = 8 << 20;
/// Memory the xz encoder may use in total (the process stays under 256 MiB); threads are
/// reduced to stay within it, which does not change the output. Two threads need 235 MiB.
const XZ_MEMORY_BUDGET: u64 = 240 << 20;

/// zstd level 3 is zstd's own default: fast enough that emitting is not the slow stage.
const ZSTD_LEVEL: i32 = 3;
/// Window of level 3 for large inputs, pinned so a future default cannot change the bytes.
const ZSTD_WINDOW_LOG: u32 = 21;
/// Fixed zstd job size: jobs start at fixed offsets whatever the worker count.
const ZSTD_JOB_SIZE: u32 = 8 << 20;
/// zstd workers each hold about two jobs plus tables; this cap keeps big machines in budget.
const ZSTD_MAX_WORKERS: u32 = 8;

/// The format of the output image, chosen by the output file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// Raw disk image, written sparse.
    #[serde(rename = "img")]
    Raw,
    /// xz (multithreaded, fixed 8 MiB blocks, CRC64).
    #[serde(rename = "img.xz")]
    Xz,
    /// zstd (multithreaded, fixed 8 MiB jobs, content checksum).
    #[serde(rename = "img.zst")]
    Zstd,
    /// qcow2 version 3 for VM hosts, sparse (see `emit::qcow2`).
    #[serde(rename = "qcow2")]
    Qcow2,
}

impl Format {
    /// The format for an output path, from its name: `.img`, `.img.xz`, `.img.zst` or `.qcow2`.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        [
            (".img", Format::Raw),
            (".img.xz", Format::Xz),
            (".img.zst", Format::Zstd),
            (".qcow2", Format::Qcow2),
        ]
        .into_iter()
        .find(|(ext, _)| name.len() > ext.len() && name.ends_with(ext))
        .map(|(_, format)| format)
    }

    /// The encoder library, its version and the settings that fix its output, or `None` for raw
    /// and qcow2 (uncompressed, laid out by imagegen itself, whose version the manifest records).
    pub fn compressor(self) -> Option<Compressor> {
        match self {
            Format::Raw | Format::Qcow2 => None,
            Format::Xz => Some(Compressor {
                library: "liblzma".into(),
                version: liblzma_version(),
                settings: format!(
                    "preset {XZ_PRESET}, block size {} MiB, check crc64, multithreaded encoder",
                    XZ_BLOCK_SIZE >> 20
                ),
            }),
            Format::Zstd => Some(Compressor {
                library: "libzstd".into(),
                version: zstd::zstd_safe::version_string().into(),
                settings: format!(
                    "level {ZSTD_LEVEL}, window log {ZSTD_WINDOW_LOG}, job size {} MiB, \
                     content checksum, multithreaded encoder",
                    ZSTD_JOB_SIZE >> 20
                ),
            }),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Raw => "img",
            Format::Xz => "img.xz",
            Format::Zstd => "img.zst",
            Format::Qcow2 => "qcow2",
        })
    }
}

/// Which compressor wrote an output, recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compressor {
    pub library: String,
    pub version: String,
    pub settings: String,
}

fn liblzma_version() -> String {
    // The liblzma crate has no safe version getter, so this FFI call stays `unsafe`.
    // SAFETY: lzma_version_string returns a pointer to a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(liblzma_sys::lzma_version_string()) };
    version.to_string_lossy().into_owned()
}

/// A compressing writer for `format` (not `Raw`), using up to `threads` threads.
pub(crate) fn encoder<'a, W: Write + 'a>(
    format: Format,
    out: W,
    threads: u32,
    raw_size: u64,
) -> io::Result<Box<dyn Encoder<W> + 'a>> {
    match format {
        Format::Raw | Format::Qcow2 => {
            Err(io::Error::other(format!("{format} output has no encoder")))
        }
        Format::Xz => {
            let stream = xz_builder(threads.max(1))
                .encoder()
                .map_err(|e| io::Error::other(format!("cannot start the xz encoder: {e}")))?;
            Ok(Box::new(XzEncoder::new_stream(out, stream)))
        }
        Format::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
            enc.multithread(threads.clamp(1, ZSTD_MAX_WORKERS))?;
            enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            enc.window_log(ZSTD_WINDOW_LOG)?;
            enc.include_checksum(true)?;
            // Records the size in the frame header, so `zstd -l` shows it.
            enc.set_pledged_src_size(Some(raw_size))?;
            Ok(Box::new(enc))
        }
    }
}

/// The xz MT settings with as many of `threads` as fit the memory budget.
fn xz_builder(threads: u32) -> MtStreamBuilder {
    let mut builder = MtStreamBuilder::new();
    builder
        .preset(XZ_PRESET)
        .block_size(XZ_BLOCK_SIZE)
        .check(Check::Crc64)
        .threads(threads);
    let mut n = threads;
    while n > 1 && builder.memusage() > XZ_MEMORY_BUDGET {
        n -= 1;
        builder.threads(n);
    }
    builder
}

/// A compressing writer that must be finished explicitly: never `flush()` one mid-stream, since
/// both libraries cut a block or job there and the output would then depend on buffer sizes.
pub(crate) trait Encoder<W>: Write {
    fn finish_encoder(self: Box<Self>) -> io::Result<W>;
}

impl<W: Write> Encoder<W> for XzEncoder<W> {
    fn finish_encoder(self: Box<Self>) -> io::Result<W> {
        (*self).finish()
    }
}

impl<W: Write> Encoder<W> for zstd::stream::write::Encoder<'_, W> {
    fn finish_encoder(self: Box<Self>) -> io::Result<W> {
        (*self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_file_name() {
        assert_eq!(Format::from_path(Path::new("a/n.img")), Some(Format::Raw));
        assert_eq!(Format::from_path(Path::new("n.img.xz")), Some(Format::Xz));
        assert_eq!(
            Format::from_path(Path::new("n.img.zst")),
            Some(Format::Zstd)
        );
        assert_eq!(Format::from_path(Path::new("n.qcow2")), Some(Format::Qcow2));
        assert_eq!(Format::from_path(Path::new(".qcow2")), None);
        assert_eq!(Format::from_path(Path::new("n.img.gz")), None);
        assert_eq!(Format::from_path(Path::new("n.xz")), None);
        assert_eq!(Format::from_path(Path::new(".img")), None);
    }

    #[test]
    fn xz_threads_stay_within_the_memory_budget() {
        let builder = xz_builder(64);
        assert!(
            builder.memusage() <= XZ_MEMORY_BUDGET,
            "{}",
            builder.memusage()
        );
        // Two threads must fit, or xz would run at half speed on a two-core machine.
        assert_eq!(builder.memusage(), xz_builder(2).memusage());
    }
}
