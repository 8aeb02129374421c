//! The hardening files checked by the programs that read them on a node: sshd -T, nft (loaded
//! into throw-away network namespaces and probed with real connections), systemd-sysctl and
//! apt-config. The nftables and sysctl tests need root (network namespaces).

use imagegen::config::{Hardening, Role};
use imagegen::plan::hardening::{self, Context, HardeningError, RenderedFile};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tool the test cannot do without: a missing one fails the test, naming the package.
fn need(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install the Debian package {package}"
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node(role: Role, ups_server: bool, zerotier: bool) -> Context<'static> {
    Context {
        admin_user: "ops",
        role,
        ups_server,
        zerotier,
        wireguard_port: None,
        etcd_peers: None,
    }
}

fn rendered(ctx: &Context, path: &str) -> RenderedFile {
    hardening::files(&Hardening::default(), ctx)
        .unwrap()
        .into_iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no {path} rendered"))
}

// ---- sshd ----------------------------------------------------------------------------------

/// A directory laid out like an image's /etc/ssh, with a main file like Debian's.
struct SshDir {
    dir: tempfile::TempDir,
    hostkey: PathBuf,
}

impl SshDir {
    fn new(main_before_include: &str) -> SshDir {
        let keygen = need("/usr/bin/ssh-keygen", "openssh-client");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("sshd_config.d")).unwrap();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "# Debian's sshd_config, abridged\n{main_before_include}Include {}/sshd_config.d/*.conf\n\n#PasswordAuthentication yes\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\nSubsystem sftp /usr/lib/openssh/sftp-server\n",
                d.display()
            ),
        )
        .unwrap();
        // What cloud-init writes on Ubuntu raspi/cloud images when passwords are allowed.
        std::fs::write(
            d.join("sshd_config.d/50-cloud-init.conf"),
            "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\nPermitRootLogin yes\n",
        )
        .unwrap();
        let hostkey = d.join("ssh_host_ed25519_key");
        ok(Command::new(keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&hostkey));
        SshDir { dir, hostkey }
    }

    fn add(&self, name: &str, content: &str) {
        std::fs::write(self.dir.path().join("sshd_config.d").join(name), content).unwrap();
    }

    fn dropins(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("sshd_config.d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn main(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd_config")).unwrap()
    }

    /// `sshd -T` for a connection by `user`: the effective settings, one `key value` a line.
    fn effective(&self, user: &str) -> Vec<(String, String)> {
        let sshd = need("/usr/sbin/sshd", "openssh-server");
        let out = ok(Command::new(sshd)
            .arg("-T")
            .arg("-f")
            .arg(self.dir.path().join("sshd_config"))
            .arg("-h")
            .arg(&self.hostkey)
            .arg("-C")
            .arg(format!("user={user},host=x,addr=1.2.3.4")));
        out.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

fn get<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("sshd -T printed no {key}"))
}

/// The value our drop-in gives `keyword`.
fn ours(dropin: &str, keyword: &str) -> String {
    dropin
        .lines()
        .find_map(|l| l.strip_prefix(keyword)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("the drop-in sets no {keyword}"))
        .trim()
        .to_string()
}

#[test]
fn sshd_dropin_wins_over_cloud_init() {
    let ssh = SshDir::new("");
    // The fixture really turns password login on, before our drop-in is there.
    assert_eq!(get(&ssh.effective("ops"), "passwordauthentication"), "yes");

    let dropin = rendered(&node(Role::Agent, false, true), hardening::SSHD_DROPIN);
    assert_eq!(dropin.mode, 0o644);
    let name = Path::new(&dropin.path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    ssh.add(name, &dropin.content);
    assert_eq!(
        hardening::check_sshd_order(&ssh.main(), &ssh.dropins()),
        Ok(())
    );

    for user in ["ops", "root"] {
        let s = ssh.effective(user);
        assert_eq!(get(&s, "passwordauthentication"), "no", "{user}");
        assert_eq!(get(&s, "kbdinteractiveauthentication"), "no", "{user}");
        assert_eq!(get(&s, "permitrootlogin"), "no", "{user}");
        assert_eq!(get(&s, "permitemptypasswords"), "no", "{user}");
        assert_eq!(get(&s, "authenticationmethods"), "publickey", "{user}");
        assert_eq!(get(&s, "allowusers"), "ops", "{user}");
        assert_eq!(get(&s, "x11forwarding"), "no", "{user}");
        for (printed, keyword) in [
            ("kexalgorithms", "KexAlgorithms"),
            ("ciphers", "Ciphers"),
            ("macs", "MACs"),
            ("hostkeyalgorithms", "HostKeyAlgorithms"),
        ] {
            assert_eq!(get(&s, printed), ours(&dropin.content, keyword), "{user}");
        }
    }
}

#[test]
fn sshd_order_check_agrees_with_sshd() {
    let dropin = rendered(&node(Role::Server, false, false), hardening::SSHD_DROPIN);
    let name = Path::new(&dropin.path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();

    // The main file sets the option before its Include.
    let ssh = SshDir::new("PasswordAuthentication yes\n");
    ssh.add(name, &dropin.content);
    assert_eq!(get(&ssh.effective("ops"), "passwordauthentication"), "yes");
    assert!(matches!(
        hardening::check_sshd_order(&ssh.main(), &ssh.dropins()),
        Err(HardeningError::MainFileFirst { .. })
    ));

    // A vendor drop-in that sorts before ours.
    let ssh = SshDir::new("");
    ssh.add(name, &dropin.content);
    ssh.add("0-vendor.conf", "PasswordAuthentication yes\n");
    assert_eq!(get(&ssh.effective("ops"), "passwordauthentication"), "yes");
    assert!(matches!(
        hardening::check_sshd_order(&ssh.main(), &ssh.dropins()),
        Err(HardeningError::DropinFirst { name, .. }) if name == "0-vendor.conf"
    ));
}

// ---- nftables ------------------------------------------------------------------------------

/// Other servers' addresses as cluster.toml gives them: both families, one, or none at all.
const PEERS: [&[IpAddr]; 4] = [
    &[
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 11)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12)),
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 13)),
    ],
    &[IpAddr::V4(Ipv4Addr::new(10, 147, 17, 2))],
    &[IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 12))],
    &[],
];

fn every_node() -> Vec<Context<'static>> {
    let mut v = Vec::new();
    for role in [Role::Server, Role::Agent] {
        for ups in [false, true] {
            v.push(Context {
                wireguard_port: Some(51820),
                ..node(role, ups, false)
            });
            for zt in [false, true] {
                v.push(node(role, ups, zt));
                if role == Role::Server {
                    for peers in PEERS {
                        v.push(Context {
                            etcd_peers: Some(peers),
                            ..node(role, ups, zt)
                        });
                    }
                }
            }
        }
    }
    v
}

/// With the other servers' addresses, etcd answers those alone (on the ZeroTier interface when
/// k3s runs over it); without them, every cluster node, as kubelet does.
#[test]
fn etcd_is_open_to_the_other_servers_only_when_their_addresses_are_known() {
    let etcd_rules = |ctx: &Context| -> Vec<String> {
        rendered(ctx, hardening::NFTABLES_CONF)
            .content
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && l.contains("2379-2380"))
            .map(String::from)
            .collect()
    };
    let lan = node(Role::Server, false, false);
    assert_eq!(
        etcd_rules(&Context {
            etcd_peers: Some(PEERS[0]),
            ..lan
        }),
        [
            "ip saddr { 192.168.1.11, 192.168.1.13 } tcp dport 2379-2380 accept",
            "ip6 saddr { fd00::c } tcp dport 2379-2380 accept"
        ]
    );
    assert_eq!(
        etcd_rules(&Context {
            etcd_peers: Some(PEERS[1]),
            ..node(Role::Server, false, true)
        }),
        ["iifname \"zt*\" ip saddr { 10.147.17.2 } tcp dport 2379-2380 accept"]
    );
    assert!(
        etcd_rules(&Context {
            etcd_peers: Some(PEERS[3]),
            ..lan
        })
        .is_empty()
    );
    let kubelet_sources = |ctx: &Context| -> Vec<String> {
        rendered(ctx, hardening::NFTABLES_CONF)
            .content
            .lines()
            .filter_map(|l| l.trim().strip_suffix(" tcp dport 10250 accept"))
            .map(String::from)
            .collect()
    };
    // Unknown addresses: the same sources as kubelet's.
    for zt in [false, true] {
        let ctx = node(Role::Server, false, zt);
        let want: Vec<String> = kubelet_sources(&ctx)
            .iter()
            .map(|s| format!("{s} tcp dport 2379-2380 accept"))
            .collect();
        assert_eq!(etcd_rules(&ctx), want);
    }
    assert!(etcd_rules(&node(Role::Agent, false, false)).is_empty());
}

fn write_temp(content: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), content).unwrap();
    f
}

#[test]
fn nft_accepts_every_ruleset() {
    let nft = need("/usr/sbin/nft", "nftables");
    for ctx in every_node() {
        let f = rendered(&ctx, hardening::NFTABLES_CONF);
        assert_eq!(f.mode, 0o755);
        let file = write_temp(&f.content);
        let out = run(Command::new(&nft).arg("-c").arg("-f").arg(file.path()));
        assert!(
            out.status.success(),
            "{ctx:?}: nft -c rejects the ruleset: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Loading twice in a fresh network namespace leaves one copy of our table and does not touch
/// a table standing in for k3s's iptables-nft rules; neither does stopping nftables.service
/// with our unit drop-in.
#[test]
fn nft_reload_and_stop_spare_k3s() {
    need("/usr/sbin/nft", "nftables");
    let unshare = need("/usr/bin/unshare", "util-linux");
    let ctx = node(Role::Server, true, true);
    let ours = write_temp(&rendered(&ctx, hardening::NFTABLES_CONF).content);
    let k3s = write_temp(
        "table ip filter {\n\tchain KUBE-FORWARD {\n\t\tct state invalid drop\n\t}\n}\n",
    );
    // The unit's ExecStop after the drop-in: its empty ExecStop= clears Debian's
    // `nft flush ruleset`, what follows replaces it ('-' only tells systemd to ignore failure).
    let unit = rendered(&ctx, hardening::NFTABLES_UNIT_DROPIN).content;
    let stops: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStop="))
        .collect();
    let [reset, stop] = stops[..] else {
        panic!("expected a reset and one ExecStop: {unit}")
    };
    assert_eq!(reset, "", "{unit}");
    let stop = stop.strip_prefix('-').unwrap_or(stop);
    let listing = ok(Command::new(unshare).arg("-n").arg("sh").arg("-ec").arg(format!(
        "nft -f {k3s}; nft -f {ours}; nft -f {ours}; nft list ruleset; echo STOP; {stop}; nft list ruleset",
        k3s = k3s.path().display(),
        ours = ours.path().display()
    )));
    let (loaded, stopped) = listing.split_once("STOP").unwrap();
    assert_eq!(
        loaded.matches("table inet imagegen_filter").count(),
        1,
        "{loaded}"
    );
    assert!(loaded.contains("chain KUBE-FORWARD"), "{loaded}");
    assert_eq!(
        loaded.matches("tcp dport 6443 accept").count(),
        1,
        "{loaded}"
    );
    assert!(!stopped.contains("imagegen_filter"), "{stopped}");
    assert!(stopped.contains("chain KUBE-FORWARD"), "{stopped}");
}

/// Two network namespaces joined by a veth pair: the node (with our ruleset) and a peer.
struct Netns {
    node: String,
    peer: String,
}

impl Netns {
    fn new(tag: &str, node_if: &str, node_addr: &str, peer_addr: &str) -> Netns {
        let ip = need("/usr/sbin/ip", "iproute2");
        let pid = std::process::id();
        let n = Netns {
            node: format!("imgh-{pid}-{tag}-n"),
            peer: format!("imgh-{pid}-{tag}-p"),
        };
        ok(Command::new(&ip).args(["netns", "add", &n.node]));
        ok(Command::new(&ip).args(["netns", "add", &n.peer]));
        ok(Command::new(&ip).args([
            "link", "add", node_if, "netns", &n.node, "type", "veth", "peer", "name", "peer0",
            "netns", &n.peer,
        ]));
        for (ns, dev, addr) in [(&n.node, node_if, node_addr), (&n.peer, "peer0", peer_addr)] {
            // No duplicate address detection: the address must work at once.
            let nodad: &[&str] = if addr.contains(':') { &["nodad"] } else { &[] };
            ok(Command::new(&ip)
                .args(["-n", ns, "addr", "add", addr, "dev", dev])
                .args(nodad));
            ok(Command::new(&ip).args(["-n", ns, "link", "set", dev, "up"]));
            ok(Command::new(&ip).args(["-n", ns, "link", "set", "lo", "up"]));
        }
        n
    }

    /// For each TCP port of `addr`, whether a connection from the peer gets through the
    /// firewall: nothing listens, so a refusal (RST) means it passed and a time-out that it was
    /// dropped.
    fn reachable(&self, addr: &str, ports: &[u16]) -> Vec<(u16, bool)> {
        need("/usr/bin/timeout", "coreutils");
        let script: String = ports
            .iter()
            .map(|p| {
                format!(
                    "(timeout 2 bash -c 'exec 3<>/dev/tcp/{addr}/{p}' 2>/dev/null; echo \"{p} $?\") &\n"
                )
            })
            .chain(["wait\n".to_string()])
            .collect();
        let out = ok(Command::new(need("/usr/sbin/ip", "iproute2"))
            .args(["netns", "exec", &self.peer, "bash", "-c", &script]));
        let mut got: Vec<(u16, bool)> = out
            .lines()
            .map(|l| {
                let (p, rc) = l.split_once(' ').unwrap();
                // bash exits 1 on "connection refused", timeout 124 when it expires.
                let passed = match rc {
                    "1" => true,
                    "124" => false,
                    _ => panic!("probe of port {p} ended with {rc}: {out}"),
                };
                (p.parse().unwrap(), passed)
            })
            .collect();
        got.sort();
        got
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.node, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn probe(
    tag: &str,
    ctx: Context,
    node_if: &str,
    node_ip: &str,
    peer_ip: &str,
    plen: u8,
) -> Vec<(u16, bool)> {
    need("/usr/sbin/nft", "nftables");
    let ns = Netns::new(
        tag,
        node_if,
        &format!("{node_ip}/{plen}"),
        &format!("{peer_ip}/{plen}"),
    );
    let rules = write_temp(&rendered(&ctx, hardening::NFTABLES_CONF).content);
    ok(Command::new("ip")
        .args(["netns", "exec", &ns.node, "nft", "-f"])
        .arg(rules.path()));
    ns.reachable(node_ip, &[22, 2379, 3493, 6443, 10250])
}

fn open(ports: &[u16]) -> Vec<(u16, bool)> {
    [22, 2379, 3493, 6443, 10250]
        .into_iter()
        .map(|p| (p, ports.contains(&p)))
        .collect()
}

#[test]
fn nft_agent_on_lan_opens_ssh_and_kubelet_only() {
    let got = probe(
        "a",
        node(Role::Agent, false, false),
        "eth1",
        "192.168.77.1",
        "192.168.77.2",
        24,
    );
    assert_eq!(got, open(&[22, 10250]));
}

/// Also proves neighbour discovery gets through: without it no TCP reaches the node at all.
#[test]
fn nft_agent_on_ipv6_lan_opens_ssh_and_kubelet_only() {
    let got = probe(
        "6",
        node(Role::Agent, false, false),
        "eth1",
        "fd00:77::1",
        "fd00:77::2",
        64,
    );
    assert_eq!(got, open(&[22, 10250]));
}

#[test]
fn nft_ups_server_on_lan_opens_api_etcd_and_nut() {
    let got = probe(
        "s",
        node(Role::Server, true, false),
        "eth1",
        "192.168.78.1",
        "192.168.78.2",
        24,
    );
    assert_eq!(got, open(&[22, 2379, 3493, 6443, 10250]));
}

#[test]
fn nft_without_zerotier_keeps_cluster_ports_off_public_addresses() {
    let got = probe(
        "p",
        node(Role::Server, true, false),
        "eth1",
        "203.0.113.1",
        "203.0.113.2",
        24,
    );
    assert_eq!(got, open(&[22, 6443]));
}

#[test]
fn nft_with_zerotier_opens_cluster_ports_on_zerotier_only() {
    let ctx = node(Role::Server, false, true);
    assert_eq!(
        probe("z", ctx, "ztabc0", "10.147.17.1", "10.147.17.2", 24),
        open(&[22, 2379, 6443, 10250])
    );
    assert_eq!(
        probe("l", ctx, "eth1", "192.168.79.1", "192.168.79.2", 24),
        open(&[22, 6443])
    );
}

// ---- sysctl --------------------------------------------------------------------------------

/// Directories under /proc/sys a key (which may hold `*`) names on this machine.
fn proc_paths(key: &str) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/proc/sys")];
    for part in key.split('.') {
        paths = paths
            .into_iter()
            .flat_map(|p| {
                if part == "*" {
                    std::fs::read_dir(&p)
                        .map(|d| d.map(|e| e.unwrap().path()).collect())
                        .unwrap_or_default()
                } else {
                    vec![p.join(part)]
                }
            })
            .filter(|p| p.exists())
            .collect();
    }
    paths
}

#[test]
fn sysctl_keys_exist_once_and_apply() {
    let f = rendered(&node(Role::Agent, false, false), hardening::SYSCTL_CONF);
    let settings: Vec<(&str, &str)> = f
        .content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key = value");
            (k.trim(), v.trim())
        })
        .collect();
    assert!(settings.len() > 20);
    for (i, (k, _)) in settings.iter().enumerate() {
        assert!(
            !proc_paths(k).is_empty(),
            "{k} does not exist under /proc/sys"
        );
        assert!(
            !settings[..i].iter().any(|(o, _)| o == k),
            "{k} is set twice"
        );
    }

    // The network keys go through systemd-sysctl, which the node runs, in a throw-away network
    // namespace (the others would change this machine), and are read back.
    let sysctl = need("/lib/systemd/systemd-sysctl", "systemd");
    let unshare = need("/usr/bin/unshare", "util-linux");
    let file = write_temp(&f.content);
    let net: Vec<&(&str, &str)> = settings
        .iter()
        .filter(|(k, _)| k.starts_with("net."))
        .collect();
    let script = format!(
        "{} --prefix=/net {}\n{}",
        sysctl.display(),
        file.path().display(),
        net.iter()
            .map(|(k, _)| format!(
                "for f in /proc/sys/{}; do echo \"$f $(cat $f)\"; done\n",
                k.replace('.', "/")
            ))
            .collect::<String>()
    );
    let out = ok(Command::new(unshare).args(["-n", "sh", "-ec", &script]));
    for (k, v) in net {
        let glob = format!("/proc/sys/{}", k.replace('.', "/"));
        let (prefix, suffix) = glob.split_once('*').unwrap_or((&glob, ""));
        let read: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(p, _)| p.starts_with(prefix) && p.ends_with(suffix))
            .map(|(_, val)| val)
            .collect();
        assert!(!read.is_empty(), "{k} not read back: {out}");
        assert!(
            read.iter().all(|r| r == v),
            "{k}: wanted {v}, read {read:?}"
        );
    }
}

// ---- unattended-upgrades -------------------------------------------------------------------

/// apt's own parser over our files after a vendor's 50unattended-upgrades.
#[test]
fn apt_sees_security_origins_only() {
    let apt_config = need("/usr/bin/apt-config", "apt");
    let debian = "Unattended-Upgrade::Origins-Pattern {\n\t\"origin=Debian,codename=${distro_codename},label=Debian\";\n\t\"origin=Debian,codename=${distro_codename}-security,label=Debian-Security\";\n};\n";
    let ubuntu = "Unattended-Upgrade::Allowed-Origins {\n\t\"${distro_id}:${distro_codename}\";\n\t\"${distro_id}:${distro_codename}-security\";\n};\nUnattended-Upgrade::Automatic-Reboot \"true\";\n";
    let files = hardening::files(&Hardening::default(), &node(Role::Agent, false, false)).unwrap();
    let ours: Vec<&RenderedFile> = files
        .iter()
        .filter(|f| f.path.starts_with("/etc/apt/apt.conf.d/"))
        .collect();
    assert_eq!(ours.len(), 2);
    for vendor in [debian, ubuntu] {
        let dir = tempfile::tempdir().unwrap();
        let parts = dir.path().join("apt.conf.d");
        std::fs::create_dir(&parts).unwrap();
        std::fs::write(parts.join("50unattended-upgrades"), vendor).unwrap();
        for f in &ours {
            let name = Path::new(&f.path).file_name().unwrap();
            std::fs::write(parts.join(name), &f.content).unwrap();
        }
        let main = dir.path().join("apt.conf");
        std::fs::write(&main, format!("Dir::Etc::Parts \"{}\";\n", parts.display())).unwrap();
        let dump = ok(Command::new(&apt_config)
            .env("APT_CONFIG", &main)
            .arg("dump"));
        let value = |key: &str| -> Vec<&str> {
            dump.lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
                .map(|v| v.trim_end_matches(';').trim_matches('"'))
                .collect()
        };
        assert_eq!(value("APT::Periodic::Update-Package-Lists"), ["1"]);
        assert_eq!(value("APT::Periodic::Unattended-Upgrade"), ["1"]);
        assert_eq!(value("Unattended-Upgrade::Automatic-Reboot"), ["false"]);
        assert_eq!(
            value("Unattended-Upgrade::Allowed-Origins::"),
            Vec::<&str>::new()
        );
        let origins = value("Unattended-Upgrade::Origins-Pattern::");
        assert!(
            origins.contains(
                &"origin=Debian,codename=${distro_codename}-security,label=Debian-Security"
            ),
            "{dump}"
        );
        assert!(
            origins.contains(&"origin=Ubuntu,archive=${distro_codename}-security"),
            "{dump}"
        );
        // Only security pockets, and the Raspberry Pi / Raspbian archives that have none.
        for o in &origins {
            assert!(
                o.contains("-security") || o.contains("Raspbian") || o.contains("Raspberry Pi"),
                "{o} is not a security origin"
            );
        }
    }
}
