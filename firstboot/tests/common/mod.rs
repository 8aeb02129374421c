//! Helpers shared by the integration tests: a temp node tree, stand-in programs, the agent binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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
        fs::read_to_string(self.root().join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
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
        panic!("no log line with {needle:?} in {timeout:?}: {:#?}", self.log.lock().unwrap());
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
