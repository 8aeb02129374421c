//! ZeroTier: install the staged package, join by `networks.d/<nwid>.conf`, and wait through the
//! local service API (`GET /network/<nwid>` with `X-ZT1-Auth`) until the network is `OK` with an
//! IPv4 address.

use std::time::{Duration, Instant};

use crate::attempts::Attempts;
use crate::backoff::{Waiting, retry_until};
use crate::command::{self, CommandError};
use crate::config::{CommandsSection, ZeroTierSection};
use crate::http::{self, Trust};
use crate::root::Root;

#[derive(Debug, thiserror::Error)]
pub enum ZeroTierError {
    #[error("zerotier: {0}")]
    Command(#[from] CommandError),
    #[error("zerotier: write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("zerotier: installing the staged package: {0}")]
    Install(String),
    #[error("zerotier: staged package {0} is missing and zerotier-one is not installed")]
    NoPackage(String),
    /// Not an error of ours: the network or the controller is not there yet.
    #[error("zerotier: still waiting: {0}")]
    Waiting(String),
}

impl Waiting for ZeroTierError {
    fn waiting(&self) -> Option<&str> {
        match self {
            ZeroTierError::Waiting(why) => Some(why),
            _ => None,
        }
    }
}

impl ZeroTierError {
    pub fn is_waiting(&self) -> bool {
        self.waiting().is_some()
    }
}

/// What the node got on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// IPv4 address without prefix length.
    pub address: String,
    /// Kernel interface (`portDeviceName`), for `flannel-iface`.
    pub interface: String,
}

const ZT_BINARY: &str = "/usr/sbin/zerotier-one";

/// Joins and waits for an address until `deadline`; every failed poll goes to `attempts`.
pub fn join(
    root: &Root,
    zt: &ZeroTierSection,
    commands: &CommandsSection,
    deadline: Instant,
    attempts: &mut Attempts,
) -> Result<Joined, ZeroTierError> {
    if let Some(pkg) = &zt.package
        && !root.exists(ZT_BINARY)
    {
        if !root.exists(pkg) {
            return Err(ZeroTierError::NoPackage(pkg.display().to_string()));
        }
        eprintln!("zerotier: installing staged package {}", pkg.display());
        crate::packages::install_debs(root, &commands.dpkg, std::slice::from_ref(pkg))
            .map_err(|e| ZeroTierError::Install(e.to_string()))?;
    }
    let conf = zt
        .home
        .join("networks.d")
        .join(format!("{}.conf", zt.network_id));
    // zerotier-one joins every `<nwid>.conf` it finds at start; the content does not matter.
    if root
        .write_atomic(&conf, b"", 0o644)
        .map_err(|source| ZeroTierError::Write {
            path: conf.display().to_string(),
            source,
        })?
    {
        eprintln!("zerotier: wrote {}", conf.display());
    }
    command::run(
        root,
        &commands.systemctl,
        &["enable", "--now", "zerotier-one.service"],
    )?;
    wait_for_address(root, zt, deadline, attempts)
}

fn wait_for_address(
    root: &Root,
    zt: &ZeroTierSection,
    deadline: Instant,
    attempts: &mut Attempts,
) -> Result<Joined, ZeroTierError> {
    let url = format!(
        "{}/network/{}",
        zt.api_url.trim_end_matches('/'),
        zt.network_id
    );
    let token_path = zt.home.join("authtoken.secret");
    let mut posted = false;
    let joined = retry_until(deadline, attempts, || {
        let token = root.read_to_string(&token_path).map_err(|_| {
            ZeroTierError::Waiting("zerotier-one has not written authtoken.secret yet".into())
        })?;
        match poll(&url, token.trim(), &mut posted, deadline) {
            Ok(Poll::Ready(j)) => Ok(j),
            Ok(Poll::NotYet(why)) | Err(why) => Err(ZeroTierError::Waiting(why)),
        }
    })?;
    eprintln!(
        "zerotier: network {} is up: {} on {}",
        zt.network_id, joined.address, joined.interface
    );
    Ok(joined)
}

enum Poll {
    Ready(Joined),
    NotYet(String),
}

fn poll(url: &str, token: &str, posted: &mut bool, deadline: Instant) -> Result<Poll, String> {
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let auth = [("X-ZT1-Auth", token)];
    let r = http::get(url, &auth, &Trust::Plain, timeout).map_err(|e| format!("local API: {e}"))?;
    if r.status == 404 && !*posted {
        // The service was already running when networks.d was written: join through the API.
        *posted = true;
        let j = http::post(url, &auth, b"{}", &Trust::Plain, timeout)
            .map_err(|e| format!("local API join: {e}"))?;
        return Ok(Poll::NotYet(format!("join requested (HTTP {})", j.status)));
    }
    if r.status == 401 {
        return Err("local API refused authtoken.secret (HTTP 401)".into());
    }
    if r.status != 200 {
        return Ok(Poll::NotYet(format!(
            "local API answered HTTP {}",
            r.status
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("local API sent bad JSON: {e}"))?;
    let status = v["status"].as_str().unwrap_or("UNKNOWN");
    if status != "OK" {
        let hint = if status == "ACCESS_DENIED" {
            " (authorize this member in the network controller)"
        } else {
            ""
        };
        return Ok(Poll::NotYet(format!("network status {status}{hint}")));
    }
    let address = v["assignedAddresses"].as_array().and_then(|a| {
        a.iter()
            .filter_map(|x| x.as_str())
            .map(|x| x.split('/').next().unwrap_or(x))
            .find(|x| x.parse::<std::net::Ipv4Addr>().is_ok())
    });
    let interface = v["portDeviceName"].as_str().filter(|s| !s.is_empty());
    match (address, interface) {
        (Some(a), Some(i)) => Ok(Poll::Ready(Joined {
            address: a.to_owned(),
            interface: i.to_owned(),
        })),
        _ => Ok(Poll::NotYet(
            "network OK but no IPv4 address assigned yet".into(),
        )),
    }
}
