//! Helpers shared by the integration tests: vendor-shaped disk images built by the committed
//! scripts in `tests/fixtures/` (see its INDEX.md), and the real tools used as oracles.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod oracle;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use tempfile::TempPath;

/// The imagegen binary run with `args`, at a fixed SOURCE_DATE_EPOCH.
pub fn imagegen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imagegen"))
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1750000000")
        .output()
        .expect("run imagegen")
}

/// Every layout `tests/fixtures/mkimage.sh` knows.
pub const LAYOUTS: &[&str] = &[
    "rpios-bookworm",
    "rpios-trixie",
    "armbian-bpim5",
    "ubuntu-raspi",
    "ubuntu-cloud-amd64",
    "debian-genericcloud",
];

/// `tests/fixtures/` at the workspace root.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A private, writable, sparse copy of the `layout` fixture, deleted when dropped.
///
/// The image is built once per script content (the cache key is a hash of the scripts and
/// configs in `tests/fixtures/`), so editing a script rebuilds it and an unchanged tree costs one
/// `cp --sparse=always`.
pub fn fixture(layout: &str) -> TempPath {
    let cached = cached_fixture(layout);
    let copy = tempfile::Builder::new()
        .prefix(&format!("{layout}-"))
        .suffix(".img")
        .tempfile_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temporary file in CARGO_TARGET_TMPDIR")
        .into_temp_path();
    oracle::run(
        "cp",
        &[
            "--sparse=always",
            cached.to_str().expect("cache path is UTF-8"),
            copy.to_str().expect("temp path is UTF-8"),
        ],
    );
    copy
}

/// The shared, read-only cached image of `layout`. Tests that only read may use it directly;
/// anything that writes must use [`fixture`].
pub fn cached_fixture(layout: &str) -> PathBuf {
    let index = LAYOUTS
        .iter()
        .position(|l| *l == layout)
        .unwrap_or_else(|| panic!("unknown fixture layout {layout:?}; known: {LAYOUTS:?}"));
    // One build per layout per test process; other processes share the file cache.
    static BUILT: [OnceLock<PathBuf>; 6] = [const { OnceLock::new() }; 6];
    const _: () = assert!(LAYOUTS.len() == 6);
    BUILT[index].get_or_init(|| build_cached(layout)).clone()
}

/// Builds `layout` into `<CARGO_TARGET_TMPDIR>/fixtures/<hash>/<layout>.img` unless present.
/// mkimage.sh writes to a temporary name and renames it, and its output is deterministic, so
/// processes racing on the same layout each produce the same file and the last rename wins.
fn build_cached(layout: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    let dir = root.join(scripts_hash());
    let image = dir.join(format!("{layout}.img"));
    if image.exists() {
        return image;
    }
    fs::create_dir_all(&dir).expect("create the fixture cache directory");
    prune_stale(&root, &dir);
    let script = fixtures_dir().join("mkimage.sh");
    let mut command = Command::new(oracle::tool("bash"));
    command.arg(&script).arg(layout).arg(&image);
    if let Some(scratch) = fast_scratch() {
        command.env("FIXTURE_WORKDIR", scratch);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} {layout} failed ({}):\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    image
}

/// /dev/shm when it is a writable tmpfs with room for a few builds at once: e2fsprogs fsyncs
/// its output, which makes building on a slow disk several times slower.
fn fast_scratch() -> Option<&'static str> {
    const SHM: &str = "/dev/shm";
    let out = Command::new("df")
        .args(["--output=avail", "-B1", SHM])
        .output()
        .ok()?;
    let avail: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let writable = tempfile::tempdir_in(SHM).is_ok();
    (out.status.success() && writable && avail >= 1 << 30).then_some(SHM)
}

/// Removes cache directories left by older versions of the scripts.
fn prune_stale(root: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path() != keep {
            // Best effort: a concurrent process may be removing it too.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// sha256 over the relative path and content of every input file under `tests/fixtures/`
/// (documentation excluded, so editing INDEX.md does not rebuild the images).
fn scripts_hash() -> String {
    let base = fixtures_dir();
    let mut files = Vec::new();
    collect_files(&base, &mut files);
    files.sort();
    let mut hasher = Sha256::new();
    for file in files {
        let rel = file
            .strip_prefix(&base)
            .expect("file is below the fixtures dir");
        let content = fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update((content.len() as u64).to_le_bytes());
        hasher.update(&content);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if path.extension().is_none_or(|ext| ext != "md") {
            out.push(path);
        }
    }
}

/// An operator's public key (made with `ssh-keygen -t ed25519`), for configs that must pass
/// `check`'s lock-out rules.
#[allow(dead_code)]
pub const OPERATOR_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKh3zm4jTyWkG2JCU6t4CiTqB2OtWqy8iOiOPc6FnUOu ops@laptop";

/// Puts [`OPERATOR_KEY`] in place of the placeholder key `imagegen init` writes into `config`,
/// which `check` and `build` refuse.
#[allow(dead_code)]
pub fn set_operator_key(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains(imagegen::config::PLACEHOLDER_KEY),
        "{} has no placeholder key",
        config.display()
    );
    let blob = OPERATOR_KEY.split(' ').nth(1).unwrap();
    std::fs::write(
        config,
        text.replace(imagegen::config::PLACEHOLDER_KEY, blob),
    )
    .unwrap();
}

/// `err` without the lines imagegen prints off a terminal when a stage finishes
/// (`fetch x.img 3.0 GiB in 41.2 s`, after 2 s or more): a test that wants "exactly one
/// error line" must not fail because a loaded machine made a stage slow.
#[allow(dead_code)]
pub fn without_stage_lines(err: &str) -> String {
    const STAGES: &[&str] = &["fetch", "unpack", "emit", "flash", "verify"];
    err.lines()
        .filter(|l| {
            let stage = l.split(' ').next().unwrap_or_default();
            !(STAGES.contains(&stage) && l.contains(" in ") && l.ends_with(" s"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `err` has an `error: CONFIG:LINE:` line that mentions `needle`.
pub fn error_at(err: &str, config: &str, line: usize, needle: &str) {
    let want = format!("error: {config}:{line}:");
    assert!(
        err.lines()
            .any(|l| l.starts_with(&want) && l.contains(needle)),
        "{want} ... {needle} in\n{err}"
    );
}
