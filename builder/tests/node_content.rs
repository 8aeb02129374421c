//! Acceptance tests for what a node image holds (issue #4): `imagegen build` on every vendor
//! family's fixture, checked with the programs that read those files on a node (sshd -T, nft -c,
//! debugfs, mtools, sfdisk, blkid, e2fsck, fsck.fat) and against the vendor first-boot machinery
//! described in shared/research/vendor-images.md.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::oracle;
use imagegen_firstboot::root::Root;
use imagegen_firstboot::seed::{self, SEED_FILE_NAME, Seed};

/// What the issue asks k3s nodes on Raspberry Pis to boot with.
const CGROUP_ARGS: &[&str] = &["cgroup_memory=1", "cgroup_enable=memory"];
const ADMIN: &str = "ops";
const ADMIN_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKh3zm4jTyWkG2JCU6t4CiTqB2OtWqy8iOiOPc6FnUOu ops@laptop";
/// The NAS's SSH host key the cluster config pins (`[backup] host_keys`).
const NAS_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf nas";
/// Where the pinned NAS key goes in the image.
const NAS_KNOWN_HOSTS: &str = "/etc/imagegen/backup-known-hosts";
/// A vendor drop-in as cloud-init writes it when passwords are allowed: ours must win over it.
const HOSTILE_DROPIN: &str = "/etc/ssh/sshd_config.d/50-cloud-init.conf";

/// One fixture family and where things are in it (tests/fixtures/INDEX.md).
struct Family {
    layout: &'static str,
    board: &'static str,
    aarch64: bool,
    root: u32,
    /// The FAT partition the firmware or the UEFI reads.
    fat: u32,
    /// Where the image's /etc/fstab mounts it.
    boot: &'static str,
    /// Ubuntu 24.04 starts sshd through ssh.socket.
    ssh_socket: bool,
}

const FAMILIES: &[Family] = &[
    Family {
        layout: "rpios-bookworm",
        board: "rpi4",
        aarch64: true,
        root: 2,
        fat: 1,
        boot: "/boot/firmware",
        ssh_socket: false,
    },
    Family {
        layout: "rpios-trixie",
        board: "rpi4",
        aarch64: true,
        root: 2,
        fat: 1,
        boot: "/boot/firmware",
        ssh_socket: false,
    },
    Family {
        layout: "armbian-bpim5",
        board: "bpi-m5",
        aarch64: true,
        root: 1,
        fat: 0,
        boot: "/boot",
        ssh_socket: false,
    },
    Family {
        layout: "ubuntu-raspi",
        board: "rpi4",
        aarch64: true,
        root: 2,
        fat: 1,
        boot: "/boot/firmware",
        ssh_socket: true,
    },
    Family {
        layout: "ubuntu-cloud-amd64",
        board: "x86-64",
        aarch64: false,
        root: 1,
        fat: 15,
        boot: "/boot/efi",
        ssh_socket: true,
    },
    Family {
        layout: "debian-genericcloud",
        board: "x86-64",
        aarch64: false,
        root: 1,
        fat: 15,
        boot: "/boot/efi",
        ssh_socket: false,
    },
];

fn family(layout: &str) -> &'static Family {
    FAMILIES.iter().find(|f| f.layout == layout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A cluster config with every section, its secrets and agent stand-ins, in a temporary dir.
struct Cluster {
    dir: tempfile::TempDir,
    token: String,
    nut_password: String,
}

impl Cluster {
    fn new(hardening: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("node-content-")
            .tempdir_in(scratch())
            .unwrap();
        let d = dir.path();
        // Unique per test so one test's secret can never be found in another's image.
        let nonce = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let token = format!(
            "K10{}::server:TokenSecret{nonce}",
            "c0ffee".repeat(11).chars().take(64).collect::<String>()
        );
        let nut_password = format!("NutSecret{nonce}");
        fs::create_dir(d.join("secrets")).unwrap();
        fs::write(d.join("secrets/k3s-token"), format!("{token}\n")).unwrap();
        fs::write(d.join("secrets/nut-password"), format!("{nut_password}\n")).unwrap();
        fs::write(
            d.join("secrets/wifi-psk"),
            format!("{}\n", wifi_psk(&nonce)),
        )
        .unwrap();
        fs::write(d.join("k3s"), "#!/bin/sh\n# k3s stand-in\nexit 0\n").unwrap();
        for (name, machine) in [("agent-aarch64", 183u16), ("agent-x86_64", 62)] {
            fs::write(d.join(name), elf(machine)).unwrap();
        }
        fs::write(
            d.join("cluster.toml"),
            format!(
                r#"[cluster]
name = "lab"
[admin]
user = "{ADMIN}"
ssh_authorized_keys = ["{ADMIN_KEY}"]
[k3s]
server_url = "https://10.147.17.10:6443"
token_file = "secrets/k3s-token"
binary = "k3s"
[zerotier]
network_id = "8056c2e21c000001"
[ups]
server = "master"
ups = "riello"
driver = "riello_usb"
user = "monuser"
password_file = "secrets/nut-password"
[backup]
target = "ssh://backup@nas.lan/volume1/backups"
host_keys = ["{NAS_KEY}"]
{hardening}
[[nodes]]
name = "master"
board = "x86-64"
role = "server"
[nodes.network]
address = "192.168.1.20/24"
gateway = "192.168.1.1"
[[nodes]]
name = "x86-b"
board = "x86-64"
role = "agent"
[nodes.network]
address = "192.168.1.21/24"
gateway = "192.168.1.1"
[[nodes]]
name = "x86-c"
board = "x86-64"
role = "agent"
[nodes.network]
address = "192.168.1.22/24"
[[nodes]]
name = "pi4-a"
board = "rpi4"
role = "agent"
[nodes.network]
address = "192.168.1.23/24"
gateway = "192.168.1.1"
dns = ["1.1.1.1", "2606:4700:4700::1111"]
address6 = "fd00::23/64"
gateway6 = "fe80::1"
wifi = {{ ssid = "lab net", psk_file = "secrets/wifi-psk", country = "DE", hidden = true }}
[[nodes]]
name = "pi4-b"
board = "rpi4"
role = "agent"
[nodes.network]
address = "192.168.1.24/24"
gateway = "192.168.1.1"
dns = ["1.1.1.1"]
wifi = {{ ssid = "lab net", psk_file = "secrets/wifi-psk", country = "DE" }}
[[nodes]]
name = "bpi-a"
board = "bpi-m5"
role = "agent"
[nodes.network]
address = "192.168.1.25/24"
gateway = "192.168.1.1"
"#
            ),
        )
        .unwrap();
        Cluster {
            dir,
            token,
            nut_password,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn state(&self) -> PathBuf {
        self.path("state")
    }

    /// `imagegen build` of `node` on `base`; fails the test unless it succeeds.
    fn build(&self, fam: &Family, base: &Path, node: &str, out: &str, extra: &[&str]) -> Built {
        let b = self.try_build(fam, base, node, out, extra);
        assert!(b.ok, "imagegen build of {node} failed:\n{}", b.stderr);
        b
    }

    /// `imagegen build` of `node`, succeeding or not.
    fn try_build(&self, fam: &Family, base: &Path, node: &str, out: &str, extra: &[&str]) -> Built {
        let img = self.path(out);
        let agent = self.path(if fam.aarch64 {
            "agent-aarch64"
        } else {
            "agent-x86_64"
        });
        let config = self.path("cluster.toml");
        let state = self.state();
        let mut args = vec![
            "build",
            "-c",
            s(&config),
            "--node",
            node,
            "--base",
            s(base),
            "--agent",
            s(&agent),
            "--state-dir",
            s(&state),
            "-o",
            s(&img),
        ];
        args.extend_from_slice(extra);
        let out = imagegen_output(&args);
        Built {
            img,
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn personalize(&self, img: &Path, node: &str) -> Output {
        let out = self.try_personalize(img, node);
        assert!(
            out.status.success(),
            "personalize failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn try_personalize(&self, img: &Path, node: &str) -> Output {
        let config = self.path("cluster.toml");
        let state = self.state();
        imagegen_output(&[
            "personalize",
            s(img),
            "--config",
            s(&config),
            "--node",
            node,
            "--state-dir",
            s(&state),
        ])
    }
}

/// /dev/shm when writable: e2fsprogs fsyncs, which makes builds on a slow disk seconds slower.
/// The images are sparse, so a few MiB each.
/// The Wi-Fi passphrase of the test cluster: unique per test, so it can be searched for.
fn wifi_psk(nonce: &str) -> String {
    format!("WifiSecret{nonce}").chars().take(63).collect()
}

fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if tempfile::tempdir_in(shm).is_ok() {
        shm.to_path_buf()
    } else {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    }
}

struct Built {
    img: PathBuf,
    ok: bool,
    stdout: String,
    stderr: String,
}

fn imagegen_output(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagegen"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap()
}

/// A 64-byte ELF64 little-endian header for `machine` (183 aarch64, 62 x86_64).
fn elf(machine: u16) -> Vec<u8> {
    let mut h = b"\x7fELF\x02\x01\x01".to_vec();
    h.extend_from_slice(&[0; 9]);
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&machine.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&[0; 40]);
    h
}

/// The fixture of `fam`, with what real images of the family have and the fixtures leave out:
/// a vendor sshd drop-in that allows passwords (cloud-init writes one on Ubuntu), and on Ubuntu
/// 24.04 sshd enabled through ssh.socket as the image ships it.
fn base(fam: &Family) -> tempfile::TempPath {
    let img = common::fixture(fam.layout);
    let start = oracle::partition(&img, fam.root).start;
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dropin = scratch.path().join("dropin");
    fs::write(
        &dropin,
        "PasswordAuthentication yes\nKbdInteractiveAuthentication yes\nPermitRootLogin yes\n",
    )
    .unwrap();
    let socket = scratch.path().join("ssh.socket");
    fs::write(
        &socket,
        "[Unit]\nDescription=OpenBSD Secure Shell server socket\n\n[Socket]\nListenStream=22\nAccept=no\n\n[Install]\nWantedBy=sockets.target\n",
    )
    .unwrap();
    // Debian ships nftables.service disabled; the build enables it for the firewall.
    let nftables = scratch.path().join("nftables.service");
    fs::write(
        &nftables,
        "[Unit]\nDescription=nftables\nDefaultDependencies=no\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/sbin/nft -f /etc/nftables.conf\n\n[Install]\nWantedBy=sysinit.target\n",
    )
    .unwrap();
    let mut script = String::new();
    let unit_dir = if debugfs_exists(&img, start, "/usr/lib/systemd/system") {
        "/usr/lib/systemd/system"
    } else {
        "/lib/systemd/system"
    };
    script.push_str(&format!(
        "write {} {unit_dir}/nftables.service\nsif {unit_dir}/nftables.service uid 0\nsif {unit_dir}/nftables.service gid 0\n",
        s(&nftables)
    ));
    if !debugfs_exists(&img, start, "/etc/ssh/sshd_config.d") {
        script.push_str("mkdir /etc/ssh/sshd_config.d\n");
    }
    script.push_str(&format!(
        "write {} {HOSTILE_DROPIN}\nsif {HOSTILE_DROPIN} uid 0\nsif {HOSTILE_DROPIN} gid 0\n",
        s(&dropin)
    ));
    if fam.ssh_socket {
        let unit = "/usr/lib/systemd/system/ssh.socket";
        script.push_str(&format!(
            "write {} {unit}\nsif {unit} uid 0\nsif {unit} gid 0\n\
             mkdir /etc/systemd/system/sockets.target.wants\n\
             symlink /etc/systemd/system/sockets.target.wants/ssh.socket {unit}\n",
            s(&socket)
        ));
    }
    let cmds = scratch.path().join("cmds");
    fs::write(&cmds, script).unwrap();
    oracle::run(
        "debugfs",
        &["-w", "-f", s(&cmds), &oracle::ext4_at(&img, start)],
    );
    oracle::assert_e2fsck_clean(&img, start);
    img
}

fn debugfs_exists(img: &Path, start: u64, path: &str) -> bool {
    let out = oracle::output(
        "debugfs",
        &[
            "-R",
            &format!("stat \"{path}\""),
            &oracle::ext4_at(img, start),
        ],
    );
    !String::from_utf8_lossy(&out.stderr).contains("not found")
}

/// Mode bits, uid, gid and type of `path` as debugfs reports them (None when absent).
#[derive(Debug, PartialEq, Eq)]
struct Inode {
    mode: u32,
    uid: u32,
    gid: u32,
    kind: String,
}

fn stat(img: &Path, start: u64, path: &str) -> Option<Inode> {
    if !debugfs_exists(img, start, path) {
        return None;
    }
    let text = oracle::debugfs(img, start, &format!("stat \"{path}\""));
    let field = |name: &str| -> String {
        text.split_whitespace()
            .skip_while(|w| *w != name)
            .nth(1)
            .unwrap_or_else(|| panic!("debugfs stat {path}: no {name} in\n{text}"))
            .to_string()
    };
    Some(Inode {
        mode: u32::from_str_radix(&field("Mode:"), 8).unwrap() & 0o7777,
        uid: field("User:").parse().unwrap(),
        gid: field("Group:").parse().unwrap(),
        kind: field("Type:"),
    })
}

/// The bytes of `path` in the ext4 filesystem at `start`.
fn ext4_bytes(img: &Path, start: u64, path: &str) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    oracle::debugfs(img, start, &format!("dump \"{path}\" {}", s(out.path())));
    fs::read(out.path()).unwrap()
}

/// `debugfs rdump DIR` of the image into a fresh temporary directory.
fn rdump(img: &Path, start: u64, dirs: &[&str]) -> tempfile::TempDir {
    let dest = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for d in dirs {
        let sub = dest.path().join(d.trim_start_matches('/'));
        let parent = sub.parent().unwrap();
        fs::create_dir_all(parent).unwrap();
        oracle::debugfs(img, start, &format!("rdump \"{d}\" {}", s(parent)));
    }
    dest
}

fn require(cond: bool, what: &str, failures: &mut Vec<String>) {
    if !cond {
        failures.push(what.to_string());
    }
}

/// The kernel command line of a Pi image, from the FAT partition, as one line.
fn cmdline(img: &Path, fat_start: u64) -> String {
    let text = oracle::fat_cat(img, fat_start, "/cmdline.txt");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "cmdline.txt must stay one line: {text:?}"
    );
    text.trim_end().to_string()
}

/// Where `root=` leads: the partition number it names, checked with sfdisk and blkid.
fn root_target(img: &Path, root: &str) -> Option<u32> {
    let parts = oracle::partitions(img);
    if let Some(u) = root.strip_prefix("PARTUUID=") {
        let table = oracle::sfdisk_json(img);
        let id = table["id"].as_str().unwrap().trim_start_matches("0x");
        let (disk, num) = u.rsplit_once('-')?;
        let num: u32 = num.parse().ok()?;
        return (disk.eq_ignore_ascii_case(id) && parts.iter().any(|p| p.number == num))
            .then_some(num);
    }
    let label = root.strip_prefix("LABEL=")?;
    parts
        .iter()
        .find(|p| oracle::blkid(img, p.start).get("LABEL").map(String::as_str) == Some(label))
        .map(|p| p.number)
}

/// The data blocks (in bytes from the start of the image) holding `path`.
fn file_extent_bytes(img: &Path, start: u64, path: &str) -> Vec<(u64, u64)> {
    let blocks = oracle::debugfs(img, start, &format!("blocks \"{path}\""));
    let bs: u64 = oracle::dumpe2fs(img, start)["Block size"].parse().unwrap();
    blocks
        .split_whitespace()
        .map(|b| {
            let b: u64 = b.parse().unwrap();
            let at = start * 512 + b * bs;
            (at, at + bs)
        })
        .collect()
}

/// The data ranges of a sparse file (SEEK_DATA/SEEK_HOLE): holes read as zeros, so nothing
/// that is not all zeros can be in them.
fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let f = fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let Ok(start) = seek(&f, SeekFrom::Data(at)) else {
            break;
        };
        let end = seek(&f, SeekFrom::Hole(start)).unwrap_or(len);
        out.push((start, end));
        at = end;
    }
    out
}

fn read_range(f: &mut fs::File, (a, z): (u64, u64)) -> Vec<u8> {
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(a)).unwrap();
    let mut buf = vec![0; usize::try_from(z - a).unwrap()];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Every offset of `needle` (which holds no zero byte) in the file at `path`.
fn offsets_of(path: &Path, needle: &[u8]) -> Vec<u64> {
    assert!(!needle.contains(&0));
    let mut f = fs::File::open(path).unwrap();
    let mut found = Vec::new();
    for range in data_ranges(path) {
        let bytes = read_range(&mut f, range);
        found.extend(
            memfind(&bytes, needle)
                .into_iter()
                .map(|i| range.0 + i as u64),
        );
    }
    found
}

fn memfind(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// The checks of the issue's list that hold for a full node build of every family.
fn check_node_image(cluster: &Cluster, fam: &Family, base_img: &Path, b: &Built, node: &str) {
    let img = &b.img;
    let root = oracle::partition(img, fam.root).start;
    let mut fails = Vec::new();

    // The admin's key, only readable by the admin.
    let tree = rdump(img, root, &["/etc"]);
    let etc = tree.path().join("etc");
    let passwd = fs::read_to_string(etc.join("passwd")).unwrap();
    let entry: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with(&format!("{ADMIN}:")))
        .expect("the admin is in /etc/passwd")
        .split(':')
        .collect();
    let (uid, home) = (entry[2].parse::<u32>().unwrap(), entry[5]);
    let ak = format!("{home}/.ssh/authorized_keys");
    let st = stat(img, root, &ak).expect("authorized_keys exists");
    require(
        st.mode == 0o600 && st.uid == uid,
        &format!("{ak} is {st:?}, want 0600 owned by uid {uid}"),
        &mut fails,
    );
    require(
        String::from_utf8_lossy(&ext4_bytes(img, root, &ak)).contains(ADMIN_KEY),
        "authorized_keys holds the admin key",
        &mut fails,
    );

    // Nobody logs in with a password: vendor defaults (Armbian's root, RPi's pi) are locked.
    let shadow = fs::read_to_string(etc.join("shadow")).unwrap();
    for l in shadow.lines() {
        let f: Vec<&str> = l.split(':').collect();
        let hash = f.get(1).copied().unwrap_or("");
        require(
            hash.starts_with(['!', '*']),
            &format!("{} can log in with a password (or none): {hash:?}", f[0]),
            &mut fails,
        );
    }

    // sshd: our drop-in first, effective settings from the image's own /etc/ssh and host keys.
    let ssh = etc.join("ssh");
    let mut dropins: Vec<String> = fs::read_dir(ssh.join("sshd_config.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    dropins.sort();
    let base_root = oracle::partition(base_img, fam.root).start;
    let base_tree = rdump(base_img, base_root, &["/etc/ssh"]);
    let ours: Vec<&String> = dropins
        .iter()
        .filter(|d| {
            !base_tree
                .path()
                .join("etc/ssh/sshd_config.d")
                .join(d)
                .exists()
        })
        .collect();
    require(
        ours.len() == 1 && dropins.first() == ours.first().copied(),
        &format!("our sshd drop-in sorts first: {dropins:?}"),
        &mut fails,
    );
    let main = fs::read_to_string(ssh.join("sshd_config")).unwrap();
    fs::write(
        ssh.join("sshd_config"),
        main.replace("Include /etc/ssh/", &format!("Include {}/", s(&ssh))),
    )
    .unwrap();
    // sshd run by root insists on its privilege separation directory even for -T; the service
    // makes it (RuntimeDirectory), but a machine where sshd never ran as a service lacks it.
    if Path::new("/run").is_dir() && std::env::var("USER").as_deref() == Ok("root") {
        let _ = fs::create_dir_all("/run/sshd");
    }
    let mut sshd = Command::new(oracle::tool("sshd"));
    sshd.arg("-T").arg("-f").arg(ssh.join("sshd_config"));
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let key = ssh.join(format!("ssh_host_{kind}_key"));
        assert!(
            key.exists(),
            "{layout}: no {kind} host key",
            layout = fam.layout
        );
        // The private and public halves belong together.
        let derived = oracle::run("ssh-keygen", &["-y", "-f", s(&key)]);
        let public = fs::read_to_string(ssh.join(format!("ssh_host_{kind}_key.pub"))).unwrap();
        require(
            public
                .split_whitespace()
                .take(2)
                .eq(derived.split_whitespace().take(2)),
            &format!("{kind} host key pair matches"),
            &mut fails,
        );
        sshd.arg("-h").arg(key);
    }
    sshd.arg("-C")
        .arg(format!("user={ADMIN},host=x,addr=1.2.3.4"));
    let out = sshd.output().unwrap();
    assert!(
        out.status.success(),
        "{}: sshd -T: {}",
        fam.layout,
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in [
        ("passwordauthentication", "no"),
        ("permitrootlogin", "no"),
        ("kbdinteractiveauthentication", "no"),
    ] {
        require(
            effective.get(k).map(String::as_str) == Some(v),
            &format!("sshd -T: {k} {:?}, want {v}", effective.get(k)),
            &mut fails,
        );
    }

    // nft accepts the firewall.
    let nft = oracle::output("nft", &["-c", "-f", s(&etc.join("nftables.conf"))]);
    require(
        nft.status.success(),
        &format!("nft -c: {}", String::from_utf8_lossy(&nft.stderr)),
        &mut fails,
    );

    require(
        fs::read_to_string(etc.join("hostname")).unwrap() == format!("{node}\n"),
        "hostname is the node name",
        &mut fails,
    );

    // Every unit link in a *.wants dir points at an existing unit; the agent's are among them.
    let mut enabled = Vec::new();
    for entry in fs::read_dir(etc.join("systemd/system")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".wants") {
            continue;
        }
        for link in fs::read_dir(entry.path()).unwrap() {
            let link = link.unwrap();
            let target = fs::read_link(link.path()).unwrap();
            let target = s(&target).to_string();
            let unit = link.file_name().to_string_lossy().into_owned();
            let st = stat(img, root, &target);
            require(
                st.as_ref().is_some_and(|st| st.kind == "regular"),
                &format!("{name}/{unit} -> {target} is not a unit file ({st:?})"),
                &mut fails,
            );
            enabled.push(format!("{name}/{unit}"));
        }
    }
    for unit in [
        "sysinit.target.wants/nftables.service",
        "multi-user.target.wants/imagegen-firstboot.service",
        "timers.target.wants/imagegen-firstboot-retry.timer",
    ] {
        require(
            enabled.iter().any(|e| e == unit),
            &format!("{unit} enabled ({enabled:?})"),
            &mut fails,
        );
    }
    let agent = cluster.path(if fam.aarch64 {
        "agent-aarch64"
    } else {
        "agent-x86_64"
    });
    require(
        ext4_bytes(img, root, "/usr/local/bin/imagegen-firstboot") == fs::read(agent).unwrap(),
        "the agent binary is in place",
        &mut fails,
    );
    // sshd starts exactly one way: the service or (Ubuntu 24.04) the socket.
    let ssh_ways: Vec<&String> = enabled
        .iter()
        .filter(|e| {
            [
                "multi-user.target.wants/ssh.service",
                "multi-user.target.wants/sshd.service",
                "sockets.target.wants/ssh.socket",
            ]
            .contains(&e.as_str())
        })
        .collect();
    require(
        ssh_ways.len() == 1
            && (!fam.ssh_socket || ssh_ways[0] == "sockets.target.wants/ssh.socket"),
        &format!("sshd enabled exactly once: {ssh_ways:?}"),
        &mut fails,
    );
    require(
        !is_masked(&etc, "ssh.service") && !is_masked(&etc, "ssh.socket"),
        "sshd is not masked",
        &mut fails,
    );

    // Secrets and the node config: root's alone.
    for secret in [
        "/etc/imagegen/node.toml",
        "/etc/rancher/k3s/token",
        "/etc/imagegen/nut-password",
        "/etc/imagegen/backup-key",
        "/etc/rancher/node/password",
        "/etc/ssh/ssh_host_ed25519_key",
    ] {
        let st = stat(img, root, secret);
        require(
            st.as_ref()
                .is_some_and(|st| st.mode == 0o600 && st.uid == 0 && st.gid == 0),
            &format!("{secret} is {st:?}, want 0600 root:root"),
            &mut fails,
        );
    }
    require(
        ext4_bytes(img, root, "/etc/rancher/k3s/token") == cluster.token.as_bytes(),
        "the token file holds the token",
        &mut fails,
    );

    // Issue 11 item 2: the NAS host key the config pins is in the image, root's alone, and
    // ssh-keygen finds it for the NAS as the node's ssh looks it up; node.toml points at it.
    let st = stat(img, root, NAS_KNOWN_HOSTS);
    require(
        st.as_ref()
            .is_some_and(|st| st.mode == 0o600 && st.uid == 0 && st.gid == 0),
        &format!("{NAS_KNOWN_HOSTS} is {st:?}, want 0600 root:root"),
        &mut fails,
    );
    if st.is_some() {
        let known_hosts = etc.join("imagegen/backup-known-hosts");
        let found = oracle::output("ssh-keygen", &["-F", "nas.lan", "-f", s(&known_hosts)]);
        let blob = NAS_KEY.split_whitespace().nth(1).unwrap();
        require(
            found.status.success() && String::from_utf8_lossy(&found.stdout).contains(blob),
            &format!(
                "ssh-keygen -F nas.lan finds the pinned key in {NAS_KNOWN_HOSTS}: {}",
                String::from_utf8_lossy(&found.stdout)
            ),
            &mut fails,
        );
    }
    let node_toml = String::from_utf8(ext4_bytes(img, root, "/etc/imagegen/node.toml")).unwrap();
    require(
        node_toml.contains(&format!("known_hosts_file = \"{NAS_KNOWN_HOSTS}\"")),
        &format!("node.toml names {NAS_KNOWN_HOSTS}:\n{node_toml}"),
        &mut fails,
    );

    // Vendor first boot: no wizard left armed, root expansion still armed.
    let fat = (fam.fat != 0).then(|| oracle::partition(img, fam.fat).start);
    let cmd = (fam.board == "rpi4").then(|| cmdline(img, fat.unwrap()));
    if let Some(cmd) = &cmd {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        for want in CGROUP_ARGS {
            require(
                args.contains(want),
                &format!("cmdline has {want}"),
                &mut fails,
            );
        }
        let root_arg = args
            .iter()
            .find_map(|a| a.strip_prefix("root="))
            .expect("cmdline has root=");
        require(
            root_target(img, root_arg) == Some(fam.root),
            &format!("root={root_arg} names partition {} of the image", fam.root),
            &mut fails,
        );
    }
    let seed_text = |name: &str| -> String {
        match fam.layout {
            "ubuntu-raspi" => oracle::fat_cat(img, fat.unwrap(), &format!("/{name}")),
            _ => String::from_utf8(ext4_bytes(
                img,
                root,
                &format!("/var/lib/cloud/seed/nocloud/{name}"),
            ))
            .unwrap(),
        }
    };
    let cloud_init_off = etc.join("cloud/cloud-init.disabled").exists();
    match fam.layout {
        "rpios-bookworm" | "rpios-trixie" => {
            require(
                is_masked(&etc, "userconfig.service"),
                "userconfig.service masked",
                &mut fails,
            );
            require(
                is_masked(&etc, "regenerate_ssh_host_keys.service"),
                "regenerate_ssh_host_keys.service masked (the node keeps its host keys)",
                &mut fails,
            );
            let cmd = cmd.as_deref().unwrap();
            if fam.layout == "rpios-bookworm" {
                require(
                    cmd.split_whitespace()
                        .any(|a| a == "init=/usr/lib/raspberrypi-sys-mods/firstboot"),
                    "bookworm firstboot (root expansion) still in cmdline",
                    &mut fails,
                );
                // That firstboot deletes and regenerates the host keys before systemd: a unit
                // enabled before sshd puts the node's own keys back.
                check_bookworm_key_restore(&etc, &mut fails);
            } else {
                require(
                    cmd.split_whitespace().any(|a| a == "resize"),
                    "trixie resize still in cmdline",
                    &mut fails,
                );
                require(
                    fs::read_to_string(etc.join("machine-id")).unwrap() == "uninitialized\n",
                    "machine-id still uninitialized (rpi-resize runs on a first boot only)",
                    &mut fails,
                );
                require(
                    enabled.iter().any(|e| e.ends_with("/rpi-resize.service"))
                        && !is_masked(&etc, "rpi-resize.service"),
                    "rpi-resize.service still enabled",
                    &mut fails,
                );
                require(cloud_init_off, "trixie: cloud-init disabled", &mut fails);
                preset_all_spares_agent_units(img, root, &mut fails);
            }
        }
        "armbian-bpim5" => {
            require(
                stat(img, root, "/root/.not_logged_in_yet").is_none(),
                "/root/.not_logged_in_yet removed",
                &mut fails,
            );
            require(
                stat(img, root, "/root/.no_rootfs_resize").is_none(),
                "no /root/.no_rootfs_resize",
                &mut fails,
            );
            for d in ["getty@.service.d", "serial-getty@.service.d"] {
                if let Ok(entries) = fs::read_dir(etc.join("systemd/system").join(d)) {
                    for e in entries {
                        let text = fs::read_to_string(e.unwrap().path()).unwrap();
                        require(
                            !text.contains("autologin"),
                            &format!("{d}: no root autologin"),
                            &mut fails,
                        );
                    }
                }
            }
            let firstrun = fs::read_to_string(etc.join("default/armbian-firstrun")).unwrap();
            require(
                firstrun
                    .lines()
                    .any(|l| l.trim() == "OPENSSHD_REGENERATE_HOST_KEYS=false"),
                "armbian-firstrun keeps the host keys",
                &mut fails,
            );
            require(
                enabled
                    .iter()
                    .any(|e| e.ends_with("/armbian-resize-filesystem.service"))
                    && !is_masked(&etc, "armbian-resize-filesystem.service"),
                "armbian-resize-filesystem still enabled",
                &mut fails,
            );
        }
        _ => {
            // cloud-init stays on for growpart/resizefs, fed a seed with no users or passwords.
            require(!cloud_init_off, "cloud-init still enabled", &mut fails);
            let user_data = seed_text("user-data");
            let meta = seed_text("meta-data");
            require(
                user_data.starts_with("#cloud-config\n"),
                "user-data is cloud-config",
                &mut fails,
            );
            for bad in [
                "passw",
                "chpasswd",
                "plain_text",
                "ssh_authorized_keys",
                "- name:",
            ] {
                require(
                    !user_data.lines().any(|l| l.trim_start().starts_with(bad)),
                    &format!("cloud-init user-data has no {bad:?}:\n{user_data}"),
                    &mut fails,
                );
            }
            let keys = yaml_top_level(&user_data);
            require(
                keys.get("users").map(String::as_str) == Some("[]"),
                "cloud-init creates no users (not even the default one)",
                &mut fails,
            );
            require(
                keys.get("ssh_pwauth").map(String::as_str) == Some("false"),
                "ssh_pwauth false",
                &mut fails,
            );
            require(
                keys.get("ssh_deletekeys").map(String::as_str) == Some("false"),
                "cloud-init keeps the node's host keys",
                &mut fails,
            );
            require(
                keys.get("resize_rootfs").map(String::as_str) == Some("true")
                    && user_data.contains("growpart:\n  mode: auto\n"),
                "cloud-init seed has growpart and resize_rootfs",
                &mut fails,
            );
            require(
                meta.lines().any(|l| l.starts_with("instance-id: ")),
                "meta-data has an instance-id",
                &mut fails,
            );
            if fam.layout != "ubuntu-raspi" {
                let list = fs::read_to_string(etc.join("cloud/cloud.cfg.d/90-imagegen.cfg"))
                    .unwrap_or_default();
                require(
                    list.contains("datasource_list: [ NoCloud, None ]"),
                    "cloud-init looks at NoCloud only",
                    &mut fails,
                );
            }
        }
    }

    // Filesystems clean.
    for p in oracle::partitions(img) {
        match oracle::blkid(img, p.start).get("TYPE").map(String::as_str) {
            Some("ext4") => oracle::assert_e2fsck_clean(img, p.start),
            Some("vfat") => oracle::assert_fsck_fat_clean(img, p.start, p.size),
            _ => {}
        }
    }

    // The token: in the 0600 file only, never in the output, the manifest or elsewhere.
    let manifest = fs::read_to_string(format!("{}.manifest.json", s(img))).unwrap();
    for secret in [&cluster.token, &cluster.nut_password] {
        require(
            !manifest.contains(secret.as_str()),
            "a secret is in the manifest",
            &mut fails,
        );
        require(
            !b.stdout.contains(secret.as_str()) && !b.stderr.contains(secret.as_str()),
            "a secret is in the build's output",
            &mut fails,
        );
    }
    for (secret, file) in [
        (&cluster.token, "/etc/rancher/k3s/token"),
        (&cluster.nut_password, "/etc/imagegen/nut-password"),
    ] {
        let inside = file_extent_bytes(img, root, file);
        let hits = offsets_of(img, secret.as_bytes());
        require(
            !hits.is_empty(),
            &format!("{file} found in the raw image"),
            &mut fails,
        );
        for at in hits {
            require(
                inside
                    .iter()
                    .any(|(a, z)| *a <= at && at + secret.len() as u64 <= *z),
                &format!("the secret of {file} is also at byte {at}, outside that file"),
                &mut fails,
            );
        }
    }

    assert!(
        fails.is_empty(),
        "{} node {node}:\n  {}",
        fam.layout,
        fails.join("\n  ")
    );
}

/// A systemd first boot (machine-id `uninitialized`) runs `preset-all`, which on Debian enables
/// every unit with an [Install] section. Run it on the image's units with systemctl --root: the
/// units the agent enables only when the node needs them must stay off.
fn preset_all_spares_agent_units(img: &Path, root: u64, fails: &mut Vec<String>) {
    let systemctl = Path::new("/usr/bin/systemctl");
    assert!(
        systemctl.exists(),
        "systemctl is needed by this test: apt-get install systemd"
    );
    let tree = rdump(img, root, &["/etc", "/usr/lib/systemd"]);
    let out = Command::new(systemctl)
        .arg(format!("--root={}", s(tree.path())))
        .args(["preset-all", "--preset-mode=enable-only"])
        .output()
        .unwrap();
    // Masked vendor units make it exit non-zero after doing everything else.
    let log = String::from_utf8_lossy(&out.stderr);
    for unit in [
        "k3s.service",
        "k3s-agent.service",
        "imagegen-ups-watch.service",
        "imagegen-backup.timer",
    ] {
        if log
            .lines()
            .any(|l| l.starts_with("Created symlink") && l.contains(&format!("/{unit} ")))
        {
            fails.push(format!("a first boot's preset-all enables {unit}"));
        }
    }
    assert!(
        log.contains("Created symlink") || log.contains("masked") || out.status.success(),
        "systemctl preset-all did not run: {log}"
    );
}

fn is_masked(etc: &Path, unit: &str) -> bool {
    fs::read_link(etc.join("systemd/system").join(unit)).is_ok_and(|t| t == Path::new("/dev/null"))
}

/// `key: value` pairs at the top level of a YAML document (enough for cloud-config).
fn yaml_top_level(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with([' ', '#', '-']))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Bookworm's firstboot replaces the host keys: a copy and an enabled unit ordered before sshd
/// must put the node's own keys back.
fn check_bookworm_key_restore(etc: &Path, fails: &mut Vec<String>) {
    let wants = etc.join("systemd/system/multi-user.target.wants");
    let mut restorer = None;
    for e in fs::read_dir(&wants).unwrap() {
        let e = e.unwrap();
        let target = fs::read_link(e.path()).unwrap();
        let unit = etc.join(target.strip_prefix("/etc").unwrap_or(&target));
        if let Ok(text) = fs::read_to_string(&unit)
            && text.contains("ssh_host_")
            && text
                .lines()
                .any(|l| l.starts_with("Before=") && l.contains("ssh.service"))
        {
            restorer = Some(text);
        }
    }
    let Some(text) = restorer else {
        fails.push("bookworm: no enabled unit restores the host keys before ssh.service".into());
        return;
    };
    // The unit copies from a directory of the image: that copy must hold the same keys.
    let dir = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ConditionPathIsDirectory="))
        .expect("the restore unit names its directory");
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let name = format!("ssh_host_{kind}_key");
        let copy = etc
            .join(Path::new(dir).strip_prefix("/etc").unwrap())
            .join(&name);
        let live = etc.join("ssh").join(&name);
        if fs::read(&copy).ok() != fs::read(&live).ok() {
            fails.push(format!("bookworm: the kept copy of {name} differs"));
        }
    }
}

fn full_build(layout: &str, node: &str) {
    let fam = family(layout);
    let cluster = Cluster::new("");
    let base_img = base(fam);
    let b = cluster.build(fam, &base_img, node, "node.img", &[]);
    check_node_image(&cluster, fam, &base_img, &b, node);
}

#[test]
fn rpios_bookworm_node() {
    full_build("rpios-bookworm", "pi4-a");
}

#[test]
fn rpios_trixie_node() {
    full_build("rpios-trixie", "pi4-a");
}

#[test]
fn armbian_node() {
    full_build("armbian-bpim5", "bpi-a");
}

#[test]
fn ubuntu_raspi_node() {
    full_build("ubuntu-raspi", "pi4-a");
}

#[test]
fn ubuntu_cloud_node() {
    full_build("ubuntu-cloud-amd64", "master");
}

#[test]
fn debian_cloud_node() {
    full_build("debian-genericcloud", "x86-b");
}

/// The identity items of a built image: host keys, k3s node password, backup key.
fn identity_of(img: &Path, root_part: u32) -> BTreeMap<String, Vec<u8>> {
    let root = oracle::partition(img, root_part).start;
    let mut items = BTreeMap::new();
    for kind in ["ed25519", "ecdsa", "rsa"] {
        for suffix in ["", ".pub"] {
            let p = format!("/etc/ssh/ssh_host_{kind}_key{suffix}");
            items.insert(p.clone(), ext4_bytes(img, root, &p));
        }
    }
    for p in ["/etc/rancher/node/password", "/etc/imagegen/backup-key"] {
        items.insert(p.to_string(), ext4_bytes(img, root, p));
    }
    items
}

#[test]
fn identity_is_kept_per_node_and_never_shared() {
    let fam = family("rpios-trixie");
    let cluster = Cluster::new("");
    let base_img = base(fam);
    let a1 = cluster.build(fam, &base_img, "pi4-a", "a1.img", &[]);
    let a2 = cluster.build(fam, &base_img, "pi4-a", "a2.img", &[]);
    let b = cluster.build(fam, &base_img, "pi4-b", "b.img", &[]);
    let (ia1, ia2, ib) = (
        identity_of(&a1.img, fam.root),
        identity_of(&a2.img, fam.root),
        identity_of(&b.img, fam.root),
    );
    assert_eq!(ia1, ia2, "two builds of pi4-a carry the same identity");
    for (path, value) in &ia1 {
        assert!(!value.is_empty(), "{path} is empty");
        assert_ne!(Some(value), ib.get(path), "pi4-a and pi4-b share {path}");
        // No item of one node appears anywhere in the other's items.
        for other in ib.values() {
            assert!(
                memfind(other, value.trim_ascii()).is_empty(),
                "{path} of pi4-a appears in pi4-b's identity"
            );
        }
    }
    // The state directory holds private keys: the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    for dir in [cluster.state(), cluster.state().join("pi4-a")] {
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    }
    // The private keys come from the state directory, the same files a rebuild reads.
    for kind in ["ed25519", "ecdsa", "rsa"] {
        let name = format!("ssh_host_{kind}_key");
        assert_eq!(
            ia1[&format!("/etc/ssh/{name}")],
            fs::read(cluster.state().join("pi4-a").join(&name)).unwrap(),
            "{name} is the state directory's"
        );
    }
}

/// Regular files under `dir`, relative path -> (bytes, mode).
fn tree_files(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = format!("/{}", s(e.path().strip_prefix(dir).unwrap()));
                let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
                out.insert(rel, (fs::read(e.path()).unwrap(), mode));
            }
        }
    }
    out
}

/// Generic images: the same bytes for every node of a board, nothing of any node in them; then
/// `personalize` touches the boot partition only and seeds what a full build would have put in.
#[test]
fn generic_rpios_bookworm_personalized() {
    generic_and_personalize(family("rpios-bookworm"), ["pi4-a", "pi4-b"], "pi4-a");
}

#[test]
fn generic_ubuntu_raspi_personalized() {
    generic_and_personalize(family("ubuntu-raspi"), ["pi4-a", "pi4-b"], "pi4-b");
}

/// Made from agents' names, personalized into the server that also runs the UPS.
#[test]
fn generic_debian_cloud_personalized_into_a_server() {
    generic_and_personalize(family("debian-genericcloud"), ["x86-b", "x86-c"], "master");
}

fn generic_and_personalize(fam: &Family, generic: [&str; 2], node: &str) {
    let cluster = Cluster::new("");
    let base_img = base(fam);
    // The full build first, so the state directory holds the node's identity.
    let full = cluster.build(fam, &base_img, node, "full.img", &[]);
    let ga = cluster.build(fam, &base_img, generic[0], "ga.img", &["--no-secrets"]);
    let gb = cluster.build(fam, &base_img, generic[1], "gb.img", &["--no-secrets"]);
    oracle::run("cmp", &[s(&ga.img), s(&gb.img)]);

    let root = oracle::partition(&ga.img, fam.root).start;
    let identity = identity_of(&full.img, fam.root);
    let mut forbidden: Vec<(String, Vec<u8>)> = vec![
        (format!("node name {node}"), node.as_bytes().to_vec()),
        (
            format!("node name {}", generic[0]),
            generic[0].as_bytes().to_vec(),
        ),
        (
            format!("node name {}", generic[1]),
            generic[1].as_bytes().to_vec(),
        ),
        ("k3s token".into(), cluster.token.clone().into_bytes()),
        (
            "NUT password".into(),
            cluster.nut_password.clone().into_bytes(),
        ),
    ];
    for (path, value) in &identity {
        // The longest line is unique to the item (key material, the password itself).
        let line = value
            .split(|&b| b == b'\n')
            .max_by_key(|l| l.len())
            .unwrap()
            .to_vec();
        forbidden.push((path.clone(), line));
    }
    for (what, needle) in &forbidden {
        let hits = offsets_of(&ga.img, needle);
        assert!(
            hits.is_empty(),
            "{}: generic image holds {what} at {hits:?}",
            fam.layout
        );
        for out in [&ga.stdout, &ga.stderr] {
            assert!(
                !out.as_bytes()
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
                    || what.starts_with("node name"),
                "{what} in the output of a generic build"
            );
        }
    }
    for p in [
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/rancher/k3s/token",
        "/etc/rancher/node/password",
    ] {
        assert!(stat(&ga.img, root, p).is_none(), "generic image has {p}");
    }

    // personalize: only the boot partition's bytes change.
    let pers = cluster.path("pers.img");
    oracle::run("cp", &["--sparse=always", s(&ga.img), s(&pers)]);
    let out = cluster.personalize(&pers, node);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(&cluster.token),
        "personalize printed the token"
    );
    let boot = oracle::partition(&pers, fam.fat);
    let (lo, hi) = (boot.start * 512, (boot.start + boot.size) * 512);
    let changed = differing_ranges(&ga.img, &pers);
    assert!(!changed.is_empty(), "personalize changed nothing");
    for (a, z) in &changed {
        assert!(
            *a >= lo && *z <= hi,
            "{}: personalize changed bytes {a}..{z}, outside the boot partition {lo}..{hi}",
            fam.layout
        );
    }
    oracle::assert_fsck_fat_clean(&pers, boot.start, boot.size);

    // The seed holds what makes the generic image pi4-a, byte for byte as a full build has it.
    let seed_text = oracle::fat_cat(&pers, boot.start, &format!("/{SEED_FILE_NAME}"));
    let seed = Seed::from_toml_str(&seed_text).expect("the seed parses");
    let full_root = oracle::partition(&full.img, fam.root).start;
    let mut seeded = BTreeMap::new();
    for f in &seed.files {
        let content = f.content().unwrap();
        let want = ext4_bytes(&full.img, full_root, &f.path);
        assert_eq!(
            content, want,
            "{}: seed {} differs from the full build",
            fam.layout, f.path
        );
        let st = stat(&full.img, full_root, &f.path).unwrap();
        assert_eq!(f.mode_bits().unwrap(), st.mode, "seed mode of {}", f.path);
        seeded.insert(f.path.clone(), content);
    }
    for need in [
        "/etc/imagegen/node.toml",
        "/etc/hostname",
        "/etc/rancher/k3s/token",
        "/etc/rancher/node/password",
        "/etc/ssh/ssh_host_ed25519_key",
        NAS_KNOWN_HOSTS,
    ] {
        assert!(
            seeded.contains_key(need),
            "{}: the seed lacks {need}",
            fam.layout
        );
    }

    // Every file the full build has and the generic image lacks (or has otherwise) is seeded,
    // except what exists only to protect build-time keys from the vendor's first boot (in a
    // personalized image the agent places the keys after that first boot has run).
    let dirs = ["/etc", "/usr/local", "/var/lib/cloud", "/root", "/home"];
    let dirs: Vec<&str> = dirs
        .into_iter()
        .filter(|d| debugfs_exists(&full.img, full_root, d))
        .collect();
    let full_tree = rdump(&full.img, full_root, &dirs);
    let generic_tree = rdump(&ga.img, root, &dirs);
    let generic_files = tree_files(generic_tree.path());
    for (path, (bytes, _)) in tree_files(full_tree.path()) {
        if generic_files.get(&path).map(|(b, _)| b) == Some(&bytes) || seeded.contains_key(&path) {
            continue;
        }
        let by_design = path.starts_with("/etc/imagegen/identity/")
            || path == "/etc/systemd/system/imagegen-hostkeys.service"
            || path.starts_with("/var/lib/cloud/seed/nocloud/");
        assert!(
            by_design,
            "{}: a full build of {node} has {path}, which the personalized generic image lacks",
            fam.layout
        );
    }
}

/// Byte ranges where two equally long sparse files differ (both holes: both zeros).
fn differing_ranges(a: &Path, b: &Path) -> Vec<(u64, u64)> {
    let (mut fa, mut fb) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
    assert_eq!(
        fa.metadata().unwrap().len(),
        fb.metadata().unwrap().len(),
        "the image size changed"
    );
    let mut ranges = data_ranges(a);
    ranges.extend(data_ranges(b));
    ranges.sort();
    let mut out = Vec::new();
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let z = (at + (1 << 20)).min(end);
            let (x, y) = (read_range(&mut fa, (at, z)), read_range(&mut fb, (at, z)));
            if x != y {
                let first = (0..x.len()).find(|&i| x[i] != y[i]).unwrap() as u64;
                let last = (0..x.len()).rfind(|&i| x[i] != y[i]).unwrap() as u64;
                out.push((at + first, at + last + 1));
            }
            at = z;
        }
    }
    out
}

/// Each `[hardening]` toggle, switched off alone, leaves its own files as the vendor shipped
/// them (absent here) and the other measures in place.
#[test]
fn hardening_toggles_off_leave_files_out() {
    let fam = family("debian-genericcloud");
    let base_img = base(fam);
    let base_root = oracle::partition(&base_img, fam.root).start;
    let groups: &[(&str, &[&str])] = &[
        (
            "sshd",
            &["/etc/ssh/sshd_config.d/00-imagegen-hardening.conf"],
        ),
        ("sysctl", &["/etc/sysctl.d/60-imagegen-hardening.conf"]),
        (
            "firewall",
            &[
                "/etc/nftables.conf",
                "/etc/systemd/system/nftables.service.d/imagegen.conf",
                "/etc/systemd/system/sysinit.target.wants/nftables.service",
            ],
        ),
        (
            "unattended_upgrades",
            &[
                "/etc/apt/apt.conf.d/20auto-upgrades",
                "/etc/apt/apt.conf.d/52imagegen-unattended-upgrades",
            ],
        ),
    ];
    for (off, _) in groups {
        let cluster = Cluster::new(&format!("[hardening]\n{off} = false\n"));
        let b = cluster.build(fam, &base_img, "x86-b", "node.img", &[]);
        let root = oracle::partition(&b.img, fam.root).start;
        for (toggle, paths) in groups {
            for p in *paths {
                let now = stat(&b.img, root, p);
                if toggle != off {
                    assert!(now.is_some(), "{off} off: {p} ({toggle}) is missing");
                    continue;
                }
                match stat(&base_img, base_root, p) {
                    None => assert!(now.is_none(), "{off} off: {p} is still written"),
                    Some(_) => assert_eq!(
                        ext4_bytes(&b.img, root, p),
                        ext4_bytes(&base_img, base_root, p),
                        "{off} off: {p} was changed"
                    ),
                }
            }
        }
        oracle::assert_e2fsck_clean(&b.img, root);
    }
}

/// personalize writes secrets only where the agent will take them in and wipe them, and only
/// onto an image the node's board boots; a refusal leaves the image as it was.
#[test]
fn personalize_refuses_images_that_cannot_become_the_node() {
    let fam = family("ubuntu-raspi");
    let cluster = Cluster::new("");
    let vendor_img = common::fixture(fam.layout);
    let generic = cluster.build(fam, &vendor_img, "pi4-a", "g.img", &["--no-secrets"]);
    for (img, node, why) in [
        (
            vendor_img.to_path_buf(),
            "pi4-a",
            "imagegen build --no-secrets",
        ),
        (generic.img.clone(), "master", "does not boot"),
    ] {
        let before = cluster.path("before.img");
        oracle::run("cp", &["--sparse=always", s(&img), s(&before)]);
        let out = cluster.try_personalize(&img, node);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "personalize {node} on {} succeeded",
            img.display()
        );
        assert!(err.contains(why), "the refusal says why ({why}): {err}");
        assert!(
            differing_ranges(&before, &img).is_empty(),
            "a refused personalize changed the image"
        );
    }
}

/// The plan is the one source of node content (issue 10): a node built whole, and the same node
/// made from a generic image (`build --no-secrets` of another node, then `personalize`) once
/// the agent has placed its seed, are the same tree. Both trees are read by the real tools
/// (`debugfs rdump` of the root filesystem, as root so it keeps owners and modes, and mtools'
/// `mcopy` of the boot partition under its mount point); the seed is placed in the second by
/// the agent's own first-boot code (`seed::consume`, what `imagegen-firstboot --root DIR run`
/// does first), without the network steps that follow it in `run`.
#[test]
fn rpios_bookworm_full_equals_personalized() {
    full_equals_personalized(family("rpios-bookworm"), "pi4-b", "pi4-a", GUARDED_RASPIOS);
}

#[test]
fn rpios_trixie_full_equals_personalized() {
    full_equals_personalized(family("rpios-trixie"), "pi4-b", "pi4-a", GUARDED_RASPIOS);
}

#[test]
fn ubuntu_raspi_full_equals_personalized() {
    full_equals_personalized(family("ubuntu-raspi"), "pi4-a", "pi4-b", &[]);
}

/// From an agent's generic image to the server the UPS is plugged into: another firewall,
/// another node.toml, cloud-init's instance.
#[test]
fn debian_cloud_full_equals_personalized() {
    full_equals_personalized(family("debian-genericcloud"), "x86-b", "master", &[]);
}

#[test]
fn ubuntu_cloud_full_equals_personalized() {
    full_equals_personalized(family("ubuntu-cloud-amd64"), "x86-c", "x86-b", &[]);
}

/// The differences between a full build and a personalized one that are there by design, with
/// why (the plan's `Kind::IdentityGuard`).
const GUARDED_RASPIOS: &[(&str, &str)] = &[(
    "/etc/systemd/system/regenerate_ssh_host_keys.service",
    "a full build masks the vendor's host key regeneration so the keys it placed survive the \
     first boot; a generic image has no keys of its own, so it must run once, and the seed \
     brings the node's keys after it did",
)];

/// One entry of a tree as the comparison sees it: type, permission bits, owner, and the
/// content or link target.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        bytes: Vec<u8>,
    },
    Link {
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
}

impl Entry {
    /// What a failure message may say about it: never the content, which may be a secret.
    fn describe(&self) -> String {
        match self {
            Entry::Dir { mode, uid, gid } => format!("dir {mode:o} {uid}:{gid}"),
            Entry::File {
                mode,
                uid,
                gid,
                bytes,
            } => format!(
                "file {mode:o} {uid}:{gid}, {} bytes, sha256 {}",
                bytes.len(),
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
            ),
            Entry::Link { target, uid, gid } => {
                format!("link to {} {uid}:{gid}", target.display())
            }
        }
    }
}

/// Every entry under `dir`, keyed by its path on the node.
fn tree_entries(dir: &Path) -> BTreeMap<String, Entry> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let (mode, uid, gid) = (m.permissions().mode() & 0o7777, m.uid(), m.gid());
            let entry = if m.file_type().is_symlink() {
                Entry::Link {
                    target: fs::read_link(&p).unwrap(),
                    uid,
                    gid,
                }
            } else if m.is_dir() {
                stack.push(p.clone());
                Entry::Dir { mode, uid, gid }
            } else {
                assert!(m.is_file(), "{}: neither file, dir nor link", p.display());
                Entry::File {
                    mode,
                    uid,
                    gid,
                    bytes: fs::read(&p).unwrap(),
                }
            };
            out.insert(format!("/{}", s(p.strip_prefix(dir).unwrap())), entry);
        }
    }
    out
}

/// The node's tree as the tools read it: the root filesystem, and the boot partition under
/// its mount point.
fn node_tree(img: &Path, fam: &Family) -> tempfile::TempDir {
    // rdump keeps owners only when run as root; a non-root run would fail on its chown errors.
    assert!(
        rustix::process::geteuid().is_root(),
        "this test reads owners with debugfs rdump, which needs root"
    );
    let dest = tempfile::tempdir_in(scratch()).unwrap();
    let root = oracle::partition(img, fam.root).start;
    oracle::debugfs(img, root, &format!("rdump / {}", s(dest.path())));
    let boot = dest.path().join(fam.boot.trim_start_matches('/'));
    fs::create_dir_all(&boot).unwrap();
    let fat = oracle::partition(img, fam.fat).start;
    oracle::mtools(
        "mcopy",
        &["-s", "-n", "-i", &oracle::fat_at(img, fat), "::*", s(&boot)],
    );
    dest
}

fn full_equals_personalized(
    fam: &Family,
    generic_from: &str,
    node: &str,
    expected: &[(&str, &str)],
) {
    let cluster = Cluster::new("");
    let base_img = base(fam);
    let full = cluster.build(fam, &base_img, node, "full.img", &[]);
    let generic = cluster.build(fam, &base_img, generic_from, "g.img", &["--no-secrets"]);
    cluster.personalize(&generic.img, node);
    let boot = oracle::partition(&generic.img, fam.fat);
    oracle::assert_fsck_fat_clean(&generic.img, boot.start, boot.size);

    let full_tree = node_tree(&full.img, fam);
    let pers_tree = node_tree(&generic.img, fam);
    let placed = seed::consume(&Root::new(pers_tree.path()), Path::new(fam.boot))
        .expect("the agent takes the seed in");
    assert!(
        matches!(&placed, seed::Consumed::Placed(p) if !p.is_empty()),
        "{}: no seed to place: {placed:?}",
        fam.layout
    );

    let (a, b) = (
        tree_entries(full_tree.path()),
        tree_entries(pers_tree.path()),
    );
    let mut differ = Vec::new();
    for path in a.keys().chain(b.keys().filter(|p| !a.contains_key(*p))) {
        let (x, y) = (a.get(path), b.get(path));
        if x != y {
            let say = |e: Option<&Entry>| e.map_or("nothing".into(), Entry::describe);
            differ.push((
                path.clone(),
                format!("full: {}; personalized: {}", say(x), say(y)),
            ));
        }
    }
    let unexpected: Vec<String> = differ
        .iter()
        .filter(|(p, _)| !expected.iter().any(|(e, _)| e == p))
        .map(|(p, d)| format!("{p}: {d}"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{}: a full build of {node} and a generic image personalized into it differ:\n  {}",
        fam.layout,
        unexpected.join("\n  ")
    );
    // An expected difference that no longer shows is a reason gone stale.
    for (path, why) in expected {
        assert!(
            differ.iter().any(|(p, _)| p == path),
            "{}: {path} no longer differs, though expected to ({why})",
            fam.layout
        );
    }
}

/// The node each fixture family is built as (its board matches).
fn node_for(fam: &Family) -> &'static str {
    match fam.board {
        "rpi4" => "pi4-a",
        "bpi-m5" => "bpi-a",
        _ => "x86-b",
    }
}

/// Where a symlink points, as debugfs reads it from the inode.
fn link_target(img: &Path, start: u64, path: &str) -> String {
    let text = oracle::debugfs(img, start, &format!("stat \"{path}\""));
    let dest = text
        .split_once("link dest: \"")
        .unwrap_or_else(|| panic!("{path} is no symlink:\n{text}"))
        .1;
    dest[..dest.find('"').unwrap()].to_string()
}

/// `[cluster] timezone`, `locale` and `keymap` land where tzdata, locales and
/// keyboard-configuration keep them, in every family: read back with debugfs, the locale
/// enabled for locale-gen and generated by a first-boot unit the image enables, and fsck clean.
#[test]
fn timezone_locale_and_keymap_in_every_family() {
    let mut fails = Vec::new();
    for fam in FAMILIES {
        let cluster = Cluster::new("");
        let config = cluster.path("cluster.toml");
        let text = fs::read_to_string(&config).unwrap().replacen(
            "name = \"lab\"\n",
            "name = \"lab\"\ntimezone = \"Europe/Berlin\"\nlocale = \"de_DE.UTF-8\"\nkeymap = \"de\"\n",
            1,
        );
        fs::write(&config, text).unwrap();
        let base_img = base(fam);
        let b = cluster.build(fam, &base_img, node_for(fam), "node.img", &[]);
        let root = oracle::partition(&b.img, fam.root).start;
        let l = fam.layout;
        let text = |p: &str| String::from_utf8(ext4_bytes(&b.img, root, p)).unwrap();
        require(
            link_target(&b.img, root, "/etc/localtime") == "../usr/share/zoneinfo/Europe/Berlin",
            &format!(
                "{l}: /etc/localtime -> {}",
                link_target(&b.img, root, "/etc/localtime")
            ),
            &mut fails,
        );
        // The link resolves inside the image, to the zone file tzdata ships.
        let zone = text("/usr/share/zoneinfo/Europe/Berlin");
        require(
            zone.starts_with("TZif"),
            &format!("{l}: zone {zone:?}"),
            &mut fails,
        );
        require(
            text("/etc/timezone") == "Europe/Berlin\n",
            &format!("{l}: /etc/timezone"),
            &mut fails,
        );
        let default_locale = text("/etc/default/locale");
        require(
            default_locale.lines().any(|x| x == "LANG=de_DE.UTF-8"),
            &format!("{l}: /etc/default/locale {default_locale:?}"),
            &mut fails,
        );
        let list = text("/etc/locale.gen");
        let enabled: Vec<&str> = list
            .lines()
            .filter(|x| !x.trim_start().starts_with('#') && !x.trim().is_empty())
            .collect();
        require(
            enabled == ["de_DE.UTF-8 UTF-8"],
            &format!("{l}: /etc/locale.gen enables {enabled:?}"),
            &mut fails,
        );
        let wants = "/etc/systemd/system/multi-user.target.wants/imagegen-locale-gen.service";
        require(
            link_target(&b.img, root, wants) == "/etc/systemd/system/imagegen-locale-gen.service",
            &format!("{l}: locale-gen unit not enabled"),
            &mut fails,
        );
        let unit = text("/etc/systemd/system/imagegen-locale-gen.service");
        require(
            unit.contains("ExecStart=/usr/sbin/locale-gen\n")
                && unit.contains("ConditionPathExists=!/var/lib/imagegen/locale-generated"),
            &format!("{l}: unit {unit}"),
            &mut fails,
        );
        let keyboard = text("/etc/default/keyboard");
        require(
            keyboard.contains("\nXKBLAYOUT=\"de\"\n")
                && keyboard.contains("\nXKBMODEL=\"pc105\"\n")
                && !keyboard.contains("\"us\""),
            &format!("{l}: /etc/default/keyboard {keyboard:?}"),
            &mut fails,
        );
        oracle::assert_e2fsck_clean(&b.img, root);
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// A time zone or locale the base image does not have is refused by `build`, naming it and
/// where it was looked for; no image is left behind.
#[test]
fn build_refuses_a_timezone_or_locale_the_image_lacks() {
    let fam = family("debian-genericcloud");
    let base_img = base(fam);
    for (line, needle) in [
        ("timezone = \"Mars/Olympus_Mons\"", "/usr/share/zoneinfo"),
        ("locale = \"tlh_XX.UTF-8\"", "/usr/share/i18n/SUPPORTED"),
    ] {
        let cluster = Cluster::new("");
        let config = cluster.path("cluster.toml");
        let text = fs::read_to_string(&config).unwrap().replacen(
            "name = \"lab\"\n",
            &format!("name = \"lab\"\n{line}\n"),
            1,
        );
        fs::write(&config, text).unwrap();
        let b = cluster.try_build(fam, &base_img, "x86-b", "node.img", &[]);
        let err = &b.stderr;
        assert!(!b.ok, "{line}: build succeeded");
        let value = line.split('"').nth(1).unwrap();
        assert!(
            err.contains(&format!("{value:?}")) && err.contains(needle),
            "{line}: {err}"
        );
        assert!(!b.img.exists(), "{line}: an image was left behind");
    }
}

/// Root's, mode `mode`, a regular file: as debugfs reads the inode.
fn require_root_file(
    img: &Path,
    root: u64,
    path: &str,
    mode: u32,
    l: &str,
    fails: &mut Vec<String>,
) {
    let st = stat(img, root, path);
    require(
        st.as_ref()
            .is_some_and(|i| i.mode == mode && i.uid == 0 && i.gid == 0 && i.kind == "regular"),
        &format!("{l}: {path} is {st:?}, want root's {mode:o} regular file"),
        fails,
    );
}

/// A keyfile as NetworkManager's own reader takes it: `nmcli --offline connection modify`
/// (NetworkManager 1.42, Debian's network-manager) parses the keyfile from stdin, verifies
/// the profile as NetworkManager would before activating it, and writes it back normalized;
/// a profile it cannot read or verify fails. The tool is the oracle, the file the image's.
fn nm_normalized(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(oracle::tool("nmcli"))
        .args([
            "--offline",
            "connection",
            "modify",
            "connection.zone",
            "imagegen-test",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nmcli");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "NetworkManager refuses the keyfile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `[nodes.network]` lands where each family's network stack reads it, with the mode that
/// stack requires, and the real tools read it: NetworkManager's keyfile reader (`nmcli
/// --offline`) on Raspberry Pi OS, `netplan generate --root-dir` on Ubuntu, whose
/// systemd-networkd output must carry the addresses; systemd-networkd's own files (Debian
/// cloud, Armbian) have no offline reader (`systemd-analyze verify` checks units, not
/// .network files), so their keys are checked against systemd.network(5) by name. The Wi-Fi
/// passphrase occurs once in the whole image, inside its 0600 file; the Pi's kernel command
/// line carries the country, and Pi OS's radio is unblocked.
#[test]
fn network_settings_in_every_family() {
    let mut fails = Vec::new();
    let cluster = Cluster::new("");
    let psk = fs::read_to_string(cluster.path("secrets/wifi-psk"))
        .unwrap()
        .trim_end()
        .to_string();
    for fam in FAMILIES {
        let l = fam.layout;
        let node = node_for(fam);
        let base_img = base(fam);
        let b = cluster.build(fam, &base_img, node, "net.img", &[]);
        let root = oracle::partition(&b.img, fam.root).start;
        let text = |p: &str| String::from_utf8(ext4_bytes(&b.img, root, p)).unwrap();
        let psk_file = match l {
            "rpios-bookworm" | "rpios-trixie" => {
                let wired = "/etc/NetworkManager/system-connections/imagegen-wired.nmconnection";
                let wifi = "/etc/NetworkManager/system-connections/imagegen-wifi.nmconnection";
                require_root_file(&b.img, root, wired, 0o600, l, &mut fails);
                require_root_file(&b.img, root, wifi, 0o600, l, &mut fails);
                let w = nm_normalized(&ext4_bytes(&b.img, root, wired));
                for want in [
                    "type=ethernet\n",
                    "interface-name=eth0\n",
                    "address1=192.168.1.23/24,192.168.1.1\n",
                    "dns=1.1.1.1;\n",
                    "address1=fd00::23/64,fe80::1\n",
                    "dns=2606:4700:4700::1111;\n",
                    "method=manual\n",
                ] {
                    require(
                        w.contains(want),
                        &format!("{l}: wired profile lacks {want:?}:\n{w}"),
                        &mut fails,
                    );
                }
                let f = nm_normalized(&ext4_bytes(&b.img, root, wifi));
                for want in [
                    "type=wifi\n".to_string(),
                    "interface-name=wlan0\n".into(),
                    "ssid=lab net\n".into(),
                    "hidden=true\n".into(),
                    "key-mgmt=wpa-psk\n".into(),
                    format!("psk={psk}\n"),
                ] {
                    require(
                        f.contains(&want),
                        &format!("{l}: Wi-Fi profile lacks {want:?}"),
                        &mut fails,
                    );
                }
                let cmd = cmdline(&b.img, oracle::partition(&b.img, fam.fat).start);
                require(
                    cmd.split(' ')
                        .filter(|a| a.starts_with("cfg80211.ieee80211_regdom="))
                        .eq(["cfg80211.ieee80211_regdom=DE"]),
                    &format!("{l}: cmdline {cmd}"),
                    &mut fails,
                );
                require(
                    text("/var/lib/systemd/rfkill/platform-fe300000.mmcnr:wlan") == "0\n"
                        && text("/var/lib/systemd/rfkill/platform-fe215040.serial:bluetooth")
                            == "0\n",
                    &format!("{l}: rfkill states"),
                    &mut fails,
                );
                let state = text("/var/lib/NetworkManager/NetworkManager.state");
                require(
                    state.contains("WirelessEnabled=true") && !state.contains("=false"),
                    &format!("{l}: {state}"),
                    &mut fails,
                );
                wifi
            }
            "ubuntu-raspi" | "ubuntu-cloud-amd64" => {
                let yaml = "/etc/netplan/90-imagegen.yaml";
                require_root_file(&b.img, root, yaml, 0o600, l, &mut fails);
                let off = text("/etc/cloud/cloud.cfg.d/99-imagegen-network.cfg");
                require(
                    off.lines().any(|x| x == "network: {config: disabled}"),
                    &format!("{l}: {off}"),
                    &mut fails,
                );
                let tree = rdump(&b.img, root, &["/etc/netplan"]);
                let out = oracle::output("netplan", &["generate", "--root-dir", s(tree.path())]);
                require(
                    out.status.success(),
                    &format!(
                        "{l}: netplan generate: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ),
                    &mut fails,
                );
                let run = tree.path().join("run/systemd/network");
                let networkd: String = fs::read_dir(&run)
                    .map(|d| {
                        d.flatten()
                            .map(|e| fs::read_to_string(e.path()).unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                let wants: &[&str] = if l == "ubuntu-raspi" {
                    &[
                        "Name=eth0",
                        "Address=192.168.1.23/24",
                        "Gateway=192.168.1.1",
                        "DNS=1.1.1.1",
                        "Name=wlan0",
                        "DHCP=ipv4",
                    ]
                } else {
                    &["Name=en*", "Address=192.168.1.21/24", "Gateway=192.168.1.1"]
                };
                for want in wants {
                    require(
                        networkd.lines().any(|x| x == *want),
                        &format!("{l}: netplan's networkd output lacks {want}:\n{networkd}"),
                        &mut fails,
                    );
                }
                if l == "ubuntu-raspi" {
                    let wpa = tree.path().join("run/netplan/wpa-wlan0.conf");
                    let conf = fs::read_to_string(&wpa).unwrap_or_default();
                    require(
                        conf.contains("ssid=\"lab net\"")
                            && conf.contains(&format!("psk=\"{psk}\"")),
                        &format!("{l}: netplan's wpa_supplicant config {conf}"),
                        &mut fails,
                    );
                    yaml
                } else {
                    ""
                }
            }
            _ => {
                let file = "/etc/systemd/network/10-imagegen-wired.network";
                require_root_file(&b.img, root, file, 0o644, l, &mut fails);
                let t = text(file);
                let (addr, want_name) = if l == "armbian-bpim5" {
                    ("192.168.1.25/24", "eth0")
                } else {
                    ("192.168.1.21/24", "en*")
                };
                for want in [
                    format!("Name={want_name}"),
                    format!("Address={addr}"),
                    "Gateway=192.168.1.1".into(),
                    "DHCP=no".into(),
                ] {
                    require(
                        t.lines().any(|x| x == want),
                        &format!("{l}: {file} lacks {want}:\n{t}"),
                        &mut fails,
                    );
                }
                // Every key is one systemd.network(5) documents for its section.
                let mut section = String::new();
                for line in t.lines().filter(|x| !x.is_empty() && !x.starts_with('#')) {
                    if line.starts_with('[') {
                        section = line.to_string();
                        continue;
                    }
                    let key = line.split_once('=').map_or(line, |(k, _)| k);
                    let known = match section.as_str() {
                        "[Match]" => ["Name"].contains(&key),
                        "[Link]" => ["RequiredForOnline"].contains(&key),
                        "[Network]" => ["DHCP", "Address", "Gateway", "DNS"].contains(&key),
                        _ => false,
                    };
                    require(
                        known,
                        &format!("{l}: {section} {key} is not a systemd.network key"),
                        &mut fails,
                    );
                }
                let link = "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service";
                require(
                    link_target(&b.img, root, link)
                        == "/usr/lib/systemd/system/systemd-networkd.service",
                    &format!("{l}: systemd-networkd not enabled"),
                    &mut fails,
                );
                ""
            }
        };
        if !psk_file.is_empty() {
            let at = offsets_of(&b.img, psk.as_bytes());
            let blocks = file_extent_bytes(&b.img, root, psk_file);
            require(
                at.len() == 1 && blocks.iter().any(|(a, z)| (*a..*z).contains(&at[0])),
                &format!("{l}: the Wi-Fi passphrase is at {at:?}, {psk_file} is {blocks:?}"),
                &mut fails,
            );
            let manifest = fs::read_to_string(format!("{}.manifest.json", s(&b.img))).unwrap();
            require(
                !manifest.contains(&psk),
                &format!("{l}: the passphrase is in the manifest"),
                &mut fails,
            );
            require(
                !b.stdout.contains(&psk) && !b.stderr.contains(&psk),
                &format!("{l}: the passphrase was printed"),
                &mut fails,
            );
        }
        oracle::assert_e2fsck_clean(&b.img, root);
        let _ = fs::remove_file(&b.img);
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// `[[files]]` on every node and `[[nodes.files]]` on one, with their modes and owners (names
/// resolved in the image, the admin's own among them), missing parents made root 0755, and
/// `[firstboot] scripts` staged 0755 and listed in node.toml, in every family: read back with
/// debugfs, fsck clean; another node of the board has the cluster's files, not that node's.
#[test]
fn own_files_and_firstboot_scripts() {
    let mut fails = Vec::new();
    for fam in FAMILIES {
        own_files_in(fam, &mut fails);
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

/// Another node of the same board as `node_for(fam)`, when the test cluster has one.
fn other_node_for(fam: &Family) -> Option<&'static str> {
    match fam.board {
        "rpi4" => Some("pi4-b"),
        "x86-64" => Some("x86-c"),
        _ => None,
    }
}

fn own_files_in(fam: &Family, fails: &mut Vec<String>) {
    let node = node_for(fam);
    let cluster = Cluster::new("");
    let config = cluster.path("cluster.toml");
    fs::write(cluster.path("motd"), "hello from the operator\n").unwrap();
    fs::write(cluster.path("node.conf"), format!("only {node}\n")).unwrap();
    fs::write(cluster.path("setup.sh"), "#!/bin/sh\necho setup\n").unwrap();
    fs::write(cluster.path("later.sh"), "#!/bin/sh\necho later\n").unwrap();
    let entry = format!(
        "name = \"{node}\"\nboard = \"{}\"\nrole = \"agent\"\n",
        fam.board
    );
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains(&entry), "{entry}");
    let text = text
        .replacen(
            "[[nodes]]\n",
            &format!(
                "[[files]]\nsource = \"motd\"\ndest = \"/etc/motd\"\nmode = \"0640\"\nowner = \"root:adm\"\n\
                 [[files]]\nsource = \"motd\"\ndest = \"/home/{ADMIN}/notes/motd\"\nowner = \"{ADMIN}\"\n\
                 [firstboot]\nscripts = [\"setup.sh\", \"later.sh\"]\ntimeout_secs = 60\n[[nodes]]\n"
            ),
            1,
        )
        .replacen(
            &entry,
            &format!(
                "{entry}[[nodes.files]]\n\
                 source = \"node.conf\"\ndest = \"/opt/imagegen-test/deep/node.conf\"\nmode = \"0600\"\n"
            ),
            1,
        );
    fs::write(&config, text).unwrap();
    let base_img = base(fam);
    let b = cluster.build(fam, &base_img, node, "node.img", &[]);
    let root = oracle::partition(&b.img, fam.root).start;
    let passwd = String::from_utf8(ext4_bytes(&b.img, root, "/etc/passwd")).unwrap();
    let group = String::from_utf8(ext4_bytes(&b.img, root, "/etc/group")).unwrap();
    let id = |db: &str, name: &str, field: usize| -> u32 {
        db.lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f[0] == name)
            .unwrap_or_else(|| panic!("{}: {name} not in the image", fam.layout))[field]
            .parse()
            .unwrap()
    };
    let (adm, ops_uid, ops_gid) = (
        id(&group, "adm", 2),
        id(&passwd, ADMIN, 2),
        id(&passwd, ADMIN, 3),
    );
    let file = |mode, uid, gid| {
        Some(Inode {
            mode,
            uid,
            gid,
            kind: "regular".into(),
        })
    };
    let dir = |mode, uid, gid| {
        Some(Inode {
            mode,
            uid,
            gid,
            kind: "directory".into(),
        })
    };
    let only = format!("only {node}\n");
    for (path, want, content) in [
        (
            "/etc/motd",
            file(0o640, 0, adm),
            Some("hello from the operator\n"),
        ),
        (
            &*format!("/home/{ADMIN}/notes/motd"),
            file(0o644, ops_uid, ops_gid),
            Some("hello from the operator\n"),
        ),
        // The admin's home keeps its own owner and mode; the missing notes/ is made root 0755.
        (
            &*format!("/home/{ADMIN}"),
            dir(0o750, ops_uid, ops_gid),
            None,
        ),
        (&*format!("/home/{ADMIN}/notes"), dir(0o755, 0, 0), None),
        (
            "/opt/imagegen-test/deep/node.conf",
            file(0o600, 0, 0),
            Some(only.as_str()),
        ),
        ("/opt/imagegen-test", dir(0o755, 0, 0), None),
        (
            "/usr/local/lib/imagegen/scripts/01-setup.sh",
            file(0o755, 0, 0),
            Some("#!/bin/sh\necho setup\n"),
        ),
        (
            "/usr/local/lib/imagegen/scripts/02-later.sh",
            file(0o755, 0, 0),
            Some("#!/bin/sh\necho later\n"),
        ),
    ] {
        let got = stat(&b.img, root, path);
        require(
            got == want,
            &format!("{}: {path}: {got:?}, want {want:?}", fam.layout),
            fails,
        );
        if let Some(c) = content {
            let bytes = ext4_bytes(&b.img, root, path);
            require(
                bytes == c.as_bytes(),
                &format!("{}: {path}: {bytes:?}", fam.layout),
                fails,
            );
        }
    }
    let node_toml = String::from_utf8(ext4_bytes(&b.img, root, "/etc/imagegen/node.toml")).unwrap();
    let n = imagegen_firstboot::config::NodeConfig::from_toml_str(&node_toml).unwrap();
    require(
        n.firstboot.scripts
            == [
                PathBuf::from("/usr/local/lib/imagegen/scripts/01-setup.sh"),
                PathBuf::from("/usr/local/lib/imagegen/scripts/02-later.sh"),
            ]
            && n.firstboot.timeout_secs == 60,
        &format!("{}: node.toml [firstboot]: {:?}", fam.layout, n.firstboot),
        fails,
    );
    oracle::assert_e2fsck_clean(&b.img, root);
    if let Some(other) = other_node_for(fam) {
        let o = cluster.build(fam, &base_img, other, "other.img", &[]);
        require(
            stat(&o.img, root, "/etc/motd").is_some()
                && stat(&o.img, root, "/opt/imagegen-test/deep/node.conf").is_none(),
            &format!(
                "{}: {other} has {node}'s file or lacks the cluster's",
                fam.layout
            ),
            fails,
        );
    }
}

/// An owner the image does not have is a build error naming it; no image is left behind.
#[test]
fn build_refuses_an_owner_the_image_lacks() {
    let fam = family("debian-genericcloud");
    let cluster = Cluster::new("");
    let config = cluster.path("cluster.toml");
    fs::write(cluster.path("motd"), "x\n").unwrap();
    let text = fs::read_to_string(&config).unwrap().replacen(
        "[[nodes]]\n",
        "[[files]]\nsource = \"motd\"\ndest = \"/etc/motd\"\nowner = \"nginx:root\"\n[[nodes]]\n",
        1,
    );
    fs::write(&config, text).unwrap();
    let b = cluster.try_build(fam, &base(fam), "x86-b", "node.img", &[]);
    assert!(!b.ok);
    let err = &b.stderr;
    assert!(
        err.contains("\"nginx\"") && err.contains("/etc/passwd"),
        "{err}"
    );
    assert!(!cluster.path("node.img").exists());
}

/// `[packages] debs` and `[zerotier] package`, one mechanism for both, in every family: real
/// packages made by `dpkg-deb --build` (the board's architecture and "all") staged root 0644
/// where node.toml says they are, byte for byte (read back with debugfs), fsck clean; and a
/// generic image of the board personalized into the node holds the same packages, its seeded
/// node.toml listing them as the full build's does.
#[test]
fn staged_packages_in_every_family() {
    let mut fails = Vec::new();
    for fam in FAMILIES {
        let cluster = Cluster::new("");
        let d = cluster.dir.path();
        let arch = if fam.aarch64 { "arm64" } else { "amd64" };
        let tool = oracle::dpkg_deb_build(d, "lab-tool", "1.0-1", arch, "xz");
        let docs = oracle::dpkg_deb_build(d, "lab-docs", "2.0", "all", "zstd");
        let zt = oracle::dpkg_deb_build(d, "zerotier-one", "1.14.2", arch, "xz");
        let config = cluster.path("cluster.toml");
        let text = fs::read_to_string(&config)
            .unwrap()
            .replacen(
                "network_id = \"8056c2e21c000001\"\n",
                &format!(
                    "network_id = \"8056c2e21c000001\"\npackage = \"{}\"\n",
                    s(&zt)
                ),
                1,
            )
            .replacen(
                "[[nodes]]\n",
                &format!(
                    "[packages]\ndebs = [\"{}\", \"{}\"]\napt = [\"htop\"]\n[[nodes]]\n",
                    s(&tool),
                    s(&docs)
                ),
                1,
            );
        fs::write(&config, text).unwrap();
        let node = node_for(fam);
        let base_img = base(fam);
        let b = cluster.build(fam, &base_img, node, "node.img", &[]);
        let root = oracle::partition(&b.img, fam.root).start;
        let staged = [
            ("/var/cache/imagegen/debs/01-lab-tool.deb", &tool),
            ("/var/cache/imagegen/debs/02-lab-docs.deb", &docs),
            ("/var/cache/imagegen/zerotier-one.deb", &zt),
        ];
        for (path, source) in staged {
            let got = stat(&b.img, root, path);
            let want = Some(Inode {
                mode: 0o644,
                uid: 0,
                gid: 0,
                kind: "regular".into(),
            });
            require(
                got == want,
                &format!("{}: {path}: {got:?}", fam.layout),
                &mut fails,
            );
            require(
                got.is_none() || ext4_bytes(&b.img, root, path) == fs::read(source).unwrap(),
                &format!("{}: {path} is not {}", fam.layout, s(source)),
                &mut fails,
            );
        }
        let toml = String::from_utf8(ext4_bytes(&b.img, root, "/etc/imagegen/node.toml")).unwrap();
        let n = imagegen_firstboot::config::NodeConfig::from_toml_str(&toml).unwrap();
        let want_debs = [
            PathBuf::from("/var/cache/imagegen/debs/01-lab-tool.deb"),
            PathBuf::from("/var/cache/imagegen/debs/02-lab-docs.deb"),
        ];
        require(
            n.packages.debs == want_debs && n.packages.apt == ["htop"],
            &format!("{}: node.toml [packages]: {:?}", fam.layout, n.packages),
            &mut fails,
        );
        require(
            n.zerotier.as_ref().and_then(|z| z.package.as_deref())
                == Some(Path::new("/var/cache/imagegen/zerotier-one.deb")),
            &format!("{}: node.toml [zerotier]: {:?}", fam.layout, n.zerotier),
            &mut fails,
        );
        oracle::assert_e2fsck_clean(&b.img, root);

        // The generic image carries the packages (public); the seed brings the node.toml.
        // Armbian has no FAT partition for a seed: personalize refuses it.
        if fam.fat == 0 {
            continue;
        }
        let generic = cluster.build(fam, &base_img, node, "g.img", &["--no-secrets"]);
        cluster.personalize(&generic.img, node);
        let tree = node_tree(&generic.img, fam);
        seed::consume(&Root::new(tree.path()), Path::new(fam.boot)).expect("seed placed");
        for (path, source) in staged {
            let got = fs::read(tree.path().join(&path[1..])).ok();
            require(
                got == Some(fs::read(source).unwrap()),
                &format!("{}: personalized: {path} differs or is missing", fam.layout),
                &mut fails,
            );
        }
        let seeded = fs::read_to_string(tree.path().join("etc/imagegen/node.toml")).unwrap();
        let p = imagegen_firstboot::config::NodeConfig::from_toml_str(&seeded).unwrap();
        require(
            p.packages == n.packages,
            &format!("{}: personalized [packages]: {:?}", fam.layout, p.packages),
            &mut fails,
        );
    }
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}
