//! A disk image as the read-only file commands (`inspect`, `ls`, `cat`) take it: a raw image
//! as it is, or a compressed one (`.img.zst`, the default output of `build`; `.img.xz` from a
//! vendor) decoded into a sparse scratch copy that is removed when it is dropped, or by the
//! interrupt handler on Ctrl-C. The image engine needs random access (partition table at the
//! start, GPT backup at the end, ext4 metadata anywhere), which a compressed stream does not
//! give; the sparse copy costs only the image's data in disk space.

use crate::fetch::{self, FetchError, Format};
use crate::interrupt::Guard;
use std::path::{Path, PathBuf};
use tempfile::TempPath;

pub struct Readable {
    path: PathBuf,
    // Dropped in this order: the guard first, then the file it guards.
    _guard: Option<Guard>,
    _scratch: Option<TempPath>,
}

impl Readable {
    /// Opens `image` for reading, decompressing it first when it is compressed.
    pub fn open(image: &Path) -> Result<Readable, FetchError> {
        let format = Format::of_file(image)?;
        if format == Format::Raw {
            return Ok(Readable {
                path: image.to_path_buf(),
                _guard: None,
                _scratch: None,
            });
        }
        let scratch = scratch_file(image)?;
        let guard = Guard::new(&scratch);
        fetch::unpack_scratch(image, &scratch, format)?;
        Ok(Readable {
            path: scratch.to_path_buf(),
            _guard: Some(guard),
            _scratch: Some(scratch),
        })
    }

    /// The raw image to open.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A hidden file beside the image, where the user keeps images and so has room for one, or
/// in the temporary directory when that directory is not writable.
fn scratch_file(image: &Path) -> Result<TempPath, FetchError> {
    let dir = image
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let named = |dir: &Path| {
        tempfile::Builder::new()
            .prefix(".imagegen-read-")
            .suffix(".img")
            .tempfile_in(dir)
            .map(|f| f.into_temp_path())
    };
    named(dir)
        .or_else(|_| named(&std::env::temp_dir()))
        .map_err(|source| FetchError::Io {
            action: "cannot create a scratch copy of",
            path: image.to_path_buf(),
            source,
        })
}
