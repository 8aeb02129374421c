//! The node firewall against forged source addresses, as an attacker on the LAN would send them.
//!
//! A throw-away lab of network namespaces, one "node" loaded with the ruleset the plan renders
//! and the sysctl settings the image applies (loose reverse-path filtering among them), and
//! around it what a k3s node sees:
//!
//! - `lan0`, to a LAN host that also plays the attacker: it adds pod, service and ZeroTier
//!   addresses to its own interface and sends from them, so its kernel writes the forged
//!   sources. The node's default route points at it, as at the LAN router, so every forged
//!   source is routable back and `rp_filter = 2` lets it through to the firewall;
//! - `cni0`, to a pod (flannel's bridge on a real node);
//! - `flannel.1`, to a pod on another node (flannel's VXLAN device decapsulates their packets
//!   onto it; a veth of the same name stands in for it);
//! - with ZeroTier, `ztc3q4gmtv`, to another cluster node (ZeroTier's tap device).
//!
//! A second nftables table counts each forged packet before our input chain (it reached the
//! firewall, past reverse-path filtering) and after it (our chain accepted it: a drop there is
//! final, so nothing dropped reaches a later chain). Sockets listen on the node's ports, so
//! legitimate traffic is proven by real connections and datagrams.
//!
//! Needs root for network namespaces: without it the tests are skipped, saying so, unless
//! `CI=true`, where they fail.

use imagegen::config::{Hardening, Role};
use imagegen::plan::hardening::{self, Context};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LAN_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
const LAN_NODE_MAC: &str = "02:00:c0:a8:32:01";
/// flannel gives cni0 the first address of the node's pod subnet...
const CNI_NODE: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 1);
const POD: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 5);
/// ...and its VXLAN device the subnet's own address, as a /32.
const FLANNEL_NODE: Ipv4Addr = Ipv4Addr::new(10, 42, 0, 0);
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 42, 1, 7);
const ZT_IF: &str = "ztc3q4gmtv";
const ZT_NODE: Ipv4Addr = Ipv4Addr::new(10, 147, 17, 1);
const ZT_PEER: Ipv4Addr = Ipv4Addr::new(10, 147, 17, 2);

fn need(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install the Debian package {package}"
    );
    p
}

/// Whether the test can run: root is needed for network namespaces.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = "it needs root (ip netns, veth pairs, nft)";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot run: {why}"
    );
    eprintln!("SKIPPED {test}: {why}; run the tests as root to check the firewall");
    false
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside network namespace `ns`. Sockets it makes stay in `ns` when
/// handed back; the namespace is per thread, so no other thread moves.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid descriptor of a network namespace; only this thread changes.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The network namespaces of one test, deleted (with their interfaces) when dropped.
struct Lab {
    prefix: String,
    made: Vec<String>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        need("/usr/sbin/ip", "iproute2");
        Lab {
            prefix: format!("imgfw-{}-{tag}", std::process::id()),
            made: Vec::new(),
        }
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    fn add(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        ok(Command::new("ip").args(["netns", "add", &ns]));
        self.made.push(ns.clone());
        ok(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        ns
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        ok(Command::new("ip").args(["-n", ns]).args(args));
    }

    /// A veth pair from `node_if` in the node to `eth0` in a new namespace `other`.
    fn wire(&mut self, node_if: &str, node_addr: &str, other: &str, other_addr: &str) -> String {
        let node = self.ns("node");
        let ns = self.add(other);
        let mut add = vec!["link", "add", node_if];
        if node_if == "lan0" {
            add.extend(["address", LAN_NODE_MAC]);
        }
        add.extend([
            "netns", &node, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ok(Command::new("ip").args(&add));
        self.ip(&node, &["addr", "add", node_addr, "dev", node_if]);
        self.ip(&node, &["link", "set", node_if, "up"]);
        self.ip(&ns, &["addr", "add", other_addr, "dev", "eth0"]);
        self.ip(&ns, &["link", "set", "eth0", "up"]);
        ns
    }

    fn nft(&self, ns: &str, ruleset: &str) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), ruleset).unwrap();
        ok(Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f"])
            .arg(f.path()));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.made {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// The ports other cluster nodes use on this one (k3s docs, "Inbound Rules for K3s Nodes"):
/// kubelet, flannel VXLAN, etcd between servers; and NUT on the node with the UPS.
fn node_ports(ctx: &Context) -> Vec<(Proto, u16)> {
    let mut v = vec![(Proto::Tcp, 10250), (Proto::Udp, 8472)];
    if ctx.role == Role::Server {
        v.extend([(Proto::Tcp, 2379), (Proto::Tcp, 2380)]);
    }
    if ctx.ups_server {
        v.push((Proto::Tcp, 3493));
    }
    v
}

/// One packet from `ns`, sent by its kernel from `src` (one of its addresses).
#[derive(Debug, Clone)]
struct Probe {
    what: &'static str,
    ns: String,
    src: Ipv4Addr,
    proto: Proto,
    dst: SocketAddrV4,
}

/// Legitimate traffic must get through: a TCP handshake that completes and is accepted by the
/// node's listener, or a datagram its socket receives, each from the expected source.
fn assert_gets_through(p: &Probe, tcp: &[(u16, TcpListener)], udp: &[(u16, UdpSocket)]) {
    let (src, dst) = (p.src, p.dst);
    match p.proto {
        Proto::Tcp => {
            let connected = in_netns(&p.ns, move || {
                TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(3))
            });
            assert!(
                connected.is_ok(),
                "{}: {src} -> tcp {dst} was dropped: {connected:?}",
                p.what
            );
            let listener = &tcp.iter().find(|(port, _)| *port == dst.port()).unwrap().1;
            let peer = until(|| match listener.accept() {
                Ok((_, peer)) => Some(peer.ip()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => panic!("accept on {}: {e}", dst.port()),
            });
            assert_eq!(peer, Some(IpAddr::V4(src)), "{}", p.what);
        }
        Proto::Udp => {
            let sock = in_netns(&p.ns, move || UdpSocket::bind((src, 0)).unwrap());
            sock.send_to(p.what.as_bytes(), dst).unwrap();
            let listener = &udp.iter().find(|(port, _)| *port == dst.port()).unwrap().1;
            let mut buf = [0u8; 256];
            let got = until(|| match listener.recv_from(&mut buf) {
                Ok((n, from)) => Some((buf[..n].to_vec(), from.ip())),
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => panic!("recv on {}: {e}", dst.port()),
            });
            assert_eq!(
                got,
                Some((p.what.as_bytes().to_vec(), IpAddr::V4(src))),
                "{}: {src} -> udp {dst} did not arrive",
                p.what
            );
        }
    }
}

/// Polls `f` for up to 3 s.
fn until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends the probe's packet without waiting for an answer: the node's answer to a forged
/// source goes where that source is routed (a pod interface), not back to the sender.
/// The returned socket is kept open until the counters are read.
fn send_forged(p: &Probe) -> OwnedFd {
    let (src, dst, proto, what) = (p.src, p.dst, p.proto, p.what);
    in_netns(&p.ns, move || match proto {
        Proto::Udp => {
            let s = UdpSocket::bind((src, 0)).unwrap();
            s.send_to(what.as_bytes(), dst).unwrap();
            OwnedFd::from(s)
        }
        Proto::Tcp => syn(src, dst),
    })
}

/// A TCP SYN from `src` (bound first, which std's TcpStream cannot do) to `dst`.
fn syn(src: Ipv4Addr, dst: SocketAddrV4) -> OwnedFd {
    let addr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns, with sockaddr_in values
    // that live across each call.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let from = addr(SocketAddrV4::new(src, 0));
        let rc = libc::bind(
            fd.as_raw_fd(),
            (&raw const from).cast::<libc::sockaddr>(),
            len,
        );
        assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
        let to = addr(dst);
        let rc = libc::connect(
            fd.as_raw_fd(),
            (&raw const to).cast::<libc::sockaddr>(),
            len,
        );
        let e = std::io::Error::last_os_error();
        assert!(
            rc == -1 && e.raw_os_error() == Some(libc::EINPROGRESS),
            "connect {src} -> {dst}: {e}"
        );
        fd
    }
}

/// An nftables table that counts each forged probe as it reaches the input hook before our
/// chain (priority filter) and after it.
fn witness(probes: &[Probe]) -> String {
    let mut counters = String::new();
    let mut seen = String::new();
    let mut passed = String::new();
    for (i, p) in probes.iter().enumerate() {
        let m = format!(
            "iifname \"lan0\" ip saddr {} ip daddr {} {} dport {}",
            p.src,
            p.dst.ip(),
            p.proto.name(),
            p.dst.port()
        );
        counters.push_str(&format!(
            "\tcounter seen_{i} {{ }}\n\tcounter passed_{i} {{ }}\n"
        ));
        seen.push_str(&format!("\t\t{m} counter name \"seen_{i}\"\n"));
        passed.push_str(&format!("\t\t{m} counter name \"passed_{i}\"\n"));
    }
    format!(
        "table inet witness {{\n{counters}\
         \tchain seen {{\n\t\ttype filter hook input priority filter - 10; policy accept;\n{seen}\t}}\n\
         \tchain passed {{\n\t\ttype filter hook input priority filter + 10; policy accept;\n{passed}\t}}\n}}\n"
    )
}

/// The witness counters' packet counts by name.
fn counters(node: &str) -> Vec<(String, u64)> {
    let out = ok(Command::new("ip").args([
        "netns", "exec", node, "nft", "-j", "list", "counters", "table", "inet", "witness",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| {
            let c = o.get("counter")?;
            Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?))
        })
        .collect()
}

/// Builds the lab for `ctx`, checks legitimate traffic gets through, then sends the forged
/// packets and returns, for each, a line saying what the node did with it and whether it got
/// past the firewall.
fn forged_packets_past_firewall(tag: &str, ctx: Context) -> Vec<(String, bool)> {
    need("/usr/sbin/nft", "nftables");
    let sysctl = need("/lib/systemd/systemd-sysctl", "systemd");
    let files = hardening::files(&Hardening::default(), &ctx).unwrap();
    let file = |path: &str| {
        files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path} rendered"))
            .content
            .clone()
    };

    let mut lab = Lab::new(tag);
    let node = lab.add("node");
    // The image's sysctl settings, as systemd-sysctl applies them at boot, before the
    // interfaces come up (so "default" reaches them too).
    let conf = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(conf.path(), file(hardening::SYSCTL_CONF)).unwrap();
    ok(Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(&sysctl)
        .arg("--prefix=/net")
        .arg(conf.path()));

    let lan = lab.wire(
        "lan0",
        &format!("{LAN_NODE}/24"),
        "lan",
        &format!("{LAN_HOST}/24"),
    );
    lab.ip(
        &node,
        &["route", "add", "default", "via", &LAN_HOST.to_string()],
    );
    // No ARP for the node from forged sources: the LAN host knows the node's address already.
    lab.ip(
        &lan,
        &[
            "neigh",
            "replace",
            &LAN_NODE.to_string(),
            "lladdr",
            LAN_NODE_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );

    let pod = lab.wire(
        "cni0",
        &format!("{CNI_NODE}/24"),
        "pod",
        &format!("{POD}/24"),
    );
    lab.ip(
        &pod,
        &["route", "add", "default", "via", &CNI_NODE.to_string()],
    );

    let rpod = lab.wire(
        "flannel.1",
        &format!("{FLANNEL_NODE}/32"),
        "rpod",
        &format!("{REMOTE_POD}/24"),
    );
    lab.ip(&node, &["route", "add", "10.42.1.0/24", "dev", "flannel.1"]);
    lab.ip(
        &rpod,
        &["route", "add", &format!("{FLANNEL_NODE}/32"), "dev", "eth0"],
    );
    lab.ip(
        &rpod,
        &["route", "add", "default", "via", &FLANNEL_NODE.to_string()],
    );

    let zt = ctx.zerotier.then(|| {
        lab.wire(
            ZT_IF,
            &format!("{ZT_NODE}/24"),
            "zt",
            &format!("{ZT_PEER}/24"),
        )
    });

    // Reverse-path filtering is what the image sets, and it is loose.
    for conf in ["all", "lan0"] {
        let v = ok(Command::new("ip").args([
            "netns",
            "exec",
            &node,
            "cat",
            &format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"),
        ]));
        assert_eq!(v.trim(), "2", "rp_filter of {conf} in the node");
    }

    lab.nft(&node, &file(hardening::NFTABLES_CONF));

    let ports = node_ports(&ctx);
    let mut tcp_ports: Vec<u16> = vec![22];
    tcp_ports.extend(
        ports
            .iter()
            .filter(|(p, _)| *p == Proto::Tcp)
            .map(|(_, n)| *n),
    );
    let udp_ports: Vec<u16> = ports
        .iter()
        .filter(|(p, _)| *p == Proto::Udp)
        .map(|(_, n)| *n)
        .collect();
    let (tcp, udp) = in_netns(&node, move || {
        let tcp: Vec<(u16, TcpListener)> = tcp_ports
            .into_iter()
            .map(|p| {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).unwrap();
                l.set_nonblocking(true).unwrap();
                (p, l)
            })
            .collect();
        let udp: Vec<(u16, UdpSocket)> = udp_ports
            .into_iter()
            .map(|p| {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p)).unwrap();
                s.set_nonblocking(true).unwrap();
                (p, s)
            })
            .collect();
        (tcp, udp)
    });

    // What must keep working.
    let probe = |what, ns: &str, src, proto, dst: Ipv4Addr, port| Probe {
        what,
        ns: ns.to_string(),
        src,
        proto,
        dst: SocketAddrV4::new(dst, port),
    };
    let mut legit = vec![
        probe("SSH from the LAN", &lan, LAN_HOST, Proto::Tcp, LAN_NODE, 22),
        probe(
            "kubelet from a pod on cni0",
            &pod,
            POD,
            Proto::Tcp,
            LAN_NODE,
            10250,
        ),
        probe(
            "kubelet from a pod on another node, over flannel.1",
            &rpod,
            REMOTE_POD,
            Proto::Tcp,
            LAN_NODE,
            10250,
        ),
    ];
    for &(proto, port) in &ports {
        legit.push(match &zt {
            Some(zt) => probe(
                "a cluster node over ZeroTier",
                zt,
                ZT_PEER,
                proto,
                ZT_NODE,
                port,
            ),
            None => probe(
                "a cluster node on the LAN",
                &lan,
                LAN_HOST,
                proto,
                LAN_NODE,
                port,
            ),
        });
    }
    for p in &legit {
        assert_gets_through(p, &tcp, &udp);
    }

    // Forged sources, from the LAN: a pod of this node's subnet (routed to cni0), a pod of
    // another node's subnet (routed to flannel.1), a service address, and with ZeroTier a
    // cluster node's ZeroTier address; each to every node-to-node port of this node.
    let mut forged_from = vec![
        ("a pod of this node", Ipv4Addr::new(10, 42, 0, 99)),
        ("a pod of another node", Ipv4Addr::new(10, 42, 1, 99)),
        ("a service address", Ipv4Addr::new(10, 43, 0, 10)),
    ];
    if zt.is_some() {
        forged_from.push(("a ZeroTier peer", Ipv4Addr::new(10, 147, 17, 99)));
    }
    let mut forged = Vec::new();
    for &(what, src) in &forged_from {
        lab.ip(&lan, &["addr", "add", &format!("{src}/32"), "dev", "eth0"]);
        for &(proto, port) in &ports {
            forged.push(probe(what, &lan, src, proto, LAN_NODE, port));
        }
    }
    if zt.is_some() {
        // Not forged, but not on the cluster's network either.
        for &(proto, port) in &ports {
            forged.push(probe(
                "the LAN host itself",
                &lan,
                LAN_HOST,
                proto,
                LAN_NODE,
                port,
            ));
        }
    }
    lab.nft(&node, &witness(&forged));
    let _open: Vec<OwnedFd> = forged.iter().map(send_forged).collect();

    // Every packet reached the input hook: what happened to it next is the firewall's doing.
    let count = |c: &[(String, u64)], name: String| {
        c.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).unwrap()
    };
    let settled = until(|| {
        let c = counters(&node);
        (0..forged.len())
            .all(|i| count(&c, format!("seen_{i}")) > 0)
            .then_some(c)
    });
    let c = settled.unwrap_or_else(|| {
        panic!(
            "not every forged packet reached the node's input hook: {:?}",
            counters(&node)
        )
    });
    let mut received = Vec::new();
    for (port, s) in &udp {
        let mut buf = [0u8; 256];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            received.push((from.ip(), *port));
        }
    }
    forged
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let passed = count(&c, format!("passed_{i}")) > 0;
            let delivered = received.contains(&(IpAddr::V4(p.src), p.dst.port()));
            let line = format!(
                "{} {} -> {} {} on lan0: {}{}",
                p.what,
                p.src,
                p.proto.name(),
                p.dst,
                if passed { "ACCEPTED" } else { "dropped" },
                if delivered {
                    ", received by the node's socket"
                } else {
                    ""
                }
            );
            (line, passed || delivered)
        })
        .collect()
}

fn assert_all_dropped(results: Vec<(String, bool)>) {
    for (line, _) in &results {
        eprintln!("{line}");
    }
    let through: Vec<&String> = results.iter().filter(|(_, p)| *p).map(|(l, _)| l).collect();
    assert!(
        through.is_empty(),
        "forged packets from the LAN got past the firewall:\n{}",
        through
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn server_with_ups(zerotier: bool) -> Context<'static> {
    Context {
        admin_user: "ops",
        role: Role::Server,
        ups_server: true,
        zerotier,
        wireguard_port: None,
        etcd_peers: None,
    }
}

/// k3s runs over ZeroTier: node-to-node ports answer on the ZeroTier interface only, whatever
/// source a packet claims.
#[test]
fn forged_pod_sources_from_lan_are_dropped_with_zerotier() {
    if !root_or_skip("forged_pod_sources_from_lan_are_dropped_with_zerotier") {
        return;
    }
    assert_all_dropped(forged_packets_past_firewall("z", server_with_ups(true)));
}

/// k3s runs over the LAN: its private addresses are where the other nodes are, but pod and
/// service addresses never are.
#[test]
fn forged_pod_sources_from_lan_are_dropped_without_zerotier() {
    if !root_or_skip("forged_pod_sources_from_lan_are_dropped_without_zerotier") {
        return;
    }
    assert_all_dropped(forged_packets_past_firewall("l", server_with_ups(false)));
}
