//! `imagegen personalize`: turns a generic image (`build --no-secrets`) into one node at flash
//! time by writing a seed onto the FAT boot partition only. No ext4 work, so it is fast and
//! touches no byte outside that partition. The agent places the seed's files on first boot
//! and wipes it.

use crate::board::Board;
use crate::config::Loaded;
use crate::distro::{self, Vendor};
use crate::fs::{Content, FsKind, Meta, Op};
use crate::identity::Identity;
use crate::image::Image;
use crate::plan::{self, NodeSpec};
use anyhow::{Context, Result, bail};
use imagegen_firstboot::seed::{SEED_FILE_NAME, Seed, SeedFile};
use std::path::Path;

pub struct Request<'a> {
    pub image: &'a Path,
    pub config: &'a Loaded,
    pub node: &'a str,
    pub board: &'a Board,
    pub identity: &'a Identity,
    pub vendor: Option<Vendor>,
}

/// Writes the seed and returns its path inside the image.
pub fn personalize(req: &Request) -> Result<String> {
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
        epoch: 0,
    };
    // The full build points 127.0.1.1 at the node's name; without it the node cannot resolve
    // its own name (sudo warns on every call).
    let hosts = match image.read_file("/etc/hosts") {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(crate::image::ImageError::Fs(crate::fs::FsError::NotFound(_))) => String::new(),
        Err(e) => return Err(e).context("reading /etc/hosts"),
    };
    let seed = seed_for(&spec, req.config, &hosts)?;
    let text = seed.to_toml_string()?;
    let epoch = crate::build::epoch(&image)?;
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
    image
        .apply(
            &[Op::WriteFile {
                path: path.clone(),
                content: Content::Bytes(text.into_bytes()),
                meta: Meta::root(0o600, epoch),
            }],
            epoch,
        )
        .context("writing the seed")?;
    Ok(path)
}

/// Everything that makes a generic image this node: its node.toml, hostname, identity and
/// secrets.
fn seed_for(spec: &NodeSpec, loaded: &Loaded, hosts: &str) -> Result<Seed> {
    let mut files = Vec::new();
    let node = plan::node_config(spec)?;
    files.push(SeedFile::new(
        plan::NODE_TOML,
        0o600,
        node.to_toml_string()?.as_bytes(),
    ));
    files.push(SeedFile::new(
        "/etc/hostname",
        0o644,
        format!("{}\n", spec.name).as_bytes(),
    ));
    // A generic image carries the firewall of the node it was built with; this node's role
    // (server, UPS server) may open other ports.
    for f in plan::hardening_files(spec)? {
        files.push(SeedFile::new(&f.path, f.mode, f.content.as_bytes()));
    }
    files.push(SeedFile::new(
        "/etc/hosts",
        0o644,
        plan::set_hosts_name(hosts, spec.name).as_bytes(),
    ));
    for k in &spec
        .identity
        .expect("personalize always has an identity")
        .host_keys
    {
        let name = format!("/etc/ssh/ssh_host_{}_key", k.kind);
        files.push(SeedFile::new(&name, 0o600, &k.private));
        files.push(SeedFile::new(&format!("{name}.pub"), 0o644, &k.public));
    }
    if let Some(id) = spec.identity {
        files.push(SeedFile::new(
            "/etc/rancher/node/password",
            0o600,
            id.k3s_node_password.as_bytes(),
        ));
    }
    let c = &loaded.config;
    let read = |p: &Path, what: &str| -> Result<Vec<u8>> {
        let full = loaded.resolve(p);
        let b = std::fs::read(&full).with_context(|| format!("{what} {}", full.display()))?;
        Ok(b.trim_ascii_end().to_vec())
    };
    if let (Some(k), Some(id)) = (&c.k3s, spec.identity) {
        for f in plan::k3s_files(spec, k, &id.state_dir)?.1 {
            files.push(SeedFile::new(&f.path, f.mode, &f.content));
        }
    }
    if let Some(u) = &c.ups {
        let pw = read(&u.password_file, "ups password_file")?;
        plan::check_nut_password(&pw, &loaded.resolve(&u.password_file))?;
        files.push(SeedFile::new(plan::NUT_PASSWORD, 0o600, &pw));
    }
    // The generic image may have been built from a config that pinned another NAS key, or none.
    if let Some(known_hosts) = plan::backup_known_hosts(c, &loaded.dir)? {
        files.push(SeedFile::new(plan::BACKUP_KNOWN_HOSTS, 0o600, &known_hosts));
    }
    if let Some(b) = &c.backup {
        let key = match &b.ssh_key_file {
            Some(k) => {
                let full = loaded.resolve(k);
                std::fs::read(&full)
                    .with_context(|| format!("backup ssh_key_file {}", full.display()))?
            }
            None => spec
                .identity
                .map(|id| id.backup_key.private.clone())
                .unwrap_or_default(),
        };
        files.push(SeedFile::new(plan::BACKUP_KEY, 0o600, &key));
    }
    Ok(Seed { files })
}
