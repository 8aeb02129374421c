//! The ARM test bed: a real Debian 12 arm64 userland (`tests/vm/mkroot-arm64.sh`) laid out as
//! each vendor lays out its image (`tests/vm/mkarm.sh`), and the boot firmware of each board
//! emulated by reading the image's own boot files with real tools (mtools for FAT, debugfs for
//! ext4), so what qemu boots is exactly what imagegen left in the image.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    Machine, VmOptions, cached, debugfs, partition_offset, require_tool, run, workspace_root,
};

const MKROOT: &str = "tests/vm/mkroot-arm64.sh";
const MKARM: &str = "tests/vm/mkarm.sh";

/// The Debian 12 arm64 root tarball, built on first use (mmdebstrap through qemu-user: many
/// minutes) and cached outside the checkout like the x86 base.
pub fn root_tarball() -> PathBuf {
    cached("debian12-arm64-root", "tar", &[MKROOT], |out| {
        for (tool, package) in [
            ("mmdebstrap", "mmdebstrap"),
            ("arch-test", "arch-test"),
            ("qemu-aarch64-static", "qemu-user-static"),
        ] {
            require_tool(tool, package);
        }
        eprintln!(
            "vm: building the arm64 root {out:?} with mmdebstrap under qemu-user (about 10-20 minutes)"
        );
        run(Command::new("sh")
            .arg(workspace_root().join(MKROOT))
            .arg(out));
    })
}

/// The vendor-shaped image `layout` (`rpios-bookworm`, `armbian-bpim5`, `ubuntu-raspi`) around
/// the arm64 root, cached. Never boot or edit it in place: `imagegen build` reads it as `--base`.
pub fn base(layout: &str) -> PathBuf {
    let root = root_tarball();
    cached(&format!("arm64-{layout}"), "img", &[MKROOT, MKARM], |out| {
        for (tool, package) in [
            ("mkfs.ext4", "e2fsprogs"),
            ("mkfs.vfat", "dosfstools"),
            ("mcopy", "mtools"),
            ("sfdisk", "fdisk"),
        ] {
            require_tool(tool, package);
        }
        run(Command::new("bash")
            .arg(workspace_root().join(MKARM))
            .arg(layout)
            .arg(&root)
            .arg(out));
    })
}

/// The `-i` argument of mtools for the FAT filesystem at `offset` in `disk`.
fn mtools_image(disk: &Path, offset: u64) -> String {
    format!("{}@@{offset}", disk.display())
}

/// Copies file `name` of the FAT filesystem at `offset` in `disk` to `dest` with mtools.
fn fat_read(disk: &Path, offset: u64, name: &str, dest: &Path) {
    require_tool("mcopy", "mtools");
    run(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(mtools_image(disk, offset))
        .arg(format!("::/{name}"))
        .arg(dest));
}

fn fat_text(disk: &Path, offset: u64, name: &str, work: &Path) -> String {
    let dest = work.join(name.replace('/', "_"));
    fat_read(disk, offset, name, &dest);
    fs::read_to_string(&dest).unwrap_or_else(|e| panic!("{name} on the FAT partition: {e}"))
}

/// What a Raspberry Pi 4's firmware takes from the first FAT partition's `config.txt`: the
/// kernel, the initramfs and the command-line file. Documented behaviour (Raspberry Pi
/// "config.txt" documentation): `kernel=` defaults to `kernel8.img` with `arm_64bit=1`;
/// `initramfs FILE [followkernel]` names the initramfs, or `auto_initramfs=1` derives it from the
/// kernel's name (`kernel8.img` -> `initramfs8`); `cmdline=` defaults to `cmdline.txt`;
/// `os_prefix=` prefixes all three; `[filter]` sections apply only on matching boards, and this
/// emulates a Pi 4 (`[all]`, `[pi4]`).
#[derive(Debug, PartialEq, Eq)]
pub struct PiConfig {
    pub kernel: String,
    pub initramfs: Option<String>,
    pub cmdline: String,
}

pub fn parse_pi_config(text: &str) -> PiConfig {
    let mut active = true;
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    let mut initramfs = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(filter) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            active = matches!(filter, "all" | "pi4");
            continue;
        }
        if !active {
            continue;
        }
        if let Some(rest) = line.strip_prefix("initramfs ") {
            initramfs = rest.split_whitespace().next().map(str::to_owned);
        } else if let Some((k, v)) = line.split_once('=') {
            settings.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    let prefix = settings.get("os_prefix").cloned().unwrap_or_default();
    let kernel = settings
        .get("kernel")
        .cloned()
        .unwrap_or_else(|| "kernel8.img".into());
    if initramfs.is_none() && settings.get("auto_initramfs").is_some_and(|v| v == "1") {
        // kernel8.img -> initramfs8, kernel_2712.img -> initramfs_2712.
        initramfs = kernel
            .strip_prefix("kernel")
            .and_then(|k| k.strip_suffix(".img"))
            .map(|suffix| format!("initramfs{suffix}"));
    }
    PiConfig {
        kernel: format!("{prefix}{kernel}"),
        initramfs: initramfs.map(|i| format!("{prefix}{i}")),
        cmdline: format!(
            "{prefix}{}",
            settings
                .get("cmdline")
                .cloned()
                .unwrap_or_else(|| "cmdline.txt".into())
        ),
    }
}

/// Boot options for a Raspberry Pi image (Raspberry Pi OS or Ubuntu raspi): the kernel,
/// initramfs and one-line command line that the Pi firmware would take from partition 1.
/// The files are copied into `work`.
pub fn pi4_boot(disk: &Path, work: &Path) -> VmOptions {
    let offset = partition_offset(disk, 1);
    let config = parse_pi_config(&fat_text(disk, offset, "config.txt", work));
    let cmdline = fat_text(disk, offset, &config.cmdline, work);
    // The firmware reads the first line only; cmdline.txt must be a single line.
    let cmdline = cmdline.lines().next().unwrap_or("").trim().to_owned();
    let kernel = work.join("pi-kernel");
    fat_read(disk, offset, &config.kernel, &kernel);
    let initramfs = config
        .initramfs
        .as_ref()
        .unwrap_or_else(|| panic!("config.txt names no initramfs: {config:?}"));
    let initrd = work.join("pi-initramfs");
    fat_read(disk, offset, initramfs, &initrd);
    arm_options(kernel, initrd, cmdline)
}

/// Boot options for an Armbian image as its U-Boot `boot.scr` builds them, on the "modern
/// kernel" branch of armbian/build config/bootscripts/boot-meson64.cmd:
///
/// ```text
/// setenv bootargs "root=${rootdev} rootwait rootfstype=${rootfstype} ${consoleargs} consoleblank=0
///   coherent_pool=2M loglevel=${verbosity} ubootpart=${partuuid} libata.force=noncq
///   usb-storage.quirks=${usbstoragequirks} ${extraargs} ${extraboardargs}"
/// if test "${docker_optimizations}" = "on"; then setenv bootargs "${bootargs} cgroup_enable=memory swapaccount=1"; fi
/// ```
///
/// with the script's defaults (verbosity=1, console=both, docker_optimizations=on) overridden by
/// `/boot/armbianEnv.txt`, `partuuid` the PARTUUID of partition 1, and the kernel
/// `/boot/Image` and initramfs `/boot/uInitrd` (a U-Boot legacy ramdisk image, which qemu's
/// `-initrd` unwraps as U-Boot does) that the script loads, symlinks resolved.
pub fn armbian_boot(disk: &Path, work: &Path) -> VmOptions {
    let offset = partition_offset(disk, 1);
    let env = debugfs(disk, offset, false, "cat /boot/armbianEnv.txt\n");
    let vars: BTreeMap<&str, &str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let var = |k: &str, default: &str| vars.get(k).copied().unwrap_or(default).to_owned();
    let rootdev = vars
        .get("rootdev")
        .unwrap_or_else(|| panic!("armbianEnv.txt has no rootdev:\n{env}"));
    let consoleargs = match var("console", "both").as_str() {
        "serial" => "console=ttyAML0,115200",
        "display" => "console=tty1",
        _ => "console=ttyAML0,115200 console=tty1",
    };
    let mut cmdline = format!(
        "root={rootdev} rootwait rootfstype={} {consoleargs} consoleblank=0 coherent_pool=2M \
         loglevel={} ubootpart={}-01 libata.force=noncq usb-storage.quirks={} {} {}",
        var("rootfstype", "ext4"),
        var("verbosity", "1"),
        mbr_disk_id(disk),
        var("usbstoragequirks", ""),
        var("extraargs", ""),
        var("extraboardargs", ""),
    );
    if var("docker_optimizations", "on") == "on" {
        cmdline.push_str(" cgroup_enable=memory swapaccount=1");
    }
    let cmdline = cmdline.split_whitespace().collect::<Vec<_>>().join(" ");
    let kernel = work.join("armbian-Image");
    let initrd = work.join("armbian-uInitrd");
    let kernel_name = ext4_resolve(disk, offset, "/boot", "Image");
    let initrd_name = ext4_resolve(disk, offset, "/boot", "uInitrd");
    debugfs(
        disk,
        offset,
        false,
        &format!(
            "dump {kernel_name} {}\ndump {initrd_name} {}\n",
            kernel.display(),
            initrd.display()
        ),
    );
    arm_options(kernel, initrd, cmdline)
}

/// `dir/name` with a symlink followed (once, relative or absolute), read with debugfs.
fn ext4_resolve(disk: &Path, offset: u64, dir: &str, name: &str) -> String {
    let path = format!("{dir}/{name}");
    let stat = debugfs(disk, offset, false, &format!("stat {path}\n"));
    match stat
        .lines()
        .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
        .map(|t| t.trim_matches('"'))
    {
        Some(target) if target.starts_with('/') => target.to_owned(),
        Some(target) => format!("{dir}/{target}"),
        None => path,
    }
}

/// The MBR disk identifier in lowercase hex, as in PARTUUIDs, read with sfdisk.
fn mbr_disk_id(disk: &Path) -> String {
    let out = run(Command::new("sfdisk").arg("--json").arg(disk));
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sfdisk --json");
    table["partitiontable"]["id"]
        .as_str()
        .and_then(|id| id.strip_prefix("0x"))
        .unwrap_or_else(|| panic!("{disk:?} has no MBR disk id"))
        .to_ascii_lowercase()
}

fn arm_options(kernel: PathBuf, initrd: PathBuf, cmdline: String) -> VmOptions {
    VmOptions {
        machine: Machine::Aarch64,
        kernel,
        initrd,
        root_partition: 0,
        cmdline: Some(cmdline),
        extra_args: String::new(),
        memory_mib: 1024,
        cpus: 2,
        qemu_args: Vec::new(),
        disk_format: "raw",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pi_config_follows_the_firmware_rules() {
        // Raspberry Pi OS bookworm: defaults plus auto_initramfs; the [cm5] overlay is skipped.
        let rpios = "arm_64bit=1\nauto_initramfs=1\n[cm5]\nkernel=other.img\n[all]\n";
        assert_eq!(
            parse_pi_config(rpios),
            PiConfig {
                kernel: "kernel8.img".into(),
                initramfs: Some("initramfs8".into()),
                cmdline: "cmdline.txt".into(),
            }
        );
        // Ubuntu raspi: named kernel and initramfs, explicit cmdline file.
        let ubuntu = "[pi4]\nmax_framebuffers=2\n[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\n\
                      initramfs initrd.img followkernel # comment\n";
        assert_eq!(
            parse_pi_config(ubuntu),
            PiConfig {
                kernel: "vmlinuz".into(),
                initramfs: Some("initrd.img".into()),
                cmdline: "cmdline.txt".into(),
            }
        );
        assert_eq!(
            parse_pi_config("os_prefix=next/\nkernel=k.img\n").kernel,
            "next/k.img"
        );
    }
}
