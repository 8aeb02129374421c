//! Ubuntu 24.04 preinstalled server for Raspberry Pi.
//! Facts: shared/research/vendor-images.md section 3.5.

use super::cloud::{meta_data, user_data};
use super::{Context, Facts, Family, NetworkDefaults, NetworkStack, Vendor, VendorError};
use crate::image::Image;
use crate::plan::changes::{Kind, Plan};

pub struct UbuntuRaspi;

/// Ubuntu with the `system-boot` FAT label.
pub fn detect(f: &Facts) -> Option<Result<Vendor, VendorError>> {
    (f.id == "ubuntu" && f.has_label("system-boot")).then_some(Ok(Vendor::UbuntuRaspi))
}

impl Family for UbuntuRaspi {
    /// netplan, as the seed's network-config already is (eth0 DHCP, vendor-images.md 3.5).
    fn network(&self) -> NetworkDefaults {
        NetworkDefaults {
            stack: NetworkStack::Netplan,
            ethernet: "eth0",
            wifi: "wlan0",
        }
    }

    fn boot_mount(&self) -> &'static str {
        "/boot/firmware"
    }

    /// cloud-init grows the root filesystem here, so it stays on with a seed that asks for
    /// that alone (see `cloud::user_data`).
    fn plan_cloud_init(
        &self,
        _image: &mut Image,
        ctx: &Context,
        p: &mut Plan,
    ) -> Result<(), VendorError> {
        // Ubuntu raspi reads its seed from the system-boot partition (fs_label).
        p.file(
            "/boot/firmware/meta-data",
            meta_data(ctx).into_bytes(),
            0o644,
        )
        .kind(Kind::Node);
        p.file(
            "/boot/firmware/user-data",
            user_data(ctx.has_identity).into_bytes(),
            0o644,
        )
        .kind(Kind::Node);
        Ok(())
    }
}
