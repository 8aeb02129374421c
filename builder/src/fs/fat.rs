//! FAT16/FAT32 through fatfs 0.3.6. Its `create_dir` corrupts FAT32 (rust-fatfs #117), so
//! directories are made another way.

// Placeholder until the fat backend lands (merge replaces this file).
use super::{Filesystem, FsError};
pub struct FatFs;
impl FatFs {
    pub fn open(_: &std::path::Path, _: u64, _: u64) -> Result<FatFs, FsError> {
        Err(FsError::Unsupported("fat backend not merged yet".into()))
    }
}
impl Filesystem for FatFs {
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
