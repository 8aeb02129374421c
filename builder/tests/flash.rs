//! `imagegen flash` onto regular files, a fake sysfs tree and, as root, a real loop device.
//! Oracles: `cmp` against the raw image, bmaptool's own .bmap files, `sfdisk -d`, `fsck.fat -n`
//! and `e2fsck -fn` on the partitions the kernel found on the flashed loop device.

mod common;

use common::{cached_fixture, oracle};
use imagegen_firstboot::seed::{SEED_FILE_NAME, Seed};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tempfile::TempDir;

const LAYOUT: &str = "rpios-bookworm";

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

fn imagegen(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagegen"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run imagegen")
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = imagegen(args, env);
    assert!(
        out.status.success(),
        "imagegen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str], env: &[(&str, &str)], needle: &str) -> String {
    let out = imagegen(args, env);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "imagegen {args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}

/// A scratch directory with the fixture as a sparse raw image `a.img`, its bmap made by
/// bmaptool, and `a.img.zst` / `a.img.xz` made by the zstd and xz tools (xz with two threads,
/// so the file has several blocks).
struct Images {
    dir: TempDir,
}

impl Images {
    fn new() -> Images {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let raw = dir.path().join("a.img");
        oracle::run(
            "cp",
            &["--sparse=always", s(&cached_fixture(LAYOUT)), s(&raw)],
        );
        let bmap = dir.path().join("a.bmap");
        oracle::run("bmaptool", &["-q", "create", "-o", s(&bmap), s(&raw)]);
        oracle::run(
            "zstd",
            &["-q", "-T2", s(&raw), "-o", s(&dir.path().join("a.img.zst"))],
        );
        oracle::run("xz", &["-k", "-T2", "--block-size=16MiB", s(&raw)]);
        Images { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn raw(&self) -> PathBuf {
        self.path("a.img")
    }

    fn size(&self) -> u64 {
        fs::metadata(self.raw()).unwrap().len()
    }

    /// Puts the bmap beside `image` (or takes it away).
    fn with_bmap(&self, image: &str, on: bool) {
        let side = self.path(&format!("{image}.bmap"));
        if on {
            fs::copy(self.path("a.bmap"), &side).unwrap();
        } else {
            let _ = fs::remove_file(&side);
        }
    }

    /// Mapped byte ranges of the bmap.
    fn mapped(&self) -> Vec<(u64, u64)> {
        oracle::bmap_ranges(&self.path("a.bmap")).0
    }
}

fn cmp(a: &Path, b: &Path, bytes: u64) {
    oracle::run("cmp", &["-n", &bytes.to_string(), s(a), s(b)]);
}

#[test]
fn every_format_with_and_without_bmap_gives_the_image() {
    let im = Images::new();
    let size = im.size();
    for image in ["a.img", "a.img.zst", "a.img.xz"] {
        for bmap in [true, false] {
            im.with_bmap(image, bmap);
            // A new file, and an old VM disk larger than the image full of other bytes.
            let new = im.path("new.disk");
            let _ = fs::remove_file(&new);
            let old = im.path("old.disk");
            fs::write(&old, vec![0xa5u8; (size + (1 << 20)) as usize]).unwrap();
            for target in [&new, &old] {
                let out = imagegen(&["flash", s(&im.path(image)), s(target)], &[]);
                assert!(
                    out.status.success(),
                    "{image} bmap={bmap}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                cmp(&im.raw(), target, size);
            }
            assert_eq!(fs::metadata(&new).unwrap().len(), size);
            // The old disk's tail past the image is left alone.
            assert_eq!(oracle::read_bytes(&old, size, 4), [0xa5; 4]);
            im.with_bmap(image, false);
        }
    }
}

#[test]
fn verification_catches_a_flipped_byte() {
    let im = Images::new();
    let (start, end) = im.mapped()[1];
    let offset = ((start + end) / 2).to_string();
    for bmap in [true, false] {
        im.with_bmap("a.img.zst", bmap);
        let target = im.path("t.disk");
        let err = fails(
            &["flash", s(&im.path("a.img.zst")), s(&target)],
            &[("IMAGEGEN_TEST_CORRUPT_AT", &offset)],
            "verification failed",
        );
        assert!(err.contains("was removed"), "{err}");
        assert!(!target.exists());
    }
    // And nothing is said when nothing is wrong: --no-verify skips the read-back.
    im.with_bmap("a.img.zst", true);
    let target = im.path("t.disk");
    ok(
        &["flash", "--no-verify", s(&im.path("a.img.zst")), s(&target)],
        &[("IMAGEGEN_TEST_CORRUPT_AT", &offset)],
    );
}

#[test]
fn damaged_images_and_bmaps_are_refused() {
    let im = Images::new();
    im.with_bmap("a.img.zst", true);
    let bmap = im.path("a.img.zst.bmap");
    let text = fs::read_to_string(&bmap).unwrap();
    // An edit the bmap's own checksum does not cover is caught on reading it.
    let edited = text.replace("<BlocksCount>", "<BlocksCount> ");
    fs::write(&bmap, edited).unwrap();
    let target = im.path("t.disk");
    fails(
        &["flash", s(&im.path("a.img.zst")), s(&target)],
        &[],
        "checksum",
    );
    assert!(!target.exists());
    // The commands that change an image say what a compressed one is instead of "no
    // partition table" (the reading ones read it: tests/cli.rs).
    for cmd in [
        &["mkdir", &format!("{}:/etc/x", s(&im.path("a.img.zst")))][..],
        &["rm", &format!("{}:/etc/hostname", s(&im.path("a.img.xz")))],
    ] {
        let err = fails(cmd, &[], "compressed image");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A cut .xz is refused before writing: its index is at the end.
    let cut = im.path("cut.img.xz");
    let xz = fs::read(im.path("a.img.xz")).unwrap();
    fs::write(&cut, &xz[..xz.len() / 2]).unwrap();
    fails(&["flash", s(&cut), s(&target)], &[], "cut.img.xz");
    assert!(!target.exists());
}

#[test]
fn a_too_small_target_is_refused_untouched() {
    let im = Images::new();
    let target = im.path("small.disk");
    let before: Vec<u8> = (0..im.size() / 2).map(|i| (i % 253) as u8).collect();
    fs::write(&target, &before).unwrap();
    for image in ["a.img", "a.img.zst", "a.img.xz"] {
        fails(&["flash", s(&im.path(image)), s(&target)], &[], "too small");
        assert!(
            fs::read(&target).unwrap() == before,
            "{image} changed the target"
        );
    }
}

/// A fake root: sysfs entries for a system disk, a USB card, a mounted USB card, an NVMe disk
/// and an SD card on MMC, their device nodes as plain files, and a mount table.
fn fake_root(card_size: u64) -> TempDir {
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let r = root.path();
    let usb = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block";
    let disks: [(&str, &str, &str, &str, &str); 5] = [
        // name, sysfs parent, removable, major:minor, model
        (
            "vda",
            "devices/pci0000:00/0000:00:05.0/virtio2/block",
            "0",
            "254:0",
            "",
        ),
        ("sdb", usb, "1", "8:16", "Generic SD Reader"),
        ("sdc", usb, "1", "8:32", "SanDisk Ultra"),
        (
            "nvme0n1",
            "devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/block",
            "0",
            "259:0",
            "Samsung 980",
        ),
        (
            "mmcblk0",
            "devices/platform/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa/block",
            "0",
            "179:0",
            "",
        ),
    ];
    fs::create_dir_all(r.join("sys/class/block")).unwrap();
    fs::create_dir_all(r.join("sys/block")).unwrap();
    fs::create_dir_all(r.join("dev")).unwrap();
    fs::create_dir_all(r.join("proc/self")).unwrap();
    for (name, parent, removable, devno, model) in disks {
        let dir = r.join("sys").join(parent).join(name);
        fs::create_dir_all(dir.join("device")).unwrap();
        fs::create_dir_all(dir.join("holders")).unwrap();
        fs::write(dir.join("size"), format!("{}\n", card_size / 512)).unwrap();
        fs::write(dir.join("removable"), format!("{removable}\n")).unwrap();
        fs::write(dir.join("ro"), "0\n").unwrap();
        fs::write(dir.join("dev"), format!("{devno}\n")).unwrap();
        fs::write(dir.join("device/model"), format!("{model}\n")).unwrap();
        let (major, minor) = devno.split_once(':').unwrap();
        let part = dir.join(format!(
            "{name}{}",
            if name.ends_with(char::is_numeric) {
                "p1"
            } else {
                "1"
            }
        ));
        fs::create_dir_all(part.join("holders")).unwrap();
        fs::write(part.join("partition"), "1\n").unwrap();
        fs::write(part.join("size"), "2048\n").unwrap();
        fs::write(
            part.join("dev"),
            format!("{major}:{}\n", minor.parse::<u32>().unwrap() + 1),
        )
        .unwrap();
        let part_name = part.file_name().unwrap().to_owned();
        symlink(
            format!("../../{parent}/{name}"),
            r.join(format!("sys/class/block/{name}")),
        )
        .unwrap();
        symlink(
            format!("../{parent}/{name}"),
            r.join(format!("sys/block/{name}")),
        )
        .unwrap();
        symlink(
            format!("../../{parent}/{name}/{}", part_name.to_string_lossy()),
            r.join("sys/class/block").join(&part_name),
        )
        .unwrap();
        let node = fs::File::create(r.join("dev").join(name)).unwrap();
        node.set_len(card_size).unwrap();
        fs::File::create(r.join("dev").join(&part_name))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
    }
    // The system's root on vda1 (btrfs-style anonymous device number: found by its source),
    // and the card in sdc mounted by the desktop.
    fs::write(
        r.join("proc/self/mountinfo"),
        "22 1 0:31 / / rw,relatime shared:1 - btrfs /dev/vda1 rw\n\
         40 22 0:5 / /dev rw - devtmpfs udev rw\n\
         90 22 8:33 / /media/u/boot\\040fs rw,nosuid - vfat /dev/sdc1 rw\n",
    )
    .unwrap();
    root
}

#[test]
fn the_fake_system_refuses_wrong_disks_and_takes_a_card() {
    let im = Images::new();
    let root = fake_root(im.size() + (64 << 20));
    let env = [("IMAGEGEN_SYSROOT", s(root.path()))];
    let img = im.path("a.img.zst");
    im.with_bmap("a.img.zst", true);
    let flash = |dev: &str, extra: &[&str]| {
        let mut args = vec!["flash", s(&img), dev, "--yes"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let refused = |dev: &str, extra: &[&str], needle: &str| {
        let args = flash(dev, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, &env, needle);
        let node = root.path().join(dev.trim_start_matches('/'));
        assert!(
            oracle::read_bytes(&node, 0, 512).iter().all(|&b| b == 0),
            "{dev} was written"
        );
    };
    refused("/dev/vda", &[], "running system's root");
    refused("/dev/vda", &["--force"], "running system's root");
    refused("/dev/sdc", &["--force"], "/dev/sdc1 on /media/u/boot fs");
    refused("/dev/nvme0n1", &[], "fixed nvme disk");
    refused("/dev/sdb1", &[], "partition of /dev/sdb");
    // Without --yes the user is asked, and a script cannot answer.
    fails(&["flash", s(&img), "/dev/sdb"], &env, "pass --yes");

    for dev in ["/dev/sdb", "/dev/mmcblk0"] {
        let args = flash(dev, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&args, &env);
        cmp(
            &im.raw(),
            &root.path().join(dev.trim_start_matches('/')),
            im.size(),
        );
    }
    // --force takes the fixed disk.
    let args = flash("/dev/nvme0n1", &["--force"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args, &env);

    let listed = ok(&["flash", "--list"], &env);
    let names: Vec<&str> = listed
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["/dev/mmcblk0", "/dev/sdb"], "{listed}");
    assert!(listed.contains("Generic SD Reader"), "{listed}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["flash", "--list", "--json"], &env)).unwrap();
    let buses: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["bus"].as_str().unwrap())
        .collect();
    assert_eq!(buses, ["mmc", "usb"]);
}

#[test]
fn a_real_loop_device() {
    let is_root = rustix::process::geteuid().is_root();
    if !is_root || !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIPPED a_real_loop_device: needs root and /dev/loop-control (root: {is_root})");
        return;
    }
    let im = Images::new();
    let size = im.size();
    let backing = im.path("loop.backing");
    // A reused card: an old system's bytes everywhere (0x5a here). With a bmap, unmapped
    // blocks are not written, so the bmap is the one `imagegen build` writes: it maps the
    // all-zero blocks a filesystem uses (free FAT entries, zeroed inode tables...), which
    // `bmaptool create` leaves out by content, and fsck.fat would then find the FAT full of
    // 0x5a ("Cluster 1022 out of range").
    fs::write(&backing, vec![0x5au8; (size + (8 << 20)) as usize]).unwrap();
    let dev = oracle::LoopDevice::attach(&backing, true).expect("root and loop-control");
    let node = dev.path();
    let emitted = im.path("e.img.zst");
    imagegen::emit::emit(
        &im.raw(),
        &emitted,
        imagegen::emit::BuildRecord::default(),
        &imagegen::emit::EmitOptions::default(),
    )
    .unwrap();
    let (ranges, _) = oracle::bmap_ranges(&im.path("e.img.zst.bmap"));
    let mapped: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    assert!(
        mapped * 100 < size * 60,
        "the bmap maps {mapped} of {size} bytes"
    );

    ok(&["flash", "--force", "--yes", s(&emitted), &dev.0], &[]);
    // Mapped ranges as the image has them.
    let mut raw = fs::File::open(im.raw()).unwrap();
    let mut card = fs::File::open(node).unwrap();
    use std::io::{Read, Seek, SeekFrom};
    for (a, b) in ranges {
        let mut x = vec![0u8; (b - a) as usize];
        let mut y = vec![0u8; (b - a) as usize];
        raw.seek(SeekFrom::Start(a)).unwrap();
        raw.read_exact(&mut x).unwrap();
        card.seek(SeekFrom::Start(a)).unwrap();
        card.read_exact(&mut y).unwrap();
        assert!(x == y, "bytes {a}..{b} differ on {}", dev.0);
    }
    // The kernel re-read the table: the partitions are there, as in the image, and clean.
    let table = |p: &str| -> Vec<String> {
        oracle::run("sfdisk", &["-d", p])
            .lines()
            .filter(|l| l.contains("start="))
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
            .collect()
    };
    assert_eq!(table(&dev.0), table(s(&im.raw())));
    // The partition nodes need udev, which a container may lack; sysfs shows what the kernel
    // found, and the filesystems are checked at their offsets on the device.
    let name = node.file_name().unwrap().to_string_lossy().into_owned();
    let first = format!("/sys/block/{name}/{name}p1");
    if !Path::new(&first).exists() {
        // Either imagegen's BLKRRPART did nothing, or this kernel cannot read the table at all
        // (seen in a Firecracker guest: no partitions even after `losetup -P` or blockdev).
        oracle::run("blockdev", &["--rereadpt", &dev.0]);
        assert!(
            !Path::new(&first).exists(),
            "blockdev --rereadpt found the partitions that imagegen's BLKRRPART did not"
        );
        eprintln!(
            "NOTE: this kernel shows no partitions of {}, even after blockdev --rereadpt: \
                   the re-read is not checked here",
            dev.0
        );
    }
    let fat = oracle::partition(&im.raw(), 1);
    oracle::assert_fsck_fat_clean(node, fat.start, fat.size);
    oracle::assert_e2fsck_clean(node, oracle::partition(&im.raw(), 2).start);

    // Without a bmap, every block is written, zeros too: a used card reads as the image.
    fs::write(&backing, vec![0x5au8; (size + (8 << 20)) as usize]).unwrap();
    im.with_bmap("a.img.zst", false);
    ok(
        &[
            "flash",
            "--force",
            "--yes",
            s(&im.path("a.img.zst")),
            &dev.0,
        ],
        &[],
    );
    cmp(&im.raw(), node, size);

    // Refused without --force: a loop device is no removable drive.
    fails(
        &["flash", "--yes", s(&im.path("a.img.zst")), &dev.0],
        &[],
        "--force",
    );
}

/// A cluster with two Raspberry Pi 4 nodes (one holds a UPS password, a secret the seed
/// carries) and the generic image built for it from the fixture with `build --no-secrets`,
/// compressed, with its bmap beside it.
struct Generic {
    dir: TempDir,
}

impl Generic {
    const ADMIN_KEY: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAIKh3zm4jTyWkG2JCU6t4CiTqB2OtWqy8iOiOPc6FnUOu ops@laptop";

    fn new() -> Generic {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let g = Generic { dir };
        // An aarch64 ELF header: enough for the build to take it as the board's agent.
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.extend([0; 9]);
        elf.extend(2u16.to_le_bytes());
        elf.extend(183u16.to_le_bytes());
        elf.extend(1u32.to_le_bytes());
        elf.extend([0; 40]);
        fs::write(g.path("agent"), elf).unwrap();
        fs::create_dir(g.path("secrets")).unwrap();
        fs::write(g.path("secrets/nut-password"), "FlashNutSecret\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(
                g.path("secrets/nut-password"),
                fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        fs::write(g.config(), g.config_text("secrets/nut-password")).unwrap();
        ok(
            &[
                "build",
                "-c",
                s(&g.config()),
                "--node",
                "pi4-a",
                "--no-secrets",
                "--base",
                s(&cached_fixture(LAYOUT)),
                "--agent",
                s(&g.path("agent")),
                "--cache-dir",
                s(&g.path("cache")),
                "--state-dir",
                s(&g.state()),
                "-o",
                s(&g.image()),
            ],
            &[],
        );
        assert!(g.path("g.img.zst.bmap").exists());
        g
    }

    fn config_text(&self, password_file: &str) -> String {
        format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\n\
             ssh_authorized_keys = [\"{}\"]\n\
             [ups]\nserver = \"pi4-a\"\nups = \"riello\"\ndriver = \"riello_usb\"\n\
             user = \"monuser\"\npassword_file = \"{password_file}\"\n\
             [[nodes]]\nname = \"pi4-a\"\nboard = \"rpi4\"\nrole = \"agent\"\n\
             [[nodes]]\nname = \"pi4-b\"\nboard = \"rpi4\"\nrole = \"agent\"\n",
            Self::ADMIN_KEY
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("cluster.toml")
    }

    fn state(&self) -> PathBuf {
        self.path("state")
    }

    fn image(&self) -> PathBuf {
        self.path("g.img.zst")
    }

    /// `flash IMAGE TARGET --config CONFIG --node NODE` with this cluster's state.
    fn flash_args(&self, target: &Path, config: &Path, node: &str) -> Vec<String> {
        let image = self.image();
        let state = self.state();
        [
            "flash",
            s(&image),
            s(target),
            "--config",
            s(config),
            "--node",
            node,
            "--state-dir",
            s(&state),
        ]
        .map(String::from)
        .to_vec()
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn flashing_with_a_node_gives_the_card_personalize_then_flash_gives() {
    let g = Generic::new();
    let card = g.path("card1.disk");
    ok(&strs(&g.flash_args(&card, &g.config(), "pi4-b")), &[]);

    // The reference: the generic image decompressed by zstd, personalized, then flashed.
    let raw = g.path("p.img");
    oracle::run("zstd", &["-q", "-d", s(&g.image()), "-o", s(&raw)]);
    let generic = g.path("generic.img");
    oracle::run("cp", &["--sparse=always", s(&raw), s(&generic)]);
    ok(
        &[
            "personalize",
            s(&raw),
            "--config",
            s(&g.config()),
            "--node",
            "pi4-b",
            "--state-dir",
            s(&g.state()),
        ],
        &[],
    );
    let reference = g.path("card2.disk");
    ok(&["flash", s(&raw), s(&reference)], &[]);

    let size = fs::metadata(&raw).unwrap().len();
    assert_eq!(fs::metadata(&card).unwrap().len(), size);
    cmp(&reference, &card, size);
    // Not trivially equal: the seed is on the card, in a boot partition fsck.fat finds clean.
    let status = Command::new(oracle::tool("cmp"))
        .args(["-s", s(&generic), s(&card)])
        .status()
        .unwrap();
    assert!(!status.success(), "the card holds the generic image only");
    let fat = oracle::partition(&generic, 1);
    oracle::assert_fsck_fat_clean(&card, fat.start, fat.size);
    let text = oracle::fat_cat(&card, fat.start, &format!("/{SEED_FILE_NAME}"));
    let seed = Seed::from_toml_str(&text).expect("the seed parses");
    let file = |path: &str| {
        let f = seed.files.iter().find(|f| f.path == path);
        String::from_utf8(
            f.unwrap_or_else(|| panic!("{path} in the seed"))
                .content()
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(file("/etc/hostname"), "pi4-b\n");
    assert_eq!(file("/etc/imagegen/nut-password"), "FlashNutSecret");
}

#[test]
fn a_config_error_is_reported_before_the_card_is_written() {
    let g = Generic::new();
    // An old card: larger than the image, its first and last MiB marked.
    let raw_size = {
        let raw = g.path("size.img");
        oracle::run("zstd", &["-q", "-d", s(&g.image()), "-o", s(&raw)]);
        let n = fs::metadata(&raw).unwrap().len();
        fs::remove_file(&raw).unwrap();
        n
    };
    let card = g.path("card.disk");
    let len = raw_size + (4 << 20);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&card).unwrap();
        f.set_len(len).unwrap();
        f.write_all_at(&[0xa5; 1 << 20], 0).unwrap();
        f.write_all_at(&[0x5a; 1 << 20], len - (1 << 20)).unwrap();
    }
    let before = oracle::run("sha256sum", &[s(&card)]);
    let bad_field = g.path("bad-field.toml");
    fs::write(
        &bad_field,
        g.config_text("secrets/nut-password")
            .replace("[cluster]\n", "[cluster]\nbogus = 1\n"),
    )
    .unwrap();
    let no_secret = g.path("no-secret.toml");
    fs::write(&no_secret, g.config_text("secrets/missing")).unwrap();
    let missing = g.path("missing.toml");
    for (config, node, needle) in [
        (g.config(), "pi4-z", "no node named \"pi4-z\""),
        (bad_field, "pi4-b", "unknown field `bogus`"),
        (no_secret, "pi4-b", "secrets/missing"),
        (missing, "pi4-b", "missing.toml"),
    ] {
        let err = fails(&strs(&g.flash_args(&card, &config, node)), &[], needle);
        assert_eq!(
            oracle::run("sha256sum", &[s(&card)]),
            before,
            "{needle}: the card was written: {err}"
        );
        // A new file target is not even created.
        let new = g.path("new.disk");
        fails(&strs(&g.flash_args(&new, &config, node)), &[], needle);
        assert!(!new.exists(), "{needle}: {} was created", new.display());
    }
}

/// `personalize IMAGE.img.zst -o OUT` writes the raw image that `zstd -d` then `personalize`
/// in place gives, leaves IMAGE as it was, refuses to change a compressed image in place, and
/// warns in one line when the image already holds a seed.
#[test]
fn personalize_takes_a_compressed_image_with_an_output() {
    let g = Generic::new();
    let (config, state) = (g.config(), g.state());
    let personalize = |image: &Path, extra: &[&str]| {
        let mut args = vec![
            "personalize",
            s(image),
            "--config",
            s(&config),
            "--node",
            "pi4-b",
            "--state-dir",
            s(&state),
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let compressed_sum = oracle::run("sha256sum", &[s(&g.image())]);
    let out = g.path("out.img");
    let done = imagegen(&strs(&personalize(&g.image(), &["-o", s(&out)])), &[]);
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains(&format!("to {}:", s(&out))), "{err}");

    let reference = g.path("ref.img");
    oracle::run("zstd", &["-q", "-d", s(&g.image()), "-o", s(&reference)]);
    ok(&strs(&personalize(&reference, &[])), &[]);
    cmp(&reference, &out, fs::metadata(&reference).unwrap().len());
    assert_eq!(
        fs::metadata(&out).unwrap().len(),
        fs::metadata(&reference).unwrap().len()
    );
    assert_eq!(oracle::run("sha256sum", &[s(&g.image())]), compressed_sum);
    // Only the output is left beside it, no scratch file.
    let left: Vec<String> = fs::read_dir(g.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // In place on the compressed image: refused, the image untouched.
    fails(
        &strs(&personalize(&g.image(), &[])),
        &[],
        "cannot be changed in place",
    );
    fails(
        &strs(&personalize(&g.image(), &["-o", s(&g.path("x.img.zst"))])),
        &[],
        "writes a raw image",
    );
    assert_eq!(oracle::run("sha256sum", &[s(&g.image())]), compressed_sum);

    // Again on the personalized image, in place and to another output: one warning line each.
    for extra in [&[][..], &["-o", s(&g.path("again.img"))]] {
        let again = imagegen(&strs(&personalize(&out, extra)), &[]);
        let err = String::from_utf8_lossy(&again.stderr);
        assert!(again.status.success(), "{err}");
        let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
        assert_eq!(warnings.len(), 1, "{err}");
        assert!(warnings[0].contains("already personalized"), "{err}");
    }
}

/// Off a terminal (stderr is a pipe here) each finished stage prints one line with its size
/// and duration; --quiet silences them and keeps the closing summary. Stages under 2 s print
/// nothing unless the test hook asks for every one.
#[test]
fn stage_lines_off_a_terminal_and_quiet() {
    let im = Images::new();
    im.with_bmap("a.img.zst", true);
    let every = [("IMAGEGEN_TEST_EVERY_STAGE_LINE", "1")];
    let stage_lines = |err: &str| -> Vec<String> {
        err.lines()
            .filter(|l| !l.starts_with("wrote "))
            .map(str::to_string)
            .collect()
    };
    let target = im.path("t.disk");
    let out = imagegen(&["flash", s(&im.path("a.img.zst")), s(&target)], &every);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let lines = stage_lines(&err);
    assert_eq!(lines.len(), 2, "{err}");
    let size = format!("{:.1} MiB", im.size() as f64 / f64::from(1 << 20));
    for (line, stage) in lines.iter().zip(["flash ", "verify "]) {
        assert!(line.starts_with(stage), "{err}");
        let (_, secs) = line.rsplit_once(" in ").unwrap();
        let secs = secs.strip_suffix(" s").unwrap();
        assert!(secs.parse::<f64>().is_ok(), "{line}");
    }
    assert!(lines[0].contains(&size), "{err}");

    fs::remove_file(&target).unwrap();
    for quiet in [&["--quiet", "flash"][..], &["flash", "-q"]] {
        let mut args = quiet.to_vec();
        let (image, t) = (im.path("a.img.zst"), target.clone());
        args.extend([s(&image), s(&t)]);
        let out = imagegen(&args, &every);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        assert_eq!(stage_lines(&err), Vec::<String>::new(), "{err}");
        assert_eq!(err.lines().count(), 1, "the summary stays: {err}");
        cmp(&im.raw(), &target, im.size());
        fs::remove_file(&target).unwrap();
    }
}
