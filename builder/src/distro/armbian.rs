//! Armbian for the Banana Pi M5.
//! Facts: shared/research/vendor-images.md section 2.5.

use super::{
    Context, Facts, Family, NetworkDefaults, NetworkStack, Vendor, VendorError, exists, read_text,
    set_shell_var,
};
use crate::image::Image;
use crate::plan::changes::{Kind, Plan};

pub struct Armbian;

/// /etc/armbian-release marks the family.
pub fn detect(f: &Facts) -> Option<Result<Vendor, VendorError>> {
    f.armbian_release.then_some(Ok(Vendor::Armbian))
}

impl Family for Armbian {
    /// See `plan::network` for why systemd-networkd. Armbian keeps the kernel's eth0/wlan0
    /// names on the BPI-M5.
    fn network(&self) -> NetworkDefaults {
        NetworkDefaults {
            stack: NetworkStack::Networkd,
            ethernet: "eth0",
            wifi: "wlan0",
        }
    }

    fn boot_mount(&self) -> &'static str {
        // Armbian on the BPI-M5 has no FAT partition; /boot is on the root filesystem.
        "/boot"
    }

    fn plan_wizard(
        &self,
        image: &mut Image,
        _ctx: &Context,
        p: &mut Plan,
    ) -> Result<(), VendorError> {
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
        Ok(())
    }

    fn plan_host_keys(
        &self,
        image: &mut Image,
        ctx: &Context,
        p: &mut Plan,
    ) -> Result<(), VendorError> {
        if ctx.has_identity
            && let Some(text) = read_text(image, "/etc/default/armbian-firstrun")?
        {
            p.file(
                "/etc/default/armbian-firstrun",
                set_shell_var(&text, "OPENSSHD_REGENERATE_HOST_KEYS", "false").into_bytes(),
                0o644,
            )
            .kind(Kind::IdentityGuard);
        }
        Ok(())
    }
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
}
