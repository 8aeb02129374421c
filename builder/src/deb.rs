//! Debian binary packages (`.deb`) the operator stages: what one says it is (Package, Version,
//! Architecture from its `control` file), so a package the board cannot install is refused at
//! `check` and before `build` downloads anything, not by dpkg on the node.
//!
//! The format is deb(5): an ar(5) archive whose first member is `debian-binary` ("2.0\n"),
//! then `control.tar` (uncompressed, or `.gz`, `.xz`, `.zst`: dpkg-deb 1.21+ reads all four),
//! then `data.tar.*`. Only the control member is read; the data member is skipped unread.

use crate::arch::Arch;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The `control` file is a few KiB; a larger control member is not a package.
const CONTROL_LIMIT: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("is not a Debian package (.deb): {0}")]
    NotDeb(String),
}

fn not_deb(why: impl Into<String>) -> DebError {
    DebError::NotDeb(why.into())
}

/// What a package's `control` file says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub package: String,
    pub version: String,
    /// dpkg's architecture name: "amd64", "arm64", "armhf", or "all".
    pub architecture: String,
}

impl Control {
    /// Why this package cannot be installed on a userland of `arch`, or None.
    pub fn arch_problem(&self, arch: Arch) -> Option<String> {
        let want = arch.dpkg();
        (self.architecture != "all" && self.architecture != want).then(|| {
            format!(
                "is {} {} for architecture {}, but the image's userland is {want}",
                self.package, self.version, self.architecture
            )
        })
    }
}

/// Reads the control data of the package at `path`.
pub fn read(path: &Path) -> Result<Control, DebError> {
    let f = std::fs::File::open(path)?;
    control(&mut BufReader::new(f))
}

/// The control data of the package `r` holds.
pub fn control<R: Read + Seek>(r: &mut R) -> Result<Control, DebError> {
    let mut magic = [0u8; 8];
    read_exact_or(r, &mut magic, "shorter than an ar archive header")?;
    if &magic != b"!<arch>\n" {
        return Err(not_deb("no ar archive signature"));
    }
    let mut first = true;
    loop {
        let Some((name, size)) = member(r)? else {
            return Err(not_deb("no control.tar member"));
        };
        if first {
            // deb(5): the first member must be debian-binary, format 2.x.
            first = false;
            if name != "debian-binary" {
                return Err(not_deb(format!(
                    "first member is {name:?}, not debian-binary"
                )));
            }
            let mut v = Vec::new();
            r.by_ref().take(size.min(64)).read_to_end(&mut v)?;
            if !v.starts_with(b"2.") {
                return Err(not_deb("debian-binary is not format 2.x"));
            }
            skip(r, size - (v.len() as u64) + size % 2)?;
            continue;
        }
        if let Some(compression) = name.strip_prefix("control.tar") {
            if size > CONTROL_LIMIT {
                return Err(not_deb(format!("control member of {size} bytes")));
            }
            let start = r.stream_position()?;
            let raw = r.by_ref().take(size);
            let mut tar: Box<dyn Read + '_> = match compression {
                "" => Box::new(raw),
                ".gz" => Box::new(flate2::read::GzDecoder::new(raw)),
                ".xz" => Box::new(liblzma::read::XzDecoder::new(raw)),
                ".zst" => Box::new(zstd::stream::read::Decoder::new(raw)?),
                other => {
                    return Err(not_deb(format!("unknown control compression {other:?}")));
                }
            };
            let text = tar_member(&mut tar, "control")?
                .ok_or_else(|| not_deb("control.tar has no control file"))?;
            drop(tar);
            let control = parse_control(&String::from_utf8_lossy(&text))?;
            r.seek(SeekFrom::Start(start + size + size % 2))?;
            data_member_fits(r)?;
            return Ok(control);
        }
        skip(r, size + size % 2)?;
    }
}

/// The `data.tar` member after the control member is all there: a download cut short has a
/// header that promises more bytes than the file holds, which dpkg finds only on the node.
fn data_member_fits<R: Read + Seek>(r: &mut R) -> Result<(), DebError> {
    let Some((name, size)) = member(r)? else {
        return Err(not_deb("no data.tar member"));
    };
    if !name.starts_with("data.tar") {
        return Err(not_deb(format!(
            "member after control.tar is {name:?}, not data.tar"
        )));
    }
    let at = r.stream_position()?;
    let len = r.seek(SeekFrom::End(0))?;
    if at.saturating_add(size) > len {
        return Err(not_deb(format!(
            "truncated: data.tar needs {size} bytes, the file has {} after its header",
            len - at
        )));
    }
    Ok(())
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], why: &str) -> Result<(), DebError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => not_deb(why),
        _ => DebError::Io(e),
    })
}

fn skip<R: Seek>(r: &mut R, n: u64) -> Result<(), DebError> {
    let n = i64::try_from(n).map_err(|_| not_deb("member size out of range"))?;
    r.seek(SeekFrom::Current(n))?;
    Ok(())
}

/// The next ar member's name and size, None at the end of the archive.
fn member<R: Read>(r: &mut R) -> Result<Option<(String, u64)>, DebError> {
    let mut h = [0u8; 60];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(not_deb("truncated ar member header")),
            n => got += n,
        }
    }
    // ar(5): name[16] mtime[12] uid[6] gid[6] mode[8] size[10] fmag[2] = "`\n".
    if &h[58..60] != b"`\n" {
        return Err(not_deb("bad ar member header"));
    }
    let field = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_owned();
    // GNU ar ends names with '/'; dpkg-deb writes them without.
    let name = field(&h[..16]).trim_end_matches('/').to_owned();
    let size = field(&h[48..58])
        .parse::<u64>()
        .map_err(|_| not_deb("bad ar member size"))?;
    Ok(Some((name, size)))
}

/// The content of the regular file `want` ("./control" or "control") of a tar stream.
fn tar_member<R: Read + ?Sized>(r: &mut R, want: &str) -> Result<Option<Vec<u8>>, DebError> {
    let mut h = [0u8; 512];
    loop {
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(not_deb(format!("control.tar: {e}"))),
        }
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        // POSIX ustar: name[100] at 0, size[12] octal at 124, typeflag at 156, prefix[155] at
        // 345 (names in a control.tar are short; the prefix is empty).
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&h[..name_end]).into_owned();
        let size_field = String::from_utf8_lossy(&h[124..136]);
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .map_err(|_| not_deb("control.tar: bad tar header"))?;
        let regular = matches!(h[156], b'0' | 0);
        if regular && name.trim_start_matches("./") == want {
            if size > CONTROL_LIMIT {
                return Err(not_deb("control file too large"));
            }
            let mut buf = Vec::new();
            r.take(size).read_to_end(&mut buf)?;
            return Ok(Some(buf));
        }
        let padded = size.div_ceil(512) * 512;
        io::copy(&mut r.take(padded), &mut io::sink())?;
    }
}

/// Package, Version and Architecture of a deb-control(5) paragraph.
fn parse_control(text: &str) -> Result<Control, DebError> {
    let field = |name: &str| {
        text.lines()
            .filter(|l| !l.starts_with([' ', '\t']))
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .filter(|v| !v.is_empty())
            .ok_or_else(|| not_deb(format!("its control file has no {name} field")))
    };
    Ok(Control {
        package: field("Package")?,
        version: field("Version")?,
        architecture: field("Architecture")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_deb() {
        let e = |b: &[u8]| control(&mut io::Cursor::new(b)).unwrap_err().to_string();
        assert!(e(b"").contains("shorter"));
        assert!(e(b"#!/bin/sh\necho hi\n").contains("no ar archive signature"));
        assert!(e(b"!<arch>\n").contains("no control.tar"));
        let mut ar = b"!<arch>\n".to_vec();
        ar.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "data.tar", 0, 0, 0, 100644, 4
            )
            .as_bytes(),
        );
        ar.extend_from_slice(b"abcd");
        assert!(e(&ar).contains("not debian-binary"), "{}", e(&ar));
    }

    #[test]
    fn control_fields() {
        let c = parse_control(
            "Package: hello\nVersion: 1.0-1\nArchitecture: arm64\nDescription: x\n Version: 9\n",
        )
        .unwrap();
        assert_eq!(
            (
                c.package.as_str(),
                c.version.as_str(),
                c.architecture.as_str()
            ),
            ("hello", "1.0-1", "arm64")
        );
        assert!(c.arch_problem(Arch::Aarch64).is_none());
        assert!(c.arch_problem(Arch::X86_64).unwrap().contains("amd64"));
        assert!(parse_control("Package: x\n").is_err());
    }
}
