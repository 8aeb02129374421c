//! The real on-board agents, built by `ci/build-agents` as the README's set-up builds them, in
//! a directory beside a copy of this test run's imagegen: `imagegen build` run from there
//! finds them with no --agent, as it does in an operator's `target/release`.
//!
//! Include with `mod agents;` and call [`imagegen_with_agents`].
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The architectures `ci/build-agents` builds.
pub const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

/// `<CARGO_TARGET_TMPDIR>/agents/imagegen`: a copy of this test run's imagegen with
/// `imagegen-firstboot-<arch>` beside it for each of `arches` (x86_64, aarch64; others may be
/// there too), made by `bash ci/build-agents --out DIR ARCH...` (cargo profile `agent`) in
/// this test run's target directory; later calls cost a no-op cargo build, or nothing in the
/// same test binary. Run it with no --agent and it finds them, as the README's set-up leaves
/// them; [`agent`] gives an agent's path.
///
/// `None` when the Rust standard library or linker for one of `arches` is missing and CI is
/// not `true`: a SKIPPED banner is printed and the caller should return. Panics when it is
/// missing under `CI=true`, and when the build fails.
pub fn imagegen_with_agents(arches: &[&str]) -> Option<PathBuf> {
    // Threads of one test binary wait here; other test binaries on the file lock below.
    static READY: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.join("agents");
    let missing: Vec<&str> = arches
        .iter()
        .copied()
        .filter(|a| !ready.contains(*a))
        .collect();
    if missing.is_empty() && ready.contains("imagegen") {
        return Some(dir.join("imagegen"));
    }
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));

    // Two test binaries building at once would double the time on two cores, and each would
    // replace the files the other is about to run.
    let lock_path = tmp.join("agents.lock");
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("{lock_path:?}: {e}"));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {lock_path:?}: {e}"));

    if !missing.is_empty() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/build-agents");
        let target_dir = tmp.parent().expect("CARGO_TARGET_TMPDIR is <target>/tmp");
        let started = std::time::Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg("--out")
            .arg(&dir)
            .args(&missing)
            .env("CARGO_TARGET_DIR", target_dir);
        // `cargo test` gives the test process the variables it gives build scripts
        // (CARGO_MANIFEST_DIR=builder/, CARGO_PKG_*...). Passed on, ring's build script sees
        // its rerun-if-env-changed CARGO_MANIFEST_DIR change between a build from here and
        // one from a shell, and every such switch rebuilt both agents (about 2 minutes here).
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                ]
                .contains(&name.as_ref())
            {
                cmd.env_remove(name.as_ref());
            }
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run bash {script:?}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // 69 (EX_UNAVAILABLE): a toolchain is missing, as opposed to a failed build.
        if out.status.code() == Some(69) {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "the agent toolchain is missing, and CI=true: {stderr}"
            );
            eprintln!(
                "\n{bar}\n!!! SKIPPED: cannot build the agent for {missing:?}:\n!!! {}\
                 \n!!! This test proved NOTHING.\n{bar}\n",
                stderr.trim(),
                bar = "!".repeat(78)
            );
            return None;
        }
        assert!(
            out.status.success(),
            "bash ci/build-agents {missing:?} failed ({}):\n{stderr}",
            out.status
        );
        eprint!("{stderr}");
        eprintln!(
            "agents: {missing:?} ready in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        ready.extend(missing.iter().map(|a| a.to_string()));
    }

    if !ready.contains("imagegen") {
        // A copy, not a symlink: imagegen looks beside its own path with symlinks resolved.
        // Written under a temporary name and renamed, so a test running the old copy is not
        // hit by "text file busy".
        let tmp_copy = dir.join(format!(".imagegen.{}.tmp", std::process::id()));
        fs::copy(env!("CARGO_BIN_EXE_imagegen"), &tmp_copy)
            .unwrap_or_else(|e| panic!("copy imagegen to {tmp_copy:?}: {e}"));
        fs::rename(&tmp_copy, dir.join("imagegen")).expect("rename the imagegen copy");
        ready.insert("imagegen".into());
    }
    Some(dir.join("imagegen"))
}

/// `imagegen-firstboot-<arch>` beside an imagegen from [`imagegen_with_agents`].
pub fn agent(imagegen: &Path, arch: &str) -> PathBuf {
    imagegen.with_file_name(format!("imagegen-firstboot-{arch}"))
}
