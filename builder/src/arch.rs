//! CPU architectures of boards, base images and agent binaries, read from ELF headers.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
    /// 32-bit ARM (armhf), e.g. Raspberry Pi OS 32-bit.
    Arm,
}

impl Arch {
    /// Every architecture imagegen knows, in the order it lists them.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Arm];

    /// The architecture this imagegen binary was built for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            "arm" => Some(Arch::Arm),
            _ => None,
        }
    }

    /// dpkg's name for it (dpkg-architecture(1)); 32-bit ARM boards run armhf userlands.
    pub fn dpkg(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
            Arch::Arm => "armhf",
        }
    }

    fn from_elf_machine(m: u16) -> Option<Arch> {
        match m {
            62 => Some(Arch::X86_64),
            183 => Some(Arch::Aarch64),
            40 => Some(Arch::Arm),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Arm => "arm",
        })
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Arch, String> {
        match s {
            "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            "arm" | "armhf" | "armv7" => Ok(Arch::Arm),
            _ => Err(format!("unknown architecture {s:?} (x86_64, aarch64, arm)")),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("ELF header is truncated")]
    Truncated,
    #[error("unsupported ELF machine {0} (imagegen knows x86_64, aarch64 and arm)")]
    UnknownMachine(u16),
}

/// The architecture of an ELF executable, from the first 20 bytes of its header.
pub fn elf_arch(head: &[u8]) -> Result<Arch, ElfError> {
    if head.len() < 4 || &head[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if head.len() < 20 {
        return Err(ElfError::Truncated);
    }
    // e_ident[EI_DATA]: 1 little-endian, 2 big-endian.
    let machine = match head[5] {
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => u16::from_le_bytes([head[18], head[19]]),
    };
    Arch::from_elf_machine(machine).ok_or(ElfError::UnknownMachine(machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_host_binary() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_arch(&exe[..64]).ok(), Arch::host());
    }

    #[test]
    fn all_lists_every_variant() {
        // A new variant fails to compile here until it is added to ALL as well.
        for a in Arch::ALL {
            match a {
                Arch::X86_64 | Arch::Aarch64 | Arch::Arm => {}
            }
        }
        let names: Vec<String> = Arch::ALL.iter().map(Arch::to_string).collect();
        assert_eq!(names, ["x86_64", "aarch64", "arm"]);
    }

    #[test]
    fn rejects_non_elf() {
        assert_eq!(elf_arch(b"#!/bin/sh\n"), Err(ElfError::NotElf));
        assert_eq!(elf_arch(b"\x7fELF\x02\x01"), Err(ElfError::Truncated));
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[18] = 0x08; // MIPS
        assert_eq!(elf_arch(&h), Err(ElfError::UnknownMachine(8)));
        h[18] = 183;
        assert_eq!(elf_arch(&h), Ok(Arch::Aarch64));
    }
}
