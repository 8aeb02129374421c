//! Unpack throughput against `xz -dc -T0`, measured side by side in one run.
//!
//!     cargo bench -p imagegen --bench unpack -- path/to/image.img.xz
//!
//! Each round times, in turn: `xz -dc -T0` to /dev/null, `xz -dc -T0` to a file followed by
//! an fsync (what `unpack` does before the cache may trust the file), and `unpack`. The best
//! of the rounds is reported, as MB/s of uncompressed output. Then the working copy of the
//! unpacked image: `cp --sparse=always` against `copy_sparse`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;

fn xz_to(input: &Path, out: Stdio) -> Duration {
    let start = Instant::now();
    let status = Command::new("xz")
        .args(["-dc", "-T0"])
        .arg(input)
        .stdout(out)
        .status()
        .expect("cannot run xz: install the xz-utils package");
    assert!(status.success(), "xz -dc failed");
    start.elapsed()
}

fn main() {
    let input = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .expect("usage: cargo bench --bench unpack -- IMAGE.img.xz");
    let dir = tempfile::tempdir_in(input.parent().unwrap_or(Path::new("."))).unwrap();
    let out = dir.path().join("out.img");
    let copy = dir.path().join("copy.img");
    let (mut null, mut file, mut ours) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let (mut cp, mut copy_ours) = (Duration::MAX, Duration::MAX);
    let mut size = 0;
    for round in 0..ROUNDS {
        null = null.min(xz_to(
            &input,
            Stdio::from(File::create("/dev/null").unwrap()),
        ));

        let _ = fs::remove_file(&out);
        let start = Instant::now();
        xz_to(&input, Stdio::from(File::create(&out).unwrap()));
        File::open(&out).unwrap().sync_all().unwrap();
        file = file.min(start.elapsed());
        fs::remove_file(&out).unwrap();

        let start = Instant::now();
        let (_, n) = imagegen::fetch::unpack(&input, &out).unwrap();
        ours = ours.min(start.elapsed());
        size = n;

        let start = Instant::now();
        let status = Command::new("cp")
            .arg("--sparse=always")
            .args([&out, &copy])
            .status()
            .unwrap();
        assert!(status.success());
        cp = cp.min(start.elapsed());
        fs::remove_file(&copy).unwrap();
        let start = Instant::now();
        imagegen::fetch::copy_sparse(&out, &copy).unwrap();
        copy_ours = copy_ours.min(start.elapsed());
        fs::remove_file(&copy).unwrap();
        fs::remove_file(&out).unwrap();
        eprintln!("round {} done", round + 1);
    }
    let rate = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
    println!(
        "input {} ({} MB compressed, {} MB raw), best of {ROUNDS}",
        input.display(),
        fs::metadata(&input).unwrap().len() / 1_000_000,
        size / 1_000_000
    );
    println!(
        "xz -dc -T0 > /dev/null        {:>7.2} s {:>8.1} MB/s",
        null.as_secs_f64(),
        rate(null)
    );
    println!(
        "xz -dc -T0 > file + fsync     {:>7.2} s {:>8.1} MB/s",
        file.as_secs_f64(),
        rate(file)
    );
    println!(
        "imagegen unpack (sparse+fsync){:>7.2} s {:>8.1} MB/s",
        ours.as_secs_f64(),
        rate(ours)
    );
    println!("cp --sparse=always            {:>7.2} s", cp.as_secs_f64());
    println!(
        "imagegen copy_sparse          {:>7.2} s",
        copy_ours.as_secs_f64()
    );
    println!(
        "ratio: {:.0}% of xz to /dev/null, {:.0}% of xz to a file",
        100.0 * null.as_secs_f64() / ours.as_secs_f64(),
        100.0 * file.as_secs_f64() / ours.as_secs_f64()
    );
}
