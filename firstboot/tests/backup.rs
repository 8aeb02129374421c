//! `backup` with the real `rsync` over a real OpenSSH `sshd` on 127.0.0.1, started from a
//! temporary config with its own host key and authorized key.
//!
//! The NAS can be restarted on the same port with another host key (an impostor, or a
//! reinstalled NAS) or with a `ForceCommand` that never answers, to check what the node trusts
//! and that a stuck NAS cannot hold a backup forever.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The NAS's files: host keys, the node's client key, authorized_keys, the backup directory.
/// Each [`Nas::start`] runs one sshd from them on `port`.
struct Nas {
    dir: tempfile::TempDir,
    port: u16,
}

/// One running sshd of a [`Nas`]; killed when dropped.
struct Sshd {
    child: Child,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// How many logins sshd accepted: 0 means the node never even authenticated.
    fn accepted_logins(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
    }
}

fn keygen(path: &Path, kind: &str) {
    let ok = Command::new(require("/usr/bin/ssh-keygen", "openssh-client"))
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// `SHA256:...` of a public key file, as `ssh-keygen -l` prints it.
fn fingerprint(pub_file: &Path) -> String {
    let out = Command::new("/usr/bin/ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

impl Nas {
    fn new() -> Nas {
        require("/usr/sbin/sshd", "openssh-server");
        require("/usr/bin/rsync", "rsync");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(&d.join("host_key"), "ed25519");
        keygen(&d.join("other_host_key"), "ed25519");
        keygen(&d.join("ecdsa_host_key"), "ecdsa");
        keygen(&d.join("client_key"), "ed25519");
        fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        fs::create_dir(d.join("nas")).unwrap();
        Nas {
            dir,
            port: free_port(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Where the node's snapshots land.
    fn base(&self) -> PathBuf {
        self.path("nas/test/pi4-a")
    }

    /// Starts sshd with `host_key` (a key file name in the NAS dir) and extra config lines.
    fn start(&self, host_key: &str, extra: &str) -> Sshd {
        let d = self.dir.path();
        let name = format!("sshd-{host_key}.log");
        let config = d.join(format!("sshd_config-{host_key}"));
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/{host_key}\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\n\
                 UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nLogLevel INFO\n{extra}\n",
                port = self.port,
                d = d.display()
            ),
        )
        .unwrap();
        if current_user() == "root" {
            // sshd running as root insists on its privilege separation directory.
            fs::create_dir_all("/run/sshd").unwrap();
        }
        let log = d.join(name);
        let _ = fs::remove_file(&log);
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-E"])
            .arg(&log)
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let port = self.port;
        assert!(
            eventually(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "sshd did not listen"
        );
        Sshd { child, log }
    }

    /// A known_hosts line pinning `host_key` for this NAS as ssh looks it up.
    fn known_hosts_line(&self, host_key: &str) -> String {
        let public = fs::read_to_string(self.path(&format!("{host_key}.pub"))).unwrap();
        let mut f = public.split_whitespace();
        format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            f.next().unwrap(),
            f.next().unwrap()
        )
    }

    /// Entries of the node's backup directory on the NAS (empty when it does not exist).
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.base())
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// A node backing up to `nas`, with `extra` lines in its `[backup]` table.
fn node(nas: &Nas, extra: &str) -> Node {
    let n = Node::new(&format!(
        r#"
[node]
name = "pi4-a"
role = "agent"
cluster = "test"

[backup]
target = "{}@127.0.0.1:{}"
paths = ["/etc/rancher", "/var/lib/app/data.db"]
ssh_key_file = "/etc/imagegen/backup_key"
ssh_port = {}
{extra}
"#,
        current_user(),
        nas.path("nas").display(),
        nas.port
    ));
    n.write("etc/rancher/k3s/config.yaml", "node-name: pi4-a\n");
    n.write("etc/rancher/node/password", "pw\n");
    n.write("var/lib/app/data.db", "rows");
    n.write("etc/not-backed-up", "x");
    let key = n.root().join("etc/imagegen/backup_key");
    fs::copy(nas.path("client_key"), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    n
}

/// Runs `backup`, killing it after `limit`: a run still going then is a failure of the test.
fn backup(n: &Node, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = n
        .command(&["backup"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            let took = started.elapsed();
            return (child.wait_with_output().unwrap(), took);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "backup still running after {limit:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_ok(n: &Node) -> Output {
    let (out, _) = backup(n, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn step(n: &Node) -> serde_json::Value {
    n.status_json()["steps"]["backup-run"].clone()
}

#[test]
fn backup_arrives_and_a_failed_run_keeps_it() {
    let nas = Nas::new();
    let _sshd = nas.start("host_key", "");
    let n = node(&nas, "");
    let base = nas.base();
    run_ok(&n);

    let latest = fs::read_link(base.join("latest")).unwrap();
    let snap = base.join(&latest);
    assert!(latest.to_str().unwrap().ends_with('Z'), "{latest:?}");
    assert_eq!(
        fs::read_to_string(snap.join("etc/rancher/k3s/config.yaml")).unwrap(),
        "node-name: pi4-a\n"
    );
    assert_eq!(
        fs::read_to_string(snap.join("var/lib/app/data.db")).unwrap(),
        "rows"
    );
    assert!(!snap.join("etc/not-backed-up").exists());
    assert_eq!(step(&n)["state"], "done");

    // Same node, target now unreachable.
    let closed = free_port();
    let toml = n.read("etc/imagegen/node.toml");
    n.write(
        "etc/imagegen/node.toml",
        &toml.replace(
            &format!("ssh_port = {}", nas.port),
            &format!("ssh_port = {closed}"),
        ),
    );
    let (out, _) = backup(&n, Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("error: backup:"), "{log}");
    assert_eq!(step(&n)["state"], "failed");
    assert_eq!(fs::read_link(base.join("latest")).unwrap(), latest);
    assert_eq!(
        fs::read_to_string(snap.join("var/lib/app/data.db")).unwrap(),
        "rows"
    );
    assert_eq!(nas.entries().len(), 2, "{:?}", nas.entries());

    // Back online: a new snapshot, unchanged files hard-linked to the previous one.
    n.write("etc/imagegen/node.toml", &toml);
    std::thread::sleep(Duration::from_millis(1100));
    run_ok(&n);
    let newest = base.join(fs::read_link(base.join("latest")).unwrap());
    assert_ne!(newest, snap);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_eq!(
        ino(&newest.join("var/lib/app/data.db")),
        ino(&snap.join("var/lib/app/data.db"))
    );
}

/// Issue 11 item 2: with the NAS key pinned, an impostor on the NAS's address gets nothing,
/// not even a login, and the status says why.
#[test]
fn pinned_nas_key_lets_the_nas_in_and_refuses_an_impostor() {
    let nas = Nas::new();
    let n = node(
        &nas,
        "known_hosts_file = \"/etc/imagegen/backup-known-hosts\"",
    );
    n.write(
        "etc/imagegen/backup-known-hosts",
        &nas.known_hosts_line("host_key"),
    );

    let impostor = nas.start("other_host_key", "");
    let (out, _) = backup(&n, Duration::from_secs(60));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert_eq!(impostor.accepted_logins(), 0, "the impostor got a login");
    assert!(nas.entries().is_empty(), "{:?}", nas.entries());
    let s = step(&n);
    assert_eq!(s["state"], "failed", "{s}");
    let reason = s["reason"].as_str().unwrap();
    for want in [
        "NAS host key",
        "refused",
        "/etc/imagegen/backup-known-hosts",
        "nothing was sent",
        &fingerprint(&nas.path("other_host_key.pub")),
    ] {
        assert!(reason.contains(want), "{want:?} not in {reason:?}");
    }
    drop(impostor);

    let _real = nas.start("host_key", "");
    run_ok(&n);
    let latest = nas.base().join("latest");
    assert_eq!(
        fs::read_to_string(latest.join("var/lib/app/data.db")).unwrap(),
        "rows"
    );
    let s = step(&n);
    assert_eq!(s["state"], "done", "{s}");
    let key = s["details"]["host_key"].as_str().unwrap();
    assert!(key.contains("pinned"), "{key}");
    // Pinned: nothing is ever trusted on first use.
    assert!(
        !n.root()
            .join("var/lib/imagegen/backup-known-hosts")
            .exists()
    );
}

/// Issue 11 item 2: without a pinned key, the first key seen is recorded (trust on first use)
/// and a NAS answering with any other key afterwards, of the same type or not, is refused.
#[test]
fn unpinned_nas_key_is_trusted_on_first_use_and_a_changed_one_refused() {
    let nas = Nas::new();
    let n = node(&nas, "");
    let real = nas.start("host_key", "");
    let out = run_ok(&n);
    let log = String::from_utf8_lossy(&out.stderr);
    let first = format!(
        "NAS host key trusted on first use: {}",
        fingerprint(&nas.path("host_key.pub"))
    );
    assert!(log.contains(&first), "{log}");
    let s = step(&n);
    assert_eq!(s["state"], "done", "{s}");
    assert_eq!(s["details"]["host_key"], first.as_str(), "{s}");
    // ssh itself finds the key recorded for the NAS as it connects to it.
    let recorded = n.root().join("var/lib/imagegen/backup-known-hosts");
    let found = Command::new("/usr/bin/ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", nas.port))
        .arg("-f")
        .arg(&recorded)
        .output()
        .unwrap();
    assert!(found.status.success(), "{recorded:?} lacks the NAS");

    // The same NAS again: still trusted, nothing new recorded.
    let kept = fs::read(&recorded).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    run_ok(&n);
    assert_eq!(fs::read(&recorded).unwrap(), kept);
    assert_eq!(nas.entries().len(), 3, "{:?}", nas.entries());
    drop(real);

    let before = nas.entries();
    for other in ["other_host_key", "ecdsa_host_key"] {
        let impostor = nas.start(other, "");
        let (out, _) = backup(&n, Duration::from_secs(60));
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{other}: {log}");
        assert_eq!(impostor.accepted_logins(), 0, "{other}: got a login");
        assert_eq!(nas.entries(), before, "{other}");
        assert_eq!(fs::read(&recorded).unwrap(), kept, "{other}");
        let s = step(&n);
        assert_eq!(s["state"], "failed", "{s}");
        let reason = s["reason"].as_str().unwrap();
        for want in [
            "NAS host key changed",
            "refused",
            "/var/lib/imagegen/backup-known-hosts",
            &fingerprint(&nas.path(&format!("{other}.pub"))),
        ] {
            assert!(reason.contains(want), "{other}: {want:?} not in {reason:?}");
        }
    }
}

/// The timeouts the next tests give the node, short so they run fast.
const SHORT: &str = "connect_timeout_secs = 2\nio_timeout_secs = 3";
/// Connect + one I/O timeout + the time rsync and ssh take to notice: a run must end by then.
const BOUND: Duration = Duration::from_secs(20);

fn assert_timed_out(n: &Node, out: &Output, took: Duration) {
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(took < BOUND, "took {took:?}");
    let s = step(n);
    assert_eq!(s["state"], "failed", "{s}");
    let reason = s["reason"].as_str().unwrap();
    assert!(reason.contains("timed out"), "{reason}");
}

/// Issue 11 item 9: something accepts TCP on the NAS's port and never says a word.
#[test]
fn a_nas_that_never_answers_times_out() {
    let nas = Nas::new();
    let silent = std::net::TcpListener::bind(("127.0.0.1", nas.port)).unwrap();
    let n = node(&nas, SHORT);
    let (out, took) = backup(&n, BOUND + Duration::from_secs(10));
    assert_timed_out(&n, &out, took);
    drop(silent);
}

/// Issue 11 item 9: the NAS logs the node in, then its commands never finish.
#[test]
fn a_nas_whose_commands_hang_times_out() {
    let nas = Nas::new();
    let _sshd = nas.start("host_key", "ForceCommand exec sleep 30");
    let n = node(&nas, SHORT);
    let (out, took) = backup(&n, BOUND + Duration::from_secs(10));
    assert_timed_out(&n, &out, took);
    assert!(nas.entries().is_empty(), "{:?}", nas.entries());
}

/// Issue 11 item 9: the NAS runs the node's commands, but rsync there never answers; the
/// last good backup is kept.
#[test]
fn a_nas_whose_rsync_hangs_times_out_and_keeps_the_last_backup() {
    let nas = Nas::new();
    let n = node(&nas, SHORT);
    let good = nas.start("host_key", "");
    run_ok(&n);
    drop(good);
    let before = nas.entries();
    let force = nas.path("force.sh");
    write_script(
        &force,
        "case \"$SSH_ORIGINAL_COMMAND\" in\n  rsync\\ *) exec sleep 30 ;;\nesac\n\
         exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"",
    );
    let _hangs = nas.start("host_key", &format!("ForceCommand {}", force.display()));
    std::thread::sleep(Duration::from_millis(1100));
    let (out, took) = backup(&n, BOUND + Duration::from_secs(10));
    assert_timed_out(&n, &out, took);
    assert_eq!(nas.entries(), before);
}
