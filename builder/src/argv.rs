//! Host paths as arguments of the external tools imagegen runs (debugfs, e2fsck, dumpe2fs,
//! resize2fs, fsck.fat, qemu-img).
//!
//! Each of them parses its arguments with getopt, so an image named `-dash.img` was read as
//! options (`dumpe2fs: invalid option -- 'd'`). Not every tool honours `--` the same way, and
//! e2fsprogs' `IMAGE?offset=N` is one argument built from the path, so the path itself is made
//! unambiguous: a relative path that starts with '-' gets a leading `./`.

use std::borrow::Cow;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `path`, spelled so that no tool reads it as an option.
pub fn path(path: &Path) -> Cow<'_, Path> {
    if path.as_os_str().as_bytes().starts_with(b"-") {
        let mut s = OsString::from("./");
        s.push(path.as_os_str());
        Cow::Owned(PathBuf::from(s))
    } else {
        Cow::Borrowed(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_like_paths_get_a_dot_slash() {
        assert_eq!(path(Path::new("-x.img")), Path::new("./-x.img"));
        assert_eq!(path(Path::new("-d/x.img")), Path::new("./-d/x.img"));
        assert_eq!(path(Path::new("x-.img")), Path::new("x-.img"));
        assert_eq!(path(Path::new("/tmp/-x.img")), Path::new("/tmp/-x.img"));
        assert_eq!(path(Path::new("./-x.img")), Path::new("./-x.img"));
    }
}
