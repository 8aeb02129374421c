//! WireGuard: a full mesh between the nodes of `[wireguard]`, plus the operator's own machines
//! (`clients`). Each member's key is made once into the state directory, so a replacement card
//! is the same peer and no other node needs rebuilding.
//!
//! How the tunnel comes up on a node: `/etc/wireguard/wg0.conf` (root 0600) brought up by
//! `wg-quick@wg0.service`, both from wireguard-tools. systemd-networkd's own `[WireGuard]`
//! netdev would need no package, but it reads its key as the `systemd-network` user: the
//! .netdev or its `PrivateKeyFile=` must be `root:systemd-network` 0640 (systemd.netdev(5),
//! `PrivateKeyFile=`), a group whose id differs per image, and a personalize seed places
//! root-owned files only (`personalize::split`); Raspberry Pi OS and Armbian run
//! NetworkManager, not networkd, too. The wg-quick file is root's alone, the same on every
//! family. wireguard-tools comes with the image or, for a base that lacks it (Raspberry Pi OS
//! Lite, Armbian), as a staged `.deb` for the board's architecture in `[packages] debs`, which
//! the agent installs and then brings the tunnel up (`imagegen_firstboot::wireguard`); with
//! neither, the plan refuses the image, naming both ways, rather than build a node that would
//! never join the mesh.

use crate::cluster::NodeFile;
use crate::config::{ClusterConfig, Invalid};
use crate::identity::{IdentityError, io, make_private_dir, write_private};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub const INTERFACE: &str = "wg0";
pub const CONF_DIR: &str = "/etc/wireguard";
pub const CONF: &str = "/etc/wireguard/wg0.conf";
/// `wg-quick@.service` as wireguard-tools installs it (Debian, Ubuntu: /lib is /usr/lib).
pub const UNIT_TEMPLATE: &str = "/lib/systemd/system/wg-quick@.service";
pub const UNIT: &str = "wg-quick@wg0.service";
/// The drop-in (in `k3s.service.d/` and `k3s-agent.service.d/`) ordering k3s after the tunnel.
pub const K3S_DROPIN: &str = "10-imagegen-wireguard.conf";
/// What wg-quick needs, in the image.
pub const WG_QUICK: &str = "/usr/bin/wg-quick";
/// The package that brings it, by its control data's name.
pub const PACKAGE: &str = "wireguard-tools";
pub const DEFAULT_PORT: u16 = 51820;
/// The interval wg(8) suggests for peers behind NAT ("a sensible interval that works with a
/// wide variety of firewalls is 25 seconds").
pub const KEEPALIVE: u16 = 25;
/// A node's key in its state directory.
pub const KEY_FILE: &str = "wireguard.key";
/// The clients' keys, beside the nodes' directories (`_` cannot start a node name).
pub const CLIENTS_DIR: &str = "_wireguard-clients";

#[derive(Debug, thiserror::Error)]
pub enum WireGuardError {
    #[error(transparent)]
    State(#[from] IdentityError),
    #[error(
        "{0} is not a WireGuard private key (44 characters of base64, as `wg genkey` writes); \
         restore it from a backup, or remove it to make a new one (then rebuild every node)"
    )]
    Damaged(String),
    #[error("{0}")]
    Invalid(String),
}

/// One peer of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub address: Ipv4Addr,
    /// `host:port` the others reach it at; None behind NAT.
    pub endpoint: Option<String>,
    /// One of the operator's machines rather than a node.
    pub client: bool,
}

/// The mesh `[wireguard]` describes: nodes in config order, then the clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    pub prefix: u8,
    pub port: u16,
    pub members: Vec<Member>,
}

/// Every problem of `[wireguard]` and the nodes' `vpn_address`/`endpoint`, each with where it is.
pub fn problems(c: &ClusterConfig) -> Vec<Invalid> {
    derive(c).1
}

impl Mesh {
    /// The mesh of a config, None without `[wireguard]`; the first problem if it has any.
    pub fn of(c: &ClusterConfig) -> Result<Option<Mesh>, WireGuardError> {
        match derive(c) {
            (_, errs) if !errs.is_empty() => Err(WireGuardError::Invalid(errs[0].1.clone())),
            (mesh, _) => Ok(mesh),
        }
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// The mesh and what is wrong with it, in one pass so `check` and `build` agree.
fn derive(c: &ClusterConfig) -> (Option<Mesh>, Vec<Invalid>) {
    let mut errs: Vec<Invalid> = Vec::new();
    let Some(w) = &c.wireguard else {
        for n in &c.nodes {
            if let Some(e) = &n.endpoint {
                errs.push((
                    e.span(),
                    "endpoint is for [wireguard], which is not given".into(),
                ));
            }
        }
        return (None, errs);
    };
    if let Some(z) = &c.zerotier {
        errs.push((
            z.network_id.span(),
            "[zerotier] and [wireguard] are both given: k3s can run over one VPN only; keep \
             the one the nodes should talk over"
                .into(),
        ));
    }
    let port = match &w.port {
        None => DEFAULT_PORT,
        Some(p) => match u16::try_from(*p.get_ref()) {
            Ok(v) if v > 0 => v,
            _ => {
                errs.push((
                    p.span(),
                    format!("wireguard port {} is not a UDP port (1-65535)", p.get_ref()),
                ));
                DEFAULT_PORT
            }
        },
    };
    let Some((net, prefix)) =
        crate::check::network::parse_cidr4(w.network.get_ref()).filter(|(_, p)| *p <= 30)
    else {
        errs.push((
            w.network.span(),
            format!(
                "wireguard network {:?} must be an IPv4 network with a prefix of 30 or less, \
                 \"10.99.0.0/24\"",
                w.network.get_ref()
            ),
        ));
        return (None, errs);
    };
    let mask = u32::MAX << (32 - u32::from(prefix));
    let base = u32::from(net) & mask;
    let broadcast = base | !mask;
    let usable = |a: u32| a & mask == base && a != base && a != broadcast;
    let mut taken: Vec<u32> = Vec::new();
    for n in &c.nodes {
        if let Some(a) = &n.vpn_address {
            match a.get_ref().parse::<Ipv4Addr>() {
                Ok(ip) if !usable(u32::from(ip)) => errs.push((
                    a.span(),
                    format!(
                        "vpn_address {ip} is not a host address of the wireguard network {}",
                        w.network.get_ref()
                    ),
                )),
                Ok(ip) if taken.contains(&u32::from(ip)) => {
                    errs.push((a.span(), format!("vpn_address {ip} is given to two nodes")))
                }
                Ok(ip) => taken.push(u32::from(ip)),
                Err(_) => errs.push((
                    a.span(),
                    format!("vpn_address {:?} is not an IPv4 address", a.get_ref()),
                )),
            }
        }
        if let Some(e) = &n.endpoint
            && let Some(why) = endpoint_problem(e.get_ref())
        {
            errs.push((e.span(), format!("endpoint {:?}: {why}", e.get_ref())));
        }
    }
    let mut next = base + 1;
    let mut free = || -> Option<u32> {
        while usable(next) {
            let a = next;
            next += 1;
            if !taken.contains(&a) {
                return Some(a);
            }
        }
        None
    };
    let mut members = Vec::new();
    let mut full = false;
    for n in &c.nodes {
        let address = match n
            .vpn_address
            .as_ref()
            .map(|a| a.get_ref().parse::<Ipv4Addr>())
        {
            Some(Ok(ip)) => Some(u32::from(ip)),
            Some(Err(_)) => None,
            None => free(),
        };
        full |= address.is_none() && n.vpn_address.is_none();
        members.push(Member {
            name: n.name.get_ref().clone(),
            address: Ipv4Addr::from(address.unwrap_or(base)),
            endpoint: n.endpoint.as_ref().map(|e| e.get_ref().clone()),
            client: false,
        });
    }
    let mut client_names: Vec<&str> = Vec::new();
    for cl in &w.clients {
        let name = cl.get_ref();
        if !imagegen_firstboot::names::is_node_name(name) {
            errs.push((
                cl.span(),
                format!(
                    "wireguard client {name:?} is not valid: {}",
                    imagegen_firstboot::names::NODE_NAME_RULE
                ),
            ));
        } else if client_names.contains(&name.as_str()) || members.iter().any(|m| &m.name == name) {
            errs.push((
                cl.span(),
                format!("wireguard client {name:?} is named twice (or like a node)"),
            ));
        }
        client_names.push(name);
        let address = free();
        full |= address.is_none();
        members.push(Member {
            name: name.clone(),
            address: Ipv4Addr::from(address.unwrap_or(base)),
            endpoint: None,
            client: true,
        });
    }
    if full {
        errs.push((
            w.network.span(),
            format!(
                "wireguard network {} has too few addresses for {} nodes and clients",
                w.network.get_ref(),
                members.len()
            ),
        ));
    }
    let behind_nat = c.nodes.iter().filter(|n| n.endpoint.is_none()).count();
    if !c.nodes.is_empty()
        && behind_nat == c.nodes.len()
        && (c.nodes.len() > 1 || !w.clients.is_empty())
    {
        errs.push((
            w.network.span(),
            "no node has an endpoint: WireGuard peers behind NAT cannot find each other; give \
             endpoint = \"HOST:PORT\" to at least one node the others can reach"
                .into(),
        ));
    }
    (
        Some(Mesh {
            prefix,
            port,
            members,
        }),
        errs,
    )
}

/// `host:port`, the host an IPv4 address, a DNS name or an IPv6 address in brackets (the forms
/// wg(8) `Endpoint` takes). None when it is one.
pub fn endpoint_problem(e: &str) -> Option<&'static str> {
    let Some((host, port)) = e.rsplit_once(':') else {
        return Some("must be HOST:PORT");
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Some("the port must be 1-65535");
    }
    let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<Ipv4Addr>().is_ok() || imagegen_firstboot::names::is_hostname(host),
    };
    (!ok).then_some("the host must be an IPv4 address, a DNS name or [an IPv6 address]")
}

/// A Curve25519 private key, clamped as `wg genkey` writes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(public {})", self.public())
    }
}

impl Key {
    /// Clamped as wg(8)'s `genkey` does (curve25519_clamp_secret in wireguard-tools), so the
    /// stored key is byte for byte what `wg genkey` could have written.
    pub fn from_bytes(mut b: [u8; 32]) -> Key {
        b[0] &= 248;
        b[31] = (b[31] & 127) | 64;
        Key(b)
    }

    pub fn parse(text: &str) -> Option<Key> {
        let raw = B64.decode(text.trim()).ok()?;
        Some(Key(raw.try_into().ok()?))
    }

    pub fn private(&self) -> String {
        B64.encode(self.0)
    }

    pub fn public(&self) -> String {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        B64.encode(x25519_dalek::PublicKey::from(&secret).as_bytes())
    }
}

/// Where a member's key is kept in the state directory.
pub fn key_path(state_dir: &Path, m: &Member) -> PathBuf {
    if m.client {
        state_dir.join(CLIENTS_DIR).join(format!("{}.key", m.name))
    } else {
        state_dir.join(&m.name).join(KEY_FILE)
    }
}

/// The key of `m` from the state directory, made there on first use.
pub fn load_or_create(state_dir: &Path, m: &Member) -> Result<Key, WireGuardError> {
    make_private_dir(state_dir)?;
    let path = key_path(state_dir, m);
    if let Some(dir) = path.parent() {
        make_private_dir(dir)?;
    }
    match fs::read_to_string(&path) {
        Ok(text) => {
            Key::parse(&text).ok_or_else(|| WireGuardError::Damaged(path.display().to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let urandom = Path::new("/dev/urandom");
            let mut b = [0u8; 32];
            fs::File::open(urandom)
                .and_then(|mut f| f.read_exact(&mut b))
                .map_err(io(urandom))?;
            let key = Key::from_bytes(b);
            write_private(&path, format!("{}\n", key.private()).as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(io(&path)(e).into()),
    }
}

/// Every member's key, in mesh order, for `vpn-client`: the nodes' keys must be in the state
/// already (a client config naming keys no node has would never connect); a client's is made
/// if the nodes' build did not make it.
pub fn client_keys(state_dir: &Path, mesh: &Mesh) -> Result<Vec<Key>, WireGuardError> {
    mesh.members
        .iter()
        .map(|m| {
            let path = key_path(state_dir, m);
            if m.client || path.exists() {
                load_or_create(state_dir, m)
            } else {
                Err(WireGuardError::Invalid(format!(
                    "no WireGuard key for node {} in {}: build the nodes first, or give the \
                     --state-dir their build used",
                    m.name,
                    state_dir.display()
                )))
            }
        })
        .collect()
}

/// Every member's key, in mesh order.
pub fn keys(state_dir: &Path, mesh: &Mesh) -> Result<Vec<Key>, WireGuardError> {
    mesh.members
        .iter()
        .map(|m| load_or_create(state_dir, m))
        .collect()
}

/// The wg-quick config of member `me` (a node or a client): every other node as a peer, and
/// on a node every client too. Clients are no peers of each other.
pub fn render(mesh: &Mesh, keys: &[Key], me: &str) -> Result<String, WireGuardError> {
    let i = mesh
        .members
        .iter()
        .position(|m| m.name == me)
        .ok_or_else(|| WireGuardError::Invalid(format!("{me} is not a member of the mesh")))?;
    let m = &mesh.members[i];
    let what = if m.client { "client" } else { "node" };
    let mut s = format!(
        "# Written by imagegen from cluster.toml [wireguard]: {what} {me}.\n[Interface]\n\
         PrivateKey = {}\nAddress = {}/{}\n",
        keys[i].private(),
        m.address,
        mesh.prefix
    );
    if !m.client {
        s.push_str(&format!("ListenPort = {}\n", mesh.port));
    }
    for (peer, key) in mesh.members.iter().zip(keys) {
        if peer.name == me || (m.client && peer.client) {
            continue;
        }
        s.push_str(&format!(
            "\n# {} {}\n[Peer]\nPublicKey = {}\nAllowedIPs = {}/32\n",
            if peer.client { "client" } else { "node" },
            peer.name,
            key.public(),
            peer.address
        ));
        if let Some(e) = &peer.endpoint {
            s.push_str(&format!("Endpoint = {e}\n"));
            // Behind NAT, only this side can open the path, and keeps it open.
            if m.endpoint.is_none() {
                s.push_str(&format!("PersistentKeepalive = {KEEPALIVE}\n"));
            }
        }
    }
    Ok(s)
}

/// The node's wg0.conf for the image: its private key, so root 0600 and a secret.
pub fn image_file(mesh: &Mesh, keys: &[Key], node: &str) -> Result<NodeFile, WireGuardError> {
    Ok(NodeFile {
        path: CONF.into(),
        content: render(mesh, keys, node)?.into_bytes(),
        mode: 0o600,
        secret: true,
    })
}

/// The QR code of a config for a terminal (the WireGuard apps scan the config's text as is):
/// two rows of modules per line in Unicode half blocks, with the quiet zone of 4 modules
/// ISO/IEC 18004 asks for. Drawn for light text on a dark background, as `qrencode -t UTF8`
/// draws it: the light modules are the printed blocks.
pub fn qr_text(text: &str) -> Result<String, WireGuardError> {
    let code = qrcode::QrCode::new(text.as_bytes())
        .map_err(|e| WireGuardError::Invalid(format!("the config does not fit a QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_rfc7748_and_is_kept() {
        // RFC 7748 section 6.1: Alice's private key and public key (the private one is
        // already clamped-equivalent; x25519 clamps on use).
        let a = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let k = Key(a.try_into().unwrap());
        assert_eq!(
            B64.decode(k.public()).unwrap(),
            hex::decode("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
                .unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s");
        let m = Member {
            name: "a".into(),
            address: Ipv4Addr::new(10, 0, 0, 1),
            endpoint: None,
            client: false,
        };
        let k1 = load_or_create(&state, &m).unwrap();
        assert_eq!(load_or_create(&state, &m).unwrap(), k1);
        fs::write(state.join("a").join(KEY_FILE), "nope").unwrap();
        assert!(matches!(
            load_or_create(&state, &m),
            Err(WireGuardError::Damaged(_))
        ));
    }

    #[test]
    fn endpoints() {
        for ok in ["1.2.3.4:51820", "node.example.org:1", "[fd00::1]:51820"] {
            assert_eq!(endpoint_problem(ok), None, "{ok}");
        }
        for bad in [
            "1.2.3.4",
            "h:0",
            "h:65536",
            "h:+5",
            "fd00::1:51820",
            ":51820",
            "a b:1",
        ] {
            assert!(endpoint_problem(bad).is_some(), "{bad}");
        }
    }
}
