//! Node config -> the list of changes to make in the image. The only place that decides what
//! goes into a node image; the image layer only carries it out.

pub mod changes;
pub mod files;
pub mod hardening;
pub mod locale;
pub mod network;
pub mod users;

use crate::board::Board;
use crate::config::{self, ClusterConfig, Role};
use crate::distro::Vendor;
use crate::fs::{Content, FileType, Op};
use crate::image::{Image, ImageError};
use crate::io::hash::sha256_hex;
use imagegen_firstboot::config as node;
use imagegen_firstboot::known_hosts;
use imagegen_firstboot::units;
use std::path::{Path, PathBuf};
use users::Accounts;

pub use changes::{Change, Kind, Plan};

/// Where the node config goes in the image.
pub const NODE_TOML: &str = node::NODE_CONFIG_PATH;
/// Where secrets read from files of the cluster config go.
pub const K3S_TOKEN: &str = "/etc/rancher/k3s/token";
pub const NUT_PASSWORD: &str = "/etc/imagegen/nut-password";
pub const BACKUP_KEY: &str = "/etc/imagegen/backup-key";
/// The NAS host keys `[backup] host_keys` and `known_hosts_file` pin (not a secret; root's
/// alone like node.toml, which names the same NAS).
pub const BACKUP_KNOWN_HOSTS: &str = "/etc/imagegen/backup-known-hosts";
/// Where a staged zerotier-one package waits for the agent to install it.
pub const ZEROTIER_PACKAGE: &str = "/var/cache/imagegen/zerotier-one.deb";
/// The kernel argument that sets the Wi-Fi regulatory domain (cfg80211).
pub const REGDOM_ARG: &str = "cfg80211.ieee80211_regdom=";
/// systemd preset for the units the agent enables itself; sorts before the vendor's.
pub const PRESET: &str = "/etc/systemd/system-preset/00-imagegen.preset";

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Users(#[from] users::UsersError),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hardening(#[from] hardening::HardeningError),
    #[error(transparent)]
    Distro(#[from] crate::distro::VendorError),
    #[error("{0}")]
    Invalid(String),
}

/// Everything the planner needs about one node.
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub role: Role,
    pub board: &'a Board,
    pub vendor: Vendor,
    pub config: &'a ClusterConfig,
    /// The directory relative paths of the config start from.
    pub config_dir: &'a Path,
    /// The agent binary for the board's architecture, already checked.
    pub agent: Option<&'a Path>,
    /// A k3s binary to stage (from `[k3s] binary`, or downloaded for `[k3s] version`).
    pub k3s_binary: Option<&'a Path>,
    /// Leave out every secret and the node's identity (a generic image for CI artifacts).
    pub generic: bool,
    /// The node's identity (None for a generic image).
    pub identity: Option<&'a crate::identity::Identity>,
    pub epoch: i64,
}

impl NodeSpec<'_> {
    fn resolve(&self, p: &Path) -> PathBuf {
        self.config_dir.join(p)
    }
}

/// The changes that make `image` into node `spec`, each tagged with whose it is.
pub fn plan(image: &mut Image, spec: &NodeSpec) -> Result<Vec<Change>, PlanError> {
    let mut p = Plan::new(spec.epoch);
    if !spec.generic {
        hostname(image, spec, &mut p)?;
    }
    let accounts = admin(image, spec, &mut p)?;
    harden(image, spec, &mut p)?;
    locale::plan(image, &spec.config.cluster, &mut p)?;
    network::plan(image, spec, &mut p)?;
    kernel_cmdline(image, spec, &mut p)?;
    identity_dirs(spec, &mut p);
    if let Some(id) = spec.identity {
        p.as_kind(Kind::Identity, |p| identity(id, spec.vendor, p));
        if spec.config.zerotier.is_some() {
            // The same member address after every rebuild and on every replacement card.
            let zt = crate::vpn::zerotier::load_or_create(&id.state_dir, spec.name)
                .map_err(|e| PlanError::Invalid(e.to_string()))?;
            p.as_kind(Kind::Identity, |p| {
                for f in crate::vpn::zerotier::image_files(&zt) {
                    let change = p.file(&f.path, f.content, f.mode);
                    if f.secret {
                        change.secret();
                    }
                }
            });
        }
    }
    wireguard(image, spec, &mut p)?;
    crate::distro::plan(
        spec.vendor,
        image,
        &crate::distro::Context {
            node: if spec.generic { "generic" } else { spec.name },
            has_identity: spec.identity.is_some(),
        },
        &mut p,
    )?;
    agent_config(spec, &mut p)?;
    if !spec.generic {
        secrets(spec, &mut p)?;
    }
    backup_pins(spec, &mut p)?;
    staged_software(spec, &mut p)?;
    let node_files = if spec.generic {
        None
    } else {
        Some(
            spec.config
                .nodes
                .iter()
                .find(|n| n.name.get_ref() == spec.name),
        )
        .flatten()
        .map(|n| n.files.as_slice())
    };
    files::plan(
        &spec.config.files,
        node_files,
        spec.config_dir,
        &accounts,
        &mut p,
    )?;
    files::scripts(&firstboot_scripts(spec), spec.config_dir, &mut p)?;
    Ok(p.into_changes())
}

/// The node's wg0.conf, its key from the identity state (so a replacement card is the same
/// peer), and wg-quick@wg0 enabled, as `systemctl enable` links it.
fn wireguard(image: &mut Image, spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    use crate::vpn::wireguard as wg;
    let bad = |e: wg::WireGuardError| PlanError::Invalid(e.to_string());
    let Some(mesh) = wg::Mesh::of(spec.config).map_err(bad)? else {
        return Ok(());
    };
    let in_image = image.lstat(wg::WG_QUICK)?.is_some();
    if !in_image && !wireguard_tools_staged(spec)? {
        let arch = spec.board.arch.dpkg();
        return Err(PlanError::Invalid(format!(
            "[wireguard]: the image has no {wg_quick} and [packages] debs has no {pkg} for \
             {arch}, so the tunnel could never come up: add the {pkg} .deb for {arch} (and \
             what it depends on that the image lacks) to [packages] debs, which the node \
             installs on first boot before it brings the tunnel up, or use a base image that \
             has {pkg}",
            wg_quick = wg::WG_QUICK,
            pkg = wg::PACKAGE,
        )));
    }
    p.dir(wg::CONF_DIR, 0o700);
    // With wg-quick from a staged .deb, the link would name a unit that does not exist at
    // boot (systemd drops a Wants= on a unit it cannot find); the agent enables the unit where
    // the package put it once its debs step installed it (node.toml `after_debs`).
    if in_image {
        let wants = "/etc/systemd/system/multi-user.target.wants";
        p.dir(wants, 0o755);
        p.symlink(&format!("{wants}/{}", wg::UNIT), wg::UNIT_TEMPLATE);
    }
    // k3s runs with flannel-iface wg0 and node-ip on it: started before wg-quick made wg0
    // (both are only After=network-online.target), k3s fails on the missing interface and
    // comes back only through Restart=always. Ordering it after the tunnel avoids that race;
    // Wants, not Requires, so a broken tunnel does not also stop k3s from logging why.
    if spec.config.k3s.is_some() {
        for unit in ["k3s.service", "k3s-agent.service"] {
            let dir = format!("/etc/systemd/system/{unit}.d");
            p.dir(&dir, 0o755);
            p.file(
                &format!("{dir}/{}", wg::K3S_DROPIN),
                format!(
                    "# Written by imagegen: k3s runs over {iface} (node-ip, flannel-iface).\n\
                     [Unit]\nWants={u}\nAfter={u}\n",
                    iface = wg::INTERFACE,
                    u = wg::UNIT
                )
                .into_bytes(),
                0o644,
            );
        }
    }
    if let Some(id) = spec.identity {
        let keys = wg::keys(&id.state_dir, &mesh).map_err(bad)?;
        let f = wg::image_file(&mesh, &keys, spec.name).map_err(bad)?;
        p.as_kind(Kind::Identity, |p| {
            p.file(&f.path, f.content, f.mode).secret();
        });
    }
    Ok(())
}

/// Where the identity goes. Public, so a seed's identity files land in directories as a full
/// build makes them; empty, they are inert (the bookworm restore unit waits for keys in its
/// directory).
fn identity_dirs(spec: &NodeSpec, p: &mut Plan) {
    if let Some(dir) = spec.vendor.family().host_key_copy_dir() {
        p.dir(dir, 0o700);
    }
    p.dir("/etc/rancher/node", 0o700);
    if spec.config.zerotier.is_some() {
        p.dir(crate::vpn::zerotier::HOME, 0o700);
    }
}

/// The agent's node.toml, and the directory its k3s token goes in.
fn agent_config(spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    let text = node_config(spec)?
        .to_toml_string()
        .map_err(|e| PlanError::Invalid(e.to_string()))?;
    p.dir("/etc/imagegen", 0o755);
    p.file(NODE_TOML, text.into_bytes(), 0o600).kind(Kind::Node);
    if spec.config.k3s.is_some() {
        p.dir("/etc/rancher/k3s", 0o755);
    }
    Ok(())
}

/// The secrets the config's files hold, where node.toml says they are: the k3s token (and on
/// the servers of a new cluster its CA set), the NUT password, the backup key (the node's own
/// unless the config gives one).
fn secrets(spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    let cfg = spec.config;
    if let (Some(k), Some(id)) = (&cfg.k3s, spec.identity) {
        let (dirs, files) = k3s_files(spec, k, &id.state_dir)?;
        for (d, mode) in dirs {
            p.dir(d, mode);
        }
        for f in files {
            let change = p.file(&f.path, f.content, f.mode);
            if f.secret {
                change.secret();
            } else {
                change.kind(Kind::Node);
            }
        }
        // Add-ons go to the first server only, so they are the node's own.
        let manifests = crate::addons::manifests(cfg, spec.name, spec.config_dir)
            .map_err(|e| PlanError::Invalid(e.to_string()))?;
        if !manifests.is_empty() {
            p.dir(crate::addons::MANIFESTS_DIR, 0o700);
        }
        for m in manifests {
            let change = p.file(&m.path, m.content, 0o600).kind(Kind::Node);
            if m.secret {
                change.secret();
            }
        }
        if crate::addons::etcd_snapshots(cfg, spec.role).is_some() {
            // Backed up from the first backup on, before k3s has taken a snapshot.
            p.dir(crate::addons::SNAPSHOT_DIR, 0o700);
        }
    }
    if let Some(u) = &cfg.ups {
        let path = spec.resolve(&u.password_file);
        let pw = read_secret(&path, "ups password_file")?;
        check_nut_password(&pw, &path)?;
        p.file(NUT_PASSWORD, pw, 0o600).secret();
    }
    if let Some(b) = &cfg.backup {
        let (key, kind) = match (&b.ssh_key_file, spec.identity) {
            (Some(key), _) => (
                std::fs::read(spec.resolve(key)).map_err(|source| PlanError::Read {
                    path: spec.resolve(key).display().to_string(),
                    source,
                })?,
                Kind::Secret,
            ),
            (None, Some(id)) => (id.backup_key.private.clone(), Kind::Identity),
            (None, None) => (Vec::new(), Kind::Secret),
        };
        if !key.is_empty() {
            p.file(BACKUP_KEY, key, 0o600).kind(kind).secret();
        }
    }
    Ok(())
}

/// The NAS host keys backups accept. Not a secret and the same on every node, so a generic
/// image carries it too; but it goes with the node.toml that points at it
/// (`known_hosts_file`): a generic image built from a config that pinned another NAS key, or
/// none, gets this config's from the seed.
fn backup_pins(spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    if let Some(known_hosts) = backup_known_hosts(spec.config, spec.config_dir)? {
        p.file(BACKUP_KNOWN_HOSTS, known_hosts, 0o600)
            .kind(Kind::Node);
    }
    Ok(())
}

/// What first boot installs without the internet: the zerotier-one package, k3s and its
/// units, the agent and its units, and the presets that keep the agent's units off until it
/// enables them. Not secret and the same for every node of a board: a generic image carries
/// it too, or a personalized node would lack what a full build of it has.
fn staged_software(spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    for (dest, source) in staged_debs(spec)? {
        let source = spec.resolve(source);
        if let Some(dir) = Path::new(&dest).parent().and_then(Path::to_str) {
            p.dir(dir, 0o755);
        }
        p.host_file(&dest, source, 0o644);
    }
    let mut enabled_by_agent: Vec<&str> = Vec::new();
    if let Some(bin) = spec.k3s_binary {
        stage_k3s(bin, spec.board, p)?;
        enabled_by_agent.extend(["k3s.service", "k3s-agent.service"]);
    }
    if let Some(agent) = spec.agent {
        stage_agent(agent, p);
        enabled_by_agent.extend(
            units::UNITS
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| !units::ENABLED_BY_BUILDER.iter().any(|(u, _)| u == name)),
        );
    }
    if !enabled_by_agent.is_empty() {
        p.dir("/etc/systemd/system-preset", 0o755);
        p.file(PRESET, preset_file(&enabled_by_agent).into_bytes(), 0o644);
    }
    Ok(())
}

/// The staged packages of this node's board, with their control data (`for_arch`).
fn staged_for_board<'a>(
    spec: &NodeSpec<'a>,
) -> Result<Vec<(crate::check::packages::Staged<'a>, crate::deb::Control)>, PlanError> {
    crate::check::packages::for_arch(spec.config, |p| spec.resolve(p), spec.board.arch).map_err(
        |e| {
            PlanError::Invalid(
                e.into_iter()
                    .map(|(_, why)| why)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        },
    )
}

/// `[packages] debs` gives wireguard-tools (by its control data) for this node's board.
fn wireguard_tools_staged(spec: &NodeSpec) -> Result<bool, PlanError> {
    Ok(staged_for_board(spec)?.iter().any(|(s, control)| {
        s.what != crate::check::packages::ZEROTIER
            && control.package == crate::vpn::wireguard::PACKAGE
    }))
}

/// Every `.deb` this node's board installs, as (path on the node, source): the zerotier-one
/// package and `[packages] debs`, one way for both, each the one for the board's
/// architecture. A deb is staged as `NN-PACKAGE.deb` (its position among this node's, from 01,
/// and its control data's name), a file name that sorts in install order whatever the
/// operator's file was called.
fn staged_debs<'a>(spec: &NodeSpec<'a>) -> Result<Vec<(String, &'a Path)>, PlanError> {
    let mut n = 0;
    Ok(staged_for_board(spec)?
        .into_iter()
        .map(|(s, control)| {
            let dest = if s.what == crate::check::packages::ZEROTIER {
                ZEROTIER_PACKAGE.to_owned()
            } else {
                n += 1;
                format!("{}/{n:02}-{}.deb", node::DEBS_DIR, control.package)
            };
            (dest, s.path)
        })
        .collect())
}

/// The agent binary, its units, and the ones the builder enables.
fn stage_agent(agent: &Path, p: &mut Plan) {
    let dir = Path::new(units::AGENT_BINARY_PATH)
        .parent()
        .and_then(Path::to_str)
        .unwrap_or("/usr/local/bin");
    p.dir(dir, 0o755);
    p.host_file(units::AGENT_BINARY_PATH, agent.to_path_buf(), 0o755);
    for (name, content) in units::UNITS {
        p.file(
            &format!("/etc/systemd/system/{name}"),
            content.as_bytes().to_vec(),
            0o644,
        );
    }
    for (unit, target) in units::ENABLED_BY_BUILDER {
        let wants = format!("/etc/systemd/system/{target}.wants");
        p.dir(&wants, 0o755);
        p.symlink(
            &format!("{wants}/{unit}"),
            &format!("/etc/systemd/system/{unit}"),
        );
    }
}

/// The token, and on servers of a new cluster the CA set, with the directories they need; a
/// token_file that holds no k3s token is refused here too, for `build` as for `check`.
pub fn k3s_files(
    spec: &NodeSpec,
    k: &config::K3s,
    state_dir: &Path,
) -> Result<(crate::cluster::NodeDirs, Vec<crate::cluster::NodeFile>), PlanError> {
    let token_file = k.token_file.as_ref().map(|t| spec.resolve(t.get_ref()));
    let files = crate::cluster::node_files(k, token_file.as_deref(), spec.role, state_dir)
        .map_err(|e| PlanError::Invalid(e.to_string()))?;
    if let Some(path) = &token_file
        && let Some(why) =
            crate::cluster::token::token_problem(&String::from_utf8_lossy(&files[0].content))
    {
        return Err(PlanError::Invalid(format!(
            "k3s token_file {} is not a k3s token: {why}",
            path.display()
        )));
    }
    Ok((crate::cluster::node_dirs(&files), files))
}

/// Keeps systemd presets from enabling the units the agent enables itself, and only where the
/// node needs them. A systemd first boot (machine-id `uninitialized`, as on Raspberry Pi OS
/// trixie) runs `preset-all`, and Debian's presets enable every unit with an [Install]
/// section: both k3s.service and k3s-agent.service would start, a server on an agent node.
fn preset_file(units: &[&str]) -> String {
    let mut s = String::from(
        "# Written by imagegen: imagegen-firstboot enables these when the node needs them.\n",
    );
    for u in units {
        s.push_str(&format!("disable {u}\n"));
    }
    s
}

/// sshd drop-in, sysctl, firewall and unattended upgrades, as the config's toggles say.
fn harden(image: &mut Image, spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    let cfg = spec.config;
    if cfg.hardening.sshd {
        let main = read_text(image, "/etc/ssh/sshd_config")?;
        let dropins: Vec<String> = match image.read_dir("/etc/ssh/sshd_config.d") {
            Ok(entries) => entries.into_iter().map(|e| e.name).collect(),
            Err(ImageError::Fs(crate::fs::FsError::NotFound(_))) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        hardening::check_sshd_order(&main, &dropins)?;
    }
    for f in hardening_files(spec)? {
        if let Some((parent, _)) = crate::fs::path::split(&f.path) {
            p.dir(parent, 0o755);
        }
        let kind = if f.per_node { Kind::Node } else { Kind::Public };
        p.file(&f.path, f.content.into_bytes(), f.mode).kind(kind);
    }
    if cfg.hardening.firewall {
        // Debian ships nftables.service disabled. Where the image lacks nftables the agent
        // installs it on first boot and enables it then.
        for unit in [
            "/usr/lib/systemd/system/nftables.service",
            "/lib/systemd/system/nftables.service",
        ] {
            if image.lstat(unit)?.is_some() {
                let wants = "/etc/systemd/system/sysinit.target.wants";
                p.dir(wants, 0o755);
                p.symlink(&format!("{wants}/nftables.service"), unit);
                break;
            }
        }
    }
    Ok(())
}

/// The hardening files as the config's toggles say, for this node: the firewall depends on its
/// role and on whether the UPS is plugged into it.
fn hardening_files(spec: &NodeSpec) -> Result<Vec<hardening::RenderedFile>, PlanError> {
    let cfg = spec.config;
    let ups_server = cfg
        .ups
        .as_ref()
        .and_then(|u| u.server.as_ref())
        .is_some_and(|s| s.get_ref() == spec.name);
    let mesh = crate::vpn::wireguard::Mesh::of(cfg).ok().flatten();
    let etcd_peers = match &mesh {
        // Over the mesh, etcd's peers come from their wg0 addresses, all known.
        Some(m) => Some(
            cfg.nodes
                .iter()
                .filter(|n| n.role == Role::Server && n.name.get_ref() != spec.name)
                .filter_map(|n| m.member(n.name.get_ref()))
                .map(|m| std::net::IpAddr::V4(m.address))
                .collect::<Vec<_>>(),
        )
        .filter(|_| !spec.generic),
        None => (!spec.generic)
            .then(|| crate::cluster::servers::other_server_addresses(cfg, spec.name).ok())
            .flatten(),
    };
    let ctx = hardening::Context {
        admin_user: cfg.admin.user.get_ref(),
        role: spec.role,
        ups_server,
        zerotier: cfg.zerotier.is_some(),
        wireguard_port: mesh.as_ref().map(|m| m.port),
        etcd_peers: etcd_peers.as_deref(),
    };
    Ok(hardening::files(&cfg.hardening, &ctx)?)
}

/// The node's SSH host keys at their usual paths (and in the family's copy directory) and the
/// k3s node password.
fn identity(id: &crate::identity::Identity, vendor: Vendor, p: &mut Plan) {
    let copy_dir = vendor.family().host_key_copy_dir();
    for k in &id.host_keys {
        let name = format!("ssh_host_{}_key", k.kind);
        p.file(&format!("/etc/ssh/{name}"), k.private.clone(), 0o600)
            .secret();
        p.file(&format!("/etc/ssh/{name}.pub"), k.public.clone(), 0o644);
        if let Some(dir) = copy_dir {
            p.file(&format!("{dir}/{name}"), k.private.clone(), 0o600)
                .secret();
            p.file(&format!("{dir}/{name}.pub"), k.public.clone(), 0o644);
        }
    }
    p.file(
        "/etc/rancher/node/password",
        id.k3s_node_password.clone().into_bytes(),
        0o600,
    )
    .secret();
}

/// Adds the board's kernel arguments (k3s needs the memory cgroup on Raspberry Pis) to the
/// one-line cmdline.txt, and checks that its root= names a partition of this image. A node
/// with Wi-Fi gets its regulatory domain there too, replacing any other, as raspi-config
/// `do_wifi_country` writes it (`cfg80211.ieee80211_regdom=XX`; Raspberry Pi Imager appends
/// the same): the node's own, so then the file is.
fn kernel_cmdline(image: &mut Image, spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    let Some(file) = spec.board.kernel_cmdline_file.as_deref() else {
        return Ok(());
    };
    let text = match image.read_file(file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(ImageError::Fs(crate::fs::FsError::NotFound(_))) => {
            return Err(PlanError::Invalid(format!(
                "board {} boots with {file}, but the image has none",
                spec.board.id
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let line = text.lines().next().unwrap_or("").trim().to_string();
    let mut args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    let root = args
        .iter()
        .find_map(|a| a.strip_prefix("root="))
        .map(str::to_string)
        .ok_or_else(|| PlanError::Invalid(format!("{file} has no root= argument")))?;
    check_root_reference(image, &root, file)?;
    for want in &spec.board.kernel_args {
        if !args.contains(want) {
            args.push(want.clone());
        }
    }
    let regdom = network::regulatory_domain(spec);
    if let Some(country) = &regdom {
        args.retain(|a| !a.starts_with(REGDOM_ARG));
        args.push(format!("{REGDOM_ARG}{country}"));
    }
    let new = format!("{}\n", args.join(" "));
    if new != text {
        let kind = if regdom.is_some() {
            Kind::Node
        } else {
            Kind::Public
        };
        p.file(file, new.into_bytes(), 0o644).kind(kind);
    }
    Ok(())
}

/// root=PARTUUID=/LABEL=/UUID= must name a partition or filesystem of this image, or the node
/// will not find its root after flashing.
fn check_root_reference(image: &mut Image, root: &str, file: &str) -> Result<(), PlanError> {
    let ok = if let Some(u) = root.strip_prefix("PARTUUID=") {
        image
            .slots()
            .iter()
            .any(|s| s.partition.partuuid.eq_ignore_ascii_case(u))
    } else if let Some(want) = root.strip_prefix("LABEL=").or(root.strip_prefix("UUID=")) {
        let by_label = root.starts_with("LABEL=");
        let mut found = false;
        for i in 0..image.slots().len() {
            if image.slots()[i].fs_kind.is_some() {
                let info = image.info(i)?;
                let v = if by_label { info.label } else { info.uuid };
                found |= v.is_some_and(|v| v.eq_ignore_ascii_case(want));
            }
        }
        found
    } else {
        true
    };
    if ok {
        Ok(())
    } else {
        Err(PlanError::Invalid(format!(
            "{file} says root={root}, which is not in this image: the node would not boot"
        )))
    }
}

/// The k3s binary at the path install.sh uses, and the units install.sh would write, so first
/// boot needs no internet for k3s. The agent enables the right one once it has checked the
/// server's CA.
fn stage_k3s(bin: &Path, board: &Board, p: &mut Plan) -> Result<(), PlanError> {
    let mut head = [0u8; 64];
    let n = std::fs::File::open(bin)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|source| PlanError::Read {
            path: format!("k3s binary {}", bin.display()),
            source,
        })?;
    // A script (a test stand-in, a wrapper) runs anywhere; a binary must match the board.
    if !head[..n].starts_with(b"#!") {
        let arch = crate::arch::elf_arch(&head[..n])
            .map_err(|e| PlanError::Invalid(format!("k3s binary {}: {e}", bin.display())))?;
        if arch != board.arch {
            return Err(PlanError::Invalid(format!(
                "k3s binary {} is for {arch}, but board {} is {}: give the k3s-{} release file",
                bin.display(),
                board.id,
                board.arch,
                match board.arch {
                    crate::arch::Arch::X86_64 => "amd64",
                    crate::arch::Arch::Aarch64 => "arm64",
                    crate::arch::Arch::Arm => "armhf",
                }
            )));
        }
    }
    p.dir("/usr/local/bin", 0o755);
    p.host_file("/usr/local/bin/k3s", bin.to_path_buf(), 0o755);
    for (unit, cmd) in [("k3s.service", "server"), ("k3s-agent.service", "agent")] {
        p.file(
            &format!("/etc/systemd/system/{unit}"),
            k3s_unit(cmd).into_bytes(),
            0o644,
        );
    }
    Ok(())
}

/// What k3s's install.sh writes (shared/research/cluster-node.md 1.1); the join settings
/// come from /etc/rancher/k3s/config.yaml, which the agent writes.
fn k3s_unit(cmd: &str) -> String {
    format!(
        "[Unit]\n\
         Description=Lightweight Kubernetes ({cmd}), staged by imagegen\n\
         Documentation=https://k3s.io\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         EnvironmentFile=-/etc/default/%N\n\
         KillMode=process\n\
         Delegate=yes\n\
         LimitNOFILE=1048576\n\
         LimitNPROC=infinity\n\
         LimitCORE=infinity\n\
         TasksMax=infinity\n\
         TimeoutStartSec=0\n\
         Restart=always\n\
         RestartSec=5s\n\
         ExecStartPre=-/sbin/modprobe br_netfilter\n\
         ExecStartPre=-/sbin/modprobe overlay\n\
         ExecStart=/usr/local/bin/k3s {cmd}\n"
    )
}

/// The agent refuses on the node a NUT password that NUT would not keep unchanged (printable
/// ASCII, at most 512 bytes: see `imagegen_firstboot::nut::check_word`); say so at build time.
pub fn check_nut_password(password: &[u8], path: &Path) -> Result<(), PlanError> {
    let why = match std::str::from_utf8(password) {
        Ok(s) => imagegen_firstboot::nut::check_word(s).err(),
        Err(_) => Some("it is not UTF-8 text".to_owned()),
    };
    match why {
        Some(why) => Err(PlanError::Invalid(format!(
            "ups password_file {} cannot be used with NUT: {why}",
            path.display()
        ))),
        None => Ok(()),
    }
}

fn read_secret(path: &Path, what: &str) -> Result<Vec<u8>, PlanError> {
    let bytes = std::fs::read(path).map_err(|source| PlanError::Read {
        path: format!("{what} {}", path.display()),
        source,
    })?;
    // A trailing newline from `echo > file` is not part of the secret.
    let trimmed = bytes.trim_ascii_end().to_vec();
    if trimmed.is_empty() {
        return Err(PlanError::Invalid(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(trimmed)
}

fn hostname(image: &mut Image, spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    p.file(
        "/etc/hostname",
        format!("{}\n", spec.name).into_bytes(),
        0o644,
    )
    .kind(Kind::Node);
    let hosts = match image.read_file("/etc/hosts") {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(ImageError::Fs(crate::fs::FsError::NotFound(_))) => String::new(),
        Err(e) => return Err(e.into()),
    };
    p.file(
        "/etc/hosts",
        set_hosts_name(&hosts, spec.name).into_bytes(),
        0o644,
    )
    .kind(Kind::Node);
    Ok(())
}

/// Points 127.0.1.1 (Debian's line for the own name) at `name`, keeping everything else.
fn set_hosts_name(hosts: &str, name: &str) -> String {
    let line = format!("127.0.1.1\t{name}");
    let mut out: Vec<String> = Vec::new();
    let mut done = false;
    for l in hosts.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !done {
                out.push(line.clone());
                done = true;
            }
        } else {
            out.push(l.to_string());
        }
    }
    if !done {
        let at = out
            .iter()
            .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
            .map_or(out.len(), |i| i + 1);
        out.insert(at, line);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn read_text(image: &mut Image, path: &str) -> Result<String, PlanError> {
    let bytes = image.read_file(path)?;
    String::from_utf8(bytes).map_err(|_| PlanError::Invalid(format!("{path} is not UTF-8 text")))
}

/// The admin account: passwd/shadow/group/gshadow, home with the skeleton files, SSH keys,
/// password-less sudo. Vendor default passwords are locked.
/// Returns the account databases as the plan leaves them, for `[[files]] owner`.
fn admin(image: &mut Image, spec: &NodeSpec, p: &mut Plan) -> Result<Accounts, PlanError> {
    let name = spec.config.admin.user.get_ref().as_str();
    let mut acc = Accounts {
        passwd: read_text(image, "/etc/passwd")?,
        shadow: read_text(image, "/etc/shadow")?,
        group: read_text(image, "/etc/group")?,
        gshadow: read_text(image, "/etc/gshadow")?,
    };
    let a = acc.add_admin(name, &["sudo", "adm", "systemd-journal"])?;
    acc.lock_passwords_except(name);
    p.file("/etc/passwd", acc.passwd.clone().into_bytes(), 0o644);
    let shadow_gid = group_id(&acc.group, "shadow").unwrap_or(0);
    p.file("/etc/group", acc.group.clone().into_bytes(), 0o644);
    p.file(
        "/etc/shadow",
        std::mem::take(&mut acc.shadow).into_bytes(),
        0o640,
    )
    .owner(0, shadow_gid);
    p.file(
        "/etc/gshadow",
        std::mem::take(&mut acc.gshadow).into_bytes(),
        0o640,
    )
    .owner(0, shadow_gid);

    let home = a.home.clone();
    p.dir(&home, 0o750).owner(a.uid, a.gid);
    if image.lstat("/etc/skel")?.map(|s| s.file_type) == Some(FileType::Directory) {
        for e in image.read_dir("/etc/skel")? {
            if e.stat.file_type == FileType::Regular {
                let content = image.read_file(&format!("/etc/skel/{}", e.name))?;
                p.file(&format!("{home}/{}", e.name), content, e.stat.mode)
                    .owner(a.uid, a.gid);
            }
        }
    }
    p.dir(&format!("{home}/.ssh"), 0o700).owner(a.uid, a.gid);
    let mut keys = String::new();
    for k in spec.config.admin.ssh_authorized_keys.get_ref() {
        keys.push_str(k.get_ref().trim());
        keys.push('\n');
    }
    p.file(
        &format!("{home}/.ssh/authorized_keys"),
        keys.into_bytes(),
        0o600,
    )
    .owner(a.uid, a.gid);
    p.dir("/etc/sudoers.d", 0o755);
    let sudoers = format!(
        "# Written by imagegen: the admin logs in with SSH keys only.\n{name} ALL=(ALL) NOPASSWD:ALL\n"
    );
    p.file(
        "/etc/sudoers.d/90-imagegen-admin",
        sudoers.into_bytes(),
        0o440,
    );
    Ok(acc)
}

/// `[firstboot] scripts` as the config gives them, relative to the config file.
fn firstboot_scripts(spec: &NodeSpec) -> Vec<PathBuf> {
    spec.config
        .firstboot
        .iter()
        .flat_map(|f| &f.scripts)
        .map(|s| s.get_ref().clone())
        .collect()
}

fn group_id(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| f.get(2)?.parse().ok())?
    })
}

/// The agent's node.toml for this node, from the cluster config.
pub fn node_config(spec: &NodeSpec) -> Result<node::NodeConfig, PlanError> {
    let cfg = spec.config;
    let role = match spec.role {
        Role::Server => node::Role::Server,
        Role::Agent => node::Role::Agent,
    };
    let ups_host_node = cfg
        .ups
        .as_ref()
        .and_then(|u| u.server.as_ref())
        .map(|s| s.get_ref().clone());
    let is_ups_server = ups_host_node.as_deref() == Some(spec.name);
    let bootstrap =
        crate::cluster::Bootstrap::of(cfg).map_err(|e| PlanError::Invalid(e.to_string()))?;
    // A generic image is no node in particular: it joins, and `personalize` gives the first
    // server its own node.toml.
    let cluster_init = !spec.generic && bootstrap.as_ref().is_some_and(|b| b.is_first(spec.name));
    // k3s talks over the mesh: node-ip is the node's wg0 address, known at build time.
    let after_debs = cfg.wireguard.is_some() && wireguard_tools_staged(spec)?;
    let wireguard = crate::vpn::wireguard::Mesh::of(cfg)
        .map_err(|e| PlanError::Invalid(e.to_string()))?
        .and_then(|m| m.member(spec.name).cloned())
        .map(|m| node::WireGuardSection {
            interface: crate::vpn::wireguard::INTERFACE.into(),
            address: m.address.to_string(),
            // Also when the image has wg-quick: dpkg then upgrades it, and enabling the
            // already enabled unit again changes nothing.
            after_debs,
        });
    let k3s = cfg.k3s.as_ref().map(|k| {
        let url = bootstrap.as_ref().map(|b| b.server_url().to_string());
        node::K3sSection {
            // The first server starts the cluster and registers with nobody.
            server_url: if cluster_init { None } else { url.clone() },
            // Servers' certificates carry the registration address, so agents and kubectl
            // reach them by it.
            tls_san: match (spec.role, url.as_deref().and_then(url_host)) {
                (Role::Server, Some(h)) => vec![h],
                _ => Vec::new(),
            },
            token_file: PathBuf::from(K3S_TOKEN),
            node_ip_from: if cfg.zerotier.is_some() {
                node::NodeIpFrom::Zerotier
            } else if wireguard.is_some() {
                node::NodeIpFrom::Wireguard
            } else {
                node::NodeIpFrom::DefaultRoute
            },
            version: k.version.clone(),
            allow_unverified_token: false,
            ..etcd_snapshot_settings(cfg, spec.role)
        }
    });
    let ups = match &cfg.ups {
        Some(u) => Some(node::UpsSection {
            host: if is_ups_server {
                "127.0.0.1".into()
            } else if let Some(h) = &u.host {
                h.clone()
            } else {
                ups_server_address(cfg, ups_host_node.as_deref().unwrap_or_default())?
            },
            port: u.port,
            ups: u.ups.clone(),
            user: u.user.clone(),
            password_file: PathBuf::from(NUT_PASSWORD),
            primary: is_ups_server,
            driver: if is_ups_server {
                u.driver.clone()
            } else {
                None
            },
            driver_port: if is_ups_server {
                Some("auto".into())
            } else {
                None
            },
            ..default_ups()
        }),
        None => None,
    };
    let backup = match &cfg.backup {
        Some(b) => Some(node::BackupSection {
            target: ssh_url_to_rsync(b.target.get_ref())?,
            paths: backup_paths(cfg, b, spec.role),
            schedule: b
                .schedule
                .as_ref()
                .map_or_else(|| "daily".into(), |s| s.get_ref().clone()),
            ssh_key_file: PathBuf::from(BACKUP_KEY),
            ssh_port: ssh_url_port(b.target.get_ref()),
            known_hosts_file: b.pins_host_key().then(|| PathBuf::from(BACKUP_KNOWN_HOSTS)),
            connect_timeout_secs: node::DEFAULT_CONNECT_TIMEOUT_SECS,
            io_timeout_secs: node::DEFAULT_IO_TIMEOUT_SECS,
        }),
        None => None,
    };
    let debs = staged_debs(spec)?;
    let zerotier_staged = debs.iter().any(|(dest, _)| dest == ZEROTIER_PACKAGE);
    let n = node::NodeConfig {
        node: node::NodeSection {
            name: if spec.generic {
                "generic".into()
            } else {
                spec.name.into()
            },
            role,
            cluster: cfg.cluster.name.get_ref().clone(),
            cluster_init,
        },
        k3s,
        zerotier: cfg.zerotier.as_ref().map(|z| node::ZeroTierSection {
            network_id: z.network_id.get_ref().clone(),
            package: zerotier_staged.then(|| PathBuf::from(ZEROTIER_PACKAGE)),
            ..default_zerotier()
        }),
        wireguard,
        ups,
        backup,
        paths: node::PathsSection {
            boot: PathBuf::from(spec.vendor.family().boot_mount()),
        },
        commands: Default::default(),
        agent: Default::default(),
        packages: node::PackagesSection {
            debs: debs
                .into_iter()
                .filter(|(dest, ..)| dest != ZEROTIER_PACKAGE)
                .map(|(dest, ..)| PathBuf::from(dest))
                .collect(),
            apt: spec
                .config
                .packages
                .iter()
                .flat_map(|pk| &pk.apt)
                .map(|n| n.get_ref().clone())
                .collect(),
        },
        firstboot: node::FirstbootSection {
            // The same names `files::scripts` stages them under.
            scripts: firstboot_scripts(spec)
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    crate::check::files::staged_name(i, s)
                        .map(|n| Path::new(node::SCRIPTS_DIR).join(n))
                        .ok_or_else(|| {
                            PlanError::Invalid(format!(
                                "firstboot script {}: its file name must be letters, digits, \
                                 '.', '_' and '-'",
                                s.display()
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
            timeout_secs: spec
                .config
                .firstboot
                .as_ref()
                .and_then(|f| f.timeout_secs.as_ref())
                .map_or(node::DEFAULT_SCRIPT_TIMEOUT_SECS, |t| *t.get_ref()),
        },
    };
    n.validate()
        .map_err(|e| PlanError::Invalid(e.to_string()))?;
    Ok(n)
}

/// k3s's defaults, with `[addons.etcd_snapshots]`'s schedule and retention on a server.
fn etcd_snapshot_settings(cfg: &ClusterConfig, role: Role) -> node::K3sSection {
    let mut k = default_k3s();
    if let Some(e) = crate::addons::etcd_snapshots(cfg, role) {
        if let Some(s) = &e.schedule {
            k.etcd_snapshot_schedule = s.get_ref().clone();
        }
        if let Some(r) = e.retention {
            k.etcd_snapshot_retention = r;
        }
    }
    k
}

/// `[backup] paths` (default /etc), and on a server with `[addons.etcd_snapshots]` the
/// snapshot directory.
fn backup_paths(cfg: &ClusterConfig, b: &config::Backup, role: Role) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = if b.paths.is_empty() {
        vec![PathBuf::from("/etc")]
    } else {
        b.paths.iter().map(PathBuf::from).collect()
    };
    let snapshots = PathBuf::from(crate::addons::SNAPSHOT_DIR);
    if crate::addons::etcd_snapshots(cfg, role).is_some() && !paths.contains(&snapshots) {
        paths.push(snapshots);
    }
    paths
}

fn default_k3s() -> node::K3sSection {
    toml::from_str::<node::K3sSection>("").expect("all k3s keys have defaults")
}

fn default_ups() -> node::UpsSection {
    toml::from_str::<node::UpsSection>("host='' \nups='' \nuser='' \npassword_file=''")
        .expect("the other ups keys have defaults")
}

fn default_zerotier() -> node::ZeroTierSection {
    toml::from_str::<node::ZeroTierSection>("network_id=''").expect("other keys have defaults")
}

/// The UPS server's address as other nodes reach it: the host of the k3s server URL when the UPS
/// server is that server, else its name (resolved by the node's DNS or /etc/hosts).
fn ups_server_address(cfg: &ClusterConfig, ups_node: &str) -> Result<String, PlanError> {
    if let Ok(Some(b)) = crate::cluster::Bootstrap::of(cfg) {
        let url = b.server_url();
        // The server the URL names: the one that starts a new cluster (`init_server` moves
        // it), else the first server listed.
        let is_first_server = match &b {
            crate::cluster::Bootstrap::New { .. } => b.is_first(ups_node),
            crate::cluster::Bootstrap::Join { .. } => cfg
                .nodes
                .iter()
                .find(|n| n.role == Role::Server)
                .is_some_and(|n| n.name.get_ref() == ups_node),
        };
        if is_first_server && let Some(host) = url_host(url) {
            return Ok(host);
        }
    }
    Ok(ups_node.to_string())
}

/// The host of a URL, an IPv6 address without its brackets, as the agent's requests reach it.
pub(crate) fn url_host(url: &str) -> Option<String> {
    Some(match url::Url::parse(url).ok()?.host()? {
        url::Host::Ipv6(a) => a.to_string(),
        h => h.to_string(),
    })
}

/// The one-line warning `check`, `build` and `personalize` print when the config pins no NAS
/// host key.
pub fn backup_pin_warning(cfg: &ClusterConfig) -> Option<String> {
    let b = cfg.backup.as_ref().filter(|b| !b.pins_host_key())?;
    Some(format!(
        "warning: [backup] pins no NAS host key: each node trusts the key {} first shows \
         (trust on first use) and refuses any other after; pin it with host_keys = \
         [\"<the NAS's /etc/ssh/ssh_host_ed25519_key.pub>\"] or known_hosts_file",
        ssh_url_host(b.target.get_ref()).unwrap_or_else(|_| "the NAS".into())
    ))
}

/// The known_hosts every node checks the NAS against: `[backup] host_keys` under the name ssh
/// looks the target up by, then the lines of `known_hosts_file`. None when neither is given.
/// A known_hosts_file must parse and list the target: else every backup would be refused.
pub fn backup_known_hosts(
    cfg: &ClusterConfig,
    config_dir: &Path,
) -> Result<Option<Vec<u8>>, PlanError> {
    let Some(b) = cfg.backup.as_ref().filter(|b| b.pins_host_key()) else {
        return Ok(None);
    };
    let url = b.target.get_ref();
    let host = ssh_url_host(url)?;
    let name = known_hosts::host_name(&host, ssh_url_port(url)).ok_or_else(|| {
        PlanError::Invalid(format!(
            "backup target {url:?}: host {host:?} cannot be written in a known_hosts file"
        ))
    })?;
    let mut out = String::from(
        "# Written by imagegen from cluster.toml [backup]: the NAS host keys backups accept.\n",
    );
    for k in &b.host_keys {
        let f: Vec<&str> = k.get_ref().split_whitespace().collect();
        let key = match f.as_slice() {
            [kind, b64, ..] => known_hosts::PublicKey::parse(kind, b64).ok(),
            _ => None,
        }
        .ok_or_else(|| PlanError::Invalid(format!("backup host_keys: {:?}", k.get_ref())))?;
        out.push_str(&format!("{name} {}\n", key.to_text()));
    }
    if let Some(file) = &b.known_hosts_file {
        let path = config_dir.join(file);
        let what = format!("backup known_hosts_file {}", path.display());
        let bytes = std::fs::read(&path).map_err(|source| PlanError::Read {
            path: what.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| PlanError::Invalid(format!("{what} is not UTF-8 text")))?;
        let entries = known_hosts::parse(&text).map_err(|(line, why)| {
            PlanError::Invalid(format!(
                "backup known_hosts_file {}:{line}: {why}",
                path.display()
            ))
        })?;
        if entries.is_empty() {
            return Err(PlanError::Invalid(format!("{what} has no keys")));
        }
        if !ssh_keygen_finds(&path, &name)? {
            let keyscan = match ssh_url_port(url) {
                Some(p) if p != 22 => format!("ssh-keyscan -p {p} {host}"),
                _ => format!("ssh-keyscan {host}"),
            };
            return Err(PlanError::Invalid(format!(
                "{what} has no key for {name}, the name the nodes' ssh looks the NAS up by \
                 (target {url}); add its line, e.g. from `{keyscan}` checked against the NAS"
            )));
        }
        out.push_str(&text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(Some(out.into_bytes()))
}

/// Whether `ssh-keygen -F NAME` finds a key for `name` in the known_hosts `file`: the same
/// host matching as ssh's, hashed names and wildcard patterns included.
fn ssh_keygen_finds(file: &Path, name: &str) -> Result<bool, PlanError> {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-F")
        .arg(name)
        .arg("-f")
        .arg(file)
        .output()
        .map_err(|e| {
            PlanError::Invalid(format!(
                "ssh-keygen is needed to check backup known_hosts_file: {e}; install OpenSSH's \
                 client tools (Debian: openssh-client)"
            ))
        })?;
    // ssh-keygen(1) -F: exit 0 when found, 1 when not.
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(PlanError::Invalid(format!(
            "ssh-keygen -F {name} -f {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// A backup target `ssh://[user@]host[:port]/path`, read by the `url` crate like every other
/// URL here. `path` is percent-decoded (a space is `%20` in the URL, a space on the NAS).
struct SshTarget {
    user: String,
    /// Without brackets around an IPv6 address.
    host: String,
    port: Option<u16>,
    path: String,
}

impl SshTarget {
    fn parse(target: &str) -> Result<SshTarget, PlanError> {
        let bad = || {
            PlanError::Invalid(format!(
                "backup target {target:?} is not ssh://USER@HOST/PATH"
            ))
        };
        let url = url::Url::parse(target).map_err(|_| bad())?;
        if url.scheme() != "ssh" {
            return Err(bad());
        }
        let host = match url.host().ok_or_else(bad)? {
            url::Host::Ipv6(a) => a.to_string(),
            h => h.to_string(),
        };
        let path = percent_encoding::percent_decode_str(url.path())
            .decode_utf8()
            .map_err(|_| bad())?
            .into_owned();
        if host.is_empty() || path.len() < 2 {
            return Err(bad());
        }
        Ok(SshTarget {
            user: url.username().to_owned(),
            host,
            port: url.port(),
            path,
        })
    }

    /// rsync's `user@host:/path` (an IPv6 host in brackets).
    fn rsync(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.user.as_str() {
            "" => format!("{host}:{}", self.path),
            user => format!("{user}@{host}:{}", self.path),
        }
    }
}

/// The host of `ssh://user@host[:port]/path`, without brackets around an IPv6 address.
pub(crate) fn ssh_url_host(url: &str) -> Result<String, PlanError> {
    SshTarget::parse(url).map(|t| t.host)
}

/// `ssh://user@host[:port]/path` -> rsync's `user@host:/path`.
fn ssh_url_to_rsync(url: &str) -> Result<String, PlanError> {
    SshTarget::parse(url).map(|t| t.rsync())
}

fn ssh_url_port(url: &str) -> Option<u16> {
    SshTarget::parse(url).ok()?.port
}

/// The sha256 recorded in the manifest for a change (None for secrets and non-files).
pub fn change_digest(c: &Change) -> Result<Option<String>, PlanError> {
    if c.secret {
        return Ok(None);
    }
    match &c.op {
        Op::WriteFile {
            content: Content::Bytes(b),
            ..
        } => Ok(Some(sha256_hex(b))),
        Op::WriteFile {
            content: Content::HostFile(path),
            ..
        } => crate::io::hash::sha256_file(path)
            .map(Some)
            .map_err(|source| PlanError::Read {
                path: path.display().to_string(),
                source,
            }),
        _ => Ok(None),
    }
}

/// The config of a `--board` build: one agent node named after the board, with `user` as
/// admin logging in with `keys`. Built as a TOML value, so whatever the keys' comments hold is
/// quoted by the TOML writer, and checked like a cluster.toml.
pub fn default_config(
    board: &Board,
    user: &str,
    keys: Vec<String>,
) -> Result<ClusterConfig, config::ConfigError> {
    let table = |entries: Vec<(&str, toml::Value)>| -> toml::Value {
        toml::Value::Table(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    };
    let text = |s: &str| toml::Value::String(s.to_string());
    let doc = table(vec![
        ("cluster", table(vec![("name", text(&board.id))])),
        (
            "admin",
            table(vec![
                ("user", text(user)),
                (
                    "ssh_authorized_keys",
                    toml::Value::Array(keys.iter().map(|k| text(k.trim())).collect()),
                ),
            ]),
        ),
        (
            "nodes",
            toml::Value::Array(vec![table(vec![
                ("name", text(&board.id)),
                ("board", text(&board.id)),
                ("role", text("agent")),
            ])]),
        ),
    ]);
    let path = Path::new("(defaults)");
    let toml = toml::to_string(&doc).map_err(|e| config::ConfigError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    config::parse(&toml, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nut_password_must_survive_nuts_parser() {
        let p = Path::new("secrets/nut-password");
        assert!(check_nut_password(br#"pa ss#wo"rd\x"#, p).is_ok());
        let e = check_nut_password("caf\u{e9}".as_bytes(), p).unwrap_err();
        assert!(e.to_string().contains("printable ASCII"), "{e}");
        assert!(check_nut_password(b"tab\tin", p).is_err());
        assert!(check_nut_password(b"\xff", p).is_err());
    }

    #[test]
    fn hosts_name_replaces_or_inserts() {
        assert_eq!(
            set_hosts_name(
                "127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n::1 localhost\n",
                "pi4-a"
            ),
            "127.0.0.1\tlocalhost\n127.0.1.1\tpi4-a\n::1 localhost\n"
        );
        assert_eq!(
            set_hosts_name("127.0.0.1 localhost\n::1 localhost\n", "n"),
            "127.0.0.1 localhost\n127.0.1.1\tn\n::1 localhost\n"
        );
        assert_eq!(set_hosts_name("", "n"), "127.0.1.1\tn\n");
    }

    #[test]
    fn backup_urls() {
        assert_eq!(
            ssh_url_to_rsync("ssh://backup@nas.lan/volume1/backups").unwrap(),
            "backup@nas.lan:/volume1/backups"
        );
        assert_eq!(
            ssh_url_to_rsync("ssh://backup@127.0.0.1:2222/srv/b").unwrap(),
            "backup@127.0.0.1:/srv/b"
        );
        assert_eq!(
            ssh_url_port("ssh://backup@127.0.0.1:2222/srv/b"),
            Some(2222)
        );
        assert!(ssh_url_to_rsync("ssh://nas").is_err());
        assert_eq!(
            ssh_url_host("ssh://backup@NAS.lan:2222/srv/b").unwrap(),
            "NAS.lan"
        );
        assert_eq!(
            ssh_url_host("ssh://backup@[fd00::1]:2222/srv/b").unwrap(),
            "fd00::1"
        );
        assert_eq!(
            ssh_url_to_rsync("ssh://backup@[fd00::1]:2222/srv/b").unwrap(),
            "backup@[fd00::1]:/srv/b"
        );
        // The URL's escapes are the URL's: rsync gets the NAS's own path.
        assert_eq!(
            ssh_url_to_rsync("ssh://backup@nas.lan/volume1/my%20backups").unwrap(),
            "backup@nas.lan:/volume1/my backups"
        );
        assert!(ssh_url_to_rsync("https://nas.lan/x").is_err());
        assert!(ssh_url_to_rsync("ssh://backup@nas.lan/").is_err());
    }

    #[test]
    fn pinned_host_keys_are_written_for_the_name_ssh_looks_up() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf";
        let cfg = |target: &str, keys: &str| {
            config::parse(
                &format!(
                    "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\n\
                     ssh_authorized_keys = [\"{key} me\"]\n[backup]\ntarget = \"{target}\"\n{keys}"
                ),
                Path::new("cluster.toml"),
            )
            .unwrap()
        };
        let text = |c: &ClusterConfig| {
            String::from_utf8(backup_known_hosts(c, Path::new(".")).unwrap().unwrap()).unwrap()
        };
        let pinned = format!("host_keys = [\"{key} nas\"]\n");
        let c = cfg("ssh://b@NAS.lan/srv", &pinned);
        assert!(
            text(&c).ends_with(&format!("\nnas.lan {key}\n")),
            "{}",
            text(&c)
        );
        assert!(backup_pin_warning(&c).is_none());
        let c = cfg("ssh://b@10.0.0.2:2222/srv", &pinned);
        assert!(text(&c).contains(&format!("\n[10.0.0.2]:2222 {key}\n")));
        let c = cfg("ssh://b@nas.lan/srv", "");
        assert_eq!(backup_known_hosts(&c, Path::new(".")).unwrap(), None);
        let w = backup_pin_warning(&c).unwrap();
        assert!(w.starts_with("warning: ") && !w.contains('\n'), "{w}");
    }

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://10.147.17.10:6443").as_deref(),
            Some("10.147.17.10")
        );
        assert_eq!(
            url_host("https://[fd00::1]:6443/x").as_deref(),
            Some("fd00::1")
        );
        assert_eq!(
            url_host("https://master.lan").as_deref(),
            Some("master.lan")
        );
        assert_eq!(url_host("https://u@[::1]").as_deref(), Some("::1"));
        assert_eq!(url_host("https://"), None);
        assert_eq!(url_host("10.0.0.1:6443"), None);
    }
}
