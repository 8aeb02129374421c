//! Where the cluster's servers are, for what only servers may reach on each other: etcd.
//!
//! Embedded etcd listens on 2379 (clients) and 2380 (peers) on every server, and only the other
//! servers talk to it there (k3s docs, "Requirements", Inbound Rules: 2379-2380 "Required only
//! for HA with embedded etcd", source "Servers"). etcd advertises the server's node-ip, so the
//! servers' `address` in cluster.toml is what its peers' connections come from, provided it is
//! the address k3s runs on: the ZeroTier address when the cluster has ZeroTier (the agent sets
//! node-ip to it), the LAN address otherwise.

use crate::config::{ClusterConfig, Role};
use std::net::IpAddr;

/// The addresses of the servers other than `node`, or the names of the servers (`node`
/// excepted) whose `address` is not an IP address, when any is not: a host name could resolve
/// to anything by the time the firewall loads, so it opens nothing.
pub fn other_server_addresses(cfg: &ClusterConfig, node: &str) -> Result<Vec<IpAddr>, Vec<String>> {
    let mut addresses = Vec::new();
    let mut unknown = Vec::new();
    for n in cfg.nodes.iter().filter(|n| n.role == Role::Server) {
        let name = n.name.get_ref();
        if name == node {
            continue;
        }
        match n.address.as_ref().and_then(|a| a.get_ref().parse().ok()) {
            Some(ip) => addresses.push(ip),
            None => unknown.push(name.clone()),
        }
    }
    if unknown.is_empty() {
        Ok(addresses)
    } else {
        Err(unknown)
    }
}

/// `check`'s one-line warning when the firewall cannot keep etcd between servers.
pub fn etcd_open_warning(cfg: &ClusterConfig) -> Option<String> {
    if cfg.k3s.is_none() || !cfg.hardening.firewall {
        return None;
    }
    let servers = cfg.nodes.iter().filter(|n| n.role == Role::Server).count();
    if servers < 2 {
        return None;
    }
    // No node is excepted: every server needs every other's address.
    let unknown = other_server_addresses(cfg, "").err()?;
    Some(format!(
        "etcd (2379-2380) on the servers is open to every cluster node, because the address of \
         server(s) {} is unknown: give each server its IP `address` (its ZeroTier address with \
         [zerotier]) to open etcd between servers only",
        unknown.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: &str) -> ClusterConfig {
        let text = format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = []\n\
             [k3s]\n{nodes}"
        );
        crate::config::parse_unvalidated(&text, std::path::Path::new("cluster.toml")).unwrap()
    }

    fn node(name: &str, role: &str, address: Option<&str>) -> String {
        let address = address.map_or(String::new(), |a| format!("address = \"{a}\"\n"));
        format!("[[nodes]]\nname = \"{name}\"\nboard = \"x86-64\"\nrole = \"{role}\"\n{address}")
    }

    #[test]
    fn other_servers_by_address_or_the_names_missing_one() {
        let c = config(
            &[
                node("a", "server", Some("192.168.1.11")),
                node("b", "server", Some("fd00::12")),
                node("c", "server", Some("c.lan")),
                node("w", "agent", None),
            ]
            .concat(),
        );
        let ips = |s: &[&str]| -> Vec<IpAddr> { s.iter().map(|a| a.parse().unwrap()).collect() };
        assert_eq!(
            other_server_addresses(&c, "c"),
            Ok(ips(&["192.168.1.11", "fd00::12"]))
        );
        assert_eq!(other_server_addresses(&c, "a"), Err(vec!["c".to_string()]));
        let w = etcd_open_warning(&c).unwrap();
        assert!(w.contains("server(s) c is unknown"), "{w}");
        assert!(!w.contains('\n'));

        let c = config(&[node("a", "server", None), node("b", "agent", None)].concat());
        assert_eq!(other_server_addresses(&c, "a"), Ok(vec![]));
        assert_eq!(etcd_open_warning(&c), None);
        let c = config(
            &[
                node("a", "server", Some("10.0.0.1")),
                node("b", "server", Some("10.0.0.2")),
                node("c", "server", Some("10.0.0.3")),
            ]
            .concat(),
        );
        assert_eq!(etcd_open_warning(&c), None);
    }
}
