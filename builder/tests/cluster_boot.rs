//! Issues 12, 14 and 16 in one VM test. A new cluster from one cluster.toml, booted: its first
//! server and an agent, built by `imagegen build` from the same config and state directory, boot
//! side by side under qemu on one Ethernet link between them (a `-netdev dgram` pair over host
//! UDP, no bridge and no root), each with the static address its `[nodes.network]` gives it.
//!
//! - WireGuard (issue 14): the cluster's `[wireguard]` mesh is real WireGuard, Debian's kernel
//!   module and wireguard-tools' `wg-quick@wg0`. The server has an `endpoint` on the link; the
//!   agent has none (as behind NAT), so only it can open the tunnel and keeps it open
//!   (`PersistentKeepalive`). Proven: each node's wg0 has the address the mesh derived, the key
//!   from the state directory and the other node as a peer with a recent handshake; each pings
//!   the other's wg0 address; the admin logs in over the tunnel (the host's ssh reaches one node
//!   through the other with `-W`, which the hardening leaves allowed, so the admin's private key
//!   never leaves the host) with the peer's host key verified against the `known_hosts` imagegen
//!   wrote, and the session's `SSH_CONNECTION` shows wg0 addresses on both ends. The firewall:
//!   a listener on a port the node does not open answers nothing over wg0 nor over the link,
//!   kubelet's port answers over wg0 only, SSH on both. Then the agent is replaced: its qemu
//!   killed, its image rebuilt from the same config and state onto a fresh copy of the base and
//!   booted (and waited for until SSH answers, not through its whole first boot, which `e2e.rs`
//!   proves), while the server runs on untouched (same boot id): the server cannot reach the old
//!   agent, and then reaches the new one over a new handshake with the same public key.
//! - k3s (issue 12): `[k3s] server_url` is the server's wg0 address, so the agent's join goes
//!   through the tunnel. k3s itself was NOT run: it cannot be installed here. `[k3s] binary`
//!   stages the recording stand-in of `vm/lab.rs` (`K3S_STANDIN`), started by each node's own
//!   k3s unit, which the node's agent enables after rendering `/etc/rancher/k3s/config.yaml`. On
//!   the server it serves `/cacerts` (the `server-ca.crt` imagegen staged in `server/tls/`) and
//!   `/ping` over TLS with a certificate it signs with the staged `server-ca.key`, as k3s's
//!   supervisor port does. So this proves: the server starts k3s with `cluster-init: true` and
//!   no `server:`; the CA set imagegen made is on it and is the one the minted token pins; the
//!   agent, through the tunnel, fetches the server's CA, accepts it against the token, trusts it
//!   for `/ping`, and starts its k3s with `server:` at the server's wg0 address, the minted
//!   token, `node-ip` its wg0 address and `flannel-iface: wg0`. It does not prove that k3s
//!   accepts these CA files, forms a cluster, runs flannel over wg0 or schedules anything.
//! - First-boot scripts (issue 16): two `[firstboot] scripts`, run by the agent after its own
//!   steps: the first leaves a file naming the node on both; the second fails on the server
//!   only, where the status records its exit status, the agent's unit is the one failed unit
//!   and SSH, k3s and the tunnel still work.
//!
//! Not proven: WireGuard through a real NAT (both ends are on one link; "behind NAT" here is
//! only the agent having no endpoint), a third node, the operator's `clients`.

mod agents;
mod vm;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use imagegen::vpn::wireguard;
use serde_json::Value;
use sha2::{Digest, Sha256};
use vm::lab::{ADMIN, K3S_STANDIN, boot_settled, build_node, keygen, state_of, wait_status};
use vm::{Vm, VmOptions};

const SERVER: &str = "master";
const AGENT: &str = "worker";
/// The link between the two guests: the second NIC (`ens4`, PCI slot 4, see `on_link`), given
/// its static address by `[nodes.network]` (issue 16). The first NIC (`ens3`, the user network
/// the host reaches SSH through) keeps DHCP.
const LINK_NIC: &str = "ens4";
const SERVER_IP: &str = "10.99.0.1";
const AGENT_IP: &str = "10.99.0.2";
/// The mesh: `[wireguard] network`, and the addresses it gives the nodes in config order.
const WG_NETWORK: &str = "10.100.0.0/24";
const SERVER_WG: &str = "10.100.0.1";
const AGENT_WG: &str = "10.100.0.2";
const WG_PORT: u16 = 51820;
/// The status steps of the two `[firstboot] scripts`, as the builder stages them.
const HELLO: &str = "script:01-hello.sh";
const FAILS_ON_SERVER: &str = "script:02-fails-on-master.sh";
/// A port nothing on a node opens, where the test starts a listener of its own.
const CLOSED_PORT: u16 = 8080;
/// kubelet's port, open between nodes on wg0 only (the stand-in k3s does not listen there, so
/// the test's listener does).
const KUBELET_PORT: u16 = 10250;

fn cluster_toml(dir: &Path, admin_pub: &str) -> PathBuf {
    fs::write(dir.join("k3s"), K3S_STANDIN).unwrap();
    fs::set_permissions(dir.join("k3s"), fs::Permissions::from_mode(0o755)).unwrap();
    // Run by the agent as root after its own steps, in this order (issue 16). The first leaves
    // its mark on every node; the second fails on the server only.
    fs::write(
        dir.join("hello.sh"),
        "#!/bin/sh\nset -e\nmkdir -p /var/lib/hello\nhostname > /var/lib/hello/node\n\
         echo \"hello from $(hostname)\"\n",
    )
    .unwrap();
    fs::write(
        dir.join("fails-on-master.sh"),
        format!(
            "#!/bin/sh\nif [ \"$(hostname)\" = {SERVER} ]; then\n\techo 'not on the server' >&2\n\
             \texit 7\nfi\ntouch /var/lib/hello/second\n"
        ),
    )
    .unwrap();
    // No token_file: a new cluster, registered at the server's wg0 address so the agent joins
    // through the tunnel. The server has an endpoint on the link; the agent none (as behind
    // NAT). vpn_address is left to the mesh: .1 and .2 in node order.
    let toml = format!(
        r#"[cluster]
name = "duo"

[admin]
user = "{ADMIN}"
ssh_authorized_keys = ["{admin}"]

[k3s]
binary = "k3s"
server_url = "https://{SERVER_WG}:6443"

[wireguard]
network = "{WG_NETWORK}"
port = {WG_PORT}

[firstboot]
scripts = ["hello.sh", "fails-on-master.sh"]

[[nodes]]
name = "{SERVER}"
board = "x86-64"
role = "server"
address = "{SERVER_IP}"
endpoint = "{SERVER_IP}:{WG_PORT}"

[nodes.network]
interface = "{LINK_NIC}"
address = "{SERVER_IP}/24"

[[nodes]]
name = "{AGENT}"
board = "x86-64"
role = "agent"
address = "{AGENT_IP}"

[nodes.network]
interface = "{LINK_NIC}"
address = "{AGENT_IP}/24"
"#,
        admin = admin_pub.trim()
    );
    let path = dir.join("cluster.toml");
    fs::write(&path, toml).unwrap();
    path
}

/// The IPv4 addresses the guest has on `nic`, as `ip -4 addr show` lists them.
fn addresses(guest: &Vm, key: &Path, nic: &str) -> Vec<String> {
    let out = guest.ssh_ok(ADMIN, key, &format!("ip -4 -o addr show {nic}"));
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_owned)
        })
        .collect()
}

/// Boot options with a second NIC on the link: one end of a UDP datagram pair on 127.0.0.1.
fn on_link(mac: &str, local: u16, remote: u16) -> VmOptions {
    VmOptions {
        qemu_args: vec![
            "-netdev".into(),
            format!(
                "dgram,id=link,local.type=inet,local.host=127.0.0.1,local.port={local},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={remote}"
            ),
            "-device".into(),
            format!("virtio-net-pci,netdev=link,addr=0x4,mac={mac}"),
        ],
        ..VmOptions::default()
    }
}

/// Waits until the agent has run every step it has: all done but `failing`, which failed.
/// Returns the status.
fn settled_status(guest: &Vm, key: &Path, node: &str, failing: &[&str]) -> Value {
    wait_status(
        guest,
        key,
        Duration::from_secs(240),
        &format!("{node}: every step done, {failing:?} failed"),
        |s| {
            let steps = s["steps"].as_object().cloned().unwrap_or_default();
            for (name, v) in &steps {
                assert!(
                    v["state"] != "failed" || failing.contains(&name.as_str()),
                    "{node}: step {name} failed:\n{s:#}"
                );
            }
            steps.contains_key("k3s")
                && failing.iter().all(|f| steps.contains_key(*f))
                && steps.iter().all(|(name, v)| {
                    v["state"]
                        == if failing.contains(&name.as_str()) {
                            "failed"
                        } else {
                            "done"
                        }
                })
        },
    )
}

/// What the stand-in recorded when the node's k3s unit started it: arguments and config.yaml,
/// which must be the config the agent rendered.
fn started_with(guest: &Vm, key: &Path) -> (String, String) {
    let args = guest.ssh_ok(ADMIN, key, "sudo cat /var/lib/k3s-standin/args");
    let config = guest.ssh_ok(ADMIN, key, "sudo cat /var/lib/k3s-standin/config.yaml");
    let rendered = guest.ssh_ok(ADMIN, key, "sudo cat /etc/rancher/k3s/config.yaml");
    assert_eq!(
        config, rendered,
        "k3s was not started with the rendered config"
    );
    assert_eq!(
        guest
            .ssh_ok(ADMIN, key, "sudo cat /var/lib/k3s-standin/token-mode")
            .trim(),
        "600"
    );
    (args.trim().to_owned(), config)
}

fn assert_lines(what: &str, text: &str, lines: &[String]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == line),
            "{what} lacks {line:?}:\n{text}"
        );
    }
}

/// The node's WireGuard public key as imagegen keeps it: derived from the private key in the
/// state directory.
fn state_public_key(state: &Path, node: &str) -> String {
    let path = state.join(node).join(wireguard::KEY_FILE);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    wireguard::Key::parse(&text)
        .unwrap_or_else(|| panic!("{path:?} is not a WireGuard key"))
        .public()
}

/// One peer line of `wg show wg0 dump` (wg(8): public key, preshared key, endpoint, allowed
/// IPs, latest handshake, bytes received, bytes sent, persistent keepalive).
struct Peer {
    endpoint: String,
    allowed_ips: String,
    latest_handshake: u64,
    keepalive: String,
}

/// The guest's wg0 as wireguard-tools reports it: its public key, listening port and peers by
/// public key, with the guest's clock (`date +%s`) read in the same session.
fn wg_dump(guest: &Vm, key: &Path) -> (String, u16, BTreeMap<String, Peer>, u64) {
    let out = guest.ssh_ok(ADMIN, key, "sudo wg show wg0 dump && date +%s");
    let mut lines = out.lines();
    let me: Vec<&str> = lines
        .next()
        .expect("the interface line")
        .split('\t')
        .collect();
    let now: u64 = out.lines().last().unwrap().trim().parse().unwrap();
    let peers = lines
        .filter(|l| l.contains('\t'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 8, "a peer line of wg show dump: {l:?}");
            (
                f[0].to_owned(),
                Peer {
                    endpoint: f[2].to_owned(),
                    allowed_ips: f[3].to_owned(),
                    latest_handshake: f[4].parse().unwrap(),
                    keepalive: f[7].to_owned(),
                },
            )
        })
        .collect();
    (me[1].to_owned(), me[2].parse().unwrap(), peers, now)
}

/// `ping` from the guest to `ip`: whether an answer came within `wait` seconds.
fn pings(guest: &Vm, key: &Path, ip: &str, wait: u32) -> bool {
    guest
        .ssh(ADMIN, key, &format!("ping -n -c 1 -W {wait} {ip}"))
        .status
        .success()
}

/// TCP connects from the guest, all at once: each target's outcome as bash's `/dev/tcp`
/// reports it under a 5 s `timeout`: "open" (connected), "refused" (a reset came back) or
/// "silent" (nothing came back: dropped).
fn probe(guest: &Vm, key: &Path, targets: &[(&str, u16)]) -> BTreeMap<(String, u16), String> {
    let list: Vec<String> = targets.iter().map(|(ip, p)| format!("{ip}:{p}")).collect();
    let script = format!(
        "for t in {}; do (timeout 5 bash -c \"exec 3<>/dev/tcp/${{t%:*}}/${{t#*:}}\" \
         2>/dev/null; echo \"$t $?\") & done; wait",
        list.join(" ")
    );
    let out = guest.ssh_ok(ADMIN, key, &script);
    out.lines()
        .map(|l| {
            let (target, code) = l.split_once(' ').expect("TARGET CODE");
            let (ip, port) = target.rsplit_once(':').unwrap();
            let outcome = match code {
                "0" => "open",
                "1" => "refused",
                "124" => "silent",
                other => panic!("probing {target}: exit status {other}"),
            };
            ((ip.to_owned(), port.parse().unwrap()), outcome.to_owned())
        })
        .collect()
}

/// Runs `cmd` as the admin on the node at `target` (a wg0 address), reached by the host's ssh
/// through `via`'s sshd (`-W`: `via` opens the TCP connection, over its wg0). The admin's
/// private key stays on the host. Both host keys are checked against the `known_hosts` files
/// imagegen wrote beside the images: `via`'s under its node name (the host reaches it at a
/// forwarded port), the target's under the address used.
fn ssh_through(
    via: &Vm,
    via_known_hosts: &Path,
    via_name: &str,
    target: &str,
    target_known_hosts: &Path,
    key: &Path,
    cmd: &str,
) -> String {
    let strict = |known: &Path| {
        [
            "-o".to_owned(),
            format!("UserKnownHostsFile={}", known.display()),
            "-o".to_owned(),
            "StrictHostKeyChecking=yes".to_owned(),
        ]
    };
    let jump = format!(
        "ssh -F /dev/null -i {key} -o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR \
         -o ConnectTimeout=20 {strict} -o HostKeyAlias={via_name} -p {port} -W %h:%p \
         {ADMIN}@127.0.0.1",
        key = key.display(),
        strict = strict(via_known_hosts).join(" "),
        port = via.ssh_port(),
    );
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"])
        .args(strict(target_known_hosts))
        .arg("-o")
        .arg(format!("ProxyCommand={jump}"))
        .arg(format!("{ADMIN}@{target}"))
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("ssh runs");
    assert!(
        out.status.success(),
        "ssh to {target} through {via_name}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What both nodes' WireGuard must show: wg0 at the mesh address, up by `wg-quick@wg0` from
/// a root-only config, the key from the state directory, the other node as its one peer with a
/// handshake in the last 3 minutes, the server's endpoint on the agent with a keepalive, and
/// the agent's endpoint learnt by the server from the agent's packets. Pings both ways first,
/// so a handshake is due (WireGuard handshakes when it has something to send).
fn check_mesh(server: &Vm, agent: &Vm, key: &Path, state: &Path) {
    assert!(pings(agent, key, SERVER_WG, 10), "agent -> server over wg0");
    assert!(pings(server, key, AGENT_WG, 10), "server -> agent over wg0");
    let public = [SERVER, AGENT].map(|n| state_public_key(state, n));
    for (i, (guest, node, wg)) in [(server, SERVER, SERVER_WG), (agent, AGENT, AGENT_WG)]
        .into_iter()
        .enumerate()
    {
        assert_eq!(addresses(guest, key, "wg0"), [format!("{wg}/24")], "{node}");
        // One session for what is read as text (each costs seconds under TCG): the config's
        // mode, the unit, and how many input rules accept the WireGuard port.
        let facts = guest.ssh_ok(
            ADMIN,
            key,
            &format!(
                "sudo stat -c '%a %U' /etc/wireguard/wg0.conf; systemctl is-enabled \
                 wg-quick@wg0; systemctl is-active wg-quick@wg0; sudo nft list chain inet \
                 imagegen_filter input | grep -c '^\\s*udp dport {WG_PORT} accept$' || true"
            ),
        );
        assert_eq!(
            facts.lines().collect::<Vec<_>>(),
            ["600 root", "enabled", "active", "1"],
            "{node}: wg0.conf mode, wg-quick@wg0 enabled and active, firewall rules for \
             the WireGuard port"
        );
        let (me, port, peers, now) = wg_dump(guest, key);
        assert_eq!(me, public[i], "{node}: wg0's key is not the state's");
        assert_eq!(port, WG_PORT, "{node}");
        let other = &public[1 - i];
        assert_eq!(peers.len(), 1, "{node}: {:?}", peers.keys());
        let peer = peers
            .get(other)
            .unwrap_or_else(|| panic!("{node}: the other node's key is no peer"));
        let (other_wg, other_ip) = if i == 0 {
            (AGENT_WG, AGENT_IP)
        } else {
            (SERVER_WG, SERVER_IP)
        };
        assert_eq!(peer.allowed_ips, format!("{other_wg}/32"), "{node}");
        assert_eq!(peer.endpoint, format!("{other_ip}:{WG_PORT}"), "{node}");
        // Only the one behind "NAT" (no endpoint of its own) keeps the path open.
        let keepalive = if node == AGENT { "25" } else { "off" };
        assert_eq!(peer.keepalive, keepalive, "{node}");
        assert!(
            peer.latest_handshake > 0 && now.saturating_sub(peer.latest_handshake) < 180,
            "{node}: no recent handshake (latest {}, now {now})",
            peer.latest_handshake
        );
    }
}

/// The k3s config the node's unit started k3s with runs it over wg0, and systemd orders that
/// unit after the tunnel (imagegen's drop-in, as systemd itself reads it).
fn assert_k3s_on_wg0(guest: &Vm, key: &Path, unit: &str, config: &str, node: &str, wg: &str) {
    let deps = guest.ssh_ok(
        ADMIN,
        key,
        &format!("systemctl show -p After -p Wants --no-pager {unit}"),
    );
    for prop in ["After", "Wants"] {
        assert!(
            deps.lines().any(|l| l
                .strip_prefix(&format!("{prop}="))
                .is_some_and(|v| v.split_whitespace().any(|u| u == "wg-quick@wg0.service"))),
            "{node}: {unit} is not {prop} wg-quick@wg0.service:\n{deps}"
        );
    }
    assert_lines(
        &format!("{node}'s k3s config"),
        config,
        &[
            format!("node-ip: \"{wg}\""),
            "flannel-iface: \"wg0\"".to_owned(),
        ],
    );
}

/// How many times the server's stand-in logged `path` from `client`.
fn requests_from(server: &Vm, key: &Path, client: &str, path: &str) -> usize {
    let requests = server.ssh_ok(ADMIN, key, "sudo cat /var/lib/k3s-standin/requests");
    requests
        .lines()
        .filter(|l| *l == format!("{client} {path}"))
        .count()
}

#[test]
fn first_server_and_agent_from_one_cluster_toml_join_over_wireguard() {
    if !vm::qemu_available() {
        return;
    }
    for (tool, package) in [("ssh", "openssh-client"), ("ssh-keygen", "openssh-client")] {
        vm::require_tool(tool, package);
    }
    let Some(imagegen) = agents::imagegen_with_agents(&["x86_64"]) else {
        return;
    };
    let started = Instant::now();
    let base = vm::base_image();
    let work = tempfile::Builder::new()
        .prefix("imagegen-cluster-boot-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let w = work.path();
    let key = w.join("admin_key");
    keygen(&key);
    let cluster = cluster_toml(w, &fs::read_to_string(key.with_extension("pub")).unwrap());
    let state = w.join("state");
    let server_img = w.join("master.img");
    let agent_img = w.join("worker.img");
    build_node(&imagegen, &cluster, SERVER, &base, &state, &server_img);
    build_node(&imagegen, &cluster, AGENT, &base, &state, &agent_img);
    let known_hosts = |img: &Path| imagegen::cluster::known_hosts::path_beside(img);
    let trust = imagegen::cluster::Trust::load(&state).expect("the build left the cluster trust");
    let ca_hash = imagegen_firstboot::k3s::token_ca_hash(&trust.token)
        .expect("a k3s token")
        .expect("the minted token pins a CA");
    eprintln!(
        "cluster_boot: both images built at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Both boot at once, each on one end of the link. The server's second first-boot script
    // fails, so its agent's unit is its one failed unit.
    let (a, b) = (vm::free_udp_port(), vm::free_udp_port());
    let boots = [
        (
            SERVER,
            server_img.clone(),
            on_link("52:54:00:99:00:01", a, b),
            &["imagegen-firstboot.service"][..],
        ),
        (
            AGENT,
            agent_img.clone(),
            on_link("52:54:00:99:00:02", b, a),
            &[][..],
        ),
    ]
    .map(|(node, disk, opts, failed)| {
        let key = key.clone();
        thread::spawn(move || boot_settled(&disk, opts, &key, node, failed))
    });
    let [server, agent] = boots.map(|t| t.join().expect("a node booted and settled"));
    eprintln!(
        "cluster_boot: both nodes running at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The agent's replacement card, built from the same config and state as the agent was,
    // while the checks below run (it reads the state only; when it is built changes nothing).
    let replacement_img = w.join("worker-replacement.img");
    let rebuild = {
        let (imagegen, cluster, base, state, out) = (
            imagegen.clone(),
            cluster.clone(),
            base.clone(),
            state.clone(),
            replacement_img.clone(),
        );
        thread::spawn(move || build_node(&imagegen, &cluster, AGENT, &base, &state, &out))
    };

    // Each guest has on the link exactly the address its [nodes.network] gave it.
    for (guest, ip) in [(&server, SERVER_IP), (&agent, AGENT_IP)] {
        assert_eq!(
            addresses(guest, &key, LINK_NIC),
            [format!("{ip}/24")],
            "{LINK_NIC}: {}",
            guest.ssh_ok(ADMIN, &key, "networkctl status --no-pager; ip addr")
        );
    }

    // The agent: k3s done, its CA verified against the minted token, started as an agent
    // registering at the server's wg0 address with the minted token, on its own wg0.
    let agent_status = settled_status(&agent, &key, AGENT, &[]);
    let s = &agent_status;
    assert_eq!(s["node"], AGENT);
    let k3s = &s["steps"]["k3s"];
    assert_eq!(k3s["details"]["service"], "k3s-agent.service", "{s:#}");
    assert_eq!(k3s["details"]["ca-sha256"], ca_hash.as_str(), "{s:#}");
    assert_eq!(k3s["details"]["node-ip"], AGENT_WG, "{s:#}");
    assert_eq!(k3s["details"]["flannel-iface"], "wg0", "{s:#}");
    let text = agent.ssh_ok(ADMIN, &key, "sudo imagegen-firstboot status");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq(["k3s", "done"])),
        "the plain status does not show k3s done:\n{text}"
    );
    let (args, config) = started_with(&agent, &key);
    assert_eq!(args, "agent");
    assert_lines(
        "agent config",
        &config,
        &[
            format!("server: \"https://{SERVER_WG}:6443\""),
            format!("node-name: \"{AGENT}\""),
            "token-file: \"/etc/rancher/k3s/token\"".to_owned(),
        ],
    );
    assert_k3s_on_wg0(&agent, &key, "k3s-agent.service", &config, AGENT, AGENT_WG);
    assert!(!config.contains("cluster-init"), "{config}");
    assert_eq!(
        agent
            .ssh_ok(ADMIN, &key, "sudo cat /etc/rancher/k3s/token")
            .trim(),
        trust.token
    );

    // The server: k3s started with cluster-init and no server:, the minted token, and the CA
    // set imagegen made, which it serves; the agent's requests came through the tunnel.
    let server_status = settled_status(&server, &key, SERVER, &[FAILS_ON_SERVER]);
    let s = &server_status;
    assert_eq!(state_of(s, "k3s"), "done");
    assert_eq!(s["steps"]["k3s"]["details"]["service"], "k3s.service");
    let (args, config) = started_with(&server, &key);
    assert_eq!(args, "server");
    assert_lines(
        "server config",
        &config,
        &[
            "cluster-init: true".to_owned(),
            // tls-san: the registration address.
            format!("  - \"{SERVER_WG}\""),
        ],
    );
    assert_k3s_on_wg0(&server, &key, "k3s.service", &config, SERVER, SERVER_WG);
    assert!(
        !config.lines().any(|l| l.starts_with("server:")),
        "the first server must not register anywhere:\n{config}"
    );
    assert_eq!(
        server
            .ssh_ok(ADMIN, &key, "sudo cat /etc/rancher/k3s/token")
            .trim(),
        trust.token
    );
    for path in ["/cacerts", "/ping"] {
        assert!(
            requests_from(&server, &key, AGENT_WG, path) > 0,
            "the agent did not ask the server for {path} through the tunnel:\n{}",
            server.ssh_ok(ADMIN, &key, "sudo cat /var/lib/k3s-standin/requests")
        );
    }
    // What /cacerts serves, fetched by the agent's guest through the tunnel (python3, no
    // verification: the bytes are what is checked), hashes to the token's CA hash and is the
    // server-ca.crt in the cluster state.
    let fetch = format!(
        "python3 -c 'import ssl, sys, urllib.request; sys.stdout.buffer.write(urllib.request.\
         urlopen(\"https://{SERVER_WG}:6443/cacerts\", context=ssl._create_unverified_context()\
         ).read())'"
    );
    let out = agent.ssh(ADMIN, &key, &fetch);
    assert!(
        out.status.success(),
        "fetching /cacerts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hex::encode(Sha256::digest(&out.stdout)), ca_hash);
    assert_eq!(out.stdout, trust.file("server-ca.crt"));
    let staged = server.ssh_ok(
        ADMIN,
        &key,
        "sudo stat -c '%n %a %U' /var/lib/rancher/k3s/server/tls/server-ca.crt \
         /var/lib/rancher/k3s/server/tls/server-ca.key",
    );
    assert_eq!(
        staged.lines().collect::<Vec<_>>(),
        [
            "/var/lib/rancher/k3s/server/tls/server-ca.crt 644 root",
            "/var/lib/rancher/k3s/server/tls/server-ca.key 600 root",
        ]
    );

    // The first-boot scripts (issue 16): the first ran on both, the second on the agent only;
    // on the server it failed with its exit status recorded, after k3s was done.
    for (guest, node, s) in [
        (&agent, AGENT, &agent_status),
        (&server, SERVER, &server_status),
    ] {
        assert_eq!(s["steps"][HELLO]["details"]["exit"], "0", "{node}: {s:#}");
        assert_eq!(
            guest.ssh_ok(ADMIN, &key, "cat /var/lib/hello/node").trim(),
            node
        );
        let journal = guest.ssh_ok(
            ADMIN,
            &key,
            "sudo journalctl -b -u imagegen-firstboot.service --no-pager -o cat",
        );
        assert!(
            journal
                .lines()
                .any(|l| l == format!("{HELLO}: hello from {node}")),
            "{node}: the script's output is not in the journal:\n{journal}"
        );
    }
    assert_eq!(state_of(&agent_status, FAILS_ON_SERVER), "done");
    assert_eq!(
        agent
            .ssh_ok(ADMIN, &key, "test -f /var/lib/hello/second && echo ran")
            .trim(),
        "ran"
    );
    let failed = &server_status["steps"][FAILS_ON_SERVER];
    assert_eq!(failed["reason"], "exited with status 7", "{failed:#}");

    // WireGuard (issue 14): the mesh, pings both ways, the admin over the tunnel.
    check_mesh(&server, &agent, &key, &state);
    for (via, via_img, via_name, target, target_img, target_name, from) in [
        (
            &server,
            &server_img,
            SERVER,
            AGENT_WG,
            &agent_img,
            AGENT,
            SERVER_WG,
        ),
        (
            &agent,
            &agent_img,
            AGENT,
            SERVER_WG,
            &server_img,
            SERVER,
            AGENT_WG,
        ),
    ] {
        let out = ssh_through(
            via,
            &known_hosts(via_img),
            via_name,
            target,
            &known_hosts(target_img),
            &key,
            "hostname; echo $SSH_CONNECTION",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&target_name), "{out}");
        let conn: Vec<&str> = lines.get(1).unwrap_or(&"").split_whitespace().collect();
        assert!(
            conn.len() == 4 && conn[0] == from && conn[2] == target && conn[3] == "22",
            "the session did not run over wg0: SSH_CONNECTION {:?}",
            lines.get(1)
        );
    }

    // The firewall: on the agent, a listener on a port it does not open and one on kubelet's,
    // both on every address, answering locally.
    agent.ssh_ok(
        ADMIN,
        &key,
        &format!(
            "for p in {CLOSED_PORT} {KUBELET_PORT}; do sudo systemd-run --quiet \
             --unit=probe-$p python3 -m http.server --bind 0.0.0.0 $p; done"
        ),
    );
    let local = [
        ("127.0.0.1", CLOSED_PORT),
        (AGENT_WG, CLOSED_PORT),
        (AGENT_IP, KUBELET_PORT),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = probe(&agent, &key, &local);
        if seen.values().all(|o| o == "open") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the test's listeners do not answer on the agent itself: {seen:?}"
        );
        thread::sleep(Duration::from_secs(2));
    }
    // From the server: SSH everywhere, kubelet over wg0 only, the other port nowhere; dropped,
    // not refused.
    let seen = probe(
        &server,
        &key,
        &[
            (AGENT_WG, 22),
            (AGENT_IP, 22),
            (AGENT_WG, KUBELET_PORT),
            (AGENT_IP, KUBELET_PORT),
            (AGENT_WG, CLOSED_PORT),
            (AGENT_IP, CLOSED_PORT),
        ],
    );
    let want: BTreeMap<(String, u16), String> = [
        (AGENT_WG, 22, "open"),
        (AGENT_IP, 22, "open"),
        (AGENT_WG, KUBELET_PORT, "open"),
        (AGENT_IP, KUBELET_PORT, "silent"),
        (AGENT_WG, CLOSED_PORT, "silent"),
        (AGENT_IP, CLOSED_PORT, "silent"),
    ]
    .into_iter()
    .map(|(ip, p, o)| ((ip.to_owned(), p), o.to_owned()))
    .collect();
    assert_eq!(seen, want, "from the server to the agent");
    eprintln!(
        "cluster_boot: mesh, scripts and firewall checked at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Replacement: the agent's card dies; a new one is built from the same config and state
    // onto a fresh copy of the base and boots, while the server runs on untouched.
    let boot_id = |g: &Vm| {
        g.ssh_ok(ADMIN, &key, "cat /proc/sys/kernel/random/boot_id")
            .trim()
            .to_owned()
    };
    let server_boot = boot_id(&server);
    let agent_public = agent
        .ssh_ok(ADMIN, &key, "sudo wg show wg0 public-key")
        .trim()
        .to_owned();
    drop(agent);
    fs::remove_file(&agent_img).unwrap();
    let died: u64 = server
        .ssh_ok(ADMIN, &key, "date +%s")
        .trim()
        .parse()
        .unwrap();
    assert!(
        !pings(&server, &key, AGENT_WG, 3),
        "the dead agent still answers over wg0"
    );
    rebuild.join().expect("the replacement was built");
    // Another board, so another MAC, on the same end of the link. Waited for until SSH
    // answers only: the tunnel is what is checked, from the server's side.
    let mut replacement = Vm::boot(&replacement_img, on_link("52:54:00:99:00:03", b, a));
    replacement.wait_for_ssh(Duration::from_secs(240));
    // Only the replacement knows where the other end is (the server has no endpoint for it),
    // so the tunnel comes back when its wg-quick@wg0 is up and it sends.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pings(&server, &key, AGENT_WG, 5) {
        assert!(
            Instant::now() < deadline,
            "the server does not reach the replacement over wg0: {}",
            String::from_utf8_lossy(
                &replacement
                    .ssh(
                        ADMIN,
                        &key,
                        "systemctl status --no-pager wg-quick@wg0; sudo wg"
                    )
                    .stdout
            )
        );
    }
    eprintln!(
        "vm: worker (replacement): on the mesh {:.1} s after start",
        replacement.uptime().as_secs_f64()
    );
    assert_eq!(
        replacement
            .ssh_ok(ADMIN, &key, "sudo wg show wg0 public-key")
            .trim(),
        agent_public,
        "the replacement has another WireGuard key"
    );
    assert_eq!(agent_public, state_public_key(&state, AGENT));
    let (_, _, peers, _) = wg_dump(&server, &key);
    let peer = &peers[&agent_public];
    assert!(
        peer.latest_handshake > died,
        "no handshake with the replacement (latest {}, the agent died at {died})",
        peer.latest_handshake
    );
    assert_eq!(peer.endpoint, format!("{AGENT_IP}:{WG_PORT}"));
    assert_eq!(boot_id(&server), server_boot, "the server was rebooted");
    eprintln!(
        "cluster_boot: done at {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
