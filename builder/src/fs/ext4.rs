//! ext4: read in process through ext4-view, write through e2fsprogs (debugfs) on the
//! whole-disk image at the partition offset.

// Placeholder until the ext4 backend lands (merge replaces this file).
use super::{Filesystem, FsError};
pub struct Ext4Fs;
impl Ext4Fs {
    pub fn open(_: &std::path::Path, _: u64, _: u64) -> Result<Ext4Fs, FsError> {
        Err(FsError::Unsupported("ext4 backend not merged yet".into()))
    }
}
pub fn grow(_: &std::path::Path, _: u64, _: u64, _: u64, _: i64) -> Result<(), FsError> {
    Err(FsError::Unsupported("ext4 backend not merged yet".into()))
}
impl Filesystem for Ext4Fs {
    fn kind(&self) -> super::FsKind {
        unimplemented!()
    }
    fn info(&mut self) -> Result<super::FsInfo, FsError> {
        unimplemented!()
    }
    fn lstat(&mut self, _: &str) -> Result<Option<super::Stat>, FsError> {
        unimplemented!()
    }
    fn read_dir(&mut self, _: &str) -> Result<Vec<super::DirEntry>, FsError> {
        unimplemented!()
    }
    fn read_to(&mut self, _: &str, _: &mut dyn std::io::Write) -> Result<u64, FsError> {
        unimplemented!()
    }
    fn read_link(&mut self, _: &str) -> Result<String, FsError> {
        unimplemented!()
    }
    fn apply(&mut self, _: &[super::Op], _: i64) -> Result<(), FsError> {
        unimplemented!()
    }
}
