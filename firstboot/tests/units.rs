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
