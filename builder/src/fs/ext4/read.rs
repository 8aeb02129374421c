//! In-process reading through ext4-view, in place inside the whole-disk image.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use ext4_view::{Ext4, Ext4Error, Ext4Read, Metadata};

use crate::fs::{DirEntry, FileType, FsError, Stat};

/// The partition `[offset, offset + len)` of a whole-disk image, as ext4-view's byte source.
/// Reads past `len` fail instead of wandering into the next partition.
struct Partition {
    file: File,
    offset: u64,
    len: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("read of {count} bytes at {start} runs past the partition's end ({len} bytes)")]
struct PastEnd {
    start: u64,
    count: usize,
    len: u64,
}

impl Ext4Read for Partition {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let past_end = || PastEnd {
            start,
            count: dst.len(),
            len: self.len,
        };
        let end = start.checked_add(dst.len() as u64).ok_or_else(past_end)?;
        if end > self.len {
            return Err(Box::new(past_end()));
        }
        self.file.read_exact_at(dst, self.offset + start)?;
        Ok(())
    }
}

pub fn load(file: File, offset: u64, len: u64) -> Result<Ext4, FsError> {
    Ext4::load(Box::new(Partition { file, offset, len })).map_err(|e| match e {
        Ext4Error::Incompatible(i) => FsError::Unsupported(format!(
            "imagegen cannot read this ext4 filesystem ({i}): use an image without that feature"
        )),
        e => map_err("/", e),
    })
}

/// Maps an ext4-view error on `path` to the shared vocabulary.
pub fn map_err(path: &str, e: Ext4Error) -> FsError {
    let path = path.to_string();
    match e {
        Ext4Error::NotFound => FsError::NotFound(path),
        Ext4Error::NotADirectory => FsError::NotADirectory(path),
        Ext4Error::IsADirectory => FsError::IsADirectory(path),
        Ext4Error::NotASymlink => FsError::NotASymlink(path),
        Ext4Error::Io(e) => match e.downcast::<std::io::Error>() {
            Ok(io) => FsError::Io(*io),
            Err(e) => FsError::Corrupt(format!("{path}: {e}")),
        },
        Ext4Error::Encrypted | Ext4Error::Incompatible(_) | Ext4Error::IsASpecialFile => {
            FsError::Unsupported(format!("{path}: {e}"))
        }
        e => FsError::Corrupt(format!("{path}: {e}")),
    }
}

fn stat(m: &Metadata) -> Stat {
    let t = m.file_type();
    Stat {
        file_type: if t.is_regular_file() {
            FileType::Regular
        } else if t.is_dir() {
            FileType::Directory
        } else if t.is_symlink() {
            FileType::Symlink
        } else {
            FileType::Other
        },
        mode: u32::from(m.mode()),
        uid: m.uid(),
        gid: m.gid(),
        size: m.len(),
        mtime: m.modified().seconds(),
    }
}

pub fn lstat(fs: &Ext4, path: &str) -> Result<Option<Stat>, FsError> {
    match fs.symlink_metadata(path) {
        Ok(m) => Ok(Some(stat(&m))),
        // A regular file as a parent component: the path cannot exist either.
        Err(Ext4Error::NotFound | Ext4Error::NotADirectory) => Ok(None),
        Err(e) => Err(map_err(path, e)),
    }
}

/// Directory entries without "." and "..".
pub fn read_dir(fs: &Ext4, path: &str) -> Result<Vec<DirEntry>, FsError> {
    let mut out = Vec::new();
    for entry in fs.read_dir(path).map_err(|e| map_err(path, e))? {
        let entry = entry.map_err(|e| map_err(path, e))?;
        let name = entry.file_name();
        let name = name.as_str().map_err(|_| {
            FsError::Unsupported(format!(
                "{path}: an entry's name is not UTF-8 ({})",
                name.display()
            ))
        })?;
        if name == "." || name == ".." {
            continue;
        }
        let name = name.to_string();
        let meta = entry.metadata().map_err(|e| map_err(path, e))?;
        out.push(DirEntry {
            name,
            stat: stat(&meta),
        });
    }
    Ok(out)
}

pub fn read_to(fs: &Ext4, path: &str, out: &mut dyn Write) -> Result<u64, FsError> {
    let mut file = open_regular(fs, path)?;
    Ok(std::io::copy(&mut file, out)?)
}

pub fn read_head(fs: &Ext4, path: &str, max: usize) -> Result<Vec<u8>, FsError> {
    let mut head = Vec::with_capacity(max);
    open_regular(fs, path)?
        .take(max as u64)
        .read_to_end(&mut head)?;
    Ok(head)
}

fn open_regular(fs: &Ext4, path: &str) -> Result<ext4_view::File, FsError> {
    let meta = fs.symlink_metadata(path).map_err(|e| map_err(path, e))?;
    if !meta.file_type().is_regular_file() {
        return Err(if meta.is_dir() {
            FsError::IsADirectory(path.to_string())
        } else {
            FsError::Unsupported(format!("{path}: not a regular file"))
        });
    }
    fs.open(path).map_err(|e| map_err(path, e))
}

/// Whether the regular file at `path` holds exactly the bytes `expected` yields.
pub fn same_content(fs: &Ext4, path: &str, expected: &mut dyn Read) -> Result<bool, FsError> {
    let mut file = fs.open(path).map_err(|e| map_err(path, e))?;
    let mut a = vec![0u8; 64 * 1024];
    let mut b = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut file, &mut a)?;
        let m = read_full(expected, &mut b[..n.max(1)])?;
        if n != m || a[..n] != b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn read_link(fs: &Ext4, path: &str) -> Result<String, FsError> {
    let target = fs.read_link(path).map_err(|e| map_err(path, e))?;
    target
        .to_str()
        .map(str::to_string)
        .map_err(|_| FsError::Unsupported(format!("{path}: symlink target is not UTF-8")))
}
