//! The build pipeline: fetch -> verify -> unpack -> working copy -> detect -> plan -> apply
//! -> emit. Each stage is a function of its inputs; the base is never modified, and the output
//! appears only when everything succeeded.

use crate::arch::{self, Arch};
use crate::board::{self, Board};
use crate::config::{ClusterConfig, Role};
use crate::distro::{self, Vendor};
use crate::emit::{self, BuildRecord, EmitOptions, Manifest};
use crate::fetch::{self, FetchOptions, Source};
use crate::fs::{FsKind, Op, ext4};
use crate::image::Image;
use crate::plan::{self, Change, NodeSpec};
use crate::pubkey;
use anyhow::{Context, Result, bail};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::agent::{self, Agent, AgentSet};

/// What `imagegen build` is asked for, its flags as the library takes them.
#[derive(Debug)]
pub struct Request {
    pub config: Config,
    /// `-o`: the image of one node, or the directory of `--all`'s images (made if missing);
    /// else `NODE.img.zst` (`NODE.qcow2` for a VM board) here.
    pub output: Option<PathBuf>,
    /// `--disk-size`: bytes the image is grown to (never shrunk); else the base image's size.
    pub disk_size: Option<u64>,
    /// `--base`; else each board's default.
    pub base: Option<Source>,
    pub sha256: Option<String>,
    pub vendor: Option<Vendor>,
    /// `--agent` values (`PATH` or `URL#sha256=HEX`), each replacing the agent of its
    /// architecture found beside imagegen (see [`crate::agent`]).
    pub agents: Vec<String>,
    /// Leave out every secret and the node's identity (`--no-secrets`).
    pub generic: bool,
    /// Where node identities live; else beside the config (see [`crate::identity`]).
    pub state_dir: Option<PathBuf>,
    /// How to download; with `offline` (`--offline`) the network is not touched at all:
    /// bases come from the cache and ZeroTier members are left for a person to approve.
    pub fetch: FetchOptions,
}

/// Which config the nodes come from.
#[derive(Debug)]
pub enum Config {
    /// `--board`: one agent node named after the board, the operator (`$USER`, the keys in
    /// `~/.ssh/*.pub`) as its admin.
    Board(String),
    /// A cluster.toml and which of its nodes.
    File { path: PathBuf, nodes: Nodes },
}

#[derive(Debug)]
pub enum Nodes {
    One(String),
    All,
    /// `--board B` with the config and `--no-secrets`: no node, the cluster's generic image
    /// for board B (its admin, hardening and VPN network), for `personalize` to make any node
    /// of that board.
    Generic(String),
}

/// One image to build.
#[derive(Debug)]
struct Target {
    /// The node; `None` for a board's generic image ([`Nodes::Generic`]).
    node: Option<String>,
    board: String,
    /// What the image's node-specific files (firewall, node.toml) are written for until a seed
    /// replaces them.
    role: Role,
}

impl Target {
    /// The node's name, or what the generic image of a board is called in messages.
    fn name(&self) -> String {
        match &self.node {
            Some(n) => n.clone(),
            None => format!("generic {}", self.board),
        }
    }
}

/// One image written.
#[derive(Debug)]
pub struct Built {
    pub node: String,
    pub path: PathBuf,
    pub manifest: Manifest,
}

#[derive(Debug)]
pub struct Outcome {
    pub images: Vec<Built>,
    /// Said once the images are written.
    pub warnings: Vec<String>,
}

/// Builds the images `req` asks for, one node after the other; each is announced on stderr as
/// it is written, so an `--all` that fails halfway has said which are there.
pub fn run(req: &Request) -> Result<Outcome> {
    if matches!(
        req.config,
        Config::File {
            nodes: Nodes::Generic(_),
            ..
        }
    ) && !req.generic
    {
        bail!(
            "--board with --config builds the cluster's generic image of that board, which \
             needs --no-secrets; a node's own image needs --node NAME"
        );
    }
    let (config, config_dir, targets, mut warnings) = load(&req.config)?;
    if targets.is_empty() {
        bail!("the config has no [[nodes]]");
    }
    let agents = agents(&req.agents, &req.fetch)?;
    check_agents(&agents, &targets)?;
    check_packages(&config, &config_dir, &targets)?;
    let state_dir = req
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::identity::default_dir(&config_dir));
    let all = matches!(
        req.config,
        Config::File {
            nodes: Nodes::All,
            ..
        }
    );
    // Every node's member is authorized before the first download; `crate::vpn::zerotier::
    // central` gives the reasons for before rather than after the images.
    let mut by_hand = None;
    if !req.generic {
        let nodes: Vec<&str> = targets.iter().filter_map(|t| t.node.as_deref()).collect();
        by_hand = crate::vpn::zerotier::central::preauthorize(
            &config,
            &config_dir,
            &state_dir,
            &nodes,
            &req.fetch,
        )?;
    }
    let mut images = Vec::new();
    for target in targets {
        let out = output_path(
            req.output.as_deref(),
            all,
            &default_output(&config, &target),
        )?;
        let job = Job {
            config: &config,
            config_dir: &config_dir,
            target: &target,
            out: &out,
            disk_size: req.disk_size,
            base: req.base.clone(),
            sha256: req.sha256.clone(),
            vendor: req.vendor,
            agents: &agents,
            generic: req.generic,
            state_dir: &state_dir,
            fetch: &req.fetch,
        };
        let manifest = build(&job).with_context(|| format!("building {}", describe(&target)))?;
        eprintln!(
            "wrote {} ({} bytes raw, sha256 {})",
            out.display(),
            manifest.output.raw_size,
            manifest.output.sha256
        );
        if let (false, Some(node)) = (req.generic, &target.node) {
            eprintln!(
                "{}",
                crate::cluster::known_hosts::write_beside(&out, &config, node, &state_dir)?
            );
        }
        images.push(Built {
            node: target.name(),
            path: out,
            manifest,
        });
    }
    // After the builds, so a failed build still says one thing only, and once for --all.
    warnings.extend(plan::backup_pin_warning(&config));
    warnings.extend(by_hand);
    Ok(Outcome { images, warnings })
}

/// "node NAME", or "the generic BOARD image", for errors.
fn describe(target: &Target) -> String {
    match &target.node {
        Some(n) => format!("node {n}"),
        None => format!("the generic {} image", target.board),
    }
}

/// The config, the directory its relative paths start from, the images to build, and what to
/// warn of.
fn load(config: &Config) -> Result<(ClusterConfig, PathBuf, Vec<Target>, Vec<String>)> {
    let of_node = |n: &crate::config::Node| Target {
        node: Some(n.name.get_ref().clone()),
        board: n.board.get_ref().clone(),
        role: n.role,
    };
    match config {
        Config::Board(b) => {
            let board = board::get(b)?;
            let (user, keys) = operator_defaults()?;
            let c = plan::default_config(&board, &user, keys)?;
            let targets = c.nodes.iter().map(of_node).collect();
            Ok((c, PathBuf::from("."), targets, Vec::new()))
        }
        Config::File { path, nodes } => {
            let loaded = crate::config::load(path)?;
            let mut warnings = Vec::new();
            let targets = match nodes {
                Nodes::One(n) => vec![of_node(loaded.node(n)?)],
                Nodes::All => loaded.config.nodes.iter().map(of_node).collect(),
                Nodes::Generic(b) => {
                    // Before any download: a misspelt board is said now.
                    let board = board::get(b)?;
                    // Legitimate (the card for a node not in the config yet), but maybe a typo.
                    if !loaded
                        .config
                        .nodes
                        .iter()
                        .any(|n| n.board.get_ref() == &board.id)
                    {
                        warnings.push(format!(
                            "warning: no node of {} is on board {}; personalize needs one there",
                            path.display(),
                            board.id
                        ));
                    }
                    // No node: its node-specific files (node.toml, the firewall) are an
                    // agent's, the role that opens the fewest ports and starts no cluster, until
                    // `personalize` seeds the node's own.
                    vec![Target {
                        node: None,
                        board: board.id,
                        role: Role::Agent,
                    }]
                }
            };
            Ok((loaded.config, loaded.dir, targets, warnings))
        }
    }
}

/// `NODE.img.zst`, or `NODE.qcow2` for a VM board: the name its board gives the node's image;
/// `CLUSTER-BOARD-generic.EXT` for a board's generic image. An unknown board is left to
/// `build`, which names it in its own words.
fn default_output(config: &ClusterConfig, target: &Target) -> String {
    let stem = match &target.node {
        Some(n) => n.clone(),
        None => format!("{}-{}-generic", config.cluster.name.get_ref(), target.board),
    };
    board::get(&target.board).map_or_else(|_| format!("{stem}.img.zst"), |b| b.output_name(&stem))
}

fn output_path(output: Option<&Path>, all: bool, default: &str) -> Result<PathBuf> {
    let default = default.to_string();
    Ok(match (output, all) {
        (Some(o), true) => {
            std::fs::create_dir_all(o).with_context(|| format!("creating {}", o.display()))?;
            o.join(default)
        }
        (Some(o), false) => o.to_path_buf(),
        (None, _) => PathBuf::from(default),
    })
}

/// The agents found beside this imagegen (see `crate::agent` for the search order), with each
/// `--agent` replacing the one of its architecture.
fn agents(args: &[String], fetch: &FetchOptions) -> Result<AgentSet> {
    let mut set = AgentSet::discover(&agent::default_search_dirs())?;
    for arg in args {
        let path = match Source::parse(arg) {
            Source::File(p) => p,
            Source::Url(u) => {
                // A downloaded binary runs as root on every node: it must be pinned.
                let (url, sha) = u
                    .split_once("#sha256=")
                    .with_context(|| format!("--agent {u}: give its sha256 as URL#sha256=HEX"))?;
                fetch::fetch_base(&Source::Url(url.into()), Some(sha), None, fetch)
                    .with_context(|| format!("getting the agent {url}"))?
                    .raw_path
            }
        };
        set.give(Agent {
            arch: agent::agent_arch(&path)?,
            path,
            source: arg.clone(),
        })?;
    }
    Ok(set)
}

/// Every node's board must have an agent: checked for all of them before the first download,
/// so `--all` does not stop after building half the cluster.
fn check_agents(agents: &AgentSet, targets: &[Target]) -> Result<()> {
    for target in targets {
        // An unknown board is left to `build`, which names it in its own words.
        let Ok(board) = board::get(&target.board) else {
            continue;
        };
        agents
            .for_board(&board)
            .with_context(|| format!("building {}", describe(target)))?;
    }
    Ok(())
}

/// Every board being built must have its staged `.deb`s: checked before the first download.
fn check_packages(config: &ClusterConfig, dir: &Path, targets: &[Target]) -> Result<()> {
    for target in targets {
        let Ok(board) = board::get(&target.board) else {
            continue;
        };
        crate::check::packages::for_arch(config, |p| dir.join(p), board.arch)
            .map_err(|e| {
                let why: Vec<String> = e.into_iter().map(|(_, why)| why).collect();
                anyhow::Error::msg(why.join("\n"))
            })
            .with_context(|| format!("building {}", describe(target)))?;
    }
    Ok(())
}

/// The admin for `--board` builds: the operator's user name and ~/.ssh/*.pub keys.
fn operator_defaults() -> Result<(String, Vec<String>)> {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| {
            !matches!(u.as_str(), "root" | "pi" | "ubuntu" | "debian")
                && u.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
                && u.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        })
        .unwrap_or_else(|| "admin".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut keys = Vec::new();
    if let Some(ssh) = home.as_deref().map(|h| h.join(".ssh"))
        && let Ok(rd) = std::fs::read_dir(&ssh)
    {
        let mut pubs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        pubs.sort();
        for p in pubs {
            // Whatever else sits in ~/.ssh is the operator's business: a file that holds no
            // usable key is skipped, and said so, rather than stopping the build.
            let read = std::fs::read_to_string(&p).map_err(|e| e.to_string());
            match read.and_then(|t| pubkey::authorized_keys_lines(&t).map_err(|e| e.to_string())) {
                Ok(found) => keys.extend(found),
                Err(e) => eprintln!("warning: skipping {}: {e}", p.display()),
            }
        }
    }
    if keys.is_empty() {
        bail!(
            "no SSH public key in ~/.ssh/*.pub: nobody could log in to the node. Make one with \
             `ssh-keygen -t ed25519`, or write a cluster.toml (`imagegen init`) with \
             [admin] ssh_authorized_keys and use --config"
        );
    }
    Ok((user, keys))
}

/// One node to build, its inputs resolved.
struct Job<'a> {
    config: &'a ClusterConfig,
    config_dir: &'a Path,
    target: &'a Target,
    out: &'a Path,
    disk_size: Option<u64>,
    /// `--base`; else the board's default.
    base: Option<Source>,
    sha256: Option<String>,
    vendor: Option<Vendor>,
    agents: &'a AgentSet,
    generic: bool,
    /// Where node identities live (SSH host keys, k3s node password).
    state_dir: &'a Path,
    fetch: &'a FetchOptions,
}

/// SOURCE_DATE_EPOCH when set; otherwise a time derived from the inputs (the base image's own
/// newest superblock write time), so builds are reproducible by default.
pub fn epoch(image: &Image) -> Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(image.intrinsic_epoch()),
    }
}

/// Binaries every Debian-family userland has, read for the image's architecture.
const ARCH_PROBES: [&str; 3] = ["/usr/bin/env", "/bin/sh", "/usr/bin/ls"];

/// The architecture of the image's userland, from the ELF header of a binary every
/// Debian-family system has; `None` when none of them is there or is an ELF file.
pub fn image_arch(image: &mut Image) -> Result<Option<Arch>> {
    use crate::fs::FsError;
    use crate::image::ImageError;
    for p in ARCH_PROBES {
        // The header only: a real /bin/sh is 100 KiB or more.
        let head = match image.read_head(p, 64) {
            Ok(head) => head,
            // Missing, a directory, a dangling link or a device: try the next one.
            Err(ImageError::Fs(
                FsError::NotFound(_) | FsError::IsADirectory(_) | FsError::Unsupported(_),
            )) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {p} in the image")));
            }
        };
        match arch::elf_arch(&head) {
            Ok(a) => return Ok(Some(a)),
            Err(arch::ElfError::NotElf) => continue,
            Err(e) => bail!("{p} in the image: {e}"),
        }
    }
    Ok(None)
}

/// Removes the working copy however the build ends, interrupted included.
struct WorkFile {
    path: PathBuf,
    _interrupted: crate::interrupt::Guard,
}

impl WorkFile {
    fn new(path: PathBuf) -> WorkFile {
        WorkFile {
            _interrupted: crate::interrupt::Guard::new(&path),
            path,
        }
    }
}

impl Drop for WorkFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds one node image. Returns the manifest as written.
fn build(req: &Job) -> Result<Manifest> {
    // A board's generic image is no node: the empty name matches none, as the config refuses
    // it for a node (`names::is_node_name`), so nothing in the plan takes another node's part
    // (the UPS server's firewall, say).
    let name = req.target.node.as_deref().unwrap_or("");
    let board = board::get(&req.target.board)?;
    let out_dir = output_dir(req.out)?;
    let agent = Some(req.agents.for_board(&board)?);
    let (source, fetched) = fetch_base(req, &board)?;
    let work = working_copy(&out_dir, req.out, &fetched)?;

    // Errors name the working copy; say which input it was copied from.
    let mut image = Image::open_for_write(&work.path).with_context(|| {
        format!(
            "reading the base image {}",
            match &source {
                Source::Url(u) => u.clone(),
                Source::File(p) => p.display().to_string(),
            }
        )
    })?;
    let vendor = check_base(&mut image, req.vendor, &board)?;
    let epoch = epoch(&image)?;
    if let Some(size) = req.disk_size {
        image = grow_disk(image, &work.path, size, epoch)?;
    }
    let identity = if req.generic {
        None
    } else {
        Some(
            crate::identity::load_or_create(req.state_dir, name)
                .context("loading the node's identity")?,
        )
    };
    let k3s_binary = k3s_binary(req, &board)?;
    let spec = NodeSpec {
        name,
        role: req.target.role,
        board: &board,
        vendor,
        config: req.config,
        config_dir: req.config_dir,
        agent: agent.map(|a| a.path.as_path()),
        k3s_binary: k3s_binary.as_deref(),
        generic: req.generic,
        identity: identity.as_ref(),
        epoch,
    };
    let changes = plan::plan(&mut image, &spec)?;
    if let (Some(b), Some(id)) = (&req.config.backup, &identity)
        && b.ssh_key_file.is_none()
    {
        eprintln!(
            "node {name}: backups authenticate with {}; authorize it on the NAS",
            id.backup_key_pub_path.display()
        );
    }
    let zerotier_address = match (&req.config.zerotier, &identity) {
        (Some(_), Some(id)) => Some(crate::vpn::zerotier::announce(id, name)?),
        _ => None,
    };
    let ops: Vec<Op> = changes.iter().map(|c| c.op.clone()).collect();
    let mut image = apply_growing(image, &work.path, &ops, epoch)?;

    let record = BuildRecord {
        imagegen_version: env!("CARGO_PKG_VERSION").into(),
        board: board.id.clone(),
        node: (!req.generic).then(|| name.to_string()),
        zerotier_address,
        source_date_epoch: Some(epoch),
        inputs: inputs(&source, &fetched, agent)?,
        tools: tools()?,
        changes: manifest_changes(&mut image, &changes)?,
    };
    drop(image);
    // Unless generic, the image holds the node's secrets and private keys.
    let options = EmitOptions {
        private: !req.generic,
        ..EmitOptions::default()
    };
    // For raw output the working copy becomes OUT (renamed), so WorkFile finds nothing to remove.
    let manifest = emit::emit_work_copy(&work.path, req.out, record, &options)
        .with_context(|| format!("writing {}", req.out.display()))?;
    Ok(manifest)
}

/// The directory `out` goes in, once its name says a format and the directory exists: before
/// a download that may take long, not after it.
fn output_dir(out: &Path) -> Result<PathBuf> {
    if emit::Format::from_path(out).is_none() {
        bail!(
            "cannot tell the output format of {}: its name must end in one of {}",
            out.display(),
            emit::EXTENSIONS
        );
    }
    let out_dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !out_dir.is_dir() {
        bail!(
            "the output directory {} does not exist; create it first",
            out_dir.display()
        );
    }
    Ok(out_dir)
}

/// The base image, `--base` or the board's default, verified and unpacked in the cache.
fn fetch_base(req: &Job, board: &Board) -> Result<(Source, fetch::Fetched)> {
    let (source, sha256, checksum_url) = match &req.base {
        Some(s) => (s.clone(), req.sha256.clone(), None),
        None => (
            Source::Url(board.base.url.clone()),
            req.sha256.clone().or(board.base.sha256.clone()),
            board.base.checksum_url.clone(),
        ),
    };
    let fetched = fetch::fetch_base(
        &source,
        sha256.as_deref(),
        checksum_url.as_deref(),
        req.fetch,
    )
    .context("getting the base image")?;
    Ok((source, fetched))
}

/// A private sparse copy of the base beside `out`, removed however the build ends.
fn working_copy(out_dir: &Path, out: &Path, fetched: &fetch::Fetched) -> Result<WorkFile> {
    let work = WorkFile::new(out_dir.join(format!(
        ".{}.work-{}",
        out.file_name().map_or("out".into(), |n| n.to_string_lossy()),
        std::process::id()
    )));
    // Owner-only from the start: the secrets are written into this copy.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&work.path)
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
        .with_context(|| format!("creating {}", work.path.display()))?;
    fetch::copy_sparse(&fetched.raw_path, &work.path)
        .with_context(|| format!("copying the base image to {}", work.path.display()))?;
    Ok(work)
}

/// The base's vendor (`vendor`, else detected), once the board is known to boot it and its
/// userland to be of the board's architecture.
fn check_base(image: &mut Image, vendor: Option<Vendor>, board: &Board) -> Result<Vendor> {
    let vendor = match vendor {
        Some(v) => v,
        None => distro::detect(image)?,
    };
    if !board.accepts.iter().any(|a| a == vendor.id()) {
        bail!(
            "board {} does not boot {} images; it accepts: {}",
            board.id,
            vendor.description(),
            board.accepts.join(", ")
        );
    }
    // The agent was chosen for the board's architecture, so this also keeps an agent the
    // image cannot run out of it.
    match image_arch(image)? {
        Some(a) if a != board.arch => bail!(
            "the base image is for {a}, but board {} is {}: give a base image for {}",
            board.id,
            board.arch,
            board.arch
        ),
        Some(_) => {}
        None => eprintln!(
            "warning: cannot tell the base image's architecture (no ELF file at {}); \
             not checked against board {} ({})",
            ARCH_PROBES.join(", "),
            board.id,
            board.arch
        ),
    }
    Ok(vendor)
}

/// The k3s binary to stage: `[k3s] binary`, or the release of `[k3s] version`.
fn k3s_binary(req: &Job, board: &Board) -> Result<Option<PathBuf>> {
    Ok(match &req.config.k3s {
        Some(k) if k.binary.is_some() => k.binary.as_ref().map(|b| req.config_dir.join(b)),
        Some(k) => match &k.version {
            Some(v) => Some(download_k3s(v, board.arch, req.fetch)?),
            None => None,
        },
        _ => None,
    })
}

/// `--disk-size`: grows the image to `size` bytes before anything is planned, so the plan sees
/// the room it has. The engine's grow moves the GPT backup to the new end and grows the last
/// partition and its ext4 (resize2fs); a disk already that size is left alone.
fn grow_disk(image: Image, path: &Path, size: u64, epoch: i64) -> Result<Image> {
    let len = std::fs::metadata(path)?.len();
    if size < len {
        bail!(
            "--disk-size {size} bytes is smaller than the base image ({len} bytes, {} MiB): \
             imagegen only grows disks",
            len.div_ceil(1 << 20)
        );
    }
    if size.next_multiple_of(crate::disk::SECTOR) == len {
        return Ok(image);
    }
    drop(image);
    crate::image::grow(path, size, epoch).context("growing the image to --disk-size")?;
    Image::open_for_write(path).context("reading the grown image")
}

/// Applies the plan; when the root filesystem is too small for it (a staged k3s binary is
/// ~70 MB), grows the image, its last partition and filesystem by what is missing plus room
/// to breathe, and applies again. The vendor's first-boot expansion still takes the rest of
/// the card, since the root stays the last partition and only grows.
fn apply_growing(mut image: Image, path: &Path, ops: &[Op], epoch: i64) -> Result<Image> {
    const HEADROOM: u64 = 256 << 20;
    match image.apply(ops, epoch) {
        Err(crate::image::ImageError::Fs(crate::fs::FsError::NoSpace {
            kind: FsKind::Ext4,
            needed,
            free,
        })) => {
            drop(image);
            let len = std::fs::metadata(path)?.len();
            let more = (needed.saturating_sub(free) + HEADROOM).next_multiple_of(1 << 20);
            eprintln!(
                "the root filesystem is {} MiB short; growing the image by {} MiB",
                needed.saturating_sub(free) >> 20,
                more >> 20
            );
            crate::image::grow(path, len + more, epoch).context("growing the image")?;
            let mut image = Image::open_for_write(path).context("reading the grown image")?;
            image.apply(ops, epoch).context("customizing the image")?;
            Ok(image)
        }
        Err(e) => Err(anyhow::Error::new(e).context("customizing the image")),
        Ok(()) => Ok(image),
    }
}

/// The k3s release binary for `arch`, verified against the release's sha256sum file and
/// cached like a base image.
fn download_k3s(version: &str, arch: Arch, fetch: &FetchOptions) -> Result<PathBuf> {
    let (file, sums) = match arch {
        Arch::X86_64 => ("k3s", "sha256sum-amd64.txt"),
        Arch::Aarch64 => ("k3s-arm64", "sha256sum-arm64.txt"),
        Arch::Arm => ("k3s-armhf", "sha256sum-arm.txt"),
    };
    let base = format!(
        "https://github.com/k3s-io/k3s/releases/download/{}",
        version.replace('+', "%2B")
    );
    let got = fetch::fetch_base(
        &Source::Url(format!("{base}/{file}")),
        None,
        Some(&format!("{base}/{sums}")),
        fetch,
    )
    .with_context(|| format!("getting k3s {version} for {arch}"))?;
    Ok(got.raw_path)
}

fn inputs(
    source: &Source,
    fetched: &fetch::Fetched,
    agent: Option<&Agent>,
) -> Result<Vec<emit::Input>> {
    let public = |source: &Source| match source {
        Source::Url(u) => emit::public_url(u),
        Source::File(p) => p.display().to_string(),
    };
    let mut v = vec![emit::Input {
        name: "base".into(),
        source: public(source),
        sha256: fetched.source_sha256.clone(),
    }];
    if let Some(a) = agent {
        v.push(emit::Input {
            name: format!("agent-{}", a.arch),
            source: public(&Source::parse(&a.source)),
            sha256: crate::io::hash::sha256_file(&a.path)
                .with_context(|| format!("reading agent {}", a.path.display()))?,
        });
    }
    Ok(v)
}

fn tools() -> Result<Vec<emit::Tool>> {
    Ok(vec![emit::Tool {
        name: "e2fsprogs".into(),
        version: ext4::e2fsprogs_version()?,
    }])
}

fn manifest_changes(image: &mut Image, changes: &[Change]) -> Result<Vec<emit::Change>> {
    let mut out = Vec::new();
    for c in changes {
        let (mode, uid, gid) = match &c.op {
            Op::WriteFile { meta, .. } | Op::Mkdir { meta, .. } => (meta.mode, meta.uid, meta.gid),
            Op::Symlink { meta, .. } => (0o777, meta.uid, meta.gid),
            _ => (0, 0, 0),
        };
        let path = c.op.path().to_string();
        let resolved = image.resolve(&path, false)?;
        let slot = image.locate(&resolved).slot;
        let s = &image.slots()[slot];
        let partition = match s.fs_kind {
            Some(FsKind::Ext4 | FsKind::Fat) => format!("p{}", s.partition.number),
            None => "?".into(),
        };
        out.push(emit::Change {
            path,
            partition,
            sha256: plan::change_digest(c)?,
            secret: c.secret,
            mode,
            uid,
            gid,
        });
    }
    Ok(out)
}
