//! `[network]` / `[nodes.network]`, written in the format of the stack the family's image
//! brings its interfaces up with (`Family::network`):
//!
//! - NetworkManager keyfiles (Raspberry Pi OS bookworm and trixie). nm-settings-keyfile(5):
//!   ".ini-style format ... located in /etc/NetworkManager/system-connections/ ... it will
//!   ignore files that are readable or writable by any user other than 'root'", so 0600 root;
//!   each section is a setting of nm-settings-nmcli(5) (`connection`, `wifi`, `wifi-security`,
//!   `ipv4`, `ipv6`), values in GLib key file syntax. Raspberry Pi Imager writes its Wi-Fi
//!   the same way (raspberrypi-sys-mods `imager_custom set_wlan`: preconfigured.nmconnection,
//!   `[wifi-security] key-mgmt=wpa-psk psk=...`, chmod 600).
//! - netplan (Ubuntu raspi and cloud): /etc/netplan/*.yaml, `network: {version: 2, ...}`
//!   (netplan(5)); 0600 because netplan warns about and refuses to trust world-readable
//!   files, which hold Wi-Fi passwords. cloud-init, which renders its own netplan file from its
//!   network-config (on Ubuntu raspi the seed's network-config on system-boot, a DHCP fallback
//!   on cloud images), is told to leave the network alone: `network: {config: disabled}` in
//!   /etc/cloud/cloud.cfg.d/ (cloud-init docs, reference/network-config, "Disabling network
//!   configuration"). Our file therefore covers Ethernet too when only Wi-Fi was asked for.
//! - systemd-networkd (Debian 12 genericcloud, Armbian): neither the research notes
//!   (shared/research/vendor-images.md 2.5, 4.5) nor the fixtures say which stack these images
//!   run for certain (Debian 12 cloud images are ifupdown or netplan by release; Armbian's
//!   first-login writes netplan files for networkd or NetworkManager by image flavour).
//!   systemd-networkd ships in both images' systemd package, reads /etc/systemd/network before
//!   any generated /run file of the same or later name (systemd.network(5): files sorted by
//!   name across directories, the first match wins), and works whatever else is installed,
//!   so imagegen enables it and writes `10-imagegen-*.network`; cloud-init is switched off
//!   for the network as above. Wi-Fi goes through wpa_supplicant@IFACE.service
//!   (wpa_supplicant.conf(5)), which the image must ship.
//!
//! The Wi-Fi regulatory domain goes on the Pi kernel command line
//! (`cfg80211.ieee80211_regdom=`, as raspi-config `do_wifi_country` and Imager set it: see
//! `plan::kernel_cmdline`), and on Raspberry Pi OS the radio's rfkill soft block is lifted as
//! raspi-config `do_wifi_country` does: every saved `/var/lib/systemd/rfkill/*:wlan` state set
//! to 0, and NetworkManager's saved `WirelessEnabled=false` (which pi-gen writes when it is
//! given no country, stage2/02-net-tweaks) turned back on.
//!
//! Everything here is the node's (`Kind::Node`): a static address names one node, and a
//! generic image keeps the vendor's DHCP until `personalize` brings the node's settings. A
//! file holding the passphrase is a secret: never hashed into the manifest.

use super::{Kind, NodeSpec, Plan, PlanError};
use crate::check::network::{parse_cidr4, parse_cidr6, psk_problem};
use crate::config::Network;
use crate::distro::{NetworkDefaults, NetworkStack};
use crate::fs::FileType;
use crate::image::{Image, ImageError};
use crate::io::hash::sha256_hex;
use std::net::IpAddr;

pub const NM_DIR: &str = "/etc/NetworkManager/system-connections";
pub const NM_WIRED: &str = "/etc/NetworkManager/system-connections/imagegen-wired.nmconnection";
pub const NM_WIFI: &str = "/etc/NetworkManager/system-connections/imagegen-wifi.nmconnection";
pub const NETPLAN: &str = "/etc/netplan/90-imagegen.yaml";
pub const CLOUD_INIT_NETWORK_OFF: &str = "/etc/cloud/cloud.cfg.d/99-imagegen-network.cfg";
pub const NETWORKD_WIRED: &str = "/etc/systemd/network/10-imagegen-wired.network";
pub const NETWORKD_WIFI: &str = "/etc/systemd/network/10-imagegen-wifi.network";
pub const NETWORKD_OTHER_ETHERNET: &str = "/etc/systemd/network/90-imagegen-ethernet.network";
const NM_STATE: &str = "/var/lib/NetworkManager/NetworkManager.state";
const RFKILL_DIR: &str = "/var/lib/systemd/rfkill";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants";

/// One node's network settings, resolved and checked: what every stack's writer needs.
struct Settings {
    /// The interface the addresses are for.
    interface: String,
    /// The addresses are for the Wi-Fi interface.
    on_wifi: bool,
    address4: Option<String>,
    gateway4: Option<String>,
    address6: Option<String>,
    gateway6: Option<String>,
    dns4: Vec<String>,
    dns6: Vec<String>,
    wifi: Option<WifiSettings>,
}

struct WifiSettings {
    interface: String,
    ssid: String,
    /// None for an open network.
    psk: Option<String>,
    country: String,
    hidden: bool,
}

/// The node's merged `[network]`, or None when the config has none for it (then the image's
/// own network settings stay) or the image is generic.
pub fn merged(spec: &NodeSpec) -> Option<Network> {
    if spec.generic {
        return None;
    }
    let node = spec
        .config
        .nodes
        .iter()
        .find(|n| n.name.get_ref() == spec.name);
    Network::merged(
        spec.config.network.as_ref(),
        node.and_then(|n| n.network.as_ref()),
    )
}

/// The Wi-Fi country for the kernel command line, when the node has Wi-Fi.
pub fn regulatory_domain(spec: &NodeSpec) -> Option<String> {
    merged(spec).and_then(|n| n.wifi.map(|w| w.country.into_inner()))
}

/// The changes that give the node its network settings, in its family's stack. The
/// directories and the systemd-networkd link are public and made whenever the config has
/// network settings, so a generic image has them as a full build does (a seed places files,
/// not links); the files with the settings are the node's.
pub fn plan(image: &mut Image, spec: &NodeSpec, p: &mut Plan) -> Result<(), PlanError> {
    let defaults = spec.vendor.family().network();
    let any =
        spec.config.network.is_some() || spec.config.nodes.iter().any(|n| n.network.is_some());
    if any {
        scaffold(image, defaults.stack, p)?;
    }
    let Some(net) = merged(spec) else {
        return Ok(());
    };
    let s = settings(&net, &defaults, spec)?;
    match defaults.stack {
        NetworkStack::NetworkManager => network_manager(image, &s, spec.name, p),
        NetworkStack::Netplan => {
            netplan(&s, defaults.ethernet, p);
            cloud_init_off(image, p)
        }
        NetworkStack::Networkd => {
            networkd(image, &s, defaults.ethernet, p).and_then(|()| cloud_init_off(image, p))
        }
    }
}

/// Adds the node's file: root's, of `Kind::Node`, a secret when it holds the passphrase.
fn node_file(p: &mut Plan, path: &str, text: String, mode: u32, secret: bool) {
    let change = p.file(path, text.into_bytes(), mode).kind(Kind::Node);
    if secret {
        change.secret();
    }
}

fn scaffold(image: &mut Image, stack: NetworkStack, p: &mut Plan) -> Result<(), PlanError> {
    match stack {
        NetworkStack::NetworkManager => {
            p.dir(NM_DIR, 0o700);
        }
        NetworkStack::Netplan => {
            p.dir("/etc/netplan", 0o755);
        }
        NetworkStack::Networkd => {
            let unit = unit_in(image, "systemd-networkd.service")?.ok_or_else(|| {
                PlanError::Invalid(
                    "[network]: this image has no systemd-networkd.service to apply it with".into(),
                )
            })?;
            p.dir("/etc/systemd/network", 0o755);
            p.dir(WANTS, 0o755);
            p.symlink(&format!("{WANTS}/systemd-networkd.service"), &unit);
        }
    }
    if image.lstat("/etc/cloud")?.is_some() && stack != NetworkStack::NetworkManager {
        p.dir("/etc/cloud/cloud.cfg.d", 0o755);
    }
    Ok(())
}

fn settings(
    net: &Network,
    defaults: &NetworkDefaults,
    spec: &NodeSpec,
) -> Result<Settings, PlanError> {
    // `build` of a config `check` was not run on refuses what `check` refuses.
    if let Some((_, why)) = crate::check::network::problems(net).into_iter().next() {
        return Err(PlanError::Invalid(format!("node {}: {why}", spec.name)));
    }
    let wifi = match &net.wifi {
        None => None,
        Some(w) => {
            let psk = match &w.psk_file {
                None => None,
                Some(f) => {
                    let path = spec.resolve(f.get_ref());
                    let bytes = super::read_secret(&path, "wifi psk_file")?;
                    if let Some(why) = psk_problem(&bytes) {
                        return Err(PlanError::Invalid(format!(
                            "wifi psk_file {}: {why}",
                            path.display()
                        )));
                    }
                    Some(String::from_utf8(bytes).expect("checked printable ASCII"))
                }
            };
            Some(WifiSettings {
                interface: defaults.wifi.to_string(),
                ssid: w.ssid.get_ref().clone(),
                psk,
                country: w.country.get_ref().clone(),
                hidden: w.hidden,
            })
        }
    };
    let interface = net
        .interface
        .as_ref()
        .map_or(defaults.ethernet.to_string(), |i| i.get_ref().clone());
    let on_wifi = wifi.as_ref().is_some_and(|w| w.interface == interface);
    let (mut dns4, mut dns6) = (Vec::new(), Vec::new());
    for d in net.dns.iter().flatten() {
        match d.get_ref().parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => dns4.push(a.to_string()),
            Ok(IpAddr::V6(a)) => dns6.push(a.to_string()),
            Err(_) => unreachable!("checked by check::network::problems"),
        }
    }
    let cidr4 = |a: &String| parse_cidr4(a).map(|(ip, p)| format!("{ip}/{p}"));
    let cidr6 = |a: &String| parse_cidr6(a).map(|(ip, p)| format!("{ip}/{p}"));
    Ok(Settings {
        interface,
        on_wifi,
        address4: net.address.as_ref().and_then(|a| cidr4(a.get_ref())),
        gateway4: net.gateway.as_ref().map(|g| g.get_ref().clone()),
        address6: net.address6.as_ref().and_then(|a| cidr6(a.get_ref())),
        gateway6: net.gateway6.as_ref().map(|g| g.get_ref().clone()),
        dns4,
        dns6,
        wifi,
    })
}

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

// ---- NetworkManager -------------------------------------------------------------------------

fn network_manager(
    image: &mut Image,
    s: &Settings,
    node: &str,
    p: &mut Plan,
) -> Result<(), PlanError> {
    if !s.on_wifi {
        node_file(p, NM_WIRED, nm_wired(s, node), 0o600, false);
    }
    if let Some(w) = &s.wifi {
        node_file(p, NM_WIFI, nm_wifi(s, w, node), 0o600, w.psk.is_some());
        unblock_wifi(image, p)?;
    }
    Ok(())
}

/// The Ethernet profile. `interface-name` takes no glob (nm-settings-nmcli(5)
/// connection.interface-name); a glob goes in `[match] interface-name`.
fn nm_wired(s: &Settings, node: &str) -> String {
    let mut out = nm_header("imagegen-wired", "ethernet", &s.interface, node);
    // Above the profile NetworkManager makes by itself for an unconfigured Ethernet port
    // ("Wired connection 1", priority 0), so this one is chosen.
    out.push_str("autoconnect-priority=10\n\n[ethernet]\n\n");
    nm_ip(&mut out, s);
    nm_match(&mut out, &s.interface);
    out
}

fn nm_wifi(s: &Settings, w: &WifiSettings, node: &str) -> String {
    let mut out = nm_header("imagegen-wifi", "wifi", &w.interface, node);
    out.push_str(&format!(
        "\n[wifi]\nmode=infrastructure\nssid={}\nhidden={}\n\n",
        keyfile_value(&w.ssid),
        w.hidden
    ));
    if let Some(psk) = &w.psk {
        out.push_str(&format!(
            "[wifi-security]\nkey-mgmt=wpa-psk\npsk={}\n\n",
            keyfile_value(psk)
        ));
    }
    if s.on_wifi {
        nm_ip(&mut out, s);
    } else {
        out.push_str("[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n\n");
    }
    nm_match(&mut out, &w.interface);
    out
}

fn nm_header(id: &str, kind: &str, interface: &str, node: &str) -> String {
    let mut out = format!(
        "# Written by imagegen from cluster.toml [network]; see nm-settings-keyfile(5).\n\
         [connection]\nid={id}\nuuid={}\ntype={kind}\n",
        profile_uuid(node, id)
    );
    if !is_glob(interface) {
        out.push_str(&format!("interface-name={interface}\n"));
    }
    out
}

/// A glob interface name, which `connection.interface-name` does not take, as
/// `[match] interface-name` (nm-settings-nmcli(5) match.interface-name: "may contain
/// wildcards").
fn nm_match(out: &mut String, interface: &str) {
    if is_glob(interface) {
        out.push_str(&format!(
            "[match]\ninterface-name={};\n",
            keyfile_value(interface)
        ));
    }
}

/// `[ipv4]` and `[ipv6]`: manual with the static address (`addressN=ADDR/PLEN`, `gateway=`),
/// else DHCP / router advertisements; DNS servers as a `;`-terminated list
/// (nm-settings-keyfile(5)).
fn nm_ip(out: &mut String, s: &Settings) {
    for (section, address, gateway, dns) in [
        ("ipv4", &s.address4, &s.gateway4, &s.dns4),
        ("ipv6", &s.address6, &s.gateway6, &s.dns6),
    ] {
        out.push_str(&format!("[{section}]\n"));
        match address {
            Some(a) => {
                out.push_str(&format!("method=manual\naddress1={a}\n"));
                if let Some(g) = gateway {
                    out.push_str(&format!("gateway={g}\n"));
                }
            }
            None => out.push_str("method=auto\n"),
        }
        if !dns.is_empty() {
            out.push_str(&format!("dns={};\n", dns.join(";")));
        }
        out.push('\n');
    }
}

/// A stable profile UUID per node and profile (RFC 4122 layout, version 5 bits over a SHA-256
/// name hash): a rebuild writes the same profile, as NetworkManager would have kept it.
fn profile_uuid(node: &str, id: &str) -> String {
    let h = sha256_hex(format!("imagegen network profile {node} {id}").as_bytes());
    let mut b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x: String = b.iter().map(|v| format!("{v:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}

/// A GLib key file string value: backslash, newline, tab and carriage return escaped, and a
/// space at either end written `\s`, which the parser would otherwise trim (GLib "Key-value
/// file parser", escape sequences).
pub fn keyfile_value(v: &str) -> String {
    let mut out = String::new();
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\s"),
            c => out.push(c),
        }
    }
    out
}

/// The rfkill soft block on the Pi's radio lifted as raspi-config `do_wifi_country` lifts it
/// (RPi-Distro/raspi-config: `for filename in /var/lib/systemd/rfkill/*:wlan ... echo 0`),
/// and NetworkManager's radio switch on where pi-gen left it off for want of a country.
fn unblock_wifi(image: &mut Image, p: &mut Plan) -> Result<(), PlanError> {
    match image.read_dir(RFKILL_DIR) {
        Ok(entries) => {
            for e in entries {
                if e.name.ends_with(":wlan") && e.stat.file_type == FileType::Regular {
                    let path = format!("{RFKILL_DIR}/{}", e.name);
                    node_file(p, &path, "0\n".into(), 0o644, false);
                }
            }
        }
        Err(ImageError::Fs(crate::fs::FsError::NotFound(_))) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(state) = super::locale::read_optional(image, NM_STATE)?
        && let Some(on) = wireless_enabled(&state)
    {
        node_file(p, NM_STATE, on, 0o644, false);
    }
    Ok(())
}

/// NetworkManager.state with `WirelessEnabled=true`, or None when it is not off.
fn wireless_enabled(state: &str) -> Option<String> {
    let off = |l: &str| {
        l.split_once('=')
            .is_some_and(|(k, v)| k.trim() == "WirelessEnabled" && v.trim() == "false")
    };
    if !state.lines().any(off) {
        return None;
    }
    Some(
        state
            .lines()
            .map(|l| if off(l) { "WirelessEnabled=true" } else { l })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
}

// ---- netplan --------------------------------------------------------------------------------

/// A YAML double-quoted scalar: JSON's string escapes are a subset of YAML's.
fn yq(v: &str) -> String {
    serde_json::to_string(v).expect("a string serializes")
}

fn netplan(s: &Settings, ethernet: &str, p: &mut Plan) {
    let mut y = String::from(
        "# Written by imagegen from cluster.toml [network]; see netplan(5).\n\
         network:\n  version: 2\n",
    );
    if !s.on_wifi {
        y.push_str("  ethernets:\n");
        let id = if is_glob(&s.interface) {
            "imagegen-lan"
        } else {
            &s.interface
        };
        y.push_str(&format!("    {}:\n", yq(id)));
        if is_glob(&s.interface) {
            y.push_str(&format!(
                "      match:\n        name: {}\n",
                yq(&s.interface)
            ));
        }
        netplan_ip(&mut y, s);
        if s.wifi.is_some() {
            // A node on Wi-Fi boots without waiting for an unplugged port.
            y.push_str("      optional: true\n");
        }
    }
    // The family's other Ethernet ports keep DHCP, as in `networkd` below: with cloud-init's
    // network off nothing else configures them. netplan writes one networkd file per ID,
    // `10-netplan-ID.network`, and networkd takes the first by name that matches a link
    // (systemd.network(5)): the `zz-` ID sorts after any interface name, so the port named
    // above keeps its settings.
    if s.on_wifi || s.interface != ethernet {
        if s.on_wifi {
            y.push_str("  ethernets:\n");
        }
        y.push_str(&format!(
            "    \"zz-imagegen-other-ethernet\":\n      match:\n        name: {}\n      \
             dhcp4: true\n      optional: true\n",
            yq(ethernet)
        ));
    }
    if let Some(w) = &s.wifi {
        if is_glob(&w.interface) {
            y.push_str(&format!(
                "  wifis:\n    \"imagegen-wlan\":\n      match:\n        name: {}\n",
                yq(&w.interface)
            ));
        } else {
            y.push_str(&format!("  wifis:\n    {}:\n", yq(&w.interface)));
        }
        if s.on_wifi {
            netplan_ip(&mut y, s);
        } else {
            y.push_str("      dhcp4: true\n");
        }
        y.push_str(&format!(
            "      regulatory-domain: {}\n      access-points:\n        {}:\n",
            yq(&w.country),
            yq(&w.ssid)
        ));
        if let Some(psk) = &w.psk {
            y.push_str(&format!("          password: {}\n", yq(psk)));
        }
        if w.hidden {
            y.push_str("          hidden: true\n");
        }
    }
    let secret = s.wifi.as_ref().is_some_and(|w| w.psk.is_some());
    node_file(p, NETPLAN, y, 0o600, secret);
}

fn netplan_ip(y: &mut String, s: &Settings) {
    y.push_str(&format!("      dhcp4: {}\n", s.address4.is_none()));
    let addresses: Vec<String> = [&s.address4, &s.address6]
        .into_iter()
        .flatten()
        .map(|a| yq(a))
        .collect();
    if !addresses.is_empty() {
        y.push_str(&format!("      addresses: [{}]\n", addresses.join(", ")));
    }
    let gateways: Vec<&String> = [&s.gateway4, &s.gateway6].into_iter().flatten().collect();
    if !gateways.is_empty() {
        y.push_str("      routes:\n");
        for g in gateways {
            y.push_str(&format!(
                "        - to: default\n          via: {}\n",
                yq(g)
            ));
        }
    }
    let dns: Vec<String> = s.dns4.iter().chain(&s.dns6).map(|d| yq(d)).collect();
    if !dns.is_empty() {
        y.push_str(&format!(
            "      nameservers:\n        addresses: [{}]\n",
            dns.join(", ")
        ));
    }
}

/// cloud-init renders no network configuration of its own, where the image has cloud-init.
fn cloud_init_off(image: &mut Image, p: &mut Plan) -> Result<(), PlanError> {
    if image.lstat("/etc/cloud")?.is_some() {
        let text = "# Written by imagegen: the network comes from cluster.toml [network], not \
                    from\n# cloud-init's network-config (cloud-init docs: Disabling network \
                    configuration).\nnetwork: {config: disabled}\n";
        node_file(p, CLOUD_INIT_NETWORK_OFF, text.into(), 0o644, false);
    }
    Ok(())
}

// ---- systemd-networkd -----------------------------------------------------------------------

fn networkd(
    image: &mut Image,
    s: &Settings,
    ethernet: &str,
    p: &mut Plan,
) -> Result<(), PlanError> {
    if !(s.dns4.is_empty() && s.dns6.is_empty())
        && unit_in(image, "systemd-resolved.service")?.is_none()
    {
        return Err(PlanError::Invalid(
            "[network] dns: systemd-networkd hands DNS servers to systemd-resolved, which this \
             image lacks; leave dns out (DHCP gives the servers) or use an image with \
             systemd-resolved"
                .into(),
        ));
    }
    if !s.on_wifi {
        let text = networkd_file(&s.interface, s, true, s.wifi.is_some());
        node_file(p, NETWORKD_WIRED, text, 0o644, false);
    }
    // The family's other Ethernet ports keep DHCP. With cloud-init's network off nothing else
    // configures them (cloud-init's fallback, DHCP on the first port, is no longer rendered:
    // on the Debian 12 test base its `50-cloud-init` ifupdown stanza), so a static address on a second port, or a node on Wi-Fi,
    // would otherwise lose the port it is reached through. networkd applies the first
    // file by name that matches a link (systemd.network(5)), so `10-imagegen-wired` keeps its
    // port and this `90-` file takes the rest.
    if s.on_wifi || s.interface != ethernet {
        let text = format!(
            "# Written by imagegen: Ethernet ports [network] does not name keep DHCP, as\n\
             # cloud-init's fallback gave them; see systemd.network(5).\n\
             [Match]\nName={ethernet}\n\n[Network]\nDHCP=ipv4\n"
        );
        node_file(p, NETWORKD_OTHER_ETHERNET, text, 0o644, false);
    }
    if let Some(w) = &s.wifi {
        if is_glob(&w.interface) {
            return Err(PlanError::Invalid(format!(
                "[network] wifi: the Wi-Fi interface of this image is not known ({}), and \
                 wpa_supplicant@.service needs its name",
                w.interface
            )));
        }
        let template = unit_in(image, "wpa_supplicant@.service")?.ok_or_else(|| {
            PlanError::Invalid(
                "[network] wifi: this image has no wpa_supplicant@.service (package \
                 wpasupplicant) to join the network with"
                    .into(),
            )
        })?;
        let text = networkd_file(&w.interface, s, s.on_wifi, false);
        node_file(p, NETWORKD_WIFI, text, 0o644, false);
        p.dir("/etc/wpa_supplicant", 0o755);
        let conf = format!("/etc/wpa_supplicant/wpa_supplicant-{}.conf", w.interface);
        node_file(p, &conf, wpa_supplicant_conf(w), 0o600, w.psk.is_some());
        // A link, which a seed cannot place: `personalize` refuses a Wi-Fi node of this stack
        // and says to build it in full.
        p.as_kind(Kind::Node, |p| {
            p.symlink(
                &format!("{WANTS}/wpa_supplicant@{}.service", w.interface),
                &template,
            )
        });
    }
    Ok(())
}

/// A `.network` file (systemd.network(5)) for `interface`: the static settings when `with_ip`,
/// else DHCP.
fn networkd_file(interface: &str, s: &Settings, with_ip: bool, optional: bool) -> String {
    let mut out = format!(
        "# Written by imagegen from cluster.toml [network]; see systemd.network(5).\n\
         [Match]\nName={interface}\n\n"
    );
    if optional {
        out.push_str("[Link]\nRequiredForOnline=no\n\n");
    }
    out.push_str("[Network]\n");
    if !with_ip {
        out.push_str("DHCP=ipv4\n");
        return out;
    }
    out.push_str(match (&s.address4, &s.address6) {
        (None, _) => "DHCP=ipv4\n",
        (Some(_), _) => "DHCP=no\n",
    });
    for a in [&s.address4, &s.address6].into_iter().flatten() {
        out.push_str(&format!("Address={a}\n"));
    }
    for g in [&s.gateway4, &s.gateway6].into_iter().flatten() {
        out.push_str(&format!("Gateway={g}\n"));
    }
    for d in s.dns4.iter().chain(&s.dns6) {
        out.push_str(&format!("DNS={d}\n"));
    }
    out
}

/// wpa_supplicant.conf(5): the SSID as hex (any bytes, no quoting), the passphrase quoted
/// (wpa_supplicant takes a quoted value up to its last `"`), `scan_ssid=1` for a hidden one.
fn wpa_supplicant_conf(w: &WifiSettings) -> String {
    let ssid: String = w.ssid.bytes().map(|b| format!("{b:02x}")).collect();
    let mut out = format!(
        "# Written by imagegen from cluster.toml [network] wifi; see wpa_supplicant.conf(5).\n\
         ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev\nupdate_config=0\ncountry={}\n\
         network={{\n\tssid={ssid}\n",
        w.country
    );
    if w.hidden {
        out.push_str("\tscan_ssid=1\n");
    }
    match &w.psk {
        Some(psk) => out.push_str(&format!("\tkey_mgmt=WPA-PSK\n\tpsk=\"{psk}\"\n")),
        None => out.push_str("\tkey_mgmt=NONE\n"),
    }
    out.push_str("}\n");
    out
}

/// Where the image has unit `name` (Debian's merged /usr: /usr/lib first), if it has it.
fn unit_in(image: &mut Image, name: &str) -> Result<Option<String>, PlanError> {
    for dir in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        let path = format!("{dir}/{name}");
        if image
            .lstat(&path)?
            .is_some_and(|s| s.file_type == FileType::Regular)
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyfile_escapes() {
        assert_eq!(keyfile_value("home net"), "home net");
        assert_eq!(keyfile_value(" a\\b "), "\\sa\\\\b\\s");
        assert_eq!(keyfile_value("x\ny"), "x\\ny");
    }

    #[test]
    fn uuids_are_stable_and_rfc4122() {
        let u = profile_uuid("pi4-a", "imagegen-wired");
        assert_eq!(u, profile_uuid("pi4-a", "imagegen-wired"));
        assert_ne!(u, profile_uuid("pi4-b", "imagegen-wired"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "5");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }

    #[test]
    fn nm_state_radio_switch() {
        assert_eq!(
            wireless_enabled("[main]\nWirelessEnabled=false\n").as_deref(),
            Some("[main]\nWirelessEnabled=true\n")
        );
        assert_eq!(wireless_enabled("[main]\nWirelessEnabled=true\n"), None);
        assert_eq!(wireless_enabled("[main]\nNetworkingEnabled=true\n"), None);
    }

    #[test]
    fn wpa_supplicant_quotes_nothing_it_cannot() {
        let w = WifiSettings {
            interface: "wlan0".into(),
            ssid: "my \"net\"".into(),
            psk: Some("pass\"word1".into()),
            country: "DE".into(),
            hidden: true,
        };
        let c = wpa_supplicant_conf(&w);
        assert!(c.contains("\tssid=6d7920226e657422\n"), "{c}");
        assert!(c.contains("\tpsk=\"pass\"word1\"\n"), "{c}");
        assert!(c.contains("\tscan_ssid=1\n") && c.contains("country=DE\n"));
    }
}
