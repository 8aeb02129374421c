//! The emitted files checked by the tools that will consume them: sha256sum, xz, zstd, bmaptool,
//! qemu-img, cmp, stat.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imagegen::emit::{self, BuildRecord, EmitError, EmitOptions, Manifest, StreamSource};
use imagegen::image::FreeSpace;

/// Runs a tool, failing the test with the apt package to install when it is missing.
fn run(dir: &Path, program: &str, args: &[&str], package: &str) -> Output {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): apt-get install {package}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn sh(dir: &Path, script: &str) -> Output {
    run(dir, "sh", &["-ec", script], "dash")
}

/// A 40 MiB + 512 byte sparse raw image (small data, so xz stays quick in debug builds), sized and filled like a small disk image: random
/// data (incompressible), text (compressible), a region of written zeros, data in the last,
/// partial block, and holes everywhere else. Data spans several 8 MiB xz blocks.
fn raw_image(dir: &Path) -> PathBuf {
    sh(
        dir,
        "truncate -s $((40 * 1048576 + 512)) raw.img
         head -c 60000 /dev/urandom | dd of=raw.img conv=notrunc bs=4096 seek=0 status=none
         seq 1 60000 | dd of=raw.img conv=notrunc bs=1M seek=3 status=none
         head -c 20000 /dev/urandom | dd of=raw.img conv=notrunc bs=1 seek=10000123 status=none
         dd if=/dev/zero of=raw.img conv=notrunc bs=1M seek=12 count=3 status=none
         seq 5 50000 | dd of=raw.img conv=notrunc bs=1M seek=20 status=none
         printf 'end of disk' | dd of=raw.img conv=notrunc bs=1 seek=$((40 * 1048576 + 100)) status=none",
    );
    dir.join("raw.img")
}

fn build() -> BuildRecord {
    BuildRecord {
        imagegen_version: env!("CARGO_PKG_VERSION").into(),
        board: "test".into(),
        ..BuildRecord::default()
    }
}

fn emit_with(raw: &Path, out: &Path, threads: Option<u32>) -> Manifest {
    emit::emit(
        raw,
        out,
        build(),
        &EmitOptions {
            threads,
            ..EmitOptions::default()
        },
    )
    .unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sha256sum(dir: &Path, file: &str) -> String {
    let out = run(dir, "sha256sum", &[file], "coreutils");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// The checks every format must pass: checksum file, bmap copy back to the raw image, and the
/// manifest's raw hash against sha256sum's.
fn check_common(dir: &Path, name: &str, manifest: &Manifest) {
    let sums = fs::read_to_string(dir.join(format!("{name}.sha256"))).unwrap();
    assert!(sums.ends_with(&format!("  {name}\n")), "{sums}");
    run(
        dir,
        "sha256sum",
        &["-c", &format!("{name}.sha256")],
        "coreutils",
    );

    let copy = format!("{name}.copy");
    run(
        dir,
        "bmaptool",
        &["copy", "--bmap", &format!("{name}.bmap"), name, &copy],
        "bmap-tools",
    );
    run(dir, "cmp", &[&copy, "raw.img"], "diffutils");
    fs::remove_file(dir.join(&copy)).unwrap();

    assert_eq!(manifest.output.raw_sha256, sha256sum(dir, "raw.img"));
    assert_eq!(manifest.output.sha256, sha256sum(dir, name));
    assert_eq!(
        manifest.output.raw_size,
        fs::metadata(dir.join("raw.img")).unwrap().len()
    );
    let on_disk: Manifest = serde_json::from_str(
        &fs::read_to_string(dir.join(format!("{name}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(&on_disk, manifest);
}

#[test]
fn raw_output_is_sparse_and_flashable_with_bmaptool() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    let manifest = emit_with(&raw, &d.join("n.img"), None);
    check_common(d, "n.img", &manifest);
    run(d, "cmp", &["n.img", "raw.img"], "diffutils");

    // Allocated 512-byte sectors: about 0.9 MB of data is allocated out of 40 MiB, and the
    // 3 MiB of written zeros became a hole.
    let stat = sh(d, "stat -c %b n.img; stat -c %b raw.img");
    let text = String::from_utf8_lossy(&stat.stdout);
    let bytes: Vec<u64> = text
        .lines()
        .map(|l| l.parse::<u64>().unwrap() * 512)
        .collect();
    assert!(bytes[0] < 2 << 20, "{bytes:?}");
    assert!(bytes[0] + (5 << 19) < bytes[1], "{bytes:?}");
}

#[test]
fn xz_output_passes_xz_and_bmaptool() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    let manifest = emit_with(&raw, &d.join("n.img.xz"), None);
    check_common(d, "n.img.xz", &manifest);
    run(d, "xz", &["-t", "n.img.xz"], "xz-utils");
    sh(d, "xz -dc n.img.xz | cmp - raw.img");
    // Several independent blocks (multithreaded encoding), each checked with CRC64.
    let list = sh(d, "xz -lvv n.img.xz");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("CRC64"), "{text}");
    let blocks = text.lines().find(|l| l.trim_start().starts_with("Blocks:"));
    assert_eq!(
        blocks.map(|l| l.split_whitespace().nth(1)),
        Some(Some("6")),
        "{text}"
    );
}

#[test]
fn zstd_output_passes_zstd_and_bmaptool() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    let manifest = emit_with(&raw, &d.join("n.img.zst"), None);
    check_common(d, "n.img.zst", &manifest);
    run(d, "zstd", &["-q", "-t", "n.img.zst"], "zstd");
    sh(d, "zstd -qdc n.img.zst | cmp - raw.img");
    let list = sh(d, "zstd -lv n.img.zst");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("Check: XXH64"), "{text}");
    assert!(text.contains("41943552 B"), "{text}");
}

/// Allocated bytes of a file in `dir` (`stat %b` counts 512-byte units).
fn allocated(dir: &Path, file: &str) -> u64 {
    let out = run(dir, "stat", &["-c", "%b", file], "coreutils");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u64>()
        .unwrap()
        * 512
}

#[test]
fn qcow2_output_passes_qemu_img_and_holds_the_raw_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    let manifest = emit_with(&raw, &d.join("n.qcow2"), None);
    run(d, "sha256sum", &["-c", "n.qcow2.sha256"], "coreutils");
    assert_eq!(manifest.output.sha256, sha256sum(d, "n.qcow2"));
    assert_eq!(manifest.output.raw_sha256, sha256sum(d, "raw.img"));
    assert_eq!(manifest.output.format, emit::Format::Qcow2);
    let on_disk: Manifest =
        serde_json::from_str(&fs::read_to_string(d.join("n.qcow2.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, manifest);
    // No block map: bmaptool would write the container's bytes to a card.
    assert_eq!(
        entries(d),
        [
            "n.qcow2",
            "n.qcow2.manifest.json",
            "n.qcow2.sha256",
            "raw.img"
        ]
    );

    let check = run(
        d,
        "qemu-img",
        &["check", "--output=json", "n.qcow2"],
        "qemu-utils",
    );
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(check["check-errors"], 0, "{check}");
    assert!(check.get("leaks").is_none(), "{check}");
    assert!(check.get("corruptions").is_none(), "{check}");
    run(
        d,
        "qemu-img",
        &["compare", "-f", "raw", "-F", "qcow2", "raw.img", "n.qcow2"],
        "qemu-utils",
    );
    let info = run(
        d,
        "qemu-img",
        &["info", "--output=json", "n.qcow2"],
        "qemu-utils",
    );
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["format-specific"]["data"]["compat"], "1.1", "{info}");
    assert_eq!(info["virtual-size"], manifest.output.raw_size, "{info}");
    assert_eq!(info["cluster-size"], 65536, "{info}");

    // Sparse: the data (about 0.9 MB in 64 KiB clusters, the 3 MiB of written zeros left out)
    // and a few metadata clusters, out of a 40 MiB disk.
    let size = fs::metadata(d.join("n.qcow2")).unwrap().len();
    assert!(size < 2 << 20, "{size}");
    assert!(allocated(d, "n.qcow2") <= size);
    assert!(allocated(d, "raw.img") > size + (5 << 19));
}

#[test]
fn output_does_not_depend_on_threads_or_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    for ext in ["img", "img.xz", "img.zst", "qcow2"] {
        let one = emit_with(&raw, &d.join(format!("one.{ext}")), Some(1));
        let two = emit_with(&raw, &d.join(format!("two.{ext}")), Some(2));
        run(
            d,
            "cmp",
            &[&format!("one.{ext}"), &format!("two.{ext}")],
            "diffutils",
        );
        if ext != "qcow2" {
            run(
                d,
                "cmp",
                &[&format!("one.{ext}.bmap"), &format!("two.{ext}.bmap")],
                "diffutils",
            );
        }
        assert_eq!(one.output.sha256, two.output.sha256);
    }
}

/// A reader that fails after `left` bytes, like a disk that goes bad mid-read.
struct FailingReader {
    left: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::other("injected read failure"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(0xa5);
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn failed_emit_leaves_no_output_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("old.img.zst"), b"previous build").unwrap();
    for name in ["n.img", "n.img.xz", "n.img.zst", "n.qcow2", "old.img.zst"] {
        let source = StreamSource::new(FailingReader { left: 5 << 20 }, 64 << 20);
        let err = emit::emit_from(
            source,
            &FreeSpace::none(),
            Path::new("failing"),
            &d.join(name),
            build(),
            &EmitOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, EmitError::Read { .. }), "{err}");
        assert!(err.to_string().contains("injected read failure"), "{err}");
        assert_eq!(entries(d), ["old.img.zst"], "after {name}");
    }
    assert_eq!(fs::read(d.join("old.img.zst")).unwrap(), b"previous build");

    // An output directory that does not exist: a write error naming the output.
    let raw = raw_image(d);
    let missing = d.join("gone/n.img.zst");
    let err = emit::emit(&raw, &missing, build(), &EmitOptions::default()).unwrap_err();
    assert!(matches!(err, EmitError::Write { .. }), "{err}");
    assert!(err.to_string().contains("gone/n.img.zst"), "{err}");
    assert_eq!(entries(d), ["old.img.zst", "raw.img"]);
}

#[test]
fn unknown_extension_is_refused_with_the_accepted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    for name in ["n.img.gz", "n.raw", "n.xz"] {
        let err = emit::emit(&raw, &d.join(name), build(), &EmitOptions::default()).unwrap_err();
        assert!(matches!(err, EmitError::UnknownFormat(_)), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(".img, .img.xz, .img.zst, .qcow2"),
            "{message}"
        );
        assert!(message.contains(name), "{message}");
    }
    assert_eq!(entries(d), ["raw.img"]);
}

/// A build's working copy beside a `.img` OUT becomes OUT: the same bytes, sidecars and
/// manifest as the copying emit (compared byte for byte), its written zeros made holes again,
/// flashable with bmaptool, and nothing left under the working copy's name. Elsewhere, or for
/// another format, it is copied as before and left for the caller.
#[test]
fn work_copy_becomes_a_raw_output_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    for sub in ["copied", "in-place", "elsewhere", "elsewhere/work"] {
        fs::create_dir(d.join(sub)).unwrap();
    }
    emit_with(&raw, &d.join("copied/n.img"), None);
    // Written zeros, as a build's edits may leave them: cp without --sparse keeps them.
    let work = d.join("in-place/.n.img.work");
    run(
        d,
        "cp",
        &["--sparse=never", "raw.img", "in-place/.n.img.work"],
        "coreutils",
    );
    let in_place = emit::emit_work_copy(
        &work,
        &d.join("in-place/n.img"),
        build(),
        &EmitOptions::default(),
    )
    .unwrap();
    for file in ["n.img", "n.img.sha256", "n.img.bmap", "n.img.manifest.json"] {
        run(
            d,
            "cmp",
            &[&format!("copied/{file}"), &format!("in-place/{file}")],
            "diffutils",
        );
    }
    assert_eq!(
        entries(&d.join("in-place")),
        ["n.img", "n.img.bmap", "n.img.manifest.json", "n.img.sha256"]
    );
    fs::copy(&raw, d.join("in-place/raw.img")).unwrap();
    check_common(&d.join("in-place"), "n.img", &in_place);
    let (copied, placed) = (allocated(d, "copied/n.img"), allocated(d, "in-place/n.img"));
    assert!(
        placed < 2 << 20 && placed <= copied + (64 << 10),
        "{copied} {placed}"
    );
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode("in-place/n.img"), mode("copied/n.img"));

    // Private: owner-only, as the copying emit makes it.
    run(d, "cp", &["raw.img", "in-place/.p.img.work"], "coreutils");
    let private = EmitOptions {
        private: true,
        ..EmitOptions::default()
    };
    emit::emit_work_copy(
        &d.join("in-place/.p.img.work"),
        &d.join("in-place/p.img"),
        build(),
        &private,
    )
    .unwrap();
    assert_eq!(mode("in-place/p.img"), 0o600);
    run(d, "cmp", &["raw.img", "in-place/p.img"], "diffutils");

    // Another directory, and another format: copied, the working copy left as it was.
    let work = d.join("elsewhere/work/.n.img.work");
    fs::copy(&raw, &work).unwrap();
    emit::emit_work_copy(
        &work,
        &d.join("elsewhere/n.img"),
        build(),
        &EmitOptions::default(),
    )
    .unwrap();
    emit::emit_work_copy(
        &work,
        &d.join("elsewhere/work/n.img.zst"),
        build(),
        &EmitOptions::default(),
    )
    .unwrap();
    run(
        d,
        "cmp",
        &["raw.img", "elsewhere/work/.n.img.work"],
        "diffutils",
    );
    run(d, "cmp", &["copied/n.img", "elsewhere/n.img"], "diffutils");
}

/// When a sidecar cannot be put in place, the in-place emit fails before OUT appears and the
/// working copy is still there with its content.
#[test]
fn failed_in_place_emit_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = raw_image(d);
    let work = d.join(".n.img.work");
    fs::copy(&raw, &work).unwrap();
    // A directory where the checksum file must go: its rename fails (EISDIR), also as root.
    fs::create_dir(d.join("n.img.sha256")).unwrap();
    fs::write(d.join("n.img.sha256/x"), b"").unwrap();
    let err = emit::emit_work_copy(&work, &d.join("n.img"), build(), &EmitOptions::default())
        .unwrap_err();
    assert!(matches!(err, EmitError::Write { .. }), "{err}");
    assert_eq!(entries(d), [".n.img.work", "n.img.sha256", "raw.img"]);
    run(d, "cmp", &["raw.img", ".n.img.work"], "diffutils");
}
