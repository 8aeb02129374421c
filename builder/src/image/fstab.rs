//! /etc/fstab parsing (fstab(5)).

// Placeholder until the disk branch lands (merge replaces this file).
pub enum Spec {
    Uuid(String),
    PartUuid(String),
    Label(String),
    PartLabel(String),
    Device(String),
    Other(String),
}
pub struct FstabEntry {
    pub spec: Spec,
    pub mount_point: String,
    pub line: usize,
}
#[derive(Debug, thiserror::Error)]
#[error("fstab")]
pub struct FstabError {
    pub line: usize,
}
pub fn parse(_: &str) -> Result<Vec<FstabEntry>, FstabError> {
    Err(FstabError { line: 0 })
}
