//! Downloads against a loopback HTTP server, and unpacking checked with the real tools:
//! images are compressed by `xz`, `zstd`, `gzip` and `qemu-img`, hashed by `sha256sum`, and
//! compared by `cmp`.

mod support {
    pub mod http_server;
}

use imagegen::fetch::{
    Algorithm, FetchError, FetchOptions, Format, Source, Verification, copy_sparse, fetch_base,
    unpack,
};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use support::http_server::{Fault, Server};

/// Runs a tool, failing the test with the Debian package to install when it is missing.
fn run(package: &str, cmd: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} ({e}): install the {package} package"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256sum(path: &Path) -> String {
    let out = run("coreutils", "sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8(out).unwrap()[..64].to_string()
}

/// Byte-for-byte equality, by `cmp`.
fn same_content(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .args([a, b])
        .status()
        .expect("cannot run cmp: install the diffutils package")
        .success()
}

/// Deterministic incompressible bytes (xorshift), different per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A mostly-empty 24 MiB disk image: a few data regions, some unaligned, the rest zeros
/// (written as zeros, not holes, so the unpackers must find them).
fn disk_image(path: &Path) {
    let mut data = vec![0u8; 24 << 20];
    data[..512].copy_from_slice(&noise(512, 1));
    data[1 << 20..2 << 20].copy_from_slice(&noise(1 << 20, 2));
    let text = b"imagegen fetch test: some compressible text\n".repeat(20_000);
    data[10 << 20..(10 << 20) + text.len()].copy_from_slice(&text);
    data[(20 << 20) + 123..(20 << 20) + 4000].copy_from_slice(&noise(3877, 3));
    let end = data.len();
    data[end - 100..].copy_from_slice(&noise(100, 4));
    fs::write(path, data).unwrap();
}

/// Bytes allocated on disk.
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

fn options(dir: &Path) -> FetchOptions {
    FetchOptions {
        cache_dir: dir.join("cache"),
        retries: 2,
        backoff: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_millis(400),
        insecure: false,
        offline: false,
    }
}

/// Files under the cache's sub-directory `sub`.
fn cache_files(opts: &FetchOptions, sub: &str) -> Vec<PathBuf> {
    match fs::read_dir(opts.cache_dir.join(sub)) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn assert_nothing_kept(opts: &FetchOptions) {
    for sub in [
        "blobs/sha256",
        "blobs/sha512",
        "raw/sha256",
        "partial",
        "tmp",
    ] {
        assert_eq!(cache_files(opts, sub), Vec::<PathBuf>::new(), "{sub}");
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    server: Server,
    body: Vec<u8>,
    sha: String,
}

/// A server with one 3 MiB file at /img/disk.img.xz (the name only; the content is noise)
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let body = noise(3 << 20, 7);
    let local = dir.path().join("body");
    fs::write(&local, &body).unwrap();
    let sha = sha256sum(&local);
    server.put("/img/disk.img.xz", &body, Some("\"v1\""));
    Fixture {
        dir,
        server,
        body,
        sha,
    }
}

const IMG: &str = "/img/disk.img.xz";

#[test]
fn verifies_against_each_vendor_checksum_format() {
    let f = fixture();
    let other = "0".repeat(64);
    let cases = [
        // Raspberry Pi OS: URL.sha256 with two spaces.
        (
            "/img/disk.img.xz.sha256",
            format!("{}  disk.img.xz\n", f.sha),
        ),
        // Armbian: URL.sha with one space.
        ("/img/disk.img.xz.sha", format!("{} disk.img.xz\n", f.sha)),
        // Ubuntu: SHA256SUMS with binary-mode stars and other files.
        (
            "/img/SHA256SUMS",
            format!("{other} *disk.img.gz\n{} *disk.img.xz\n", f.sha),
        ),
    ];
    for (i, (path, text)) in cases.iter().enumerate() {
        let opts = FetchOptions {
            cache_dir: f.dir.path().join(format!("cache{i}")),
            ..options(f.dir.path())
        };
        // Only this checksum file exists, so the lookup has to walk to it past 404s.
        for (p, _) in &cases {
            f.server.remove(p);
        }
        f.server.put(path, text.as_bytes(), None);
        let got = fetch_base(&Source::Url(f.server.url(IMG)), None, None, &opts).unwrap();
        assert_eq!(got.source_sha256, f.sha, "{path}");
        assert_eq!(
            got.verification,
            Verification::ChecksumFile(f.server.url(path))
        );
        assert_eq!(sha256sum(&got.source_path), f.sha);
        assert_eq!(fs::read(&got.raw_path).unwrap(), f.body);
    }
}

/// `sha512sum`'s own lines for `files` (name, content), as Debian's SHA512SUMS is made.
fn sha512sums(dir: &Path, files: &[(&str, &[u8])]) -> String {
    let sums = dir.join("sums");
    fs::create_dir_all(&sums).unwrap();
    let mut args = Vec::new();
    for (name, body) in files {
        fs::write(sums.join(name), body).unwrap();
        args.push(name.to_string());
    }
    let out = Command::new("sha512sum")
        .args(&args)
        .current_dir(&sums)
        .output()
        .expect("cannot run sha512sum: install the coreutils package");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn verifies_against_debians_sha512sums() {
    let f = fixture();
    let opts = options(f.dir.path());
    let sums = sha512sums(
        f.dir.path(),
        &[("disk.img.json", b"{}"), ("disk.img.xz", &f.body)],
    );
    let sha512 = sums
        .lines()
        .find_map(|l| l.strip_suffix("  disk.img.xz"))
        .unwrap()
        .to_string();
    f.server.put("/img/SHA512SUMS", sums.as_bytes(), None);
    // A cut transfer: the resumed attempt re-hashes the prefix in both digests.
    f.server.fault(IMG, Fault::CutAfter(1 << 20));
    let src = Source::Url(f.server.url(IMG));
    let got = fetch_base(&src, None, None, &opts).unwrap();
    assert_eq!(
        got.verification,
        Verification::ChecksumFile(f.server.url("/img/SHA512SUMS"))
    );
    // Keyed by sha256 all the same, whatever vouched for it.
    assert_eq!(got.source_sha256, f.sha);
    assert_eq!(sha256sum(&got.source_path), f.sha);
    assert_eq!(fs::read(&got.raw_path).unwrap(), f.body);
    assert_eq!(f.server.requests_for(IMG).len(), 2);
    // The sha256 files were looked for first, each once.
    let asked: Vec<_> = f.server.log().into_iter().map(|l| l.path).collect();
    assert_eq!(
        asked[..4],
        [
            "/img/disk.img.xz.sha256",
            "/img/disk.img.xz.sha",
            "/img/SHA256SUMS",
            "/img/SHA512SUMS"
        ]
    );
    assert_eq!(cache_files(&opts, "partial"), Vec::<PathBuf>::new());

    // The next build finds the blob by its sha512: only the checksum files are fetched.
    f.server.clear_log();
    let again = fetch_base(&src, None, None, &opts).unwrap();
    assert_eq!(again.source_path, got.source_path);
    assert!(f.server.requests_for(IMG).is_empty());

    // A board's checksum_url may name a SHA512SUMS too, for a local file as for a URL.
    let local = f.dir.path().join("sums/disk.img.xz");
    let sums_url = f.server.url("/img/SHA512SUMS");
    let got = fetch_base(&Source::File(local), None, Some(&sums_url), &opts).unwrap();
    assert_eq!(got.source_sha256, f.sha);
    assert_eq!(got.verification, Verification::ChecksumFile(sums_url));

    // One digit changed in the vendor's entry: refused, nothing kept.
    let fresh = FetchOptions {
        cache_dir: f.dir.path().join("cache-bad"),
        ..options(f.dir.path())
    };
    let flipped = format!(
        "{}{}",
        if sha512.starts_with('0') { '1' } else { '0' },
        &sha512[1..]
    );
    f.server.put(
        "/img/SHA512SUMS",
        sums.replace(&sha512, &flipped).as_bytes(),
        None,
    );
    let err = fetch_base(&src, None, None, &fresh).unwrap_err();
    match &err {
        FetchError::Mismatch {
            algorithm,
            expected,
            actual,
            ..
        } => {
            assert_eq!(*algorithm, Algorithm::Sha512);
            assert_eq!(expected, &flipped);
            assert_eq!(actual, &sha512);
        }
        e => panic!("expected a mismatch, got {e}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with("sha512 mismatch for "), "{msg}");
    assert!(msg.contains(&f.server.url("/img/SHA512SUMS")), "{msg}");
    assert_nothing_kept(&fresh);
}

#[test]
fn explicit_checksum_url_is_used_and_must_list_the_file() {
    let f = fixture();
    let opts = options(f.dir.path());
    f.server.put(
        "/sums/list",
        format!("{}  disk.img.xz\n", f.sha).as_bytes(),
        None,
    );
    f.server.put(
        "/sums/wrong",
        format!("{}  other.img\n", f.sha).as_bytes(),
        None,
    );
    let src = Source::Url(f.server.url(IMG));

    let err = fetch_base(&src, None, Some(&f.server.url("/sums/wrong")), &opts).unwrap_err();
    assert!(matches!(err, FetchError::NotListed { .. }), "{err}");
    assert!(f.server.requests_for(IMG).is_empty());

    let got = fetch_base(&src, None, Some(&f.server.url("/sums/list")), &opts).unwrap();
    assert_eq!(got.source_sha256, f.sha);
    // The given checksum URL is the only one consulted.
    assert!(f.server.requests_for("/img/disk.img.xz.sha256").is_empty());
}

#[test]
fn interrupted_transfer_resumes_with_range() {
    let f = fixture();
    let opts = options(f.dir.path());
    f.server.fault(IMG, Fault::CutAfter(1 << 20));
    let got = fetch_base(&Source::Url(f.server.url(IMG)), Some(&f.sha), None, &opts).unwrap();
    assert_eq!(sha256sum(&got.source_path), f.sha);

    let reqs = f.server.requests_for(IMG);
    assert_eq!(reqs.len(), 2);
    assert!(!reqs[0].headers.contains_key("range"));
    let range = &reqs[1].headers["range"];
    let from: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad Range {range}"));
    assert!(from > 0 && from <= 1 << 20, "resumed from {from}");
    assert_eq!(reqs[1].headers["if-range"], "\"v1\"");
    assert!(cache_files(&opts, "partial").is_empty());
}

#[test]
fn next_run_resumes_and_a_changed_file_restarts() {
    let f = fixture();
    let opts = FetchOptions {
        retries: 0,
        ..options(f.dir.path())
    };
    let src = Source::Url(f.server.url(IMG));
    f.server.fault(IMG, Fault::CutAfter(1 << 20));
    let err = fetch_base(&src, Some(&f.sha), None, &opts).unwrap_err();
    assert!(matches!(err, FetchError::Network { .. }), "{err}");
    assert!(err.to_string().contains("run again"), "{err}");
    assert_eq!(cache_files(&opts, "blobs/sha256"), Vec::<PathBuf>::new());

    // The vendor replaced the file: If-Range no longer matches, so the server sends it all.
    let new_body = noise(2 << 20, 99);
    let new_path = f.dir.path().join("new");
    fs::write(&new_path, &new_body).unwrap();
    let new_sha = sha256sum(&new_path);
    f.server.put(IMG, &new_body, Some("\"v2\""));
    let got = fetch_base(&src, Some(&new_sha), None, &opts).unwrap();
    assert!(same_content(&got.source_path, &new_path));
    let reqs = f.server.requests_for(IMG);
    assert_eq!(reqs[1].headers["if-range"], "\"v1\"");
}

#[test]
fn stalled_server_times_out_and_the_retry_resumes() {
    let f = fixture();
    let opts = options(f.dir.path());
    f.server
        .fault(IMG, Fault::StallAfter(256 << 10, Duration::from_secs(5)));
    let start = Instant::now();
    let got = fetch_base(&Source::Url(f.server.url(IMG)), Some(&f.sha), None, &opts).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(sha256sum(&got.source_path), f.sha);
    let reqs = f.server.requests_for(IMG);
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].headers.contains_key("range"));
}

#[test]
fn server_that_keeps_stalling_fails_within_the_timeout() {
    let f = fixture();
    let opts = FetchOptions {
        retries: 1,
        ..options(f.dir.path())
    };
    for _ in 0..3 {
        f.server
            .fault(IMG, Fault::StallAfter(1000, Duration::from_secs(5)));
    }
    let start = Instant::now();
    let err = fetch_base(&Source::Url(f.server.url(IMG)), Some(&f.sha), None, &opts).unwrap_err();
    let took = start.elapsed();
    // Two attempts of one 400 ms read time-out each, plus a 10 ms backoff.
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        matches!(err, FetchError::TimedOut { attempts: 2, .. }),
        "{err}"
    );
}

#[test]
fn wrong_checksum_fails_and_keeps_nothing() {
    let f = fixture();
    let opts = options(f.dir.path());
    let wrong = noise(32, 5)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    f.server.put(
        "/img/disk.img.xz.sha256",
        format!("{wrong}  disk.img.xz\n").as_bytes(),
        None,
    );
    let err = fetch_base(&Source::Url(f.server.url(IMG)), None, None, &opts).unwrap_err();
    match &err {
        FetchError::Mismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &f.sha);
        }
        e => panic!("expected a mismatch, got {e}"),
    }
    assert_nothing_kept(&opts);

    let err = fetch_base(&Source::Url(f.server.url(IMG)), Some(&wrong), None, &opts).unwrap_err();
    assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
    assert_nothing_kept(&opts);
}

#[test]
fn not_found_is_immediate_and_clear() {
    let f = fixture();
    let opts = FetchOptions {
        retries: 5,
        ..options(f.dir.path())
    };
    let url = f.server.url("/img/missing.img.xz");
    let err = fetch_base(&Source::Url(url.clone()), Some(&f.sha), None, &opts).unwrap_err();
    assert!(
        matches!(err, FetchError::NotFound { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&url));
    assert_eq!(f.server.requests_for("/img/missing.img.xz").len(), 1);
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let f = fixture();
    let opts = options(f.dir.path());
    f.server.fault(IMG, Fault::Status(503));
    f.server.fault(IMG, Fault::Status(429));
    let got = fetch_base(&Source::Url(f.server.url(IMG)), Some(&f.sha), None, &opts).unwrap();
    assert_eq!(sha256sum(&got.source_path), f.sha);
    assert_eq!(f.server.requests_for(IMG).len(), 3);

    let other = "/img/other.img";
    f.server.put(other, b"x", None);
    for _ in 0..10 {
        f.server.fault(other, Fault::Status(500));
    }
    let err = fetch_base(
        &Source::Url(f.server.url(other)),
        Some(&"ab".repeat(32)),
        None,
        &opts,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            FetchError::Http {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(f.server.requests_for(other).len(), 3);
}

#[test]
fn unverifiable_download_is_refused_unless_insecure() {
    let f = fixture();
    let opts = options(f.dir.path());
    let src = Source::Url(f.server.url(IMG));
    // An object store says 403 rather than 404 for a missing file.
    f.server.put("/img/SHA256SUMS", b"", None);
    f.server.fault("/img/SHA256SUMS", Fault::Status(403));
    let err = fetch_base(&src, None, None, &opts).unwrap_err();
    assert!(matches!(err, FetchError::Unverifiable { .. }), "{err}");
    assert!(err.to_string().contains("--insecure"), "{err}");
    // All four places were asked, and the image itself never.
    for p in [
        "/img/disk.img.xz.sha256",
        "/img/disk.img.xz.sha",
        "/img/SHA256SUMS",
        "/img/SHA512SUMS",
    ] {
        assert_eq!(f.server.requests_for(p).len(), 1, "{p}");
    }
    assert!(f.server.requests_for(IMG).is_empty());
    assert_nothing_kept(&opts);

    let insecure = FetchOptions {
        insecure: true,
        ..opts
    };
    let got = fetch_base(&src, None, None, &insecure).unwrap();
    assert_eq!(got.verification, Verification::Unverified);
    assert_eq!(got.source_sha256, f.sha);
}

#[test]
fn cache_hit_makes_no_request() {
    let f = fixture();
    let opts = options(f.dir.path());
    let src = Source::Url(f.server.url(IMG));
    let first = fetch_base(&src, Some(&f.sha), None, &opts).unwrap();
    f.server.clear_log();
    let second = fetch_base(&src, Some(&f.sha), None, &opts).unwrap();
    assert!(f.server.log().is_empty(), "{:?}", f.server.log());
    assert_eq!(first.raw_path, second.raw_path);

    // Without a pinned hash only the small checksum file is fetched.
    f.server.put(
        "/img/disk.img.xz.sha256",
        format!("{}  disk.img.xz\n", f.sha).as_bytes(),
        None,
    );
    f.server.clear_log();
    fetch_base(&src, None, None, &opts).unwrap();
    let paths: Vec<_> = f.server.log().into_iter().map(|l| l.path).collect();
    assert_eq!(paths, ["/img/disk.img.xz.sha256"]);
}

#[test]
fn concurrent_builds_share_the_cache() {
    let f = fixture();
    let opts = options(f.dir.path());
    let url = f.server.url(IMG);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (opts, url, sha) = (opts.clone(), url.clone(), f.sha.clone());
            std::thread::spawn(move || fetch_base(&Source::Url(url), Some(&sha), None, &opts))
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap().unwrap();
        assert_eq!(sha256sum(&got.raw_path), f.sha);
    }
    // The lock serialised them: the second found the first's blob.
    assert_eq!(f.server.requests_for(IMG).len(), 1);
}

/// The disk image and its compressed forms, made once per test run (xz is slow).
struct Packed {
    _dir: tempfile::TempDir,
    raw: PathBuf,
    variants: Vec<(Format, PathBuf)>,
}

fn packed() -> &'static Packed {
    static PACKED: OnceLock<Packed> = OnceLock::new();
    PACKED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.img");
        disk_image(&raw);
        let variants = compressed_variants(dir.path(), &raw);
        Packed {
            _dir: dir,
            raw,
            variants,
        }
    })
}

/// Compresses `raw` with each tool; returns (format, path) pairs.
fn compressed_variants(dir: &Path, raw: &Path) -> Vec<(Format, PathBuf)> {
    let raw_s = raw.to_str().unwrap();
    let xz = dir.join("disk.img.xz");
    let out = run(
        "xz-utils",
        "xz",
        &["-T2", "--block-size=1MiB", "-3", "-c", raw_s],
    );
    fs::write(&xz, out).unwrap();
    // Several blocks, so the multithreaded decoder has something to spread.
    let list = String::from_utf8(run(
        "xz-utils",
        "xz",
        &["--robot", "-l", xz.to_str().unwrap()],
    ))
    .unwrap();
    let blocks: u64 = list
        .lines()
        .find_map(|l| l.strip_prefix("totals\t"))
        .and_then(|t| t.split('\t').nth(1))
        .and_then(|n| n.parse().ok())
        .expect("xz --robot -l output");
    assert!(blocks > 1, "xz made {blocks} block(s)");

    let zst = dir.join("disk.img.zst");
    run(
        "zstd",
        "zstd",
        &["-q", "-3", raw_s, "-o", zst.to_str().unwrap()],
    );
    let gz = dir.join("disk.img.gz");
    fs::write(&gz, run("gzip", "gzip", &["-c", "-6", raw_s])).unwrap();
    let qcow = dir.join("disk.qcow2");
    run(
        "qemu-utils",
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            raw_s,
            qcow.to_str().unwrap(),
        ],
    );
    vec![
        (Format::Xz, xz),
        (Format::Zstd, zst),
        (Format::Gzip, gz),
        (Format::Qcow2, qcow),
    ]
}

#[test]
fn unpacks_every_format_to_an_identical_sparse_image() {
    let dir = tempfile::tempdir().unwrap();
    let raw = &packed().raw;
    for (format, packed) in &packed().variants {
        let (format, packed) = (*format, packed);
        let out = dir.path().join(format!("{format:?}.img"));
        let (found, size) = unpack(packed, &out).unwrap();
        assert_eq!(found, format);
        assert_eq!(size, fs::metadata(raw).unwrap().len());
        assert!(
            same_content(raw, &out),
            "{format:?} differs from the original"
        );
        // About 2 MiB of the 24 MiB hold data.
        assert!(
            allocated(&out) < 4 << 20,
            "{format:?}: {} bytes allocated",
            allocated(&out)
        );
    }
}

#[test]
fn trailing_garbage_and_truncation_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.img");
    let mut data = noise(64 << 10, 11);
    data.resize(1 << 20, 0);
    fs::write(&small, &data).unwrap();
    let small = small.to_str().unwrap();
    let variants = [
        (
            "xz",
            run(
                "xz-utils",
                "xz",
                &["-T2", "--block-size=256KiB", "-c", small],
            ),
        ),
        ("zstd", run("zstd", "zstd", &["-q", "-c", small])),
        ("gzip", run("gzip", "gzip", &["-c", small])),
    ];
    let packed = dir.path().join("packed");
    let out = dir.path().join("out.img");
    for (tool, data) in variants {
        fs::write(&packed, &data).unwrap();
        unpack(&packed, &out).unwrap_or_else(|e| panic!("{tool}: {e}"));

        let mut garbage = data.clone();
        garbage.extend_from_slice(b"GARBAGE!");
        fs::write(&packed, &garbage).unwrap();
        let err = unpack(&packed, &out).unwrap_err();
        assert!(matches!(err, FetchError::Corrupt { .. }), "{tool}: {err}");

        fs::write(&packed, &data[..data.len() - 10]).unwrap();
        let err = unpack(&packed, &out).unwrap_err();
        assert!(matches!(err, FetchError::Corrupt { .. }), "{tool}: {err}");
    }
}

#[test]
fn local_compressed_file_is_unpacked_once_into_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let raw = &packed().raw;
    let (_, xz) = &packed().variants[0];
    let opts = options(dir.path());
    let sha = sha256sum(xz);
    let got = fetch_base(&Source::File(xz.clone()), None, None, &opts).unwrap();
    assert_eq!(got.verification, Verification::LocalFile);
    assert_eq!(got.source_sha256, sha);
    assert_eq!(&got.source_path, xz);
    assert!(got.raw_path.starts_with(&opts.cache_dir));
    assert!(same_content(&got.raw_path, raw));
    let unpacked_at = fs::metadata(&got.raw_path).unwrap().modified().unwrap();

    let again = fetch_base(&Source::File(xz.clone()), Some(&sha), None, &opts).unwrap();
    assert_eq!(again.verification, Verification::Pinned);
    assert_eq!(again.raw_path, got.raw_path);
    assert_eq!(
        fs::metadata(&again.raw_path).unwrap().modified().unwrap(),
        unpacked_at
    );

    let wrong = "ab".repeat(32);
    let err = fetch_base(&Source::File(xz.clone()), Some(&wrong), None, &opts).unwrap_err();
    assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
    assert_eq!(sha256sum(xz), sha, "the user's file was left alone");
}

#[test]
fn working_copy_is_sparse_and_identical() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.img");
    disk_image(&raw);
    // Source written with zeros (not holes) and as a sparse copy: both must come out sparse.
    let sparse_src = dir.path().join("sparse.img");
    run(
        "coreutils",
        "cp",
        &[
            "--sparse=always",
            raw.to_str().unwrap(),
            sparse_src.to_str().unwrap(),
        ],
    );
    for src in [&raw, &sparse_src] {
        let copy = dir.path().join("copy.img");
        let size = copy_sparse(src, &copy).unwrap();
        assert_eq!(size, fs::metadata(&raw).unwrap().len());
        assert!(same_content(&raw, &copy));
        assert!(
            allocated(&copy) < 4 << 20,
            "{} bytes allocated",
            allocated(&copy)
        );
    }
}

#[test]
fn complete_partial_left_by_a_crash_is_checked_not_downloaded_again() {
    let f = fixture();
    let opts = options(f.dir.path());
    let url = f.server.url(IMG);
    // What a build that died between the last byte and the rename leaves behind.
    let key = imagegen::io::hash::sha256_hex(url.as_bytes());
    let partial = opts.cache_dir.join("partial");
    fs::create_dir_all(&partial).unwrap();
    fs::write(partial.join(format!("{key}.part")), &f.body).unwrap();
    let sidecar = format!(r#"{{"url":"{url}","etag":"\"v1\"","last_modified":null}}"#);
    fs::write(partial.join(format!("{key}.json")), sidecar).unwrap();

    let got = fetch_base(&Source::Url(url), Some(&f.sha), None, &opts).unwrap();
    assert_eq!(sha256sum(&got.source_path), f.sha);
    let reqs = f.server.requests_for(IMG);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].headers["range"], format!("bytes={}-", f.body.len()));
    assert!(cache_files(&opts, "partial").is_empty());
}

/// `--offline`: nothing is asked of any server; a URL is served from the cache as it was
/// verified when downloaded (pinned, or by its checksum file, which is not fetched again),
/// and what the cache does not have is a clear error naming the flag.
#[test]
fn offline_serves_only_what_the_cache_verified() {
    let f = fixture();
    let online = options(f.dir.path());
    let offline = FetchOptions {
        offline: true,
        ..options(f.dir.path())
    };
    let src = Source::Url(f.server.url(IMG));
    let missing = |e: FetchError| {
        assert!(matches!(e, FetchError::Offline { .. }), "{e}");
        assert!(e.to_string().contains("--offline"), "{e}");
    };
    missing(fetch_base(&src, None, None, &offline).unwrap_err());
    missing(fetch_base(&src, Some(&f.sha), None, &offline).unwrap_err());
    // A local file vouched for by a checksum URL needs that URL.
    let local = f.dir.path().join("body");
    missing(
        fetch_base(
            &Source::File(local.clone()),
            None,
            Some(&f.server.url("/img/SHA256SUMS")),
            &offline,
        )
        .unwrap_err(),
    );
    assert!(f.server.log().is_empty(), "{:?}", f.server.log());
    // A local file as given needs nothing.
    fetch_base(&Source::File(local), None, None, &offline).unwrap();

    let sums = "/img/disk.img.xz.sha256";
    f.server
        .put(sums, format!("{}  disk.img.xz\n", f.sha).as_bytes(), None);
    let first = fetch_base(&src, None, None, &online).unwrap();
    f.server.clear_log();
    let again = fetch_base(&src, None, None, &offline).unwrap();
    assert_eq!(again.raw_path, first.raw_path);
    assert_eq!(again.source_sha256, f.sha);
    assert_eq!(
        again.verification,
        Verification::ChecksumFile(f.server.url(sums))
    );
    let pinned = fetch_base(&src, Some(&f.sha), None, &offline).unwrap();
    assert_eq!(pinned.raw_path, first.raw_path);
    missing(fetch_base(&src, Some(&"ab".repeat(32)), None, &offline).unwrap_err());
    assert!(f.server.log().is_empty(), "{:?}", f.server.log());

    // An unverified (--insecure) download vouches for nothing offline.
    let other = "/img/other.img";
    f.server.put(other, b"not verified", None);
    let insecure = FetchOptions {
        insecure: true,
        ..options(f.dir.path())
    };
    fetch_base(&Source::Url(f.server.url(other)), None, None, &insecure).unwrap();
    missing(fetch_base(&Source::Url(f.server.url(other)), None, None, &offline).unwrap_err());
}

/// The hash of a local base is remembered by its stat (device, inode, size, mtime, ctime):
/// reused while nothing changed, computed again (and checked by `sha256sum`) after a touch, a
/// content change with the mtime put back, a replacement by another file, or with a record
/// that does not parse. A file changed within the last 2 s is never recorded.
#[test]
fn local_base_hash_is_remembered_until_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let base = dir.path().join("base.img");
    fs::write(&base, noise(1 << 20, 11)).unwrap();
    let fetch = || fetch_base(&Source::File(base.clone()), None, None, &opts).unwrap();
    let settle = || std::thread::sleep(Duration::from_millis(2100));
    let check = |got: &imagegen::fetch::Fetched, remembered: bool, what: &str| {
        assert_eq!(got.source_sha256, sha256sum(&base), "{what}");
        assert_eq!(got.source_sha256_remembered, remembered, "{what}");
    };

    // Just written: hashed, and not recorded, since a change within the same clock tick
    // would not show in its stat.
    check(&fetch(), false, "new file");
    check(&fetch(), false, "changed under 2 s ago");
    assert_eq!(cache_files(&opts, "local"), Vec::<PathBuf>::new());
    settle();
    check(&fetch(), false, "first hash once settled");
    assert_eq!(cache_files(&opts, "local").len(), 1);
    check(&fetch(), true, "unchanged");
    // A relative spelling of the same file finds the same record.
    let relative = fs::canonicalize(&base).unwrap();
    let got = fetch_base(&Source::File(relative), None, None, &opts).unwrap();
    assert!(got.source_sha256_remembered);

    // Touched: same content, new mtime.
    let file = fs::File::options().write(true).open(&base).unwrap();
    let mtime = file.metadata().unwrap().modified().unwrap();
    file.set_modified(mtime - Duration::from_secs(60)).unwrap();
    drop(file);
    check(&fetch(), false, "touched");

    // Content changed in place, same size, mtime put back: only the ctime tells.
    settle();
    check(&fetch(), false, "recorded again");
    check(&fetch(), true, "recorded again");
    let before = fs::metadata(&base).unwrap();
    let mtime = before.modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let file = fs::File::options().write(true).open(&base).unwrap();
        file.write_all_at(b"changed", 4096).unwrap();
        file.set_modified(mtime).unwrap();
    }
    let after = fs::metadata(&base).unwrap();
    assert_eq!(
        (after.ino(), after.len(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.len(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    check(&fetch(), false, "content changed, mtime restored");

    // Replaced by another file (new inode) of the same size and mtime.
    settle();
    check(&fetch(), false, "recorded again");
    check(&fetch(), true, "recorded again");
    let mtime = fs::metadata(&base).unwrap().modified().unwrap();
    let other = dir.path().join("other.img");
    fs::write(&other, noise(1 << 20, 12)).unwrap();
    fs::File::options()
        .write(true)
        .open(&other)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::rename(&other, &base).unwrap();
    check(&fetch(), false, "replaced");

    // A damaged record is ignored and rewritten, never trusted.
    settle();
    check(&fetch(), false, "recorded again");
    let records = cache_files(&opts, "local");
    assert_eq!(records.len(), 1);
    for garbage in [&b"{\"path\": 1"[..], b"", b"\x00\xff"] {
        fs::write(&records[0], garbage).unwrap();
        check(&fetch(), false, "damaged record");
    }
    check(&fetch(), true, "rewritten record");
    // A record whose digest is not a sha256 is not used either.
    let text = fs::read_to_string(&records[0]).unwrap();
    let sha = sha256sum(&base);
    fs::write(&records[0], text.replace(&sha, "not-a-sha256")).unwrap();
    check(&fetch(), false, "record with a bad digest");

    // A pinned sha256 is checked against the remembered one.
    check(&fetch(), true, "rewritten record");
    let wrong = "ab".repeat(32);
    let err = fetch_base(&Source::File(base.clone()), Some(&wrong), None, &opts).unwrap_err();
    assert!(matches!(err, FetchError::Mismatch { .. }), "{err}");
}
