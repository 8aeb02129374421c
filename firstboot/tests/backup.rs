//! `backup` with the real `rsync` over a real OpenSSH `sshd` on 127.0.0.1, started as the current
//! user from a temporary config with its own host key and authorized key.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let ok = Command::new(require("/usr/bin/ssh-keygen", "openssh-client"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

fn start_sshd() -> Sshd {
    let sshd = require("/usr/sbin/sshd", "openssh-server");
    require("/usr/bin/rsync", "rsync");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(&d.join("host_key"));
    keygen(&d.join("client_key"));
    fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
    let port = free_port();
    fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\nStrictModes no\n\
             UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n",
            d = d.display()
        ),
    )
    .unwrap();
    if nix_is_root() {
        // sshd running as root insists on its privilege separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
    }
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }),
        "sshd did not listen"
    );
    Sshd { dir, port, child }
}

fn nix_is_root() -> bool {
    current_user() == "root"
}

fn node(sshd: &Sshd, port: u16) -> (Node, PathBuf) {
    let nas = sshd.dir.path().join("nas");
    fs::create_dir(&nas).ok();
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
ssh_port = {port}
"#,
        current_user(),
        nas.display()
    ));
    n.write("etc/rancher/k3s/config.yaml", "node-name: pi4-a\n");
    n.write("etc/rancher/node/password", "pw\n");
    n.write("var/lib/app/data.db", "rows");
    n.write("etc/not-backed-up", "x");
    let key = n.root().join("etc/imagegen/backup_key");
    fs::copy(sshd.dir.path().join("client_key"), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    (n, nas.join("test/pi4-a"))
}

#[test]
fn backup_arrives_and_a_failed_run_keeps_it() {
    let sshd = start_sshd();
    let (n, base) = node(&sshd, sshd.port);
    let out = n.command(&["backup"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

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
    let st = n.status_json();
    assert_eq!(st["steps"]["backup-run"]["state"], "done");

    // Same node, target now unreachable.
    let closed = free_port();
    let toml = n.read("etc/imagegen/node.toml");
    n.write(
        "etc/imagegen/node.toml",
        &toml.replace(
            &format!("ssh_port = {}", sshd.port),
            &format!("ssh_port = {closed}"),
        ),
    );
    let out = n.command(&["backup"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.contains("error: backup:"), "{log}");
    let st = n.status_json();
    assert_eq!(st["steps"]["backup-run"]["state"], "failed");
    assert_eq!(fs::read_link(base.join("latest")).unwrap(), latest);
    assert_eq!(
        fs::read_to_string(snap.join("var/lib/app/data.db")).unwrap(),
        "rows"
    );
    let entries: Vec<_> = fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");

    // Back online: a new snapshot, unchanged files hard-linked to the previous one.
    n.write("etc/imagegen/node.toml", &toml);
    std::thread::sleep(Duration::from_millis(1100));
    let out = n.command(&["backup"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newest = base.join(fs::read_link(base.join("latest")).unwrap());
    assert_ne!(newest, snap);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_eq!(
        ino(&newest.join("var/lib/app/data.db")),
        ino(&snap.join("var/lib/app/data.db"))
    );
}
