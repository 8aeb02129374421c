//! The UPS step: on the UPS server, configure NUT (driver, upsd, primary upsmon) and enable it; on
//! every node, enable `imagegen-ups-watch.service`.
//!
//! Who may do what: upsd lets only `upsmon primary` users set FSD (upsd.users(5): `upsmon`
//! "adds the necessary actions"; NUT's net-protocol: FSD needs primary), and FSD powers off every
//! node on the UPS. So the `[ups] user` all nodes share is `upsmon secondary`: a node, or anyone
//! holding its SD card, can watch the UPS and register as powered by it, never shut the cluster
//! down. The one primary is the UPS server's own upsmon, as [`PRIMARY_USER`] with a password made
//! on that node ([`PRIMARY_PASSWORD_PATH`]) that never leaves it.

use std::collections::BTreeMap;
use std::io::Read;

use crate::command::{self, CommandError};
use crate::config::NodeConfig;
use crate::nut::{check_word, quote};
use crate::root::Root;
use crate::zerotier::Joined;

/// The NUT user of the UPS server's own upsmon, the only `upsmon primary`.
pub const PRIMARY_USER: &str = "imagegen-primary";
/// Its password, made on the UPS server on first use (root-only).
pub const PRIMARY_PASSWORD_PATH: &str = "/etc/imagegen/nut-primary-password";

#[derive(Debug, thiserror::Error)]
pub enum UpsError {
    #[error("ups: cannot read password file {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error("ups: password in {path} cannot be used with NUT: {why}")]
    BadPassword { path: String, why: String },
    #[error("ups: cannot make the upsmon primary password: {0}")]
    Random(std::io::Error),
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

/// NUT config files of the UPS server, as (path, content, mode). `password` is the shared
/// secondary user's, `primary_password` the local upsmon's; both must pass
/// [`check_word`](crate::nut::check_word).
pub fn server_files(
    config: &NodeConfig,
    password: &str,
    primary_password: &str,
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
    // Values go through NUT's quoting (see nut::quote): a `#` would start a comment and a space
    // end the word.
    let users = format!(
        "# Written by imagegen-firstboot.\n\
         # The other nodes' ups-watch: may watch and register, never set FSD.\n\
         [{}]\n\tpassword = {}\n\tupsmon secondary\n\
         # This node's own upsmon (upsmon.conf), the only primary.\n\
         [{PRIMARY_USER}]\n\tpassword = {}\n\tupsmon primary\n",
        ups.user,
        quote(password),
        quote(primary_password)
    );
    // upsmon 2.8.0 sends its password unquoted (`PASSWORD %s`, clients/upsmon.c), so it must be
    // one plain word: the generated hex one is.
    let upsmon = format!(
        "# Written by imagegen-firstboot.\n\
         MONITOR {name}@127.0.0.1:{} 1 {PRIMARY_USER} {} primary\n\
         MINSUPPLIES 1\n\
         SHUTDOWNCMD {}\n\
         POLLFREQ 5\nPOLLFREQALERT 5\nHOSTSYNC 15\nDEADTIME {}\nFINALDELAY 5\n\
         POWERDOWNFLAG /etc/killpower\n",
        ups.port,
        quote(primary_password),
        quote(&ups.shutdown_command.join(" ")),
        ups.dead_time_secs
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
    // On the UPS server before ZeroTier has an address: upsd listens on loopback only for now,
    // so this node's own upsmon protects it already; the step stays pending until the address
    // is known and the other nodes can reach upsd.
    let mut waiting = None;
    if ups.primary {
        if config.zerotier.is_some() && zt.is_none() {
            waiting = Some(
                "upsd listens on 127.0.0.1 only (this node is protected) until the ZeroTier \
                 address is known for the other nodes"
                    .to_owned(),
            );
        }
        let pw_path = ups.password_file.display().to_string();
        let password =
            root.read_to_string(&ups.password_file)
                .map_err(|source| UpsError::Password {
                    path: pw_path.clone(),
                    source,
                })?;
        let password = password.trim_end_matches(['\r', '\n']);
        check_word(password).map_err(|why| UpsError::BadPassword {
            path: pw_path.clone(),
            why,
        })?;
        let primary_password = primary_password(root)?;
        let listen = zt.map(|j| j.address.as_str());
        let mut changed = false;
        for (path, content, mode) in server_files(config, password, &primary_password, listen) {
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
    // --no-block: nothing here needs to wait for the watch to be up. Its start job runs now,
    // beside this run, because the watch is not ordered after imagegen-firstboot.service (a
    // blocking start of a unit ordered after the service whose run this is would hang).
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
    match waiting {
        Some(why) => Err(UpsError::Waiting(why)),
        None => Ok(details),
    }
}

/// The local upsmon's password: kept from an earlier run, else made now from the kernel's random
/// source (the real `/dev/urandom`, not under `--root`: it is a device, not a file of the node).
fn primary_password(root: &Root) -> Result<String, UpsError> {
    if let Ok(p) = root.read_to_string(PRIMARY_PASSWORD_PATH) {
        let p = p.trim();
        if p.len() >= 32 && p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(p.to_owned());
        }
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(UpsError::Random)?;
    let p = hex::encode(bytes);
    root.write_atomic(PRIMARY_PASSWORD_PATH, format!("{p}\n").as_bytes(), 0o600)
        .map_err(|source| UpsError::Write {
            path: PRIMARY_PASSWORD_PATH.into(),
            source,
        })?;
    Ok(p)
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
