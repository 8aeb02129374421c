//! Which filesystem a partition holds, from its first sectors.

use crate::fs::FsKind;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

pub struct Probed {
    pub kind: Option<FsKind>,
    /// ext4 `s_wtime` (with its high byte), when the partition is ext4.
    pub written_at: Option<i64>,
}

/// Looks at the boot sector and the ext4 superblock (at byte 1024) of a partition.
pub fn probe(file: &mut File, offset: u64, len: u64) -> io::Result<Probed> {
    let mut head = vec![0u8; 2048];
    file.seek(SeekFrom::Start(offset))?;
    let n = read_up_to(file, &mut head)?;
    head.truncate(n.min(usize::try_from(len).unwrap_or(usize::MAX)));
    Ok(classify(&head))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn classify(head: &[u8]) -> Probed {
    let none = Probed {
        kind: None,
        written_at: None,
    };
    if head.len() >= 2048 {
        let sb = &head[1024..2048];
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) == 0xEF53 {
            let lo = u32::from_le_bytes([sb[0x30], sb[0x31], sb[0x32], sb[0x33]]);
            let hi = sb[0x274];
            return Probed {
                kind: Some(FsKind::Ext4),
                written_at: Some(i64::from(lo) | (i64::from(hi) << 32)),
            };
        }
    }
    if head.len() >= 512 && is_fat_boot_sector(&head[..512]) {
        return Probed {
            kind: Some(FsKind::Fat),
            written_at: None,
        };
    }
    none
}

/// A FAT boot sector: the 0x55AA signature, a jump instruction, and a sane BPB. The type
/// strings ("FAT16   ", "FAT32   ") are informational only, so the BPB decides.
fn is_fat_boot_sector(s: &[u8]) -> bool {
    let jump = s[0] == 0xEB || s[0] == 0xE9;
    let sig = s[510] == 0x55 && s[511] == 0xAA;
    let bytes_per_sector = u16::from_le_bytes([s[11], s[12]]);
    let sectors_per_cluster = s[13];
    let reserved = u16::from_le_bytes([s[14], s[15]]);
    let fats = s[16];
    jump && sig
        && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved > 0
        && (1..=2).contains(&fats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_nothing() {
        assert!(classify(&[0u8; 2048]).kind.is_none());
        assert!(classify(&[0u8; 10]).kind.is_none());
    }
}
