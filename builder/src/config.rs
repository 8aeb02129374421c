//! `cluster.toml`: the operator's description of the cluster. Validated with errors that name
//! the file, the line and what is wrong. Paths in it are relative to the file.

use crate::board;
use imagegen_firstboot::names;
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: Cluster,
    pub admin: Admin,
    #[serde(default)]
    pub k3s: Option<K3s>,
    #[serde(default)]
    pub zerotier: Option<ZeroTier>,
    /// A WireGuard mesh between the nodes (`crate::vpn::wireguard`).
    #[serde(default)]
    pub wireguard: Option<WireGuard>,
    #[serde(default)]
    pub ups: Option<Ups>,
    #[serde(default)]
    pub backup: Option<Backup>,
    #[serde(default)]
    pub hardening: Hardening,
    /// Cluster add-ons k3s deploys itself (`crate::addons`).
    #[serde(default)]
    pub addons: Option<crate::addons::Addons>,
    /// Network settings of every node; a node's own `[nodes.network]` overrides them key by key.
    #[serde(default)]
    pub network: Option<Network>,
    /// Files of the operator's own, on every node (`[[files]]`).
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// Scripts the agent runs once on each node, after its own steps.
    #[serde(default)]
    pub firstboot: Option<Firstboot>,
    /// Packages the agent installs on every node: staged `.deb`s, and names from the archive.
    #[serde(default)]
    pub packages: Option<Packages>,
    #[serde(default)]
    pub nodes: Vec<Node>,
}

/// `[[files]]` / `[[nodes.files]]`: a file from the operator's machine, placed in the image.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// On the operator's machine, relative to the config file.
    pub source: Spanned<PathBuf>,
    /// Absolute path on the node.
    pub dest: Spanned<String>,
    /// Octal permission bits ("0644", the default).
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    /// "user:group" (or "user", then the user's primary group), names of the image's
    /// /etc/passwd and /etc/group; root:root by default.
    #[serde(default)]
    pub owner: Option<Spanned<String>>,
}

/// `[firstboot]`: the operator's own first-boot scripts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firstboot {
    /// Run in this order, once each, after the agent's own steps.
    #[serde(default)]
    pub scripts: Vec<Spanned<PathBuf>>,
    /// Seconds each script may run before it is killed (default 600).
    #[serde(default)]
    pub timeout_secs: Option<Spanned<u64>>,
}

/// `[packages]`: software the operator adds to every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// `.deb` files (relative to the config file) staged in the image and installed offline at
    /// first boot, in this order; each of the board's architecture or "all".
    #[serde(default)]
    pub debs: Vec<Spanned<PathBuf>>,
    /// Names from the image's own APT sources, installed once the node reaches them.
    #[serde(default)]
    pub apt: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: Spanned<String>,
    /// A zone of the image's /usr/share/zoneinfo ("Europe/Berlin").
    #[serde(default)]
    pub timezone: Option<Spanned<String>>,
    /// A locale of the image's /usr/share/i18n/SUPPORTED ("en_US.UTF-8"), the nodes' LANG.
    #[serde(default)]
    pub locale: Option<Spanned<String>>,
    /// The console keyboard layout, XKBLAYOUT of /etc/default/keyboard ("de", "us").
    #[serde(default)]
    pub keymap: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub user: Spanned<String>,
    pub ssh_authorized_keys: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3s {
    /// The registration address. Optional for a new cluster: the first server's `address`.
    #[serde(default)]
    pub server_url: Option<Spanned<String>>,
    /// The token of an existing cluster to join; without it imagegen starts a new cluster and
    /// mints its token (`crate::cluster`).
    #[serde(default)]
    pub token_file: Option<Spanned<PathBuf>>,
    /// k3s release to stage in the image (e.g. "v1.31.4+k3s1").
    #[serde(default)]
    pub version: Option<String>,
    /// A k3s binary to stage instead of downloading one.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// The server that starts a new cluster (`cluster-init`); default the first server node.
    /// Naming another one is how the first is replaced once the cluster runs.
    #[serde(default)]
    pub init_server: Option<Spanned<String>>,
}

/// A path, or a list of paths: `package = "a.deb"` reads as `package = ["a.deb"]`. (serde's
/// untagged enums buffer the value and lose toml's spans, hence a visitor.)
#[derive(Debug, Clone, Default)]
pub struct Paths(pub Vec<PathBuf>);

impl<'de> Deserialize<'de> for Paths {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Paths;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path or a list of paths")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Paths, E> {
                Ok(Paths(vec![PathBuf::from(s)]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Paths, A::Error> {
                let mut v = Vec::new();
                while let Some(p) = seq.next_element::<PathBuf>()? {
                    v.push(p);
                }
                Ok(Paths(v))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroTier {
    pub network_id: Spanned<String>,
    /// zerotier-one .debs, one per architecture of the cluster's boards (a path, or a list of
    /// them for a mixed cluster), staged so first boot installs it without the network (else
    /// the agent expects zerotier-one to be present). Each node gets the one for its board.
    #[serde(default)]
    pub package: Option<Spanned<Paths>>,
    /// A ZeroTier Central API token (a file readable only by the operator): with it, `build`
    /// authorizes each node's member ahead of its first boot (`crate::vpn::zerotier::central`).
    #[serde(default)]
    pub api_token_file: Option<Spanned<PathBuf>>,
    /// The member API's base, ZeroTier Central's by default; a self-hosted controller behind
    /// the same API (ztnet and the like) is given here.
    #[serde(default)]
    pub api_url: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    /// The mesh's IPv4 network, "10.99.0.0/24": every node and client has an address in it.
    pub network: Spanned<String>,
    /// The UDP port every node listens on.
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
    /// The operator's own machines (`imagegen vpn-client`), peers of every node: their keys are
    /// made at build time so the nodes know them.
    #[serde(default)]
    pub clients: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ups {
    /// The node the UPS is plugged into (it runs NUT upsd).
    #[serde(default)]
    pub server: Option<Spanned<String>>,
    /// A NUT server outside the cluster.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_nut_port")]
    pub port: u16,
    pub ups: String,
    #[serde(default)]
    pub driver: Option<String>,
    pub user: String,
    pub password_file: PathBuf,
}

fn default_nut_port() -> u16 {
    3493
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    pub target: Spanned<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    /// systemd `OnCalendar=` expression.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    /// The NAS's SSH host public keys (`ssh-ed25519 AAAA...`, as in its
    /// `/etc/ssh/ssh_host_*_key.pub`), pinned for the target's host.
    #[serde(default)]
    pub host_keys: Vec<Spanned<String>>,
    /// A known_hosts file that lists the NAS as the nodes reach it (e.g. `ssh-keyscan` output).
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
}

impl Backup {
    /// Whether the NAS's host key is pinned; if not, nodes trust the first key they see.
    pub fn pins_host_key(&self) -> bool {
        !self.host_keys.is_empty() || self.known_hosts_file.is_some()
    }
}

/// Each hardening measure can be switched off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hardening {
    pub sshd: bool,
    pub sysctl: bool,
    pub firewall: bool,
    pub unattended_upgrades: bool,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            sshd: true,
            sysctl: true,
            firewall: true,
            unattended_upgrades: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: Spanned<String>,
    pub board: Spanned<String>,
    pub role: Role,
    /// The address other nodes and the operator reach it at (IP or DNS name), when known.
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    /// The node's address on the cluster's VPN (with `[wireguard]`: derived in node order
    /// from its network when not given).
    #[serde(default)]
    pub vpn_address: Option<Spanned<String>>,
    /// `host:port` the other nodes reach its WireGuard port at; none behind NAT.
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    #[serde(default)]
    pub network: Option<Network>,
    /// This node's own files (`[[nodes.files]]`), besides the cluster's `[[files]]`.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

/// `[network]` / `[nodes.network]`: a static address instead of DHCP, and Wi-Fi.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The interface the address is for; default: any Ethernet interface.
    #[serde(default)]
    pub interface: Option<Spanned<String>>,
    /// IPv4 address with prefix length, "192.168.1.21/24" (per node).
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    #[serde(default)]
    pub gateway: Option<Spanned<String>>,
    /// IPv6 address with prefix length (per node).
    #[serde(default)]
    pub address6: Option<Spanned<String>>,
    #[serde(default)]
    pub gateway6: Option<Spanned<String>>,
    #[serde(default)]
    pub dns: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub wifi: Option<Wifi>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    pub ssid: Spanned<String>,
    /// A file holding the WPA passphrase (8 to 63 characters); none for an open network.
    #[serde(default)]
    pub psk_file: Option<Spanned<PathBuf>>,
    /// The regulatory domain, ISO 3166 alpha-2 ("DE").
    pub country: Spanned<String>,
    #[serde(default)]
    pub hidden: bool,
}

impl Network {
    /// `node`'s settings over `cluster`'s, key by key.
    pub fn merged(cluster: Option<&Network>, node: Option<&Network>) -> Option<Network> {
        let (c, n) = match (cluster, node) {
            (None, None) => return None,
            (Some(c), None) => return Some(c.clone()),
            (None, Some(n)) => return Some(n.clone()),
            (Some(c), Some(n)) => (c, n),
        };
        Some(Network {
            interface: n.interface.clone().or_else(|| c.interface.clone()),
            address: n.address.clone().or_else(|| c.address.clone()),
            gateway: n.gateway.clone().or_else(|| c.gateway.clone()),
            address6: n.address6.clone().or_else(|| c.address6.clone()),
            gateway6: n.gateway6.clone().or_else(|| c.gateway6.clone()),
            dns: n.dns.clone().or_else(|| c.dns.clone()),
            wifi: n.wifi.clone().or_else(|| c.wifi.clone()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    At {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
    /// Several problems, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

/// A parsed and validated config, with the directory its relative paths start from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: ClusterConfig,
    pub path: PathBuf,
    pub dir: PathBuf,
}

impl Loaded {
    /// A path from the config, relative to the config file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.dir.join(p)
    }

    pub fn node(&self, name: &str) -> Result<&Node, ConfigError> {
        self.config
            .nodes
            .iter()
            .find(|n| n.name.get_ref() == name)
            .ok_or_else(|| ConfigError::File {
                path: self.path.display().to_string(),
                message: format!(
                    "no node named {name:?}; nodes: {}",
                    self.config
                        .nodes
                        .iter()
                        .map(|n| n.name.get_ref().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let config = parse(&text, path)?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        dir,
    })
}

/// Parses and validates. `path` is only used in messages. Every problem the values have is
/// reported at once.
pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
    let config = parse_unvalidated(text, path)?;
    let mut errors: Vec<ConfigError> = validate(&config)
        .into_iter()
        .map(|(span, message)| at(text, path, span, message))
        .collect();
    match errors.len() {
        0 => Ok(config),
        1 => Err(errors.remove(0)),
        _ => Err(ConfigError::Many(errors)),
    }
}

/// The TOML read into the schema, not yet checked by [`validate`].
pub fn parse_unvalidated(text: &str, path: &Path) -> Result<ClusterConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        match e.span() {
            Some(span) => at(text, path, span, message),
            None => ConfigError::File {
                path: path.display().to_string(),
                message,
            },
        }
    })
}

/// `message` at the line and column of `span` in `text`.
pub fn at(text: &str, path: &Path, span: Range<usize>, message: String) -> ConfigError {
    let (line, column) = line_col(text, span.start);
    ConfigError::At {
        path: path.display().to_string(),
        line,
        column,
        message,
    }
}

pub type Invalid = (Range<usize>, String);

/// Every problem of the values, each with where it is.
pub fn validate(c: &ClusterConfig) -> Vec<Invalid> {
    let mut errs = Vec::new();
    let mut add = |r: Result<(), Invalid>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };
    add(check_name(&c.cluster.name, "cluster name"));
    for (what, value, problem) in [
        (
            "timezone",
            &c.cluster.timezone,
            crate::check::locale::timezone_problem as fn(&str) -> Option<String>,
        ),
        (
            "locale",
            &c.cluster.locale,
            crate::check::locale::locale_problem,
        ),
        (
            "keymap",
            &c.cluster.keymap,
            crate::check::locale::keymap_problem,
        ),
    ] {
        if let Some(v) = value
            && let Some(why) = problem(v.get_ref())
        {
            add(Err((
                v.span(),
                format!("cluster {what} {:?}: {why}", v.get_ref()),
            )));
        }
    }
    let user = &c.admin.user;
    if !names::is_user_name(user.get_ref()) {
        add(Err((
            user.span(),
            format!(
                "admin user {:?} is not a valid user name: {}",
                user.get_ref(),
                names::USER_NAME_RULE
            ),
        )));
    } else if matches!(user.get_ref().as_str(), "root" | "pi" | "ubuntu" | "debian") {
        add(Err((
            user.span(),
            format!(
                "admin user {:?} clashes with a vendor default account; pick another name",
                user.get_ref()
            ),
        )));
    }
    let keys = &c.admin.ssh_authorized_keys;
    if keys.get_ref().is_empty() {
        add(Err((
            keys.span(),
            "ssh_authorized_keys is empty: nobody could log in to the nodes (password logins \
             are off); give your public key, the line of ~/.ssh/id_ed25519.pub"
                .into(),
        )));
    }
    for key in keys.get_ref() {
        add(check_ssh_key(key));
    }
    if let Some(k) = &c.k3s {
        if let Some(u) = &k.server_url {
            let url = u.get_ref();
            if !url.starts_with("https://") {
                add(Err((
                    u.span(),
                    format!(
                        "k3s server_url {url:?} must start with https:// (k3s serves TLS on 6443)"
                    ),
                )));
            }
        }
        if let Err(why) = crate::cluster::Bootstrap::of(c) {
            let span = k
                .init_server
                .as_ref()
                .map(Spanned::span)
                .or(k.token_file.as_ref().map(Spanned::span))
                .or(k.server_url.as_ref().map(Spanned::span))
                .unwrap_or(0..0);
            add(Err((span, why)));
        }
    }
    if let Some(z) = &c.zerotier {
        let id = z.network_id.get_ref();
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            add(Err((
                z.network_id.span(),
                format!("zerotier network_id {id:?} must be 16 hex digits"),
            )));
        }
        for e in crate::vpn::zerotier::central::problems(c) {
            add(Err(e));
        }
    }
    for e in crate::vpn::wireguard::problems(c) {
        add(Err(e));
    }
    let mut seen: Vec<&str> = Vec::new();
    for n in &c.nodes {
        add(check_name(&n.name, "node name"));
        if seen.contains(&n.name.get_ref().as_str()) {
            add(Err((
                n.name.span(),
                format!("node {:?} is defined twice", n.name.get_ref()),
            )));
        }
        seen.push(n.name.get_ref());
        if let Err(e) = board::get(n.board.get_ref()) {
            add(Err((n.board.span(), e.to_string())));
        }
        if let Some(a) = &n.address {
            let v = a.get_ref();
            if v.parse::<std::net::IpAddr>().is_err() && !names::is_hostname(v) {
                add(Err((
                    a.span(),
                    format!("node address {v:?} is neither an IP address nor a host name"),
                )));
            }
        }
    }
    if let Some(n) = &c.network {
        for a in [&n.address, &n.address6].into_iter().flatten() {
            add(Err((
                a.span(),
                "a static address is one node's: give it in that node's [nodes.network]".into(),
            )));
        }
    }
    // The cluster's settings are checked within each node's; each problem is said once.
    let mut net_errs: Vec<Invalid> = Vec::new();
    for n in &c.nodes {
        if let Some(net) = Network::merged(c.network.as_ref(), n.network.as_ref()) {
            for e in crate::check::network::problems(&net) {
                if !net_errs.contains(&e) {
                    net_errs.push(e);
                }
            }
        }
    }
    for e in net_errs {
        add(Err(e));
    }
    let node_files = c.nodes.iter().flat_map(|n| &n.files);
    for f in c.files.iter().chain(node_files) {
        for e in crate::check::files::problems(f) {
            add(Err(e));
        }
    }
    if let Some(fb) = &c.firstboot {
        for e in crate::check::files::script_problems(fb) {
            add(Err(e));
        }
    }
    if let Some(pk) = &c.packages {
        for e in crate::check::packages::problems(pk) {
            add(Err(e));
        }
    }
    if let Some(u) = &c.ups {
        match (&u.server, &u.host) {
            (Some(s), None) => {
                if !seen.contains(&s.get_ref().as_str()) {
                    add(Err((
                        s.span(),
                        format!(
                            "ups server {:?} is not a node of this cluster (or give host = \"ADDRESS\" for a NUT server outside it)",
                            s.get_ref()
                        ),
                    )));
                }
            }
            (None, Some(_)) => {}
            (Some(s), Some(_)) => {
                add(Err((
                    s.span(),
                    "give either ups.server or ups.host, not both".into(),
                )));
            }
            (None, None) => {
                add(Err((
                    0..0,
                    "[ups] needs server = \"NODE\" (the node the UPS is plugged into) or host = \"ADDRESS\"".into(),
                )));
            }
        }
    }
    if let Some(b) = &c.backup {
        let t = b.target.get_ref();
        if !t.starts_with("ssh://") {
            add(Err((
                b.target.span(),
                format!("backup target {t:?} must be ssh://USER@HOST/PATH"),
            )));
        }
        for key in &b.host_keys {
            add(check_host_key(key));
        }
        if let Some(s) = &b.schedule
            && let Some(why) = crate::check::calendar::problem(s.get_ref())
        {
            add(Err((
                s.span(),
                format!("backup schedule {:?}: {why}", s.get_ref()),
            )));
        }
    }
    errs
}

/// A `[backup] host_keys` entry must be a public key, checked through to the key type its
/// base64 carries: a key cut short would pin nothing the NAS can match, and every backup would
/// be refused on the nodes.
fn check_host_key(key: &Spanned<String>) -> Result<(), Invalid> {
    use imagegen_firstboot::known_hosts::PublicKey;
    let k = key.get_ref().trim();
    let err = |m: String| {
        Err((
            key.span(),
            format!(
                "backup host_keys: {m} (give the NAS's public host key, \"ssh-ed25519 AAAA...\", \
                 as in its /etc/ssh/ssh_host_ed25519_key.pub)"
            ),
        ))
    };
    if k.contains("PRIVATE KEY") {
        return err("this is a private key".into());
    }
    let f: Vec<&str> = k.split_whitespace().collect();
    match f.as_slice() {
        [kind, b64, ..] => match PublicKey::parse(kind, b64) {
            Ok(_) => Ok(()),
            Err(_) if f.len() >= 3 && PublicKey::parse(f[1], f[2]).is_ok() => err(format!(
                "{:?} in front of the key looks like a known_hosts line; give the key alone, or \
                 put such lines in known_hosts_file",
                f[0]
            )),
            Err(why) => err(why),
        },
        _ => err("not an SSH public key line".into()),
    }
}

fn check_name(name: &Spanned<String>, what: &str) -> Result<(), Invalid> {
    let n = name.get_ref();
    if names::is_node_name(n) {
        Ok(())
    } else {
        Err((
            name.span(),
            format!("{what} {n:?} is not valid: {}", names::NODE_NAME_RULE),
        ))
    }
}

/// The key `imagegen init` writes into the example, for the operator to replace.
pub const PLACEHOLDER_KEY: &str =
    "AAAAC3NzaC1lZDI1NTE5AAAAIDummyReplaceMeWithYourOwnPublicKey00000";

/// An `ssh_authorized_keys` entry must be a whole public key: its base64 is decoded and read
/// through to the key type it carries (`known_hosts::PublicKey::parse`), since sshd ignores a
/// line it cannot use and the operator would be locked out.
fn check_ssh_key(key: &Spanned<String>) -> Result<(), Invalid> {
    let line = key.get_ref();
    let err = |m: String| Err((key.span(), format!("ssh_authorized_keys: {m}")));
    if let Some(m) = ssh_key_problem(line) {
        return err(m.to_string());
    }
    let mut f = line.split_whitespace();
    let (kind, blob) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
    if blob == PLACEHOLDER_KEY {
        return err(
            "this is the placeholder key `imagegen init` writes; put your own public key \
             here (the line of ~/.ssh/id_ed25519.pub)"
                .into(),
        );
    }
    match imagegen_firstboot::known_hosts::PublicKey::parse(kind, blob) {
        Ok(_) => Ok(()),
        Err(why) => err(format!("not a valid OpenSSH public key: {why}")),
    }
}

/// A light check of one authorized_keys line that catches pasting the private key or a
/// truncated line; sshd does the rest. `None` when it looks like a key.
pub fn ssh_key_problem(line: &str) -> Option<&'static str> {
    let k = line.trim();
    if k.contains("PRIVATE KEY") {
        return Some("this is a private key; give the public key (the .pub file's line)");
    }
    const NOT_A_KEY: &str = "not an SSH public key line (expected \"ssh-ed25519 AAAA... comment\")";
    let mut parts = k.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Some(NOT_A_KEY);
    };
    if !is_key_type(kind) || !blob.starts_with("AAAA") || k.contains('\n') {
        return Some(NOT_A_KEY);
    }
    None
}

/// The key type names of OpenSSH public keys (ssh-ed25519, ecdsa-sha2-nistp256,
/// sk-ssh-ed25519@openssh.com, ...).
pub fn is_key_type(kind: &str) -> bool {
    kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-")
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The commented example `imagegen init` writes.
pub const EXAMPLE: &str = include_str!("config_example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    /// `ssh-keygen -t ed25519`.
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf me";

    fn err(text: &str) -> String {
        parse(text, Path::new("cluster.toml"))
            .unwrap_err()
            .to_string()
    }

    /// The example is valid but for the key the operator must put in.
    #[test]
    fn the_example_is_valid_once_its_key_is_replaced() {
        let e = err(EXAMPLE);
        assert!(
            e.starts_with("cluster.toml:16:") && e.contains("placeholder") && !e.contains('\n'),
            "{e}"
        );
        let c = parse(
            &EXAMPLE.replace(PLACEHOLDER_KEY, KEY.split(' ').nth(1).unwrap()),
            Path::new("cluster.toml"),
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 3);
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let e = err("[cluster]\nname = \"lab\"\n[admin\n");
        assert!(e.starts_with("cluster.toml:3:"), "{e}");
    }

    #[test]
    fn backup_host_keys_are_checked() {
        let base = &format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n[backup]\ntarget = \"ssh://b@nas/srv\"\n"
        );
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf";
        let c = parse(
            &format!("{base}host_keys = [\"{key} nas\"]\n"),
            Path::new("cluster.toml"),
        )
        .unwrap();
        assert!(c.backup.unwrap().pins_host_key());
        let with_host = format!("nas {key}");
        for bad in [&key[..50], "ssh-ed25519", "", with_host.as_str()] {
            let e = err(&format!("{base}host_keys = [\"{bad}\"]\n"));
            assert!(
                e.starts_with("cluster.toml:8:") && e.contains("backup host_keys"),
                "{bad}: {e}"
            );
        }
        let e = err(&format!("{base}host_keys = [\"nas {key}\"]\n"));
        assert!(e.contains("known_hosts_file"), "{e}");
    }

    #[test]
    fn wireguard_is_checked_at_the_line() {
        let base = &format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n"
        );
        let node = |extra: &str| {
            format!("[[nodes]]\nname = \"a\"\nboard = \"rpi4\"\nrole = \"agent\"\n{extra}\n")
        };
        let cfg = |wg: &str, a: &str, b: &str| {
            format!(
                "{base}[wireguard]\n{wg}\n{}{}",
                node(a),
                node(b).replace("\"a\"", "\"b\"")
            )
        };
        let ok = cfg(
            "network = \"10.9.0.0/24\"",
            "endpoint = \"1.2.3.4:51820\"",
            "",
        );
        let c = parse(&ok, Path::new("cluster.toml")).unwrap();
        let m = crate::vpn::wireguard::Mesh::of(&c).unwrap().unwrap();
        assert_eq!(m.port, 51820);
        let addrs: Vec<String> = m.members.iter().map(|m| m.address.to_string()).collect();
        assert_eq!(addrs, ["10.9.0.1", "10.9.0.2"]);
        // A given address is skipped by the derived ones.
        let c = parse(
            &cfg(
                "network = \"10.9.0.0/24\"",
                "endpoint = \"h.example:1\"",
                "vpn_address = \"10.9.0.1\"",
            ),
            Path::new("cluster.toml"),
        )
        .unwrap();
        let m = crate::vpn::wireguard::Mesh::of(&c).unwrap().unwrap();
        assert_eq!(m.members[0].address.to_string(), "10.9.0.2");
        for (wg, a, b, line, what) in [
            (
                "network = \"10.9.0.0/33\"",
                "endpoint = \"h:1\"",
                "",
                7,
                "IPv4 network",
            ),
            (
                "network = \"10.9.0.0/24\"\nport = 70000",
                "endpoint = \"h:1\"",
                "",
                8,
                "UDP port",
            ),
            (
                "network = \"10.9.0.0/24\"",
                "endpoint = \"h\"",
                "",
                12,
                "HOST:PORT",
            ),
            (
                "network = \"10.9.0.0/24\"",
                "",
                "",
                7,
                "no node has an endpoint",
            ),
            (
                "network = \"10.9.0.0/24\"",
                "endpoint = \"h:1\"\nvpn_address = \"10.8.0.1\"",
                "",
                13,
                "not a host address",
            ),
            (
                "network = \"10.9.0.0/24\"",
                "endpoint = \"h:1\"\nvpn_address = \"10.9.0.5\"",
                "vpn_address = \"10.9.0.5\"",
                18,
                "two nodes",
            ),
            (
                "network = \"10.9.0.0/30\"\nclients = [\"l\"]",
                "endpoint = \"h:1\"",
                "",
                7,
                "too few",
            ),
        ] {
            let e = err(&cfg(wg, a, b));
            assert!(
                e.starts_with(&format!("cluster.toml:{line}:")) && e.contains(what),
                "{wg} {a} {b}: {e}"
            );
        }
        let e = err(&format!(
            "{base}[zerotier]\nnetwork_id = \"8056c2e21c000001\"\n[wireguard]\nnetwork = \"10.9.0.0/24\"\n"
        ));
        assert!(
            e.starts_with("cluster.toml:7:") && e.contains("one VPN"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_carry_the_line() {
        let base = &format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n"
        );
        let e = err(&format!(
            "{base}[[nodes]]\nname = \"a\"\nboard = \"rpi9\"\nrole = \"agent\"\n"
        ));
        assert!(e.starts_with("cluster.toml:8:"), "{e}");
        assert!(e.contains("unknown board"), "{e}");
        let e = err(&format!(
            "{base}[[nodes]]\nname = \"a\"\nboard = \"rpi4\"\nrole = \"agent\"\n[[nodes]]\nname = \"a\"\nboard = \"rpi4\"\nrole = \"agent\"\n"
        ));
        assert!(
            e.starts_with("cluster.toml:11:") && e.contains("twice"),
            "{e}"
        );
        let e = err(&format!("{base}[zerotier]\nnetwork_id = \"xyz\"\n"));
        assert!(
            e.starts_with("cluster.toml:7:") && e.contains("16 hex"),
            "{e}"
        );
        let e = err(&base.replace(KEY, "-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(
            e.starts_with("cluster.toml:5:") && e.contains("private key"),
            "{e}"
        );
        let e = err(&format!(
            "{base}[[nodes]]\nname = \"a\"\nboard = \"rpi4\"\nrole = \"boss\"\n"
        ));
        assert!(e.starts_with("cluster.toml:9:"), "{e}");
    }
}
