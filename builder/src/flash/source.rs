//! The image to flash: its container format, its raw size (known before the first byte is
//! written, so a too-small card is refused untouched), its `.bmap` and `.sha256` sidecars.
//!
//! The raw size comes from the cheapest place that states it: the bmap, the file itself (raw),
//! the frame headers (zstd) or the index at the end (xz). Only when the format does not record
//! it (gzip, zstd written without a content size) is the image decoded once to count.

use crate::emit::bmap::Bmap;
use crate::fetch::{Format, Step, decode};
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Bmap {
        path: PathBuf,
        source: crate::emit::bmap::BmapError,
    },
    #[error(
        "{0} is a qcow2 image: flash a raw image (qemu-img convert -O raw IMAGE OUT.img), \
         or use it as a VM disk directly"
    )]
    Qcow2(PathBuf),
}

pub struct Source {
    pub path: PathBuf,
    pub format: Format,
    /// Raw image size in bytes.
    pub size: u64,
    pub bmap: Option<Bmap>,
    /// The sha256 that `IMAGE.sha256` states for the file as stored (compressed or not).
    pub sha256: Option<String>,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source, SourceError> {
        let io_err = |p: &Path| {
            let path = p.to_path_buf();
            move |source| SourceError::Io { path, source }
        };
        let format = Format::of_file(path).map_err(|e| SourceError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if format == Format::Qcow2 {
            return Err(SourceError::Qcow2(path.to_path_buf()));
        }
        let bmap = match read_sidecar(path, ".bmap").map_err(io_err(path))? {
            Some(text) => Some(Bmap::parse(&text).map_err(|source| SourceError::Bmap {
                path: sidecar(path, ".bmap"),
                source,
            })?),
            None => None,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sha256 = read_sidecar(path, ".sha256")
            .map_err(io_err(path))?
            .and_then(|t| crate::fetch::find_checksum(&t, &name, crate::fetch::Algorithm::Sha256));
        let file = File::open(path).map_err(io_err(path))?;
        let stated = match (&bmap, format) {
            (Some(b), _) => Some(b.image_size),
            (None, Format::Raw) => Some(file.metadata().map_err(io_err(path))?.len()),
            (None, Format::Xz) => Some(xz_size(&file).map_err(|reason| SourceError::Corrupt {
                path: path.to_path_buf(),
                reason,
            })?),
            (None, Format::Zstd) => zstd_size(&file).map_err(|reason| SourceError::Corrupt {
                path: path.to_path_buf(),
                reason,
            })?,
            (None, _) => None,
        };
        let size = match stated {
            Some(s) => s,
            None => {
                eprintln!(
                    "{} does not record its size: decoding it once to measure",
                    path.display()
                );
                let mut counter = Counter(0);
                let mut reader = BufReader::with_capacity(crate::io::BUFFER_SIZE, file);
                decode(format, &mut reader, &mut counter).map_err(|e| SourceError::Corrupt {
                    path: path.to_path_buf(),
                    reason: match e {
                        Step::Read(e) | Step::Write(e) => e.to_string(),
                        Step::Trailing => Step::TRAILING.to_string(),
                    },
                })?;
                counter.0
            }
        };
        Ok(Source {
            path: path.to_path_buf(),
            format,
            size,
            bmap,
            sha256,
        })
    }
}

struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `IMAGE` + `suffix`: `disk.img.zst.bmap`, as `imagegen build` and `bmaptool create` name them.
pub fn sidecar(image: &Path, suffix: &str) -> PathBuf {
    let mut p = image.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn read_sidecar(image: &Path, suffix: &str) -> io::Result<Option<String>> {
    match std::fs::read_to_string(sidecar(image, suffix)) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_at(file: &File, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("truncated ({e})"))?;
    Ok(buf)
}

/// The uncompressed size of an .xz file, summed over its streams from their indexes, read
/// backwards from the end as `xz --list` does (format: tukaani.org/xz/xz-file-format.txt,
/// sections 2.1.2 stream footer, 4 index, 2.2 stream padding). Reads a few KiB, not the data.
fn xz_size(file: &File) -> Result<u64, String> {
    let mut end = file.metadata().map_err(|e| e.to_string())?.len();
    let mut total = 0u64;
    while end > 0 {
        // Stream padding: null bytes in multiples of four between and after streams.
        let tail = read_at(file, end.saturating_sub(4), 4.min(end as usize))?;
        if tail == [0, 0, 0, 0] {
            end -= 4;
            continue;
        }
        if end < 24 {
            return Err("not an xz stream (too short)".into());
        }
        let footer = read_at(file, end - 12, 12)?;
        if &footer[10..12] != b"YZ" {
            return Err("no xz stream footer at the end (truncated download?)".into());
        }
        let index_size = (u64::from(u32::from_le_bytes(footer[4..8].try_into().unwrap())) + 1) * 4;
        let index_start = (end - 12)
            .checked_sub(index_size)
            .ok_or("xz index larger than the file")?;
        let index = read_at(file, index_start, index_size as usize)?;
        if index.first() != Some(&0) {
            return Err("bad xz index".into());
        }
        let mut pos = 1;
        let mut varint = || -> Result<u64, String> {
            let mut v = 0u64;
            for i in 0..9 {
                let b = *index.get(pos).ok_or("bad xz index")?;
                pos += 1;
                v |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("bad xz index".into())
        };
        let records = varint()?;
        let mut blocks = 0u64;
        for _ in 0..records {
            let unpadded = varint()?;
            let uncompressed = varint()?;
            blocks = blocks
                .checked_add(unpadded.next_multiple_of(4))
                .ok_or("bad xz index")?;
            total = total.checked_add(uncompressed).ok_or("bad xz index")?;
        }
        end = index_start
            .checked_sub(blocks + 12)
            .ok_or("xz index describes more data than the file holds")?;
        if read_at(file, end, 6)? != [0xfd, b'7', b'z', b'X', b'Z', 0] {
            return Err("xz index does not lead back to a stream header".into());
        }
    }
    Ok(total)
}

/// The content size of a .zst file, summed over its frames from their headers, or `None` when a
/// frame does not state it. Walks block headers to find each frame's end (RFC 8878 section 3.1),
/// reading 3 bytes per 128 KiB block, not the data.
fn zstd_size(file: &File) -> Result<Option<u64>, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut pos = 0u64;
    let mut total = 0u64;
    while pos < len {
        let magic = u32::from_le_bytes(read_at(file, pos, 4)?.try_into().unwrap());
        if magic & 0xffff_fff0 == 0x184d_2a50 {
            // Skippable frame: 4-byte size after the magic.
            let size = u32::from_le_bytes(read_at(file, pos + 4, 4)?.try_into().unwrap());
            pos += 8 + u64::from(size);
            continue;
        }
        if magic != 0xfd2f_b528 {
            return Err("not a zstd frame where one should start".into());
        }
        let fhd = read_at(file, pos + 4, 1)?[0];
        let single_segment = fhd & 0x20 != 0;
        let did_size = [0u64, 1, 2, 4][usize::from(fhd & 3)];
        let fcs_size = match fhd >> 6 {
            0 if single_segment => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let header = 5 + u64::from(!single_segment) + did_size + fcs_size;
        let head = read_at(file, pos, header as usize)?;
        match zstd::zstd_safe::get_frame_content_size(&head) {
            Ok(Some(n)) => total += n,
            Ok(None) => return Ok(None),
            Err(_) => return Err("bad zstd frame header".into()),
        }
        pos += header;
        loop {
            let b = read_at(file, pos, 3)?;
            let h = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
            let last = h & 1 != 0;
            let size = u64::from(h >> 3);
            // RLE blocks (type 1) store one byte, raw and compressed ones `size` bytes.
            pos += 3 + if (h >> 1) & 3 == 1 { 1 } else { size };
            if last {
                break;
            }
        }
        if fhd & 4 != 0 {
            pos += 4;
        }
    }
    if pos != len {
        return Err("truncated zstd frame".into());
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn data() -> Vec<u8> {
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn xz_size_is_read_from_the_indexes_of_every_stream() {
        let d = data();
        let mut one = Vec::new();
        liblzma::write::XzEncoder::new(&mut one, 1)
            .write_all(&d)
            .unwrap();
        // Two streams with padding between and after, as `cat a.xz b.xz` plus padding gives.
        let mut two = one.clone();
        two.extend_from_slice(&[0; 8]);
        two.extend_from_slice(&one);
        two.extend_from_slice(&[0; 4]);
        assert_eq!(xz_size(temp_with(&one).as_file()).unwrap(), d.len() as u64);
        assert_eq!(
            xz_size(temp_with(&two).as_file()).unwrap(),
            2 * d.len() as u64
        );
        let cut = &one[..one.len() - 5];
        assert!(xz_size(temp_with(cut).as_file()).is_err());
    }

    #[test]
    fn zstd_size_is_summed_over_frames() {
        let d = data();
        let frame = zstd::bulk::compress(&d, 3).unwrap();
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        assert_eq!(
            zstd_size(temp_with(&frame).as_file()).unwrap(),
            Some(d.len() as u64)
        );
        assert_eq!(
            zstd_size(temp_with(&two).as_file()).unwrap(),
            Some(2 * d.len() as u64)
        );
        // A streaming encoder that was not told the size leaves it out of the header.
        let mut streamed = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut streamed, 3).unwrap();
        enc.write_all(&d).unwrap();
        enc.finish().unwrap();
        assert_eq!(zstd_size(temp_with(&streamed).as_file()).unwrap(), None);
        assert!(zstd_size(temp_with(&frame[..frame.len() - 3]).as_file()).is_err());
    }
}
