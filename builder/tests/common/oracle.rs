//! Real tools as test oracles. A missing tool fails the test with the apt package that
//! provides it; a failing tool fails the test with its stderr.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempPath;

/// The Debian package that ships `tool`, for error messages.
pub fn apt_package(tool: &str) -> &'static str {
    match tool {
        "sfdisk" | "fdisk" => "fdisk",
        "sgdisk" | "gdisk" => "gdisk",
        "blkid" => "util-linux",
        "debugfs" | "dumpe2fs" | "e2fsck" | "mke2fs" | "mkfs.ext4" | "resize2fs" | "tune2fs" => {
            "e2fsprogs"
        }
        "fsck.fat" | "fsck.vfat" | "mkfs.fat" | "mkfs.vfat" => "dosfstools",
        "mcopy" | "mdir" | "minfo" | "mmd" | "mtype" | "mdel" => "mtools",
        "bmaptool" => "bmap-tools",
        "qemu-img" => "qemu-utils",
        "qemu-system-x86_64" => "qemu-system-x86",
        "xz" => "xz-utils",
        "zstd" => "zstd",
        "upsd" | "dummy-ups" => "nut-server",
        "upsc" | "upsmon" => "nut-client",
        "rsync" => "rsync",
        "sshd" => "openssh-server",
        "ssh" | "ssh-keygen" => "openssh-client",
        "mmdebstrap" => "mmdebstrap",
        "nft" => "nftables",
        "wg" | "wg-quick" => "wireguard-tools",
        "zbarimg" => "zbar-tools",
        "openssl" => "openssl",
        "bash" => "bash",
        "netplan" => "netplan.io",
        "nmcli" => "network-manager",
        "dpkg-deb" => "dpkg",
        _ => "coreutils",
    }
}

/// Full path of `tool`: PATH first, then the sbin directories that non-root PATHs often lack.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is needed by this test but not installed: apt-get install {}",
                apt_package(name)
            )
        })
}

/// Runs `name args...` and returns its output whatever its exit status.
pub fn output(name: &str, args: &[&str]) -> Output {
    output_env(name, args, &[])
}

/// Like [`output`], with extra environment variables.
pub fn output_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(tool(name))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs `name args...`, requires exit status 0, and returns stdout.
pub fn run(name: &str, args: &[&str]) -> String {
    let out = output(name, args);
    check(name, args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(name: &str, args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "`{name} {}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real package made by `dpkg-deb --build` in `dir`: `package` `version` for `arch`
/// ("amd64", "arm64", "all"...), its members compressed with `compression` ("xz", "gzip",
/// "zstd", "none"), holding `/usr/share/doc/PACKAGE/hello`.
#[allow(dead_code)]
pub fn dpkg_deb_build(
    dir: &Path,
    package: &str,
    version: &str,
    arch: &str,
    compression: &str,
) -> PathBuf {
    let tree = dir.join(format!("{package}-{arch}-{compression}-tree"));
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(tree.join(format!("usr/share/doc/{package}"))).unwrap();
    std::fs::write(
        tree.join(format!("usr/share/doc/{package}/hello")),
        "hello\n",
    )
    .unwrap();
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {package}\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: Test <test@example.org>\nDescription: imagegen test package\n \
             Version: 0-not-this-one\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("{package}_{version}_{arch}_{compression}.deb"));
    run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            &format!("-Z{compression}"),
            "--build",
            path_str(&tree),
            path_str(&out),
        ],
    );
    out
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// The `partitiontable` object of `sfdisk --json IMG`.
pub fn sfdisk_json(img: &Path) -> serde_json::Value {
    let text = run("sfdisk", &["--json", path_str(img)]);
    let mut value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("sfdisk --json output: {e}\n{text}"));
    value["partitiontable"].take()
}

/// One partition as sfdisk reports it; `number` comes from the node name (`IMG14` is 14).
#[derive(Debug, Clone)]
pub struct SfdiskPartition {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    pub type_: String,
    pub uuid: Option<String>,
    pub bootable: bool,
}

/// The partitions of `img` as sfdisk reads them, in table order.
pub fn partitions(img: &Path) -> Vec<SfdiskPartition> {
    let table = sfdisk_json(img);
    let node_prefix = path_str(img);
    table["partitions"]
        .as_array()
        .expect("sfdisk lists partitions")
        .iter()
        .map(|p| SfdiskPartition {
            number: p["node"]
                .as_str()
                .and_then(|n| n.strip_prefix(node_prefix))
                .and_then(|n| n.parse().ok())
                .expect("node is IMG<number>"),
            start: p["start"].as_u64().expect("start"),
            size: p["size"].as_u64().expect("size"),
            type_: p["type"].as_str().expect("type").to_owned(),
            uuid: p["uuid"].as_str().map(str::to_owned),
            bootable: p["bootable"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// The partition numbered `number` of `img`.
pub fn partition(img: &Path, number: u32) -> SfdiskPartition {
    partitions(img)
        .into_iter()
        .find(|p| p.number == number)
        .unwrap_or_else(|| panic!("{} has no partition {number}", img.display()))
}

/// `IMG?offset=BYTES`, the e2fsprogs syntax for a filesystem inside a disk image.
pub fn ext4_at(img: &Path, start_sector: u64) -> String {
    format!("{}?offset={}", path_str(img), start_sector * 512)
}

/// `debugfs -R REQUEST` on the ext4 filesystem at `start_sector`. debugfs exits 0 even when
/// the request fails, so any stderr line other than its version banner fails the test.
pub fn debugfs(img: &Path, start_sector: u64, request: &str) -> String {
    let spec = ext4_at(img, start_sector);
    let out = output("debugfs", &["-R", request, &spec]);
    check("debugfs", &["-R", request, &spec], &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    assert!(
        errors.is_empty(),
        "debugfs -R '{request}' {spec}: {}",
        errors.join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Content of `path` in the ext4 filesystem at `start_sector`.
pub fn ext4_cat(img: &Path, start_sector: u64, path: &str) -> String {
    debugfs(img, start_sector, &format!("cat \"{path}\""))
}

/// `dumpe2fs -h` of the ext4 filesystem at `start_sector`, as "Field name" -> value.
pub fn dumpe2fs(img: &Path, start_sector: u64) -> BTreeMap<String, String> {
    run("dumpe2fs", &["-h", &ext4_at(img, start_sector)])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Asserts `e2fsck -fn` finds nothing to fix in the ext4 filesystem at `start_sector`.
pub fn assert_e2fsck_clean(img: &Path, start_sector: u64) {
    run("e2fsck", &["-fn", &ext4_at(img, start_sector)]);
}

/// `blkid -p` (low-level probe, no cache) of whatever starts at `start_sector`, as KEY -> value;
/// empty when blkid recognises nothing there (its exit status 2).
pub fn blkid(img: &Path, start_sector: u64) -> BTreeMap<String, String> {
    let offset = (start_sector * 512).to_string();
    let args = ["-p", "-o", "export", "-O", &offset, path_str(img)];
    let out = output("blkid", &args);
    if out.status.code() == Some(2) && out.stdout.is_empty() {
        return BTreeMap::new();
    }
    check("blkid", &args, &out);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `IMG@@OFFSET`, the mtools syntax for a FAT filesystem inside a disk image.
pub fn fat_at(img: &Path, start_sector: u64) -> String {
    format!("{}@@{}", path_str(img), start_sector * 512)
}

const MTOOLS_ENV: &[(&str, &str)] = &[("MTOOLS_SKIP_CHECK", "1")];

/// Runs an mtools command (`mtype`, `mdir`, `minfo`...) and returns stdout.
pub fn mtools(name: &str, args: &[&str]) -> String {
    let out = output_env(name, args, MTOOLS_ENV);
    check(name, args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Content of `path` (e.g. "/cmdline.txt") in the FAT filesystem at `start_sector`.
pub fn fat_cat(img: &Path, start_sector: u64, path: &str) -> String {
    mtools(
        "mtype",
        &["-i", &fat_at(img, start_sector), &format!("::{path}")],
    )
}

/// Asserts `fsck.fat -n` finds nothing wrong with the FAT filesystem in the given sectors
/// (copied out first: fsck.fat has no offset option).
pub fn assert_fsck_fat_clean(img: &Path, start_sector: u64, sectors: u64) {
    let part = extract(img, start_sector, sectors);
    run("fsck.fat", &["-n", path_str(&part)]);
}

/// A sparse copy of `sectors` sectors of `img` from `start_sector`, deleted when dropped.
pub fn extract(img: &Path, start_sector: u64, sectors: u64) -> TempPath {
    let part = tempfile::Builder::new()
        .suffix(".part")
        .tempfile_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a temporary file")
        .into_temp_path();
    run(
        "dd",
        &[
            &format!("if={}", path_str(img)),
            &format!("of={}", path_str(&part)),
            "bs=64K",
            "iflag=skip_bytes,count_bytes",
            &format!("skip={}", start_sector * 512),
            &format!("count={}", sectors * 512),
            "conv=sparse",
            "status=none",
        ],
    );
    part
}

/// `len` raw bytes of `img` from byte `offset`.
pub fn read_bytes(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut file = File::open(img).unwrap_or_else(|e| panic!("open {}: {e}", img.display()));
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0; len];
    file.read_exact(&mut buf).expect("read");
    buf
}

/// An ed25519 key pair without passphrase made by ssh-keygen at `path` and `path.pub`.
pub fn ssh_keygen(path: &Path, comment: &str) {
    let path = path.to_str().expect("UTF-8 test path");
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
    );
}

/// A loop device over a file, detached when dropped.
pub struct LoopDevice(pub String);

impl LoopDevice {
    /// Attaches `file` (with partition scanning when `partitions`); `None` when this process
    /// cannot (not root, or no /dev/loop-control, as in some containers).
    pub fn attach(file: &Path, partitions: bool) -> Option<LoopDevice> {
        if !rustix::process::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
            return None;
        }
        let mut args = vec!["-f", "--show"];
        if partitions {
            args.push("-P");
        }
        args.push(path_str(file));
        Some(LoopDevice(run("losetup", &args).trim().to_string()))
    }

    pub fn path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new(tool("losetup")).args(["-d", &self.0]).status();
    }
}

/// The mapped byte ranges of a `.bmap` (bmaptool's XML), by a plain text scan, and the image
/// size it states.
pub fn bmap_ranges(bmap: &Path) -> (Vec<(u64, u64)>, u64) {
    let text = std::fs::read_to_string(bmap).expect("read the bmap");
    let number = |tag: &str| -> u64 {
        text.split(&format!("<{tag}>"))
            .nth(1)
            .and_then(|r| r.split('<').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no <{tag}>", bmap.display()))
    };
    let (size, block) = (number("ImageSize"), number("BlockSize"));
    let ranges = text
        .lines()
        .filter(|l| l.contains("<Range"))
        .map(|l| {
            let body = l
                .split('>')
                .nth(1)
                .unwrap()
                .split('<')
                .next()
                .unwrap()
                .trim();
            let (a, b) = body.split_once('-').unwrap_or((body, body));
            let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
            (a * block, ((b + 1) * block).min(size))
        })
        .collect();
    (ranges, size)
}

/// Flashes `image` (with its `IMAGE.bmap`) onto a reused card, simulated by a file the size of
/// the raw image `raw` filled with 0x5a, and checks the card as a board would read it: every
/// FAT and ext4 filesystem clean by `fsck.fat -n` / `e2fsck -fn` at its offset, the partition
/// table the image's (`sfdisk -d`, and `sgdisk -v` on a GPT). The writer is `bmaptool copy`
/// onto a loop device over the file (to a regular file bmaptool truncates it first, which
/// would hide exactly this); without loop devices the bmap's ranges are copied from `raw`
/// with `dd conv=notrunc`. Returns the mapped share of the image, in percent.
pub fn assert_reused_card(image: &Path, raw: &Path, scratch: &Path) -> u64 {
    use std::io::Write;
    let bmap = PathBuf::from(format!("{}.bmap", path_str(image)));
    let (ranges, size) = bmap_ranges(&bmap);
    let card = scratch.join("reused-card");
    {
        let mut f = File::create(&card).expect("create the card file");
        let stale = vec![0x5au8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(stale.len() as u64) as usize;
            f.write_all(&stale[..n]).expect("fill the card file");
            left -= n as u64;
        }
    }
    let device = LoopDevice::attach(&card, false);
    match &device {
        Some(dev) => {
            run(
                "bmaptool",
                &[
                    "-q",
                    "copy",
                    "--bmap",
                    path_str(&bmap),
                    path_str(image),
                    &dev.0,
                ],
            );
        }
        None => {
            eprintln!(
                "NOTE: no loop device (needs root and /dev/loop-control): the bmap's ranges \
                 are copied with dd instead of bmaptool copy"
            );
            for (a, b) in &ranges {
                run(
                    "dd",
                    &[
                        &format!("if={}", path_str(raw)),
                        &format!("of={}", path_str(&card)),
                        "bs=64K",
                        "iflag=skip_bytes,count_bytes",
                        "oflag=seek_bytes",
                        &format!("skip={a}"),
                        &format!("seek={a}"),
                        &format!("count={}", b - a),
                        "conv=notrunc",
                        "status=none",
                    ],
                );
            }
        }
    }
    let target: &Path = device.as_ref().map_or(card.as_path(), |d| d.path());
    let mut checked = 0;
    for p in partitions(raw) {
        match blkid(raw, p.start).get("TYPE").map(String::as_str) {
            Some("ext4") => assert_e2fsck_clean(target, p.start),
            Some("vfat") => assert_fsck_fat_clean(target, p.start, p.size),
            _ => continue,
        }
        checked += 1;
    }
    assert!(checked > 0, "{}: no filesystem to check", raw.display());
    let table = |p: &Path| -> Vec<String> {
        run("sfdisk", &["-d", path_str(p)])
            .lines()
            .filter(|l| l.contains("start="))
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
            .collect()
    };
    assert_eq!(
        table(target),
        table(raw),
        "partition table on the reused card"
    );
    if sfdisk_json(raw)["label"] == "gpt" {
        let verified = run("sgdisk", &["-v", path_str(target)]);
        assert!(verified.contains("No problems found"), "{verified}");
    }
    drop(device);
    std::fs::remove_file(&card).expect("remove the card file");
    let mapped: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    mapped * 100 / size
}
