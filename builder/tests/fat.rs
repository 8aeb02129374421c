//! The FAT backend against real tools: images made by mkfs.vfat and filled by mtools, changes
//! judged by `fsck.fat -n`, `mtype`, `mdir` and `minfo`. Needs the dosfstools and mtools
//! packages.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};

use imagegen::fs::fat::FatFs;
use imagegen::fs::{Content, FileType, Filesystem, FsError, Meta, Op};

const MIB: u64 = 1 << 20;
/// 2023-11-14T22:13:20Z: an even second, so FAT stores it exactly.
const T: i64 = 1_700_000_000;

fn tool(name: &str, package: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): install the {package} package"))
}

fn mtools(name: &str, args: &[&str]) -> Output {
    let out = tool(name, "mtools", args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A whole-disk image with one FAT partition at `offset`, and a byte pattern around it that
/// nothing may touch.
struct Disk {
    _dir: tempfile::TempDir,
    img: PathBuf,
    offset: u64,
    len: u64,
}

fn pattern(at: u64, n: u64) -> Vec<u8> {
    (at..at + n).map(|i| (i % 251) as u8 ^ 0x5a).collect()
}

impl Disk {
    /// `mkfs_args` come before the offset and the image, e.g. `["-F", "32", "-s", "4"]`.
    fn new(len: u64, mkfs_args: &[&str]) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let offset = 8 * MIB;
        let tail = MIB;
        {
            let f = fs::File::create(&img).unwrap();
            f.set_len(offset + len + tail).unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&pattern(0, offset), 0).unwrap();
            f.write_all_at(&pattern(offset + len, tail), offset + len)
                .unwrap();
        }
        let sectors = (offset / 512).to_string();
        let kib = (len / 1024).to_string();
        let mut args: Vec<&str> = mkfs_args.to_vec();
        args.extend([
            "-i",
            "1234ABCD",
            "--offset",
            &sectors,
            img.to_str().unwrap(),
            &kib,
        ]);
        let out = tool("mkfs.vfat", "dosfstools", &args);
        assert!(out.status.success(), "mkfs.vfat: {out:?}");
        Disk {
            _dir: dir,
            img,
            offset,
            len,
        }
    }

    /// What a Raspberry Pi OS bootfs holds at the top: cmdline.txt, config.txt and an
    /// `overlays/` directory of 200 files (several directory clusters).
    fn populate(self) -> Disk {
        let src = self._dir.path().join("src");
        fs::create_dir_all(src.join("overlays")).unwrap();
        fs::write(
            src.join("cmdline.txt"),
            "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 \
             fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
        )
        .unwrap();
        fs::write(
            src.join("config.txt"),
            "dtparam=audio=on\ncamera_auto_detect=1\n",
        )
        .unwrap();
        for i in 0..200 {
            fs::write(
                src.join(format!("overlays/overlay-number-{i:03}.dtbo")),
                format!("overlay {i}\n").repeat(i + 1),
            )
            .unwrap();
        }
        let drive = self.drive();
        for name in ["cmdline.txt", "config.txt", "overlays"] {
            let p = src.join(name);
            mtools("mcopy", &["-s", "-i", &drive, p.to_str().unwrap(), "::/"]);
        }
        self
    }

    fn drive(&self) -> String {
        format!("{}@@{}", self.img.display(), self.offset)
    }

    fn open(&self) -> FatFs {
        FatFs::open(&self.img, self.offset, self.len).unwrap()
    }

    fn copy(&self) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        fs::copy(&self.img, &img).unwrap();
        Disk {
            _dir: dir,
            img,
            offset: self.offset,
            len: self.len,
        }
    }

    fn mtype(&self, p: &str) -> Vec<u8> {
        mtools("mtype", &["-i", &self.drive(), &format!("::{p}")]).stdout
    }

    /// `mdir -b`: the full paths in a directory, as mtools sees them.
    fn names(&self, dir: &str) -> Vec<String> {
        let out = mtools("mdir", &["-b", "-i", &self.drive(), &format!("::{dir}")]);
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_end_matches('/').trim_start_matches("::").to_string())
            .collect();
        names.sort();
        names
    }

    /// The `mdir` line of the entry `name` in `dir` (name, size, date and time).
    fn mdir_entry(&self, dir: &str, name: &str) -> String {
        let out = mtools("mdir", &["-i", &self.drive(), &format!("::{dir}")]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")) || l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no {name} in mdir output:\n{text}"))
            .to_string()
    }

    fn assert_clean(&self) {
        let part = self._dir.path().join("part.img");
        let out = tool(
            "dd",
            "coreutils",
            &[
                &format!("if={}", self.img.display()),
                &format!("of={}", part.display()),
                "bs=1M",
                "iflag=skip_bytes,count_bytes",
                &format!("skip={}", self.offset),
                &format!("count={}", self.len),
                "conv=sparse",
            ],
        );
        assert!(out.status.success(), "dd: {out:?}");
        let out = tool("fsck.fat", "dosfstools", &["-n", part.to_str().unwrap()]);
        fs::remove_file(&part).unwrap();
        assert!(
            out.status.success(),
            "fsck.fat -n is not clean:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn assert_outside_untouched(&self) {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(&self.img).unwrap();
        let end = self.offset + self.len;
        let tail_len = f.metadata().unwrap().len() - end;
        let mut head = vec![0; self.offset as usize];
        let mut tail = vec![0; tail_len as usize];
        f.read_exact_at(&mut head, 0).unwrap();
        f.read_exact_at(&mut tail, end).unwrap();
        assert!(
            head == pattern(0, self.offset),
            "bytes before the partition changed"
        );
        assert!(
            tail == pattern(end, tail_len),
            "bytes after the partition changed"
        );
    }

    fn assert_same_bytes(&self, other: &Disk) {
        let (a, b) = (self.img.to_str().unwrap(), other.img.to_str().unwrap());
        let out = tool("cmp", "diffutils", &[a, b]);
        assert!(
            out.status.success(),
            "not reproducible: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Raspberry Pi OS bootfs: `mkdosfs -n bootfs -F 32 -s 4`, 512 MiB.
fn rpi_bootfs() -> Disk {
    Disk::new(512 * MIB, &["-F", "32", "-n", "bootfs", "-s", "4"]).populate()
}

/// Ubuntu raspi system-boot style: FAT32, 512-byte sectors and clusters (smaller, to stay fast).
fn small_fat32() -> Disk {
    Disk::new(
        64 * MIB,
        &["-F", "32", "-n", "system-boot", "-S", "512", "-s", "1"],
    )
    .populate()
}

fn fat16() -> Disk {
    Disk::new(64 * MIB, &["-F", "16", "-n", "BOOT"]).populate()
}

fn write(path: &str, data: &[u8]) -> Op {
    Op::WriteFile {
        path: path.into(),
        content: Content::Bytes(data.to_vec()),
        meta: Meta::root(0o644, T),
    }
}

fn mkdir_p(path: &str) -> Op {
    Op::Mkdir {
        path: path.into(),
        meta: Meta::root(0o755, T),
        parents: true,
    }
}

#[test]
fn info_matches_what_mkfs_was_told() {
    let disk = rpi_bootfs();
    let info = disk.open().info().unwrap();
    assert_eq!(info.variant, "FAT32");
    assert_eq!(info.label.as_deref(), Some("bootfs"));
    assert_eq!(info.uuid.as_deref(), Some("1234-ABCD"));
    assert_eq!(info.block_size, 2048);
    let minfo = mtools("minfo", &["-i", &disk.drive()]);
    let minfo = String::from_utf8_lossy(&minfo.stdout);
    let sectors: u64 = minfo
        .lines()
        .find_map(|l| l.strip_prefix("big size: "))
        .and_then(|l| l.strip_suffix(" sectors"))
        .unwrap_or_else(|| panic!("no big size in minfo output:\n{minfo}"))
        .parse()
        .unwrap();
    assert_eq!(info.size_bytes, sectors * 512);
    let out = mtools("mdir", &["-i", &disk.drive(), "::/"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let free_line = text.lines().find(|l| l.contains("bytes free")).unwrap();
    let free: u64 = free_line
        .replace(['\u{a0}', ' '], "")
        .trim_end_matches("bytesfree")
        .parse()
        .unwrap();
    assert_eq!(info.free_bytes, free);

    let info16 = fat16().open().info().unwrap();
    assert_eq!(info16.variant, "FAT16");
    assert_eq!(info16.label.as_deref(), Some("BOOT"));
}

#[test]
fn reads_what_mtools_wrote() {
    let disk = small_fat32();
    let mut fs = disk.open();
    let mut names: Vec<String> = fs
        .read_dir("/overlays")
        .unwrap()
        .into_iter()
        .map(|e| format!("/overlays/{}", e.name))
        .collect();
    names.sort();
    assert_eq!(names, disk.names("/overlays"));
    assert_eq!(
        fs.read_file("/cmdline.txt").unwrap(),
        disk.mtype("/cmdline.txt")
    );
    let st = fs.lstat("/overlays").unwrap().unwrap();
    assert_eq!((st.file_type, st.mode), (FileType::Directory, 0o755));
    let st = fs.lstat("/CONFIG.TXT").unwrap().unwrap();
    let size = disk.mtype("/config.txt").len() as u64;
    assert_eq!(
        (st.file_type, st.mode, st.size),
        (FileType::Regular, 0o644, size)
    );
    assert!(fs.lstat("/nope/config.txt").unwrap().is_none());
    assert!(matches!(
        fs.read_link("/config.txt"),
        Err(FsError::NotASymlink(_))
    ));
}

#[test]
fn writes_into_the_root_and_replaces_cmdline() {
    let disk = rpi_bootfs();
    let cmdline = b"console=tty1 root=PARTUUID=abcd-02 rootwait\n";
    disk.open()
        .apply(
            &[
                write("/userconf.txt", b"pi:$6$hash\n"),
                write("/cmdline.txt", cmdline),
            ],
            T,
        )
        .unwrap();
    assert_eq!(disk.mtype("/userconf.txt"), b"pi:$6$hash\n");
    assert_eq!(disk.mtype("/cmdline.txt"), cmdline);
    assert!(
        disk.mdir_entry("/", "userconf.txt")
            .contains("2023-11-14  22:13")
    );
    assert!(disk.names("/").contains(&"/userconf.txt".to_string()));
    disk.assert_clean();
    disk.assert_outside_untouched();
}

#[test]
fn streams_a_one_mib_host_file_into_overlays() {
    let disk = small_fat32();
    let host = disk._dir.path().join("big.bin");
    let data: Vec<u8> = (0..MIB).map(|i| (i * 31 % 256) as u8).collect();
    fs::write(&host, &data).unwrap();
    disk.open()
        .apply(
            &[
                Op::WriteFile {
                    path: "/big.bin".into(),
                    content: Content::HostFile(host),
                    meta: Meta::root(0o644, T),
                },
                write("/overlays/imagegen-extra.dtbo", b"new overlay\n"),
                write("/Grüße aus Köln.txt", b"long, non-ASCII name\n"),
            ],
            T,
        )
        .unwrap();
    assert!(disk.mtype("/big.bin") == data);
    assert_eq!(
        disk.mtype("/overlays/imagegen-extra.dtbo"),
        b"new overlay\n"
    );
    assert_eq!(disk.names("/overlays").len(), 201);
    assert!(disk.names("/").contains(&"/Grüße aus Köln.txt".to_string()));
    assert_eq!(disk.mtype("/Grüße aus Köln.txt"), b"long, non-ASCII name\n");
    disk.assert_clean();
    disk.assert_outside_untouched();
}

fn nested_dirs(disk: Disk) {
    let twin = disk.copy();
    let ops = [
        mkdir_p("/imagegen/seed/nocloud"),
        write("/imagegen/seed/nocloud/user-data", b"#cloud-config\n"),
        write("/imagegen/seed/meta-data", b"instance-id: pi4-a\n"),
        mkdir_p("/imagegen/seed"),
        Op::Mkdir {
            path: "/overlays/Extra Dir".into(),
            meta: Meta::root(0o755, T + 2),
            parents: false,
        },
        write("/overlays/Extra Dir/a.txt", b"a\n"),
    ];
    // The batch epoch, an hour after the ops' own times, goes on directories fatfs writes into.
    let epoch = T + 3600;
    disk.open().apply(&ops, epoch).unwrap();
    // Past FAT's 2-second tick, so a wall-clock time anywhere would show as a difference.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    twin.open().apply(&ops, epoch).unwrap();
    assert_eq!(
        disk.names("/imagegen/seed"),
        ["/imagegen/seed/meta-data", "/imagegen/seed/nocloud"]
    );
    assert_eq!(
        disk.mtype("/imagegen/seed/nocloud/user-data"),
        b"#cloud-config\n"
    );
    assert_eq!(disk.mtype("/overlays/Extra Dir/a.txt"), b"a\n");
    assert!(
        disk.mdir_entry("/", "imagegen")
            .contains("2023-11-14  22:13")
    );
    assert!(
        disk.mdir_entry("/imagegen", "seed")
            .contains("2023-11-14  23:13")
    );
    assert!(
        disk.mdir_entry("/imagegen/seed/nocloud", "user-data")
            .contains("2023-11-14  22:13")
    );
    disk.assert_clean();
    disk.assert_outside_untouched();
    disk.assert_same_bytes(&twin);
}

#[test]
fn makes_nested_directories_on_fat32() {
    nested_dirs(small_fat32());
}

#[test]
fn makes_nested_directories_on_fat16() {
    nested_dirs(fat16());
}

/// Whether the partition's raw bytes contain `needle` anywhere (deleted entries included).
fn raw_contains(disk: &Disk, needle: &str) -> bool {
    let img = disk.img.to_str().unwrap();
    match tool("grep", "grep", &["-aqF", needle, img]).status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("grep failed: {other:?}"),
    }
}

#[test]
fn leaves_no_trace_of_replaced_or_removed_content() {
    let disk = small_fat32();
    let a = "k3s-token-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let b = "k3s-token-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    disk.open()
        .apply(
            &[
                write("/seed-a", a.as_bytes()),
                write("/seed-b", b.as_bytes()),
            ],
            T,
        )
        .unwrap();
    assert!(raw_contains(&disk, a) && raw_contains(&disk, b));
    disk.open()
        .apply(
            &[
                write("/seed-a", b"replaced\n"),
                Op::Remove {
                    path: "/seed-b".into(),
                },
            ],
            T,
        )
        .unwrap();
    assert_eq!(disk.mtype("/seed-a"), b"replaced\n");
    assert!(
        !raw_contains(&disk, a),
        "replaced content is still in the image"
    );
    assert!(
        !raw_contains(&disk, b),
        "removed content is still in the image"
    );
    disk.assert_clean();
}

#[test]
fn removes_files_and_empty_directories() {
    let disk = fat16();
    disk.open()
        .apply(
            &[
                mkdir_p("/empty"),
                Op::Remove {
                    path: "/overlays/overlay-number-007.dtbo".into(),
                },
                Op::Remove {
                    path: "/empty".into(),
                },
            ],
            T,
        )
        .unwrap();
    let names = disk.names("/overlays");
    assert_eq!(names.len(), 199);
    assert!(!names.contains(&"/overlays/overlay-number-007.dtbo".to_string()));
    assert!(!disk.names("/").contains(&"/empty".to_string()));
    disk.assert_clean();

    let err = disk.open().apply(
        &[Op::Remove {
            path: "/overlays".into(),
        }],
        T,
    );
    assert!(matches!(err, Err(FsError::NotEmpty(_))), "{err:?}");
}

/// A refused batch must leave every byte as it was.
fn refused(disk: &Disk, ops: &[Op]) -> FsError {
    let before = fs::read(&disk.img).unwrap();
    let err = disk.open().apply(ops, T).unwrap_err();
    assert!(
        fs::read(&disk.img).unwrap() == before,
        "a refused batch changed the image"
    );
    err
}

#[test]
fn refuses_what_does_not_fit_before_changing_anything() {
    let disk = small_fat32();
    let host = disk._dir.path().join("huge.bin");
    fs::File::create(&host).unwrap().set_len(70 * MIB).unwrap();
    let ops = [
        write("/first.txt", b"written before the big one\n"),
        Op::WriteFile {
            path: "/huge.bin".into(),
            content: Content::HostFile(host),
            meta: Meta::root(0o644, T),
        },
    ];
    let err = refused(&disk, &ops);
    assert!(
        matches!(err, FsError::NoSpace { needed, free, .. } if needed > free),
        "{err:?}"
    );
}

#[test]
fn refuses_bad_paths_and_symlinks() {
    let disk = small_fat32();
    let err = refused(
        &disk,
        &[write("/a.txt", b"x"), write("/no/such/dir/f", b"x")],
    );
    assert!(
        matches!(err, FsError::NotFound(ref p) if p == "/no/such/dir"),
        "{err:?}"
    );
    let err = refused(&disk, &[write("/what?.txt", b"x")]);
    assert!(matches!(err, FsError::InvalidPath { .. }), "{err:?}");
    let err = refused(&disk, &[write("/trailing.", b"x")]);
    assert!(matches!(err, FsError::InvalidPath { .. }), "{err:?}");
    let err = refused(&disk, &[mkdir_p("/café")]);
    assert!(matches!(err, FsError::InvalidPath { .. }), "{err:?}");
    let err = refused(&disk, &[write("/cmdline.txt/x", b"x")]);
    assert!(matches!(err, FsError::NotADirectory(_)), "{err:?}");
    let err = refused(&disk, &[write("/overlays", b"x")]);
    assert!(matches!(err, FsError::IsADirectory(_)), "{err:?}");
    let err = refused(
        &disk,
        &[Op::Mkdir {
            path: "/overlays".into(),
            meta: Meta::root(0o755, T),
            parents: false,
        }],
    );
    assert!(matches!(err, FsError::AlreadyExists(_)), "{err:?}");
    let err = refused(
        &disk,
        &[Op::Symlink {
            path: "/link".into(),
            target: "cmdline.txt".into(),
            meta: Meta::root(0o777, T),
        }],
    );
    assert!(
        matches!(err, FsError::Unsupported(ref m) if m.contains("symlink")),
        "{err:?}"
    );
    let err = refused(
        &disk,
        &[Op::SetMeta {
            path: "/missing".into(),
            mode: Some(0o600),
            owner: None,
        }],
    );
    assert!(matches!(err, FsError::NotFound(_)), "{err:?}");
    disk.assert_clean();
    assert_eq!(
        disk.mtype("/config.txt"),
        b"dtparam=audio=on\ncamera_auto_detect=1\n"
    );
}

#[test]
fn refuses_a_filesystem_fsck_finds_broken() {
    let disk = small_fat32();
    // Make the FSInfo free-cluster count lie, as an unclean unmount can.
    let f = fs::OpenOptions::new().write(true).open(&disk.img).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&7u32.to_le_bytes(), disk.offset + 512 + 488)
        .unwrap();
    let err = refused(&disk, &[write("/a.txt", b"x")]);
    assert!(
        matches!(err, FsError::Corrupt(ref m) if m.contains("Free cluster summary")),
        "{err:?}"
    );
}

#[test]
fn refuses_a_filesystem_marked_dirty() {
    let disk = small_fat32();
    // The FAT32 boot sector's "needs check" bit, which Linux sets while it has the volume mounted.
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk.img)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let mut flags = [0u8];
    f.read_exact_at(&mut flags, disk.offset + 0x41).unwrap();
    f.write_all_at(&[flags[0] | 1], disk.offset + 0x41).unwrap();
    let err = refused(&disk, &[write("/a.txt", b"x")]);
    assert!(
        matches!(err, FsError::Unsupported(ref m) if m.contains("dirty")),
        "{err:?}"
    );
}
