//! `[wireguard]` with `after_debs`: the tunnel of a node whose base lacks wireguard-tools
//! (Raspberry Pi OS Lite, Armbian), brought up once the agent's debs step installed the
//! staged package.
//!
//! Why the agent does it, and not the image or the package:
//! - A `multi-user.target.wants/wg-quick@wg0.service` link made at build time would name a unit
//!   whose template does not exist at boot; systemd cannot add a start job for a unit it does
//!   not find, and a failed `Wants=` dependency is dropped without effect on the rest
//!   (systemd.unit(5), `Wants=`). dpkg runs later in the same boot, and nothing starts the
//!   target's wants again.
//! - wireguard-tools' maintainer scripts do not enable or start it: Debian's postinst
//!   (wireguard-tools 1.0.20210914-1+b1, read with `dpkg-deb -e`) runs `systemctl
//!   daemon-reload` and starts `wg-quick.target` alone; `wg-quick@.service` is only
//!   `PartOf=wg-quick.target`, which carries stop and restart, never start.
//!
//! So after the packages are in, `systemctl enable` links the unit where the package put it
//! (and reloads systemd), and `--now` starts it.

use std::collections::BTreeMap;

use crate::command::{self, CommandError};
use crate::config::{CommandsSection, WireGuardSection};
use crate::root::Root;

/// The wg-quick unit of `wg`'s interface.
pub fn unit(wg: &WireGuardSection) -> String {
    format!("wg-quick@{}.service", wg.interface)
}

/// Enables and starts the tunnel; the unit's name is the step's result.
pub fn bring_up(
    root: &Root,
    wg: &WireGuardSection,
    commands: &CommandsSection,
) -> Result<BTreeMap<String, String>, CommandError> {
    let unit = unit(wg);
    // --no-block: Debian's wg-quick@.service sets WG_ENDPOINT_RESOLUTION_RETRIES=infinity, so
    // `wg-quick up` retries a peer's endpoint name for as long as DNS does not answer, and a
    // blocking start would hold this run with it. k3s is ordered after the unit (the
    // builder's drop-in), so its start, queued later, still waits for the tunnel's.
    command::run(
        root,
        &commands.systemctl,
        &["enable", "--now", "--no-block", &unit],
    )?;
    eprintln!("wireguard: {unit} enabled and started");
    Ok(BTreeMap::from([("enabled".to_owned(), unit)]))
}
