//! The hardening files put into every node image: an sshd drop-in, sysctl settings, an nftables
//! host firewall and unattended security upgrades. Each is one `[hardening]` toggle of
//! cluster.toml. The templates live in `overlays/` at the workspace root.

use crate::config::{Hardening, Role};
use std::net::IpAddr;

/// Where the sshd drop-in goes. Its name sorts before the vendors' drop-ins, which is what makes
/// it win (sshd keeps the first value it reads); see [`check_sshd_order`].
pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/00-imagegen-hardening.conf";
pub const SYSCTL_CONF: &str = "/etc/sysctl.d/60-imagegen-hardening.conf";
/// The file Debian's nftables.service loads.
pub const NFTABLES_CONF: &str = "/etc/nftables.conf";
pub const NFTABLES_UNIT_DROPIN: &str = "/etc/systemd/system/nftables.service.d/imagegen.conf";
pub const AUTO_UPGRADES: &str = "/etc/apt/apt.conf.d/20auto-upgrades";
pub const UNATTENDED_UPGRADES: &str = "/etc/apt/apt.conf.d/52imagegen-unattended-upgrades";

const SSHD_TEMPLATE: &str = include_str!("../../../overlays/sshd/00-imagegen-hardening.conf.in");
const SYSCTL_TEXT: &str = include_str!("../../../overlays/sysctl/60-imagegen-hardening.conf");
const NFTABLES_TEMPLATE: &str = include_str!("../../../overlays/nftables/nftables.conf.in");
const NFTABLES_UNIT_TEXT: &str =
    include_str!("../../../overlays/nftables/nftables.service.d-imagegen.conf");
const AUTO_UPGRADES_TEXT: &str = include_str!("../../../overlays/apt/20auto-upgrades");
const UNATTENDED_UPGRADES_TEXT: &str =
    include_str!("../../../overlays/apt/52imagegen-unattended-upgrades");

/// What about the node decides the content of its hardening files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// The only account sshd lets in.
    pub admin_user: &'a str,
    pub role: Role,
    /// The node the UPS is plugged into: it serves NUT to the others.
    pub ups_server: bool,
    /// The node joins a ZeroTier network, and k3s runs over it.
    pub zerotier: bool,
    /// The node is on a `[wireguard]` mesh listening on this UDP port, and k3s runs over its
    /// interface.
    pub wireguard_port: Option<u16>,
    /// On a server, the addresses of the other servers, when cluster.toml gives them all
    /// (`cluster::servers`): etcd is open to those alone. `None`: to every cluster node.
    pub etcd_peers: Option<&'a [std::net::IpAddr]>,
}

/// A root-owned regular file for the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path inside the image.
    pub path: String,
    pub content: String,
    pub mode: u32,
    /// Its content follows from the node (its role, whether the UPS is on it), so a generic
    /// image's copy is another node's.
    pub per_node: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HardeningError {
    #[error(
        "admin user {0:?} cannot go into sshd's AllowUsers: use lowercase letters, digits, '-' and '_', starting with a letter"
    )]
    AdminUser(String),
    #[error(
        "the image's sshd_config.d has {name:?}, which sshd reads before imagegen's {ours:?} and whose settings would win; remove it from the image or turn hardening.sshd off"
    )]
    DropinFirst { name: String, ours: String },
    #[error(
        "the image's /etc/ssh/sshd_config sets {keyword} on line {line}, before it includes sshd_config.d, so imagegen's drop-in cannot override it"
    )]
    MainFileFirst { keyword: String, line: usize },
    #[error(
        "the image's /etc/ssh/sshd_config does not include sshd_config.d/*.conf before its first Match block, so imagegen's drop-in would not take effect"
    )]
    NoInclude,
}

/// The hardening files for one node; a measure switched off in `h` gives no file.
pub fn files(h: &Hardening, ctx: &Context) -> Result<Vec<RenderedFile>, HardeningError> {
    let mut out = Vec::new();
    if h.sshd {
        // Checked again (cluster.toml already was): the name lands in sshd_config, where a space
        // or a pattern character would change what AllowUsers means.
        if !imagegen_firstboot::names::is_user_name(ctx.admin_user) {
            return Err(HardeningError::AdminUser(ctx.admin_user.to_string()));
        }
        out.push(file(
            SSHD_DROPIN,
            SSHD_TEMPLATE.replace("@ADMIN_USER@", ctx.admin_user),
            0o644,
        ));
    }
    if h.sysctl {
        out.push(file(SYSCTL_CONF, SYSCTL_TEXT.to_string(), 0o644));
    }
    if h.firewall {
        // Executable like Debian's own, which starts with `#!/usr/sbin/nft -f`.
        out.push(RenderedFile {
            per_node: true,
            ..file(NFTABLES_CONF, nftables(ctx), 0o755)
        });
        out.push(file(
            NFTABLES_UNIT_DROPIN,
            NFTABLES_UNIT_TEXT.to_string(),
            0o644,
        ));
    }
    if h.unattended_upgrades {
        out.push(file(AUTO_UPGRADES, AUTO_UPGRADES_TEXT.to_string(), 0o644));
        out.push(file(
            UNATTENDED_UPGRADES,
            UNATTENDED_UPGRADES_TEXT.to_string(),
            0o644,
        ));
    }
    Ok(out)
}

fn file(path: &str, content: String, mode: u32) -> RenderedFile {
    RenderedFile {
        path: path.to_string(),
        content,
        mode,
        per_node: false,
    }
}

fn nftables(ctx: &Context) -> String {
    let mut rules = String::new();
    let mut add = |line: &str| {
        if !line.is_empty() {
            rules.push_str("\t\t");
            rules.push_str(line);
        }
        rules.push('\n');
    };
    if ctx.zerotier {
        add("# ZeroTier: peers open direct paths to this node on UDP 9993.");
        add("udp dport 9993 accept");
        add("");
    }
    if let Some(port) = ctx.wireguard_port {
        add("# WireGuard: the other nodes and the operator's clients reach the mesh here.");
        add(&format!("udp dport {port} accept"));
        add("");
    }
    if ctx.role == Role::Server {
        add("# k3s API and supervisor: agents join through it, the operator runs kubectl.");
        add("tcp dport 6443 accept");
        add("");
    }
    // Node-to-node ports are open only where the other nodes are: k3s runs over ZeroTier when
    // the node has it (the agent sets node-ip to the ZeroTier address and flannel-iface to the
    // ZeroTier interface, so flannel's VXLAN packets and the other nodes' connections arrive
    // there), otherwise over the LAN (node-ip is the local address towards the server, and
    // flannel without flannel-iface takes the default route's interface). VXLAN in particular
    // must never be reachable from elsewhere: it carries unauthenticated pod traffic, which
    // the node unwraps into its pod network (k3s docs, "Requirements", Networking: "The VXLAN
    // port on nodes should not be exposed to the world as it opens up your cluster network to
    // be accessed by anyone").
    //
    // A node's address, never a pod's or a service's: flannel's VXLAN packets come from the
    // sending node's flannel-iface address, and pods reach other nodes' kubelets (the
    // metrics-server) from their node's address, as flannel masquerades pod traffic leaving
    // the cluster network. On the LAN the node addresses are not known when the image is
    // built (DHCP), so any private address is taken for one, except pod and service
    // addresses, which lan4's 10.0.0.0/8 holds: a LAN host forging one would otherwise be let
    // in (loose reverse-path filtering passes it, pod addresses being routable to cni0 and
    // flannel.1).
    // On the mesh the other nodes' traffic arrives on wg0, and WireGuard has authenticated
    // every packet there against a peer's key (wg(8), "cryptokey routing").
    let wg_iif = format!("iifname \"{}\"", crate::vpn::wireguard::INTERFACE);
    let (peers, from): (&[&str], &str) = if ctx.zerotier {
        (&["iifname \"zt*\""], "on the ZeroTier interface")
    } else if ctx.wireguard_port.is_some() {
        (&[wg_iif.as_str()], "on the WireGuard interface")
    } else {
        (
            &["ip saddr @lan4 ip saddr != @k3s_nets4", "ip6 saddr @lan6"],
            "from private and link-local addresses other than pods' and services'",
        )
    };
    add(&format!("# Between cluster nodes, {from}:"));
    add("# kubelet (k3s docs: open between all nodes for the metrics-server; the API server's");
    add("# logs and exec reach it through k3s's agent tunnel) and flannel VXLAN.");
    for p in peers {
        add(&format!("{p} tcp dport 10250 accept"));
        add(&format!("{p} udp dport 8472 accept"));
    }
    if ctx.role == Role::Server {
        match ctx.etcd_peers {
            None => {
                add("# etcd client and peer ports, for the servers; open to every cluster node");
                add("# because cluster.toml does not give every other server's IP address.");
                for p in peers {
                    add(&format!("{p} tcp dport 2379-2380 accept"));
                }
            }
            Some(servers) => {
                let on = (ctx.zerotier || ctx.wireguard_port.is_some()).then_some(peers[0]);
                etcd_between_servers(&mut add, on, servers)
            }
        }
    }
    if ctx.ups_server {
        add("# NUT: the other nodes watch the UPS through this node's upsd.");
        for p in peers {
            add(&format!("{p} tcp dport 3493 accept"));
        }
    }
    NFTABLES_TEMPLATE.replace("@ROLE_RULES@", &rules)
}

/// etcd's client and peer ports for the other servers' addresses only, each family in its own
/// set. A server added to the cluster later is let in once this server's image is rebuilt with
/// it in cluster.toml (or its address added here).
fn etcd_between_servers(add: &mut impl FnMut(&str), on: Option<&str>, servers: &[IpAddr]) {
    let (v4, v6): (Vec<&IpAddr>, Vec<&IpAddr>) = servers.iter().partition(|a| a.is_ipv4());
    if servers.is_empty() {
        add("# etcd client and peer ports: closed, cluster.toml names no other server.");
        return;
    }
    add("# etcd client and peer ports, from the other servers (their cluster.toml addresses).");
    // On the VPN interface only when k3s runs over it: the addresses are its members'.
    let on = on.map(|i| format!("{i} ")).unwrap_or_default();
    for (family, set) in [("ip", v4), ("ip6", v6)] {
        if set.is_empty() {
            continue;
        }
        let list: Vec<String> = set.iter().map(|a| a.to_string()).collect();
        add(&format!(
            "{on}{family} saddr {{ {} }} tcp dport 2379-2380 accept",
            list.join(", ")
        ));
    }
}

/// Checks that the drop-in at [`SSHD_DROPIN`] will win in an image whose main sshd config is
/// `main_config` and whose sshd_config.d holds files named `dropins`: sshd keeps the first
/// value it reads, so nothing it reads earlier may set what the drop-in sets.
pub fn check_sshd_order<S: AsRef<str>>(
    main_config: &str,
    dropins: &[S],
) -> Result<(), HardeningError> {
    let ours = SSHD_DROPIN.rsplit('/').next().unwrap_or(SSHD_DROPIN);
    // sshd expands the Include glob with glob(3) in the C locale: byte order.
    if let Some(name) = dropins
        .iter()
        .map(AsRef::as_ref)
        .filter(|n| n.ends_with(".conf") && n.as_bytes() < ours.as_bytes())
        .min()
    {
        return Err(HardeningError::DropinFirst {
            name: name.to_string(),
            ours: ours.to_string(),
        });
    }
    let ours_keys: Vec<String> = keywords(SSHD_TEMPLATE)
        .map(|(_, k, _)| k.to_ascii_lowercase())
        .collect();
    for (line, keyword, args) in keywords(main_config) {
        match keyword.to_ascii_lowercase().as_str() {
            "include"
                if args
                    .split_whitespace()
                    .any(|a| a.ends_with("sshd_config.d/*.conf")) =>
            {
                return Ok(());
            }
            "match" => return Err(HardeningError::NoInclude),
            k if ours_keys.iter().any(|o| o == k) => {
                return Err(HardeningError::MainFileFirst {
                    keyword: keyword.to_string(),
                    line,
                });
            }
            _ => {}
        }
    }
    Err(HardeningError::NoInclude)
}

/// (1-based line, keyword, arguments) of each directive in an sshd config.
fn keywords(text: &str) -> impl Iterator<Item = (usize, &str, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let k = first_word(l);
        // sshd also accepts `Keyword=value`.
        let (k, rest) = match k.split_once('=') {
            Some((k, _)) => (k, &l[k.len() + 1..]),
            None => (k, &l[k.len()..]),
        };
        Some((i + 1, k, rest.trim()))
    })
}

fn first_word(l: &str) -> &str {
    l.split_whitespace().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(role: Role) -> Context<'static> {
        Context {
            admin_user: "ops",
            role,
            ups_server: false,
            zerotier: true,
            wireguard_port: None,
            etcd_peers: None,
        }
    }

    #[test]
    fn toggles_off_give_no_files() {
        let off = Hardening {
            sshd: false,
            sysctl: false,
            firewall: false,
            unattended_upgrades: false,
        };
        assert_eq!(files(&off, &ctx(Role::Agent)).unwrap(), vec![]);
        let paths = |h: &Hardening| -> Vec<String> {
            files(h, &ctx(Role::Agent))
                .unwrap()
                .into_iter()
                .map(|f| f.path)
                .collect()
        };
        let all = paths(&Hardening::default());
        for (h, gone) in [
            (
                Hardening {
                    sshd: false,
                    ..Hardening::default()
                },
                &[SSHD_DROPIN][..],
            ),
            (
                Hardening {
                    sysctl: false,
                    ..Hardening::default()
                },
                &[SYSCTL_CONF][..],
            ),
            (
                Hardening {
                    firewall: false,
                    ..Hardening::default()
                },
                &[NFTABLES_CONF, NFTABLES_UNIT_DROPIN][..],
            ),
            (
                Hardening {
                    unattended_upgrades: false,
                    ..Hardening::default()
                },
                &[AUTO_UPGRADES, UNATTENDED_UPGRADES][..],
            ),
        ] {
            let got = paths(&h);
            let want: Vec<String> = all
                .iter()
                .filter(|p| !gone.contains(&p.as_str()))
                .cloned()
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn admin_user_is_checked_only_when_it_is_used() {
        for bad in [
            "",
            "ops root",
            "*",
            "Ops",
            "1ops",
            "ops\nPermitRootLogin yes",
        ] {
            let c = Context {
                admin_user: bad,
                ..ctx(Role::Server)
            };
            assert_eq!(
                files(&Hardening::default(), &c),
                Err(HardeningError::AdminUser(bad.to_string()))
            );
            let no_sshd = Hardening {
                sshd: false,
                ..Hardening::default()
            };
            assert!(files(&no_sshd, &c).is_ok());
        }
    }

    #[test]
    fn sshd_order_reasons() {
        let debian =
            "# comment\n\nInclude /etc/ssh/sshd_config.d/*.conf\n\nPasswordAuthentication yes\n";
        assert_eq!(check_sshd_order(debian, &["50-cloud-init.conf"]), Ok(()));
        assert_eq!(
            check_sshd_order(debian, &["0-first.conf", "README"]),
            Err(HardeningError::DropinFirst {
                name: "0-first.conf".into(),
                ours: "00-imagegen-hardening.conf".into()
            })
        );
        assert_eq!(
            check_sshd_order(
                "passwordauthentication=yes\nInclude /etc/ssh/sshd_config.d/*.conf\n",
                &[] as &[&str]
            ),
            Err(HardeningError::MainFileFirst {
                keyword: "passwordauthentication".into(),
                line: 1
            })
        );
        assert_eq!(
            check_sshd_order("Port 22\n", &[] as &[&str]),
            Err(HardeningError::NoInclude)
        );
    }
}
