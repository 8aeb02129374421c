//! The few superblock fields imagegen needs, read directly: ext4-view keeps its superblock
//! private, and the write gate must see feature bits ext4-view itself accepts (e.g. recover).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::fs::FsError;

const MAGIC: u16 = 0xef53;
const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;

const COMPAT: usize = 0;
const INCOMPAT: usize = 1;
const RO_COMPAT: usize = 2;

/// Feature names as `dumpe2fs` prints them (lib/e2p/feature.c), by (kind, bit).
const NAMES: &[(usize, u32, &str)] = &[
    (COMPAT, 0x1, "dir_prealloc"),
    (COMPAT, 0x2, "imagic_inodes"),
    (COMPAT, 0x4, "has_journal"),
    (COMPAT, 0x8, "ext_attr"),
    (COMPAT, 0x10, "resize_inode"),
    (COMPAT, 0x20, "dir_index"),
    (COMPAT, 0x40, "lazy_bg"),
    (COMPAT, 0x100, "snapshot_bitmap"),
    (COMPAT, 0x200, "sparse_super2"),
    (COMPAT, 0x400, "fast_commit"),
    (COMPAT, 0x800, "stable_inodes"),
    (COMPAT, 0x1000, "orphan_file"),
    (INCOMPAT, 0x1, "compression"),
    (INCOMPAT, 0x2, "filetype"),
    (INCOMPAT, 0x4, "needs_recovery"),
    (INCOMPAT, 0x8, "journal_dev"),
    (INCOMPAT, 0x10, "meta_bg"),
    (INCOMPAT, 0x40, "extent"),
    (INCOMPAT, 0x80, "64bit"),
    (INCOMPAT, 0x100, "mmp"),
    (INCOMPAT, 0x200, "flex_bg"),
    (INCOMPAT, 0x400, "ea_inode"),
    (INCOMPAT, 0x1000, "dirdata"),
    (INCOMPAT, 0x2000, "metadata_csum_seed"),
    (INCOMPAT, 0x4000, "large_dir"),
    (INCOMPAT, 0x8000, "inline_data"),
    (INCOMPAT, 0x10000, "encrypt"),
    (INCOMPAT, 0x20000, "casefold"),
    (RO_COMPAT, 0x1, "sparse_super"),
    (RO_COMPAT, 0x2, "large_file"),
    (RO_COMPAT, 0x8, "huge_file"),
    (RO_COMPAT, 0x10, "uninit_bg"),
    (RO_COMPAT, 0x20, "dir_nlink"),
    (RO_COMPAT, 0x40, "extra_isize"),
    (RO_COMPAT, 0x80, "snapshot"),
    (RO_COMPAT, 0x100, "quota"),
    (RO_COMPAT, 0x200, "bigalloc"),
    (RO_COMPAT, 0x400, "metadata_csum"),
    (RO_COMPAT, 0x800, "replica"),
    (RO_COMPAT, 0x1000, "read-only"),
    (RO_COMPAT, 0x2000, "project"),
    (RO_COMPAT, 0x4000, "shared_blocks"),
    (RO_COMPAT, 0x8000, "verity"),
    (RO_COMPAT, 0x10000, "orphan_present"),
];

/// INCOMPAT features debugfs writes correctly and ext4-view reads back.
const WRITABLE_INCOMPAT: &[&str] = &[
    "filetype",
    "extent",
    "64bit",
    "flex_bg",
    "metadata_csum_seed",
];

/// RO_COMPAT features debugfs keeps consistent when it adds, replaces and removes files.
/// Left out on purpose: quota and project (debugfs does not charge usage, so e2fsck would then
/// find wrong quota totals), bigalloc (cluster accounting), orphan_present (see `write_gate`).
const WRITABLE_RO_COMPAT: &[&str] = &[
    "sparse_super",
    "large_file",
    "huge_file",
    "uninit_bg",
    "dir_nlink",
    "extra_isize",
    "metadata_csum",
];

#[derive(Debug, Clone)]
pub struct Superblock {
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u64,
    pub block_size: u32,
    pub inode_size: u16,
    state: u16,
    features: [u32; 3],
    pub uuid: [u8; 16],
    pub label: [u8; 16],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Superblock {
    /// Reads the primary superblock of the filesystem at `offset`.
    pub fn read(file: &File, offset: u64) -> Result<Superblock, FsError> {
        let mut b = [0u8; 1024];
        file.read_exact_at(&mut b, offset + 1024)?;
        Superblock::parse(&b)
    }

    fn parse(b: &[u8; 1024]) -> Result<Superblock, FsError> {
        if u16_at(b, 0x38) != MAGIC {
            return Err(FsError::Corrupt("no ext2/3/4 superblock magic".into()));
        }
        let log_block_size = u32_at(b, 0x18);
        if log_block_size > 6 {
            return Err(FsError::Corrupt(format!(
                "block size exponent {log_block_size} out of range"
            )));
        }
        let features = [u32_at(b, 0x5c), u32_at(b, 0x60), u32_at(b, 0x64)];
        let is_64bit = features[INCOMPAT] & 0x80 != 0;
        let wide = |lo: usize, hi: usize| {
            let hi = if is_64bit {
                u64::from(u32_at(b, hi))
            } else {
                0
            };
            hi << 32 | u64::from(u32_at(b, lo))
        };
        // Revision 0 filesystems have 128-byte inodes and no s_inode_size field.
        let inode_size = if u32_at(b, 0x4c) == 0 {
            128
        } else {
            u16_at(b, 0x58)
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[0x68..0x78]);
        let mut label = [0u8; 16];
        label.copy_from_slice(&b[0x78..0x88]);
        Ok(Superblock {
            blocks_count: wide(0x4, 0x150),
            free_blocks: wide(0xc, 0x158),
            free_inodes: u64::from(u32_at(b, 0x10)),
            block_size: 1024 << log_block_size,
            inode_size,
            state: u16_at(b, 0x3a),
            features,
            uuid,
            label,
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.blocks_count * u64::from(self.block_size)
    }

    /// "ext4", "ext3" or "ext2", by the features that set them apart.
    pub fn variant(&self) -> &'static str {
        if [
            "extent",
            "flex_bg",
            "64bit",
            "huge_file",
            "metadata_csum",
            "extra_isize",
        ]
        .iter()
        .any(|f| self.has(f))
        {
            "ext4"
        } else if self.has_journal() {
            "ext3"
        } else {
            "ext2"
        }
    }

    pub fn has_journal(&self) -> bool {
        self.has("has_journal")
    }

    /// New files get extent trees (else block maps).
    pub fn has_extents(&self) -> bool {
        self.has("extent")
    }

    fn has(&self, name: &str) -> bool {
        NAMES
            .iter()
            .any(|&(kind, bit, n)| n == name && self.features[kind] & bit != 0)
    }

    /// Feature names in dumpe2fs order; bits without a name as dumpe2fs shows them
    /// (`FEATURE_I31`).
    pub fn feature_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (kind, letter) in [(COMPAT, 'C'), (INCOMPAT, 'I'), (RO_COMPAT, 'R')] {
            for bit in 0..32 {
                let mask = 1u32 << bit;
                if self.features[kind] & mask == 0 {
                    continue;
                }
                match NAMES.iter().find(|&&(k, m, _)| k == kind && m == mask) {
                    Some((_, _, name)) => out.push((*name).to_string()),
                    None => out.push(format!("FEATURE_{letter}{bit}")),
                }
            }
        }
        out
    }

    pub fn label_string(&self) -> Option<String> {
        let end = self.label.iter().position(|&c| c == 0).unwrap_or(16);
        let label = String::from_utf8_lossy(&self.label[..end]).into_owned();
        (!label.is_empty()).then_some(label)
    }

    pub fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// Refuses a filesystem whose journal must be replayed first.
    pub fn recovery_gate(&self) -> Result<(), FsError> {
        if self.has("needs_recovery") {
            return Err(FsError::Unsupported(
                "the ext4 filesystem needs journal recovery (it was not cleanly unmounted): run \
                 `e2fsck -fy` on it, or boot it once and shut it down cleanly, then retry"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Refuses filesystems that imagegen cannot edit safely through debugfs, saying what to do.
    pub fn write_gate(&self) -> Result<(), FsError> {
        let refuse = |msg: String| Err(FsError::Unsupported(msg));
        self.recovery_gate()?;
        if self.has("orphan_present") {
            return refuse(
                "the ext4 filesystem has orphan inodes pending (not cleanly unmounted): run \
                 `e2fsck -fy` on it, then retry"
                    .into(),
            );
        }
        if self.state & STATE_ERROR != 0 || self.state & STATE_VALID == 0 {
            return refuse(format!(
                "the ext4 filesystem is marked {}: run `e2fsck -fy` on it, then retry",
                if self.state & STATE_ERROR != 0 {
                    "as having errors"
                } else {
                    "as not cleanly unmounted"
                }
            ));
        }
        let blocked = |kind: usize, allowed: &[&str]| -> Vec<String> {
            (0..32)
                .map(|bit| 1u32 << bit)
                .filter(|&m| self.features[kind] & m != 0)
                .filter_map(
                    |m| match NAMES.iter().find(|&&(k, b, _)| k == kind && b == m) {
                        Some((_, _, name)) if allowed.contains(name) => None,
                        Some((_, _, name)) => Some((*name).to_string()),
                        None => Some(format!("unknown bit {m:#x}")),
                    },
                )
                .collect()
        };
        let incompat = blocked(INCOMPAT, WRITABLE_INCOMPAT);
        let ro_compat = blocked(RO_COMPAT, WRITABLE_RO_COMPAT);
        if !incompat.is_empty() || !ro_compat.is_empty() {
            let all: Vec<String> = incompat.into_iter().chain(ro_compat).collect();
            return refuse(format!(
                "imagegen cannot safely edit an ext4 filesystem with feature(s) {}: use an image \
                 without them (or remove them with `tune2fs -O ^FEATURE` where that is possible)",
                all.join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(compat: u32, incompat: u32, ro: u32, state: u16) -> Superblock {
        let mut b = [0u8; 1024];
        b[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&state.to_le_bytes());
        b[0x5c..0x60].copy_from_slice(&compat.to_le_bytes());
        b[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        b[0x64..0x68].copy_from_slice(&ro.to_le_bytes());
        Superblock::parse(&b).unwrap()
    }

    #[test]
    fn gate_refuses_what_debugfs_cannot_edit_safely() {
        let ok = sb(
            0x1000 | 0x4,
            0x2 | 0x40 | 0x80 | 0x200 | 0x2000,
            0x400 | 0x8,
            1,
        );
        ok.write_gate().unwrap();
        for (incompat, ro, state, word) in [
            (0x4, 0, 1, "journal recovery"),
            (0x8000, 0, 1, "inline_data"),
            (0x10000, 0, 1, "encrypt"),
            (0x20000, 0, 1, "casefold"),
            (0x10, 0, 1, "meta_bg"),
            (0x8000_0000, 0, 1, "unknown bit 0x80000000"),
            (0, 0x8000_0000, 1, "unknown bit 0x80000000"),
            (0, 0x10000, 1, "orphan inodes"),
            (0, 0x100, 1, "quota"),
            (0, 0, 3, "errors"),
            (0, 0, 0, "not cleanly unmounted"),
        ] {
            let s = sb(0, 0x2 | incompat, ro, state);
            let err = s.write_gate().unwrap_err().to_string();
            assert!(err.contains(word), "{err:?} should mention {word:?}");
        }
    }

    #[test]
    fn unknown_bits_are_named_like_dumpe2fs() {
        let s = sb(0x8000, 0x2, 0, 1);
        assert_eq!(s.feature_names(), ["FEATURE_C15", "filetype"]);
    }
}
