//! Issue 12's VM test. A new cluster from one cluster.toml, booted: its first server and an
//! agent, built by `imagegen build` from the same config and state directory, boot side by side
//! under qemu on one Ethernet link between them (a `-netdev dgram` pair over host UDP, no bridge
//! and no root), and the agent joins the server with the token imagegen minted, which nobody
//! copied.
//!
//! k3s itself was NOT run: it cannot be installed here. `[k3s] binary` stages the recording
//! stand-in of `vm/lab.rs` (`K3S_STANDIN`), started by each node's own k3s unit, which the
//! node's agent enables after rendering `/etc/rancher/k3s/config.yaml`. On the server it serves
//! `/cacerts` (the `server-ca.crt` imagegen staged in `server/tls/`) and `/ping` over TLS with a
//! certificate it signs with the staged `server-ca.key`, as k3s's supervisor port does. So this
//! proves: the server starts k3s with `cluster-init: true` and no `server:`; the CA set imagegen
//! made is on it and is the one the minted token pins; the agent, over the link, fetches the
//! server's CA, accepts it against the token, trusts it for `/ping`, and starts its k3s with
//! `server:` at the server's address and the minted token. It does not prove that k3s accepts
//! these CA files, forms a cluster or schedules anything.

mod agents;
mod vm;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

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

fn cluster_toml(dir: &Path, admin_pub: &str) -> std::path::PathBuf {
    fs::write(dir.join("k3s"), K3S_STANDIN).unwrap();
    fs::set_permissions(dir.join("k3s"), fs::Permissions::from_mode(0o755)).unwrap();
    // No token_file, no server_url: a new cluster, registered at the first server's address.
    let toml = format!(
        r#"[cluster]
name = "duo"

[admin]
user = "{ADMIN}"
ssh_authorized_keys = ["{admin}"]

[k3s]
binary = "k3s"

[[nodes]]
name = "{SERVER}"
board = "x86-64"
role = "server"
address = "{SERVER_IP}"

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

/// The IPv4 addresses the guest has on the link NIC, as `ip -4 addr show` lists them.
fn link_addresses(guest: &Vm, key: &Path) -> Vec<String> {
    let out = guest.ssh_ok(ADMIN, key, &format!("ip -4 -o addr show {LINK_NIC}"));
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

/// Waits until the agent has finished every step it has, none failed; returns the status.
fn settled_status(guest: &Vm, key: &Path, node: &str) -> Value {
    wait_status(
        guest,
        key,
        Duration::from_secs(240),
        &format!("{node}: every step done"),
        |s| {
            let steps = s["steps"].as_object().cloned().unwrap_or_default();
            assert!(
                steps.values().all(|v| v["state"] != "failed"),
                "{node}: a step failed:\n{s:#}"
            );
            steps.contains_key("k3s") && steps.values().all(|v| v["state"] == "done")
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

#[test]
fn first_server_and_agent_from_one_cluster_toml_join_with_the_minted_token() {
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
    let trust = imagegen::cluster::Trust::load(&state).expect("the build left the cluster trust");
    let ca_hash = imagegen_firstboot::k3s::token_ca_hash(&trust.token)
        .expect("a k3s token")
        .expect("the minted token pins a CA");
    eprintln!(
        "cluster_boot: both images built at {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Both boot at once, each on one end of the link.
    let (a, b) = (vm::free_udp_port(), vm::free_udp_port());
    let boots = [
        (SERVER, server_img, on_link("52:54:00:99:00:01", a, b)),
        (AGENT, agent_img, on_link("52:54:00:99:00:02", b, a)),
    ]
    .map(|(node, disk, opts)| {
        let key = key.clone();
        thread::spawn(move || boot_settled(&disk, opts, &key, node, &[]))
    });
    let [server, agent] = boots.map(|t| t.join().expect("a node booted and settled"));

    // Each guest has on the link exactly the address its [nodes.network] gave it.
    for (guest, ip) in [(&server, SERVER_IP), (&agent, AGENT_IP)] {
        assert_eq!(
            link_addresses(guest, &key),
            [format!("{ip}/24")],
            "{LINK_NIC}: {}",
            guest.ssh_ok(ADMIN, &key, "networkctl status --no-pager; ip addr")
        );
    }

    // The agent: k3s done, its CA verified against the minted token, started as an agent
    // registering at the server's address on the link, with the minted token.
    let s = settled_status(&agent, &key, AGENT);
    assert_eq!(s["node"], AGENT);
    let k3s = &s["steps"]["k3s"];
    assert_eq!(k3s["details"]["service"], "k3s-agent.service", "{s:#}");
    assert_eq!(k3s["details"]["ca-sha256"], ca_hash.as_str(), "{s:#}");
    assert_eq!(k3s["details"]["node-ip"], AGENT_IP, "{s:#}");
    let text = agent.ssh_ok(ADMIN, &key, "sudo imagegen-firstboot status");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq(["k3s", "done"])),
        "the plain status does not show k3s done:\n{text}"
    );
    let (args, config) = started_with(&agent, &key);
    assert_eq!(args, "agent");
    for line in [
        format!("server: \"https://{SERVER_IP}:6443\""),
        format!("node-name: \"{AGENT}\""),
        "token-file: \"/etc/rancher/k3s/token\"".to_owned(),
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "agent config lacks {line:?}:\n{config}"
        );
    }
    assert!(!config.contains("cluster-init"), "{config}");
    assert_eq!(
        agent
            .ssh_ok(ADMIN, &key, "sudo cat /etc/rancher/k3s/token")
            .trim(),
        trust.token
    );

    // The server: k3s started with cluster-init and no server:, the minted token, and the CA
    // set imagegen made, which it serves; the agent's requests came over the link.
    let s = settled_status(&server, &key, SERVER);
    assert_eq!(state_of(&s, "k3s"), "done");
    assert_eq!(s["steps"]["k3s"]["details"]["service"], "k3s.service");
    let (args, config) = started_with(&server, &key);
    assert_eq!(args, "server");
    assert!(
        config.lines().any(|l| l == "cluster-init: true"),
        "server config lacks cluster-init:\n{config}"
    );
    assert!(
        !config.lines().any(|l| l.starts_with("server:")),
        "the first server must not register anywhere:\n{config}"
    );
    assert!(
        config.lines().any(|l| l == format!("  - \"{SERVER_IP}\"")),
        "tls-san lacks the registration address:\n{config}"
    );
    assert_eq!(
        server
            .ssh_ok(ADMIN, &key, "sudo cat /etc/rancher/k3s/token")
            .trim(),
        trust.token
    );
    let requests = server.ssh_ok(ADMIN, &key, "sudo cat /var/lib/k3s-standin/requests");
    for path in ["/cacerts", "/ping"] {
        assert!(
            requests.lines().any(|l| l == format!("{AGENT_IP} {path}")),
            "the agent did not ask the server for {path} over the link:\n{requests}"
        );
    }
    // What /cacerts serves, fetched by the agent's guest over the link (python3, no
    // verification: the bytes are what is checked), hashes to the token's CA hash and is the
    // server-ca.crt in the cluster state.
    let fetch = format!(
        "python3 -c 'import ssl, sys, urllib.request; sys.stdout.buffer.write(urllib.request.\
         urlopen(\"https://{SERVER_IP}:6443/cacerts\", context=ssl._create_unverified_context()\
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
    eprintln!(
        "cluster_boot: done at {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
