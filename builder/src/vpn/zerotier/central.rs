//! Pre-authorizing the nodes' members at build time, so a node joins its ZeroTier network on
//! first boot without a person approving it, at the VPN address the cluster config expects.
//!
//! The API is ZeroTier Central's member API, which a self-hosted controller front end may also
//! speak (`[zerotier] api_url`). From the Central API's OpenAPI document
//! (<https://docs.zerotier.com/openapi/central/v1.json>, server `https://api.zerotier.com/api/v1`):
//! every request carries `Authorization: token <API token>`, and
//! `POST /network/{networkID}/member/{memberID}` with `{"name": ..., "config": {"authorized":
//! true, "ipAssignments": [...]}}` creates or updates the member, answering 200 with the member
//! as JSON, 401/403 for a token that may not, 404 for a network it does not know. The member
//! may be posted before the node ever joins, and posting the same body again changes nothing,
//! so a rebuild simply posts again.
//!
//! When: for every node of the build, before its image is built. The point is that the member
//! is authorized, and has the address `server_url` names, before any node boots; a rejected
//! token then costs seconds rather than a whole build, and no image is written whose node
//! would boot into ZeroTier's ACCESS_DENIED. Authorizing a member whose image then fails to
//! build does no harm: its identity is kept in the state directory, so the next build is the
//! same member and posts the same thing.

use crate::config::{ClusterConfig, Invalid};
use crate::fetch::{self, FetchError, FetchOptions};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// ZeroTier Central's API, the default `api_url`.
pub const DEFAULT_API_URL: &str = "https://api.zerotier.com";

#[derive(Debug, thiserror::Error)]
pub enum CentralError {
    #[error("zerotier api_token_file {path}: {why}")]
    Token { path: PathBuf, why: String },
    #[error(
        "ZeroTier API {api} refused the token in {token_file} (HTTP {status}: {text}); make an \
         API token in ZeroTier Central (Account, API Access Tokens) for the account that owns \
         network {network} and put it in that file"
    )]
    Refused {
        api: String,
        token_file: PathBuf,
        status: u16,
        text: String,
        network: String,
    },
    #[error(
        "ZeroTier API {api} knows no network {network} (HTTP 404: {text}); check [zerotier] \
         network_id, and that the token's account owns the network"
    )]
    NoNetwork {
        api: String,
        network: String,
        text: String,
    },
    #[error("ZeroTier API {url} answered HTTP {status}: {text}")]
    Status {
        url: String,
        status: u16,
        text: String,
    },
    #[error(
        "ZeroTier API {url} answered but did not authorize member {member}: {text}; approve it \
         by hand in ZeroTier Central"
    )]
    NotAuthorized {
        url: String,
        member: String,
        text: String,
    },
    #[error(
        "cannot reach the ZeroTier API: {0}; check the network, or build with --offline and \
         approve the members by hand in ZeroTier Central"
    )]
    Unreachable(String),
    #[error(transparent)]
    Identity(#[from] super::ZeroTierError),
}

/// What `check` says of `[zerotier] api_url` and, without `[wireguard]` (which checks its
/// own), of the nodes' `vpn_address`. A ZeroTier network's address ranges are its
/// controller's, not known offline, so an address need only be an IP, and one node's.
pub fn problems(c: &ClusterConfig) -> Vec<Invalid> {
    let mut errs = Vec::new();
    let Some(z) = &c.zerotier else {
        return errs;
    };
    if let Some(u) = &z.api_url
        && let Some(why) = api_url_problem(u.get_ref())
    {
        errs.push((
            u.span(),
            format!("zerotier api_url {:?}: {why}", u.get_ref()),
        ));
    }
    if c.wireguard.is_some() {
        return errs;
    }
    let mut taken: Vec<IpAddr> = Vec::new();
    for n in &c.nodes {
        let Some(a) = &n.vpn_address else { continue };
        match a.get_ref().parse::<IpAddr>() {
            Ok(ip) if taken.contains(&ip) => {
                errs.push((a.span(), format!("vpn_address {ip} is given to two nodes")))
            }
            Ok(ip) => taken.push(ip),
            Err(_) => errs.push((
                a.span(),
                format!(
                    "vpn_address {:?} is not an IP address (one of the ZeroTier network's, \
                     e.g. \"10.147.17.10\")",
                    a.get_ref()
                ),
            )),
        }
    }
    errs
}

/// The API token would cross the network in the clear: `api_url` is http:// to another host
/// than this one.
pub fn plain_http_warning(z: &crate::config::ZeroTier) -> Option<String> {
    let u = z.api_url.as_ref()?;
    let url = url::Url::parse(u.get_ref()).ok()?;
    let local = match url.host()? {
        url::Host::Domain(d) => d == "localhost",
        url::Host::Ipv4(a) => a.is_loopback(),
        url::Host::Ipv6(a) => a.is_loopback(),
    };
    (url.scheme() == "http" && z.api_token_file.is_some() && !local).then(|| {
        format!(
            "zerotier api_url {} is plain http: the API token would cross the network \
             unencrypted; use https",
            u.get_ref()
        )
    })
}

fn api_url_problem(u: &str) -> Option<String> {
    let url = match url::Url::parse(u) {
        Ok(url) => url,
        Err(e) => return Some(format!("not a URL ({e})")),
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Some("must be an http:// or https:// URL, \"https://api.zerotier.com\"".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("must not carry credentials: the token goes in api_token_file".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Some("must not have a query or fragment".into());
    }
    if url.path().trim_end_matches('/').ends_with("/api/v1") {
        return Some("give the base without /api/v1 (imagegen adds it)".into());
    }
    None
}

/// What is wrong with an API token file's bytes: none, or more than one token. The token
/// itself is never part of the answer.
pub fn token_problem(bytes: &[u8]) -> Option<String> {
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Some("is empty; put the API token from ZeroTier Central in it".into());
    }
    // It becomes an HTTP header value: visible ASCII only, one line.
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Some(
            "holds more than one word or a character no API token has; it must hold the token \
             alone"
                .into(),
        );
    }
    None
}

/// One node's member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: String,
    /// The 10-hex-digit member address.
    pub address: String,
    /// `[[nodes]] vpn_address`.
    pub vpn_address: Option<String>,
}

/// The members of `nodes`, their identities made in the state directory if new.
pub fn members(
    c: &ClusterConfig,
    state_dir: &Path,
    nodes: &[&str],
) -> Result<Vec<Member>, CentralError> {
    nodes
        .iter()
        .map(|&node| {
            let id = super::load_or_create(state_dir, node)?;
            let vpn_address = c
                .nodes
                .iter()
                .find(|n| n.name.get_ref() == node)
                .and_then(|n| n.vpn_address.as_ref())
                .map(|a| a.get_ref().clone());
            Ok(Member {
                node: node.to_string(),
                address: id.address().to_string(),
                vpn_address,
            })
        })
        .collect()
}

/// Authorizes the members of `nodes` when `[zerotier]` has an `api_token_file` and the build
/// may use the network; otherwise returns the one line to say once the images are written:
/// that the members wait for a person, and which they are. Nothing to do without
/// `[zerotier]`.
pub fn preauthorize(
    c: &ClusterConfig,
    config_dir: &Path,
    state_dir: &Path,
    nodes: &[&str],
    fetch: &FetchOptions,
) -> Result<Option<String>, CentralError> {
    let Some(z) = &c.zerotier else {
        return Ok(None);
    };
    if nodes.is_empty() {
        return Ok(None);
    }
    let network = z.network_id.get_ref().to_ascii_lowercase();
    let members = members(c, state_dir, nodes)?;
    let token_file = match (&z.api_token_file, fetch.offline) {
        (Some(t), false) => config_dir.join(t.get_ref()),
        (token, offline) => {
            let why = if offline {
                "--offline"
            } else {
                debug_assert!(token.is_none());
                "no [zerotier] api_token_file"
            };
            let list: Vec<String> = members
                .iter()
                .map(|m| format!("{} ({})", m.address, m.node))
                .collect();
            return Ok(Some(format!(
                "ZeroTier: not pre-authorized ({why}): approve member {} by hand in ZeroTier \
                 Central, network {network}",
                list.join(", ")
            )));
        }
    };
    let token = read_token(&token_file)?;
    let api = z
        .api_url
        .as_ref()
        .map_or(DEFAULT_API_URL, |u| u.get_ref())
        .trim_end_matches('/')
        .to_string();
    for m in &members {
        authorize(&api, &network, &token, &token_file, m, fetch)?;
        eprintln!(
            "node {}: ZeroTier member {} authorized in network {network}{}",
            m.node,
            m.address,
            m.vpn_address
                .as_deref()
                .map(|a| format!(" at {a}"))
                .unwrap_or_default()
        );
    }
    Ok(None)
}

fn read_token(path: &Path) -> Result<String, CentralError> {
    let err = |why: String| CentralError::Token {
        path: path.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if let Some(why) = token_problem(&bytes) {
        return Err(err(why));
    }
    Ok(String::from_utf8_lossy(bytes.trim_ascii()).into_owned())
}

/// The member's JSON: named after the node; with a `vpn_address`, that address and no other
/// (`noAutoAssignIps`), since the agent gives k3s the node's ZeroTier address as node-ip and
/// `server_url` names the master's.
pub fn body(m: &Member) -> serde_json::Value {
    let mut config = serde_json::json!({ "authorized": true });
    if let Some(a) = &m.vpn_address {
        config["ipAssignments"] = serde_json::json!([a]);
        config["noAutoAssignIps"] = serde_json::json!(true);
    }
    serde_json::json!({ "name": m.node, "config": config })
}

fn authorize(
    api: &str,
    network: &str,
    token: &str,
    token_file: &Path,
    m: &Member,
    fetch: &FetchOptions,
) -> Result<(), CentralError> {
    let url = format!("{api}/api/v1/network/{network}/member/{}", m.address);
    let body = serde_json::to_vec(&body(m)).expect("JSON of strings and bools");
    let answer = fetch::post_json(fetch, &url, &format!("token {token}"), &body).map_err(|e| {
        CentralError::Unreachable(match e {
            FetchError::Network {
                url,
                reason,
                attempts,
            } => format!("{url}: {reason} (after {attempts} attempt(s))"),
            FetchError::TimedOut {
                url,
                phase,
                limit,
                attempts,
            } => {
                format!("{url}: no answer within {limit:?} ({phase}), after {attempts} attempt(s)")
            }
            other => other.to_string(),
        })
    })?;
    let text = error_text(&answer.body, token);
    match answer.status {
        200..=299 => {
            // A controller that answers with the member says whether it took; one that
            // answers otherwise is believed.
            let member: Option<serde_json::Value> = serde_json::from_str(&answer.body).ok();
            match member
                .as_ref()
                .and_then(|v| v["config"]["authorized"].as_bool())
            {
                Some(false) => Err(CentralError::NotAuthorized {
                    url,
                    member: m.address.clone(),
                    text,
                }),
                _ => Ok(()),
            }
        }
        401 | 403 => Err(CentralError::Refused {
            api: api.to_string(),
            token_file: token_file.to_path_buf(),
            status: answer.status,
            text,
            network: network.to_string(),
        }),
        404 => Err(CentralError::NoNetwork {
            api: api.to_string(),
            network: network.to_string(),
            text,
        }),
        status => Err(CentralError::Status { url, status, text }),
    }
}

/// What an API's error body says, on one short line: its `message` or `error` when it is JSON,
/// else the text itself. A server that echoes the token does not get it into our messages.
fn error_text(body: &str, token: &str) -> String {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let said = json
        .as_ref()
        .and_then(|v| {
            ["message", "error"]
                .iter()
                .find_map(|k| v[*k].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| body.to_string());
    let line = said.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = line.replace(token, "[token]");
    let mut short: String = line.chars().take(200).collect();
    if short.len() < line.len() {
        short.push_str("...");
    }
    if short.is_empty() {
        short = "no message".into();
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls() {
        assert_eq!(api_url_problem("https://api.zerotier.com"), None);
        assert_eq!(api_url_problem("http://10.0.0.5:3000/"), None);
        for bad in [
            "api.zerotier.com",
            "ftp://h/",
            "https://u:p@h/",
            "https://h/?a=1",
            "https://api.zerotier.com/api/v1",
        ] {
            assert!(api_url_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn plain_http_is_warned_of_unless_local() {
        let warned = |url: &str| {
            let text = format!(
                "network_id = \"8056c2e21c000001\"\napi_token_file = \"t\"\napi_url = \"{url}\""
            );
            let z: crate::config::ZeroTier = toml::from_str(&text).unwrap();
            plain_http_warning(&z).is_some()
        };
        assert!(warned("http://ztnet.lan:3000"));
        assert!(!warned("https://ztnet.lan"));
        assert!(!warned("http://127.0.0.1:3000"));
        assert!(!warned("http://localhost:3000"));
    }

    #[test]
    fn tokens() {
        assert_eq!(token_problem(b"  abcDEF123\n"), None);
        assert!(token_problem(b"\n").is_some());
        assert!(token_problem(b"one two").is_some());
        assert!(token_problem(b"a\nb").is_some());
    }

    #[test]
    fn error_text_is_one_short_line_without_the_token() {
        assert_eq!(
            error_text("{\"message\":\"bad token s3cr3t\"}", "s3cr3t"),
            "bad token [token]"
        );
        assert_eq!(error_text("Not\n  Found\n", "x"), "Not Found");
        assert_eq!(error_text("", "x"), "no message");
        assert!(error_text(&"a".repeat(500), "x").len() < 210);
    }

    #[test]
    fn body_names_the_node_and_pins_the_address() {
        let m = Member {
            node: "master".into(),
            address: "0123456789".into(),
            vpn_address: Some("10.147.17.10".into()),
        };
        assert_eq!(
            body(&m),
            serde_json::json!({"name": "master", "config": {"authorized": true,
                "ipAssignments": ["10.147.17.10"], "noAutoAssignIps": true}})
        );
        let m = Member {
            vpn_address: None,
            ..m
        };
        assert_eq!(
            body(&m),
            serde_json::json!({"name": "master", "config": {"authorized": true}})
        );
    }
}
