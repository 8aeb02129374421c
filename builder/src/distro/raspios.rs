//! Raspberry Pi OS Lite arm64, bookworm and trixie.
//! Facts: shared/research/vendor-images.md sections 1.5 (bookworm), 1.6 (trixie).

use super::{Context, Facts, Family, NetworkDefaults, NetworkStack, Vendor, VendorError, exists};
use crate::image::Image;
use crate::plan::changes::{Kind, Plan};

/// Where the builder keeps a copy of the host keys for families whose first boot replaces
/// them unconditionally (Raspberry Pi OS bookworm), and the unit that puts them back.
pub const IDENTITY_DIR: &str = "/etc/imagegen/identity";
const HOSTKEYS_UNIT: &str = "imagegen-hostkeys.service";
/// What userconf-pi's `rename-user` leaves for its wizard to remove.
const RENAME_USER_BANNER: &str = "/etc/ssh/sshd_config.d/rename_user.conf";
const GETTY_TTY1: &str = "/etc/systemd/system/getty.target.wants/getty@tty1.service";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Bookworm,
    Trixie,
}

pub struct RaspiOs(pub Release);

pub const BOOKWORM: RaspiOs = RaspiOs(Release::Bookworm);
pub const TRIXIE: RaspiOs = RaspiOs(Release::Trixie);

/// /etc/rpi-issue marks the family; the os-release codename says which release.
pub fn detect(f: &Facts) -> Option<Result<Vendor, VendorError>> {
    if !f.rpi_issue {
        return None;
    }
    Some(match f.codename.as_str() {
        "bookworm" => Ok(Vendor::RpiOsBookworm),
        "trixie" => Ok(Vendor::RpiOsTrixie),
        other => Err(VendorError::Unrecognized(
            format!("Raspberry Pi OS with release {other:?}"),
            super::supported(),
        )),
    })
}

impl Family for RaspiOs {
    /// Raspberry Pi OS runs NetworkManager since bookworm (Imager writes its Wi-Fi as a
    /// keyfile: raspberrypi-sys-mods imager_custom); trixie's netplan renders into
    /// NetworkManager too and leaves /etc/NetworkManager/system-connections to it.
    fn network(&self) -> NetworkDefaults {
        NetworkDefaults {
            stack: NetworkStack::NetworkManager,
            ethernet: "eth0",
            wifi: "wlan0",
        }
    }

    fn boot_mount(&self) -> &'static str {
        "/boot/firmware"
    }

    fn host_key_copy_dir(&self) -> Option<&'static str> {
        (self.0 == Release::Bookworm).then_some(IDENTITY_DIR)
    }

    fn plan_wizard(
        &self,
        image: &mut Image,
        _ctx: &Context,
        p: &mut Plan,
    ) -> Result<(), VendorError> {
        // userconf-pi opens a rename wizard on tty8 when no userconf.txt is given; the admin
        // account comes from imagegen, so the wizard has nothing to do.
        p.mask("userconfig.service");
        // pi-gen arms that wizard with `rename-user -f -s`, which also disables getty@tty1 and
        // adds an sshd Banner ("SSH may not work until a valid user has been set up"); only the
        // wizard or `cancel-rename` undo them (RPi-Distro/userconf-pi rename-user,
        // cancel-rename). With the wizard masked, do what cancel-rename does, or the node has
        // no console login on HDMI and greets every SSH login with that banner (seen in the ARM
        // boot test).
        if exists(image, RENAME_USER_BANNER)? {
            p.remove(RENAME_USER_BANNER);
        }
        if exists(image, "/lib/systemd/system/getty@.service")? && !exists(image, GETTY_TTY1)? {
            p.dir("/etc/systemd/system/getty.target.wants", 0o755);
            p.symlink(GETTY_TTY1, "/lib/systemd/system/getty@.service");
        }
        Ok(())
    }

    fn plan_host_keys(
        &self,
        _image: &mut Image,
        ctx: &Context,
        p: &mut Plan,
    ) -> Result<(), VendorError> {
        if ctx.has_identity {
            p.as_kind(Kind::IdentityGuard, |p| {
                p.mask("regenerate_ssh_host_keys.service")
            });
        }
        if self.0 == Release::Bookworm {
            // The bookworm `init=.../firstboot` also grows the root partition, so it stays; but
            // it deletes and regenerates the host keys unconditionally before systemd starts.
            // Keep a copy (`host_key_copy_dir`) and put it back before sshd starts. Public: on
            // an image without the node's keys (a generic one, until its seed brings them) the
            // unit finds no copy and does nothing.
            p.file(
                &format!("/etc/systemd/system/{HOSTKEYS_UNIT}"),
                hostkeys_unit().into_bytes(),
                0o644,
            );
            p.dir("/etc/systemd/system/multi-user.target.wants", 0o755);
            p.symlink(
                &format!("/etc/systemd/system/multi-user.target.wants/{HOSTKEYS_UNIT}"),
                &format!("/etc/systemd/system/{HOSTKEYS_UNIT}"),
            );
        }
        Ok(())
    }

    fn plan_cloud_init(
        &self,
        image: &mut Image,
        _ctx: &Context,
        p: &mut Plan,
    ) -> Result<(), VendorError> {
        // Trixie feeds cloud-init from the boot partition; it would delete the host keys
        // (ssh_deletekeys) and re-do users. imagegen provisions everything, so cloud-init is
        // switched off; the root expansion is the initramfs `resize` + rpi-resize.service,
        // which do not need it. machine-id stays `uninitialized`: rpi-resize.service runs
        // only on a systemd first boot.
        if self.0 == Release::Trixie && exists(image, "/etc/cloud")? {
            p.file(
                "/etc/cloud/cloud-init.disabled",
                b"imagegen: provisioned offline\n".to_vec(),
                0o644,
            );
        }
        Ok(())
    }
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
         ConditionPathExistsGlob={IDENTITY_DIR}/ssh_host_*_key\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/sh -c 'cp -p {IDENTITY_DIR}/ssh_host_* /etc/ssh/'\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}
