//! k3s: verify the server against the join token, write `/etc/rancher/k3s/config.yaml`, enable the
//! service and wait for the server's `/ping`.
//!
//! The server is verified the way k3s itself does it, before anything secret could be sent: fetch
//! `/cacerts` without TLS verification, compare its hash (computed as k3s computes it, see
//! `ca_hash`) with the one in the `K10<hash>::` token, then fetch it again trusting only that CA,
//! which proves the server holds a certificate from it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::attempts::Attempts;
use crate::backoff::{Waiting, retry_until};
use crate::command::{self, CommandError};
use crate::config::{K3sSection, NodeConfig, NodeIpFrom, Role};
use crate::http::{self, HttpError, Trust};
use crate::root::Root;
use crate::zerotier::Joined;

pub const CONFIG_PATH: &str = "/etc/rancher/k3s/config.yaml";
const NODE_PASSWORD: &str = "/etc/rancher/node/password";
const LOCAL_SERVER: &str = "https://127.0.0.1:6443";

#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    #[error("k3s: cannot read token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("k3s: token file {path}: {why}")]
    BadToken { path: String, why: String },
    #[error(
        "k3s: token {path} has no K10<ca-hash> prefix, so the server cannot be verified; \
         refusing: put the full token (K10...) from the server's \
         /var/lib/rancher/k3s/server/token in cluster.toml's [k3s] token_file and rebuild"
    )]
    Unverifiable { path: String },
    #[error(
        "k3s: refused to join {server}: its CA (sha256 {served}) does not match the hash in the token \
         ({expected}); wrong server, wrong token, or someone in between. The token was not sent."
    )]
    CaMismatch {
        server: String,
        expected: String,
        served: String,
    },
    #[error(
        "k3s: refused to join {server}: its TLS certificate does not chain to the CA it serves at \
         /cacerts (the one the token pins): someone in between replaying the real CA, or a \
         misconfigured server ({source}). The token was not sent."
    )]
    CaChain { server: String, source: HttpError },
    #[error(
        "k3s: refused to join {server}: its /cacerts is not a usable CA bundle ({source}). The token was not sent."
    )]
    BadCa { server: String, source: HttpError },
    #[error("k3s: server URL {0:?} is not https://HOST[:PORT] (an IPv6 HOST in brackets)")]
    BadUrl(String),
    #[error("k3s: write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("k3s: {0}")]
    Command(#[from] CommandError),
    /// The server is not reachable yet; retried later.
    #[error("k3s: still waiting: {0}")]
    Waiting(String),
}

impl Waiting for K3sError {
    fn waiting(&self) -> Option<&str> {
        match self {
            K3sError::Waiting(why) => Some(why),
            _ => None,
        }
    }
}

impl K3sError {
    pub fn is_waiting(&self) -> bool {
        self.waiting().is_some()
    }

    /// Failures that will fail the same way until the token or server changes.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            K3sError::CaMismatch { .. }
                | K3sError::CaChain { .. }
                | K3sError::BadCa { .. }
                | K3sError::Unverifiable { .. }
        )
    }
}

/// The CA hash pinned in a `K10<hash>::<credentials>` token, if it has one.
pub fn token_ca_hash(token: &str) -> Result<Option<String>, String> {
    let Some(rest) = token.strip_prefix("K10") else {
        return Ok(None);
    };
    let (hash, creds) = rest
        .split_once("::")
        .ok_or("K10 token without '::' separator")?;
    if creds.is_empty() {
        return Err("K10 token without credentials after '::'".into());
    }
    if hash.is_empty() {
        return Ok(None);
    }
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "CA hash in token must be 64 hex digits, found {} characters",
            hash.len()
        ));
    }
    Ok(Some(hash.to_ascii_lowercase()))
}

/// Fetches the server's CA and checks it against `expected` (when given). Returns the PEM bundle.
///
/// A refusal is remembered until the token or server changes, so only a definite answer may
/// produce one: a complete reply (see `http`) that is a well-formed PEM bundle and whose hash is
/// not the token's (a bundle whose certificates do not parse has no hash in k3s either: it
/// matches no token). A reply cut short, garbled or unparsable is the network, not the server's
/// word, and is retried.
pub fn fetch_verified_ca(
    server: &str,
    expected: Option<&str>,
    timeout: Duration,
) -> Result<Vec<u8>, K3sError> {
    let url = format!("{}/cacerts", server.trim_end_matches('/'));
    let r = http::get(&url, &[], &Trust::AnyCertificate, timeout)
        .map_err(|e| K3sError::Waiting(e.to_string()))?;
    if r.status != 200 {
        return Err(K3sError::Waiting(format!("{url}: HTTP {}", r.status)));
    }
    let parsed = Trust::from_pem(&r.body);
    let served = crate::ca_hash::of_bundle(&r.body);
    if let Some(expected) = expected
        && served.as_deref() != Some(expected)
    {
        if let Err(e) = parsed {
            return Err(K3sError::Waiting(format!(
                "{url}: reply is not a CA bundle ({e}); retrying"
            )));
        }
        return Err(K3sError::CaMismatch {
            server: server.to_owned(),
            expected: expected.to_owned(),
            served: served.unwrap_or_else(|| "none: no certificate k3s can parse".into()),
        });
    }
    let trust = parsed.map_err(|e| K3sError::BadCa {
        server: server.to_owned(),
        source: e,
    })?;
    http::get(&url, &[], &trust, timeout).map_err(|e| {
        if is_certificate_refusal(&e) {
            K3sError::CaChain {
                server: server.to_owned(),
                source: e,
            }
        } else {
            K3sError::Waiting(e.to_string())
        }
    })?;
    Ok(r.body)
}

/// Whether the server's certificate was rejected for a reason that stays true for this token and
/// server: it does not chain to the CA, or is not for this address. Validity dates are not such a
/// reason: a board without a real-time clock boots with a stale time until NTP syncs, and k3s
/// renews its certificates by itself. Anything else (a cut connection, a garbled record, a
/// timeout) is the network and is retried.
fn is_certificate_refusal(e: &HttpError) -> bool {
    use rustls::CertificateError as C;
    match e.tls_error() {
        Some(rustls::Error::InvalidCertificate(c)) => !matches!(
            c,
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. }
        ),
        _ => false,
    }
}

/// A hash of what a refusal depends on, so an unchanged token and server are not retried blindly.
pub fn inputs_fingerprint(root: &Root, config: &NodeConfig) -> String {
    let mut h = Sha256::new();
    if let Some(k) = &config.k3s {
        h.update(
            root.read_to_string(&k.token_file)
                .unwrap_or_default()
                .trim(),
        );
        h.update([0]);
        h.update(k.server_url.as_deref().unwrap_or(""));
        h.update([u8::from(k.allow_unverified_token)]);
    }
    hex::encode(&Sha256::digest(h.finalize())[..8])
}

/// Runs the whole k3s step. `zt` is the ZeroTier result when `node_ip_from = "zerotier"`; every
/// failed network attempt goes to `attempts`.
pub fn setup(
    root: &Root,
    config: &NodeConfig,
    zt: Option<&Joined>,
    deadline: Instant,
    attempts: &mut Attempts,
) -> Result<BTreeMap<String, String>, K3sError> {
    let Some(k3s) = &config.k3s else {
        return Ok(BTreeMap::new());
    };
    let (token_path, hash) = read_token_hash(root, k3s)?;
    let server = k3s.server_url.as_deref().unwrap_or(LOCAL_SERVER);
    if k3s.node_ip_from == NodeIpFrom::Zerotier && zt.is_none() {
        return Err(K3sError::Waiting("no ZeroTier address yet".into()));
    }

    let mut details = BTreeMap::new();
    let server_ca = match &k3s.server_url {
        Some(url) => {
            let ca = verify_server(url, k3s, token_path, hash, deadline, attempts)?;
            details.insert("ca-sha256".into(), hex::encode(Sha256::digest(&ca)));
            Some(ca)
        }
        None => None,
    };
    let node_ip = node_ip(config, zt)?;
    write_config(root, config, node_ip.as_ref())?;
    let service = enable_service(root, config)?;
    wait_for_ping(server, server_ca, deadline, attempts)?;

    details.insert("service".into(), service.into());
    if let Some((ip, iface)) = node_ip {
        details.insert("node-ip".into(), ip);
        if let Some(i) = iface {
            details.insert("flannel-iface".into(), i);
        }
    }
    Ok(details)
}

/// The token file's path (for messages) and the CA hash its token pins, if any.
fn read_token_hash(root: &Root, k3s: &K3sSection) -> Result<(String, Option<String>), K3sError> {
    let token_path = k3s.token_file.display().to_string();
    let token = root
        .read_to_string(&k3s.token_file)
        .map_err(|source| K3sError::TokenFile {
            path: token_path.clone(),
            source,
        })?;
    let hash = token_ca_hash(token.trim()).map_err(|why| K3sError::BadToken {
        path: token_path.clone(),
        why,
    })?;
    Ok((token_path, hash))
}

/// Each attempt gets what is left of the budget (k3s's own client uses 10 s).
fn attempt_timeout(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(500), Duration::from_secs(10))
}

/// The server's CA, checked against the token's hash (refused without one unless
/// `allow_unverified_token`).
fn verify_server(
    url: &str,
    k3s: &K3sSection,
    token_path: String,
    hash: Option<String>,
    deadline: Instant,
    attempts: &mut Attempts,
) -> Result<Vec<u8>, K3sError> {
    if hash.is_none() {
        if !k3s.allow_unverified_token {
            return Err(K3sError::Unverifiable { path: token_path });
        }
        eprintln!(
            "k3s: token has no CA hash: {url} cannot be verified, joining anyway (allow_unverified_token)"
        );
    }
    let ca = retry_until(deadline, attempts, || {
        fetch_verified_ca(url, hash.as_deref(), attempt_timeout(deadline))
    })?;
    eprintln!(
        "k3s: {url} CA {}",
        if hash.is_some() {
            "matches the token"
        } else {
            "fetched (unverified)"
        }
    );
    Ok(ca)
}

/// The `node-ip` (and `flannel-iface`) for `config.yaml`.
fn node_ip(
    config: &NodeConfig,
    zt: Option<&Joined>,
) -> Result<Option<(String, Option<String>)>, K3sError> {
    let Some(k3s) = &config.k3s else {
        return Ok(None);
    };
    Ok(match (k3s.node_ip_from, zt) {
        // The builder gave the address; wg-quick@ brings the interface up at boot, and k3s
        // retries its server until the tunnel carries it.
        (NodeIpFrom::Wireguard, _) => config
            .wireguard
            .as_ref()
            .map(|w| (w.address.clone(), Some(w.interface.clone()))),
        (NodeIpFrom::Zerotier, Some(j)) => Some((j.address.clone(), Some(j.interface.clone()))),
        (NodeIpFrom::Zerotier, None) => {
            return Err(K3sError::Waiting("no ZeroTier address yet".into()));
        }
        // The first server has no server to route to: any address off-link picks the default
        // route (TEST-NET-1; nothing is sent).
        (NodeIpFrom::DefaultRoute, _) => Some((
            source_address_towards(k3s.server_url.as_deref().unwrap_or("https://192.0.2.1"))?,
            None,
        )),
    })
}

fn write_config(
    root: &Root,
    config: &NodeConfig,
    node_ip: Option<&(String, Option<String>)>,
) -> Result<(), K3sError> {
    let yaml = render_config(config, node_ip);
    if root
        .write_atomic(CONFIG_PATH, yaml.as_bytes(), 0o600)
        .map_err(|source| K3sError::Write {
            path: CONFIG_PATH.into(),
            source,
        })?
    {
        eprintln!("k3s: wrote {CONFIG_PATH}");
    }
    if !root.exists(NODE_PASSWORD) {
        eprintln!(
            "k3s: warning: {NODE_PASSWORD} is not in the image; k3s will make a random one and a \
             reflashed node of the same name will be rejected"
        );
    }
    Ok(())
}

/// Enables and starts the role's k3s service; returns its name.
fn enable_service(root: &Root, config: &NodeConfig) -> Result<&'static str, K3sError> {
    let service = match config.node.role {
        Role::Server => "k3s.service",
        Role::Agent => "k3s-agent.service",
    };
    // --no-block: k3s is Type=notify with no start timeout, and signals ready only once it has
    // joined; a join that stalls (a rejected node password) must not hold the agent. The
    // /ping wait bounds how long we look for the server instead.
    command::run(
        root,
        &config.commands.systemctl,
        &["enable", "--now", "--no-block", service],
    )?;
    eprintln!("k3s: enabled {service}");
    Ok(service)
}

/// Waits until `server` answers `/ping`, trusting only its verified CA.
fn wait_for_ping(
    server: &str,
    server_ca: Option<Vec<u8>>,
    deadline: Instant,
    attempts: &mut Attempts,
) -> Result<(), K3sError> {
    // The first server pings itself; its CA is fetched over loopback, where nobody sits in between.
    let trust_pem = match server_ca {
        Some(ca) => ca,
        None => retry_until(deadline, attempts, || {
            fetch_verified_ca(LOCAL_SERVER, None, attempt_timeout(deadline))
        })?,
    };
    let trust = Trust::from_pem(&trust_pem).map_err(|e| K3sError::BadCa {
        server: server.to_owned(),
        source: e,
    })?;
    let ping = format!("{}/ping", server.trim_end_matches('/'));
    retry_until(deadline, attempts, || {
        let r = http::get(&ping, &[], &trust, attempt_timeout(deadline))
            .map_err(|e| K3sError::Waiting(e.to_string()))?;
        if r.status == 200 && r.body.trim_ascii() == b"pong" {
            Ok(())
        } else {
            Err(K3sError::Waiting(format!("{ping}: HTTP {}", r.status)))
        }
    })?;
    eprintln!("k3s: {server} answers /ping");
    Ok(())
}

/// The `config.yaml` for this node. Values are JSON strings, which YAML reads as the same strings.
pub fn render_config(config: &NodeConfig, node_ip: Option<&(String, Option<String>)>) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut y = String::from("# Written by imagegen-firstboot from /etc/imagegen/node.toml.\n");
    if let Some(k3s) = &config.k3s {
        if let Some(url) = &k3s.server_url {
            y.push_str(&format!("server: {}\n", q(url)));
        }
        if config.node.cluster_init {
            y.push_str("cluster-init: true\n");
        }
        if config.node.role == Role::Server && !k3s.tls_san.is_empty() {
            y.push_str("tls-san:\n");
            for san in &k3s.tls_san {
                y.push_str(&format!("  - {}\n", q(san)));
            }
        }
        y.push_str(&format!(
            "token-file: {}\n",
            q(&k3s.token_file.display().to_string())
        ));
    }
    y.push_str(&format!("node-name: {}\n", q(&config.node.name)));
    if let Some((ip, iface)) = node_ip {
        y.push_str(&format!("node-ip: {}\n", q(ip)));
        if let Some(i) = iface {
            y.push_str(&format!("flannel-iface: {}\n", q(i)));
        }
    }
    y
}

/// The local address the kernel would use to reach the server (no packet is sent).
///
/// The socket must be of the server's address family: an IPv4 socket connecting to an IPv6
/// address fails with EAFNOSUPPORT, which once left an IPv6 `server_url` pending forever. The
/// host comes from the same URL parser as the requests, so `[fd00::1]` is the address `fd00::1`.
fn source_address_towards(server: &str) -> Result<String, K3sError> {
    let url = http::parse_url(server).ok_or_else(|| K3sError::BadUrl(server.into()))?;
    let waiting = |e: std::io::Error| K3sError::Waiting(format!("no route to {server}: {e}"));
    let target = *url
        .socket_addrs(|| None)
        .map_err(waiting)?
        .first()
        .ok_or_else(|| waiting(std::io::Error::other("host has no address")))?;
    let any: SocketAddr = if target.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any).map_err(waiting)?;
    s.connect(target).map_err(waiting)?;
    Ok(s.local_addr().map_err(waiting)?.ip().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_forms() {
        let h = "ab".repeat(32);
        assert_eq!(
            token_ca_hash(&format!("K10{h}::server:secret")).unwrap(),
            Some(h.clone())
        );
        assert_eq!(token_ca_hash("justapassword").unwrap(), None);
        assert!(token_ca_hash("K10abc::node:x").is_err());
        assert!(token_ca_hash(&format!("K10{h}:node:x")).is_err());
    }
}
