//! End-to-end test bed: a Debian 12 genericcloud stand-in built from Debian's packages
//! (`tests/vm/mkbase.sh`, cached), booted under `qemu-system-x86_64`, driven over SSH.
//!
//! Integration tests include it with `mod vm;`. See `tests/vm/README.md` for the environment
//! variables and for how the base differs from the real image.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const QEMU: &str = "qemu-system-x86_64";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("builder/ sits inside the workspace")
        .to_path_buf()
}

/// Outside the checkout by default, so a fresh clone (CI) on the same machine reuses the base
/// image instead of paying mmdebstrap again; the key is the hash of mkbase.sh.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMAGEGEN_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let user_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")));
    match user_cache {
        Some(c) => c.join("imagegen-tests/vm"),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).join("vm-cache"),
    }
}

/// Whether qemu can run here at all. When it cannot, prints a loud banner so that a skipped VM
/// test is never mistaken for a passing one; callers return early on `false`.
pub fn qemu_available() -> bool {
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!(
            "\n{bar}\n!!! SKIPPED: {QEMU} cannot run here (apt-get install qemu-system-x86).\n\
             !!! This VM test proved NOTHING.\n{bar}\n",
            bar = "!".repeat(78)
        );
    }
    found
}

/// Panics, naming the Debian package, when a tool a VM test needs is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(tool).is_file())
    });
    assert!(found, "{tool} is missing: apt-get install {package}");
}

/// Runs a command, panicking with its output when it cannot start or fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The cached base image, built on first use by `tests/vm/mkbase.sh` (about two minutes) and
/// keyed by that script's hash. Next to it: `<image>.vmlinuz`, `<image>.initrd`. Never boot or
/// edit it in place: copy it with `cp --sparse=always` (see [`copy_base`]).
pub fn base_image() -> PathBuf {
    let script = workspace_root().join("tests/vm/mkbase.sh");
    let body = fs::read(&script).unwrap_or_else(|e| panic!("cannot read {script:?}: {e}"));
    let key = &hex::encode(Sha256::digest(&body))[..16];
    let dir = cache_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    let image = dir.join(format!("debian12-genericcloud-{key}.img"));

    // Several test binaries may ask at once: one builds, the others wait on the lock.
    let lock_path = dir.join(format!("{key}.lock"));
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("{lock_path:?}: {e}"));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {lock_path:?}: {e}"));
    // mkbase.sh renames the image into place last, after the kernel and initrd.
    if !image.exists() {
        for (tool, package) in [
            ("mmdebstrap", "mmdebstrap"),
            ("mkfs.ext4", "e2fsprogs"),
            ("mkfs.vfat", "dosfstools"),
            ("sgdisk", "gdisk"),
        ] {
            require_tool(tool, package);
        }
        eprintln!(
            "vm: building the base image {image:?} with mmdebstrap (about 2 minutes on an idle 2-core machine)"
        );
        let started = Instant::now();
        run(Command::new("sh").arg(&script).arg(&image));
        eprintln!(
            "vm: base image built in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    image
}

/// A sparse copy of the base image at `dest`, for one test to boot and edit.
pub fn copy_base(dest: &Path) {
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(base_image())
        .arg(dest));
}

/// Byte offset of partition `number` of a GPT disk image, read with sgdisk.
pub fn partition_offset(disk: &Path, number: u32) -> u64 {
    require_tool("sgdisk", "gdisk");
    let out = run(Command::new("sgdisk")
        .arg(format!("--info={number}"))
        .arg(disk));
    let text = String::from_utf8_lossy(&out.stdout);
    // sgdisk's sector unit is the disk's logical sector; image files are 512.
    text.lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|sector| sector * 512)
        .unwrap_or_else(|| panic!("{disk:?} has no partition {number}:\n{text}"))
}

/// The `debugfs` spelling of the ext4 filesystem at `offset` inside `disk`.
pub fn ext4_at(disk: &Path, offset: u64) -> String {
    format!("{}?offset={offset}", disk.display())
}

/// Runs a debugfs script against the ext4 filesystem at `offset` in `disk`; `-w` when `write`.
/// debugfs exits 0 even when a command fails, so any line on stderr other than its banner is
/// treated as a failure. Returns stdout.
pub fn debugfs(disk: &Path, offset: u64, write: bool, script: &str) -> String {
    require_tool("debugfs", "e2fsprogs");
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    cmd.arg("-f").arg("-").arg(ext4_at(disk, offset));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("debugfs starts");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("piped stdin"),
        script.as_bytes(),
    )
    .expect("debugfs reads its script");
    let out = child.wait_with_output().expect("debugfs runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "debugfs on {} failed:\n{}\nscript:\n{script}",
        ext4_at(disk, offset),
        errors.join("\n")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root device spec of a disk image, as its own `/etc/fstab` names it (`PARTUUID=…`,
/// `UUID=…` or `LABEL=…`), so a boot also proves fstab and the partition table agree.
pub fn fstab_root(disk: &Path, root_offset: u64) -> String {
    let fstab = debugfs(disk, root_offset, false, "cat /etc/fstab\n");
    fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            let spec = fields.next()?;
            (fields.next()? == "/").then(|| spec.to_string())
        })
        .unwrap_or_else(|| panic!("no / entry in /etc/fstab of {disk:?}:\n{fstab}"))
}

/// How to boot a disk. `Default` boots with the base image's kernel and initrd.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Partition number of the root filesystem; its fstab gives `root=`.
    pub root_partition: u32,
    /// Appended to the kernel command line.
    pub extra_args: String,
    pub memory_mib: u32,
    pub cpus: u32,
}

impl Default for VmOptions {
    fn default() -> Self {
        let image = base_image();
        VmOptions {
            kernel: sibling(&image, "vmlinuz"),
            initrd: sibling(&image, "initrd"),
            root_partition: 1,
            extra_args: String::new(),
            memory_mib: 1024,
            cpus: 2,
        }
    }
}

fn sibling(image: &Path, ext: &str) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

/// A running qemu guest. Dropping it powers the guest off hard; if the test is panicking, the
/// serial log is printed and the log directory kept.
pub struct Vm {
    child: Child,
    ssh_port: u16,
    dir: Option<tempfile::TempDir>,
    serial: PathBuf,
    stderr: PathBuf,
    started: Instant,
    exit: Option<ExitStatus>,
}

impl Vm {
    /// Boots `disk` (raw). The guest's port 22 is forwarded to a free port on 127.0.0.1; from the
    /// guest, the host's loopback services are at 10.0.2.2. The NIC is virtio-net in PCI slot 3
    /// of qemu's `pc` machine, so Debian names it `ens3`.
    pub fn boot(disk: &Path, opts: VmOptions) -> Vm {
        let root_offset = partition_offset(disk, opts.root_partition);
        let root = fstab_root(disk, root_offset);
        let dir = tempfile::Builder::new()
            .prefix("imagegen-vm-")
            .tempdir()
            .expect("temp dir for the VM logs");
        let serial = dir.path().join("serial.log");
        let stderr = dir.path().join("qemu.stderr");
        let ssh_port = free_port();

        let accel = std::env::var("IMAGEGEN_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
        let mut cmd = Command::new(QEMU);
        cmd.args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-machine", "pc", "-accel", &accel]);
        if accel == "kvm" {
            cmd.args(["-cpu", "host"]);
        }
        cmd.args(["-m", &opts.memory_mib.to_string()])
            .args(["-smp", &opts.cpus.to_string()])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(&opts.kernel)
            .arg("-initrd")
            .arg(&opts.initrd)
            .arg("-append")
            .arg(format!(
                "root={root} ro console=ttyS0,115200 {}",
                opts.extra_args
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,cache=unsafe,discard=unmap",
                disk.display()
            ))
            .args(["-netdev"])
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"))
            .args(["-device", "virtio-net-pci,netdev=n0,addr=0x3"])
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("qemu stderr log"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
        Vm {
            child,
            ssh_port,
            dir: Some(dir),
            serial,
            stderr,
            started: Instant::now(),
            exit: None,
        }
    }

    /// The host port forwarded to the guest's port 22.
    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }

    /// Time since qemu was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the guest's sshd sends its banner. Panics if qemu exits or time runs out.
    pub fn wait_for_ssh(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ssh_port));
        loop {
            if let Some(status) = self.poll_exit() {
                panic!("qemu exited ({status}) before SSH came up");
            }
            if let Some(fatal) = self.boot_failure() {
                panic!("the guest cannot boot: {fatal}");
            }
            // Slirp accepts the connection even while nothing listens in the guest and then
            // closes it, so only sshd's banner proves it is up.
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut banner = [0u8; 4];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no SSH banner from the guest within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs `cmd` in the guest through the real ssh client; returns whatever it did.
    pub fn ssh(&self, user: &str, key: &Path, cmd: &str) -> Output {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                // A guest that dies mid-command must not hang the test.
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=3",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.ssh_port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("ssh (apt-get install openssh-client) runs")
    }

    /// Like [`Vm::ssh`], but panics unless the command succeeds; returns its stdout.
    pub fn ssh_ok(&self, user: &str, key: &Path, cmd: &str) -> String {
        let out = self.ssh(user, key, cmd);
        assert!(
            out.status.success(),
            "in the guest, `{cmd}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for qemu to exit (the guest powered off or rebooted: `-no-reboot`).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not power off within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Pulls the plug.
    pub fn kill(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn serial_log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// A line of the serial log that means the boot is over for good (a kernel panic, or the
    /// initramfs giving up on the root device), so tests fail at once rather than time out.
    fn boot_failure(&self) -> Option<String> {
        const FATAL: [&str; 3] = [
            "Kernel panic - not syncing",
            "Dropping to a shell!",
            "You are in emergency mode",
        ];
        self.serial_log()
            .lines()
            .find(|l| FATAL.iter().any(|f| l.contains(f)))
            .map(str::to_string)
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("qemu's status");
        }
        self.exit
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.serial_log();
            let qemu = fs::read_to_string(&self.stderr).unwrap_or_default();
            let kept = self.dir.take().map(tempfile::TempDir::keep);
            eprintln!(
                "---- serial console of the failed VM ({:.1} s after start; logs kept in {kept:?}) ----\n{log}\n\
                 ---- qemu stderr ----\n{qemu}\n---- end of VM logs ----",
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

fn free_port() -> u16 {
    // The port is free now; qemu binds it a moment later. A clash makes qemu exit, which
    // wait_for_ssh reports with qemu's stderr.
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
