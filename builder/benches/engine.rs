//! The image engine against its floor, measured side by side in one run:
//!
//!     cargo bench -p imagegen --bench engine -- BASE.img ROOT_START_SECTOR [ROUNDS]
//!
//! BASE.img is a whole-disk image with an ext4 root at ROOT_START_SECTOR and a FAT partition
//! mounted at /boot/efi (what `ci/bench` makes). Each round copies it with
//! `cp --sparse=always`, times `e2fsck -fn` of the root on the copy (the floor: the least any
//! tool must do to trust the image), then times `Image::open` + `apply` of a batch of 50 edits
//! on another copy. The edit runs in place, so the edit is compared with the floor's check,
//! and cp + edit with cp + check. Best of the rounds. The last edited copy must check clean.

use imagegen::fs::{Content, Meta, Op};
use imagegen::image::Image;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EPOCH: i64 = 1_750_000_000;

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: 0,
        gid: 0,
        mtime: EPOCH,
    }
}

/// `len` bytes that do not compress away (an LCG seeded by `seed`).
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// 50 edits: 22 file writes (three of 2, 4 and 8 MiB, one on the FAT partition), 10 mkdirs,
/// 8 symlinks, 8 removes of files written earlier in the batch or present in the base, and
/// 2 metadata changes.
fn batch() -> Vec<Op> {
    let mut ops = Vec::with_capacity(50);
    for d in 0..10 {
        ops.push(Op::Mkdir {
            path: format!("/opt/bench/d{d}/sub"),
            meta: meta(0o755),
            parents: true,
        });
    }
    for (i, mib) in [2usize, 4, 8].into_iter().enumerate() {
        ops.push(Op::WriteFile {
            path: format!("/opt/bench/d{i}/big{mib}.bin"),
            content: Content::Bytes(noise(mib << 20, i as u32 + 1)),
            meta: meta(0o644),
        });
    }
    for f in 0..18 {
        ops.push(Op::WriteFile {
            path: format!("/etc/bench-{f:02}.conf"),
            content: Content::Bytes(format!("# bench file {f}\nkey = {f}\n").into_bytes()),
            meta: meta(0o644),
        });
    }
    ops.push(Op::WriteFile {
        path: "/boot/efi/bench.txt".into(),
        content: Content::Bytes(b"on the FAT partition\n".to_vec()),
        meta: meta(0o644),
    });
    for l in 0..8 {
        ops.push(Op::Symlink {
            path: format!("/opt/bench/d{l}/link"),
            target: format!("/etc/bench-{l:02}.conf"),
            meta: meta(0o777),
        });
    }
    for r in 0..4 {
        ops.push(Op::Remove {
            path: format!("/etc/bench-{:02}.conf", 10 + r),
        });
        ops.push(Op::Remove {
            path: format!("/etc/fixture-{:03}.conf", 100 + r),
        });
    }
    ops.push(Op::SetMeta {
        path: "/opt/bench".into(),
        mode: Some(0o750),
        owner: None,
    });
    ops.push(Op::SetMeta {
        path: "/etc/hostname".into(),
        mode: None,
        owner: Some((0, 0)),
    });
    assert_eq!(ops.len(), 50);
    ops
}

fn run(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

fn cp(from: &Path, to: &Path) -> Duration {
    let _ = std::fs::remove_file(to);
    run(Command::new("cp").arg("--sparse=always").arg(from).arg(to))
}

fn e2fsck(img: &Path, start: u64) -> Duration {
    let target = format!("{}?offset={}", img.display(), start * 512);
    run(Command::new("e2fsck").args(["-fn", &target]))
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [base, start, rest @ ..] = args.as_slice() else {
        panic!("usage: cargo bench --bench engine -- BASE.img ROOT_START_SECTOR [ROUNDS]");
    };
    let base = PathBuf::from(base);
    let start: u64 = start.parse().expect("ROOT_START_SECTOR is a number");
    let rounds: usize = rest.first().map_or(3, |r| r.parse().expect("ROUNDS"));
    let dir = tempfile::tempdir_in(base.parent().unwrap_or(Path::new("."))).unwrap();
    let work = dir.path().join("work.img");
    let ops = batch();

    let (mut t_cp, mut t_fsck, mut t_edit) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        t_cp = t_cp.min(cp(&base, &work));
        t_fsck = t_fsck.min(e2fsck(&work, start));
        cp(&base, &work);
        let begin = Instant::now();
        let mut image = Image::open(&work).unwrap();
        image.apply(&ops, EPOCH).unwrap();
        drop(image);
        t_edit = t_edit.min(begin.elapsed());
        eprintln!("engine: round {} of {rounds} done", round + 1);
    }
    // The edited image must still be sound, or the timing means nothing.
    e2fsck(&work, start);

    let s = |d: Duration| d.as_secs_f64();
    println!(
        "engine: {} ({} MiB apparent), {} ops, best of {rounds}",
        base.display(),
        std::fs::metadata(&base).unwrap().len() >> 20,
        ops.len()
    );
    println!("cp --sparse=always        {:>7.2} s", s(t_cp));
    println!("e2fsck -fn (root)         {:>7.2} s", s(t_fsck));
    println!("imagegen open+apply       {:>7.2} s", s(t_edit));
    println!(
        "ratio edit / e2fsck {:.2}x; (cp + edit) / (cp + e2fsck) {:.2}x",
        s(t_edit) / s(t_fsck),
        (s(t_cp) + s(t_edit)) / (s(t_cp) + s(t_fsck))
    );
}
