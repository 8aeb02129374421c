//! The shipped units pass `systemd-analyze verify` (systemd 252 here), with `ExecStart=` pointed at
//! the freshly built agent because the real path only exists on a node.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use imagegen_firstboot::units::{AGENT_BINARY_PATH, UNITS};

#[test]
fn units_verify() {
    let analyze = require("/usr/bin/systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, content) in UNITS {
        let p = dir.path().join(name);
        fs::write(&p, content.replace(AGENT_BINARY_PATH, AGENT)).unwrap();
        paths.push(p);
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&paths)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// The UPS watch must not wait for `run`: `run` may spend its whole time budget waiting for the
/// network, on the first boot and on every boot after while the network is down, and the
/// start job it queues for the watch (`--no-block`) would wait for it to end. No ordering between
/// the two units may put the watch after the first-boot service.
#[test]
fn ups_watch_is_not_ordered_after_the_first_boot_run() {
    let unit = |name: &str| {
        UNITS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .unwrap()
    };
    let deps = |content: &str, key: &str| -> Vec<String> {
        content
            .lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    };
    let firstboot = unit("imagegen-firstboot.service");
    let watch = unit("imagegen-ups-watch.service");
    assert!(
        !deps(firstboot, "Before=").contains(&"imagegen-ups-watch.service".to_owned()),
        "{firstboot}"
    );
    assert!(
        !deps(watch, "After=").contains(&"imagegen-firstboot.service".to_owned()),
        "{watch}"
    );
}

/// Issue 11 item 9: a oneshot unit has no start timeout unless it sets one (systemd.service(5),
/// TimeoutStartSec=: "disabled by default" for Type=oneshot), and while a run hangs the timer
/// starts no other. The bound must be finite, and above rsync's default I/O timeout (300 s) plus
/// the connect timeout, so a stalled NAS is reported by the agent rather than killed by systemd.
#[test]
fn backup_unit_bounds_its_run() {
    let unit = UNITS
        .iter()
        .find(|(n, _)| *n == "imagegen-backup.service")
        .map(|(_, c)| *c)
        .unwrap();
    let service = unit
        .split("\n[")
        .find(|s| s.starts_with("Service]"))
        .expect("a [Service] section");
    let values: Vec<&str> = service
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TimeoutStartSec="))
        .collect();
    assert_eq!(values.len(), 1, "one TimeoutStartSec= in\n{unit}");
    let out = Command::new(require("/usr/bin/systemd-analyze", "systemd"))
        .args(["timespan", values[0]])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let micros: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("μs:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no μs in {text}"));
    let secs = micros / 1_000_000;
    assert!(
        (310..=24 * 3600).contains(&secs),
        "TimeoutStartSec={} is {secs} s",
        values[0]
    );
}

/// imagegen-seed.service places the seed before anything reads what it brings: ordered before
/// network-pre.target (which NetworkManager, systemd-networkd and ifupdown's networking order
/// after), sshd, the firewall and cloud-init's local stage, and after the local filesystems it
/// reads and writes (the boot partition among them); enabled into sysinit.target by the builder.
/// The boot transaction of this host's own units (systemd 252: sshd, NetworkManager, networkd,
/// nftables) with the seed unit pulled in has no ordering cycle, by `systemd-analyze verify`,
/// which reports any it has to break.
#[test]
fn seed_unit_runs_before_the_network_and_sshd() {
    let unit = UNITS
        .iter()
        .find(|(n, _)| *n == "imagegen-seed.service")
        .map(|(_, c)| *c)
        .unwrap();
    let values = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(str::split_whitespace)
            .collect()
    };
    for before in [
        "network-pre.target",
        "ssh.service",
        "ssh.socket",
        "nftables.service",
        "cloud-init-local.service",
    ] {
        assert!(values("Before=").contains(&before), "{before}: {unit}");
    }
    assert_eq!(values("Wants="), ["network-pre.target"]);
    assert!(values("After=").contains(&"local-fs.target"));
    assert_eq!(values("DefaultDependencies="), ["no"]);
    assert_eq!(values("Type="), ["oneshot"]);
    assert!(
        imagegen_firstboot::units::ENABLED_BY_BUILDER
            .contains(&("imagegen-seed.service", "sysinit.target"))
    );

    let analyze = require("/usr/bin/systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("imagegen-seed.service"),
        unit.replace(AGENT_BINARY_PATH, AGENT),
    )
    .unwrap();
    let host_units: Vec<&str> = [
        "ssh.service",
        "NetworkManager.service",
        "systemd-networkd.service",
        "nftables.service",
    ]
    .into_iter()
    .filter(|u| std::path::Path::new("/lib/systemd/system").join(u).exists())
    .collect();
    fs::write(
        dir.path().join("imagegen-boot-test.target"),
        format!(
            "[Unit]\nDescription=a boot with the seed unit\n\
             Wants=sysinit.target imagegen-seed.service network-online.target multi-user.target {}\n",
            host_units.join(" ")
        ),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args([
            "verify",
            "--man=no",
            "imagegen-boot-test.target",
            "imagegen-seed.service",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("cycle"), "{err}");
}
