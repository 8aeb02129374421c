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
    /// No progress bars, and no progress lines when stderr is not a terminal
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
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
    /// Build node images from a vendor image
    Build(BuildArgs),
    /// List the boards imagegen knows
    Boards(BoardsArgs),
    /// Add one node's identity and secrets to a generic image, on its boot partition only
    Personalize(PersonalizeArgs),
    /// Write a commented example cluster.toml
    Init(InitArgs),
    /// Validate a cluster.toml
    Check(CheckArgs),
    /// Write an admin kubeconfig for the cluster a cluster.toml starts
    Kubeconfig(KubeconfigArgs),
    /// Write an image to an SD card, a USB disk or a file, and verify it
    Flash(FlashArgs),
    /// Write the WireGuard config of one of the operator's machines ([wireguard] clients)
    VpnClient(VpnClientArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Disk image: raw, .img.zst or .img.xz (read through a sparse scratch copy)
    pub image: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Directory, as IMAGE:/PATH (IMAGE may be compressed)
    #[arg(value_name = "IMAGE:/PATH")]
    pub target: String,
    /// Long listing: type, mode, owner, size
    #[arg(short, long)]
    pub long: bool,
}

#[derive(Debug, Args)]
pub struct CatArgs {
    /// File, as IMAGE:/PATH (IMAGE may be compressed)
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

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["board", "node", "all"])))]
#[command(after_help = crate::agent::SEARCH_ORDER)]
pub struct BuildArgs {
    /// Build one node with the embedded defaults of this board (see `imagegen boards`).
    /// With --config and --no-secrets: the cluster's generic image for this board, of
    /// no node; its per-node files are an agent's until `imagegen personalize`
    /// [default output: CLUSTER-BOARD-generic.img.zst]
    #[arg(long, conflicts_with_all = ["node", "all"])]
    pub board: Option<String>,
    /// Cluster description (see `imagegen init`)
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Build this node of the config
    #[arg(long, requires = "config")]
    pub node: Option<String>,
    /// Build every node of the config (then -o is a directory)
    #[arg(long, requires = "config", conflicts_with = "node")]
    pub all: bool,
    /// Output: NAME.img, NAME.img.xz, NAME.img.zst or NAME.qcow2 (a directory with --all)
    /// [default: NODE.img.zst, NODE.qcow2 for the kvm board]
    #[arg(long, short = 'o', value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Size of the disk, e.g. 8G for a VM disk: the image, its last partition and root
    /// filesystem are grown to it at build time [default: the base image's size]
    #[arg(long, value_name = "SIZE", value_parser = parse_disk_size)]
    pub disk_size: Option<u64>,
    /// Base image: a file or an http(s) URL, instead of the board's default
    #[arg(long, value_name = "FILE|URL")]
    pub base: Option<String>,
    /// Expected sha256 of the base image download (or file)
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Vendor family of the base image, when detection is not wanted
    #[arg(long, value_name = "ID")]
    pub vendor: Option<String>,
    /// imagegen-firstboot binary (repeatable, one per architecture): a file, or
    /// URL#sha256=HEX; its ELF header says which architecture it is for. It replaces
    /// the agent found for that architecture only [default: found beside imagegen,
    /// see below]
    #[arg(long, value_name = "PATH|URL#sha256=HEX")]
    pub agent: Vec<String>,
    /// A generic image without node name, identity or secrets (add them with
    /// `imagegen personalize` when flashing)
    #[arg(long)]
    pub no_secrets: bool,
    /// Node identities (SSH host keys, k3s node password), made on the first build and
    /// reused by every rebuild [default: .imagegen-state beside the config]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Download cache [default: $XDG_CACHE_HOME/imagegen]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use a downloaded base image even when no checksum vouches for it
    #[arg(long)]
    pub insecure: bool,
    /// Never touch the network: base images, agents and k3s come from the cache as
    /// verified when downloaded, and ZeroTier members are not pre-authorized (approve
    /// them by hand in ZeroTier Central)
    #[arg(long)]
    pub offline: bool,
    /// Seconds a download may go without receiving data before the attempt fails
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Further download attempts after a network error, time-out, 408, 429 or 5xx (each
    /// resumes where the last stopped)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
}

#[derive(Debug, Args)]
pub struct PersonalizeArgs {
    /// A generic image from `imagegen build --no-secrets`: raw, changed in place,
    /// or (with -o) also .img.zst/.img.xz
    pub image: PathBuf,
    /// Write the personalized image here (raw, sparse) and leave IMAGE as it is
    #[arg(long, short = 'o', value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// Cluster description
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// The node this card becomes
    #[arg(long)]
    pub node: String,
    /// Node identities [default: .imagegen-state beside the config]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Vendor family of the image, when detection is not wanted
    #[arg(long, value_name = "ID")]
    pub vendor: Option<String>,
    /// Do not pre-authorize the node's ZeroTier member (approve it by hand in ZeroTier
    /// Central)
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
#[command(after_help = crate::flash::device::RULES)]
pub struct FlashArgs {
    /// Image: NAME.img, NAME.img.xz or NAME.img.zst, streamed; NAME.bmap and
    /// NAME.sha256 beside it are used when present
    #[arg(required_unless_present = "list")]
    pub image: Option<PathBuf>,
    /// Whole-disk device (/dev/sdX, /dev/mmcblkN) or a regular file (a VM disk)
    #[arg(required_unless_present = "list")]
    pub device: Option<PathBuf>,
    /// List the drives that may be flashed
    #[arg(long, conflicts_with_all = ["image", "device", "config", "yes", "force"])]
    pub list: bool,
    /// With --list: print JSON
    #[arg(long, requires = "list")]
    pub json: bool,
    /// Do not read the written blocks back to verify them
    #[arg(long)]
    pub no_verify: bool,
    /// Do not ask before writing (needed when stdin is not a terminal)
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Write to a partition, or to a disk that is not removable, USB or SD
    #[arg(long)]
    pub force: bool,
    /// Personalize while flashing: cluster description (see `imagegen personalize`)
    #[arg(long, short = 'c', value_name = "FILE", requires = "node")]
    pub config: Option<PathBuf>,
    /// Personalize while flashing: the node this card becomes
    #[arg(long, requires = "config")]
    pub node: Option<String>,
    /// Node identities [default: .imagegen-state beside the config]
    #[arg(long, value_name = "DIR", requires = "config")]
    pub state_dir: Option<PathBuf>,
    /// Vendor family of the image, when detection is not wanted
    #[arg(long, value_name = "ID", requires = "config")]
    pub vendor: Option<String>,
    /// Personalize while flashing: do not pre-authorize the node's ZeroTier member
    #[arg(long, requires = "config")]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct BoardsArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write it
    #[arg(default_value = "cluster.toml")]
    pub path: PathBuf,
    /// Replace an existing file
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// Cluster description
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Where to write it (mode 0600) [default: <cluster name>.kubeconfig]
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The state directory the nodes were built with [default: .imagegen-state beside
    /// the config]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VpnClientArgs {
    /// Cluster description
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// The client, as listed in [wireguard] clients
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Where to write it (mode 0600) [default: <cluster>-<name>.conf]
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also print it as a QR code, for the WireGuard phone app
    #[arg(long)]
    pub qr: bool,
    /// The state directory the nodes were built with [default: .imagegen-state beside
    /// the config]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Cluster description to validate
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
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

/// A whole disk's size: 8G, 512M, 1048576 (no `+`: the base's size is not known yet).
fn parse_disk_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        SizeArg::Absolute(n) => Ok(n),
        SizeArg::Relative(_) => Err(format!("{s:?}: give the whole disk's size, like 8G")),
    }
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
        assert_eq!(parse_disk_size("8G"), Ok(8 << 30));
        assert!(parse_disk_size("+8G").is_err());
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
