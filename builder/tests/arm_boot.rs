//! The boards the users own, booted: Raspberry Pi OS (`--board rpi4`), Armbian for the Banana
//! Pi M5 (`--board bpi-m5`) and Ubuntu raspi (`--board rpi4` with an Ubuntu base), each made by
//! the real CLI with the aarch64 agent it finds by itself (no `--agent`), booted under
//! `qemu-system-aarch64` the way the board's firmware would boot it, and checked on the running
//! node with real clients against the lab of `vm/lab.rs` (UPS, NAS, k3s server stand-in).
//!
//! The bases are a real Debian 12 arm64 userland (`tests/vm/mkroot-arm64.sh`) laid out as each
//! vendor lays out its image (`tests/vm/mkarm.sh`; the differences from the real images are in
//! `tests/vm/README.md`). The boot files come out of the built image with mtools and debugfs
//! (`vm/arm.rs`): the kernel and initramfs that `config.txt` names and the command line of
//! `cmdline.txt` for the Pis, the `armbianEnv.txt` variables in the meson64 `boot.cmd` line for
//! the Banana Pi. The board's own kernel cannot run on qemu's `virt` machine, so Debian's generic
//! arm64 kernel stands in for it, under the vendor's file names.
//!
//! The three tests boot one at a time (a software-emulated arm64 guest takes both cores); the
//! image builds overlap with the other tests' boots.

mod agents;
mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use vm::Machine;
use vm::Vm;
use vm::lab::{
    ADMIN, Facts, Lab, boot_settled, build_node, check_node, host_key_fingerprint, poweroff_clean,
    ups_poweroff,
};

/// One emulated arm64 guest at a time.
static BOOTS: Mutex<()> = Mutex::new(());

/// The imagegen to build with (the aarch64 agent beside it), when this test can run; under
/// `CI=true` a missing tool fails it instead.
fn ready() -> Option<PathBuf> {
    if !vm::qemu_available_for(Machine::Aarch64) {
        return None;
    }
    for (tool, package) in [
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("ssh-keyscan", "openssh-client"),
        ("e2fsck", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("mcopy", "mtools"),
        ("sfdisk", "fdisk"),
    ] {
        vm::require_tool(tool, package);
    }
    agents::imagegen_with_agents(&["aarch64"])
}

/// The agent in the built image is an aarch64 ELF (e_machine 183), read with debugfs.
fn assert_aarch64_agent(disk: &Path, root_partition: u32, work: &Path) {
    let offset = vm::partition_offset(disk, root_partition);
    let agent = work.join("agent-from-image");
    vm::debugfs(
        disk,
        offset,
        false,
        &format!(
            "dump /usr/local/bin/imagegen-firstboot {}\n",
            agent.display()
        ),
    );
    let out = vm::run(Command::new("readelf").arg("-h").arg(&agent));
    let header = String::from_utf8_lossy(&out.stdout);
    assert!(
        header
            .lines()
            .any(|l| l.trim_start().starts_with("Machine:") && l.contains("AArch64")),
        "the agent in {disk:?} is not an aarch64 ELF:\n{header}"
    );
}

/// The fingerprint of the ed25519 host key stored in the image's root filesystem.
fn image_host_key(disk: &Path, root_partition: u32, work: &Path) -> String {
    let offset = vm::partition_offset(disk, root_partition);
    let public = work.join("image-host-key.pub");
    vm::debugfs(
        disk,
        offset,
        false,
        &format!(
            "dump /etc/ssh/ssh_host_ed25519_key.pub {}\n",
            public.display()
        ),
    );
    let out = vm::run(Command::new("ssh-keygen").arg("-lf").arg(&public));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint for the host key in {disk:?}"))
        .to_owned()
}

/// One node of a one-node cluster, built by the real CLI onto the cached `layout` base.
struct Node {
    name: &'static str,
    lab: Lab,
    base: PathBuf,
    disk: PathBuf,
    work: PathBuf,
    cluster: PathBuf,
    imagegen: PathBuf,
    /// Partition number of the root filesystem.
    root: u32,
}

impl Node {
    /// `None` when the test cannot run here (see [`ready`]).
    fn build(layout: &str, name: &'static str, board: &str, root: u32) -> Option<Node> {
        let imagegen = ready()?;
        let base = vm::arm::base(layout);
        let lab = Lab::start();
        let cluster = lab.cluster("cluster", true, &[(name, board)]);
        let work = lab.path("work");
        fs::create_dir_all(&work).unwrap();
        let disk = lab.path(&format!("{name}.img"));
        build_node(&imagegen, &cluster, name, &base, &lab.path("state"), &disk);
        assert_aarch64_agent(&disk, root, &work);
        Some(Node {
            name,
            lab,
            base,
            disk,
            work,
            cluster,
            imagegen,
            root,
        })
    }

    /// Boots the built image with `opts` and runs the checks every node must pass.
    fn boot(&self, opts: vm::VmOptions) -> (Vm, Facts) {
        let started = Instant::now();
        let guest = boot_settled(&self.disk, opts, &self.lab.admin_key, self.name, &[]);
        let facts = check_node(&self.lab, &guest, self.name);
        eprintln!(
            "arm: {}: checks passed {:.1} s after power-on",
            self.name,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(self.ssh_guest(&guest, "uname -m").trim(), "aarch64");
        (guest, facts)
    }

    fn ssh_guest(&self, guest: &Vm, cmd: &str) -> String {
        guest.ssh_ok(ADMIN, &self.lab.admin_key, cmd)
    }
}

fn cmdline_words(opts: &vm::VmOptions) -> Vec<String> {
    opts.cmdline
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn raspberry_pi_os_node_boots_joins_and_shuts_down_on_ups() {
    let Some(n) = Node::build("rpios-bookworm", "pi-a", "rpi4", 2) else {
        return;
    };
    let built_key = image_host_key(&n.disk, n.root, &n.work);

    let _one_guest = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let opts = vm::arm::pi4_boot(&n.disk, &n.work);
    let words = cmdline_words(&opts);
    // What imagegen left in cmdline.txt: k3s's memory cgroup on, the vendor's root expansion
    // (bookworm's init=firstboot, which also grows the partition on a real Pi) kept.
    for want in [
        "cgroup_memory=1",
        "cgroup_enable=memory",
        "init=/usr/lib/raspberrypi-sys-mods/firstboot",
        "root=PARTUUID=d9c86127-02",
    ] {
        assert!(
            words.iter().any(|w| w == want),
            "cmdline.txt lacks {want}: {words:?}"
        );
    }
    let (guest, facts) = n.boot(opts);
    let key = &n.lab.admin_key;
    // The vendor's first boot ran (it removes itself from cmdline.txt) and regenerated the host
    // keys; imagegen's unit put the node's own keys back before sshd started.
    let cmdline = n.ssh_guest(&guest, "cat /boot/firmware/cmdline.txt");
    assert!(
        !cmdline.contains("init=") && cmdline.contains("cgroup_enable=memory"),
        "the vendor's first boot did not run, or lost imagegen's arguments: {cmdline:?}"
    );
    assert_eq!(facts.host_key, built_key);
    // The rename wizard is disarmed: its unit is masked and never ran...
    assert_eq!(
        guest
            .ssh(ADMIN, key, "systemctl is-enabled userconfig.service")
            .stdout,
        b"masked\n"
    );
    // ...and so is what pi-gen's `rename-user` left for it to undo: a console login on tty1,
    // no "set up a user first" banner for SSH logins.
    assert_eq!(
        guest
            .ssh(ADMIN, key, "systemctl is-enabled getty@tty1.service")
            .stdout,
        b"enabled\n"
    );
    n.ssh_guest(&guest, "test ! -e /etc/ssh/sshd_config.d/rename_user.conf");
    // The agent's status copy on the boot partition, as a person would read it on a PC.
    let copy = n.ssh_guest(&guest, "cat /boot/firmware/imagegen-status.txt");
    assert!(copy.contains(n.name), "status copy: {copy}");
    ups_poweroff(&n.lab, guest, n.name, &n.disk, n.root);
    drop(_one_guest);

    // A rebuild of the node from the same config keeps its SSH host key.
    let again = n.lab.path("pi-a-again.img");
    build_node(
        &n.imagegen,
        &n.cluster,
        n.name,
        &n.base,
        &n.lab.path("state"),
        &again,
    );
    assert_eq!(image_host_key(&again, n.root, &n.work), facts.host_key);
}

#[test]
fn armbian_node_on_banana_pi_m5_boots_and_joins() {
    let Some(n) = Node::build("armbian-bpim5", "m5-a", "bpi-m5", 1) else {
        return;
    };
    let built_key = image_host_key(&n.disk, n.root, &n.work);
    // U-Boot lives before the first partition (sector 8192): the boot code area of the MBR and
    // sectors 1-8191 are the base's bytes.
    let (b, d) = (fs::read(&n.base).unwrap(), fs::read(&n.disk).unwrap());
    assert!(
        b[..440] == d[..440] && b[512..8192 * 512] == d[512..8192 * 512],
        "imagegen changed the U-Boot area"
    );
    drop((b, d));

    let _one_guest = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let (guest, facts) = n.boot(vm::arm::armbian_boot(&n.disk, &n.work));
    // The kernel booted with what armbianEnv.txt says, as boot.scr would pass it: its rootdev
    // (the layout sets no extraargs, so rootdev is the value to follow), and extraargs when set.
    let env = n.ssh_guest(&guest, "cat /boot/armbianEnv.txt");
    let proc_cmdline = n.ssh_guest(&guest, "cat /proc/cmdline");
    let rootdev = env
        .lines()
        .find_map(|l| l.strip_prefix("rootdev="))
        .unwrap_or_else(|| panic!("armbianEnv.txt has no rootdev:\n{env}"))
        .trim();
    let words: Vec<&str> = proc_cmdline.split_whitespace().collect();
    assert!(
        words.contains(&format!("root={rootdev}").as_str()),
        "root={rootdev} not in /proc/cmdline {proc_cmdline:?}"
    );
    if let Some(extra) = env.lines().find_map(|l| l.strip_prefix("extraargs=")) {
        assert!(
            proc_cmdline.contains(extra.trim()),
            "extraargs {extra:?} not in /proc/cmdline {proc_cmdline:?}"
        );
    }
    // The console wizard is disarmed and root is not logged in automatically.
    n.ssh_guest(&guest, "sudo test ! -e /root/.not_logged_in_yet");
    let autologin = guest.ssh(
        ADMIN,
        &n.lab.admin_key,
        "grep -rs -- --autologin /etc/systemd/system/getty@.service.d \
         /etc/systemd/system/serial-getty@.service.d",
    );
    assert!(
        autologin.stdout.is_empty(),
        "root autologin left: {}",
        String::from_utf8_lossy(&autologin.stdout)
    );
    // Armbian's first run was told to keep the node's host keys.
    assert_eq!(facts.host_key, built_key);
    assert_eq!(host_key_fingerprint(&guest), built_key);
    let copy = n.ssh_guest(&guest, "cat /boot/imagegen-status.txt");
    assert!(copy.contains(n.name), "status copy: {copy}");
    poweroff_clean(&n.lab, guest, &n.disk, n.root);
}

#[test]
fn ubuntu_raspi_node_consumes_its_cloud_init_seed() {
    let Some(n) = Node::build("ubuntu-raspi", "ubu-a", "rpi4", 2) else {
        return;
    };
    let _one_guest = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut opts = vm::arm::pi4_boot(&n.disk, &n.work);
    // On a Pi the kernel names the onboard NIC `eth0`, which Ubuntu's network-config names;
    // qemu's virtio NIC would be `enp0s1` and cloud-init's `eth0` stanza would match nothing
    // (tried: networking.service fails, no network). This gives the kernel's name back.
    opts.extra_args = "net.ifnames=0".into();
    let words = cmdline_words(&opts);
    for want in ["cgroup_memory=1", "cgroup_enable=memory"] {
        assert!(
            words.iter().any(|w| w == want),
            "cmdline.txt lacks {want}: {words:?}"
        );
    }
    let (guest, _) = n.boot(opts);
    // The real cloud-init found imagegen's seed on the system-boot partition and finished.
    let status = n.ssh_guest(&guest, "cloud-init status --wait");
    assert!(status.contains("status: done"), "cloud-init: {status}");
    let result = n.ssh_guest(&guest, "cat /run/cloud-init/result.json");
    // NoCloud names where its seed came from: the partition, not a seed directory in the root.
    assert!(
        result.contains("DataSourceNoCloud") && !result.contains("/var/lib/cloud/seed"),
        "cloud-init did not use the NoCloud seed on the boot partition: {result}"
    );
    let instance = n.ssh_guest(&guest, "cat /var/lib/cloud/data/instance-id");
    assert_eq!(instance.trim(), format!("imagegen-{}", n.name));
    let copy = n.ssh_guest(&guest, "cat /boot/firmware/imagegen-status.txt");
    assert!(copy.contains(n.name), "status copy: {copy}");
    poweroff_clean(&n.lab, guest, &n.disk, n.root);
}
