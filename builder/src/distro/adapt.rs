//! What each vendor family needs so a node boots straight into its hardened, keyboard-free
//! state: first-boot wizards disarmed, the vendor's root expansion kept, cloud-init fed or
//! switched off on purpose, and the node's identity protected from vendor regeneration.
//! Facts: shared/research/vendor-images.md sections 1.5, 1.6, 2.5, 3.5, 4.5.

use super::Vendor;
use crate::fs::{FileType, FsError};
use crate::image::{Image, ImageError};
use crate::plan::{Plan, PlanError};

/// What the adapters need to know about the node.
pub struct Context<'a> {
    pub node: &'a str,
    /// The build places the node's own SSH host keys: no vendor step may replace them.
    pub has_identity: bool,
}

/// Where the builder keeps a copy of the host keys for families whose first boot replaces
/// them unconditionally (Raspberry Pi OS bookworm), and the unit that puts them back.
pub const IDENTITY_DIR: &str = "/etc/imagegen/identity";
const HOSTKEYS_UNIT: &str = "imagegen-hostkeys.service";
/// What userconf-pi's `rename-user` leaves for its wizard to remove.
const RENAME_USER_BANNER: &str = "/etc/ssh/sshd_config.d/rename_user.conf";
const GETTY_TTY1: &str = "/etc/systemd/system/getty.target.wants/getty@tty1.service";

pub fn plan(
    vendor: Vendor,
    image: &mut Image,
    ctx: &Context,
    p: &mut Plan,
) -> Result<(), PlanError> {
    match vendor {
        Vendor::RpiOsBookworm | Vendor::RpiOsTrixie => rpios(vendor, image, ctx, p)?,
        Vendor::Armbian => armbian(image, ctx, p)?,
        Vendor::UbuntuRaspi | Vendor::UbuntuCloud | Vendor::DebianCloud => {
            cloud_init(vendor, ctx, p)?
        }
    }
    enable_ssh(image, p)?;
    Ok(())
}

fn exists(image: &mut Image, path: &str) -> Result<bool, ImageError> {
    Ok(image.lstat(path)?.is_some())
}

fn read_text(image: &mut Image, path: &str) -> Result<Option<String>, PlanError> {
    match image.read_file(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(ImageError::Fs(FsError::NotFound(_))) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn rpios(vendor: Vendor, image: &mut Image, ctx: &Context, p: &mut Plan) -> Result<(), PlanError> {
    // userconf-pi opens a rename wizard on tty8 when no userconf.txt is given; the admin
    // account comes from imagegen, so the wizard has nothing to do.
    p.mask("userconfig.service");
    // pi-gen arms that wizard with `rename-user -f -s`, which also disables getty@tty1 and adds
    // an sshd Banner ("SSH may not work until a valid user has been set up"); only the wizard
    // or `cancel-rename` undo them (RPi-Distro/userconf-pi rename-user, cancel-rename). With the
    // wizard masked, do what cancel-rename does, or the node has no console login on HDMI and
    // greets every SSH login with that banner (seen in the ARM boot test).
    if exists(image, RENAME_USER_BANNER)? {
        p.remove(RENAME_USER_BANNER);
    }
    if exists(image, "/lib/systemd/system/getty@.service")? && !exists(image, GETTY_TTY1)? {
        p.dir("/etc/systemd/system/getty.target.wants", 0o755, 0, 0);
        p.symlink(GETTY_TTY1, "/lib/systemd/system/getty@.service");
    }
    if ctx.has_identity {
        p.mask("regenerate_ssh_host_keys.service");
    }
    let has_cloud_init = exists(image, "/etc/cloud")?;
    match vendor {
        // Trixie feeds cloud-init from the boot partition; it would delete the host keys
        // (ssh_deletekeys) and re-do users. imagegen provisions everything, so cloud-init is
        // switched off; the root expansion is the initramfs `resize` + rpi-resize.service,
        // which do not need it. machine-id stays `uninitialized`: rpi-resize.service runs
        // only on a systemd first boot.
        Vendor::RpiOsTrixie if has_cloud_init => {
            p.file(
                "/etc/cloud/cloud-init.disabled",
                b"imagegen: provisioned offline\n".to_vec(),
                0o644,
                0,
                0,
            );
        }
        Vendor::RpiOsBookworm if ctx.has_identity => {
            // The bookworm `init=.../firstboot` also grows the root partition, so it stays; but
            // it deletes and regenerates the host keys unconditionally before systemd starts.
            // Keep a copy and put it back before sshd starts.
            p.file(
                &format!("/etc/systemd/system/{HOSTKEYS_UNIT}"),
                hostkeys_unit().into_bytes(),
                0o644,
                0,
                0,
            );
            p.dir("/etc/systemd/system/multi-user.target.wants", 0o755, 0, 0);
            p.symlink(
                &format!("/etc/systemd/system/multi-user.target.wants/{HOSTKEYS_UNIT}"),
                &format!("/etc/systemd/system/{HOSTKEYS_UNIT}"),
            );
        }
        _ => {}
    }
    Ok(())
}

fn hostkeys_unit() -> String {
    format!(
        "# Written by imagegen. Raspberry Pi OS's first boot regenerates the SSH host keys;\n\
         # this puts the node's own keys back so known_hosts keeps matching after a reflash.\n\
         [Unit]\n\
         Description=Restore this node's SSH host keys (imagegen identity)\n\
         DefaultDependencies=no\n\
         After=local-fs.target regenerate_ssh_host_keys.service\n\
         Before=ssh.service sshd.service\n\
         ConditionPathIsDirectory={IDENTITY_DIR}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/sh -c 'cp -p {IDENTITY_DIR}/ssh_host_* /etc/ssh/'\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

fn armbian(image: &mut Image, ctx: &Context, p: &mut Plan) -> Result<(), PlanError> {
    // The console wizard (and its root password prompt) runs from a login shell while this
    // marker exists; the root expansion (armbian-resize-filesystem) does not depend on it.
    if exists(image, "/root/.not_logged_in_yet")? {
        p.remove("/root/.not_logged_in_yet");
    }
    // Root is logged in automatically on the console and serial line until the wizard ran.
    for o in [
        "/etc/systemd/system/getty@.service.d/override.conf",
        "/etc/systemd/system/serial-getty@.service.d/override.conf",
    ] {
        if let Some(text) = read_text(image, o)?
            && text.contains("--autologin")
        {
            p.remove(o);
        }
    }
    if ctx.has_identity
        && let Some(text) = read_text(image, "/etc/default/armbian-firstrun")?
    {
        p.file(
            "/etc/default/armbian-firstrun",
            set_shell_var(&text, "OPENSSHD_REGENERATE_HOST_KEYS", "false").into_bytes(),
            0o644,
            0,
            0,
        );
    }
    Ok(())
}

/// Sets `NAME=value` in a shell-style defaults file, keeping everything else.
pub fn set_shell_var(text: &str, name: &str, value: &str) -> String {
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.strip_prefix(name).is_some_and(|r| r.starts_with('=')) {
                found = true;
                format!("{name}={value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.push(format!("{name}={value}"));
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// Ubuntu and Debian images grow their root filesystem with cloud-init (growpart +
/// resizefs), so cloud-init stays on but gets a seed that asks it for that alone: no users, no
/// passwords, no host key deletion, no hostname. Everything else comes from the image and the
/// agent, so the two never do the same job.
fn cloud_init(vendor: Vendor, ctx: &Context, p: &mut Plan) -> Result<(), PlanError> {
    let instance = format!("imagegen-{}", ctx.node);
    let meta = format!("instance-id: {instance}\nlocal-hostname: {}\n", ctx.node);
    let user = user_data(ctx.has_identity);
    match vendor {
        Vendor::UbuntuRaspi => {
            // Ubuntu raspi reads its seed from the system-boot partition (fs_label).
            p.file("/boot/firmware/meta-data", meta.into_bytes(), 0o644, 0, 0);
            p.file("/boot/firmware/user-data", user.into_bytes(), 0o644, 0, 0);
        }
        _ => {
            let dir = "/var/lib/cloud/seed/nocloud";
            p.dir(dir, 0o755, 0, 0);
            p.file(&format!("{dir}/meta-data"), meta.into_bytes(), 0o644, 0, 0);
            p.file(&format!("{dir}/user-data"), user.into_bytes(), 0o600, 0, 0);
            // Only NoCloud: on bare metal the other sources time out one after another.
            p.dir("/etc/cloud/cloud.cfg.d", 0o755, 0, 0);
            p.file(
                "/etc/cloud/cloud.cfg.d/90-imagegen.cfg",
                b"# Written by imagegen: the seed is in /var/lib/cloud/seed/nocloud.\ndatasource_list: [ NoCloud, None ]\n".to_vec(),
                0o644,
                0,
                0,
            );
        }
    }
    Ok(())
}

fn user_data(has_identity: bool) -> String {
    format!(
        "#cloud-config\n\
         # Written by imagegen: cloud-init only grows the root filesystem here. Users, SSH keys,\n\
         # hostname and services come from the image and from imagegen-firstboot.\n\
         users: []\n\
         disable_root: true\n\
         ssh_pwauth: false\n\
         ssh_deletekeys: {}\n\
         preserve_hostname: true\n\
         manage_etc_hosts: false\n\
         # Left alone, cloud-init's locale module runs update-locale with en_US.UTF-8, which\n\
         # fails on an image without that locale and leaves cloud-config.service failed.\n\
         locale: false\n\
         growpart:\n  mode: auto\n  devices: [\"/\"]\n\
         resize_rootfs: true\n",
        !has_identity
    )
}

/// Makes sure sshd starts at boot: Raspberry Pi OS ships it disabled (sshswitch enables it
/// only when a file named `ssh` is on the boot partition). Ubuntu 24.04 starts it through
/// ssh.socket; enabling the service too would make them fight over port 22.
fn enable_ssh(image: &mut Image, p: &mut Plan) -> Result<(), PlanError> {
    let enabled = [
        "/etc/systemd/system/multi-user.target.wants/ssh.service",
        "/etc/systemd/system/sockets.target.wants/ssh.socket",
        "/etc/systemd/system/multi-user.target.wants/sshd.service",
    ];
    for e in enabled {
        if image.lstat(e)?.is_some() {
            return Ok(());
        }
    }
    for unit in [
        "/usr/lib/systemd/system/ssh.service",
        "/lib/systemd/system/ssh.service",
    ] {
        if image
            .lstat(unit)?
            .is_some_and(|s| s.file_type == FileType::Regular)
        {
            p.dir("/etc/systemd/system/multi-user.target.wants", 0o755, 0, 0);
            p.symlink(
                "/etc/systemd/system/multi-user.target.wants/ssh.service",
                unit,
            );
            if image.lstat("/etc/systemd/system/sshd.service")?.is_none() {
                p.symlink("/etc/systemd/system/sshd.service", unit);
            }
            return Ok(());
        }
    }
    Err(PlanError::Invalid(
        "the image has no ssh.service: install openssh-server in the base image, or nobody \
         can log in to the node"
            .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_vars() {
        assert_eq!(
            set_shell_var(
                "# c\nOPENSSHD_REGENERATE_HOST_KEYS=true\nX=1\n",
                "OPENSSHD_REGENERATE_HOST_KEYS",
                "false"
            ),
            "# c\nOPENSSHD_REGENERATE_HOST_KEYS=false\nX=1\n"
        );
        assert_eq!(set_shell_var("X=1\n", "Y", "2"), "X=1\nY=2\n");
    }

    #[test]
    fn user_data_keeps_keys_only_with_an_identity() {
        assert!(user_data(true).contains("ssh_deletekeys: false"));
        assert!(user_data(false).contains("ssh_deletekeys: true"));
        assert!(user_data(true).starts_with("#cloud-config\n"));
    }
}
