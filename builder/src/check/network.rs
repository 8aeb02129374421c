//! `[network]` values: addresses with their prefix, gateways inside the subnet, DNS servers,
//! interface names and the Wi-Fi country. The passphrase file is checked with the other secret
//! files (`check::secret_files`, `plan::network`).

use crate::config::{Invalid, Network};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use toml::Spanned;

/// "192.168.1.21/24" -> (address, prefix).
pub fn parse_cidr4(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    Some((a.parse().ok()?, p))
}

/// "fd00::21/64" -> (address, prefix).
pub fn parse_cidr6(s: &str) -> Option<(Ipv6Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok().filter(|p| *p <= 128)?;
    Some((a.parse().ok()?, p))
}

fn same_net4(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

fn same_net6(a: Ipv6Addr, b: Ipv6Addr, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(a) & mask == u128::from(b) & mask
}

/// Every problem of one node's (merged) network settings.
pub fn problems(n: &Network) -> Vec<Invalid> {
    let mut out = Vec::new();
    let mut err = |at: &Spanned<String>, m: String| out.push((at.span(), m));
    let v4 = n.address.as_ref().and_then(|a| {
        let c = parse_cidr4(a.get_ref());
        if c.is_none() {
            err(
                a,
                format!(
                    "network address {:?} is not an IPv4 address with its prefix length, \
                     e.g. \"192.168.1.21/24\"",
                    a.get_ref()
                ),
            );
        }
        c
    });
    let v6 = n.address6.as_ref().and_then(|a| {
        let c = parse_cidr6(a.get_ref());
        if c.is_none() {
            err(
                a,
                format!(
                    "network address6 {:?} is not an IPv6 address with its prefix length, \
                     e.g. \"fd00::21/64\"",
                    a.get_ref()
                ),
            );
        }
        c
    });
    if let Some(g) = &n.gateway {
        match (g.get_ref().parse::<Ipv4Addr>(), &n.address, v4) {
            (Err(_), _, _) => err(
                g,
                format!("network gateway {:?} is not an IPv4 address", g.get_ref()),
            ),
            (Ok(_), None, _) => err(
                g,
                "network gateway without address: with DHCP the gateway comes from the DHCP \
                 server; give address = \"IP/PREFIX\" too"
                    .into(),
            ),
            (Ok(gw), Some(_), Some((a, p))) if !same_net4(gw, a, p) => err(
                g,
                format!(
                    "network gateway {gw} is outside the subnet of address {a}/{p}: the node \
                     could not reach it"
                ),
            ),
            _ => {}
        }
    }
    if let Some(g) = &n.gateway6 {
        match (g.get_ref().parse::<Ipv6Addr>(), &n.address6, v6) {
            (Err(_), _, _) => err(
                g,
                format!("network gateway6 {:?} is not an IPv6 address", g.get_ref()),
            ),
            (Ok(_), None, _) => err(
                g,
                "network gateway6 without address6: router advertisements give it; give \
                 address6 = \"IP/PREFIX\" too"
                    .into(),
            ),
            // A link-local router address is the usual IPv6 gateway, on every subnet.
            (Ok(gw), Some(_), Some((a, p)))
                if !same_net6(gw, a, p) && (gw.segments()[0] & 0xffc0) != 0xfe80 =>
            {
                err(
                    g,
                    format!(
                        "network gateway6 {gw} is outside the subnet of address6 {a}/{p} and not link-local"
                    ),
                )
            }
            _ => {}
        }
    }
    for d in n.dns.iter().flatten() {
        if d.get_ref().parse::<IpAddr>().is_err() {
            err(
                d,
                format!("network dns {:?} is not an IP address", d.get_ref()),
            );
        }
    }
    if let Some(i) = &n.interface {
        let v = i.get_ref();
        // IFNAMSIZ is 16 with the NUL; '/' and whitespace are refused by the kernel
        // (dev_valid_name in net/core/dev.c).
        if v.is_empty()
            || v.len() > 15
            || v == "."
            || v == ".."
            || v.bytes()
                .any(|b| b == b'/' || b == b':' || !b.is_ascii_graphic())
        {
            err(
                i,
                format!("network interface {v:?} is not a Linux interface name"),
            );
        }
    }
    if let Some(w) = &n.wifi {
        let ssid = w.ssid.get_ref();
        if ssid.is_empty() || ssid.len() > 32 {
            err(&w.ssid, format!("wifi ssid {ssid:?} must be 1 to 32 bytes"));
        }
        let c = w.country.get_ref();
        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            err(
                &w.country,
                format!("wifi country {c:?} must be two uppercase letters (ISO 3166), e.g. \"DE\""),
            );
        }
    }
    out
}

/// Why a WPA passphrase cannot be used, or None: WPA-PSK passphrases are 8 to 63 printable
/// ASCII characters (IEEE 802.11i, wpa_supplicant.conf(5) `psk`).
pub fn psk_problem(psk: &[u8]) -> Option<String> {
    if !(8..=63).contains(&psk.len()) {
        return Some(format!(
            "a WPA passphrase has 8 to 63 characters, this has {}",
            psk.len()
        ));
    }
    if !psk.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Some("a WPA passphrase is printable ASCII".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        assert_eq!(
            parse_cidr4("192.168.1.21/24"),
            Some(("192.168.1.21".parse().unwrap(), 24))
        );
        for bad in [
            "192.168.1.21",
            "192.168.1.21/33",
            "192.168.1/24",
            "fd00::1/64",
        ] {
            assert_eq!(parse_cidr4(bad), None, "{bad}");
        }
        assert!(same_net4(
            "192.168.1.1".parse().unwrap(),
            "192.168.1.21".parse().unwrap(),
            24
        ));
        assert!(!same_net4(
            "192.168.2.1".parse().unwrap(),
            "192.168.1.21".parse().unwrap(),
            24
        ));
        assert!(same_net4(
            "10.0.0.1".parse().unwrap(),
            "192.168.1.21".parse().unwrap(),
            0
        ));
        assert!(same_net6(
            "fd00::1".parse().unwrap(),
            "fd00::21".parse().unwrap(),
            64
        ));
        assert!(!same_net6(
            "fd01::1".parse().unwrap(),
            "fd00::21".parse().unwrap(),
            64
        ));
        assert_eq!(psk_problem(b"12345678"), None);
        assert!(psk_problem(b"1234567").is_some());
        assert!(psk_problem(&[b'a'; 64]).is_some());
        assert!(psk_problem("caf\u{e9}1234".as_bytes()).is_some());
    }
}
