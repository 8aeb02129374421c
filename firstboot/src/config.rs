//! The node config schema: `/etc/imagegen/node.toml`.
//!
//! The builder writes this file with these same types and the agent reads it, so there is exactly one
//! definition. Every table is optional except `[node]`; unknown keys are refused so a typo never
//! silently turns a feature off.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the agent finds its config, relative to `--root`.
pub const NODE_CONFIG_PATH: &str = "/etc/imagegen/node.toml";

/// A bad `node.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// TOML syntax or schema error; the message carries line and column.
    #[error("node config: {0}")]
    Parse(String),
    /// Parsed, but the values do not make a usable node.
    #[error("node config: {0}")]
    Invalid(String),
    #[error("node config: cannot serialize: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// The whole `node.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s: Option<K3sSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zerotier: Option<ZeroTierSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireGuardSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ups: Option<UpsSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSection>,
    #[serde(default)]
    pub paths: PathsSection,
    #[serde(default)]
    pub commands: CommandsSection,
    #[serde(default)]
    pub agent: AgentSection,
    /// The operator's own scripts; absent in node.toml files written before it existed.
    #[serde(default, skip_serializing_if = "FirstbootSection::is_empty")]
    pub firstboot: FirstbootSection,
    /// The operator's packages; absent in node.toml files written before it existed.
    #[serde(default, skip_serializing_if = "PackagesSection::is_empty")]
    pub packages: PackagesSection,
}

/// `[packages]`: staged `.deb`s installed offline, and archive packages installed once the
/// node reaches its APT sources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesSection {
    /// Absolute paths on the node, staged by the builder under [`DEBS_DIR`]; installed with
    /// one `dpkg -i`, so they may depend on each other.
    #[serde(default)]
    pub debs: Vec<PathBuf>,
    /// Package names for `apt-get install`.
    #[serde(default)]
    pub apt: Vec<String>,
}

impl PackagesSection {
    fn is_empty(&self) -> bool {
        self.debs.is_empty() && self.apt.is_empty()
    }
}

/// Where the builder stages `[packages] debs`, as `NN-package.deb`.
pub const DEBS_DIR: &str = "/var/cache/imagegen/debs";

/// `[firstboot]`: the operator's scripts, run once each, in order, after the agent's own steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstbootSection {
    /// Absolute paths on the node, staged by the builder.
    #[serde(default)]
    pub scripts: Vec<PathBuf>,
    /// Seconds each script may run before it and what it started are killed.
    #[serde(default = "default_script_timeout")]
    pub timeout_secs: u64,
}

impl Default for FirstbootSection {
    fn default() -> Self {
        FirstbootSection {
            scripts: Vec::new(),
            timeout_secs: default_script_timeout(),
        }
    }
}

impl FirstbootSection {
    fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }
}

/// Where the builder stages `[firstboot] scripts`, as `NN-name`.
pub const SCRIPTS_DIR: &str = "/usr/local/lib/imagegen/scripts";
pub const DEFAULT_SCRIPT_TIMEOUT_SECS: u64 = 120;
/// A script runs inside `run`, which systemd ends after `TimeoutStartSec=300`: a longer limit
/// could never be honoured.
pub const MAX_SCRIPT_TIMEOUT_SECS: u64 = 240;

fn default_script_timeout() -> u64 {
    DEFAULT_SCRIPT_TIMEOUT_SECS
}

/// `[node]`: who this node is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Host and k3s node name.
    pub name: String,
    pub role: Role,
    /// Cluster name; goes into backup destinations.
    pub cluster: String,
    /// The first server of a new cluster (`cluster-init: true`, no `server_url`).
    #[serde(default)]
    pub cluster_init: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Server,
    Agent,
}

/// `[k3s]`: joining or starting the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sSection {
    /// `https://host:6443` of an existing server; absent only on the `cluster_init` server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// The join token file (0600), `K10<ca-sha256>::<credentials>` so the server can be verified.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Servers: extra names and addresses for the server certificate (`tls-san`), the
    /// registration address among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_san: Vec<String>,
    #[serde(default)]
    pub node_ip_from: NodeIpFrom,
    /// k3s version staged in the image, recorded in status for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Join with a token that carries no CA hash (the server cannot be verified; MITM-able).
    #[serde(default)]
    pub allow_unverified_token: bool,
    /// Servers: `etcd-snapshot-schedule-cron`, written when `[backup]` is present.
    #[serde(default = "default_etcd_schedule")]
    pub etcd_snapshot_schedule: String,
    /// Servers: `etcd-snapshot-retention`.
    #[serde(default = "default_etcd_retention")]
    pub etcd_snapshot_retention: u32,
}

fn default_token_file() -> PathBuf {
    PathBuf::from("/etc/rancher/k3s/token")
}
fn default_etcd_schedule() -> String {
    "0 */6 * * *".into()
}
fn default_etcd_retention() -> u32 {
    20
}

/// Which address k3s uses as `node-ip`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeIpFrom {
    /// The ZeroTier address, with `flannel-iface` on the ZeroTier interface.
    #[default]
    Zerotier,
    /// The `[wireguard]` address, with `flannel-iface` on its interface.
    Wireguard,
    /// The source address of the default route; k3s picks the interface.
    DefaultRoute,
}

/// `[wireguard]`: the mesh the cluster talks over. The builder writes the interface's config
/// (`/etc/wireguard/<interface>.conf`) and knows the address already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuardSection {
    pub interface: String,
    /// This node's IPv4 address on it.
    pub address: String,
    /// `wg-quick` comes with a staged `.deb` (wireguard-tools in `[packages] debs`, for a base
    /// such as Raspberry Pi OS Lite or Armbian that lacks it): the tunnel waits for the agent's
    /// debs step, after which the agent enables and starts `wg-quick@<interface>` itself (the
    /// package's maintainer scripts do not; see `crate::wireguard`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_debs: bool,
}

/// `[zerotier]`: the VPN the cluster talks over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroTierSection {
    /// 16 hex digits.
    pub network_id: String,
    /// Local service API.
    #[serde(default = "default_zt_api")]
    pub api_url: String,
    /// zerotier-one's home (identity, `authtoken.secret`, `networks.d/`).
    #[serde(default = "default_zt_home")]
    pub home: PathBuf,
    /// A `.deb` staged in the image, installed with dpkg when zerotier-one is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PathBuf>,
}

fn default_zt_api() -> String {
    "http://127.0.0.1:9993".into()
}
fn default_zt_home() -> PathBuf {
    PathBuf::from("/var/lib/zerotier-one")
}

/// `[ups]`: power-loss shutdown through NUT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsSection {
    /// Host running `upsd` (the UPS server's ZeroTier address; `127.0.0.1` on the UPS server).
    pub host: String,
    #[serde(default = "default_nut_port")]
    pub port: u16,
    /// UPS name in `ups.conf`.
    pub ups: String,
    /// The NUT user every node's `ups-watch` logs in as. On the UPS server it is written to
    /// `upsd.users` as `upsmon secondary`: it may watch the UPS and register as powered by it,
    /// never set FSD. The UPS server's own upsmon is the only primary, as
    /// [`PRIMARY_USER`](crate::ups::PRIMARY_USER) with a password made on that node.
    pub user: String,
    pub password_file: PathBuf,
    #[serde(default = "default_shutdown_command")]
    pub shutdown_command: Vec<String>,
    /// This node has the UPS cable and runs `upsd` + primary `upsmon`.
    #[serde(default)]
    pub primary: bool,
    /// Primary only: NUT driver for `ups.conf` (`usbhid-ups`, `riello_usb`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Primary only: driver `port` (`auto` for USB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_port: Option<String>,
    /// How often `ups-watch` asks for `ups.status`.
    #[serde(default = "default_poll_ms")]
    pub poll_interval_ms: u64,
    /// upsmon's DEADTIME: a UPS last seen on battery that gives no status for this long is
    /// taken as critical (upsmon(8), "DEAD UPSES"). NUT's default is 15 s.
    #[serde(default = "default_dead_time")]
    pub dead_time_secs: u64,
}

fn default_nut_port() -> u16 {
    3493
}
fn default_shutdown_command() -> Vec<String> {
    vec!["systemctl".into(), "poweroff".into()]
}
fn default_poll_ms() -> u64 {
    5000
}
fn default_dead_time() -> u64 {
    15
}

/// `[backup]`: snapshots sent to the NAS over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// `user@host:/dir`; each run lands in `/dir/<cluster>/<node>/<timestamp>/`.
    pub target: String,
    /// Absolute paths on the node.
    pub paths: Vec<PathBuf>,
    /// systemd `OnCalendar=` expression.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    pub ssh_key_file: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// A `known_hosts` file pinning the target's host key: ssh refuses any other key. Absent,
    /// the first key the target shows is trusted and recorded in
    /// [`TOFU_KNOWN_HOSTS`](crate::backup::TOFU_KNOWN_HOSTS), and any other key refused after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_file: Option<PathBuf>,
    /// ssh `ConnectTimeout`: seconds to connect and finish the SSH handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds without any data before a run gives up: rsync `--timeout`, and the limit on each
    /// ssh command the run sends (connect timeout added).
    #[serde(default = "default_io_timeout")]
    pub io_timeout_secs: u64,
}

fn default_schedule() -> String {
    "daily".into()
}
/// ssh's own default is the system's TCP timeout, minutes with retransmissions.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Five minutes without a byte: a NAS that busy is as good as gone.
pub const DEFAULT_IO_TIMEOUT_SECS: u64 = 300;
/// Upper bounds for the two, far below anything that could overflow deadline arithmetic, and
/// below the backup unit's `TimeoutStartSec=4h`.
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 600;
pub const MAX_IO_TIMEOUT_SECS: u64 = 3600;
fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_SECS
}
fn default_io_timeout() -> u64 {
    DEFAULT_IO_TIMEOUT_SECS
}

/// `[paths]`: where things are on this board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    /// The FAT boot partition: seed comes from here, a status copy goes here.
    #[serde(default = "default_boot")]
    pub boot: PathBuf,
}

impl Default for PathsSection {
    fn default() -> Self {
        PathsSection {
            boot: default_boot(),
        }
    }
}

fn default_boot() -> PathBuf {
    PathBuf::from("/boot/firmware")
}

/// `[commands]`: programs the agent runs. A bare name is looked up on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsSection {
    #[serde(default = "cmd_systemctl")]
    pub systemctl: String,
    #[serde(default = "cmd_dpkg")]
    pub dpkg: String,
    #[serde(default = "cmd_rsync")]
    pub rsync: String,
    #[serde(default = "cmd_ssh")]
    pub ssh: String,
    #[serde(default = "cmd_apt_get")]
    pub apt_get: String,
    #[serde(default = "cmd_netplan")]
    pub netplan: String,
}

impl Default for CommandsSection {
    fn default() -> Self {
        CommandsSection {
            systemctl: cmd_systemctl(),
            dpkg: cmd_dpkg(),
            rsync: cmd_rsync(),
            ssh: cmd_ssh(),
            apt_get: cmd_apt_get(),
            netplan: cmd_netplan(),
        }
    }
}

fn cmd_systemctl() -> String {
    "systemctl".into()
}
fn cmd_dpkg() -> String {
    "dpkg".into()
}
fn cmd_rsync() -> String {
    "rsync".into()
}
fn cmd_ssh() -> String {
    "ssh".into()
}
fn cmd_apt_get() -> String {
    "apt-get".into()
}
fn cmd_netplan() -> String {
    "netplan".into()
}

/// `[agent]`: how long `run` may wait for the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Total seconds `run` spends waiting for the network before it leaves steps pending; keep it
    /// below the unit's `TimeoutStartSec`.
    #[serde(default = "default_budget")]
    pub time_budget_secs: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            time_budget_secs: default_budget(),
        }
    }
}

fn default_budget() -> u64 {
    240
}

/// Upper bound for `[agent] time_budget_secs`. The unit's `TimeoutStartSec=300` ends `run`
/// long before; the bound keeps deadline arithmetic far from overflowing.
pub const MAX_TIME_BUDGET_SECS: u64 = 3600;

impl NodeConfig {
    /// Parses and validates `node.toml`. Errors name the line and column.
    pub fn from_toml_str(s: &str) -> Result<NodeConfig, ConfigError> {
        let config: NodeConfig = toml::from_str(s).map_err(|e| {
            let place = e
                .span()
                .map(|span| {
                    let before = &s[..span.start.min(s.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            ConfigError::Parse(format!("{place}{}", e.message()))
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// Checks what the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let name = &self.node.name;
        if !crate::names::is_node_name(name) {
            return bad(format!(
                "[node] name {name:?} is not a valid node name: {}",
                crate::names::NODE_NAME_RULE
            ));
        }
        let fb = &self.firstboot;
        if !(1..=MAX_SCRIPT_TIMEOUT_SECS).contains(&fb.timeout_secs) {
            return bad(format!(
                "[firstboot] timeout_secs must be 1 to {MAX_SCRIPT_TIMEOUT_SECS}"
            ));
        }
        for s in &fb.scripts {
            if !s.is_absolute() || s.file_name().is_none() {
                return bad(format!(
                    "[firstboot] script {} must be an absolute path to a file",
                    s.display()
                ));
            }
        }
        for d in &self.packages.debs {
            if !d.is_absolute() || d.file_name().is_none() {
                return bad(format!(
                    "[packages] deb {} must be an absolute path to a file",
                    d.display()
                ));
            }
        }
        if let Some(n) = self
            .packages
            .apt
            .iter()
            .find(|n| !crate::names::is_package_name(n))
        {
            return bad(format!(
                "[packages] apt {n:?} is not a package name: {}",
                crate::names::PACKAGE_NAME_RULE
            ));
        }
        if self.node.cluster_init && self.node.role != Role::Server {
            return bad("[node] cluster_init = true needs role = \"server\"".into());
        }
        if let Some(k3s) = &self.k3s {
            match (&k3s.server_url, self.node.cluster_init) {
                (None, false) => {
                    return bad(
                        "[k3s] server_url is required unless [node] cluster_init = true".into(),
                    );
                }
                (Some(url), _) if !url.starts_with("https://") => {
                    return bad(format!("[k3s] server_url {url:?} must start with https://"));
                }
                // Caught here, at build time, rather than as a failed k3s step on the node.
                (Some(url), _) if crate::http::parse_url(url).is_none() => {
                    return bad(format!(
                        "[k3s] server_url {url:?} must be https://HOST[:PORT], an IPv6 HOST in \
                         brackets ([fd00::1])"
                    ));
                }
                _ => {}
            }
            if k3s.node_ip_from == NodeIpFrom::Zerotier && self.zerotier.is_none() {
                return bad(
                    "[k3s] node_ip_from = \"zerotier\" (the default) needs a [zerotier] table"
                        .into(),
                );
            }
            if k3s.node_ip_from == NodeIpFrom::Wireguard && self.wireguard.is_none() {
                return bad("[k3s] node_ip_from = \"wireguard\" needs a [wireguard] table".into());
            }
            if !k3s.token_file.is_absolute() {
                return bad("[k3s] token_file must be an absolute path".into());
            }
        }
        if let Some(zt) = &self.zerotier
            && (zt.network_id.len() != 16 || !zt.network_id.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad(format!(
                "[zerotier] network_id {:?} must be 16 hex digits",
                zt.network_id
            ));
        }
        if let Some(w) = &self.wireguard {
            if w.address.parse::<std::net::Ipv4Addr>().is_err() {
                return bad(format!(
                    "[wireguard] address {:?} is not an IPv4 address",
                    w.address
                ));
            }
            // The kernel's dev_valid_name(): 1-15 bytes, no '/', ':' or white space.
            let i = &w.interface;
            if i.is_empty()
                || i.len() > 15
                || i == "."
                || i == ".."
                || i.bytes()
                    .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
            {
                return bad(format!(
                    "[wireguard] interface {:?} is not an interface name",
                    w.interface
                ));
            }
            if w.after_debs && self.packages.debs.is_empty() {
                return bad(
                    "[wireguard] after_debs = true needs the wireguard-tools package in \
                     [packages] debs"
                        .into(),
                );
            }
        }
        if let Some(ups) = &self.ups {
            if ups.shutdown_command.is_empty() {
                return bad("[ups] shutdown_command must not be empty".into());
            }
            if ups.primary && ups.driver.is_none() {
                return bad("[ups] primary = true needs driver (e.g. \"usbhid-ups\")".into());
            }
            if ups.poll_interval_ms == 0 {
                return bad("[ups] poll_interval_ms must be positive".into());
            }
            // Both go into upsd.users and upsmon.conf as bare words (`[user]`, `ups@host`):
            // anything else could end the section or add a line.
            for (key, v) in [("user", &ups.user), ("ups", &ups.ups)] {
                if v.is_empty()
                    || v.len() > 64
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                {
                    return bad(format!(
                        "[ups] {key} {v:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
                    ));
                }
            }
            if ups.user == crate::ups::PRIMARY_USER {
                return bad(format!(
                    "[ups] user {:?} is the UPS server's own upsmon user; choose another name",
                    ups.user
                ));
            }
            // upsmon.conf(5) advises DEADTIME of 3 polls; below one poll, a single late reply
            // would already count as a dead UPS.
            if ups.dead_time_secs.saturating_mul(1000) < ups.poll_interval_ms {
                return bad(format!(
                    "[ups] dead_time_secs ({}) must be at least one poll_interval_ms ({} ms); \
                     NUT advises three",
                    ups.dead_time_secs, ups.poll_interval_ms
                ));
            }
        }
        if self.agent.time_budget_secs > MAX_TIME_BUDGET_SECS {
            return bad(format!(
                "[agent] time_budget_secs {} must be at most {MAX_TIME_BUDGET_SECS} (and below \
                 the first-boot unit's TimeoutStartSec=300)",
                self.agent.time_budget_secs
            ));
        }
        if let Some(b) = &self.backup {
            if !b.target.contains(':') {
                return bad(format!(
                    "[backup] target {:?} must be user@host:/dir",
                    b.target
                ));
            }
            if b.paths.is_empty() || b.paths.iter().any(|p| !p.is_absolute()) {
                return bad("[backup] paths must be a non-empty list of absolute paths".into());
            }
            for (key, v, max) in [
                (
                    "connect_timeout_secs",
                    b.connect_timeout_secs,
                    MAX_CONNECT_TIMEOUT_SECS,
                ),
                ("io_timeout_secs", b.io_timeout_secs, MAX_IO_TIMEOUT_SECS),
            ] {
                // 0 would mean "no timeout" to both ssh and rsync.
                if !(1..=max).contains(&v) {
                    return bad(format!("[backup] {key} {v} must be 1 to {max}"));
                }
            }
            if let Some(k) = &b.known_hosts_file
                && !k.is_absolute()
            {
                return bad("[backup] known_hosts_file must be an absolute path".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = r#"
[node]
name = "pi4-a"
role = "agent"
cluster = "home"

[k3s]
server_url = "https://10.147.17.10:6443"

[zerotier]
network_id = "8056c2e21c000001"

[ups]
host = "10.147.17.10"
ups = "riello"
user = "monuser"
password_file = "/etc/imagegen/ups-password"
"#;

    #[test]
    fn defaults_fill_in_and_round_trip() {
        let c = NodeConfig::from_toml_str(AGENT).unwrap();
        let ups = c.ups.as_ref().unwrap();
        assert_eq!(ups.port, 3493);
        assert_eq!(ups.shutdown_command, ["systemctl", "poweroff"]);
        assert_eq!(c.paths.boot, PathBuf::from("/boot/firmware"));
        let again = NodeConfig::from_toml_str(&c.to_toml_string().unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_key_names_its_line() {
        let s = AGENT.replace(
            "cluster = \"home\"",
            "cluster = \"home\"\nclustr_init = true",
        );
        let e = NodeConfig::from_toml_str(&s).unwrap_err().to_string();
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("clustr_init"), "{e}");
    }

    #[test]
    fn node_table_is_required() {
        let e = NodeConfig::from_toml_str("[zerotier]\nnetwork_id = \"8056c2e21c000001\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node"), "{e}");
    }

    /// The agent once took `pi-` (it checked only the leading '-'), which the builder refused.
    #[test]
    fn node_names_follow_the_shared_rule() {
        for name in ["pi-", "-pi", "Pi", "pi.lan", ""] {
            let s = AGENT.replace("name = \"pi4-a\"", &format!("name = {name:?}"));
            let e = NodeConfig::from_toml_str(&s).unwrap_err().to_string();
            assert!(e.contains("is not a valid node name"), "{name:?}: {e}");
        }
    }

    #[test]
    fn nut_names_and_dead_time_are_checked() {
        let bad = |from: &str, to: &str| {
            NodeConfig::from_toml_str(&AGENT.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        let e = bad("user = \"monuser\"", "user = \"mon]\\n\\tupsmon primary\"");
        assert!(e.contains("[ups] user"), "{e}");
        let e = bad("ups = \"riello\"", "ups = \"riello ups\"");
        assert!(e.contains("[ups] ups"), "{e}");
        let e = bad("user = \"monuser\"", "user = \"imagegen-primary\"");
        assert!(e.contains("own upsmon user"), "{e}");
        let e = bad(
            "user = \"monuser\"",
            "user = \"monuser\"\ndead_time_secs = 2",
        );
        assert!(e.contains("dead_time_secs"), "{e}");
        let c = NodeConfig::from_toml_str(AGENT).unwrap();
        assert_eq!(c.ups.unwrap().dead_time_secs, 15);
    }

    #[test]
    fn backup_timeouts_default_and_are_bounded() {
        let with = |extra: &str| {
            NodeConfig::from_toml_str(&format!(
                "{AGENT}\n[backup]\ntarget = \"b@nas:/srv\"\npaths = [\"/etc\"]\n\
                 ssh_key_file = \"/etc/imagegen/backup-key\"\n{extra}"
            ))
        };
        let b = with("").unwrap().backup.unwrap();
        assert_eq!(b.connect_timeout_secs, DEFAULT_CONNECT_TIMEOUT_SECS);
        assert_eq!(b.io_timeout_secs, DEFAULT_IO_TIMEOUT_SECS);
        assert_eq!(b.known_hosts_file, None);
        for bad in [
            "io_timeout_secs = 0",
            "connect_timeout_secs = 0",
            "io_timeout_secs = 18446744073709551615",
            "known_hosts_file = \"nas_known_hosts\"",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("[backup]"), "{bad}: {e}");
        }
    }

    #[test]
    fn agent_without_server_url_is_refused() {
        let s = AGENT.replace("server_url = \"https://10.147.17.10:6443\"", "");
        let e = NodeConfig::from_toml_str(&s).unwrap_err().to_string();
        assert!(e.contains("server_url is required"), "{e}");
    }

    #[test]
    fn server_url_must_have_a_host() {
        let with = |u: &str| {
            NodeConfig::from_toml_str(&AGENT.replace("https://10.147.17.10:6443", u))
                .map_err(|e| e.to_string())
        };
        assert!(with("https://[fd00::1]:6443").is_ok());
        for bad in ["https://", "https://[fd00::1:6443", "https://host:port"] {
            let e = with(bad).unwrap_err();
            assert!(e.contains("HOST[:PORT]"), "{bad}: {e}");
        }
    }
}
