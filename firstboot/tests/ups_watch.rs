//! `ups-watch` against a real NUT `upsd` with the `dummy-ups` driver on 127.0.0.1 (Debian
//! nut-server 2.8.0). The UPS status is changed by rewriting the driver's `.dev` file, which
//! dummy-ups re-reads when its mtime changes.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use common::*;

const PASSWORD: &str = "s3cret-ups";

struct Nut {
    dir: tempfile::TempDir,
    port: u16,
    driver: Option<Child>,
    upsd: Option<Child>,
}

impl Nut {
    fn start(status: &str) -> Nut {
        let port = free_port();
        Nut::start_with(
            status,
            port,
            &[
                (
                    "ups.conf",
                    "[dummy]\n\tdriver = dummy-ups\n\tport = dummy.dev\n\tdesc = \"test\"\n".into(),
                ),
                ("upsd.conf", format!("LISTEN 127.0.0.1 {port}\n")),
                (
                    "upsd.users",
                    format!("[monuser]\n\tpassword = {PASSWORD}\n\tupsmon secondary\n"),
                ),
            ],
        )
    }

    /// upsd and dummy-ups from the given config files (state directory from the environment).
    fn start_with(status: &str, port: u16, files: &[(&str, String)]) -> Nut {
        require("/lib/nut/upsd", "nut-server");
        require("/lib/nut/dummy-ups", "nut-server");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("run")).unwrap();
        for (name, content) in files {
            fs::write(d.join(name), content).unwrap();
        }
        let mut nut = Nut {
            dir,
            port,
            driver: None,
            upsd: None,
        };
        nut.set_status(status);
        nut.driver = Some(nut.daemon("/lib/nut/dummy-ups", &["-a", "dummy"]));
        nut.start_upsd();
        nut
    }

    fn daemon(&self, prog: &str, args: &[&str]) -> Child {
        let d = self.dir.path();
        Command::new(prog)
            .args(args)
            .args(["-F", "-u", &current_user()])
            .env("NUT_CONFPATH", d)
            .env("NUT_STATEPATH", d.join("run"))
            .env("NUT_PIDPATH", d.join("run"))
            .env("NUT_ALTPIDPATH", d.join("run"))
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.log_path(prog)).unwrap())
            .spawn()
            .unwrap()
    }

    fn log_path(&self, prog: &str) -> PathBuf {
        let name = Path::new(prog).file_name().unwrap().to_str().unwrap();
        self.dir.path().join(format!("{name}.log"))
    }

    fn start_upsd(&mut self) {
        self.upsd = Some(self.daemon("/lib/nut/upsd", &[]));
        let port = self.port;
        assert!(
            eventually(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "upsd did not listen on {port}: {}",
            fs::read_to_string(self.log_path("upsd")).unwrap_or_default()
        );
    }

    fn stop_upsd(&mut self) {
        if let Some(mut c) = self.upsd.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn set_status(&self, status: &str) {
        // Write then rename, so the driver never reads a half-written file.
        let d = self.dir.path();
        fs::write(d.join("dummy.tmp"), format!("ups.status: {status}\n")).unwrap();
        fs::rename(d.join("dummy.tmp"), d.join("dummy.dev")).unwrap();
    }
}

impl Drop for Nut {
    fn drop(&mut self) {
        self.stop_upsd();
        if let Some(mut c) = self.driver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn node_for(nut: &Nut, password: &str) -> (Node, PathBuf) {
    let shutdowns = nut.dir.path().join("shutdowns");
    let node = Node::new(&format!(
        r#"
[node]
name = "pi4-a"
role = "agent"
cluster = "test"

[ups]
host = "127.0.0.1"
port = {}
ups = "dummy"
user = "monuser"
password_file = "/etc/imagegen/ups-password"
shutdown_command = ["{}", "now"]
poll_interval_ms = 500
"#,
        nut.port,
        nut.dir.path().join("poweroff").display()
    ));
    write_script(
        &nut.dir.path().join("poweroff"),
        &format!("echo \"poweroff $*\" >> '{}'", shutdowns.display()),
    );
    node.write("etc/imagegen/ups-password", &format!("{password}\n"));
    (node, shutdowns)
}

fn shutdown_count(p: &Path) -> usize {
    fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Waits until the watcher logged `status <words>`, then a few more polls.
fn holds_without_shutdown(w: &Running, words: &str, shutdowns: &Path) {
    w.wait_log(&format!("status {words}"), Duration::from_secs(15));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        shutdown_count(shutdowns),
        0,
        "{words} shut down:\n{}",
        w.log_text()
    );
}

fn shuts_down_once(w: &mut Running, shutdowns: &Path) {
    assert!(
        eventually(Duration::from_secs(15), || shutdown_count(shutdowns) > 0),
        "no shutdown within 15 s:\n{}",
        w.log_text()
    );
    // The watcher ends after starting the shutdown; nothing runs it a second time.
    let status = w.child.wait().unwrap();
    assert!(status.success());
    assert_eq!(fs::read_to_string(shutdowns).unwrap(), "poweroff now\n");
}

#[test]
fn ol_ob_and_unknown_words_do_nothing_ob_lb_shuts_down_once() {
    let nut = Nut::start("OL");
    let (node, shutdowns) = node_for(&nut, PASSWORD);
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OL", &shutdowns);
    nut.set_status("OB DISCHRG");
    holds_without_shutdown(&w, "OB DISCHRG", &shutdowns);
    nut.set_status("OL CHRG BOOST");
    holds_without_shutdown(&w, "OL CHRG BOOST", &shutdowns);
    assert_eq!(node.status_json()["steps"]["ups-watch"]["state"], "done");
    nut.set_status("OB LB");
    shuts_down_once(&mut w, &shutdowns);
}

#[test]
fn fsd_shuts_down() {
    let nut = Nut::start("OL");
    let (node, shutdowns) = node_for(&nut, PASSWORD);
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OL", &shutdowns);
    nut.set_status("FSD OL");
    shuts_down_once(&mut w, &shutdowns);
}

#[test]
fn upsd_restart_reconnects_without_shutdown() {
    let mut nut = Nut::start("OB");
    let (node, shutdowns) = node_for(&nut, PASSWORD);
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OB", &shutdowns);
    nut.stop_upsd();
    w.wait_log("lost upsd", Duration::from_secs(10));
    thread::sleep(Duration::from_secs(2));
    assert_eq!(shutdown_count(&shutdowns), 0, "lost connection shut down");
    nut.start_upsd();
    w.wait_log("reconnected to upsd", Duration::from_secs(10));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(shutdown_count(&shutdowns), 0);
    nut.set_status("OB LB");
    shuts_down_once(&mut w, &shutdowns);
}

#[test]
fn wrong_password_is_reported_and_monitoring_continues() {
    let nut = Nut::start("OL");
    let (node, shutdowns) = node_for(&nut, "not-the-password");
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    w.wait_log("refused by upsd", Duration::from_secs(10));
    let st = node.status_json();
    assert_eq!(st["steps"]["ups-watch"]["state"], "failed");
    let reason = st["steps"]["ups-watch"]["reason"].as_str().unwrap();
    assert!(reason.contains("check the UPS password"), "{reason}");
    assert!(!reason.contains("not-the-password"));
    assert!(
        !w.log_text().contains("not-the-password"),
        "password logged"
    );
    holds_without_shutdown(&w, "OL", &shutdowns);
    nut.set_status("OB LB");
    shuts_down_once(&mut w, &shutdowns);
}

/// The UPS server's NUT files written by `run` are accepted by the real upsd: it starts although
/// the VPN address cannot bind here (upsd 2.8.0 only aborts when the LAST LISTEN line fails, which
/// is why loopback is written last), and the configured user logs in, as the nodes' `ups-watch` do.
#[test]
fn ups_server_config_from_run_is_accepted_by_real_upsd() {
    let zt = FakeZeroTier::start(true);
    let port = free_port();
    let n = Node::new(&format!(
        r#"
[node]
name = "master"
role = "server"
cluster = "test"

[zerotier]
network_id = "{ZT_NWID}"
api_url = "{}"

[ups]
host = "127.0.0.1"
port = {port}
ups = "dummy"
user = "monuser"
password_file = "/etc/imagegen/ups-password"
primary = true
driver = "dummy-ups"
driver_port = "dummy.dev"
"#,
        zt.url
    ));
    n.write("var/lib/zerotier-one/authtoken.secret", ZT_TOKEN);
    n.write("etc/imagegen/ups-password", &format!("{PASSWORD}\n"));
    let out = n.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upsd_conf = n.read("etc/nut/upsd.conf");
    let listens: Vec<&str> = upsd_conf
        .lines()
        .filter(|l| l.starts_with("LISTEN"))
        .collect();
    assert_eq!(
        listens,
        [
            format!("LISTEN 10.147.17.23 {port}"),
            format!("LISTEN 127.0.0.1 {port}")
        ]
    );
    assert!(n.read("etc/nut/nut.conf").contains("MODE=netserver"));
    assert!(n.read("etc/nut/upsmon.conf").contains(" primary\n"));
    let calls = n.calls("systemctl");
    assert!(calls.contains(&"enable --now nut-server.service nut-monitor.service".to_owned()));
    assert!(calls.contains(&"enable --now --no-block imagegen-ups-watch.service".to_owned()));

    let files: Vec<(&str, String)> = ["ups.conf", "upsd.conf", "upsd.users"]
        .into_iter()
        .map(|f| (f, n.read(&format!("etc/nut/{f}"))))
        .collect();
    let nut = Nut::start_with("OL", port, &files);
    let mut c =
        imagegen_firstboot::nut::NutClient::connect("127.0.0.1", nut.port, Duration::from_secs(5))
            .unwrap();
    c.login("monuser", PASSWORD, "dummy").unwrap();
    assert!(eventually(Duration::from_secs(10), || c
        .status("dummy")
        .is_ok_and(|w| w == ["OL"])));
    c.logout().unwrap();
}
