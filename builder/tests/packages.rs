//! `[packages]` (issue 16): the `.deb` reader against real packages made by `dpkg-deb --build`
//! and read back by `dpkg-deb -f`; a mixed cluster served by one .deb per architecture;
//! `check` and `build` refusing a package no .deb of which suits a board, a file that is not a package, a missing one and a bad apt name at their line.
//! What a built image holds is in node_content.rs.

mod common;

use common::oracle;
use std::path::Path;

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKh3zm4jTyWkG2JCU6t4CiTqB2OtWqy8iOiOPc6FnUOu ops@laptop";

use common::imagegen;

/// Every architecture and every compression dpkg-deb writes: the reader agrees with
/// `dpkg-deb -f` on Package, Version and Architecture (the Description's indented "Version:"
/// continuation line is not the field).
#[test]
fn reader_agrees_with_dpkg_deb() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for arch in ["amd64", "arm64", "armhf", "all"] {
        for comp in ["xz", "gzip", "zstd", "none"] {
            let deb =
                oracle::dpkg_deb_build(dir.path(), "hello-tool", "1.2+dfsg-3~bpo1", arch, comp);
            let c = imagegen::deb::read(&deb).unwrap_or_else(|e| panic!("{arch} {comp}: {e}"));
            let f = |field: &str| {
                oracle::run("dpkg-deb", &["-f", deb.to_str().unwrap(), field])
                    .trim()
                    .to_owned()
            };
            assert_eq!(
                (c.package, c.version, c.architecture),
                (f("Package"), f("Version"), f("Architecture")),
                "{arch} {comp}"
            );
        }
    }
}

/// A config with an x86 and an arm64 node, and `packages` as its `[packages]` table.
fn config(dir: &Path, packages: &str) -> String {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{KEY}\"]\n\
             {packages}\
             [[nodes]]\nname = \"master\"\nboard = \"x86-64\"\nrole = \"server\"\n\
             [[nodes]]\nname = \"pi4-a\"\nboard = \"rpi4\"\nrole = \"agent\"\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn check_refuses_what_cannot_be_installed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let all = oracle::dpkg_deb_build(d, "tools", "1.0", "all", "xz");
    std::fs::copy(&all, d.join("tools.deb")).unwrap();
    let amd64 = oracle::dpkg_deb_build(d, "agent", "2.0", "amd64", "zstd");
    std::fs::copy(&amd64, d.join("agent-amd64.deb")).unwrap();
    std::fs::write(d.join("script.deb"), "#!/bin/sh\necho not a package\n").unwrap();
    // A download cut short: control intact, data missing its end.
    let whole = std::fs::read(&all).unwrap();
    std::fs::write(d.join("cut.deb"), &whole[..whole.len() - 10]).unwrap();

    // An "all" package and good names: clean.
    let c = config(
        d,
        "[packages]\ndebs = [\"tools.deb\"]\napt = [\"htop\", \"g++\"]\n",
    );
    let out = imagegen(&["check", "--config", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Line 7 is `debs`, 8 is `apt` (the table starts on line 6).
    let c = config(
        d,
        "[packages]\ndebs = [\"tools.deb\", \"agent-amd64.deb\", \"script.deb\", \"gone.deb\", \
         \"cut.deb\"]\n\
         apt = [\"htop=3.2\"]\n",
    );
    let out = imagegen(&["check", "--config", &c]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    common::error_at(
        &err,
        &c,
        7,
        "agent-amd64.deb is agent 2.0 for amd64, and no agent for arm64 (or `all`) is given \
         for this cluster's arm64 boards: add one",
    );
    common::error_at(&err, &c, 7, "script.deb: is not a Debian package");
    common::error_at(&err, &c, 7, "gone.deb: No such file");
    common::error_at(
        &err,
        &c,
        7,
        "cut.deb: is not a Debian package (.deb): truncated",
    );
    common::error_at(&err, &c, 8, "\"htop=3.2\" is not a Debian package name");
    assert!(!err.contains("tools.deb"), "{err}");
}

/// `build` says the same before it downloads anything: the base is a URL nobody serves.
#[test]
fn build_refuses_a_wrong_architecture_before_any_download() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    let arm64 = oracle::dpkg_deb_build(d, "agent", "2.0", "arm64", "xz");
    std::fs::copy(&arm64, d.join("agent.deb")).unwrap();
    let c = config(d, "[packages]\ndebs = [\"agent.deb\"]\n");
    // An x86_64 ELF header: the agent check comes first and must pass.
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.extend_from_slice(&[0; 9]);
    elf.extend_from_slice(&2u16.to_le_bytes());
    elf.extend_from_slice(&62u16.to_le_bytes());
    elf.extend_from_slice(&[0; 44]);
    std::fs::write(d.join("agent-x86_64"), elf).unwrap();
    let out_img = d.join("master.img");
    let out = imagegen(&[
        "build",
        "-c",
        &c,
        "--node",
        "master",
        "--base",
        "http://127.0.0.1:9/never-fetched.img.xz",
        "--sha256",
        &"0".repeat(64),
        "--agent",
        d.join("agent-x86_64").to_str().unwrap(),
        "-o",
        out_img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "agent.deb is agent 2.0 for arm64, and no agent for amd64 (or `all`) is given for \
             this cluster's amd64 boards: add one"
        ),
        "{err}"
    );
    assert!(!err.contains("127.0.0.1:9"), "{err}");
    assert!(!out_img.exists());
}

/// A mixed cluster (an amd64 master, an arm64 Pi) with one .deb per architecture of the same
/// package, and zerotier-one likewise: `check` is clean, and each board gets its own (the
/// control data dpkg-deb wrote says which); two zerotier-one for one architecture are refused.
#[test]
fn a_mixed_cluster_gets_each_board_its_own_package() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let d = dir.path();
    for (name, arch) in [
        ("agent", "amd64"),
        ("agent", "arm64"),
        ("zerotier-one", "amd64"),
        ("zerotier-one", "arm64"),
        ("tools", "all"),
    ] {
        let deb = oracle::dpkg_deb_build(d, name, "1.0", arch, "xz");
        std::fs::copy(&deb, d.join(format!("{name}-{arch}.deb"))).unwrap();
    }
    let zt = "[zerotier]\nnetwork_id = \"8056c2e21c000001\"\n\
              package = [\"zerotier-one-amd64.deb\", \"zerotier-one-arm64.deb\"]\n";
    let c = config(
        d,
        &format!(
            "{zt}[packages]\ndebs = [\"agent-arm64.deb\", \"tools-all.deb\", \"agent-amd64.deb\"]\n"
        ),
    );
    let out = imagegen(&["check", "--config", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = imagegen::config::load(Path::new(&c)).unwrap();
    // In config order (zerotier first, then debs), the other architecture's left out.
    for (arch, expect) in [
        (
            imagegen::arch::Arch::X86_64,
            [
                ("zerotier-one-amd64.deb", "amd64"),
                ("tools-all.deb", "all"),
                ("agent-amd64.deb", "amd64"),
            ],
        ),
        (
            imagegen::arch::Arch::Aarch64,
            [
                ("zerotier-one-arm64.deb", "arm64"),
                ("agent-arm64.deb", "arm64"),
                ("tools-all.deb", "all"),
            ],
        ),
    ] {
        let chosen = imagegen::check::packages::for_arch(&cfg.config, |p| d.join(p), arch)
            .unwrap_or_else(|e| panic!("{arch:?}: {e:?}"));
        let got: Vec<(String, String)> = chosen
            .iter()
            .map(|(s, control)| (s.path.display().to_string(), control.architecture.clone()))
            .collect();
        let expect: Vec<(String, String)> = expect
            .iter()
            .map(|(p, a)| (p.to_string(), a.to_string()))
            .collect();
        assert_eq!(got, expect, "{arch:?}");
    }

    let c = config(
        d,
        "[zerotier]\nnetwork_id = \"8056c2e21c000001\"\n\
         package = [\"zerotier-one-arm64.deb\", \"zerotier-one-arm64.deb\", \"zerotier-one-amd64.deb\"]\n",
    );
    let out = imagegen(&["check", "--config", &c]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    common::error_at(&err, &c, 8, "is a second zerotier-one for arm64");
}
