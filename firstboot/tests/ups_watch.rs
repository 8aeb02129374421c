//! `ups-watch` against a real NUT `upsd` with the `dummy-ups` driver on 127.0.0.1 (Debian
//! nut-server 2.8.0). The UPS status is changed by rewriting the driver's `.dev` file, which
//! dummy-ups re-reads when its mtime changes.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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

    fn stop_driver(&mut self) {
        if let Some(mut c) = self.driver.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
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
    node_with(nut.dir.path(), nut.port, password, "")
}

/// A node watching upsd on `port`, with `extra` lines in its `[ups]` table. Its shutdown command
/// is a script in `dir` that appends to `<dir>/shutdowns`.
fn node_with(dir: &Path, port: u16, password: &str, extra: &str) -> (Node, PathBuf) {
    let shutdowns = dir.join("shutdowns");
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
{extra}
"#,
        port,
        dir.join("poweroff").display()
    ));
    write_script(
        &dir.join("poweroff"),
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

/// One request/reply exchange per line on a fresh connection to upsd, without our client.
fn nut_session(port: u16, lines: &[&str]) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    lines
        .iter()
        .map(|l| {
            writeln!(w, "{l}").unwrap();
            let mut reply = String::new();
            r.read_line(&mut reply).unwrap();
            reply.trim_end().to_owned()
        })
        .collect()
}

fn numlogins(port: u16) -> String {
    nut_session(port, &["GET NUMLOGINS dummy"]).remove(0)
}

/// The UPS server's node: `run` writes its NUT files (driver dummy-ups on `dummy.dev`); `dir`
/// holds the shutdown recorder.
fn ups_server_node(dir: &Path, port: u16, password: &str) -> (Node, PathBuf) {
    let r = node_with(
        dir,
        port,
        password,
        "primary = true\ndriver = \"dummy-ups\"\ndriver_port = \"dummy.dev\"",
    );
    let out = r.0.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

fn server_nut_files(n: &Node) -> Vec<(&'static str, String)> {
    ["ups.conf", "upsd.conf", "upsd.users"]
        .into_iter()
        .map(|f| (f, n.read(&format!("etc/nut/{f}"))))
        .collect()
}

/// Every node used to log in with one shared `upsmon primary` user, so any node (or anyone who
/// read its SD card) could set FSD and power off the whole cluster. upsd only lets primary users
/// set FSD (upsd.users(5): `upsmon primary` adds the FSD action; NUT net-protocol: `FSD` needs
/// primary). Now the shared user is secondary and only the UPS server's own upsmon is primary,
/// with credentials that never leave that node; the real upsmon 2.8.0 logs in with them.
#[test]
fn only_the_ups_servers_own_upsmon_can_set_fsd() {
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let (n, _) = ups_server_node(scratch.path(), port, PASSWORD);
    let upsmon_conf = n.read("etc/nut/upsmon.conf");
    let monitor: Vec<&str> = upsmon_conf
        .lines()
        .find(|l| l.starts_with("MONITOR "))
        .unwrap()
        .split_whitespace()
        .collect();
    let (user, password) = (monitor[3], monitor[4].trim_matches('"'));
    assert_eq!(monitor[5], "primary", "{upsmon_conf}");
    assert_ne!(user, "monuser", "the shared user is primary: {upsmon_conf}");
    assert!(!upsmon_conf.contains(PASSWORD), "{upsmon_conf}");
    assert!(
        !n.read("etc/nut/upsd.users")
            .contains(&format!("\"{PASSWORD}\"\n\tupsmon primary")),
        "shared password grants primary"
    );

    let mut nut = Nut::start_with("OL", port, &server_nut_files(&n));
    // The real upsmon with the agent's upsmon.conf (only the power-down flag moved out of /etc)
    // logs in as primary.
    let conf = nut.dir.path().join("upsmon.conf");
    let flag = nut.dir.path().join("killpower");
    fs::write(
        &conf,
        upsmon_conf.replace(
            "POWERDOWNFLAG /etc/killpower",
            &format!("POWERDOWNFLAG {}", flag.display()),
        ),
    )
    .unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
    require("/lib/nut/upsmon", "nut-client");
    let mut upsmon = nut.daemon("/lib/nut/upsmon", &["-p"]);
    let logged_in = eventually(Duration::from_secs(15), || {
        numlogins(port) == "NUMLOGINS dummy 1"
    });
    upsmon.kill().unwrap();
    upsmon.wait().unwrap();
    assert!(
        logged_in,
        "upsmon did not log in: {}\n{}",
        fs::read_to_string(nut.log_path("upsmon")).unwrap_or_default(),
        fs::read_to_string(nut.log_path("upsd")).unwrap_or_default()
    );
    assert!(
        fs::read_to_string(nut.log_path("upsd"))
            .unwrap()
            .contains(&format!("User {user}@127.0.0.1 logged into UPS [dummy]"))
    );

    let shared = nut_session(
        port,
        &[
            "USERNAME monuser",
            &format!("PASSWORD {PASSWORD}"),
            "FSD dummy",
        ],
    );
    assert_eq!(shared[2], "ERR ACCESS-DENIED", "{shared:?}");
    let own = nut_session(
        port,
        &[
            &format!("USERNAME {user}"),
            &format!("PASSWORD {password}"),
            "FSD dummy",
        ],
    );
    assert!(own[2].starts_with("OK"), "{own:?}");
    nut.stop_upsd();
}

/// upsmon primary waits (up to HOSTSYNC) until it is the only client logged into the UPS
/// (upsmon(8), "primary"); the agent's watch on the UPS server itself must not be one more.
#[test]
fn ups_watch_on_the_ups_server_does_not_log_in() {
    let nut = Nut::start("OL");
    let (node, shutdowns) = node_with(
        nut.dir.path(),
        nut.port,
        PASSWORD,
        "primary = true\ndriver = \"dummy-ups\"",
    );
    let w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OL", &shutdowns);
    assert_eq!(numlogins(nut.port), "NUMLOGINS dummy 0", "{}", w.log_text());
    assert_eq!(node.status_json()["steps"]["ups-watch"]["state"], "done");
}

/// upsmon(8), DEAD UPSES: a UPS that cannot be reached for DEADTIME seconds "while that UPS was
/// last known to be on battery, it is assumed to have gone critical".
#[test]
fn upsd_gone_while_on_battery_shuts_down_after_the_dead_time() {
    let mut nut = Nut::start("OB DISCHRG");
    let (node, shutdowns) = node_with(nut.dir.path(), nut.port, PASSWORD, "dead_time_secs = 3");
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OB DISCHRG", &shutdowns);
    nut.stop_upsd();
    let gone = Instant::now();
    w.wait_log("lost upsd", Duration::from_secs(10));
    thread::sleep(Duration::from_millis(1500).saturating_sub(gone.elapsed()));
    assert_eq!(
        shutdown_count(&shutdowns),
        0,
        "shut down within the dead time"
    );
    shuts_down_once(&mut w, &shutdowns);
    assert!(
        gone.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        gone.elapsed()
    );
    assert!(w.log_text().contains("dead"), "{}", w.log_text());
}

/// The same for a UPS whose data upsd no longer has (driver gone: `ERR DRIVER-NOT-CONNECTED` or
/// `DATA-STALE`): upsmon.conf(5) DEADTIME, "If the status fetch fails, the UPS is marked stale.
/// If it stays stale for more than DEADTIME seconds, the UPS is marked dead."
#[test]
fn driver_gone_while_on_battery_shuts_down_after_the_dead_time() {
    let mut nut = Nut::start("OB DISCHRG");
    let (node, shutdowns) = node_with(nut.dir.path(), nut.port, PASSWORD, "dead_time_secs = 3");
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OB DISCHRG", &shutdowns);
    nut.stop_driver();
    w.wait_log("ERR ", Duration::from_secs(10));
    shuts_down_once(&mut w, &shutdowns);
}

/// A UPS last seen on line that becomes unreachable is no reason to power off.
#[test]
fn upsd_gone_while_on_line_does_not_shut_down() {
    let mut nut = Nut::start("OL");
    let (node, shutdowns) = node_with(nut.dir.path(), nut.port, PASSWORD, "dead_time_secs = 1");
    let w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OL", &shutdowns);
    nut.stop_upsd();
    w.wait_log("lost upsd", Duration::from_secs(10));
    thread::sleep(Duration::from_secs(3));
    assert_eq!(shutdown_count(&shutdowns), 0, "{}", w.log_text());
}

/// A password with a space, `#`, a quote and a backslash: NUT 2.8.0's parser (common/parseconf.c)
/// splits words on spaces, starts a comment at `#`, and rejects an unescaped `#` inside quotes
/// ("Unbalanced word due to unescaped # in quotes"), in upsd.users and on the wire alike, where
/// upsd then never answers. Written into upsd.users by `run` on the UPS server, sent by the
/// watch of another node, the real upsd accepts it.
#[test]
fn password_with_space_hash_quote_and_backslash_logs_in() {
    const TRICKY: &str = r#"pa ss#wo"rd\x"#;
    let port = free_port();
    let scratch = tempfile::tempdir().unwrap();
    let (server, _) = ups_server_node(scratch.path(), port, TRICKY);
    let nut = Nut::start_with("OL", port, &server_nut_files(&server));
    let (node, shutdowns) = node_for(&nut, TRICKY);
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OL", &shutdowns);
    assert_eq!(
        node.status_json()["steps"]["ups-watch"]["state"],
        "done",
        "{}",
        w.log_text()
    );
    assert_eq!(numlogins(port), "NUMLOGINS dummy 1");
    nut.set_status("OB LB");
    shuts_down_once(&mut w, &shutdowns);
    assert!(!w.log_text().contains("ss#wo"), "password logged");
}

/// A stand-in upsd that drops the connection whenever a client sends PASSWORD, and otherwise
/// answers `GET VAR <ups> ups.status` with `status`.
fn password_dropping_upsd(status: Arc<Mutex<String>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let status = status.clone();
            thread::spawn(move || {
                let mut w = tcp.try_clone().unwrap();
                for line in BufReader::new(tcp).lines().map_while(Result::ok) {
                    // Words may come quoted, as upsd's parser allows.
                    let line = line.replace('"', "");
                    let reply = if line.starts_with("PASSWORD") {
                        return;
                    } else if line.starts_with("USERNAME") {
                        "OK".to_owned()
                    } else if line.starts_with("GET VAR dummy ups.status") {
                        format!("VAR dummy ups.status \"{}\"", status.lock().unwrap())
                    } else {
                        "ERR UNKNOWN-COMMAND".to_owned()
                    };
                    if writeln!(w, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A login that breaks the connection every time used to be retried forever, silently, without
/// ever asking for the UPS status. Now it is reported in the status and the watch goes on
/// without logging in, so the node still shuts down.
#[test]
fn login_that_keeps_failing_is_reported_and_watching_goes_on() {
    let status = Arc::new(Mutex::new("OL".to_owned()));
    let port = password_dropping_upsd(status.clone());
    let scratch = tempfile::tempdir().unwrap();
    let (node, shutdowns) = node_with(scratch.path(), port, PASSWORD, "");
    let mut w = Running::spawn(node.command(&["ups-watch"]));
    holds_without_shutdown(&w, "OL", &shutdowns);
    let st = node.status_json();
    assert_eq!(st["steps"]["ups-watch"]["state"], "failed", "{st}");
    let reason = st["steps"]["ups-watch"]["reason"].as_str().unwrap();
    assert!(reason.contains("login"), "{reason}");
    *status.lock().unwrap() = "OB LB".to_owned();
    shuts_down_once(&mut w, &shutdowns);
}

/// A reply line without an end must not grow the agent without bound: NUT's own lines are
/// short (parseconf caps a word at 512 bytes, PCONF_DEFAULT_WORDLEN_LIMIT).
#[test]
fn endless_reply_line_is_cut_at_4_kib() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut req = [0u8; 64];
        let _ = tcp.read(&mut req);
        let chunk = [b'A'; 64 * 1024];
        // At most 8 MiB, then hold the connection open, so a regression fails instead of eating
        // the machine's memory.
        for _ in 0..128 {
            if tcp.write_all(&chunk).is_err() {
                return;
            }
        }
        thread::sleep(Duration::from_secs(10));
    });
    let mut c =
        imagegen_firstboot::nut::NutClient::connect("127.0.0.1", port, Duration::from_secs(5))
            .unwrap();
    let t = Instant::now();
    let e = c.status("dummy").unwrap_err().to_string();
    assert!(e.contains("longer than 4096 bytes"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
