//! Acceptance tests for `imagegen build` (issue #3), run as users run it: the real binary,
//! vendor-shaped fixture images served over loopback HTTP, and real tools as oracles
//! (`e2fsck -fn`, `fsck.fat -n`, `sha256sum -c`, `bmaptool copy`, `debugfs`, `xz`, `zstd`,
//! `grep`, `cmp`).

mod common;
mod support {
    pub mod central;
    pub mod http_server;
}

use common::oracle;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::central::Central;
use support::http_server::{Fault, Server};
use tempfile::TempDir;

const TOKEN: &str = "K10aa54f2c0e8d3b7a1f9e6c5d4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a3c2d1::server:imagegen-test-token-7f3c9a";
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
    if roomy
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("buildtest-")
            .tempdir_in(shm)
    {
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
        // The operator's key in place of init's placeholder, and the existing cluster these
        // tests join (their token is pinned in the image checks).
        common::set_operator_key(&c.config());
        let text = fs::read_to_string(c.config())
            .unwrap()
            .replace("# token_file = ", "token_file = ");
        fs::write(c.config(), text).unwrap();
        fs::create_dir(c.path("secrets")).unwrap();
        fs::write(c.path("secrets/k3s-token"), format!("{TOKEN}\n")).unwrap();
        fs::write(c.path("secrets/nut-password"), format!("{NUT_PASSWORD}\n")).unwrap();
        for f in ["secrets/k3s-token", "secrets/nut-password"] {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(c.path(f), fs::Permissions::from_mode(0o600)).unwrap();
        }
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
    fn build_args(&self, node: &str, base: &str, out: &str) -> Vec<String> {
        self.build_args_with(node, base, out, &["agent-arm64", "agent-amd64"])
    }

    fn build_args_with(&self, node: &str, base: &str, out: &str, agents: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "build",
            "-c",
            s(&self.config()),
            "--node",
            node,
            "--base",
            base,
            "--cache-dir",
            s(&self.cache()),
            "--state-dir",
            s(&self.path("state")),
            "-o",
            s(&self.out_dir().join(out)),
        ]
        .map(String::from)
        .to_vec();
        for a in agents {
            v.extend(["--agent".to_string(), a.to_string()]);
        }
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
        self.build_fails_with(&self.build_args(node, base, out), needle)
    }

    fn build_fails_with(&self, args: &[String], needle: &str) -> String {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails(self.imagegen(&args), needle);
        // Advice must name options that exist.
        let help = self.imagegen(&["build", "--help"]);
        let help = String::from_utf8_lossy(&help.stdout);
        for option in err.split_whitespace().filter(|w| w.starts_with("--")) {
            let option = option.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
            assert!(
                help.contains(&format!("{option} ")) || help.contains(&format!("{option}\n")),
                "the error advises {option}, which `imagegen build` does not have: {err}"
            );
        }
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
    let err = common::without_stage_lines(&stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "expected one error line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    let parts: Vec<&str> = err.trim_end().split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} is said twice in: {err}"
        );
    }
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
/// `sha256sum -c OUT.sha256` in OUT's directory, `bmaptool copy` giving back the raw image on
/// a new (zeroed) card, and clean filesystems and the same partition table on a reused card
/// (old bytes where the bmap writes nothing), with the free space left out of the bmap.
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
    // The fixtures are mostly free space (INDEX.md: a few MiB of data in 260-1300 MiB).
    let mapped = oracle::assert_reused_card(out, &raw, scratch);
    assert!(mapped < 60, "{name}: the bmap maps {mapped}% of the image");
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
    assert_eq!(
        manifest(&za)["output"]["raw_sha256"],
        manifest(&a)["output"]["sha256"]
    );
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
fn gpt_cloud_build_is_flashable_onto_a_reused_card() {
    // GPT with a BIOS boot partition (no filesystem: used in full), an ESP and two ext4.
    let c = Cluster::new();
    let base = common::fixture("ubuntu-cloud-amd64");
    let out = c.build("master", s(&base), "master.img.zst");
    assert_flashable(&out, c.dir.path());
}

#[test]
fn vm_disk_is_a_grown_qcow2_that_holds_the_raw_build() {
    let c = Cluster::new();
    let base = common::fixture("ubuntu-cloud-amd64");
    let base_len = fs::metadata(&base).unwrap().len();
    let disk = base_len + (300 << 20);
    let size = disk.to_string();
    let with_size = |out: &str| {
        let mut args = c.build_args("master", s(&base), out);
        args.extend(["--disk-size".to_string(), size.clone()]);
        args
    };
    let run_ok = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = c.imagegen(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    };
    run_ok(with_size("master.qcow2"));
    run_ok(with_size("master.img"));
    let qcow = c.out_dir().join("master.qcow2");
    let raw = c.out_dir().join("master.img");

    // qemu-img: a consistent qcow2 (no errors, no leaks) of the disk size, holding exactly the
    // raw build's bytes.
    let check = oracle::output("qemu-img", &["check", "--output=json", s(&qcow)]);
    assert!(check.status.success(), "{}", stderr(&check));
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(check["check-errors"], 0, "{check}");
    assert!(check.get("leaks").is_none(), "{check}");
    let info: serde_json::Value = serde_json::from_str(&oracle::run(
        "qemu-img",
        &["info", "--output=json", s(&qcow)],
    ))
    .unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
    assert_eq!(info["virtual-size"], disk, "{info}");
    oracle::run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", s(&raw), s(&qcow)],
    );
    let sums = Command::new("sha256sum")
        .args(["-c", "master.qcow2.sha256"])
        .current_dir(c.out_dir())
        .output()
        .unwrap();
    assert!(sums.status.success(), "{}", stderr(&sums));
    assert_eq!(manifest(&qcow)["output"]["format"], "qcow2");
    assert_eq!(
        manifest(&qcow)["output"]["raw_sha256"],
        manifest(&raw)["output"]["sha256"]
    );
    // Sparse: the fixture holds a few MiB of data in 1.5 GiB.
    let qcow_len = fs::metadata(&qcow).unwrap().len();
    assert!(qcow_len < 64 << 20, "{qcow_len}");

    // The same build again: the same bytes.
    run_ok(with_size("again.qcow2"));
    oracle::run("cmp", &[s(&qcow), s(&c.out_dir().join("again.qcow2"))]);

    // The grown disk: a valid GPT whose backup is at the new end, the root partition (last
    // on disk) running to it, and its ext4 filling it and clean.
    assert_eq!(fs::metadata(&raw).unwrap().len(), disk);
    let verify = oracle::run("sgdisk", &["-v", s(&raw)]);
    assert!(verify.contains("No problems found"), "{verify}");
    let root = oracle::partitions(&raw)
        .into_iter()
        .max_by_key(|p| p.start)
        .unwrap();
    // The GPT backup takes the last 33 sectors.
    assert!(
        (root.start + root.size) * 512 > disk - (1 << 20),
        "{root:?} on a {disk} byte disk"
    );
    assert!(root.size * 512 > 300 << 20, "{root:?}");
    oracle::assert_e2fsck_clean(&raw, root.start);
    let fs = oracle::dumpe2fs(&raw, root.start);
    let blocks: u64 = fs["Block count"].parse().unwrap();
    let block_size: u64 = fs["Block size"].parse().unwrap();
    assert!(
        blocks * block_size <= root.size * 512 && blocks * block_size > root.size * 512 - (4 << 20),
        "{blocks} blocks of {block_size} in {root:?}"
    );

    // The kvm board writes a qcow2 when -o names no file.
    fs::create_dir_all(c.path("home/.ssh")).unwrap();
    oracle::ssh_keygen(&c.path("home/.ssh/id_ed25519"), "tester@laptop");
    let vm = Command::new(env!("CARGO_BIN_EXE_imagegen"))
        .args(["build", "--board", "kvm", "--base", s(&base)])
        .args(["--agent", s(&c.path("agent-amd64"))])
        .args(["--cache-dir", s(&c.cache())])
        .args(["--state-dir", s(&c.path("state"))])
        .current_dir(c.out_dir())
        .env("HOME", c.path("home"))
        .env("USER", "tester")
        .output()
        .unwrap();
    assert!(vm.status.success(), "{}", stderr(&vm));
    let vm = c.out_dir().join("kvm.qcow2");
    oracle::run("qemu-img", &["check", s(&vm)]);
    assert_eq!(manifest(&vm)["board"], "kvm");

    // Smaller than the base: refused, nothing written.
    for f in entries(&c.out_dir()) {
        fs::remove_file(c.out_dir().join(f)).unwrap();
    }
    let mut args = c.build_args("master", s(&base), "small.qcow2");
    args.extend(["--disk-size".to_string(), "1G".to_string()]);
    let err = c.build_fails_with(&args, "smaller than the base image");
    assert!(err.contains("--disk-size"), "{err}");
}

#[test]
fn server_error_is_retried_and_cut_transfer_resumes() {
    let c = Cluster::new();
    let web = Served::new();
    let zst = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let path = "/rpios-trixie.img.zst";
    let half = zst.len() / 2;
    // A transient server error first (retried), then a transfer cut in the middle.
    web.server.fault(path, Fault::Status(503));
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
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(
        requests[2].headers.get("range").map(String::as_str),
        Some(format!("bytes={half}-").as_str()),
        "the second request resumes where the cut left off"
    );
    assert_eq!(manifest(&out)["inputs"][0]["sha256"], hex_sha256(&zst));
    assert_flashable(&out, c.dir.path());
    assert_cache_verified(&c.cache());
}

/// Only what the cache layout allows after a failed download: no blob, no raw image, and no
/// partial download of a file that failed verification.
fn assert_cache_empty(c: &Cluster) {
    assert_cache_verified(&c.cache());
    for sub in ["blobs/sha256", "raw/sha256", "partial"] {
        assert_eq!(
            entries(&c.cache().join(sub)),
            BTreeSet::new(),
            "cache {sub}"
        );
    }
}

#[test]
fn download_failures_are_one_clear_line_and_leave_nothing() {
    let c = Cluster::new();
    let web = Served::new();
    let zst = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let url = web.url("/rpios-trixie.img.zst");

    // The vendor's checksum file says something else.
    web.server.put(
        "/rpios-trixie.img.zst.sha256",
        format!("{}  rpios-trixie.img.zst\n", "ab".repeat(32)).as_bytes(),
        None,
    );
    let err = c.build_fails("pi4-a", &url, "pi4-a.img", "sha256 mismatch");
    assert!(err.contains(&hex_sha256(&zst)), "{err}");
    assert!(
        err.contains(&format!("{url}.sha256")),
        "names the checksum file: {err}"
    );
    assert!(!err.contains("pinned"), "nothing was pinned: {err}");
    assert_cache_empty(&c);

    // A pinned hash that does not match.
    let mut args = c.build_args("pi4-a", &url, "pi4-a.img.zst");
    args.extend(["--sha256".to_string(), "cd".repeat(32)]);
    c.build_fails_with(&args, "pinned sha256");
    assert_cache_empty(&c);

    // No such file: with a checksum that vouches for it, and pinned.
    web.server.put(
        "/SHA256SUMS",
        format!("{}  gone.img.zst\n", hex_sha256(&zst)).as_bytes(),
        None,
    );
    let gone = web.url("/gone.img.zst");
    c.build_fails("pi4-a", &gone, "pi4-a.img", "404");
    let mut args = c.build_args("pi4-a", &gone, "pi4-a.img");
    args.extend(["--sha256".to_string(), hex_sha256(&zst)]);
    c.build_fails_with(&args, "404");
    assert_cache_empty(&c);

    // No checksum anywhere.
    web.server.remove("/SHA256SUMS");
    web.server.remove("/rpios-trixie.img.zst.sha256");
    c.build_fails("pi4-a", &url, "pi4-a.img", "cannot verify");
    assert_cache_empty(&c);
}

/// Debian publishes SHA512SUMS only (the `x86-64` board's base): the build verifies against
/// it, and the manifest still records the base by sha256.
#[test]
fn base_verified_by_sha512sums_builds_and_records_its_sha256() {
    let c = Cluster::new();
    let web = Served::new();
    let zst = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let url = web.url("/rpios-trixie.img.zst");
    // Made as Debian makes it: sha512sum's own output, beside the image.
    sh(&format!(
        "cd {} && sha512sum rpios-trixie.img.zst > SHA512SUMS",
        s(c.dir.path())
    ));
    let sums = fs::read_to_string(c.path("SHA512SUMS")).unwrap();
    let sha512 = sums[..128].to_string();
    let flipped = format!(
        "{}{}",
        if sha512.starts_with('f') { 'e' } else { 'f' },
        &sha512[1..]
    );

    // A corrupted entry: refused, naming the file, what was expected and what came.
    web.server.put(
        "/SHA512SUMS",
        sums.replace(&sha512, &flipped).as_bytes(),
        None,
    );
    let err = c.build_fails("pi4-a", &url, "pi4-a.img", "sha512 mismatch");
    for part in [&url, &web.url("/SHA512SUMS"), &flipped, &sha512] {
        assert!(err.contains(part.as_str()), "{part} not in: {err}");
    }
    assert_cache_empty(&c);

    web.server.put("/SHA512SUMS", sums.as_bytes(), None);
    let out = c.build("pi4-a", &url, "pi4-a.img");
    let served = c.path("rpios-trixie.img.zst");
    assert_eq!(fs::read(&served).unwrap(), zst);
    let base = &manifest(&out)["inputs"][0];
    assert_eq!(base["name"], "base");
    assert_eq!(base["sha256"], sha256sum(&served));
    assert_cache_verified(&c.cache());
    assert_eq!(entries(&c.cache().join("partial")), BTreeSet::new());
}

/// The CLI waits 60 s for a silent server and retries five times, so this one goes through the
/// library with short time-outs; the error is what the CLI would print after `error: `.
#[test]
fn server_that_stops_answering_fails_and_the_download_resumes_later() {
    use imagegen::build::{Config, Nodes, Request, run};
    use imagegen::fetch::{FetchOptions, Source};

    let c = Cluster::new();
    let web = Served::new();
    let zst = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let path = "/rpios-trixie.img.zst";
    let half = zst.len() / 2;
    // Every attempt stalls: the first after half the file, the retry at once.
    web.server
        .fault(path, Fault::StallAfter(half, Duration::from_secs(6)));
    web.server
        .fault(path, Fault::StallAfter(0, Duration::from_secs(6)));
    let fetch = FetchOptions {
        cache_dir: c.cache(),
        retries: 1,
        backoff: Duration::from_millis(10),
        backoff_max: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        insecure: false,
        offline: false,
    };
    let out = c.out_dir().join("pi4-a.img");
    let state = c.path("state");
    let request = Request {
        config: Config::File {
            path: c.config(),
            nodes: Nodes::One("pi4-a".into()),
        },
        output: Some(out.clone()),
        disk_size: None,
        base: Some(Source::Url(web.url(path))),
        sha256: Some(hex_sha256(&zst)),
        vendor: None,
        agents: vec![c.path("agent-arm64").display().to_string()],
        generic: false,
        state_dir: Some(state),
        fetch,
    };
    let started = Instant::now();
    let err = format!("{:#}", run(&request).unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("did not answer"), "{err}");
    assert_eq!(entries(&c.out_dir()), BTreeSet::new());
    // The half that arrived waits in partial/ to be resumed; nothing unverified elsewhere.
    assert_cache_verified(&c.cache());
    assert_eq!(entries(&c.cache().join("blobs/sha256")), BTreeSet::new());
    assert!(!entries(&c.cache().join("partial")).is_empty());

    // The server is back: the next build resumes from the partial download.
    web.server.clear_log();
    run(&request).unwrap();
    let requests = web.server.requests_for(path);
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].headers.get("range").map(String::as_str),
        Some(format!("bytes={half}-").as_str())
    );
    assert_flashable(&out, c.dir.path());
}

#[test]
fn timeout_and_retries_flags_bound_a_silent_server() {
    let c = Cluster::new();
    let web = Served::new();
    let zst = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let path = "/rpios-trixie.img.zst";
    web.server
        .fault(path, Fault::StallAfter(0, Duration::from_secs(30)));
    let mut args = c.build_args("pi4-a", &web.url(path), "pi4-a.img");
    args.extend(
        [
            "--sha256",
            &hex_sha256(&zst),
            "--timeout",
            "1",
            "--retries",
            "0",
        ]
        .map(String::from),
    );
    let started = Instant::now();
    c.build_fails_with(&args, "did not answer");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a 1 s time-out with no retries took {:?}",
        started.elapsed()
    );
    assert_eq!(web.server.requests_for(path).len(), 1);
}

#[test]
fn bad_configs_and_inputs_are_one_clear_line_and_leave_nothing() {
    let c = Cluster::new();
    c.add_nodes("\n[[nodes]]\nname = \"gen-a\"\nboard = \"arm64-generic\"\nrole = \"agent\"\n");
    let rpios = common::fixture("rpios-trixie");
    let amd64 = common::fixture("ubuntu-cloud-amd64");
    let (rpios, amd64) = (s(&rpios), s(&amd64));

    c.build_fails("nope", rpios, "nope.img", "nope");
    // Wrong architecture: the board boots cloud images, but this one is x86-64.
    let err = c.build_fails("gen-a", amd64, "gen-a.img", "x86_64");
    assert!(err.contains("aarch64"), "{err}");
    // And the other way round: a cloud image whose userland is aarch64, for an x86-64 board.
    let arm_cloud = common::fixture("debian-genericcloud");
    let env = format!("{}:/usr/bin/env", s(&arm_cloud));
    let cp = c.imagegen(&["cp", "--mode", "0755", "agent-arm64", &env]);
    assert!(cp.status.success(), "{}", stderr(&cp));
    let err = c.build_fails("master", s(&arm_cloud), "master.img", "aarch64");
    assert!(err.contains("x86_64"), "{err}");
    // A base the board does not boot at all.
    let err = c.build_fails("master", rpios, "master.img", "does not boot");
    assert!(err.contains("ubuntu-cloud"), "{err}");
    c.build_fails("pi4-a", rpios, "pi4-a.iso", ".img.xz");
    c.build_fails("pi4-a", rpios, "pi4-a", ".img.zst");
    c.build_fails("pi4-a", rpios, "missing/pi4-a.img", "does not exist");
    // Not a disk image at all: the error names the input, not an internal file.
    let err = c.build_fails(
        "pi4-a",
        "agent-arm64",
        "pi4-a.img",
        "base image agent-arm64",
    );
    assert!(err.contains("partition table"), "{err}");
    // No agent for the board's architecture, only one given for another. Agents found beside
    // the imagegen binary count too, and target/debug may hold an x86_64 imagegen-firstboot
    // (cargo builds it for the agent's own tests), so the board here is an aarch64 one.
    let args = c.build_args_with("pi4-a", rpios, "pi4-a.img", &["agent-amd64"]);
    let err = c.build_fails_with(&args, "is for x86_64 but board rpi4 is aarch64");
    assert!(err.contains("agent-amd64"), "{err}");
    // A missing secret is named.
    fs::remove_file(c.path("secrets/nut-password")).unwrap();
    c.build_fails("pi4-a", rpios, "pi4-a.img", "secrets/nut-password");
    fails(
        c.imagegen(&["check", "--config", s(&c.config())]),
        "secrets/nut-password",
    );
    assert_cache_empty(&c);

    // A syntax error and an unknown board, each with its line.
    let text = fs::read_to_string(c.config()).unwrap();
    let lines = text.lines().count();
    fs::write(
        c.config(),
        format!("{text}\n[[nodes]]\nname = \"x\nboard = \"rpi4\"\n"),
    )
    .unwrap();
    c.build_fails(
        "pi4-a",
        rpios,
        "pi4-a.img",
        &format!("cluster.toml:{}:", lines + 3),
    );
    fs::write(
        c.config(),
        format!("{text}\n[[nodes]]\nname = \"x\"\nboard = \"rpi9\"\nrole = \"agent\"\n"),
    )
    .unwrap();
    let err = c.build_fails("x", rpios, "x.img", &format!("cluster.toml:{}:", lines + 4));
    assert!(err.contains("rpi9") && err.contains("rpi4"), "{err}");
}

#[test]
fn boards_lists_every_board_with_arch_and_default_base() {
    let c = Cluster::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
    let files: BTreeSet<String> = entries(&dir)
        .into_iter()
        .filter_map(|f| f.strip_suffix(".toml").map(str::to_owned))
        .collect();
    for id in [
        "rpi3",
        "rpi4",
        "bpi-m5",
        "x86-64",
        "kvm",
        "rpi5",
        "arm64-generic",
    ] {
        assert!(files.contains(id), "boards/{id}.toml");
    }
    let out = c.imagegen(&["boards", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let boards: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let boards = boards.as_array().expect("a JSON array");
    let ids: BTreeSet<String> = boards
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, files);
    let text = c.imagegen(&["boards"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    for b in boards {
        let id = b["id"].as_str().unwrap();
        let toml = fs::read_to_string(dir.join(format!("{id}.toml"))).unwrap();
        let arch = b["arch"].as_str().unwrap();
        let url = b["base"]["url"].as_str().unwrap();
        let vendor = b["base"]["vendor"].as_str().unwrap();
        assert!(toml.contains(&format!("arch = \"{arch}\"")), "{id}: {arch}");
        assert!(toml.contains(&format!("url = \"{url}\"")), "{id}: {url}");
        assert!(toml.contains(&format!("vendor = \"{vendor}\"")), "{id}");
        assert!(
            text.lines().any(|l| l.starts_with(id) && l.contains(arch)),
            "{id} {arch} in:\n{text}"
        );
        assert!(text.contains(url), "{url} in:\n{text}");
    }
}

/// The `warning:` lines of `out`'s stderr.
fn warnings(out: &Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn init_writes_a_config_that_check_accepts() {
    let c = Cluster::new();
    let out = c.imagegen(&["check", "--config", s(&c.config())]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The example pins no NAS host key: nodes would trust the first one they see. Say so.
    let w = warnings(&out);
    assert_eq!(w.len(), 1, "{}", stderr(&out));
    assert!(
        w[0].contains("[backup]") && w[0].contains("first use") && w[0].contains("host_keys"),
        "{w:?}"
    );
    // init never overwrites a config by accident.
    fails(c.imagegen(&["init", s(&c.config())]), "--force");
    fs::remove_file(c.path("secrets/k3s-token")).unwrap();
    fails(
        c.imagegen(&["check", "--config", s(&c.config())]),
        "secrets/k3s-token",
    );
}

/// A real ed25519 public key, as the NAS's /etc/ssh/ssh_host_ed25519_key.pub holds it.
const NAS_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf nas";

/// Issue 11 item 2: `[backup] host_keys` and `known_hosts_file` pin the NAS key; `check` says
/// when neither is given, and refuses what would leave every node unable to reach the NAS.
#[test]
fn check_wants_the_nas_host_key_pinned() {
    let c = Cluster::new();
    let text = fs::read_to_string(c.config()).unwrap();
    let target = "target = \"ssh://backup@nas.lan/volume1/backups\"\n";
    assert!(text.contains(target), "the example's backup target changed");
    let with = |extra: &str| {
        fs::write(
            c.config(),
            text.replace(target, &format!("{target}{extra}\n")),
        )
        .unwrap();
        c.imagegen(&["check", "--config", s(&c.config())])
    };
    let line = text[..text.find(target).unwrap()].lines().count() + 2;

    let out = with(&format!("host_keys = [\"{NAS_KEY}\"]"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(warnings(&out).is_empty(), "{}", stderr(&out));

    // A key cut short, the private key, or a line with a host name in front: refused, with
    // the line of the config.
    let short = &NAS_KEY[..60];
    for bad in [
        short.to_owned(),
        "-----BEGIN OPENSSH PRIVATE KEY-----".to_owned(),
        format!("nas.lan {NAS_KEY}"),
    ] {
        let err = fails(
            with(&format!("host_keys = [\"{bad}\"]")),
            &format!("cluster.toml:{line}:"),
        );
        assert!(err.contains("host_keys"), "{err}");
    }

    // A known_hosts file (paths are relative to the config): it must list the NAS as the
    // nodes reach it.
    fs::write(c.path("nas_known_hosts"), format!("nas.lan {NAS_KEY}\n")).unwrap();
    let out = with("known_hosts_file = \"nas_known_hosts\"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(warnings(&out).is_empty(), "{}", stderr(&out));
    fs::write(c.path("nas_known_hosts"), format!("other.lan {NAS_KEY}\n")).unwrap();
    let err = fails(
        with("known_hosts_file = \"nas_known_hosts\""),
        "nas_known_hosts",
    );
    assert!(err.contains("nas.lan"), "{err}");
    fs::write(c.path("nas_known_hosts"), format!("nas.lan {short}\n")).unwrap();
    fails(
        with("known_hosts_file = \"nas_known_hosts\""),
        "nas_known_hosts:1",
    );
    fs::remove_file(c.path("nas_known_hosts")).unwrap();
    fails(
        with("known_hosts_file = \"nas_known_hosts\""),
        "nas_known_hosts",
    );
}

#[test]
fn build_all_builds_every_node() {
    let c = Cluster::new();
    let text = fs::read_to_string(c.config()).unwrap();
    let head = &text[..text.find("[[nodes]]").unwrap()];
    // The UPS server must be a node; point at one outside this two-node cluster.
    let head = head.replace("server = \"master\"", "host = \"10.0.0.5\"");
    fs::write(
        c.config(),
        format!(
            "{head}[[nodes]]\nname = \"pi-1\"\nboard = \"rpi4\"\nrole = \"agent\"\n\n\
             [[nodes]]\nname = \"pi-2\"\nboard = \"rpi3\"\nrole = \"agent\"\n"
        ),
    )
    .unwrap();
    let img = common::fixture("rpios-trixie");
    let dir = c.path("all");
    let out = c.imagegen(&[
        "build",
        "-c",
        s(&c.config()),
        "--all",
        "--base",
        s(&img),
        "--agent",
        "agent-arm64",
        "--cache-dir",
        s(&c.cache()),
        "--state-dir",
        s(&c.path("state")),
        "-o",
        s(&dir),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The example pins no NAS host key: one warning for the whole run, not one per node.
    let w = warnings(&out);
    assert!(
        w.len() == 1 && w[0].contains("[backup]"),
        "{}",
        stderr(&out)
    );
    let mut want = BTreeSet::new();
    for node in ["pi-1", "pi-2"] {
        for suffix in ["", ".sha256", ".bmap", ".manifest.json", ".known_hosts"] {
            want.insert(format!("{node}.img.zst{suffix}"));
        }
    }
    assert_eq!(entries(&dir), want);
    let build_err = stderr(&out);
    for node in ["pi-1", "pi-2"] {
        let out = dir.join(format!("{node}.img.zst"));
        assert_eq!(manifest(&out)["node"], node);
        let raw = raw_of(&out, c.dir.path());
        let root = oracle::partition(&raw, 2).start;
        assert_eq!(
            oracle::ext4_cat(&raw, root, "/etc/hostname"),
            format!("{node}\n")
        );
        // The known_hosts beside the image holds the node's ed25519 host key under its name,
        // as ssh-keygen finds it, and that is the key in the image.
        let found = Command::new("ssh-keygen")
            .args(["-F", node, "-f", &format!("{node}.img.zst.known_hosts")])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(found.status.success(), "{}", stderr(&found));
        let host_pub = oracle::ext4_cat(&raw, root, "/etc/ssh/ssh_host_ed25519_key.pub");
        let blob = host_pub.split_whitespace().nth(1).unwrap();
        assert!(String::from_utf8_lossy(&found.stdout).contains(blob));
        assert!(
            build_err.contains(&format!("log in: ssh ops@{node}")),
            "{build_err}"
        );
        oracle::assert_e2fsck_clean(&raw, root);
        fs::remove_file(raw).unwrap();
        let check = Command::new("sha256sum")
            .args(["-c", &format!("{node}.img.zst.sha256")])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", stderr(&check));
    }
}

/// The bytes of `path` in the ext4 filesystem at `start`, by `debugfs -R cat` (binary-safe,
/// unlike the text helper).
fn ext4_bytes(img: &Path, start: u64, path: &str) -> Vec<u8> {
    let out = oracle::output(
        "debugfs",
        &[
            "-R",
            &format!("cat \"{path}\""),
            &oracle::ext4_at(img, start),
        ],
    );
    let err = stderr(&out);
    assert!(
        out.status.success() && err.lines().all(|l| l.starts_with("debugfs ")),
        "debugfs cat {path}: {err}"
    );
    out.stdout
}

/// Byte offsets where `needle` occurs in `file`, by `grep -obaF`.
fn grep_offsets(file: &Path, needle: &str) -> Vec<u64> {
    let out = oracle::output("grep", &["-obaF", needle, s(file)]);
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "{}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_once(':').unwrap().0.parse().unwrap())
        .collect()
}

/// Asserts that `secret` occurs once in the image, inside the root-owned 0600 file `path` of
/// the ext4 filesystem at `start` (and so nowhere else: no other file, no FAT partition, no
/// slack of a block that was freed).
fn assert_only_in(img: &Path, start: u64, path: &str, secret: &str) {
    assert_eq!(
        oracle::ext4_cat(img, start, path).trim_end(),
        secret,
        "{path}"
    );
    let stat = oracle::debugfs(img, start, &format!("stat \"{path}\""));
    assert!(stat.contains("Mode:  0600"), "{path}: {stat}");
    assert!(
        stat.contains("User:     0   Group:     0"),
        "{path}: {stat}"
    );
    let blocks: Vec<u64> = oracle::debugfs(img, start, &format!("blocks \"{path}\""))
        .split_whitespace()
        .map(|b| b.parse().unwrap())
        .collect();
    let offsets = grep_offsets(img, secret);
    assert_eq!(offsets.len(), 1, "{path}: the secret is at {offsets:?}");
    let block = (offsets[0] - start * 512) / 4096;
    assert!(
        blocks.contains(&block),
        "{path}: found in block {block}, file is {blocks:?}"
    );
}

#[test]
fn manifest_records_inputs_and_changes_and_no_secret() {
    let c = Cluster::new();
    let web = Served::new();
    web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let served = c.path("rpios-trixie.img.zst");
    let pin = sha256sum(&served);
    let url = web.url("/rpios-trixie.img.zst");
    let mut args = c.build_args("pi4-a", &url, "pi4-a.img");
    args.extend(["--sha256".to_string(), pin.clone()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = c.imagegen(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    no_secrets_in(&String::from_utf8_lossy(&run.stdout), "build stdout");
    no_secrets_in(&stderr(&run), "build stderr");
    let out = c.out_dir().join("pi4-a.img");
    let text = fs::read_to_string(c.out_dir().join("pi4-a.img.manifest.json")).unwrap();
    no_secrets_in(&text, "manifest");
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();

    let version = String::from_utf8(c.imagegen(&["--version"]).stdout).unwrap();
    assert_eq!(
        version.trim(),
        format!("imagegen {}", m["imagegen_version"].as_str().unwrap())
    );
    assert_eq!(m["board"], "rpi4");
    assert_eq!(m["node"], "pi4-a");
    let inputs = m["inputs"].as_array().unwrap();
    let base = inputs
        .iter()
        .find(|i| i["name"] == "base")
        .expect("base input");
    assert_eq!(base["source"], url.as_str());
    assert_eq!(base["sha256"], pin.as_str());
    let agent = inputs
        .iter()
        .find(|i| i["name"] == "agent-aarch64")
        .expect("agent input");
    assert_eq!(agent["sha256"], sha256sum(&c.path("agent-arm64")).as_str());
    // `debugfs 1.47.0 (5-Feb-2023)`
    let debugfs = oracle::output("debugfs", &["-V"]);
    let banner = String::from_utf8_lossy(&debugfs.stderr).into_owned()
        + &String::from_utf8_lossy(&debugfs.stdout);
    let e2fsprogs = m["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "e2fsprogs")
        .expect("e2fsprogs in tools");
    let v = e2fsprogs["version"].as_str().unwrap();
    assert!(banner.contains(&format!("debugfs {v} ")), "{v} vs {banner}");
    assert_eq!(m["output"]["sha256"], sha256sum(&out).as_str());
    assert_eq!(m["output"]["raw_size"], fs::metadata(&out).unwrap().len());

    // Every recorded file change is what the image holds, read back by debugfs and mtools.
    let root = oracle::partition(&out, 2).start;
    let boot = oracle::partition(&out, 1).start;
    let changes = m["changes"].as_array().unwrap();
    let mut last = std::collections::BTreeMap::new();
    for ch in changes {
        last.insert(ch["path"].as_str().unwrap(), ch);
    }
    assert!(last.contains_key("/etc/hostname"));
    let mut checked = 0;
    for (path, ch) in &last {
        let Some(want) = ch["sha256"].as_str() else {
            continue;
        };
        let content = match ch["partition"].as_str().unwrap() {
            "p2" => ext4_bytes(&out, root, path),
            "p1" => {
                let on_fat = path.strip_prefix("/boot/firmware").unwrap();
                oracle::fat_cat(&out, boot, on_fat).into_bytes()
            }
            other => panic!("{path} on {other}"),
        };
        assert_eq!(hex_sha256(&content), want, "{path}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} changes with a sha256");
    assert_eq!(
        hex_sha256(oracle::ext4_cat(&out, root, "/etc/hostname").as_bytes()),
        last["/etc/hostname"]["sha256"].as_str().unwrap()
    );

    // The image carries the secrets: only its owner may read it. The sidecars carry none.
    assert_eq!(oracle::run("stat", &["-c", "%a", s(&out)]).trim(), "600");
    // Sidecars are like any file the user creates (the umask applies).
    let probe = c.path("probe");
    fs::write(&probe, b"").unwrap();
    let usual = oracle::run("stat", &["-c", "%a", s(&probe)]);
    for name in [
        "pi4-a.img.manifest.json",
        "pi4-a.img.sha256",
        "pi4-a.img.bmap",
    ] {
        let sidecar = c.out_dir().join(name);
        assert_eq!(
            oracle::run("stat", &["-c", "%a", s(&sidecar)]),
            usual,
            "{name}"
        );
    }
    assert_only_in(&out, root, "/etc/rancher/k3s/token", TOKEN);
    assert_only_in(&out, root, "/etc/imagegen/nut-password", NUT_PASSWORD);
    for name in ["pi4-a.img.sha256", "pi4-a.img.bmap"] {
        no_secrets_in(&fs::read_to_string(c.out_dir().join(name)).unwrap(), name);
    }
}

/// Interrupted while emitting a large `.img.xz` (SIGTERM, then SIGKILL; SIGINT is not used
/// because a shell running the tests in the background makes its children ignore it): no
/// `OUT`, and no sidecar that would describe one.
#[test]
fn interrupted_build_leaves_no_output() {
    let c = Cluster::new();
    let img = common::fixture("rpios-trixie");
    for signal in ["TERM", "KILL"] {
        let args = c.build_args("pi4-a", s(&img), "pi4-a.img.xz");
        let mut child = Command::new(env!("CARGO_BIN_EXE_imagegen"))
            .args(&args)
            .current_dir(c.dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        // The compressed output's temp file appears once the image is built and emitting.
        while !entries(&c.out_dir()).iter().any(|e| e.ends_with(".tmp")) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the build ended before it could be interrupted"
            );
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "emit never started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        // The working copy and the output being written hold the secrets: owner-only.
        for name in entries(&c.out_dir()) {
            let mode = oracle::run("stat", &["-c", "%a", s(&c.out_dir().join(&name))]);
            assert_eq!(mode.trim(), "600", "{name}");
        }
        oracle::run("kill", &["-s", signal, &child.id().to_string()]);
        let status = child.wait().unwrap();
        assert!(!status.success(), "SIG{signal}: {status}");
        let left = entries(&c.out_dir());
        for name in ["pi4-a.img.xz", "pi4-a.img.xz.sha256", "pi4-a.img.xz.bmap"] {
            assert!(!left.contains(name), "SIG{signal} left {name}: {left:?}");
        }
        assert!(
            !left.contains("pi4-a.img.xz.manifest.json"),
            "SIG{signal}: {left:?}"
        );
        if signal == "TERM" {
            // Catchable: the working copy and the half-written output go too.
            assert_eq!(left, BTreeSet::new(), "SIGTERM left files behind");
        }
        // A kill cannot be caught: what it leaves is hidden, and no output.
        for name in &left {
            assert!(
                name.starts_with(".pi4-a.img.xz."),
                "SIG{signal} left {name}"
            );
            fs::remove_file(c.out_dir().join(name)).unwrap();
        }
    }
}

#[test]
fn a_given_zerotier_package_is_staged_for_the_agent() {
    let c = Cluster::new();
    let text = fs::read_to_string(c.config()).unwrap();
    let text = text.replacen(
        "network_id = \"8056c2e21c000001\"",
        "network_id = \"8056c2e21c000001\"\npackage = \"zerotier-one_arm64.deb\"",
        1,
    );
    fs::write(c.config(), text).unwrap();
    // A real package of the board's architecture: the builder reads its control data.
    let built = oracle::dpkg_deb_build(&c.path(""), "zerotier-one", "1.14.2", "arm64", "xz");
    let deb = fs::read(&built).unwrap();
    fs::write(c.path("zerotier-one_arm64.deb"), &deb).unwrap();
    let base = common::fixture("rpios-trixie");
    let out = c.build("pi4-a", s(&base), "pi4-a.img");
    let root = oracle::partition(&out, 2).start;
    assert_eq!(
        ext4_bytes(&out, root, "/var/cache/imagegen/zerotier-one.deb"),
        deb
    );
    let node = String::from_utf8(ext4_bytes(&out, root, "/etc/imagegen/node.toml")).unwrap();
    assert!(
        node.contains("package = \"/var/cache/imagegen/zerotier-one.deb\""),
        "{node}"
    );
}

/// Whether this process may switch to `nobody` to read as another local user would.
fn can_act_as_nobody() -> bool {
    let root = oracle::run("id", &["-u"]).trim() == "0";
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "reading as another user needs root (runuser -u nobody)"
        );
        eprintln!("skipped: reading as another user needs root (runuser -u nobody)");
    }
    root
}

/// A `debugfs` first on PATH that, before every writing run, looks as `nobody` for the
/// secrets in every file under `dir` but the secrets' own, and in the descriptor tables of
/// imagegen and of itself, appending what it finds to `found`. With `hold`, it then waits
/// (reported in `held`) until its parent is gone, so a test can interrupt the build while
/// debugfs is about to run.
fn spying_debugfs(bin: &Path, dir: &Path, logs: &Path, hold: bool) {
    fs::create_dir_all(bin).unwrap();
    let script = format!(
        r#"#!/bin/bash
if [ "$1" = "-w" ]; then
    echo scan >> {logs}/scans
    runuser -u nobody -- grep -RlsF -e '{TOKEN}' -e '{NUT_PASSWORD}' --exclude-dir=secrets \
        {dir} /proc/$PPID/fd /proc/$$/fd >> {logs}/found
    if [ -n "{hold}" ]; then
        echo $$ > {logs}/held
        while kill -0 $PPID 2>/dev/null; do sleep 0.1; done
        exit 1
    fi
fi
exec {real} "$@"
"#,
        logs = s(logs),
        dir = s(dir),
        hold = if hold { "1" } else { "" },
        real = s(&oracle::tool("debugfs")),
    );
    let path = bin.join("debugfs");
    fs::write(&path, script).unwrap();
    oracle::run("chmod", &["0755", s(&path)]);
}

/// The k3s token, the NUT password and the node's private keys go through debugfs into the
/// working copy: at no point of a build may another local user read them, and an
/// interrupted build leaves no copy of them behind.
#[test]
fn secrets_are_never_readable_by_another_user() {
    if !can_act_as_nobody() {
        return;
    }
    let c = Cluster::new();
    // As a careful user keeps them; the spy skips them anyway.
    for f in ["secrets/k3s-token", "secrets/nut-password"] {
        oracle::run("chmod", &["0600", s(&c.path(f))]);
    }
    let tmp = c.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let img = common::fixture("rpios-trixie");
    // Outside the scanned directory: the spy's script holds the secrets it looks for.
    let bin = logs.path().join("bin");
    let path = format!("{}:{}", s(&bin), std::env::var("PATH").unwrap_or_default());
    let build = |hold: bool| {
        spying_debugfs(&bin, c.dir.path(), logs.path(), hold);
        let args = c.build_args("pi4-a", s(&img), "pi4-a.img");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagegen"));
        cmd.args(&args)
            .current_dir(c.dir.path())
            .env("PATH", &path)
            .env("TMPDIR", &tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };

    let out = build(false).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let scans = fs::read_to_string(logs.path().join("scans")).unwrap_or_default();
    assert!(scans.lines().count() >= 1, "debugfs never ran for writing");
    let found = fs::read_to_string(logs.path().join("found")).unwrap_or_default();
    assert_eq!(found, "", "nobody could read a secret while the build ran");
    assert_eq!(
        entries(&tmp),
        BTreeSet::new(),
        "the build left files in TMPDIR"
    );
    fs::remove_dir_all(c.out_dir()).unwrap();
    fs::create_dir(c.out_dir()).unwrap();

    let mut child = build(true).spawn().unwrap();
    let started = Instant::now();
    while !logs.path().join("held").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before debugfs ran"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "debugfs never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    oracle::run("kill", &["-s", "TERM", &child.id().to_string()]);
    let status = child.wait().unwrap();
    assert!(!status.success(), "SIGTERM: {status}");
    let found = fs::read_to_string(logs.path().join("found")).unwrap_or_default();
    assert_eq!(found, "", "nobody could read a secret while the build ran");
    let left = runuser_grep(c.dir.path());
    assert_eq!(left, "", "nobody can read a secret after SIGTERM");
    assert_eq!(
        entries(&tmp),
        BTreeSet::new(),
        "SIGTERM left files in TMPDIR"
    );
    assert_eq!(
        entries(&c.out_dir()),
        BTreeSet::new(),
        "SIGTERM left files in the output directory"
    );
}

/// Files under `dir` (but its `secrets/`) that `nobody` can read and that hold a secret.
fn runuser_grep(dir: &Path) -> String {
    let out = Command::new("runuser")
        .args([
            "-u",
            "nobody",
            "--",
            "grep",
            "-RlsF",
            "-e",
            TOKEN,
            "-e",
            NUT_PASSWORD,
        ])
        .arg("--exclude-dir=secrets")
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The manifest is as readable as any file the user makes: the credentials and signed query
/// of a `--base` URL stay out of it.
#[test]
fn base_url_credentials_and_signatures_stay_out_of_the_manifest() {
    let c = Cluster::new();
    let web = Served::new();
    let bytes = web.compressed(c.dir.path(), "rpios-trixie", "zst");
    let signed =
        "/rpios-trixie.img.zst?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=0badc0ffee#frag-7c1e";
    web.server
        .put(signed.split('#').next().unwrap(), &bytes, None);
    let url = web
        .url(signed)
        .replacen("http://", "http://operator:hunter2@", 1);
    let mut args = c.build_args("pi4-a", &url, "pi4-a.img");
    args.extend(["--sha256".to_string(), hex_sha256(&bytes)]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = c.imagegen(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = fs::read_to_string(c.out_dir().join("pi4-a.img.manifest.json")).unwrap();
    for secret in [
        "hunter2",
        "operator",
        "X-Amz",
        "AKIAEXAMPLE",
        "0badc0ffee",
        "frag-7c1e",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} is in the manifest:\n{text}"
        );
    }
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let base = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "base")
        .expect("base input");
    assert_eq!(base["source"], web.url("/rpios-trixie.img.zst").as_str());
}

/// The FAT check runs on a copy of the boot partition (fsck.fat has no offset option); after
/// `personalize` that copy holds the node's secrets. Interrupted while fsck.fat runs, the build
/// leaves no copy behind.
#[test]
fn interrupted_fat_check_leaves_no_partition_copy() {
    let c = Cluster::new();
    let tmp = c.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let bin = logs.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let spy = bin.join("fsck.fat");
    fs::write(
        &spy,
        format!(
            "#!/bin/bash\necho $$ > {}/held\nwhile kill -0 $PPID 2>/dev/null; do sleep 0.1; done\nexit 1\n",
            s(logs.path())
        ),
    )
    .unwrap();
    oracle::run("chmod", &["0755", s(&spy)]);
    let img = common::fixture("rpios-trixie");
    let args = c.build_args("pi4-a", s(&img), "pi4-a.img");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imagegen"))
        .args(&args)
        .current_dir(c.dir.path())
        .env(
            "PATH",
            format!("{}:{}", s(&bin), std::env::var("PATH").unwrap_or_default()),
        )
        .env("TMPDIR", &tmp)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !logs.path().join("held").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before fsck.fat ran"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "fsck.fat never ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        entries(&tmp).len(),
        1,
        "no partition copy while fsck.fat runs"
    );
    oracle::run("kill", &["-s", "TERM", &child.id().to_string()]);
    assert!(!child.wait().unwrap().success());
    assert_eq!(
        entries(&tmp),
        BTreeSet::new(),
        "SIGTERM left the partition copy"
    );
    assert_eq!(entries(&c.out_dir()), BTreeSet::new());
}

/// An operator's `--board` run: `imagegen` as `tester` with `HOME=<cluster>/home`, this
/// cluster's cache and state, and `agent` (a stub made by `Cluster::new`).
fn board_build(c: &Cluster, board: &str, base: &Path, agent: &str, out: &str) -> Output {
    fs::create_dir_all(c.path("home/.ssh")).unwrap();
    let out = c.out_dir().join(out);
    Command::new(env!("CARGO_BIN_EXE_imagegen"))
        .args([
            "build",
            "--board",
            board,
            "--base",
            s(base),
            "--agent",
            agent,
        ])
        .args([
            "--cache-dir",
            s(&c.cache()),
            "--state-dir",
            s(&c.path("state")),
        ])
        .args(["-o", s(&out)])
        .current_dir(c.dir.path())
        .env("HOME", c.path("home"))
        .env("USER", "tester")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run imagegen")
}

/// An ELF executable of `len` bytes for `machine` (62 x86-64, 183 aarch64): a 64-byte header
/// and zeros, the size of a real binary rather than of the header alone.
fn elf_binary(path: &Path, machine: u16, len: usize) {
    elf_stub(path, machine);
    let mut bytes = fs::read(path).unwrap();
    bytes.resize(len, 0);
    fs::write(path, bytes).unwrap();
}

#[test]
fn board_build_refuses_a_base_image_of_another_architecture() {
    let c = Cluster::new();
    fs::create_dir_all(c.path("home/.ssh")).unwrap();
    oracle::ssh_keygen(&c.path("home/.ssh/id_ed25519"), "tester@laptop");
    let base = common::fixture("rpios-bookworm");
    let env = format!("{}:/usr/bin/env", s(&base));
    // A Raspberry Pi OS image whose userland is x86-64, with a /usr/bin/env of a real
    // binary's size (Debian's is 48 KiB): the header alone is read.
    elf_binary(&c.path("env-amd64"), 62, 48 << 10);
    let cp = c.imagegen(&["cp", "--mode", "0755", "env-amd64", &env]);
    assert!(cp.status.success(), "{}", stderr(&cp));
    let err = fails(
        board_build(&c, "rpi4", &base, "agent-arm64", "rpi4.img"),
        "the base image is for x86_64, but board rpi4 is aarch64",
    );
    assert_eq!(entries(&c.out_dir()), BTreeSet::new(), "{err}");

    // The same image with an aarch64 binary of that size builds: the check reads real
    // binaries, and the aarch64 agent goes into an aarch64 userland.
    elf_binary(&c.path("env-arm64"), 183, 48 << 10);
    let cp = c.imagegen(&["cp", "--mode", "0755", "env-arm64", &env]);
    assert!(cp.status.success(), "{}", stderr(&cp));
    let out = board_build(&c, "rpi4", &base, "agent-arm64", "rpi4.img");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("architecture"), "{}", stderr(&out));
}

#[test]
fn board_build_takes_the_operators_keys_whatever_their_format_and_comments() {
    let c = Cluster::new();
    let ssh = c.path("home/.ssh");
    fs::create_dir_all(&ssh).unwrap();
    // Quotes, backslashes, a '#', a tab, and an accent as macOS writes it (e + U+0301, which
    // Rust's {:?} escapes as \u{301}, not TOML).
    oracle::ssh_keygen(
        &ssh.join("id_ed25519"),
        "tester \"laptop\" C:\\keys\\ #1\tJose\u{301}",
    );
    // An RFC 4716 key as `ssh-keygen -e` writes it; its OpenSSH original is elsewhere.
    oracle::ssh_keygen(&c.path("work"), "work key");
    let rfc = oracle::run(
        "ssh-keygen",
        &["-e", "-m", "RFC4716", "-f", s(&c.path("work.pub"))],
    );
    assert!(rfc.starts_with("---- BEGIN SSH2 PUBLIC KEY ----"), "{rfc}");
    fs::write(ssh.join("work.pub"), &rfc).unwrap();
    // And a .pub that holds no key.
    fs::write(ssh.join("notes.pub"), "remember the milk\n").unwrap();

    let base = common::fixture("debian-genericcloud");
    let out = board_build(&c, "x86-64", &base, "agent-amd64", "x86-64.img");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let notes = s(&ssh.join("notes.pub")).to_string();
    let skipped: Vec<&str> = err.lines().filter(|l| l.contains(&notes)).collect();
    assert_eq!(skipped.len(), 1, "one warning naming {notes}: {err}");
    assert!(skipped[0].starts_with("warning: skipping "), "{err}");

    let img = c.out_dir().join("x86-64.img");
    let root = oracle::partition(&img, 1).start;
    let keys =
        String::from_utf8(ext4_bytes(&img, root, "/home/tester/.ssh/authorized_keys")).unwrap();
    let converted = oracle::run(
        "ssh-keygen",
        &["-i", "-m", "RFC4716", "-f", s(&ssh.join("work.pub"))],
    );
    let own = fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap();
    assert_eq!(
        keys.lines().collect::<Vec<_>>(),
        [own.trim(), converted.trim()],
        "authorized_keys"
    );
    // OpenSSH reads every line as the key it came from: `ssh-keygen -l` parses
    // authorized_keys files as sshd does.
    fs::write(c.path("authorized_keys"), &keys).unwrap();
    let fingerprints = |f: &Path| -> Vec<String> {
        oracle::run("ssh-keygen", &["-l", "-f", s(f)])
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    };
    assert_eq!(
        fingerprints(&c.path("authorized_keys")),
        [
            fingerprints(&ssh.join("id_ed25519.pub")),
            fingerprints(&c.path("work.pub"))
        ]
        .concat()
    );
}

/// The node's ZeroTier identity is made once into the state directory and put into every
/// rebuild unchanged, so a replacement card is the same member: read back with debugfs (root
/// 0600, identical across rebuilds, accepted by our implementation of ZeroTier's validation),
/// and its address is in the build's output and manifest but the secret is nowhere else.
#[test]
fn zerotier_identity_is_kept_across_rebuilds() {
    use imagegen::vpn::zerotier::Identity;
    let c = Cluster::new();
    assert!(
        fs::read_to_string(c.config())
            .unwrap()
            .contains("[zerotier]")
    );
    let img = common::fixture("rpios-trixie");
    let mut secrets = Vec::new();
    for out in ["a.img", "b.img"] {
        let args = c.build_args("pi4-a", s(&img), out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = c.imagegen(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        let out = c.out_dir().join(out);
        let root = oracle::partition(&out, 2).start;
        let secret = String::from_utf8(ext4_bytes(
            &out,
            root,
            "/var/lib/zerotier-one/identity.secret",
        ))
        .unwrap();
        let id: Identity = secret.parse().unwrap();
        assert!(id.locally_validate(), "{secret}");
        let private_hex = secret.rsplit(':').next().unwrap();
        assert_only_in(&out, root, "/var/lib/zerotier-one/identity.secret", &secret);
        let public = oracle::ext4_cat(&out, root, "/var/lib/zerotier-one/identity.public");
        assert_eq!(public, id.public_string());
        let stat = oracle::debugfs(&out, root, "stat /var/lib/zerotier-one/identity.public");
        assert!(stat.contains("Mode:  0644"), "{stat}");
        let address = id.address().to_string();
        assert!(
            stderr(&run).contains(&format!("ZeroTier member {address}")),
            "{}",
            stderr(&run)
        );
        let m = manifest(&out);
        assert_eq!(m["zerotier_address"], address.as_str());
        let text = fs::read_to_string(c.out_dir().join(format!(
            "{}.manifest.json",
            out.file_name().unwrap().to_str().unwrap()
        )))
        .unwrap();
        for leak in [&text, &stderr(&run)] {
            assert!(!leak.contains(private_hex), "the private key leaked");
        }
        secrets.push(secret);
    }
    assert_eq!(secrets[0], secrets[1], "a rebuild changed the identity");
}

/// A base without wireguard-tools (Raspberry Pi OS Lite, Armbian) with the package staged in
/// `[packages] debs` for the board's architecture (a real .deb made by `dpkg-deb --build`,
/// recognized by its control data, whatever its file is called): the build takes it, stages
/// it, and node.toml (read by the agent's own parser) tells the agent to bring the tunnel up
/// after its debs step; no enable link names a unit the image does not have yet. Staged only
/// for another architecture, or absent while other debs are there, it is refused, naming the
/// fix.
#[test]
fn wireguard_tools_from_staged_debs_when_the_base_lacks_it() {
    let c = Cluster::new();
    let d = c.path("debs");
    fs::create_dir(&d).unwrap();
    let tool = oracle::dpkg_deb_build(&d, "lab-tool", "1.0", "arm64", "xz");
    let wrong = oracle::dpkg_deb_build(&d, "wireguard-tools", "1.0.20210914-1", "amd64", "xz");
    let right = oracle::dpkg_deb_build(&d, "wireguard-tools", "1.0.20210914-1", "arm64", "xz");
    let renamed = d.join("wg.deb");
    fs::rename(&right, &renamed).unwrap();
    let base_text = fs::read_to_string(c.config())
        .unwrap()
        .replace(
            "[zerotier]\nnetwork_id = \"8056c2e21c000001\"\n",
            "[wireguard]\nnetwork = \"10.99.0.0/24\"\n",
        )
        .replacen(
            "name = \"master\"\nboard = \"x86-64\"\n",
            "name = \"master\"\nboard = \"rpi4\"\nendpoint = \"203.0.113.1:51820\"\n",
            1,
        );
    let with_debs = |debs: &[&Path]| {
        let list: Vec<String> = debs.iter().map(|p| format!("{:?}", s(p))).collect();
        let text = base_text.replacen(
            "[[nodes]]\n",
            &format!("[packages]\ndebs = [{}]\n[[nodes]]\n", list.join(", ")),
            1,
        );
        fs::write(c.config(), text).unwrap();
    };
    let img = c.path("base.img");
    fs::copy(common::fixture("rpios-trixie"), &img).unwrap();
    let args = c.build_args("pi4-a", s(&img), "a.img");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.out_dir().join("a.img");

    // Neither the image nor the debs: the message names both ways out, for this board.
    with_debs(&[&tool]);
    let run = c.imagegen(&args);
    let err = stderr(&run);
    assert!(
        !run.status.success()
            && err.contains("/usr/bin/wg-quick")
            && err.contains("add the wireguard-tools .deb for arm64")
            && err.contains("[packages] debs")
            && err.contains("base image that has wireguard-tools"),
        "{err}"
    );
    assert!(!out.exists());
    // Only for another architecture: refused, naming the one missing.
    with_debs(&[&tool, &wrong]);
    let run = c.imagegen(&args);
    let err = stderr(&run);
    assert!(
        !run.status.success() && err.contains("no wireguard-tools for arm64"),
        "{err}"
    );
    assert!(!out.exists());

    with_debs(&[&tool, &wrong, &renamed]);
    let run = c.imagegen(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    let root = oracle::partition(&out, 2).start;
    oracle::assert_e2fsck_clean(&out, root);
    // Staged under its package name, byte for byte.
    let copy = c.path("staged.deb");
    oracle::debugfs(
        &out,
        root,
        &format!(
            "dump /var/cache/imagegen/debs/02-wireguard-tools.deb {}",
            s(&copy)
        ),
    );
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&renamed).unwrap());
    let text = oracle::ext4_cat(&out, root, "/etc/imagegen/node.toml");
    let node = imagegen_firstboot::config::NodeConfig::from_toml_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}"));
    let wg = node.wireguard.as_ref().expect("[wireguard] in node.toml");
    assert!(wg.after_debs && wg.interface == "wg0", "{text}");
    assert_eq!(
        node.packages.debs,
        [
            PathBuf::from("/var/cache/imagegen/debs/01-lab-tool.deb"),
            PathBuf::from("/var/cache/imagegen/debs/02-wireguard-tools.deb"),
        ]
    );
    let conf = oracle::debugfs(&out, root, "stat /etc/wireguard/wg0.conf");
    assert!(conf.contains("Mode:  0600"), "{conf}");
    // No link to a unit the image lacks: the agent's `systemctl enable` makes it.
    let link = oracle::output(
        "debugfs",
        &[
            "-R",
            "stat /etc/systemd/system/multi-user.target.wants/wg-quick@wg0.service",
            &oracle::ext4_at(&out, root),
        ],
    );
    assert!(
        String::from_utf8_lossy(&link.stderr).contains("File not found"),
        "{}",
        String::from_utf8_lossy(&link.stdout)
    );
    // k3s still ordered after the tunnel, whoever enables it.
    assert_k3s_after_tunnel(&out, root);
}

/// Both k3s units wait for wg-quick@wg0 (imagegen's drop-in, read back); systemd's reading
/// of it is checked on a booted node in cluster_boot.rs.
fn assert_k3s_after_tunnel(img: &Path, root: u64) {
    for unit in ["k3s.service", "k3s-agent.service"] {
        let dropin = oracle::ext4_cat(
            img,
            root,
            &format!("/etc/systemd/system/{unit}.d/10-imagegen-wireguard.conf"),
        );
        assert!(
            dropin.contains("\nAfter=wg-quick@wg0.service\n")
                && dropin.contains("\nWants=wg-quick@wg0.service\n"),
            "{unit}: {dropin}"
        );
    }
}

/// `[wireguard]` instead of ZeroTier, with one client: the nodes' wg0.conf read back with
/// debugfs (root 0600) and parsed by wireguard-tools itself (`wg-quick strip`), each node's
/// private key giving (`wg pubkey`) the public key every other node and the client list for
/// it, the same keys after a rebuild, the firewall's port checked by `nft -c`, and the client
/// config's QR code as the terminal shows it decoded by zbarimg.
#[test]
fn wireguard_mesh_keys_are_kept_and_agree() {
    let (wg, wg_quick) = (oracle::tool("wg"), oracle::tool("wg-quick"));
    // wireguard-tools' own reading of a config, as wg-quick@wg0 will read it.
    let wg_strip = |f: &Path| {
        let strip = Command::new(&wg_quick)
            .arg("strip")
            .arg(f)
            .output()
            .unwrap();
        assert!(
            strip.status.success(),
            "{}: {}",
            fs::read_to_string(f).unwrap_or_default(),
            String::from_utf8_lossy(&strip.stderr)
        );
    };
    let c = Cluster::new();
    let text = fs::read_to_string(c.config()).unwrap().replace(
        "[zerotier]\nnetwork_id = \"8056c2e21c000001\"\n",
        "[wireguard]\nnetwork = \"10.99.0.0/24\"\nport = 51999\nclients = [\"laptop\"]\n",
    );
    let text = text.replacen(
        "name = \"master\"\nboard = \"x86-64\"\n",
        // An rpi4 master, so one fixture serves both nodes.
        "name = \"master\"\nboard = \"rpi4\"\nendpoint = \"203.0.113.1:51999\"\n",
        1,
    );
    fs::write(c.config(), text).unwrap();
    // The fixture lacks wireguard-tools; the build refuses such an image, then takes it once
    // wg-quick is there.
    let img = c.path("base.img");
    fs::copy(common::fixture("rpios-trixie"), &img).unwrap();
    let args = c.build_args("pi4-a", s(&img), "x.img");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = c.imagegen(&args);
    assert!(
        !run.status.success() && stderr(&run).contains("wireguard-tools"),
        "{}",
        stderr(&run)
    );
    let cp = c.imagegen(&[
        "cp",
        s(&wg_quick),
        &format!("{}:/usr/bin/wg-quick", s(&img)),
    ]);
    assert!(cp.status.success(), "{}", stderr(&cp));

    let conf = |out: &Path| -> String {
        let root = oracle::partition(out, 2).start;
        let stat = oracle::debugfs(out, root, "stat /etc/wireguard/wg0.conf");
        assert!(
            stat.contains("Mode:  0600") && stat.contains("User:     0   Group:     0"),
            "{stat}"
        );
        oracle::ext4_cat(out, root, "/etc/wireguard/wg0.conf")
    };
    let mut confs: Vec<(String, String)> = Vec::new();
    for (node, out) in [
        ("pi4-a", "a1.img"),
        ("master", "m.img"),
        ("pi4-a", "a2.img"),
    ] {
        let args = c.build_args(node, s(&img), out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = c.imagegen(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        let out = c.out_dir().join(out);
        let text = conf(&out);
        let dir = c.path("wg-strip");
        let _ = fs::create_dir(&dir);
        let f = dir.join("wg0.conf");
        fs::write(&f, &text).unwrap();
        wg_strip(&f);
        let root = oracle::partition(&out, 2).start;
        let nft = oracle::ext4_cat(&out, root, "/etc/nftables.conf");
        assert!(
            nft.contains("udp dport 51999 accept") && nft.contains("iifname \"wg0\""),
            "{nft}"
        );
        let nf = dir.join("nftables.conf");
        fs::write(&nf, &nft).unwrap();
        let chk = oracle::output("nft", &["-c", "-f", s(&nf)]);
        assert!(
            chk.status.success(),
            "{}",
            String::from_utf8_lossy(&chk.stderr)
        );
        let node_toml = oracle::ext4_cat(&out, root, "/etc/imagegen/node.toml");
        assert!(
            node_toml.contains("node_ip_from = \"wireguard\""),
            "{node_toml}"
        );
        let enabled = oracle::debugfs(
            &out,
            root,
            "stat /etc/systemd/system/multi-user.target.wants/wg-quick@wg0.service",
        );
        assert!(
            enabled.contains("/lib/systemd/system/wg-quick@.service"),
            "{enabled}"
        );
        assert_k3s_after_tunnel(&out, root);
        confs.push((node.into(), text));
    }
    assert_eq!(confs[0].1, confs[2].1, "a rebuild changed pi4-a's wg0.conf");

    let client = c.path("laptop.conf");
    let run = c.imagegen(&[
        "vpn-client",
        "--state-dir",
        s(&c.path("state")),
        "--config",
        s(&c.config()),
        "--name",
        "laptop",
        "-o",
        s(&client),
        "--qr",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&client).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let client_text = fs::read_to_string(&client).unwrap();
    wg_strip(&client);
    confs.push(("laptop".into(), client_text.clone()));

    // Each member's public key, by wg itself, is what every other member lists for it.
    let field = |text: &str, key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key} = ")))
            .map(String::from)
            .collect()
    };
    for (name, text) in &confs[..2]
        .iter()
        .chain([&confs[3]])
        .cloned()
        .collect::<Vec<_>>()
    {
        let private = &field(text, "PrivateKey")[0];
        let mut p = Command::new(&wg)
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        p.stdin
            .take()
            .unwrap()
            .write_all(format!("{private}\n").as_bytes())
            .unwrap();
        let out = p.wait_with_output().unwrap();
        let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
        for (other, other_text) in &confs {
            if other == name || (other == "laptop" && name == "laptop") {
                continue;
            }
            // The client lists the nodes only; every node lists everyone.
            let block = other_text
                .split("\n\n")
                .find(|b| {
                    b.starts_with(&format!("# node {name}\n"))
                        || b.starts_with(&format!("# client {name}\n"))
                })
                .unwrap_or_else(|| panic!("{other} has no peer {name}:\n{other_text}"));
            assert!(
                block.contains(&format!("PublicKey = {public}\n")),
                "{other} / {name}: {block}"
            );
        }
    }
    // pi4-a is behind NAT: it keeps the path to the master open; the master dials nobody.
    assert!(
        confs[0]
            .1
            .contains("Endpoint = 203.0.113.1:51999\nPersistentKeepalive = 25")
    );
    assert!(!confs[1].1.contains("Endpoint ="), "{}", confs[1].1);
    assert!(
        client_text.contains("Address = 10.99.0.4/24"),
        "{client_text}"
    );

    // The QR code as the terminal shows it, back into modules, through a real decoder.
    let zbarimg = oracle::tool("zbarimg");
    let qr = String::from_utf8(run.stdout).unwrap();
    let mut rows: Vec<Vec<bool>> = Vec::new();
    for line in qr.lines().filter(|l| !l.is_empty()) {
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for ch in line.chars() {
            // Light modules are drawn (light text on a dark terminal).
            let (t, b) = match ch {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                other => panic!("unexpected {other:?} in the QR code"),
            };
            top.push(t);
            bottom.push(b);
        }
        rows.push(top);
        rows.push(bottom);
    }
    let scale = 4;
    let (w, h) = (rows[0].len() * scale, rows.len() * scale);
    let mut pgm = format!("P5 {w} {h} 255\n").into_bytes();
    for r in &rows {
        for _ in 0..scale {
            for &light in r {
                pgm.extend(std::iter::repeat_n(if light { 255u8 } else { 0 }, scale));
            }
        }
    }
    let png = c.path("qr.pgm");
    fs::write(&png, pgm).unwrap();
    let dec = Command::new(zbarimg)
        .args(["--raw", "-q"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        dec.status.success(),
        "{}",
        String::from_utf8_lossy(&dec.stderr)
    );
    assert_eq!(
        String::from_utf8(dec.stdout).unwrap().trim_end(),
        client_text.trim_end()
    );
}

/// `--config F --board B --no-secrets`: the cluster's generic image of a board, built from no
/// node's name (an agent's node.toml, no hostname), which `personalize` makes into any node of
/// that board: its seed, on a FAT partition `fsck.fat -n` accepts, names the node.
#[test]
fn board_generic_image_is_personalized_into_a_node_of_that_board() {
    use imagegen_firstboot::config::{NodeConfig, Role};
    use imagegen_firstboot::seed::{SEED_FILE_NAME, Seed};
    let c = Cluster::new();
    let img = common::fixture("rpios-trixie");
    let args = |board: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "build",
            "-c",
            s(&c.config()),
            "--board",
            board,
            "--base",
            s(&img),
            "--agent",
            "agent-arm64",
            "--cache-dir",
            s(&c.cache()),
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|e| e.to_string()));
        v
    };

    // A node's image needs a node: without --no-secrets, one clear line and nothing written.
    let err = c.build_fails_with(
        &args("rpi4", &["-o", s(&c.out_dir().join("x.img"))]),
        "--no-secrets",
    );
    assert!(err.contains("--node"), "{err}");
    for other in [&["--node", "pi4-a"][..], &["--all"]] {
        let mut a = args("rpi4", &["--no-secrets"]);
        a.extend(other.iter().map(|o| o.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = c.imagegen(&a);
        assert_eq!(out.status.code(), Some(2), "{a:?}: {}", stderr(&out));
    }

    // The default name, in the working directory, from the cluster's and the board's names.
    let a = args("rpi4", &["--no-secrets"]);
    let out = c.imagegen(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !warnings(&out).iter().any(|w| w.contains("rpi4")),
        "pi4-a is on rpi4: {}",
        stderr(&out)
    );
    let built = c.path("lab-rpi4-generic.img.zst");
    assert!(manifest(&built)["node"].is_null());
    let raw = raw_of(&built, c.dir.path());
    fs::remove_file(&built).unwrap();
    let root = oracle::partition(&raw, 2).start;
    oracle::assert_e2fsck_clean(&raw, root);
    let node_toml = oracle::ext4_cat(&raw, root, "/etc/imagegen/node.toml");
    let generic = NodeConfig::from_toml_str(&node_toml).expect("node.toml parses");
    assert_eq!(generic.node.role, Role::Agent);
    assert_eq!(generic.node.name, "generic");
    assert_ne!(oracle::ext4_cat(&raw, root, "/etc/hostname"), "pi4-a\n");

    // Personalized into pi4-a, the seed names it.
    let out = c.imagegen(&[
        "personalize",
        s(&raw),
        "-c",
        s(&c.config()),
        "--node",
        "pi4-a",
        "--state-dir",
        s(&c.path("state")),
    ]);
    assert!(out.status.success(), "personalize: {}", stderr(&out));
    let boot = oracle::partition(&raw, 1);
    oracle::assert_fsck_fat_clean(&raw, boot.start, boot.size);
    let seed = Seed::from_toml_str(&oracle::fat_cat(
        &raw,
        boot.start,
        &format!("/{SEED_FILE_NAME}"),
    ))
    .expect("the seed parses");
    let file = |path: &str| -> String {
        let f = seed.files.iter().find(|f| f.path == path);
        String::from_utf8(
            f.unwrap_or_else(|| panic!("no {path} in the seed"))
                .content()
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(file("/etc/hostname"), "pi4-a\n");
    let node = NodeConfig::from_toml_str(&file("/etc/imagegen/node.toml")).unwrap();
    assert_eq!(
        (node.node.name.as_str(), node.node.role),
        ("pi4-a", Role::Agent)
    );
    fs::remove_file(&raw).unwrap();

    // A board no node of the config is on yet: built all the same, with one warning line.
    let a = args(
        "rpi3",
        &["--no-secrets", "-o", s(&c.out_dir().join("g.img"))],
    );
    let out = c.imagegen(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let w: Vec<String> = warnings(&out)
        .into_iter()
        .filter(|w| w.contains("rpi3"))
        .collect();
    assert_eq!(w.len(), 1, "{}", stderr(&out));
    assert!(manifest(&c.out_dir().join("g.img"))["board"] == "rpi3");
}

/// A ZeroTier Central API token, to be found nowhere but in its file and the requests.
const ZT_TOKEN: &str = "zt0Central4pi7Token9xYq";
const ZT_NETWORK: &str = "8056c2e21c000001";

/// The example cluster reduced to two Raspberry Pi agents (`pi-1` with a `vpn_address`,
/// `pi-2` without), its `[zerotier]` pointed at `api_url` with the token file
/// `secrets/zt-token` (0600).
fn zerotier_cluster(api_url: &str) -> Cluster {
    let c = Cluster::new();
    let text = fs::read_to_string(c.config()).unwrap();
    let head = &text[..text.find("[[nodes]]").unwrap()];
    let zt = format!("network_id = \"{ZT_NETWORK}\"\n");
    assert!(head.contains(&zt), "the example's ZeroTier network changed");
    let head = head
        .replace("server = \"master\"", "host = \"10.0.0.5\"")
        .replace(
            &zt,
            &format!("{zt}api_token_file = \"secrets/zt-token\"\napi_url = \"{api_url}\"\n"),
        );
    fs::write(
        c.config(),
        format!(
            "{head}[[nodes]]\nname = \"pi-1\"\nboard = \"rpi4\"\nrole = \"agent\"\n\
             vpn_address = \"10.147.17.21\"\n\n\
             [[nodes]]\nname = \"pi-2\"\nboard = \"rpi3\"\nrole = \"agent\"\n"
        ),
    )
    .unwrap();
    fs::write(c.path("secrets/zt-token"), format!("{ZT_TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        c.path("secrets/zt-token"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    c
}

/// `build` of the zerotier cluster (`--all` or `--node`), into `dir` (made if missing).
fn zerotier_build_args(
    c: &Cluster,
    img: &Path,
    which: &[&str],
    dir: &Path,
    extra: &[&str],
) -> Vec<String> {
    ["build", "-c", s(&c.config())]
        .iter()
        .chain(which)
        .chain(&[
            "--base",
            s(img),
            "--agent",
            "agent-arm64",
            "--cache-dir",
            s(&c.cache()),
            "--state-dir",
            s(&c.path("state")),
            "-o",
            s(dir),
        ])
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
}

/// `grep -rF` as the oracle: whether `needle` is in any file under `dir` (images included).
fn grep_tree(dir: &Path, needle: &str) -> bool {
    let out = Command::new("grep")
        .args(["-rqaF", needle])
        .arg(dir)
        .status()
        .unwrap();
    match out.code() {
        Some(0) => true,
        Some(1) => false,
        c => panic!("grep -r {}: exit {c:?}", dir.display()),
    }
}

/// Pre-authorization against a stand-in for ZeroTier Central's member API (see
/// `support/central.rs`; the real Central cannot be reached from the tests): `build --all`
/// posts once per node to `/api/v1/network/{nwid}/member/{member}` with the member address
/// the image and manifest carry, `Authorization: token <token>`, the node's name, authorized,
/// and its `vpn_address` as its only address; a rebuild posts the same; `--offline` asks
/// nothing and says who to approve by hand. The token is in none of the images (grep on the
/// decompressed raw images), manifests, state files, stdout or stderr.
#[test]
fn zerotier_members_are_preauthorized_and_the_token_stays_home() {
    let central = Central::start(ZT_TOKEN, &[ZT_NETWORK]);
    let c = zerotier_cluster(&central.url());
    let img = common::fixture("rpios-trixie");
    let check = c.imagegen(&["check", "--config", s(&c.config())]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        !warnings(&check).iter().any(|w| w.contains("zerotier")),
        "{}",
        stderr(&check)
    );

    let dir = c.path("all");
    let args = zerotier_build_args(&c, &img, &["--all"], &dir, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.imagegen(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("not pre-authorized"), "{err}");
    let log = central.log();
    assert_eq!(log.len(), 2, "one request per node: {log:?}");
    let mut addresses = Vec::new();
    for (node, request) in ["pi-1", "pi-2"].iter().zip(&log) {
        let image = dir.join(format!("{node}.img.zst"));
        let address = manifest(&image)["zerotier_address"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.path,
            format!("/api/v1/network/{ZT_NETWORK}/member/{address}")
        );
        assert_eq!(
            request.headers.get("authorization").map(String::as_str),
            Some(format!("token {ZT_TOKEN}").as_str())
        );
        let body = request.json();
        assert_eq!(body["name"], *node);
        assert_eq!(body["config"]["authorized"], true);
        if *node == "pi-1" {
            assert_eq!(
                body["config"]["ipAssignments"],
                serde_json::json!(["10.147.17.21"])
            );
            assert_eq!(body["config"]["noAutoAssignIps"], true);
            assert!(
                err.contains(&format!(
                    "node pi-1: ZeroTier member {address} authorized in network {ZT_NETWORK} \
                     at 10.147.17.21"
                )),
                "{err}"
            );
        } else {
            // No vpn_address: the controller assigns one from its pool.
            assert_eq!(body["config"].get("ipAssignments"), None, "{body}");
        }
        // The member is the identity in the image.
        // Decompressed beside the image, so the grep below reads the raw bytes too.
        let raw = raw_of(&image, &dir);
        let root = oracle::partition(&raw, 2).start;
        let public = oracle::ext4_cat(&raw, root, "/var/lib/zerotier-one/identity.public");
        assert!(public.starts_with(&format!("{address}:")), "{public}");
        addresses.push(address);
    }
    for text in [&err, &String::from_utf8_lossy(&out.stdout).into_owned()] {
        assert!(
            !text.contains(ZT_TOKEN),
            "the token is in the output: {text}"
        );
    }
    // Images (raw and compressed), manifests, known_hosts, and the state directory.
    for tree in [dir.clone(), c.path("state")] {
        assert!(
            !grep_tree(&tree, ZT_TOKEN),
            "the token is under {}",
            tree.display()
        );
    }
    assert!(
        grep_tree(&c.path("secrets"), ZT_TOKEN),
        "grep finds the token where it is"
    );
    for node in ["pi-1", "pi-2"] {
        let raw = dir.join(format!("{node}.img.zst.raw"));
        assert!(raw.exists(), "{}", raw.display());
        fs::remove_file(raw).unwrap();
    }

    // A rebuild is the same member and posts the same thing.
    central.clear_log();
    let args = zerotier_build_args(&c, &img, &["--node", "pi-1"], &dir.join("pi-1.img"), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = c.imagegen(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    let relog = central.log();
    assert_eq!(relog.len(), 1, "{relog:?}");
    assert_eq!(relog[0].path, log[0].path);
    assert_eq!(relog[0].json(), log[0].json());
    assert!(!stderr(&again).contains(ZT_TOKEN));

    // --offline: no request, one line naming the members to approve by hand.
    central.clear_log();
    let args = zerotier_build_args(&c, &img, &["--all"], &c.path("offline"), &["--offline"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let offline = c.imagegen(&args);
    assert!(offline.status.success(), "{}", stderr(&offline));
    assert!(central.log().is_empty(), "{:?}", central.log());
    let offline_err = stderr(&offline);
    let lines: Vec<&str> = offline_err
        .lines()
        .filter(|l| l.contains("not pre-authorized"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", stderr(&offline));
    assert!(
        lines[0].contains("--offline") && lines[0].contains("by hand"),
        "{}",
        lines[0]
    );
    for (node, address) in ["pi-1", "pi-2"].iter().zip(&addresses) {
        assert!(
            lines[0].contains(&format!("{address} ({node})")),
            "{}",
            lines[0]
        );
    }
    // A generic image (no node, no member) posts nothing; personalizing it into pi-1 at flash
    // time posts what build posted, and with --offline nothing.
    central.clear_log();
    let generic = c.out_dir().join("generic.img");
    let args = zerotier_build_args(&c, &img, &["--board", "rpi4"], &generic, &["--no-secrets"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.imagegen(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(central.log().is_empty(), "{:?}", central.log());
    let (config, state) = (c.config(), c.path("state"));
    let personalize = |extra: &[&str]| {
        let mut a = vec![
            "personalize",
            s(&generic),
            "-c",
            s(&config),
            "--node",
            "pi-1",
            "--state-dir",
            s(&state),
        ];
        a.extend(extra);
        let out = c.imagegen(&a);
        assert!(out.status.success(), "personalize: {}", stderr(&out));
        assert!(!stderr(&out).contains(ZT_TOKEN));
        out
    };
    personalize(&[]);
    let plog = central.log();
    assert_eq!(plog.len(), 1, "{plog:?}");
    assert_eq!(
        (&plog[0].path, plog[0].json()),
        (&log[0].path, log[0].json())
    );
    central.clear_log();
    let out = personalize(&["--offline"]);
    assert!(central.log().is_empty(), "{:?}", central.log());
    assert!(
        stderr(&out).contains("not pre-authorized (--offline)"),
        "{}",
        stderr(&out)
    );
    fs::remove_file(&generic).unwrap();
    for f in entries(&c.out_dir()) {
        fs::remove_file(c.out_dir().join(f)).unwrap();
    }

    // --offline never downloads: a base the cache does not have is an error naming the flag.
    let mut args = zerotier_build_args(
        &c,
        &img,
        &["--node", "pi-1"],
        &c.out_dir().join("x.img"),
        &["--offline"],
    );
    let base = args.iter().position(|a| a == "--base").unwrap() + 1;
    args[base] = "http://127.0.0.1:9/rpios.img.xz".into();
    let e = c.build_fails_with(&args, "--offline");
    assert!(e.contains("not in the cache"), "{e}");
}

/// The API's refusals, through the real CLI: a wrong token (401) names the token file and what
/// to do, an unknown network (404) names network_id; each is one error line without the token,
/// exit 1, and no image (the members are authorized before anything is built). `check` wants
/// the token file non-empty and private, and api_url a URL.
#[test]
fn zerotier_api_refusals_are_clear_and_leave_no_image() {
    let central = Central::start("the-right-token", &["8056c2e21c0000ff"]);
    let c = zerotier_cluster(&central.url());
    let img = common::fixture("rpios-trixie");
    let args = zerotier_build_args(
        &c,
        &img,
        &["--node", "pi-1"],
        &c.out_dir().join("pi-1.img"),
        &[],
    );
    let e = c.build_fails_with(&args, "HTTP 401");
    assert!(
        e.contains("secrets/zt-token") && e.contains("API token"),
        "{e}"
    );
    assert!(e.contains("Unauthorized"), "the API's own words: {e}");
    assert!(!e.contains(ZT_TOKEN), "{e}");
    assert_eq!(central.log().len(), 1);

    fs::write(c.path("secrets/zt-token"), "the-right-token\n").unwrap();
    let e = c.build_fails_with(&args, "HTTP 404");
    assert!(e.contains("network_id") && e.contains(ZT_NETWORK), "{e}");
    assert!(e.contains("Network not found"), "{e}");

    // check: the token file's permissions, its content, and api_url.
    let check = |c: &Cluster| c.imagegen(&["check", "--config", s(&c.config())]);
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(
        c.path("secrets/zt-token"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = check(&c);
    assert!(out.status.success(), "{}", stderr(&out));
    let w: Vec<String> = warnings(&out)
        .into_iter()
        .filter(|w| w.contains("zerotier"))
        .collect();
    assert!(
        w.len() == 1 && w[0].contains("zerotier api_token_file") && w[0].contains("chmod 600"),
        "{}",
        stderr(&out)
    );
    fs::set_permissions(
        c.path("secrets/zt-token"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::write(c.path("secrets/zt-token"), "\n").unwrap();
    let e = fails(check(&c), "zerotier api_token_file");
    assert!(e.contains("is empty"), "{e}");
    fs::remove_file(c.path("secrets/zt-token")).unwrap();
    fails(check(&c), "zerotier api_token_file");
    let text = fs::read_to_string(c.config()).unwrap();
    fs::write(
        c.config(),
        text.replace(&central.url(), "api.zerotier.com").replace(
            "vpn_address = \"10.147.17.21\"",
            "vpn_address = \"10.147.17\"",
        ),
    )
    .unwrap();
    fs::write(c.path("secrets/zt-token"), "x\n").unwrap();
    let out = check(&c);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("api_url \"api.zerotier.com\""), "{err}");
    assert!(
        err.contains("vpn_address \"10.147.17\" is not an IP address"),
        "{err}"
    );
}
