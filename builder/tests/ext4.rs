//! The ext4 backend against real e2fsprogs: images made with mkfs.ext4 with the feature sets of
//! the vendor images, a hash-indexed /etc, and debugfs / e2fsck / dumpe2fs as oracles.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use imagegen::fs::ext4::{self, Ext4Fs};
use imagegen::fs::{Content, FileType, Filesystem, FsError, Meta, Op};

const MIB: u64 = 1024 * 1024;
const OFFSET: u64 = MIB;
const PART_LEN: u64 = 64 * MIB;
const EPOCH: i64 = 1_700_000_000;

/// Debian bookworm's mke2fs defaults (what Armbian and Debian cloud images carry).
const BOOKWORM: &str = "metadata_csum,64bit,^metadata_csum_seed,^orphan_file";
/// Raspberry Pi OS (pi-gen): `-O ^64bit,^huge_file`.
const RPI_OS: &str = "^64bit,^huge_file,^metadata_csum_seed,^orphan_file";
/// Debian trixie / Ubuntu 26.04 defaults.
const TRIXIE: &str = "metadata_csum,64bit,metadata_csum_seed,orphan_file";

fn tool(name: &str) -> Command {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(name).exists());
    assert!(
        found,
        "{name} is missing: install the e2fsprogs package (apt-get install e2fsprogs)"
    );
    let mut c = Command::new(name);
    c.env("LC_ALL", "C");
    c
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("spawn");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

fn dev(image: &Path) -> String {
    format!("{}?offset={OFFSET}", image.display())
}

fn debugfs(image: &Path, request: &str) -> String {
    run(tool("debugfs").args(["-R", request, &dev(image)])).1
}

fn debugfs_cat(image: &Path, path: &str) -> Vec<u8> {
    let out = tool("debugfs")
        .args(["-R", &format!("cat \"{path}\""), &dev(image)])
        .output()
        .expect("spawn");
    out.stdout
}

fn assert_fsck_clean(image: &Path) {
    let (ok, out) = run(tool("e2fsck").args(["-fn", &dev(image)]));
    assert!(ok, "e2fsck -fn is not clean:\n{out}");
}

fn dumpe2fs_field(image: &Path, field: &str) -> String {
    let (ok, out) = run(tool("dumpe2fs").args(["-h", &dev(image)]));
    assert!(ok, "{out}");
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field:?} in dumpe2fs output:\n{out}"))
        .trim()
        .to_string()
}

/// Deterministic bytes that are not all zero and do not repeat within a block.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    image: PathBuf,
}

const CHUNK: usize = 64 * 1024;

/// A freshly made partition as its non-zero 64 KiB chunks: made once per feature set, copied
/// into every test's image (writing 400 files and a full 64 MiB image per test is slow here).
type Template = Vec<(u64, Vec<u8>)>;

fn template(features: &'static str) -> &'static Template {
    static TEMPLATES: [(&str, OnceLock<Template>); 3] = [
        (BOOKWORM, OnceLock::new()),
        (RPI_OS, OnceLock::new()),
        (TRIXIE, OnceLock::new()),
    ];
    let (_, cell) = TEMPLATES
        .iter()
        .find(|(f, _)| *f == features)
        .expect("a known feature set");
    cell.get_or_init(|| make_template(features))
}

/// A 64 MiB ext4 partition with a hash-indexed /etc (400 entries), a file to replace and one
/// to remove.
fn make_template(features: &str) -> Template {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("root");
    let etc = staging.join("etc");
    fs::create_dir_all(&etc).unwrap();
    for i in 0..400 {
        fs::write(
            etc.join(format!("config-entry-number-{i:04}.conf")),
            format!("{i}\n"),
        )
        .unwrap();
    }
    fs::write(etc.join("hostname"), "raspberrypi\n").unwrap();
    fs::write(etc.join("remove-me"), "old\n").unwrap();
    fs::create_dir_all(staging.join("home/pi")).unwrap();
    fs::write(staging.join("home/pi/.bashrc"), "# pi\n").unwrap();

    let part = dir.path().join("part.ext4");
    fs::File::create(&part).unwrap().set_len(PART_LEN).unwrap();
    let (ok, out) = run(tool("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-T",
            "default",
            "-b",
            "4096",
            "-I",
            "256",
            "-L",
            "rootfs",
            "-E",
            "root_owner=0:0",
            "-O",
            features,
            "-d",
        ])
        .arg(&staging)
        .arg(&part));
    assert!(ok, "mkfs.ext4: {out}");
    // e2fsck -D rebuilds directories, with a hash index where they span several blocks.
    let status = tool("e2fsck")
        .args(["-fyD"])
        .arg(&part)
        .output()
        .unwrap()
        .status;
    assert!(
        status.code().is_some_and(|c| c <= 1),
        "e2fsck -fyD: {status}"
    );
    let htree = run(tool("debugfs").args(["-R", "htree /etc"]).arg(&part)).1;
    assert!(
        htree.contains("Root node dump"),
        "/etc is not hash-indexed:\n{htree}"
    );

    let bytes = fs::read(&part).unwrap();
    bytes
        .chunks(CHUNK)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| ((i * CHUNK) as u64, c.to_vec()))
        .collect()
}

/// A sparse whole-disk image: 1 MiB of pattern, the 64 MiB ext4 partition, `tail` bytes of
/// pattern.
fn fixture(features: &'static str, tail: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let file = fs::File::create(&image).unwrap();
    file.write_all_at(&pattern(OFFSET as usize, 1), 0).unwrap();
    for (at, chunk) in template(features) {
        file.write_all_at(chunk, OFFSET + at).unwrap();
    }
    file.write_all_at(&pattern(tail as usize, 2), OFFSET + PART_LEN)
        .unwrap();
    file.set_len(OFFSET + PART_LEN + tail).unwrap();
    Fixture { _dir: dir, image }
}

fn meta(mode: u32, uid: u32, gid: u32) -> Meta {
    Meta {
        mode,
        uid,
        gid,
        mtime: EPOCH - 3600,
    }
}

fn batch(blob: &Path) -> Vec<Op> {
    vec![
        Op::WriteFile {
            path: "/etc/node-secret".into(),
            content: Content::Bytes(b"k3s-token\n".to_vec()),
            meta: meta(0o600, 1000, 1000),
        },
        Op::Mkdir {
            path: "/etc/systemd/system/multi-user.target.wants".into(),
            meta: meta(0o755, 0, 0),
            parents: true,
        },
        Op::Mkdir {
            path: "/opt/imagegen".into(),
            meta: meta(0o750, 0, 0),
            parents: true,
        },
        Op::WriteFile {
            path: "/opt/imagegen/blob".into(),
            content: Content::HostFile(blob.to_path_buf()),
            meta: meta(0o755, 0, 0),
        },
        Op::Symlink {
            path: "/etc/systemd/system/multi-user.target.wants/imagegen.service".into(),
            target: "/lib/systemd/system/imagegen.service".into(),
            meta: meta(0o777, 0, 0),
        },
        Op::Remove {
            path: "/etc/remove-me".into(),
        },
        Op::WriteFile {
            path: "/etc/hostname".into(),
            content: Content::Bytes(b"node-a\n".to_vec()),
            meta: meta(0o644, 0, 0),
        },
        Op::SetMeta {
            path: "/home/pi".into(),
            mode: Some(0o700),
            owner: Some((1000, 1000)),
        },
    ]
}

/// Mode, uid and gid as `debugfs stat` shows them.
fn debugfs_stat(image: &Path, path: &str) -> (String, String, String) {
    let out = debugfs(image, &format!("stat \"{path}\""));
    let word_after = |key: &str| {
        let at = out
            .find(key)
            .unwrap_or_else(|| panic!("no {key} for {path}:\n{out}"));
        out[at + key.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    (
        word_after("Mode:"),
        word_after("User:"),
        word_after("Group:"),
    )
}

fn applies_batch(features: &'static str) {
    let fx = fixture(features, MIB);
    let dir = fx.image.parent().unwrap();
    let blob = dir.join("blob");
    let blob_bytes = pattern(MIB as usize, 7);
    fs::write(&blob, &blob_bytes).unwrap();
    let before = fs::read(&fx.image).unwrap();

    let mut fs_ = Ext4Fs::open(&fx.image, OFFSET, PART_LEN).unwrap();
    fs_.apply(&batch(&blob), EPOCH).unwrap();

    assert_fsck_clean(&fx.image);
    assert_eq!(debugfs_cat(&fx.image, "/etc/node-secret"), b"k3s-token\n");
    assert_eq!(
        debugfs_stat(&fx.image, "/etc/node-secret"),
        ("0600".into(), "1000".into(), "1000".into())
    );
    let secret = debugfs(&fx.image, "stat /etc/node-secret");
    assert!(
        secret.contains(&format!(" mtime: {:#x}:", EPOCH - 3600)),
        "{secret}"
    );
    assert!(secret.contains(&format!(" ctime: {EPOCH:#x}:")), "{secret}");
    assert!(secret.contains(&format!("crtime: {EPOCH:#x}:")), "{secret}");
    // Directories made by the batch keep their own mtime, although entries went in later.
    let opt = debugfs(&fx.image, "stat /opt/imagegen");
    assert!(
        opt.contains(&format!(" mtime: {:#x}:", EPOCH - 3600)),
        "{opt}"
    );
    assert_eq!(debugfs_cat(&fx.image, "/opt/imagegen/blob"), blob_bytes);
    assert_eq!(debugfs_stat(&fx.image, "/opt/imagegen/blob").0, "0755");
    assert_eq!(debugfs_stat(&fx.image, "/opt/imagegen").0, "0750");
    assert_eq!(debugfs_stat(&fx.image, "/opt").0, "0750");
    assert_eq!(debugfs_cat(&fx.image, "/etc/hostname"), b"node-a\n");
    assert_eq!(debugfs_stat(&fx.image, "/etc/hostname").0, "0644");
    assert_eq!(
        debugfs_stat(&fx.image, "/home/pi"),
        ("0700".into(), "1000".into(), "1000".into())
    );
    let link = debugfs(
        &fx.image,
        "stat /etc/systemd/system/multi-user.target.wants/imagegen.service",
    );
    assert!(link.contains("Type: symlink"), "{link}");
    assert!(
        link.contains("Fast link dest: \"/lib/systemd/system/imagegen.service\""),
        "{link}"
    );
    let gone = debugfs(&fx.image, "stat /etc/remove-me");
    assert!(gone.contains("File not found"), "{gone}");
    // What the batch replaced and removed was kept aside only until it succeeded.
    let aside = debugfs(&fx.image, "stat /.imagegen-replaced");
    assert!(aside.contains("File not found"), "{aside}");
    // The new name went into the hash index, which debugfs's lookup and htree dump both see.
    let htree = debugfs(&fx.image, "htree /etc");
    assert!(
        htree.contains("node-secret"),
        "node-secret not in the /etc hash tree"
    );
    let ls = debugfs(&fx.image, "ls -l /etc");
    assert!(
        ls.lines()
            .any(|l| l.contains("node-secret") && l.contains("100600") && l.contains("1000")),
        "{ls}"
    );
    // dumpe2fs must see the same feature set before and after.
    let after = fs::read(&fx.image).unwrap();
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before[..OFFSET as usize],
        after[..OFFSET as usize],
        "bytes before the partition changed"
    );
    let end = (OFFSET + PART_LEN) as usize;
    assert_eq!(
        before[end..],
        after[end..],
        "bytes after the partition changed"
    );

    let info = fs_.info().unwrap();
    let free: u64 = dumpe2fs_field(&fx.image, "Free blocks").parse().unwrap();
    assert_eq!(info.free_bytes, free * 4096);
    assert_eq!(
        info.features.join(" "),
        dumpe2fs_field(&fx.image, "Filesystem features")
    );
    // The handle was reloaded after the write and reads the new state.
    assert_eq!(fs_.read_file("/etc/hostname").unwrap(), b"node-a\n");
    assert_eq!(fs_.lstat("/etc/remove-me").unwrap(), None);
}

#[test]
fn applies_a_batch_on_bookworm_features() {
    applies_batch(BOOKWORM);
}

#[test]
fn applies_a_batch_on_raspberry_pi_os_features() {
    applies_batch(RPI_OS);
}

#[test]
fn applies_a_batch_on_trixie_features() {
    applies_batch(TRIXIE);
}

#[test]
fn replaces_files_and_symlinks_with_each_other() {
    let fx = fixture(TRIXIE, 0);
    let long_target = format!("/usr/lib/{}/a \"quoted\" name", "x".repeat(80));
    let ops = [
        Op::Symlink {
            path: "/etc/hostname".into(),
            target: "/run/hostname".into(),
            meta: meta(0o777, 0, 0),
        },
        Op::Symlink {
            path: "/etc/was-link".into(),
            target: "/nowhere".into(),
            meta: meta(0o777, 0, 0),
        },
        Op::WriteFile {
            path: "/etc/was-link".into(),
            content: Content::Bytes(b"now a file\n".to_vec()),
            meta: meta(0o644, 0, 0),
        },
        Op::SetMeta {
            path: "/etc/was-link".into(),
            mode: Some(0o4750),
            owner: Some((0, 42)),
        },
        Op::Symlink {
            path: "/etc/slow link".into(),
            target: long_target.clone(),
            meta: meta(0o777, 1000, 1000),
        },
    ];
    let mut f = Ext4Fs::open(&fx.image, OFFSET, PART_LEN).unwrap();
    f.apply(&ops, EPOCH).unwrap();
    assert_fsck_clean(&fx.image);
    let host = debugfs(&fx.image, "stat /etc/hostname");
    assert!(
        host.contains("Type: symlink") && host.contains("\"/run/hostname\""),
        "{host}"
    );
    assert_eq!(debugfs_cat(&fx.image, "/etc/was-link"), b"now a file\n");
    assert_eq!(
        debugfs_stat(&fx.image, "/etc/was-link"),
        ("04750".into(), "0".into(), "42".into())
    );
    // A target of 60 bytes or more lives in a data block; debugfs reads it back with cat.
    assert_eq!(
        debugfs_cat(&fx.image, "/etc/slow link"),
        long_target.as_bytes()
    );
    assert_eq!(debugfs_stat(&fx.image, "/etc/slow link").1, "1000");
    let err = f
        .apply(
            &[Op::Mkdir {
                path: "/etc/was-link/sub".into(),
                meta: meta(0o755, 0, 0),
                parents: true,
            }],
            EPOCH,
        )
        .unwrap_err();
    assert!(
        matches!(&err, FsError::NotADirectory(p) if p == "/etc/was-link"),
        "{err}"
    );
}

#[test]
fn info_matches_dumpe2fs() {
    for features in [BOOKWORM, RPI_OS, TRIXIE] {
        let fx = fixture(features, 0);
        let info = Ext4Fs::open(&fx.image, OFFSET, PART_LEN)
            .unwrap()
            .info()
            .unwrap();
        assert_eq!(
            info.features.join(" "),
            dumpe2fs_field(&fx.image, "Filesystem features")
        );
        assert_eq!(
            info.uuid.unwrap(),
            dumpe2fs_field(&fx.image, "Filesystem UUID")
        );
        assert_eq!(
            info.label.unwrap(),
            dumpe2fs_field(&fx.image, "Filesystem volume name")
        );
        let bs: u64 = dumpe2fs_field(&fx.image, "Block size").parse().unwrap();
        assert_eq!(u64::from(info.block_size), bs);
        let blocks: u64 = dumpe2fs_field(&fx.image, "Block count").parse().unwrap();
        assert_eq!(info.size_bytes, blocks * bs);
        let free: u64 = dumpe2fs_field(&fx.image, "Free blocks").parse().unwrap();
        assert_eq!(info.free_bytes, free * bs);
    }
}

/// 50 ops: nested directories, files in the indexed /etc, symlinks, replacements, removals.
fn fifty_ops() -> Vec<Op> {
    let mut ops = vec![Op::Mkdir {
        path: "/var/lib/imagegen/state".into(),
        meta: meta(0o700, 0, 0),
        parents: true,
    }];
    for i in 0..20 {
        ops.push(Op::WriteFile {
            path: format!("/etc/imagegen-{i:02}.conf"),
            content: Content::Bytes(pattern(3000 + i * 100, i as u32)),
            meta: meta(0o644, 0, 0),
        });
    }
    for i in 0..10 {
        ops.push(Op::Symlink {
            path: format!("/var/lib/imagegen/state/link-{i}"),
            target: format!("/etc/imagegen-{i:02}.conf"),
            meta: meta(0o777, 0, 0),
        });
    }
    for i in 0..10 {
        ops.push(Op::Remove {
            path: format!("/etc/config-entry-number-{i:04}.conf"),
        });
    }
    for i in 10..19 {
        ops.push(Op::WriteFile {
            path: format!("/etc/config-entry-number-{i:04}.conf"),
            content: Content::Bytes(format!("replaced {i}\n").into_bytes()),
            meta: meta(0o600, 0, 0),
        });
    }
    assert_eq!(ops.len(), 50);
    ops
}

#[test]
fn same_batch_gives_identical_bytes() {
    let fx = fixture(TRIXIE, MIB);
    let copy = fx.image.with_file_name("copy.img");
    fs::copy(&fx.image, &copy).unwrap();
    let mut times = Vec::new();
    for image in [&fx.image, &copy] {
        let mut f = Ext4Fs::open(image, OFFSET, PART_LEN).unwrap();
        let start = Instant::now();
        f.apply(&fifty_ops(), EPOCH).unwrap();
        times.push(start.elapsed());
        assert_fsck_clean(image);
    }
    eprintln!("apply of a 50-op batch on a 64 MiB filesystem: {times:?}");
    assert_eq!(
        debugfs_cat(&fx.image, "/etc/config-entry-number-0012.conf"),
        b"replaced 12\n"
    );
    assert!(
        fs::read(&fx.image).unwrap() == fs::read(&copy).unwrap(),
        "the two images differ"
    );
}

fn assert_refused_unchanged(fx: &Fixture, ops: &[Op], check: impl Fn(&FsError) -> bool) {
    let before = fs::read(&fx.image).unwrap();
    let err = Ext4Fs::open(&fx.image, OFFSET, PART_LEN)
        .and_then(|mut f| f.apply(ops, EPOCH))
        .unwrap_err();
    assert!(check(&err), "unexpected error: {err:?} ({err})");
    assert!(
        fs::read(&fx.image).unwrap() == before,
        "the image changed although {err} was refused"
    );
}

#[test]
fn refuses_before_writing() {
    let fx = fixture(BOOKWORM, MIB);
    let m = meta(0o644, 0, 0);
    let free = Ext4Fs::open(&fx.image, OFFSET, PART_LEN)
        .unwrap()
        .info()
        .unwrap()
        .free_bytes;
    let big = fx.image.with_file_name("big");
    fs::File::create(&big).unwrap().set_len(free + MIB).unwrap();
    assert_refused_unchanged(
        &fx,
        &[Op::WriteFile {
            path: "/big".into(),
            content: Content::HostFile(big.clone()),
            meta: m,
        }],
        |e| matches!(e, FsError::NoSpace { needed, free: f, .. } if needed > f && *f == free),
    );
    let write = |p: &str| Op::WriteFile {
        path: p.into(),
        content: Content::Bytes(b"x".to_vec()),
        meta: m,
    };
    // A valid op first: nothing of the batch may be written when a later op is refused.
    assert_refused_unchanged(
        &fx,
        &[write("/ok"), write("/no/such/dir/file")],
        |e| matches!(e, FsError::NotFound(p) if p == "/no/such/dir"),
    );
    assert_refused_unchanged(&fx, &[write("/etc")], |e| {
        matches!(e, FsError::IsADirectory(_))
    });
    assert_refused_unchanged(
        &fx,
        &[write("/etc/hostname/x")],
        |e| matches!(e, FsError::NotADirectory(p) if p == "/etc/hostname"),
    );
    assert_refused_unchanged(
        &fx,
        &[Op::Remove {
            path: "/home/pi".into(),
        }],
        |e| matches!(e, FsError::NotEmpty(_)),
    );
    assert_refused_unchanged(
        &fx,
        &[Op::Remove {
            path: "/nothing".into(),
        }],
        |e| matches!(e, FsError::NotFound(_)),
    );
    assert_refused_unchanged(
        &fx,
        &[Op::Mkdir {
            path: "/etc".into(),
            meta: m,
            parents: false,
        }],
        |e| matches!(e, FsError::AlreadyExists(_)),
    );
    assert_fsck_clean(&fx.image);
}

#[test]
fn removing_a_directory_emptied_in_the_same_batch_works() {
    let fx = fixture(RPI_OS, 0);
    let mut f = Ext4Fs::open(&fx.image, OFFSET, PART_LEN).unwrap();
    f.apply(
        &[
            Op::Remove {
                path: "/home/pi/.bashrc".into(),
            },
            Op::Remove {
                path: "/home/pi".into(),
            },
        ],
        EPOCH,
    )
    .unwrap();
    assert_fsck_clean(&fx.image);
    assert!(debugfs(&fx.image, "stat /home/pi").contains("File not found"));
    assert_eq!(f.read_dir("/home").unwrap(), Vec::new());
    assert_eq!(
        f.lstat("/home").unwrap().unwrap().file_type,
        FileType::Directory
    );
}

/// A small image with `features`, made without the shared template.
fn plain_fixture(features: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.ext4");
    fs::File::create(&part).unwrap().set_len(PART_LEN).unwrap();
    let (ok, out) = run(tool("mkfs.ext4")
        .args(["-q", "-F", "-T", "default", "-b", "4096", "-O", features])
        .arg(&part));
    assert!(ok, "mkfs.ext4 -O {features}: {out}");
    let image = dir.path().join("disk.img");
    let file = fs::File::create(&image).unwrap();
    file.write_all_at(&pattern(OFFSET as usize, 1), 0).unwrap();
    file.write_all_at(&fs::read(&part).unwrap(), OFFSET)
        .unwrap();
    Fixture { _dir: dir, image }
}

#[test]
fn refuses_features_it_cannot_edit_safely() {
    let write = [Op::WriteFile {
        path: "/x".into(),
        content: Content::Bytes(b"x".to_vec()),
        meta: meta(0o644, 0, 0),
    }];
    // Readable (ext4-view knows it), but debugfs does not charge quota usage.
    let fx = plain_fixture("quota");
    let mut f = Ext4Fs::open(&fx.image, OFFSET, PART_LEN).unwrap();
    assert_eq!(
        f.lstat("/lost+found").unwrap().unwrap().file_type,
        FileType::Directory
    );
    assert_refused_unchanged(
        &fx,
        &write,
        |e| matches!(e, FsError::Unsupported(m) if m.contains("quota")),
    );
    // Not even readable in process.
    let fx = plain_fixture("inline_data");
    assert_refused_unchanged(
        &fx,
        &write,
        |e| matches!(e, FsError::Unsupported(m) if m.contains("cannot read")),
    );
}

#[test]
fn refuses_a_filesystem_that_needs_journal_recovery() {
    let fx = fixture(BOOKWORM, MIB);
    let (ok, out) =
        run(tool("debugfs").args(["-w", "-R", "feature needs_recovery", &dev(&fx.image)]));
    assert!(ok && out.contains("needs_recovery"), "{out}");
    assert_refused_unchanged(
        &fx,
        &[Op::WriteFile {
            path: "/x".into(),
            content: Content::Bytes(b"x".to_vec()),
            meta: meta(0o644, 0, 0),
        }],
        |e| matches!(e, FsError::Unsupported(m) if m.contains("e2fsck -fy")),
    );
}

#[test]
fn refuses_a_journal_with_unreplayed_transactions() {
    let fx = fixture(TRIXIE, MIB);
    // debugfs's own journal writer leaves a transaction behind; then the flag is cleared, so
    // only the journal's start says it is dirty (the kernel would replay it at mount).
    let script = fx.image.with_file_name("journal.debugfs");
    fs::write(
        &script,
        "jo\njw -b 200 /etc/hostname\njc\nfeature -needs_recovery\n",
    )
    .unwrap();
    let (ok, out) = run(tool("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(dev(&fx.image)));
    assert!(ok, "{out}");
    assert_ne!(dumpe2fs_field(&fx.image, "Journal start"), "0");
    assert!(!dumpe2fs_field(&fx.image, "Filesystem features").contains("needs_recovery"));
    let write = [Op::WriteFile {
        path: "/x".into(),
        content: Content::Bytes(b"x".to_vec()),
        meta: meta(0o644, 0, 0),
    }];
    assert_refused_unchanged(
        &fx,
        &write,
        |e| matches!(e, FsError::Unsupported(m) if m.contains("never replayed")),
    );
    let before = fs::read(&fx.image).unwrap();
    let err = ext4::grow(&fx.image, OFFSET, PART_LEN, PART_LEN, EPOCH).unwrap_err();
    assert!(
        matches!(&err, FsError::Unsupported(m) if m.contains("never replayed")),
        "{err}"
    );
    assert!(fs::read(&fx.image).unwrap() == before);
}

#[test]
fn grows_the_last_partition_in_place_without_64bit() {
    grows_in_place(RPI_OS);
}

#[test]
fn grows_the_last_partition_in_place_with_trixie_features() {
    grows_in_place(TRIXIE);
}

fn grows_in_place(features: &'static str) {
    let fx = fixture(features, 0);
    let new_len = PART_LEN + 256 * MIB;
    let head = fs::read(&fx.image).unwrap()[..OFFSET as usize].to_vec();
    let old_blocks: u64 = dumpe2fs_field(&fx.image, "Block count").parse().unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&fx.image)
        .unwrap()
        .set_len(OFFSET + new_len)
        .unwrap();

    let start = Instant::now();
    ext4::grow(&fx.image, OFFSET, PART_LEN, new_len, EPOCH).unwrap();
    eprintln!("grow 64 MiB -> 320 MiB: {:?}", start.elapsed());

    assert_fsck_clean(&fx.image);
    let blocks: u64 = dumpe2fs_field(&fx.image, "Block count").parse().unwrap();
    assert!(
        blocks > old_blocks,
        "{blocks} blocks after growing, {old_blocks} before"
    );
    assert_eq!(blocks * 4096, new_len);
    assert_eq!(fs::metadata(&fx.image).unwrap().len(), OFFSET + new_len);
    assert!(
        fs::read(&fx.image).unwrap()[..OFFSET as usize] == head[..],
        "bytes before the partition changed"
    );
    assert_eq!(debugfs_cat(&fx.image, "/etc/hostname"), b"raspberrypi\n");
    // Writable afterwards, into the new space.
    let mut f = Ext4Fs::open(&fx.image, OFFSET, new_len).unwrap();
    // Larger than the free space before growing: it must land in the new groups.
    let data = pattern(MIB as usize, 3).repeat(80);
    f.apply(
        &[Op::WriteFile {
            path: "/big".into(),
            content: Content::Bytes(data.clone()),
            meta: meta(0o644, 0, 0),
        }],
        EPOCH,
    )
    .unwrap();
    assert!(debugfs_cat(&fx.image, "/big") == data);
}

#[test]
fn grow_matches_resize2fs_on_a_standalone_copy() {
    let fx = fixture(BOOKWORM, 4 * MIB);
    let new_len = PART_LEN + 2 * MIB;
    let before = fs::read(&fx.image).unwrap();

    // The reference: e2fsprogs on the partition alone, grown into zeros.
    let reference = fx.image.with_file_name("reference.ext4");
    fs::write(
        &reference,
        &before[OFFSET as usize..(OFFSET + PART_LEN) as usize],
    )
    .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&reference)
        .unwrap()
        .set_len(new_len)
        .unwrap();
    let epoch = EPOCH.to_string();
    let status = tool("e2fsck")
        .args(["-fy"])
        .arg(&reference)
        .env("E2FSCK_TIME", &epoch)
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .output()
        .unwrap()
        .status;
    assert!(status.success(), "e2fsck -fy: {status}");
    let (ok, out) = run(tool("resize2fs")
        .arg("-f")
        .arg(&reference)
        .arg((new_len / 4096).to_string())
        .env("E2FSCK_TIME", &epoch)
        .env("E2FSPROGS_FAKE_TIME", &epoch));
    assert!(ok, "resize2fs: {out}");

    // The partition grows into 2 MiB that held a pattern; the last 2 MiB stay as they are.
    ext4::grow(&fx.image, OFFSET, PART_LEN, new_len, EPOCH).unwrap();
    assert_fsck_clean(&fx.image);
    let after = fs::read(&fx.image).unwrap();
    let end = (OFFSET + new_len) as usize;
    assert!(
        after[end..] == before[end..],
        "bytes after the grown partition changed"
    );
    assert!(
        after[..OFFSET as usize] == before[..OFFSET as usize],
        "bytes before it changed"
    );
    assert!(
        after[OFFSET as usize..end] == fs::read(&reference).unwrap()[..],
        "the grown partition differs from resize2fs's result on a standalone copy"
    );
}

#[test]
fn reports_the_e2fsprogs_version() {
    let v = ext4::e2fsprogs_version().unwrap();
    let (_, banner) = run(tool("debugfs").arg("-V"));
    assert!(
        banner.starts_with(&format!("debugfs {v} ")),
        "{v} vs {banner}"
    );
}

/// A 16 MiB partition of 1 KiB blocks whose free space is all one-block holes: a file filled
/// it, then every other block of that file was punched out. `/victim` holds "original\n".
/// 1 KiB blocks make extent leaves small (84 extents each), so a file written into the holes
/// needs far more metadata than a contiguous one.
fn fragmented_fixture() -> (Fixture, u64) {
    const LEN: u64 = 16 * MIB;
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("part.ext4");
    fs::File::create(&part).unwrap().set_len(LEN).unwrap();
    let (ok, out) = run(tool("mkfs.ext4")
        .args(["-q", "-F", "-b", "1024", "-O", BOOKWORM])
        .arg(&part));
    assert!(ok, "mkfs.ext4: {out}");
    let debugfs_w = |script: &str| {
        let path = dir.path().join("script");
        fs::write(&path, script).unwrap();
        let (ok, out) = run(tool("debugfs").arg("-w").arg("-f").arg(&path).arg(&part));
        assert!(ok, "{out}");
    };
    let free = |part: &Path| -> u64 {
        let (_, out) = run(tool("dumpe2fs").arg("-h").arg(part));
        out.lines()
            .find_map(|l| l.strip_prefix("Free blocks:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let victim = dir.path().join("victim");
    fs::write(&victim, "original\n").unwrap();
    debugfs_w(&format!("write {} /victim\n", victim.display()));
    // Leave a few blocks for the fill file's own extent tree.
    let fill_blocks = free(&part) - 8;
    let fill = dir.path().join("fill");
    fs::write(&fill, pattern(fill_blocks as usize * 1024, 3)).unwrap();
    debugfs_w(&format!("write {} /fill\n", fill.display()));
    let punch: String = (0..fill_blocks)
        .step_by(2)
        .map(|b| format!("punch /fill {b} {b}\n"))
        .collect();
    debugfs_w(&punch);
    let (ok, out) = run(tool("e2fsck").arg("-fn").arg(&part));
    assert!(ok, "{out}");
    let (_, groups) = run(tool("dumpe2fs").arg(&part));
    let extents: Vec<u64> = groups
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Free blocks: "))
        .flat_map(|l| l.split(", "))
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .collect();
    assert!(
        extents.len() > 5000 && extents.iter().all(|&n| n <= 16),
        "free space is not in small holes: {} extents, largest {:?}",
        extents.len(),
        extents.iter().max()
    );

    let image = dir.path().join("disk.img");
    let file = fs::File::create(&image).unwrap();
    file.write_all_at(&pattern(OFFSET as usize, 1), 0).unwrap();
    file.write_all_at(&fs::read(&part).unwrap(), OFFSET)
        .unwrap();
    (Fixture { _dir: dir, image }, LEN)
}

/// Replacing a file needs room for the new one while the old one still exists; on fragmented
/// free space the extent tree of the new file costs a block per 84 data blocks. Either the
/// replacement fits and is written, or it is refused before anything changes: the original
/// is never lost.
#[test]
fn replacing_a_file_on_fragmented_free_space_keeps_the_original() {
    let (fx, len) = fragmented_fixture();
    let free = Ext4Fs::open(&fx.image, OFFSET, len)
        .unwrap()
        .info()
        .unwrap()
        .free_bytes
        / 1024;
    // The largest file an estimate of data + data/1024 + 2 blocks, plus 64 spare, lets
    // through; as one-block extents it needs ~84 more blocks than that.
    let too_big = (free - 66) * 1024 / 1025;
    // And one that fits with room to spare.
    let fits = free / 2;
    for blocks in [too_big, fits] {
        let before = fs::read(&fx.image).unwrap();
        let content = pattern(blocks as usize * 1024, 9);
        let result = Ext4Fs::open(&fx.image, OFFSET, len).and_then(|mut f| {
            f.apply(
                &[Op::WriteFile {
                    path: "/victim".into(),
                    content: Content::Bytes(content.clone()),
                    meta: meta(0o644, 0, 0),
                }],
                EPOCH,
            )
        });
        assert_fsck_clean(&fx.image);
        match result {
            Ok(()) => assert!(debugfs_cat(&fx.image, "/victim") == content),
            Err(e) => {
                assert!(matches!(e, FsError::NoSpace { .. }), "{blocks} blocks: {e}");
                assert_eq!(
                    debugfs_cat(&fx.image, "/victim"),
                    b"original\n",
                    "{blocks} blocks: the original is lost"
                );
                assert!(
                    fs::read(&fx.image).unwrap() == before,
                    "the image changed although {e} was refused"
                );
            }
        }
        if blocks == fits {
            assert!(debugfs_cat(&fx.image, "/victim") == content, "refused");
        }
    }
}

/// A filesystem e2fsck finds problems in is refused before anything is written: its free
/// counts cannot be trusted, and writing could cross-link a block two files then share.
#[test]
fn refuses_a_filesystem_e2fsck_finds_problems_in() {
    let fx = fixture(BOOKWORM, MIB);
    let block = debugfs(&fx.image, "blocks /etc/hostname");
    let block = block.split_whitespace().next().expect("a block");
    let (ok, out) =
        run(tool("debugfs").args(["-w", "-R", &format!("freeb {block}"), &dev(&fx.image)]));
    assert!(ok, "{out}");
    let (clean, _) = run(tool("e2fsck").args(["-fn", &dev(&fx.image)]));
    assert!(!clean, "e2fsck should find the block bitmap wrong");
    assert_refused_unchanged(
        &fx,
        &[Op::WriteFile {
            path: "/x".into(),
            content: Content::Bytes(b"x".to_vec()),
            meta: meta(0o644, 0, 0),
        }],
        |e| matches!(e, FsError::Corrupt(m) if m.contains("e2fsck")),
    );
}
