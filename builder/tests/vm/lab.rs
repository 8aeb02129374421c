//! The host side of a test cluster and the checks every booted node must pass, shared by the
//! x86-64 end-to-end proof (`e2e.rs`) and the ARM boots (`arm_boot.rs`):
//!
//! - a NUT `upsd` with the `dummy-ups` driver (the UPS),
//! - an OpenSSH `sshd` with `rsync` (the NAS),
//! - a TLS server serving `/cacerts` and `/ping` like a k3s server's supervisor port.
//!
//! k3s itself cannot be installed here: the image stages a recording shell script as
//! `/usr/local/bin/k3s` through `[k3s] binary`, which proves the agent started the k3s unit with
//! the right configuration, not that a cluster formed. zerotier-one cannot be installed either,
//! so the config has no `[zerotier]` table.
//!
//! Every service listens on 127.0.0.1; qemu's user network lets the guest reach it at 10.0.2.2.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Vm, VmOptions, free_port};

pub const ADMIN: &str = "ops";
pub const NUT_PASSWORD: &str = "e2e-ups-secret";
/// Every step the agent runs for the config below (no `[zerotier]`).
pub const STEPS: [&str; 5] = ["backup", "config", "k3s", "seed", "ups"];

pub fn current_user() -> String {
    let out = super::run(Command::new("id").arg("-un"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn keygen(path: &Path) {
    super::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f"])
            .arg(path),
    );
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on 127.0.0.1:{port}: {}",
            fs::read_to_string(log).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the child processes of the lab's daemons when the test ends, however it ends.
pub struct Daemons(Vec<Child>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A stand-in for a k3s server's supervisor port: TLS with a fresh CA and a server certificate
/// for 10.0.2.2, serving `/cacerts` (the CA PEM) and `/ping` (`pong`, or 503 while `ping_ok` is
/// off, as a server that is still starting).
pub struct FakeK3s {
    pub port: u16,
    pub ca_pem: String,
    pub ping_ok: Arc<AtomicBool>,
}

impl FakeK3s {
    pub fn start() -> FakeK3s {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "k3s-server-ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        // The guest reaches the host's loopback at 10.0.2.2: that is the name it verifies.
        let cert = rcgen::CertificateParams::new(vec!["10.0.2.2".to_owned()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server cert");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("TLS config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the k3s stand-in");
        let port = listener.local_addr().expect("its port").port();
        let ca_pem = ca.pem();
        let ping_ok = Arc::new(AtomicBool::new(true));
        let (pem, ok) = (ca_pem.clone(), ping_ok.clone());
        thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                let (config, pem, ok) = (config.clone(), pem.clone(), ok.clone());
                // One thread per connection: a guest that vanishes mid-handshake (powered off)
                // must not block the next one.
                thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let (code, body) = if head.starts_with(b"GET /cacerts ") {
                        ("200 OK", pem)
                    } else if head.starts_with(b"GET /ping ") && ok.load(Ordering::SeqCst) {
                        ("200 OK", "pong".to_owned())
                    } else if head.starts_with(b"GET /ping ") {
                        ("503 Service Unavailable", String::new())
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let _ = write!(
                        tls,
                        "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        FakeK3s {
            port,
            ca_pem,
            ping_ok,
        }
    }
}

/// The host side of the cluster: UPS server, NAS, k3s server stand-in, admin and backup keys.
pub struct Lab {
    dir: tempfile::TempDir,
    pub k3s: FakeK3s,
    nut_port: u16,
    nas_port: u16,
    pub admin_key: PathBuf,
    _daemons: Daemons,
}

impl Lab {
    pub fn start() -> Lab {
        for (tool, package) in [
            ("/lib/nut/upsd", "nut-server"),
            ("/lib/nut/dummy-ups", "nut-server"),
            ("/usr/sbin/sshd", "openssh-server"),
            ("/usr/bin/rsync", "rsync"),
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install {package}"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("imagegen-e2e-")
            .tempdir()
            .expect("temp dir for the lab");
        let d = dir.path();
        let user = current_user();
        let mut daemons = Daemons(Vec::new());

        // The UPS: upsd + dummy-ups run as the test user from a private config and state dir.
        let nut = d.join("nut");
        fs::create_dir_all(nut.join("run")).unwrap();
        let nut_port = free_port();
        for (name, content) in [
            (
                "ups.conf",
                "[dummy]\n\tdriver = dummy-ups\n\tport = dummy.dev\n\tdesc = \"e2e\"\n".to_owned(),
            ),
            ("upsd.conf", format!("LISTEN 127.0.0.1 {nut_port}\n")),
            (
                "upsd.users",
                format!("[monuser]\n\tpassword = {NUT_PASSWORD}\n\tupsmon secondary\n"),
            ),
            ("dummy.dev", "ups.status: OL\n".to_owned()),
        ] {
            fs::write(nut.join(name), content).unwrap();
        }
        for (prog, args) in [
            ("/lib/nut/dummy-ups", &["-a", "dummy"][..]),
            ("/lib/nut/upsd", &[][..]),
        ] {
            let name = Path::new(prog).file_name().unwrap().to_str().unwrap();
            let log = fs::File::create(nut.join(format!("{name}.log"))).unwrap();
            daemons.0.push(
                Command::new(prog)
                    .args(args)
                    .args(["-F", "-u", &user])
                    .env("NUT_CONFPATH", &nut)
                    .env("NUT_STATEPATH", nut.join("run"))
                    .env("NUT_PIDPATH", nut.join("run"))
                    .env("NUT_ALTPIDPATH", nut.join("run"))
                    .current_dir(&nut)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {prog}: {e}")),
            );
        }
        wait_listening(nut_port, "upsd", &nut.join("upsd.log"));

        // The NAS: sshd as the test user, accepting the node's backup key.
        let nas = d.join("nas");
        fs::create_dir_all(nas.join("backups")).unwrap();
        keygen(&nas.join("host_key"));
        let backup_key = d.join("backup_key");
        keygen(&backup_key);
        fs::copy(
            backup_key.with_extension("pub"),
            nas.join("authorized_keys"),
        )
        .unwrap();
        let nas_port = free_port();
        fs::write(
            nas.join("sshd_config"),
            format!(
                "Port {nas_port}\nListenAddress 127.0.0.1\nHostKey {n}/host_key\n\
                 AuthorizedKeysFile {n}/authorized_keys\nPidFile {n}/sshd.pid\nStrictModes no\n\
                 UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n",
                n = nas.display()
            ),
        )
        .unwrap();
        if user == "root" {
            // sshd started by root insists on its privilege separation directory.
            fs::create_dir_all("/run/sshd").unwrap();
        }
        let log = nas.join("sshd.log");
        daemons.0.push(
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(nas.join("sshd_config"))
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .expect("sshd starts"),
        );
        wait_listening(nas_port, "sshd", &log);

        let admin_key = d.join("admin_key");
        keygen(&admin_key);
        Lab {
            k3s: FakeK3s::start(),
            dir,
            nut_port,
            nas_port,
            admin_key,
            _daemons: daemons,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Sets what the dummy UPS reports; dummy-ups re-reads its file when the mtime changes.
    pub fn set_ups_status(&self, status: &str) {
        let tmp = self.path("nut/dummy.tmp");
        fs::write(&tmp, format!("ups.status: {status}\n")).unwrap();
        fs::rename(&tmp, self.path("nut/dummy.dev")).unwrap();
    }

    /// A `K10<sha256 of the CA>::...` token: the hash of the stand-in's CA, or of another one.
    pub fn token(&self, matching: bool) -> String {
        let ca = if matching {
            self.k3s.ca_pem.clone()
        } else {
            format!("{}\n", self.k3s.ca_pem)
        };
        format!(
            "K10{}::server:e2e-join-secret",
            hex::encode(Sha256::digest(ca.as_bytes()))
        )
    }

    /// A cluster config (in its own directory) whose token matches the CA or not, with agent
    /// nodes `(name, board)`.
    pub fn cluster(&self, name: &str, matching_token: bool, nodes: &[(&str, &str)]) -> PathBuf {
        let dir = self.path(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("k3s-token"), self.token(matching_token)).unwrap();
        fs::write(dir.join("nut-password"), NUT_PASSWORD).unwrap();
        fs::write(dir.join("k3s"), K3S_STANDIN).unwrap();
        fs::set_permissions(dir.join("k3s"), fs::Permissions::from_mode(0o755)).unwrap();
        let admin_pub = fs::read_to_string(self.admin_key.with_extension("pub")).unwrap();
        let nas_pub = fs::read_to_string(self.path("nas/host_key.pub")).unwrap();
        let toml = format!(
            r#"[cluster]
name = "lab"

[admin]
user = "{ADMIN}"
ssh_authorized_keys = ["{admin}"]

[k3s]
server_url = "https://10.0.2.2:{k3s}"
token_file = "k3s-token"
binary = "k3s"

[ups]
host = "10.0.2.2"
port = {nut}
ups = "dummy"
user = "monuser"
password_file = "nut-password"

[backup]
target = "ssh://{user}@10.0.2.2:{nas}{backups}"
ssh_key_file = "{backup_key}"
host_keys = ["{nas_key}"]
paths = ["/etc/hostname", "/etc/rancher"]
"#,
            admin = admin_pub.trim(),
            // The NAS's host key is pinned, so the node's ssh checks it strictly.
            nas_key = nas_pub
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            k3s = self.k3s.port,
            nut = self.nut_port,
            user = current_user(),
            nas = self.nas_port,
            backups = self.path("nas/backups").display(),
            backup_key = self.path("backup_key").display(),
        );
        let mut toml = toml;
        for (node, board) in nodes {
            toml.push_str(&format!(
                "\n[[nodes]]\nname = \"{node}\"\nboard = \"{board}\"\nrole = \"agent\"\n"
            ));
        }
        let path = dir.join("cluster.toml");
        fs::write(&path, toml).unwrap();
        path
    }
}

/// k3s cannot be installed here. This stand-in, staged by `[k3s] binary`, records how it was
/// started (arguments, the config file k3s would read, the token file's mode), then behaves as
/// k3s does for its Type=notify unit: the main process sends READY=1 and keeps running.
/// `systemd-notify` cannot do that from a shell script (it is a child process and the unit has
/// NotifyAccess=main), so the main process becomes python3, which the image has for cloud-init.
///
/// Started as `k3s server`, it also stands in for the server's supervisor port, 6443: as k3s
/// does, it serves `/cacerts` (server-ca.crt as it is on disk) and `/ping` (`pong`) over TLS
/// with a serving certificate it signs with the `server/tls/server-ca.key` imagegen staged, for
/// 127.0.0.1 and every `tls-san` of the config (k3s's dynamiclistener adds those too). Every
/// request is logged as `CLIENT-ADDRESS PATH` to `requests`. It runs nothing else of k3s.
pub const K3S_STANDIN: &str = r#"#!/bin/sh
set -e
d=/var/lib/k3s-standin
mkdir -p "$d"
echo "$*" >> "$d/args"
cp /etc/rancher/k3s/config.yaml "$d/config.yaml"
stat -c %a /etc/rancher/k3s/token > "$d/token-mode"
if [ "$1" = server ]; then
	tls=/var/lib/rancher/k3s/server/tls
	sans=IP:127.0.0.1
	# The agent writes each tls-san as an indented, quoted list item.
	for san in $(sed -n 's/^  - "\(.*\)"$/\1/p' "$d/config.yaml"); do
		if printf %s "$san" | grep -Eq '^[0-9.]+$|:'; then
			sans="$sans,IP:$san"
		else
			sans="$sans,DNS:$san"
		fi
	done
	printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" > "$d/serving.ext"
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=k3s 		-keyout "$d/serving.key" -out "$d/serving.csr" 2>/dev/null
	# No -CAcreateserial: it would write a serial file into server/tls; OpenSSL 3 picks a
	# random serial instead.
	openssl x509 -req -in "$d/serving.csr" -CA "$tls/server-ca.crt" -CAkey "$tls/server-ca.key" 		-days 2 -extfile "$d/serving.ext" -out "$d/serving.crt" 2>/dev/null
fi
exec python3 -c '
import http.server, os, socket, ssl, sys, time
def ready():
    a = os.environ["NOTIFY_SOCKET"]
    if a.startswith("@"):
        a = "\0" + a[1:]
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", a)
if sys.argv[1:2] != ["server"]:
    ready()
    while True:
        time.sleep(3600)
d = "/var/lib/k3s-standin"
ca = open("/var/lib/rancher/k3s/server/tls/server-ca.crt", "rb").read()
class Supervisor(http.server.BaseHTTPRequestHandler):
    timeout = 30
    def setup(self):
        self.request.do_handshake()
        super().setup()
    def do_GET(self):
        with open(d + "/requests", "a") as log:
            log.write("%s %s\n" % (self.client_address[0], self.path))
        body = {"/cacerts": ca, "/ping": b"pong"}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        # Framed as Go net/http frames it: a TLS body without a length is refused.
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
tls.load_cert_chain(d + "/serving.crt", d + "/serving.key")
server = http.server.ThreadingHTTPServer(("", 6443), Supervisor)
# The handshake happens in each connection thread (setup), so one stalled client cannot
# hold the accept loop.
server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
ready()
server.serve_forever()
' "$@"
"#;

/// The agent's status, read in the guest with `imagegen-firstboot status --json`.
pub fn status(guest: &Vm, key: &Path) -> Value {
    let out = guest.ssh_ok(ADMIN, key, "sudo imagegen-firstboot status --json");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}:\n{out}"))
}

pub fn state_of<'a>(status: &'a Value, step: &str) -> &'a str {
    status["steps"][step]["state"].as_str().unwrap_or("absent")
}

/// Polls the status until `done` says so; panics with the status after `timeout`.
pub fn wait_status(
    guest: &Vm,
    key: &Path,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(guest, key);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}; status:\n{s:#}"
        );
        thread::sleep(Duration::from_secs(2));
    }
}

pub fn all_done(s: &Value) -> bool {
    STEPS.iter().all(|step| state_of(s, step) == "done")
}

/// Boots `disk` and waits until SSH answers and systemd has finished starting up with exactly
/// the units `failed` failed ("running" when there are none, otherwise "degraded").
pub fn boot_settled(disk: &Path, opts: VmOptions, key: &Path, label: &str, failed: &[&str]) -> Vm {
    let mut guest = Vm::boot(disk, opts);
    guest.wait_for_ssh(Duration::from_secs(240));
    let to_ssh = guest.uptime();
    // Boot is over when the agent's oneshot is; under load that takes minutes.
    let state = guest.wait_settled(ADMIN, key, Duration::from_secs(300));
    let listed = guest.ssh_ok(ADMIN, key, "systemctl --failed --no-legend --plain");
    let units: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let expected = if failed.is_empty() {
        "running"
    } else {
        "degraded"
    };
    assert!(
        state == expected && units == failed,
        "{label}: system state {state:?}, expected {expected:?} with failed units {failed:?}:\n{listed}"
    );
    eprintln!(
        "vm: {label}: SSH after {:.1} s, running after {:.1} s",
        to_ssh.as_secs_f64(),
        guest.uptime().as_secs_f64()
    );
    guest
}

/// The SHA256 fingerprint of the guest's ed25519 host key, as a client sees it.
pub fn host_key_fingerprint(guest: &Vm) -> String {
    let out = super::run(
        Command::new("ssh-keyscan")
            .args(["-T", "20", "-t", "ed25519", "-p"])
            .arg(guest.ssh_port().to_string())
            .arg("127.0.0.1"),
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut keygen = Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("ssh-keygen runs");
    keygen
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = keygen.wait_with_output().unwrap();
    let fp = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned);
    fp.unwrap_or_else(|| panic!("no ed25519 host key from ssh-keyscan: {line:?}"))
}

/// A login that must be refused, tried with the real ssh client.
pub fn assert_refused(guest: &Vm, user: &str, opts: &[&str], why: &str) {
    let out = Command::new("ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=20"])
        .args(opts)
        .arg("-p")
        .arg(guest.ssh_port().to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg("true")
        .stdin(Stdio::null())
        .output()
        .expect("ssh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Permission denied"),
        "{why}: expected `Permission denied`, got {}:\n{stderr}",
        out.status
    );
}

/// `e2fsck -fn` of the root filesystem at partition `root_partition` of `disk`. A `.qcow2`
/// disk is first checked by `qemu-img check` (exit 0, or 3: leaked clusters only, which a
/// guest killed mid-write may leave and qemu-img(1) calls harmless; 2 is corruption), then
/// read through a raw copy made by `qemu-img convert`, since sfdisk and e2fsck read raw disks.
pub fn e2fsck_clean(disk: &Path, root_partition: u32) {
    let raw;
    let disk = if disk.extension().is_some_and(|e| e == "qcow2") {
        super::require_tool("qemu-img", "qemu-utils");
        let out = Command::new("qemu-img")
            .arg("check")
            .arg(disk)
            .output()
            .expect("qemu-img runs");
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "qemu-img check {disk:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        raw = tempfile::Builder::new()
            .prefix("e2fsck-")
            .suffix(".raw")
            .tempfile_in(disk.parent().expect("a disk in a directory"))
            .expect("a temporary file beside the disk")
            .into_temp_path();
        super::run(
            Command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(disk)
                .arg(&raw),
        );
        &*raw
    } else {
        disk
    };
    let offset = super::partition_offset(disk, root_partition);
    super::run(
        Command::new("e2fsck")
            .arg("-fn")
            .arg(super::ext4_at(disk, offset)),
    );
}

/// What a node looks like from the outside once its first boot is over.
pub struct Facts {
    pub host_key: String,
    pub machine_id: String,
    pub node_password: String,
    pub k3s_config: String,
    pub status: Value,
}

/// What every node must show once booted: the agent finished every step on its own; keys-only
/// admin logins; its own name and identity; the default-deny firewall; the k3s unit started with
/// the server, node name and a root-only token file.
pub fn check_node(lab: &Lab, guest: &Vm, node: &str) -> Facts {
    let key = &lab.admin_key;
    // 1. The agent finishes every step on its own.
    let s = wait_status(
        guest,
        key,
        Duration::from_secs(180),
        &format!("{node} all steps done"),
        |s| {
            assert!(
                STEPS.iter().all(|step| state_of(s, step) != "failed"),
                "a step failed:\n{s:#}"
            );
            all_done(s)
        },
    );
    eprintln!(
        "vm: {node}: agent done after {:.1} s",
        guest.uptime().as_secs_f64()
    );
    assert_eq!(s["node"], node, "{s:#}");

    // 2. Keys only, admin only; the node's own name and identity.
    assert_refused(
        guest,
        ADMIN,
        &[
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
        ],
        "password login of the admin",
    );
    let key_opts = ["-i", key.to_str().unwrap(), "-o", "IdentitiesOnly=yes"];
    assert_refused(guest, "root", &key_opts, "root login with the admin's key");
    assert_eq!(guest.ssh_ok(ADMIN, key, "hostname").trim(), node);
    let machine_id = guest
        .ssh_ok(ADMIN, key, "cat /etc/machine-id")
        .trim()
        .to_owned();
    assert!(
        machine_id.len() == 32 && machine_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "machine-id {machine_id:?}"
    );
    let host_key = host_key_fingerprint(guest);

    // 3. Default-deny firewall, loaded by nftables.service at boot; SSH still answers (we are
    //    talking over it).
    assert_eq!(
        guest
            .ssh_ok(ADMIN, key, "systemctl is-active nftables.service")
            .trim(),
        "active"
    );
    let ruleset = guest.ssh_ok(ADMIN, key, "sudo nft list ruleset");
    assert!(
        ruleset
            .lines()
            .any(|l| l.contains("hook input") && l.contains("policy drop;")),
        "no input chain with policy drop:\n{ruleset}"
    );

    // 4. The k3s unit was started with the server, node name and token file, and the token is
    //    root's alone.
    assert_eq!(
        guest
            .ssh_ok(ADMIN, key, "systemctl is-active k3s-agent.service")
            .trim(),
        "active"
    );
    let args = guest.ssh_ok(ADMIN, key, "sudo cat /var/lib/k3s-standin/args");
    assert_eq!(args.trim(), "agent", "k3s started with {args:?}");
    let k3s_config = guest.ssh_ok(ADMIN, key, "sudo cat /var/lib/k3s-standin/config.yaml");
    for line in [
        format!("server: \"https://10.0.2.2:{}\"", lab.k3s.port),
        format!("node-name: \"{node}\""),
        "token-file: \"/etc/rancher/k3s/token\"".to_owned(),
    ] {
        assert!(
            k3s_config.lines().any(|l| l == line),
            "k3s config lacks {line:?}:\n{k3s_config}"
        );
    }
    assert_eq!(
        guest
            .ssh_ok(ADMIN, key, "sudo cat /var/lib/k3s-standin/token-mode")
            .trim(),
        "600"
    );
    assert_eq!(
        guest
            .ssh_ok(ADMIN, key, "sudo stat -c '%a %U' /etc/rancher/k3s/token")
            .trim(),
        "600 root"
    );
    assert_eq!(
        guest
            .ssh_ok(ADMIN, key, "sudo cat /etc/rancher/k3s/token")
            .trim(),
        lab.token(true)
    );
    let node_password = guest.ssh_ok(ADMIN, key, "sudo cat /etc/rancher/node/password");
    assert!(!node_password.trim().is_empty());

    Facts {
        host_key,
        machine_id,
        node_password,
        k3s_config,
        status: s,
    }
}

/// The UPS goes on battery with a low battery: the node powers itself off, cleanly, and its root
/// filesystem is clean afterwards.
pub fn ups_poweroff(lab: &Lab, mut guest: Vm, node: &str, disk: &Path, root_partition: u32) {
    let ups_started = Instant::now();
    lab.set_ups_status("OB LB");
    let exit = guest.wait_for_exit(Duration::from_secs(60));
    eprintln!(
        "vm: {node}: powered off {:.1} s after the UPS reported OB LB",
        ups_started.elapsed().as_secs_f64()
    );
    assert!(exit.success(), "qemu exited with {exit}");
    let log = guest.serial_log();
    assert!(
        log.contains("reboot: Power down"),
        "the guest did not power down cleanly; serial tail:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    lab.set_ups_status("OL");
    drop(guest);
    e2fsck_clean(disk, root_partition);
}

/// A clean `systemctl poweroff` from inside the guest; qemu exits and the root filesystem at
/// `root_partition` is clean afterwards (`e2fsck -fn`).
pub fn poweroff_clean(lab: &Lab, mut guest: Vm, disk: &Path, root_partition: u32) {
    let _ = guest.ssh(ADMIN, &lab.admin_key, "sudo systemctl poweroff");
    guest.wait_for_exit(Duration::from_secs(120));
    drop(guest);
    e2fsck_clean(disk, root_partition);
}

/// `imagegen build` of `node` of `cluster` onto `base`, with no `--agent`: `imagegen` has the
/// agents beside it, as the README's set-up command leaves them. The identity state lives in
/// `state`, the download cache beside it.
pub fn build_node(
    imagegen: &Path,
    cluster: &Path,
    node: &str,
    base: &Path,
    state: &Path,
    out: &Path,
) {
    build_with(imagegen, cluster, &["--node", node], base, state, out);
}

/// The cluster's generic image of `board` (`build --board B --no-secrets`): every node's
/// public content, no node's identity or secrets; `personalize` makes it a node.
pub fn build_generic(
    imagegen: &Path,
    cluster: &Path,
    board: &str,
    base: &Path,
    state: &Path,
    out: &Path,
) {
    build_with(
        imagegen,
        cluster,
        &["--board", board, "--no-secrets"],
        base,
        state,
        out,
    );
}

fn build_with(
    imagegen: &Path,
    cluster: &Path,
    which: &[&str],
    base: &Path,
    state: &Path,
    out: &Path,
) {
    let started = Instant::now();
    super::run(
        Command::new(imagegen)
            .arg("build")
            .arg("--config")
            .arg(cluster)
            .args(which)
            .arg("--base")
            .arg(base)
            .arg("--state-dir")
            .arg(state)
            .arg("--cache-dir")
            .arg(state.with_extension("cache"))
            .arg("-o")
            .arg(out),
    );
    eprintln!(
        "vm: built {} in {:.1} s",
        which.join(" "),
        started.elapsed().as_secs_f64()
    );
}

/// `imagegen personalize` of a generic image into `node`, written to `out` (IMAGE untouched).
pub fn personalize(
    imagegen: &Path,
    cluster: &Path,
    node: &str,
    state: &Path,
    generic: &Path,
    out: &Path,
) {
    super::run(
        Command::new(imagegen)
            .arg("personalize")
            .arg("--config")
            .arg(cluster)
            .args(["--node", node])
            .arg("--state-dir")
            .arg(state)
            .arg("-o")
            .arg(out)
            .arg(generic),
    );
}
