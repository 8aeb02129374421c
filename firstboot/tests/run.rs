//! `run` end to end against stand-ins: zerotier-one's local API on loopback (zerotier-one is not
//! packaged in Debian), a TLS k3s supervisor on loopback, and recording `systemctl`/`dpkg`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use imagegen_firstboot::seed::{SEED_FILE_NAME, Seed, SeedFile};
use sha2::{Digest, Sha256};

fn full_config(zt_url: &str, k3s_url: &str, budget: u64) -> String {
    format!(
        r#"
[node]
name = "pi4-a"
role = "agent"
cluster = "test"

[k3s]
server_url = "{k3s_url}"

[zerotier]
network_id = "{ZT_NWID}"
api_url = "{zt_url}"

[ups]
host = "10.147.17.10"
ups = "riello"
user = "monuser"
password_file = "/etc/imagegen/ups-password"

[backup]
target = "backup@nas:/srv/backup"
paths = ["/etc/rancher"]
ssh_key_file = "/etc/imagegen/backup_ed25519"

[agent]
time_budget_secs = {budget}
"#
    )
}

/// Every file under the root (not the lock file) with its mode and content.
fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if m.is_dir() {
                walk(&p, root, out);
            } else {
                out.insert(rel, (m.permissions().mode(), fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn seeded_node(zt: &FakeZeroTier, k3s: &FakeK3s, budget: u64) -> Node {
    let n = Node::new(&full_config(&zt.url, &k3s.url, budget));
    n.write("var/lib/zerotier-one/authtoken.secret", ZT_TOKEN);
    let hash = hex::encode(Sha256::digest(k3s.ca_pem.as_bytes()));
    let seed = Seed {
        files: vec![
            SeedFile::new(
                "/etc/rancher/k3s/token",
                0o600,
                format!("K10{hash}::server:topsecret").as_bytes(),
            ),
            SeedFile::new("/etc/imagegen/ups-password", 0o600, b"ups-secret\n"),
        ],
    };
    n.write(
        &format!("boot/firmware/{SEED_FILE_NAME}"),
        &seed.to_toml_string().unwrap(),
    );
    n
}

fn states(n: &Node) -> BTreeMap<String, String> {
    let st = n.status_json();
    st["steps"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["state"].as_str().unwrap().to_owned()))
        .collect()
}

/// `step` is in `state` and its reason says `says`.
fn assert_step(st: &serde_json::Value, step: &str, state: &str, says: &str) {
    let s = &st["steps"][step];
    assert_eq!(s["state"], state, "{step}: {st}");
    assert!(
        s["reason"].as_str().is_some_and(|r| r.contains(says)),
        "{step}'s reason lacks {says:?}: {st}"
    );
}

fn all_done(n: &Node) {
    let s = states(n);
    for step in ["config", "seed", "backup", "zerotier", "k3s", "ups"] {
        assert_eq!(
            s.get(step).map(String::as_str),
            Some("done"),
            "{step}: {s:?}"
        );
    }
}

#[test]
fn zerotier_joins_waits_and_picks_up_address_and_interface() {
    let zt = FakeZeroTier::start(false);
    let n = Node::new(&format!(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [zerotier]\nnetwork_id = \"{ZT_NWID}\"\napi_url = \"{}\"\n\
         package = \"/var/cache/imagegen/zerotier-one.deb\"\n\n[agent]\ntime_budget_secs = 20\n",
        zt.url
    ));
    n.write(
        "var/lib/zerotier-one/authtoken.secret",
        &format!("{ZT_TOKEN}\n"),
    );
    n.write("var/cache/imagegen/zerotier-one.deb", "staged package");
    let w = Running::spawn(n.command(&["run"]));
    w.wait_log("REQUESTING_CONFIGURATION", Duration::from_secs(10));
    assert!(
        n.root()
            .join(format!("var/lib/zerotier-one/networks.d/{ZT_NWID}.conf"))
            .is_file()
    );
    zt.set_ready();
    let mut w = w;
    assert!(w.child.wait().unwrap().success(), "{}", w.log_text());
    let st = n.status_json();
    assert_eq!(st["steps"]["zerotier"]["state"], "done");
    assert_eq!(
        st["steps"]["zerotier"]["details"]["address"],
        "10.147.17.23"
    );
    assert_eq!(
        st["steps"]["zerotier"]["details"]["interface"],
        "ztabcdefgh"
    );
    assert_eq!(n.calls("systemctl"), ["enable --now zerotier-one.service"]);
    let deb = n.root().join("var/cache/imagegen/zerotier-one.deb");
    assert_eq!(n.calls("dpkg"), [format!("-i {}", deb.display())]);
    let reqs = zt.requests.lock().unwrap();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with(&format!("POST /network/{ZT_NWID} ")))
    );
    assert!(reqs.iter().all(|r| r.contains(ZT_TOKEN)));
}

#[test]
fn run_twice_gives_the_same_tree_and_places_the_seed() {
    let (zt, k3s) = (FakeZeroTier::start(true), FakeK3s::start());
    let n = seeded_node(&zt, &k3s, 20);
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("topsecret") && !log.contains("ups-secret"),
        "{log}"
    );
    all_done(&n);

    let token = n.root().join("etc/rancher/k3s/token");
    assert_eq!(
        fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!n.root().join("boot/firmware").join(SEED_FILE_NAME).exists());
    let yaml = n.read("etc/rancher/k3s/config.yaml");
    assert!(yaml.contains("node-ip: \"10.147.17.23\""), "{yaml}");
    assert!(yaml.contains("flannel-iface: \"ztabcdefgh\""), "{yaml}");
    let boot_copy = n.read("boot/firmware/imagegen-status.txt");
    assert!(
        boot_copy.contains("k3s") && boot_copy.contains("done"),
        "{boot_copy}"
    );
    let calls = n.calls("systemctl");
    for unit in ["imagegen-backup.timer", "zerotier-one.service"] {
        assert!(
            calls.contains(&format!("enable --now {unit}")),
            "{unit}: {calls:?}"
        );
    }
    for unit in ["k3s-agent.service", "imagegen-ups-watch.service"] {
        assert!(
            calls.contains(&format!("enable --now --no-block {unit}")),
            "{unit}: {calls:?}"
        );
    }

    let first = tree(n.root());
    let out = n.command(&["run"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(tree(n.root()), first, "second run changed the tree");
}

#[test]
fn run_killed_midway_completes_when_run_again() {
    let (zt, k3s) = (FakeZeroTier::start(false), FakeK3s::start());
    let n = seeded_node(&zt, &k3s, 30);
    let w = Running::spawn(n.command(&["run"]));
    w.wait_log("zerotier: waiting", Duration::from_secs(10));
    drop(w); // SIGKILL in the middle of the ZeroTier wait
    assert!(n.root().join("etc/rancher/k3s/token").exists());
    zt.set_ready();
    let out = n.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    all_done(&n);
    assert!(
        n.read("etc/rancher/k3s/config.yaml")
            .contains("10.147.17.23")
    );
}

#[test]
fn network_absent_ends_within_budget_and_leaves_steps_pending() {
    // Ports nobody listens on.
    let zt_url = format!("http://127.0.0.1:{}", free_port());
    let k3s_url = format!("https://127.0.0.1:{}", free_port());
    let n = Node::new(&full_config(&zt_url, &k3s_url, 2));
    n.write(
        "etc/rancher/k3s/token",
        "K10abababababababababababababababababababababababababababababababab::s:p",
    );
    n.write("etc/imagegen/ups-password", "pw");
    let t = Instant::now();
    let out = n.command(&["run"]).output().unwrap();
    let took = t.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with a 2 s budget"
    );
    let s = states(&n);
    assert_eq!(s["zerotier"], "pending", "{s:?}");
    assert_eq!(s["k3s"], "pending", "{s:?}");
    assert_eq!(s["backup"], "done", "{s:?}");
    assert_eq!(s["ups"], "done", "{s:?}");
    assert!(!n.root().join("etc/rancher/k3s/config.yaml").exists());
}

#[test]
fn bad_config_is_reported_with_its_line_and_nothing_is_written() {
    let n = Node::new("[node]\nname = \"pi4-a\"\nrole = \"master\"\ncluster = \"test\"\n");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(log.contains("line 3"), "{log}");
    let st = n.status_json();
    assert_eq!(st["steps"]["config"]["state"], "failed");
    assert!(
        st["steps"]["config"]["reason"]
            .as_str()
            .unwrap()
            .contains("line 3")
    );
    let files: Vec<String> = tree(n.root()).into_keys().collect();
    assert_eq!(
        files,
        [
            "boot/firmware/imagegen-status.txt",
            "etc/imagegen/node.toml",
            "var/lib/imagegen/status.json",
            "var/lib/imagegen/status.lock"
        ]
    );
    assert!(n.calls("systemctl").is_empty());
}

#[test]
fn status_on_an_empty_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(AGENT)
        .args(["--root"])
        .arg(dir.path())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["steps"].as_object().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "status wrote files"
    );
}

#[test]
fn first_server_gets_cluster_init_and_etcd_snapshots() {
    let zt = FakeZeroTier::start(true);
    let n = Node::new(&format!(
        r#"
[node]
name = "master"
role = "server"
cluster = "test"
cluster_init = true

[k3s]
etcd_snapshot_retention = 7

[zerotier]
network_id = "{ZT_NWID}"
api_url = "{}"

[backup]
target = "backup@nas:/srv/backup"
paths = ["/var/lib/rancher/k3s/server/db/snapshots"]
schedule = "*-*-* 02:30:00"
ssh_key_file = "/etc/imagegen/backup_ed25519"

[agent]
time_budget_secs = 2
"#,
        zt.url
    ));
    n.write("var/lib/zerotier-one/authtoken.secret", ZT_TOKEN);
    n.write("etc/rancher/k3s/token", "short-first-server-token\n");
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let yaml = n.read("etc/rancher/k3s/config.yaml");
    assert!(yaml.contains("cluster-init: true\n"), "{yaml}");
    assert!(!yaml.contains("server:"), "{yaml}");
    assert!(yaml.contains("node-ip: \"10.147.17.23\""), "{yaml}");
    let etcd = n.read("etc/rancher/k3s/config.yaml.d/50-imagegen-etcd-snapshots.yaml");
    assert!(
        etcd.contains("etcd-snapshot-schedule-cron: \"0 */6 * * *\""),
        "{etcd}"
    );
    assert!(etcd.contains("etcd-snapshot-retention: 7"), "{etcd}");
    let timer = n.read("etc/systemd/system/imagegen-backup.timer.d/schedule.conf");
    assert!(
        timer.contains("OnCalendar=\nOnCalendar=*-*-* 02:30:00\n"),
        "{timer}"
    );
    assert!(
        n.calls("systemctl")
            .contains(&"enable --now --no-block k3s.service".to_owned())
    );
    // Nothing answers on 127.0.0.1:6443 here: the self-check waits, then stays pending.
    assert_eq!(states(&n)["k3s"], "pending", "{log}");
}

/// Waits until `f` holds while the agent is still running, i.e. before its network waits end.
fn while_running(w: &mut Running, what: &str, mut f: impl FnMut() -> bool) {
    let held = eventually(Duration::from_secs(10), || {
        w.child.try_wait().unwrap().is_none() && f()
    });
    assert!(held, "{what}: not while run was waiting:\n{}", w.log_text());
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "{what}: run ended early:\n{}",
        w.log_text()
    );
}

fn step_state(n: &Node, step: &str) -> Option<String> {
    let p = n.root().join("var/lib/imagegen/status.json");
    let s: serde_json::Value = serde_json::from_slice(&fs::read(p).ok()?).ok()?;
    s["steps"][step]["state"].as_str().map(str::to_owned)
}

/// Power protection comes first: with the k3s server unreachable, the UPS watch and the backup
/// timer are set up while k3s is still waiting for it, not after its whole budget.
#[test]
fn ups_watch_and_backup_timer_come_before_the_k3s_wait() {
    let zt = FakeZeroTier::start(true);
    let k3s_url = format!("https://127.0.0.1:{}", free_port());
    let n = Node::new(&full_config(&zt.url, &k3s_url, 30));
    n.write("var/lib/zerotier-one/authtoken.secret", ZT_TOKEN);
    n.write(
        "etc/rancher/k3s/token",
        "K10abababababababababababababababababababababababababababababababab::s:p",
    );
    n.write("etc/imagegen/ups-password", "pw");
    let mut w = Running::spawn(n.command(&["run"]));
    w.wait_log("k3s: waiting", Duration::from_secs(10));
    while_running(&mut w, "ups and backup done", || {
        step_state(&n, "ups").as_deref() == Some("done")
            && step_state(&n, "backup").as_deref() == Some("done")
    });
    let calls = n.calls("systemctl");
    assert!(
        calls.contains(&"enable --now --no-block imagegen-ups-watch.service".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"enable --now imagegen-backup.timer".to_owned()),
        "{calls:?}"
    );
}

/// The UPS server protects itself before ZeroTier is up: NUT on loopback, upsmon and the watch
/// enabled, while ZeroTier is still waiting; upsd also listens on the VPN address once known.
#[test]
fn ups_server_protects_itself_before_zerotier_is_up() {
    let zt = FakeZeroTier::start(false);
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
ups = "riello"
user = "monuser"
password_file = "/etc/imagegen/ups-password"
primary = true
driver = "riello_usb"

[agent]
time_budget_secs = 30
"#,
        zt.url
    ));
    n.write("var/lib/zerotier-one/authtoken.secret", ZT_TOKEN);
    n.write("etc/imagegen/ups-password", "pw");
    let mut w = Running::spawn(n.command(&["run"]));
    w.wait_log("zerotier: waiting", Duration::from_secs(10));
    while_running(&mut w, "NUT on loopback", || {
        n.calls("systemctl")
            .contains(&"enable --now --no-block imagegen-ups-watch.service".to_owned())
    });
    let calls = n.calls("systemctl");
    assert!(
        calls.contains(&"enable --now nut-server.service nut-monitor.service".to_owned()),
        "{calls:?}"
    );
    assert_eq!(n.read("etc/nut/upsd.conf").matches("LISTEN").count(), 1);
    assert!(
        n.read("etc/nut/upsd.conf")
            .contains("LISTEN 127.0.0.1 3493\n")
    );
    assert_eq!(step_state(&n, "ups").as_deref(), Some("pending"));

    zt.set_ready();
    assert!(w.child.wait().unwrap().success(), "{}", w.log_text());
    assert_eq!(states(&n)["ups"], "done");
    let listens: Vec<String> = n
        .read("etc/nut/upsd.conf")
        .lines()
        .filter(|l| l.starts_with("LISTEN"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listens,
        ["LISTEN 10.147.17.23 3493", "LISTEN 127.0.0.1 3493"]
    );
}

/// A waiting step never delays another: k3s that does not need the ZeroTier address joins while
/// ZeroTier is still waiting.
#[test]
fn k3s_not_needing_zerotier_does_not_wait_for_it() {
    let (zt, k3s) = (FakeZeroTier::start(false), FakeK3s::start());
    let n = Node::new(&format!(
        r#"
[node]
name = "pi4-a"
role = "agent"
cluster = "test"

[k3s]
server_url = "{}"
node_ip_from = "default-route"

[zerotier]
network_id = "{ZT_NWID}"
api_url = "{}"

[agent]
time_budget_secs = 30
"#,
        k3s.url, zt.url
    ));
    n.write("var/lib/zerotier-one/authtoken.secret", ZT_TOKEN);
    let hash = hex::encode(Sha256::digest(k3s.ca_pem.as_bytes()));
    n.write("etc/rancher/k3s/token", &format!("K10{hash}::server:pw"));
    let mut w = Running::spawn(n.command(&["run"]));
    w.wait_log("zerotier: waiting", Duration::from_secs(10));
    while_running(&mut w, "k3s done", || {
        step_state(&n, "k3s").as_deref() == Some("done")
    });
    zt.set_ready();
    assert!(w.child.wait().unwrap().success(), "{}", w.log_text());
    let s = states(&n);
    assert_eq!(
        (s["zerotier"].as_str(), s["k3s"].as_str()),
        ("done", "done")
    );
}

/// A time budget too large for the clock used to panic (`Instant + Duration` overflow); it is a
/// config error that names the key.
#[test]
fn huge_time_budget_is_a_config_error() {
    let n = Node::new(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [agent]\ntime_budget_secs = 18446744073709551615\n",
    );
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("time_budget_secs"), "{log}");
    let st = n.status_json();
    assert_eq!(st["steps"]["config"]["state"], "failed");
}

/// A seed that does not parse fails the same way on every boot; it used to stay on the FAT
/// partition, secrets and all, for good. It is wiped from there (kept root-only for the
/// operator) and the failure stays in the status.
#[test]
fn unparsable_seed_is_wiped_from_the_boot_partition() {
    const SECRET: &str = "c2VjcmV0LWluLWJhZC1zZWVk"; // base64 of "secret-in-bad-seed"
    let n = Node::new("[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n");
    let seed = format!(
        "[[file]]\npath = \"/etc/rancher/k3s/token\"\nmode = \"0600\"\n\
         content_base64 = \"{SECRET}\"\nbroken = [\n"
    );
    n.write(&format!("boot/firmware/{SEED_FILE_NAME}"), &seed);
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        !log.contains(SECRET) && !log.contains("secret-in-bad-seed"),
        "{log}"
    );
    for (path, (_, content)) in tree(&n.root().join("boot")) {
        let text = String::from_utf8_lossy(&content);
        assert!(!text.contains(SECRET), "boot/{path} still holds the secret");
    }
    assert!(!n.root().join("boot/firmware").join(SEED_FILE_NAME).exists());
    let kept = n.root().join("var/lib/imagegen/rejected-seed.toml");
    assert_eq!(fs::read_to_string(&kept).unwrap(), seed);
    assert_eq!(
        fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let reason = n.status_json()["steps"]["seed"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("rejected-seed.toml"), "{reason}");
    assert!(reason.contains("line 5"), "{reason}");

    // The next run has no seed; the rejection stays visible until a new seed arrives.
    let out = n.command(&["run"]).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(n.status_json()["steps"]["seed"]["state"], "failed");
}

/// `status --json` as the operator sees it, while `run` may be writing the file.
fn status_cmd(n: &Node) -> serde_json::Value {
    let out = n.command(&["status", "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Every step node.toml implies is in the status from the start, and a step that waits says
/// why and how often it tried, while it waits: with the k3s server down, k3s is listed pending
/// with the connection failure and an attempt count that grows, in `status --json` and in the
/// copy on the boot partition, long before the time budget ends.
#[test]
fn waiting_steps_are_in_the_status_while_they_wait() {
    let zt = FakeZeroTier::start(false);
    let k3s_url = format!("https://127.0.0.1:{}", free_port());
    let n = Node::new(&format!(
        r#"
[node]
name = "pi4-a"
role = "agent"
cluster = "test"

[k3s]
server_url = "{k3s_url}"
node_ip_from = "default-route"

[zerotier]
network_id = "{ZT_NWID}"
api_url = "{}"

[agent]
time_budget_secs = 60
"#,
        zt.url
    ));
    n.write("var/lib/zerotier-one/authtoken.secret", ZT_TOKEN);
    n.write(
        "etc/rancher/k3s/token",
        "K10abababababababababababababababababababababababababababababababab::s:p",
    );
    let mut w = Running::spawn(n.command(&["run"]));
    let attempts = |v: &serde_json::Value, step: &str| v["steps"][step]["attempts"].as_u64();
    let mut seen = serde_json::Value::Null;
    while_running(&mut w, "k3s and zerotier pending with reasons", || {
        seen = status_cmd(&n);
        let k3s = &seen["steps"]["k3s"];
        let zerotier = &seen["steps"]["zerotier"];
        k3s["state"] == "pending"
            && k3s["reason"]
                .as_str()
                .is_some_and(|r| r.contains("Connection refused"))
            && attempts(&seen, "k3s").is_some_and(|a| a >= 1)
            && zerotier["state"] == "pending"
            && zerotier["reason"]
                .as_str()
                .is_some_and(|r| r.contains("REQUESTING_CONFIGURATION"))
            && attempts(&seen, "zerotier").is_some_and(|a| a >= 1)
    });
    let first = attempts(&seen, "k3s").unwrap();
    let boot = n.read("boot/firmware/imagegen-status.txt");
    let k3s_line = boot.lines().find(|l| l.starts_with("k3s ")).unwrap_or("");
    assert!(
        k3s_line.contains("pending")
            && k3s_line.contains("Connection refused")
            && k3s_line.contains("attempt"),
        "{boot}"
    );
    assert!(boot.lines().any(|l| l.starts_with("zerotier ")), "{boot}");
    while_running(&mut w, "the k3s attempt count grows", || {
        attempts(&status_cmd(&n), "k3s").is_some_and(|a| a > first)
    });
}

/// `[firstboot] scripts` run in order after the agent's steps, each recorded with its exit
/// status; the first failure stops the ones after it; a second run re-runs only what did not
/// succeed; a script over its time limit is killed and failed.
#[test]
fn firstboot_scripts_run_once_in_order() {
    let dir = "usr/local/lib/imagegen/scripts";
    let n = Node::new(&format!(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [firstboot]\ntimeout_secs = 2\nscripts = [\"/{dir}/01-a.sh\", \"/{dir}/02-fails.sh\", \
         \"/{dir}/03-c.sh\"]\n"
    ));
    // Each appends its name to a log in the root (the scripts' working directory).
    for (name, body) in [
        ("01-a.sh", "echo a >> order.log\necho out-of-a\n"),
        (
            "02-fails.sh",
            "echo fails >> order.log\n[ -e fixed ] || exit 3\n",
        ),
        ("03-c.sh", "echo c >> order.log\n"),
    ] {
        write_script(&n.root().join(dir).join(name), body);
    }
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("script:01-a.sh: out-of-a"), "{log}");
    assert_eq!(n.read("order.log"), "a\nfails\n");
    let st = n.status_json();
    assert_eq!(st["steps"]["script:01-a.sh"]["state"], "done");
    assert_eq!(st["steps"]["script:01-a.sh"]["details"]["exit"], "0");
    assert_step(&st, "script:02-fails.sh", "failed", "status 3");
    assert_eq!(st["steps"]["script:03-c.sh"]["state"], "pending");

    // The retry: 01 is not run again, 02 now succeeds and 03 follows.
    n.write("fixed", "");
    let out = n.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(n.read("order.log"), "a\nfails\nfails\nc\n");
    let s = states(&n);
    for step in ["script:01-a.sh", "script:02-fails.sh", "script:03-c.sh"] {
        assert_eq!(s[step], "done", "{s:?}");
    }
    // Done is done: a third run runs nothing.
    assert!(n.command(&["run"]).output().unwrap().status.success());
    assert_eq!(n.read("order.log"), "a\nfails\nfails\nc\n");

    // Over its limit: killed, failed, and the run ends.
    let slow = Node::new(&format!(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [firstboot]\ntimeout_secs = 1\nscripts = [\"/{dir}/01-slow.sh\"]\n"
    ));
    write_script(&slow.root().join(dir).join("01-slow.sh"), "sleep 30\n");
    let started = Instant::now();
    let out = slow.command(&["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(20));
    let st = slow.status_json();
    assert_step(&st, "script:01-slow.sh", "failed", "killed");
}

/// A node.toml written before `[firstboot]` existed still parses, and lists no scripts.
#[test]
fn node_toml_without_firstboot_parses() {
    let c = imagegen_firstboot::config::NodeConfig::from_toml_str(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n",
    )
    .unwrap();
    assert!(c.firstboot.scripts.is_empty());
    assert!(!c.to_toml_string().unwrap().contains("firstboot"));
}

/// `[packages]`: the staged debs installed offline with one `dpkg -i`, the same way as the
/// zerotier-one package; `apt` pending while `apt-get update` fails (no network), never holding
/// up the UPS watch; done once the sources answer, with apt-get non-interactive; a package
/// apt cannot install leaves the step failed, and the next run tries again.
#[test]
fn packages_debs_offline_and_apt_once_the_network_is_there() {
    let debs = "/var/cache/imagegen/debs";
    let n = Node::new(&format!(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [ups]\nhost = \"127.0.0.1\"\nport = {}\nups = \"riello\"\nuser = \"monuser\"\n\
         password_file = \"/etc/imagegen/ups-password\"\n\n\
         [packages]\ndebs = [\"{debs}/01-hello.deb\", \"{debs}/02-world.deb\"]\n\
         apt = [\"htop\", \"jq\"]\n\n[agent]\ntime_budget_secs = 2\n",
        free_port()
    ));
    n.write("etc/imagegen/ups-password", "pw");
    n.write(&format!("{}/01-hello.deb", &debs[1..]), "staged");
    n.write(&format!("{}/02-world.deb", &debs[1..]), "staged");
    // apt-get: `update` fails like apt's Error-Mode=any without a network until `net-up`
    // exists in the root (its working directory); `install` fails while `broken` exists.
    let log = n.bin().join("apt-get.log");
    write_script(
        &n.bin().join("apt-get"),
        &format!(
            "echo \"DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*\" >> '{}'\n\
             case \" $* \" in\n\
             *' update '*) [ -e net-up ] || {{ echo 'E: Failed to fetch' >&2; exit 100; }} ;;\n\
             *' install '*) [ -e broken ] && {{ echo 'E: Unable to locate package jq' >&2; exit 100; }} ;;\n\
             esac\nexit 0\n",
            log.display()
        ),
    );

    let out = n.command(&["run"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let s = states(&n);
    assert_eq!(s["debs"], "done", "{s:?}");
    assert_eq!(s["apt"], "pending", "{s:?}");
    assert_eq!(s["ups"], "done", "{s:?}");
    let root = n.root().display().to_string();
    assert_eq!(
        n.calls("dpkg"),
        [format!(
            "-i {root}{debs}/01-hello.deb {root}{debs}/02-world.deb"
        )]
    );
    let st = n.status_json();
    assert!(
        st["steps"]["apt"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("Failed to fetch")),
        "{st}"
    );
    assert!(st["steps"]["apt"]["attempts"].as_u64() >= Some(1), "{st}");
    let calls = n.calls("apt-get");
    assert!(!calls.is_empty(), "no apt-get update");
    assert!(
        calls.iter().all(|c| c.contains(" update")
            && c.starts_with("DEBIAN_FRONTEND=noninteractive ")
            && c.contains("APT::Update::Error-Mode=any")),
        "{calls:?}"
    );

    // The network is there but a package is not: failed, with apt's message.
    n.write("net-up", "");
    n.write("broken", "");
    let out = n.command(&["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let st = n.status_json();
    assert_step(&st, "apt", "failed", "Unable to locate package");

    // Fixed: the next run installs, after finishing any interrupted dpkg; the debs are not
    // installed again.
    fs::remove_file(n.root().join("broken")).unwrap();
    let out = n.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = n.status_json();
    assert_eq!(st["steps"]["apt"]["state"], "done", "{st}");
    assert_eq!(st["steps"]["apt"]["details"]["installed"], "htop jq");
    let calls = n.calls("apt-get");
    let last = calls.last().unwrap();
    assert!(
        last.starts_with("DEBIAN_FRONTEND=noninteractive ")
            && last.ends_with(" install -y htop jq")
            && last.contains("Dpkg::Options::=--force-confold"),
        "{last}"
    );
    let dpkg = n.calls("dpkg");
    assert_eq!(
        dpkg.iter().filter(|c| c.starts_with("-i ")).count(),
        1,
        "{dpkg:?}"
    );
    assert_eq!(dpkg.last().map(String::as_str), Some("--configure -a"));
}

/// A staged deb that is gone (a card edited by hand) fails the step with its path.
#[test]
fn a_missing_staged_deb_fails_the_step() {
    let n = Node::new(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [packages]\ndebs = [\"/var/cache/imagegen/debs/01-gone.deb\"]\n",
    );
    let out = n.command(&["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let st = n.status_json();
    assert_step(&st, "debs", "failed", "01-gone.deb");
    assert!(n.calls("dpkg").is_empty());
}

/// A node on a `[wireguard]` mesh whose base lacks wireguard-tools (`after_debs`): k3s runs
/// over wg0, and the staged wireguard-tools is what brings wg-quick.
fn tunnel_from_debs_node(k3s: &FakeK3s) -> Node {
    let deb = "/var/cache/imagegen/debs/01-wireguard-tools.deb";
    let n = Node::new(&format!(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [k3s]\nserver_url = \"{}\"\nnode_ip_from = \"wireguard\"\n\n\
         [wireguard]\ninterface = \"wg0\"\naddress = \"10.99.0.2\"\nafter_debs = true\n\n\
         [packages]\ndebs = [\"{deb}\"]\n\n[agent]\ntime_budget_secs = 20\n",
        k3s.url
    ));
    n.write(&deb[1..], "staged");
    let hash = hex::encode(Sha256::digest(k3s.ca_pem.as_bytes()));
    n.write("etc/rancher/k3s/token", &format!("K10{hash}::server:pw"));
    // dpkg and systemctl record into one log, so the order between them shows; dpkg fails
    // like a damaged archive while `dpkg-broken` exists in the root (its working directory).
    let order = n.bin().join("order.log");
    write_script(
        &n.bin().join("dpkg"),
        &format!(
            "echo \"dpkg $*\" >> '{0}'\n\
             [ -e dpkg-broken ] && {{ echo 'dpkg-deb: error: unexpected end of file in \
             archive member header' >&2; exit 2; }}\nexit 0\n",
            order.display()
        ),
    );
    write_script(
        &n.bin().join("systemctl"),
        &format!("echo \"systemctl $*\" >> '{}'", order.display()),
    );
    n
}

/// The tunnel is brought up by the agent right after the staged wireguard-tools is installed
/// (dpkg's maintainer scripts do not enable it), and before k3s, which runs over it.
#[test]
fn wireguard_from_staged_debs_comes_up_after_them_and_before_k3s() {
    let k3s = FakeK3s::start();
    let n = tunnel_from_debs_node(&k3s);
    let out = n.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = states(&n);
    for step in ["debs", "wireguard", "k3s"] {
        assert_eq!(s.get(step).map(String::as_str), Some("done"), "{s:?}");
    }
    let st = n.status_json();
    assert_eq!(
        st["steps"]["wireguard"]["details"]["enabled"],
        "wg-quick@wg0.service"
    );
    let order = n.calls("order");
    let at = |needle: &str| {
        order
            .iter()
            .position(|c| c == needle || c.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {order:?}"))
    };
    let dpkg = at("dpkg -i ");
    let tunnel = at("systemctl enable --now --no-block wg-quick@wg0.service");
    let k3s_start = at("systemctl enable --now --no-block k3s-agent.service");
    assert!(dpkg < tunnel && tunnel < k3s_start, "{order:?}");
    let yaml = n.read("etc/rancher/k3s/config.yaml");
    assert!(
        yaml.contains("node-ip: \"10.99.0.2\"") && yaml.contains("flannel-iface: \"wg0\""),
        "{yaml}"
    );

    // Done once: a second run enables nothing again.
    let before = n.calls("order").len();
    let out = n.command(&["run"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(n.calls("order").len(), before, "{:?}", n.calls("order"));
}

/// Staged packages that fail to install leave the tunnel step failed with dpkg's reason, and
/// k3s is not started on a missing wg0; once dpkg succeeds the next run brings up both, in
/// order.
#[test]
fn wireguard_waits_for_failed_debs_and_k3s_waits_for_the_tunnel() {
    let k3s = FakeK3s::start();
    let n = tunnel_from_debs_node(&k3s);
    n.write("dpkg-broken", "");
    let out = n.command(&["run"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = states(&n);
    assert_eq!(
        (
            s["debs"].as_str(),
            s["wireguard"].as_str(),
            s["k3s"].as_str()
        ),
        ("failed", "failed", "pending"),
        "{s:?}"
    );
    let st = n.status_json();
    let reason = st["steps"]["wireguard"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("wg-quick@wg0.service") && reason.contains("unexpected end of file"),
        "{st}"
    );
    let k3s_reason = st["steps"]["k3s"]["reason"].as_str().unwrap_or("");
    assert!(
        k3s_reason.contains("WireGuard tunnel") && k3s_reason.contains("wireguard step"),
        "{st}"
    );
    let order = n.calls("order");
    assert!(
        order.iter().all(|c| !c.starts_with("systemctl")),
        "{order:?}"
    );
    assert!(!n.root().join("etc/rancher/k3s/config.yaml").exists());
    assert!(k3s.paths().is_empty(), "{:?}", k3s.paths());

    fs::remove_file(n.root().join("dpkg-broken")).unwrap();
    let out = n.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = states(&n);
    for step in ["debs", "wireguard", "k3s"] {
        assert_eq!(s.get(step).map(String::as_str), Some("done"), "{s:?}");
    }
    let order = n.calls("order");
    let last_dpkg = order
        .iter()
        .rposition(|c| c.starts_with("dpkg -i "))
        .unwrap();
    let tunnel = order
        .iter()
        .position(|c| c == "systemctl enable --now --no-block wg-quick@wg0.service")
        .unwrap_or_else(|| panic!("{order:?}"));
    let k3s_start = order
        .iter()
        .position(|c| c == "systemctl enable --now --no-block k3s-agent.service")
        .unwrap_or_else(|| panic!("{order:?}"));
    assert!(last_dpkg < tunnel && tunnel < k3s_start, "{order:?}");
}

/// `after_debs` without staged packages could never bring the tunnel up: a config error.
#[test]
fn wireguard_after_debs_needs_staged_debs() {
    let n = Node::new(
        "[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n\n\
         [wireguard]\ninterface = \"wg0\"\naddress = \"10.99.0.2\"\nafter_debs = true\n",
    );
    let out = n.command(&["run"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("after_debs") && log.contains("[packages] debs"),
        "{log}"
    );
    assert!(n.calls("systemctl").is_empty());
}

/// `seed`, as imagegen-seed.service runs it early in boot: the seed's files are placed (a new
/// node.toml, a NetworkManager keyfile, a netplan file, host keys) and wiped from the boot
/// partition; netplan re-renders the seeded file; no service is touched (everything that reads
/// these files starts after the unit); the step is in the status under the node's name once
/// `run` follows, which finds no seed and leaves the step as it was.
#[test]
fn seed_subcommand_places_the_seed_before_the_network_without_touching_services() {
    let n = Node::new("[node]\nname = \"generic\"\nrole = \"agent\"\ncluster = \"test\"\n");
    n.standin("netplan");
    let keyfile = "/etc/NetworkManager/system-connections/imagegen-wifi.nmconnection";
    let seed = Seed {
        files: vec![
            SeedFile::new(
                "/etc/imagegen/node.toml",
                0o600,
                b"[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n",
            ),
            SeedFile::new(keyfile, 0o600, b"[connection]\nid=imagegen-wifi\n"),
            SeedFile::new(
                "/etc/netplan/90-imagegen.yaml",
                0o600,
                b"network: {version: 2}\n",
            ),
            SeedFile::new("/etc/ssh/ssh_host_ed25519_key", 0o600, b"key\n"),
            SeedFile::new("/etc/hostname", 0o644, b"pi4-a\n"),
        ],
    };
    n.write(
        &format!("boot/firmware/{SEED_FILE_NAME}"),
        &seed.to_toml_string().unwrap(),
    );
    let out = n.command(&["seed"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!n.root().join("boot/firmware").join(SEED_FILE_NAME).exists());
    let mode = |rel: &str| {
        fs::metadata(n.root().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&keyfile[1..]), 0o600);
    assert_eq!(n.read("etc/hostname"), "pi4-a\n");
    assert_eq!(n.calls("netplan"), ["generate"]);
    assert!(
        n.calls("systemctl").is_empty(),
        "{:?}",
        n.calls("systemctl")
    );
    let st = n.status_json();
    assert_eq!(st["steps"]["seed"]["state"], "done", "{st}");
    assert!(
        st["steps"]["seed"]["details"]["placed"]
            .as_str()
            .is_some_and(|p| p.contains(keyfile)),
        "{st}"
    );

    // `run` after it: the node's own config, no seed left, the step as the early unit left it.
    let out = n.command(&["run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = n.status_json();
    assert_eq!(after["node"], "pi4-a", "{after}");
    assert_eq!(after["steps"]["seed"], st["steps"]["seed"]);
    // Only `run` restarts what serves the seeded files, and only for a seed it placed itself.
    assert!(
        n.calls("systemctl").is_empty(),
        "{:?}",
        n.calls("systemctl")
    );
}

/// Without a netplan file in the seed, or without netplan on the node, nothing is generated;
/// a seed that cannot be used fails the unit (the status says why) and is wiped all the same.
#[test]
fn seed_subcommand_without_netplan_and_with_a_bad_seed() {
    let n = Node::new("[node]\nname = \"pi4-a\"\nrole = \"agent\"\ncluster = \"test\"\n");
    n.standin("netplan");
    let seed = Seed {
        files: vec![SeedFile::new("/etc/hostname", 0o644, b"pi4-a\n")],
    };
    n.write(
        &format!("boot/firmware/{SEED_FILE_NAME}"),
        &seed.to_toml_string().unwrap(),
    );
    assert!(n.command(&["seed"]).output().unwrap().status.success());
    assert!(n.calls("netplan").is_empty());

    n.write(
        &format!("boot/firmware/{SEED_FILE_NAME}"),
        "[[file]\nbroken",
    );
    let out = n.command(&["seed"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!n.root().join("boot/firmware").join(SEED_FILE_NAME).exists());
    assert_eq!(n.status_json()["steps"]["seed"]["state"], "failed");
}
