//! The UPS step: on the UPS server, configure NUT (driver, upsd, primary upsmon) and enable it; on
//! every node, enable `imagegen-ups-watch.service`.

use std::collections::BTreeMap;

use crate::command::{self, CommandError};
use crate::config::NodeConfig;
use crate::root::Root;
use crate::zerotier::Joined;

#[derive(Debug, thiserror::Error)]
pub enum UpsError {
    #[error("ups: cannot read password file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "ups: password in {0} contains a quote, newline or backslash, which NUT config files cannot hold"
    )]
    BadPassword(String),
    #[error("ups: write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("ups: {0}")]
    Command(#[from] CommandError),
    #[error("ups: still waiting: {0}")]
    Waiting(String),
}

impl UpsError {
    pub fn is_waiting(&self) -> bool {
        matches!(self, UpsError::Waiting(_))
    }
}

/// NUT config files of the UPS server, as (path, content, mode).
pub fn server_files(
    config: &NodeConfig,
    password: &str,
    listen: Option<&str>,
) -> Vec<(&'static str, String, u32)> {
    let Some(ups) = &config.ups else {
        return Vec::new();
    };
    let name = &ups.ups;
    let ups_conf = format!(
        "# Written by imagegen-firstboot.\n[{name}]\n\tdriver = {}\n\tport = {}\n\tdesc = \"{} UPS\"\n",
        ups.driver.as_deref().unwrap_or(""),
        ups.driver_port.as_deref().unwrap_or("auto"),
        config.node.cluster
    );
    // NUT 2.8.0 (Debian 12) binds the LISTEN lines in reverse file order and aborts only when the
    // one it tries first, the LAST line, cannot bind; failures of the others are logged and never
    // retried (verified against upsd 2.8.0 in tests/ups_watch.rs). So loopback goes last. The VPN
    // address binds even before ZeroTier is up thanks to ip_nonlocal_bind.
    let mut upsd_conf = String::from("# Written by imagegen-firstboot.\n");
    if let Some(addr) = listen {
        upsd_conf.push_str(&format!("LISTEN {addr} {}\n", ups.port));
    }
    upsd_conf.push_str(&format!("LISTEN 127.0.0.1 {}\n", ups.port));
    let users = format!(
        "# Written by imagegen-firstboot.\n[{}]\n\tpassword = {password}\n\tupsmon primary\n",
        ups.user
    );
    let shutdown: Vec<String> = ups.shutdown_command.clone();
    let upsmon = format!(
        "# Written by imagegen-firstboot.\n\
         MONITOR {name}@127.0.0.1:{} 1 {} \"{password}\" primary\n\
         MINSUPPLIES 1\n\
         SHUTDOWNCMD \"{}\"\n\
         POLLFREQ 5\nPOLLFREQALERT 5\nHOSTSYNC 15\nDEADTIME 15\nFINALDELAY 5\n\
         POWERDOWNFLAG /etc/killpower\n",
        ups.port,
        ups.user,
        shutdown.join(" ")
    );
    vec![
        ("/etc/nut/ups.conf", ups_conf, 0o640),
        ("/etc/nut/upsd.conf", upsd_conf, 0o640),
        ("/etc/nut/upsd.users", users, 0o640),
        ("/etc/nut/upsmon.conf", upsmon, 0o640),
        ("/etc/nut/nut.conf", "MODE=netserver\n".into(), 0o644),
        (
            "/etc/sysctl.d/60-imagegen-nut-listen.conf",
            "# upsd must bind the ZeroTier address even when it starts before ZeroTier.\n\
             net.ipv4.ip_nonlocal_bind = 1\n"
                .into(),
            0o644,
        ),
    ]
}

pub fn setup(
    root: &Root,
    config: &NodeConfig,
    zt: Option<&Joined>,
) -> Result<BTreeMap<String, String>, UpsError> {
    let Some(ups) = &config.ups else {
        return Ok(BTreeMap::new());
    };
    let mut details = BTreeMap::new();
    let systemctl = &config.commands.systemctl;
    if ups.primary {
        if config.zerotier.is_some() && zt.is_none() {
            return Err(UpsError::Waiting(
                "upsd listens on the ZeroTier address, which is not known yet".into(),
            ));
        }
        let pw_path = ups.password_file.display().to_string();
        let password =
            root.read_to_string(&ups.password_file)
                .map_err(|source| UpsError::Password {
                    path: pw_path.clone(),
                    source,
                })?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.contains(['"', '\\', '\n']) {
            return Err(UpsError::BadPassword(pw_path));
        }
        let listen = zt.map(|j| j.address.as_str());
        let mut changed = false;
        for (path, content, mode) in server_files(config, password, listen) {
            changed |= root
                .write_atomic(path, content.as_bytes(), mode)
                .map_err(|source| UpsError::Write {
                    path: path.into(),
                    source,
                })?;
            set_group(root, path, mode);
        }
        let units = ["nut-server.service", "nut-monitor.service"];
        command::run(
            root,
            systemctl,
            &[&["enable", "--now"][..], &units].concat(),
        )?;
        if changed {
            command::run(root, systemctl, &[&["restart"][..], &units].concat())?;
            eprintln!("ups: NUT server configured for {}", ups.ups);
        }
        if let Some(l) = listen {
            details.insert("listen".into(), l.into());
        }
    }
    // The unit is ordered after imagegen-firstboot.service, whose run this is: a blocking start
    // would wait for this very run to end, and hang until systemd kills it.
    command::run(
        root,
        systemctl,
        &[
            "enable",
            "--now",
            "--no-block",
            "imagegen-ups-watch.service",
        ],
    )?;
    details.insert(
        "watching".into(),
        format!("{}@{}:{}", ups.ups, ups.host, ups.port),
    );
    Ok(details)
}

/// NUT's daemons run as group `nut` and must read the 0640 files; ownership only changes when the
/// tree has that group (so tests in a temp tree stay unprivileged).
fn set_group(root: &Root, path: &str, mode: u32) {
    if mode & 0o040 == 0 {
        return;
    }
    let gid = root.read_to_string("/etc/group").ok().and_then(|g| {
        g.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some("nut")).then(|| f.nth(1)?.parse::<u32>().ok())?
        })
    });
    if let Some(gid) = gid
        && let Err(e) = std::os::unix::fs::chown(root.path(path), Some(0), Some(gid))
    {
        eprintln!("ups: cannot give {path} to group nut: {e}");
    }
}
