//! `imagegen personalize`: turns a generic image (`build --no-secrets`) into one node at flash
//! time by writing a seed onto the FAT boot partition only. No ext4 work, so it is fast and
//! touches no byte outside that partition. The agent places the seed's files on first boot
//! and wipes it.
//!
//! What goes in is not decided here: it is the node-specific part of the node's own plan (see
//! [`crate::plan::Kind`]), the same plan a full build of the node applies whole.

use crate::board::Board;
use crate::config::Loaded;
use crate::distro::{self, Vendor};
use crate::fs::{Content, FsKind, Meta, Op};
use crate::identity::Identity;
use crate::image::Image;
use crate::plan::{self, Kind, NodeSpec};
use anyhow::{Context, Result, bail};
use imagegen_firstboot::seed::{SEED_FILE_NAME, Seed, SeedFile};
use std::path::{Path, PathBuf};

/// What `imagegen personalize` is asked for.
#[derive(Debug)]
pub struct Request {
    /// The generic image, changed in place.
    pub image: PathBuf,
    /// The cluster.toml the node is in.
    pub config: PathBuf,
    pub node: String,
    /// Where node identities live; else beside the config (see [`crate::identity`]).
    pub state_dir: Option<PathBuf>,
    /// Else detected.
    pub vendor: Option<Vendor>,
    /// `--offline`: leave the node's ZeroTier member for a person to approve.
    pub offline: bool,
}

#[derive(Debug)]
pub struct Outcome {
    /// Where the seed is, in the image.
    pub seed: String,
    pub warnings: Vec<String>,
}

/// Writes the node's seed into the image.
pub fn run(req: &Request) -> Result<Outcome> {
    let loaded = crate::config::load(&req.config)?;
    let node = loaded.node(&req.node)?;
    let board = crate::board::get(node.board.get_ref())?;
    let state_dir = req
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::identity::default_dir(&loaded.dir));
    let identity = crate::identity::load_or_create(&state_dir, &req.node)
        .context("loading the node's identity")?;
    // As `build` does, before the image is touched: a card personalized at flash time joins
    // its network as soon as it boots.
    let fetch = crate::fetch::FetchOptions {
        offline: req.offline,
        ..Default::default()
    };
    let by_hand = crate::vpn::zerotier::central::preauthorize(
        &loaded.config,
        &loaded.dir,
        &state_dir,
        &[req.node.as_str()],
        &fetch,
    )?;
    let seed = write_seed(&Job {
        image: &req.image,
        config: &loaded,
        node: &req.node,
        board: &board,
        identity: &identity,
        vendor: req.vendor,
    })?;
    let warnings = plan::backup_pin_warning(&loaded.config)
        .into_iter()
        .chain(by_hand)
        .collect();
    Ok(Outcome { seed, warnings })
}

/// One node's seed to write, its inputs resolved.
struct Job<'a> {
    image: &'a Path,
    config: &'a Loaded,
    node: &'a str,
    board: &'a Board,
    identity: &'a Identity,
    vendor: Option<Vendor>,
}

/// Writes the seed and returns its path inside the image.
fn write_seed(req: &Job) -> Result<String> {
    let mut image = Image::open_for_write(req.image)
        .with_context(|| format!("opening {}", req.image.display()))?;
    let vendor = match req.vendor {
        Some(v) => v,
        None => distro::detect(&mut image)?,
    };
    if !req.board.accepts.iter().any(|a| a == vendor.id()) {
        bail!(
            "node {} is a {} node, which does not boot {} images (it accepts: {}); \
             personalize a generic image built for that board",
            req.node,
            req.board.id,
            vendor.description(),
            req.board.accepts.join(", ")
        );
    }
    // Only the agent consumes and wipes the seed: on an image without it, the secrets would
    // stay readable on the boot partition for good.
    for needed in [
        plan::NODE_TOML,
        imagegen_firstboot::units::AGENT_BINARY_PATH,
    ] {
        if image.lstat(needed)?.is_none() {
            bail!(
                "{} has no {needed}, so nothing on it would take the seed in and wipe it: \
                 personalize an image made with `imagegen build --no-secrets`",
                req.image.display()
            );
        }
    }
    let boot = vendor.family().boot_mount();
    let resolved = image.resolve(boot, true)?;
    let slot = image.locate(&resolved).slot;
    if image.slots()[slot].fs_kind != Some(FsKind::Fat) {
        bail!(
            "{} images have no FAT boot partition at {boot}, so there is nowhere to put a seed \
             a PC can write; build a full image for this node instead (imagegen build --node {})",
            vendor.description(),
            req.node
        );
    }
    let node = req
        .config
        .node(req.node)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let epoch = crate::build::epoch(&image)?;
    let spec = NodeSpec {
        name: req.node,
        role: node.role,
        board: req.board,
        vendor,
        config: &req.config.config,
        config_dir: &req.config.dir,
        agent: None,
        k3s_binary: None,
        generic: false,
        identity: Some(req.identity),
        epoch,
    };
    // The same plan a full build of the node applies, made on this image; what it shares with
    // every node of the board is in the generic image already.
    let changes = plan::plan(&mut image, &spec)?;
    let personal = split(&mut image, slot, changes)?;
    let text = personal.seed.to_toml_string()?;
    let path = format!("{boot}/{SEED_FILE_NAME}");
    // From here on the image file holds this node's secrets: nobody else may read it, as with
    // a full build's output.
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(req.image)
            .with_context(|| format!("reading {}", req.image.display()))?;
        // A block device node keeps its mode: the card's bytes are not a file others can
        // read through the filesystem, and its group is what lets the user flash it.
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(req.image, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", req.image.display()))?;
        }
    }
    let mut ops = personal.on_boot;
    ops.push(Op::WriteFile {
        path: path.clone(),
        content: Content::Bytes(text.into_bytes()),
        meta: Meta::root(0o600, epoch),
    });
    image.apply(&ops, epoch).context("writing the seed")?;
    Ok(path)
}

/// The node-specific part of a node's plan, as personalize writes it.
#[derive(Debug, Default)]
struct Personal {
    /// Files on the boot partition, written there now: the vendor's first boot may read them
    /// (Ubuntu's cloud-init seed) before the agent could place them.
    on_boot: Vec<Op>,
    /// Everything else, for the agent to place on first boot.
    seed: Seed,
}

/// Splits the node-specific changes of a plan ([`Kind::is_node_specific`]) into what goes onto
/// the boot partition (slot `boot`) now and what the seed carries. The seed places root-owned
/// files only, and the boot partition is readable from any PC: a node-specific change of
/// another shape, or a secret there, is refused rather than dropped.
fn split(image: &mut Image, boot: usize, changes: Vec<plan::Change>) -> Result<Personal> {
    let mut out = Personal::default();
    for c in changes.into_iter().filter(|c| c.kind.is_node_specific()) {
        let path = c.op.path().to_string();
        let resolved = image.resolve(&path, false)?;
        let on_boot = image.locate(&resolved).slot == boot;
        match c.op {
            Op::WriteFile { .. } if on_boot && c.kind != Kind::Node => bail!(
                "the plan puts {path}, a secret or part of the node's identity, on the boot \
                 partition, which any PC can read: build a full image for this node instead"
            ),
            op @ Op::WriteFile { .. } if on_boot => out.on_boot.push(op),
            Op::WriteFile {
                content: Content::Bytes(bytes),
                meta,
                ..
            } if meta.uid == 0 && meta.gid == 0 => {
                out.seed.files.push(SeedFile::new(&path, meta.mode, &bytes));
            }
            _ => bail!(
                "{path} makes the image this node, but a seed can only place root-owned files \
                 given by content (a [[nodes.files]] entry with another owner is not one): \
                 build a full image for this node instead"
            ),
        }
    }
    Ok(out)
}
