//! Cloud images: Ubuntu 24.04 server cloud image and Debian 12 genericcloud.
//! Facts: shared/research/vendor-images.md section 4.5.

use super::{Context, Facts, Family, NetworkDefaults, NetworkStack, Vendor, VendorError};
use crate::image::Image;
use crate::plan::changes::{Kind, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Ubuntu,
    Debian,
}

pub struct Cloud(pub Os);

pub const UBUNTU: Cloud = Cloud(Os::Ubuntu);
pub const DEBIAN: Cloud = Cloud(Os::Debian);

/// Ubuntu with the `cloudimg-rootfs` label; Debian without Raspberry Pi OS's `bootfs`.
pub fn detect(f: &Facts) -> Option<Result<Vendor, VendorError>> {
    match f.id.as_str() {
        "ubuntu" if f.has_label("cloudimg-rootfs") => Some(Ok(Vendor::UbuntuCloud)),
        "debian" if !f.has_label("bootfs") => Some(Ok(Vendor::DebianCloud)),
        _ => None,
    }
}

impl Family for Cloud {
    /// Ubuntu: netplan, which cloud-init renders into on these images. Debian: see
    /// `plan::network` for why systemd-networkd. The Ethernet name depends on the machine's
    /// bus (predictable names: en*), so a glob.
    fn network(&self) -> NetworkDefaults {
        NetworkDefaults {
            stack: match self.0 {
                Os::Ubuntu => NetworkStack::Netplan,
                Os::Debian => NetworkStack::Networkd,
            },
            ethernet: "en*",
            wifi: "wl*",
        }
    }

    fn boot_mount(&self) -> &'static str {
        "/boot/efi"
    }

    fn plan_cloud_init(
        &self,
        _image: &mut Image,
        ctx: &Context,
        p: &mut Plan,
    ) -> Result<(), VendorError> {
        let dir = "/var/lib/cloud/seed/nocloud";
        p.dir(dir, 0o755);
        p.file(
            &format!("{dir}/meta-data"),
            meta_data(ctx).into_bytes(),
            0o644,
        )
        .kind(Kind::Node);
        p.file(
            &format!("{dir}/user-data"),
            user_data(ctx.has_identity).into_bytes(),
            0o600,
        )
        .kind(Kind::Node);
        // Only NoCloud: on bare metal the other sources time out one after another.
        p.dir("/etc/cloud/cloud.cfg.d", 0o755);
        let cfg = b"# Written by imagegen: the seed is in /var/lib/cloud/seed/nocloud.\ndatasource_list: [ NoCloud, None ]\n";
        p.file(
            "/etc/cloud/cloud.cfg.d/90-imagegen.cfg",
            cfg.to_vec(),
            0o644,
        );
        Ok(())
    }
}

/// The NoCloud meta-data: the instance and the node's name. A seed that brings another one
/// makes cloud-init take the node for a new instance on the next boot and run its
/// per-instance modules again, with the seed's user-data.
pub(super) fn meta_data(ctx: &Context) -> String {
    let instance = format!("imagegen-{}", ctx.node);
    format!("instance-id: {instance}\nlocal-hostname: {}\n", ctx.node)
}

/// Ubuntu and Debian images grow their root filesystem with cloud-init (growpart +
/// resizefs), so cloud-init stays on but gets a seed that asks it for that alone: no users, no
/// passwords, no host key deletion, no hostname. Everything else comes from the image and the
/// agent, so the two never do the same job. Node-specific: a node with its own host keys must
/// keep them (`ssh_deletekeys: false`) when cloud-init runs for it again.
pub(super) fn user_data(has_identity: bool) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_keeps_keys_only_with_an_identity() {
        assert!(user_data(true).contains("ssh_deletekeys: false"));
        assert!(user_data(false).contains("ssh_deletekeys: true"));
        assert!(user_data(true).starts_with("#cloud-config\n"));
    }
}
