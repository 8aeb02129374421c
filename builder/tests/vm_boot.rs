//! Proves the VM test bed itself, without imagegen: the base image, customised by hand with
//! debugfs just enough to be reachable, boots under qemu, settles, answers over SSH, powers
//! off cleanly and leaves a clean root filesystem.

mod vm;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vm::{Vm, VmOptions};

const ROOT_PARTITION: u32 = 1;

fn keygen(path: &Path) {
    vm::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "vm-test", "-f"])
            .arg(path),
    );
}

/// What imagegen will have to do for a real genericcloud image, done by hand: an authorized key
/// for root, SSH host keys (the image ships none and Debian's ssh.service does not make them),
/// a DHCP stanza for the NIC (cloud-init writes it on the real image) and cloud-init off.
fn make_reachable(disk: &Path, work: &Path) -> std::path::PathBuf {
    let client = work.join("id_ed25519");
    keygen(&client);
    let host = work.join("ssh_host_ed25519_key");
    keygen(&host);
    let nic = work.join("ens3");
    fs::write(&nic, "allow-hotplug ens3\niface ens3 inet dhcp\n").unwrap();
    let empty = work.join("empty");
    fs::write(&empty, "").unwrap();

    let files = [
        (
            client.with_extension("pub"),
            "/root/.ssh/authorized_keys",
            "0100600",
        ),
        (host.clone(), "/etc/ssh/ssh_host_ed25519_key", "0100600"),
        (
            host.with_extension("pub"),
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "0100644",
        ),
        (nic, "/etc/network/interfaces.d/ens3", "0100644"),
        (empty, "/etc/cloud/cloud-init.disabled", "0100644"),
    ];
    // The base already has an empty /root/.ssh (0700).
    let mut script = String::new();
    for (src, dest, mode) in &files {
        script += &format!(
            "write {} {dest}\nsif {dest} mode {mode}\nsif {dest} uid 0\nsif {dest} gid 0\n",
            src.display()
        );
    }
    let offset = vm::partition_offset(disk, ROOT_PARTITION);
    vm::debugfs(disk, offset, true, &script);
    client
}

#[test]
fn base_image_boots_answers_ssh_and_powers_off_cleanly() {
    if !vm::qemu_available() {
        return;
    }
    for (tool, package) in [
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("e2fsck", "e2fsprogs"),
    ] {
        vm::require_tool(tool, package);
    }

    let started = Instant::now();
    let base = vm::base_image();
    eprintln!(
        "vm_boot: base image ready in {:.1} s (cached after the first build)",
        started.elapsed().as_secs_f64()
    );

    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.img");
    vm::copy_base(&disk);
    assert_ne!(disk, base);
    let key = make_reachable(&disk, work.path());

    let mut guest = Vm::boot(&disk, VmOptions::default());
    guest.wait_for_ssh(Duration::from_secs(180));
    let to_ssh = guest.uptime();

    let state = guest.wait_settled("root", &key, Duration::from_secs(300));
    let settled = guest.uptime();
    let failed = guest.ssh_ok("root", &key, "systemctl --failed --no-legend --plain");
    assert!(
        state == "running" || state == "degraded",
        "system state {state:?}; failed units:\n{failed}"
    );
    if state == "degraded" {
        eprintln!("vm_boot: degraded; failed units:\n{failed}");
    }

    // The base's own fstab mounted root read-write and the ESP.
    let mounts = guest.ssh_ok("root", &key, "findmnt -rn -o TARGET,SOURCE,OPTIONS");
    let mounted = |target: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').next() == Some(target))
            .unwrap_or_else(|| panic!("{target} is not mounted:\n{mounts}"))
    };
    assert!(
        mounted("/").contains(" rw,"),
        "root is not read-write:\n{mounts}"
    );
    mounted("/boot/efi");

    let poweroff = Instant::now();
    // The connection may drop while the guest goes down; qemu's exit is the verdict.
    let _ = guest.ssh("root", &key, "systemctl poweroff");
    let status = guest.wait_for_exit(Duration::from_secs(120));
    let to_off = poweroff.elapsed();
    assert!(status.success(), "qemu exited with {status}");
    let log = guest.serial_log();
    assert!(
        log.contains("reboot: Power down"),
        "the guest did not power down cleanly; serial tail:\n{}",
        log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );

    let offset = vm::partition_offset(&disk, ROOT_PARTITION);
    vm::run(
        Command::new("e2fsck")
            .arg("-fn")
            .arg(vm::ext4_at(&disk, offset)),
    );

    eprintln!(
        "vm_boot: boot to SSH {:.1} s, to {state} {:.1} s, poweroff {:.1} s",
        to_ssh.as_secs_f64(),
        settled.as_secs_f64(),
        to_off.as_secs_f64()
    );
}
