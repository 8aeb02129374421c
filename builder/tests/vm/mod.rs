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

pub mod arm;
pub mod lab;

/// The emulated machine: the x86-64 PC of the genericcloud stand-in, or qemu's generic arm64
/// `virt` board for the ARM layouts (no Raspberry Pi or Amlogic board model boots Debian's
/// generic arm64 kernel with virtio disks; `virt` is what Debian's arm64 kernel supports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    X86_64,
    Aarch64,
}

impl Machine {
    fn qemu(self) -> &'static str {
        match self {
            Machine::X86_64 => "qemu-system-x86_64",
            Machine::Aarch64 => "qemu-system-aarch64",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Machine::X86_64 => "qemu-system-x86",
            Machine::Aarch64 => "qemu-system-arm",
        }
    }

    /// The serial console's device name in the guest.
    fn console(self) -> &'static str {
        match self {
            Machine::X86_64 => "ttyS0,115200",
            Machine::Aarch64 => "ttyAMA0,115200",
        }
    }

    /// Kernel arguments the harness adds for the emulator's sake. On the PC, `no_timer_check`:
    /// under TCG on a loaded host, the kernel's early check that the IO-APIC timer ticks
    /// (`timer_irq_works`, a short busy wait for jiffies to move) can miss and panic with
    /// "IO-APIC + timer doesn't work!" 0.05 s into the boot; seen in cluster_boot, two guests
    /// starting at once on the 2-core machine at load average 5. The parameter skips only that
    /// check (kernel-parameters.txt); Fedora's cloud images pass it for the same reason.
    fn emulator_args(self) -> &'static str {
        match self {
            Machine::X86_64 => "no_timer_check",
            Machine::Aarch64 => "",
        }
    }
}

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

/// Whether qemu for `machine` can run here at all. When it cannot, prints a loud banner so that
/// a skipped VM test is never mistaken for a passing one; callers return early on `false`. Under
/// CI (`CI=true`), where `ci/install-deps` installs qemu, a missing qemu fails the test instead.
pub fn qemu_available_for(machine: Machine) -> bool {
    let qemu = machine.qemu();
    let found = Command::new(qemu)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let package = machine.package();
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{qemu} cannot run here, and CI=true: apt-get install {package} (ci/install-deps)"
        );
        eprintln!(
            "\n{bar}\n!!! SKIPPED: {qemu} cannot run here (apt-get install {package}).\n\
             !!! This VM test proved NOTHING.\n{bar}\n",
            bar = "!".repeat(78)
        );
    }
    found
}

/// [`qemu_available_for`] the x86-64 PC.
pub fn qemu_available() -> bool {
    qemu_available_for(Machine::X86_64)
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

/// A file in the test cache built on first use by `make(path)` and keyed by the hash of the
/// scripts that decide its content (`tests/vm/...`), so editing a script rebuilds it. Several
/// test binaries may ask at once: one builds, the others wait on the lock. `make` must create
/// `path` last (after any siblings), by rename, so an interrupted build is never taken for done.
pub fn cached(name: &str, ext: &str, scripts: &[&str], make: impl FnOnce(&Path)) -> PathBuf {
    let mut hash = Sha256::new();
    for script in scripts {
        let path = workspace_root().join(script);
        hash.update(fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path:?}: {e}")));
    }
    let key = &hex::encode(hash.finalize())[..16];
    let dir = cache_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {dir:?}: {e}"));
    let path = dir.join(format!("{name}-{key}.{ext}"));
    let lock_path = dir.join(format!("{name}-{key}.lock"));
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("{lock_path:?}: {e}"));
    lock.lock()
        .unwrap_or_else(|e| panic!("cannot lock {lock_path:?}: {e}"));
    if !path.exists() {
        let started = Instant::now();
        make(&path);
        assert!(path.exists(), "building {path:?} left no file");
        eprintln!(
            "vm: built {path:?} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    path
}

/// The Debian 12 genericcloud stand-in, built on first use by `tests/vm/mkbase.sh` (about two
/// minutes). Next to it: `<image>.vmlinuz`, `<image>.initrd`. Never boot or edit it in place:
/// copy it with `cp --sparse=always` (see [`copy_base`]).
pub fn base_image() -> PathBuf {
    cached(
        "debian12-genericcloud",
        "img",
        &["tests/vm/mkbase.sh"],
        |image| {
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
            let script = workspace_root().join("tests/vm/mkbase.sh");
            run(Command::new("sh").arg(&script).arg(image));
        },
    )
}

/// A sparse copy of the base image at `dest`, for one test to boot and edit.
pub fn copy_base(dest: &Path) {
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(base_image())
        .arg(dest));
}

/// Byte offset of partition `number` of a disk image (MBR or GPT), read with `sfdisk --json`.
pub fn partition_offset(disk: &Path, number: u32) -> u64 {
    require_tool("sfdisk", "fdisk");
    let out = run(Command::new("sfdisk").arg("--json").arg(disk));
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sfdisk --json {disk:?}: {e}"));
    let table = &table["partitiontable"];
    // Image files have 512-byte sectors; sfdisk says so in `sectorsize` (older ones omit it).
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let suffix = number.to_string();
    table["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["node"].as_str().is_some_and(|n| {
                n.strip_suffix(&suffix)
                    .is_some_and(|rest| !rest.ends_with(|c: char| c.is_ascii_digit()))
            })
        })
        .and_then(|p| p["start"].as_u64())
        .map(|start| start * sector)
        .unwrap_or_else(|| panic!("{disk:?} has no partition {number}:\n{table:#}"))
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
    } else {
        // Reads only: -c ("catastrophic mode") does not load the allocation bitmaps, so a root
        // left dirty by a power cut (bitmap checksums stale until the journal is replayed)
        // can still be read; without it debugfs refuses to open it at all (seen in e2e).
        cmd.arg("-c");
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
    pub machine: Machine,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Partition number of the root filesystem; its fstab gives `root=` unless `cmdline` is set.
    pub root_partition: u32,
    /// The whole kernel command line, as the board's firmware would pass it (read from the
    /// image); the serial console is appended. `None`: `root=` from the image's fstab.
    pub cmdline: Option<String>,
    /// Appended to the kernel command line.
    pub extra_args: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// More qemu arguments, after the rest (a second NIC on a link between two guests).
    pub qemu_args: Vec<String>,
    /// qemu's name for the disk's format: `raw`, or `qcow2` for a `.qcow2` output (then set
    /// `cmdline`: `root=` is otherwise read from the disk as a raw image).
    pub disk_format: &'static str,
}

impl Default for VmOptions {
    fn default() -> Self {
        let image = base_image();
        VmOptions {
            machine: Machine::X86_64,
            kernel: sibling(&image, "vmlinuz"),
            initrd: sibling(&image, "initrd"),
            root_partition: 1,
            cmdline: None,
            extra_args: String::new(),
            memory_mib: 1024,
            cpus: 2,
            qemu_args: Vec::new(),
            disk_format: "raw",
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
        let cmdline = match &opts.cmdline {
            Some(c) => c.clone(),
            None => {
                let root_offset = partition_offset(disk, opts.root_partition);
                format!("root={} ro", fstab_root(disk, root_offset))
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("imagegen-vm-")
            .tempdir()
            .expect("temp dir for the VM logs");
        let serial = dir.path().join("serial.log");
        let stderr = dir.path().join("qemu.stderr");
        let ssh_port = free_port();

        let accel = std::env::var("IMAGEGEN_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
        let qemu = opts.machine.qemu();
        let mut cmd = Command::new(qemu);
        cmd.args(["-nodefaults", "-display", "none", "-no-reboot"]);
        match opts.machine {
            Machine::X86_64 => {
                cmd.args(["-machine", "pc", "-accel", &accel]);
                if accel == "kvm" {
                    cmd.args(["-cpu", "host"]);
                }
            }
            // The Cortex-A72 is the Raspberry Pi 4's core (the Pi 3's A53 and the S905X3's
            // A55 run the same arm64 userland).
            Machine::Aarch64 => {
                cmd.args(["-machine", "virt", "-accel", &accel, "-cpu"]);
                cmd.arg(if accel == "kvm" { "host" } else { "cortex-a72" });
            }
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
                "{cmdline} console={} {} {}",
                opts.machine.console(),
                opts.machine.emulator_args(),
                opts.extra_args
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format={},if=virtio,cache=unsafe,discard=unmap",
                disk.display(),
                opts.disk_format
            ))
            .args(["-netdev"])
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"))
            .args(["-device", "virtio-net-pci,netdev=n0,addr=0x3"])
            .args(["-device", "virtio-rng-pci"])
            .args(&opts.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("qemu stderr log"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {qemu}: {e}"));
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

    /// Waits until systemd has finished starting up and returns `systemctl is-system-running`
    /// ("running", "degraded", ...; what it said last when `timeout` ran out). Polled, not
    /// `is-system-running --wait`, which waits for the StartupFinished D-Bus signal (systemd
    /// PR #9796): seen here blocked on a Pi guest (systemd 252) whose startup had finished 14
    /// minutes before. Short sessions also survive a loaded host better than one long one whose
    /// keep-alives go unanswered.
    pub fn wait_settled(&self, user: &str, key: &Path, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.ssh(user, key, "systemctl is-system-running");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let booting =
                out.status.code() == Some(255) || state == "initializing" || state == "starting";
            if !booting || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_secs(3));
        }
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

pub fn free_port() -> u16 {
    // The port is free now; qemu binds it a moment later. A clash makes qemu exit, which
    // wait_for_ssh reports with qemu's stderr.
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A UDP port free on 127.0.0.1 now (for a `-netdev dgram` end), as [`free_port`] for TCP.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind(("127.0.0.1", 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port on 127.0.0.1")
}
