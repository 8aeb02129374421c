//! Helpers shared by the integration tests: a temp node tree, stand-in programs, the agent binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

pub const AGENT: &str = env!("CARGO_BIN_EXE_imagegen-firstboot");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A program that must exist on this machine, or the test fails naming the apt package.
pub fn require(path: &str, package: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: install the Debian package `{package}` (apt-get install {package})"
    );
    p
}

pub fn write_script(path: &Path, body: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A node tree with node.toml and a `bin/` of recording stand-ins first on PATH.
pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new(node_toml: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let n = Node { dir };
        n.write("etc/imagegen/node.toml", node_toml);
        n.standin("systemctl");
        n.standin("dpkg");
        fs::create_dir_all(n.root().join("boot/firmware")).unwrap();
        n
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Outside the node tree, so the stand-ins' records do not count as the agent's writes.
    pub fn bin(&self) -> PathBuf {
        self.dir.path().with_extension("bin")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.root().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// A stand-in that appends its arguments to `<bin>/<name>.log` and succeeds.
    pub fn standin(&self, name: &str) {
        let log = self.bin().join(format!("{name}.log"));
        write_script(
            &self.bin().join(name),
            &format!("echo \"$*\" >> '{}'", log.display()),
        );
    }

    pub fn calls(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.bin().join(format!("{name}.log")))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(AGENT);
        c.arg("--root").arg(self.root()).args(args);
        let path = format!(
            "{}:{}",
            self.bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path);
        c
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("var/lib/imagegen/status.json")).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.bin());
    }
}

/// A running agent whose stderr is collected line by line.
pub struct Running {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Running { child, log }
    }

    /// Waits until a log line contains `needle`; panics with the log after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no log line with {needle:?} in {timeout:?}: {:#?}",
            self.log.lock().unwrap()
        );
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A k3s supervisor stand-in: TLS with a fresh CA, serving `/cacerts` and `/ping`, recording
/// every request as the bytes that arrived on the wire (after TLS): head, body, and anything else
/// the client sent on that connection before the reply.
pub struct FakeK3s {
    pub url: String,
    pub ca_pem: String,
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// The TLS stream a [`FakeK3s`] reply is written to.
pub type TlsStream = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

/// What a [`FakeK3s`] reply function did with the connection.
pub enum Replied {
    /// Wrote a whole reply: end it with TLS close_notify.
    Complete,
    /// Stop here and drop the TCP connection without close_notify (a cut connection).
    Cut,
}

/// The most a stand-in keeps of one request, so a runaway client cannot exhaust the test's memory.
const MAX_RECORDED: usize = 1 << 20;

/// The standard reply: `/cacerts` is the CA, `/ping` is `pong`.
pub fn k3s_reply(head: &str, pem: &str, tls: &mut TlsStream) -> Replied {
    let body = if head.starts_with("GET /cacerts ") {
        pem.to_owned()
    } else if head.starts_with("GET /ping ") {
        "pong".to_owned()
    } else {
        String::new()
    };
    let _ = write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Replied::Complete
}

impl FakeK3s {
    pub fn start() -> FakeK3s {
        FakeK3s::start_with(k3s_reply)
    }

    /// A stand-in whose replies `reply(request head, CA PEM, stream)` writes.
    pub fn start_with(
        reply: impl Fn(&str, &str, &mut TlsStream) -> Replied + Send + 'static,
    ) -> FakeK3s {
        FakeK3s::start_on("127.0.0.1", reply)
    }

    /// A stand-in listening on `ip` (`127.0.0.1`, `::1`), its certificate made out to that address.
    pub fn start_on(
        ip: &str,
        reply: impl Fn(&str, &str, &mut TlsStream) -> Replied + Send + 'static,
    ) -> FakeK3s {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "k3s-server-ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let srv_key = rcgen::KeyPair::generate().unwrap();
        let srv_cert = rcgen::CertificateParams::new(vec![ip.to_string()])
            .unwrap()
            .signed_by(&srv_key, &ca)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![srv_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(srv_key.serialize_der())),
        )
        .unwrap();
        let config = Arc::new(config);
        let ca_pem = ca.pem();
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (reqs, pem) = (requests.clone(), ca_pem.clone());
        thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                // Bounds every read, so a client that stops sending cannot stall the stand-in.
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let Some((head, wire)) = read_request(&mut tls) else {
                    // A client that rejects our certificate ends the handshake here: nothing
                    // was sent to record.
                    continue;
                };
                reqs.lock().unwrap().push(wire);
                let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(5)));
                if let Replied::Complete = reply(&head, &pem, &mut tls) {
                    tls.conn.send_close_notify();
                }
                let _ = tls.flush();
            }
        });
        FakeK3s {
            url,
            ca_pem,
            requests,
        }
    }

    /// The path of each request, in order.
    pub fn paths(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                String::from_utf8_lossy(r)
                    .split(' ')
                    .nth(1)
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    }
}

/// Reads one request: its head, its `Content-Length` body, then whatever else the client has
/// sent by the time nothing more arrives for 100 ms (a second request, a body longer than its
/// header says). Returns the head and every byte read; `None` when no whole head arrived.
fn read_request(tls: &mut TlsStream) -> Option<(String, Vec<u8>)> {
    let mut wire = Vec::new();
    let mut byte = [0u8; 1];
    while !wire.ends_with(b"\r\n\r\n") && wire.len() < MAX_RECORDED {
        match tls.read(&mut byte) {
            Ok(1) => wire.push(byte[0]),
            _ => break,
        }
    }
    if !wire.ends_with(b"\r\n\r\n") {
        return None;
    }
    let head = String::from_utf8_lossy(&wire).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0)
        .min(MAX_RECORDED);
    let mut body = vec![0u8; length];
    let got = read_fully(tls, &mut body);
    wire.extend_from_slice(&body[..got]);
    let _ = tls.sock.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    while wire.len() < MAX_RECORDED {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => wire.extend_from_slice(&buf[..n]),
        }
    }
    Some((head, wire))
}

fn read_fully(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// A stand-in for zerotier-one's local API (`/network/<nwid>`): answers 404 until the agent asks
/// to join, `REQUESTING_CONFIGURATION` until `ready` is set, then `OK` with addresses.
pub struct FakeZeroTier {
    pub url: String,
    pub ready: Arc<AtomicBool>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

pub const ZT_NWID: &str = "8056c2e21c000001";
pub const ZT_TOKEN: &str = "zt-local-api-token";

impl FakeZeroTier {
    pub fn start(ready: bool) -> FakeZeroTier {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let ready = Arc::new(AtomicBool::new(ready));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (r, reqs) = (ready.clone(), requests.clone());
        thread::spawn(move || {
            let mut joined = false;
            for mut tcp in listener.incoming().map_while(Result::ok) {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = tcp.read_exact(&mut body);
                reqs.lock().unwrap().push(text.clone());
                let path = format!("/network/{ZT_NWID} ");
                let (code, body) = if !text.contains(&format!("X-ZT1-Auth: {ZT_TOKEN}\r\n")) {
                    (401, String::new())
                } else if text.starts_with(&format!("POST {path}")) {
                    joined = true;
                    (200, "{}".to_owned())
                } else if !text.starts_with(&format!("GET {path}")) || !joined {
                    (404, String::new())
                } else if !r.load(Ordering::SeqCst) {
                    (
                        200,
                        r#"{"status":"REQUESTING_CONFIGURATION","assignedAddresses":[]}"#
                            .to_owned(),
                    )
                } else {
                    (
                        200,
                        r#"{"status":"OK","portDeviceName":"ztabcdefgh","assignedAddresses":["fd80:56c2:e21c::1/88","10.147.17.23/24"]}"#
                            .to_owned(),
                    )
                };
                let _ = write!(
                    tcp,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeZeroTier {
            url,
            ready,
            requests,
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }
}
