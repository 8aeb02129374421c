//! Command-line types. Only clap types live here; `crate::cmd` runs them.
//! Args are listed in --help in the order declared; keep help text within 80 columns.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "imagegen",
    version,
    about = "Turn vendor OS images into zero-touch cluster nodes, offline and without root",
    after_help = "Image paths are written IMAGE:/PATH, with PATH as the booted system sees it \
(e.g. disk.img:/boot/firmware/cmdline.txt): the image's own /etc/fstab decides which \
partition it lands on.\n\nTimestamps of edits come from SOURCE_DATE_EPOCH, or, when it is \
unset, from the image itself, so the same edits on the same image give the same bytes."
)]
#[command(help_expected = true, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show partitions, filesystems and the detected OS of an image
    Inspect(InspectArgs),
    /// List a directory inside an image
    Ls(LsArgs),
    /// Print a file from inside an image (follows symlinks)
    Cat(CatArgs),
    /// Copy a host file into an image (creates or replaces)
    Cp(CpArgs),
    /// Make a directory inside an image
    Mkdir(MkdirArgs),
    /// Make a symbolic link inside an image
    Ln(LnArgs),
    /// Remove a file, a symlink or an empty directory inside an image
    Rm(RmArgs),
    /// Grow an image, its last partition and that partition's ext4 filesystem
    Grow(GrowArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Disk image (raw)
    pub image: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Directory, as IMAGE:/PATH
    #[arg(value_name = "IMAGE:/PATH")]
    pub target: String,
    /// Long listing: type, mode, owner, size
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// File, as IMAGE:/PATH
    #[arg(value_name = "IMAGE:/PATH")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// File on the host
    pub source: PathBuf,
    /// Destination, as IMAGE:/PATH (the parent directory must exist)
    #[arg(value_name = "IMAGE:/PATH")]
    pub target: String,
    /// Permissions, octal [default: 0644]
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Owner as UID:GID [default: 0:0]
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
}

#[derive(Debug, Args)]
pub struct MkdirArgs {
    /// Directory to make, as IMAGE:/PATH
    #[arg(value_name = "IMAGE:/PATH")]
    pub target: String,
    /// Make missing parents too; no error if it exists
    #[arg(short, long)]
    pub parents: bool,
    /// Permissions, octal [default: 0755]
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// Owner as UID:GID [default: 0:0]
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<(u32, u32)>,
}

#[derive(Debug, Args)]
pub struct LnArgs {
    /// Make a symbolic link (the only kind imagegen makes)
    #[arg(short = 's', long = "symbolic", required = true)]
    pub symbolic: bool,
    /// Replace an existing file or link at the destination
    #[arg(short, long)]
    pub force: bool,
    /// What the link points to (stored as given)
    pub link_target: String,
    /// The link to make, as IMAGE:/PATH
    #[arg(value_name = "IMAGE:/PATH")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// What to remove, as IMAGE:/PATH
    #[arg(value_name = "IMAGE:/PATH")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct GrowArgs {
    /// Disk image (raw), changed in place
    pub image: PathBuf,
    /// New size: absolute (4G) or relative (+512M); suffixes K, M, G, T (powers of 1024)
    #[arg(long, value_parser = parse_size)]
    pub size: SizeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeArg {
    Absolute(u64),
    Relative(u64),
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode like 0644"))?;
    if m > 0o7777 {
        return Err(format!("{s:?} has bits beyond 07777"));
    }
    Ok(m)
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not UID:GID (numbers, e.g. 1000:1000)"))?;
    let num = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| format!("{x:?} is not a numeric id (names are not looked up)"))
    };
    Ok((num(u)?, num(g)?))
}

/// Parses 4G, 512M, 1048576, +256M.
pub fn parse_size(s: &str) -> Result<SizeArg, String> {
    let (relative, rest) = match s.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let split = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4G or +512M"))?;
    let mult: u64 = match suffix
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown size suffix {suffix:?} (use K, M, G or T)"
            ));
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    Ok(if relative {
        SizeArg::Relative(bytes)
    } else {
        SizeArg::Absolute(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G"), Ok(SizeArg::Absolute(4 << 30)));
        assert_eq!(parse_size("+512M"), Ok(SizeArg::Relative(512 << 20)));
        assert_eq!(parse_size("+256MiB"), Ok(SizeArg::Relative(256 << 20)));
        assert_eq!(parse_size("1000"), Ok(SizeArg::Absolute(1000)));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn modes_and_owners() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("4755"), Ok(0o4755));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("17777").is_err());
        assert_eq!(parse_owner("1000:1000"), Ok((1000, 1000)));
        assert!(parse_owner("pi:pi").is_err());
        assert!(parse_owner("1000").is_err());
    }
}
