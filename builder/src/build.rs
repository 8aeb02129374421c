//! The build pipeline: fetch -> verify -> unpack -> working copy -> detect -> plan -> apply
//! -> emit. Each stage is a function of its inputs; the base is never modified, and the output
//! appears only when everything succeeded.

use crate::arch::{self, Arch};
use crate::board::{self, Board};
use crate::config::ClusterConfig;
use crate::distro::{self, Vendor};
use crate::emit::{self, BuildRecord, EmitOptions, Manifest};
use crate::fetch::{self, FetchOptions, Source};
use crate::fs::{FsKind, Op, ext4};
use crate::image::Image;
use crate::plan::{self, Change, NodeSpec};
use anyhow::{Context, Result, bail};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use crate::agent::Agent;

/// One node to build.
pub struct Request<'a> {
    pub config: &'a ClusterConfig,
    pub config_dir: &'a Path,
    pub node: &'a str,
    pub out: &'a Path,
    /// `--base`; else the board's default.
    pub base: Option<Source>,
    pub sha256: Option<String>,
    pub vendor: Option<Vendor>,
    pub agents: &'a [Agent],
    pub generic: bool,
    /// Where node identities live (SSH host keys, k3s node password).
    pub state_dir: &'a Path,
    pub fetch: &'a FetchOptions,
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
pub fn build(req: &Request) -> Result<Manifest> {
    let node = req
        .config
        .nodes
        .iter()
        .find(|n| n.name.get_ref() == req.node)
        .with_context(|| format!("no node named {:?} in the config", req.node))?;
    let board = board::get(node.board.get_ref())?;
    if emit::Format::from_path(req.out).is_none() {
        bail!(
            "cannot tell the output format of {}: its name must end in one of {}",
            req.out.display(),
            emit::EXTENSIONS
        );
    }
    let out_dir = match req.out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Before a download that may take long, not after it.
    if !out_dir.is_dir() {
        bail!(
            "the output directory {} does not exist; create it first",
            out_dir.display()
        );
    }
    let agent = choose_agent(&board, req.agents)?;

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

    let work = WorkFile::new(out_dir.join(format!(
        ".{}.work-{}",
        req.out.file_name().map_or("out".into(), |n| n.to_string_lossy()),
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
    let vendor = match req.vendor {
        Some(v) => v,
        None => distro::detect(&mut image)?,
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
    match image_arch(&mut image)? {
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
    let epoch = epoch(&image)?;
    let identity = if req.generic {
        None
    } else {
        Some(
            crate::identity::load_or_create(req.state_dir, req.node)
                .context("loading the node's identity")?,
        )
    };

    let k3s_binary = match &req.config.k3s {
        Some(k) if k.binary.is_some() => k.binary.as_ref().map(|b| req.config_dir.join(b)),
        Some(k) => match &k.version {
            Some(v) => Some(download_k3s(v, board.arch, req.fetch)?),
            None => None,
        },
        _ => None,
    };
    let spec = NodeSpec {
        name: req.node,
        role: node.role,
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
            "node {}: backups authenticate with {}; authorize it on the NAS",
            req.node,
            id.backup_key_pub_path.display()
        );
    }
    let zerotier_address = match (&req.config.zerotier, &identity) {
        (Some(_), Some(id)) => Some(crate::vpn::zerotier::announce(id, req.node)?),
        _ => None,
    };
    let ops: Vec<Op> = changes.iter().map(|c| c.op.clone()).collect();
    let mut image = apply_growing(image, &work.path, &ops, epoch)?;

    let record = BuildRecord {
        imagegen_version: env!("CARGO_PKG_VERSION").into(),
        board: board.id.clone(),
        node: (!req.generic).then(|| req.node.to_string()),
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
    let manifest = emit::emit(&work.path, req.out, record, &options)
        .with_context(|| format!("writing {}", req.out.display()))?;
    Ok(manifest)
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

/// The agent for the board. `imagegen build` checks every node against its `AgentSet` before
/// building any, with an error that says what was given and where imagegen looked; this
/// guards callers of the library that pass their own list.
fn choose_agent<'a>(board: &Board, agents: &'a [Agent]) -> Result<Option<&'a Agent>> {
    match agents.iter().find(|a| a.arch == board.arch) {
        Some(a) => Ok(Some(a)),
        None => {
            let have: Vec<String> = agents.iter().map(|a| a.arch.to_string()).collect();
            bail!(
                "no imagegen-firstboot agent for {} (board {}) among the agents given ({}); \
                 build them with `bash ci/build-agents`, or give one with --agent",
                board.arch,
                board.id,
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            )
        }
    }
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
