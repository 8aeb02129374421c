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
