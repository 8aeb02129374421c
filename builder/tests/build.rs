//! Acceptance tests for `imagegen build` (issue #3), run as users run it: the real binary,
//! vendor-shaped fixture images served over loopback HTTP, and real tools as oracles
//! (`e2fsck -fn`, `fsck.fat -n`, `sha256sum -c`, `bmaptool copy`, `debugfs`, `xz`, `zstd`,
//! `grep`, `cmp`).

mod common;
mod support {
    pub mod http_server;
}

use common::oracle;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::http_server::{Fault, Server};
use tempfile::TempDir;

const TOKEN: &str = "K10aa54f2c0e8d3b7a1f9e6c5d4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3::server:imagegen-test-token-7f3c9a";
const NUT_PASSWORD: &str = "nut-test-password-51d2e8";

/// A scratch directory, on tmpfs when there is room (e2fsprogs and the output writer fsync,
/// which makes builds several times slower on a busy disk).
fn scratch() -> TempDir {
    let shm = Path::new("/dev/shm");
    let roomy = Command::new("df")
        .args(["--output=avail", "-B1", "/dev/shm"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .is_some_and(|avail| avail >= 4 << 30);
    if roomy && let Ok(dir) = tempfile::Builder::new().prefix("buildtest-").tempdir_in(shm) {
        return dir;
    }
    tempfile::Builder::new()
        .prefix("buildtest-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a scratch directory")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A 64-byte ELF header for `machine` (183 aarch64, 62 x86-64): enough for imagegen to tell
/// the agent's architecture.
fn elf_stub(path: &Path, machine: u16) {
    let mut h = b"\x7fELF\x02\x01\x01".to_vec();
    h.extend([0; 9]);
    h.extend(2u16.to_le_bytes());
    h.extend(machine.to_le_bytes());
    h.extend(1u32.to_le_bytes());
    h.extend([0; 40]);
    fs::write(path, h).unwrap();
}

/// A cluster directory made by `imagegen init`, with its secrets and agents, plus the cache,
/// state and output directories each build uses.
struct Cluster {
    dir: TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = scratch();
        let c = Cluster { dir };
        let out = c.imagegen(&["init", s(&c.config())]);
        assert!(out.status.success(), "init: {}", stderr(&out));
        fs::create_dir(c.path("secrets")).unwrap();
        fs::write(c.path("secrets/k3s-token"), format!("{TOKEN}\n")).unwrap();
        fs::write(c.path("secrets/nut-password"), format!("{NUT_PASSWORD}\n")).unwrap();
        fs::create_dir(c.out_dir()).unwrap();
        elf_stub(&c.path("agent-arm64"), 183);
        elf_stub(&c.path("agent-amd64"), 62);
        c
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("cluster.toml")
    }

    fn out_dir(&self) -> PathBuf {
        self.path("out")
    }

    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// Appends nodes to the example config.
    fn add_nodes(&self, toml: &str) {
        let mut text = fs::read_to_string(self.config()).unwrap();
        text.push_str(toml);
        fs::write(self.config(), text).unwrap();
    }

    fn imagegen(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_imagegen"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .expect("run imagegen")
    }

    /// `build` with this cluster's config, cache, state and both agents.
    fn build_args<'a>(&'a self, node: &'a str, base: &'a str, out: &'a str) -> Vec<String> {
        let mut v: Vec<String> = [
            "build",
            "-c",
            s(&self.config()),
            "--node",
            node,
            "--base",
            base,
            "--agent",
            "agent-arm64",
            "--agent",
            "agent-amd64",
            "--cache-dir",
            s(&self.cache()),
            "--state-dir",
            s(&self.path("state")),
            "-o",
        ]
        .map(String::from)
        .to_vec();
        v.push(s(&self.out_dir().join(out)).to_string());
        v
    }

    fn build(&self, node: &str, base: &str, out: &str) -> PathBuf {
        let args = self.build_args(node, base, out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = self.imagegen(&args);
        assert!(
            output.status.success(),
            "imagegen {args:?} failed: {}",
            stderr(&output)
        );
        no_secrets_in(&String::from_utf8_lossy(&output.stdout), "build stdout");
        no_secrets_in(&stderr(&output), "build stderr");
        self.out_dir().join(out)
    }

    /// Runs a build that must fail: one `error:` line, non-zero exit, nothing in the output
    /// directory, nothing unverified in the cache. Returns the error line.
    fn build_fails(&self, node: &str, base: &str, out: &str, needle: &str) -> String {
        let args = self.build_args(node, base, out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(self.imagegen(&args), needle);
        assert_eq!(
            entries(&self.out_dir()),
            BTreeSet::new(),
            "a failed build left files in the output directory ({err})"
        );
        assert_cache_verified(&self.cache());
        err
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exactly one line on stderr, starting with "error:" and mentioning `needle`; exit status 1.
fn fails(out: Output, needle: &str) -> String {
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "expected one error line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    no_secrets_in(&err, "error message");
    err
}

fn no_secrets_in(text: &str, what: &str) {
    assert!(!text.contains(TOKEN), "the k3s token is in the {what}");
    assert!(
        !text.contains(NUT_PASSWORD),
        "the NUT password is in the {what}"
    );
}

fn entries(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn sha256sum(path: &Path) -> String {
    oracle::run("sha256sum", &[s(path)])[..64].to_string()
}

/// Whatever sits in `blobs/` is what its name says (by `sha256sum`), every `raw/` image
/// belongs to such a blob, and no unpacking is left half-done in `tmp/`.
fn assert_cache_verified(cache: &Path) {
    let blobs = entries(&cache.join("blobs/sha256"));
    for b in &blobs {
        assert_eq!(
            &sha256sum(&cache.join("blobs/sha256").join(b)),
            b,
            "cache blob {b} is not what its name says"
        );
    }
    for r in entries(&cache.join("raw/sha256")) {
        let blob = r.strip_suffix(".img").expect("raw images are <sha256>.img");
        assert!(blobs.contains(blob), "raw image {r} has no verified blob");
    }
    assert_eq!(entries(&cache.join("tmp")), BTreeSet::new(), "cache tmp/");
}

/// Fixture images compressed by the real tools, and the sha256 of each file as served.
struct Served {
    server: Server,
}

impl Served {
    fn new() -> Served {
        Served {
            server: Server::start(),
        }
    }

    /// Serves `layout` compressed by `xz` or `zstd` at `/<layout>.img.<ext>`; returns its
    /// bytes.
    fn compressed(&self, dir: &Path, layout: &str, ext: &str) -> Vec<u8> {
        let img = common::fixture(layout);
        let out = dir.join(format!("{layout}.img.{ext}"));
        match ext {
            "xz" => sh(&format!(
                "xz -T2 --block-size=8MiB -3 -c {} > {}",
                s(&img),
                s(&out)
            )),
            "zst" => oracle::run("zstd", &["-q", "-T2", "-3", s(&img), "-o", s(&out)]).len(),
            _ => unreachable!("xz or zst"),
        };
        let bytes = fs::read(&out).unwrap();
        self.server
            .put(&format!("/{layout}.img.{ext}"), &bytes, Some("\"v1\""));
        bytes
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }
}

fn sh(script: &str) -> usize {
    let out = Command::new(oracle::tool("bash"))
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    out.stdout.len()
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The raw image inside `out` (decompressed by the real tool when compressed).
fn raw_of(out: &Path, scratch: &Path) -> PathBuf {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let raw = scratch.join(format!("{name}.raw"));
    if name.ends_with(".img.xz") {
        sh(&format!("xz -dc {} > {}", s(out), s(&raw)));
    } else if name.ends_with(".img.zst") {
        oracle::run("zstd", &["-q", "-d", s(out), "-o", s(&raw)]);
    } else {
        return out.to_path_buf();
    }
    raw
}

/// Every check a flashable output must pass: filesystems clean by e2fsck and fsck.fat,
/// `sha256sum -c OUT.sha256` in OUT's directory, and `bmaptool copy` giving back the raw image.
fn assert_flashable(out: &Path, scratch: &Path) {
    let dir = out.parent().unwrap();
    let name = out.file_name().unwrap().to_str().unwrap();
    let check = Command::new("sha256sum")
        .args(["-c", &format!("{name}.sha256")])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(check.status.success(), "sha256sum -c: {}", stderr(&check));

    let raw = raw_of(out, scratch);
    let mut filesystems = 0;
    for p in oracle::partitions(&raw) {
        match oracle::blkid(&raw, p.start).get("TYPE").map(String::as_str) {
            Some("ext4") => oracle::assert_e2fsck_clean(&raw, p.start),
            Some("vfat") => oracle::assert_fsck_fat_clean(&raw, p.start, p.size),
            _ => continue,
        }
        filesystems += 1;
    }
    assert!(filesystems > 0, "{name}: no filesystem found to check");

    let copy = scratch.join(format!("{name}.bmapcopy"));
    oracle::run(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            &format!("{}.bmap", s(out)),
            s(out),
            s(&copy),
        ],
    );
    oracle::run("cmp", &[s(&copy), s(&raw)]);
    fs::remove_file(copy).unwrap();
    if raw != out {
        fs::remove_file(raw).unwrap();
    }
}

fn manifest(out: &Path) -> serde_json::Value {
    let mut path = out.as_os_str().to_owned();
    path.push(".manifest.json");
    serde_json::from_slice(&fs::read(PathBuf::from(path)).unwrap()).unwrap()
}

#[test]
fn builds_from_http_are_flashable_and_reproducible() {
    let c = Cluster::new();
    let web = Served::new();
    let xz = web.compressed(c.dir.path(), "rpios-trixie", "xz");
    let zst = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    // The vendors' two checksum file shapes: one beside the file, one SHA256SUMS list.
    web.server.put(
        "/rpios-trixie.img.xz.sha256",
        format!("{}  rpios-trixie.img.xz\n", hex_sha256(&xz)).as_bytes(),
        None,
    );
    web.server.put(
        "/SHA256SUMS",
        format!(
            "{} *other.img\n{} *rpios-trixie.img.zst\n",
            "0".repeat(64),
            hex_sha256(&zst)
        )
        .as_bytes(),
        None,
    );

    // Two builds of each kind from different downloads of the same image: same bytes.
    let a = c.build("pi4-a", &web.url("/rpios-trixie.img.xz"), "a.img");
    let b = c.build("pi4-a", &web.url("/rpios-trixie.img.zst"), "b.img");
    oracle::run("cmp", &[s(&a), s(&b)]);
    let za = c.build("pi4-a", &web.url("/rpios-trixie.img.zst"), "a.img.zst");
    let zb = c.build("pi4-a", &web.url("/rpios-trixie.img.xz"), "b.img.zst");
    oracle::run("cmp", &[s(&za), s(&zb)]);
    for out in [&a, &za] {
        assert_flashable(out, c.dir.path());
    }
    assert_eq!(manifest(&za)["output"]["raw_sha256"], manifest(&a)["output"]["sha256"]);
    assert_cache_verified(&c.cache());
    // Each download was verified and kept once; nothing is left half-downloaded.
    let mut blobs = entries(&c.cache().join("blobs/sha256"));
    assert_eq!(
        blobs,
        BTreeSet::from([hex_sha256(&xz), hex_sha256(&zst)]),
        "cache blobs"
    );
    blobs.clear();
    assert_eq!(entries(&c.cache().join("partial")), blobs, "cache partial/");
}

#[test]
fn xz_output_is_flashable_and_reproducible() {
    // The smallest fixture: xz at preset 6 costs seconds per 100 MiB.
    let c = Cluster::new();
    let web = Served::new();
    let xz = web.compressed(c.dir.path(), "armbian-bpim5", "xz");
    // Armbian's checksum file shape: `URL.sha`, binary-mode line.
    web.server.put(
        "/armbian-bpim5.img.xz.sha",
        format!("{} *armbian-bpim5.img.xz\n", hex_sha256(&xz)).as_bytes(),
        None,
    );
    let url = web.url("/armbian-bpim5.img.xz");
    let first = c.build("bpi-a", &url, "a.img.xz");
    let args = c.build_args("bpi-a", &url, "b.img.xz");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Pinned instead of a checksum file this time.
    let pin = hex_sha256(&xz);
    args.extend(["--sha256", &pin]);
    let out = c.imagegen(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = c.out_dir().join("b.img.xz");
    oracle::run("cmp", &[s(&first), s(&second)]);
    assert_flashable(&first, c.dir.path());
}

#[test]
fn cut_transfer_resumes() {
    let c = Cluster::new();
    let web = Served::new();
    let zst = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let path = "/rpios-trixie.img.zst";
    let half = zst.len() / 2;
    web.server.fault(path, Fault::CutAfter(half));
    let url = web.url(path);
    let out = {
        let args = c.build_args("pi4-a", &url, "pi4-a.img");
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pin = hex_sha256(&zst);
        args.extend(["--sha256", &pin]);
        let out = c.imagegen(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        c.out_dir().join("pi4-a.img")
    };
    let requests = web.server.requests_for(path);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[1].headers.get("range").map(String::as_str),
        Some(format!("bytes={half}-").as_str()),
        "the second request resumes where the cut left off"
    );
    assert_eq!(manifest(&out)["inputs"][0]["sha256"], hex_sha256(&zst));
    assert_flashable(&out, c.dir.path());
    assert_cache_verified(&c.cache());
}
