//! vpn-client.

use crate::cli::VpnClientArgs;
use crate::config;
use crate::vpn::wireguard::{self, Mesh};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

pub fn vpn_client(a: VpnClientArgs) -> Result<()> {
    let loaded = config::load(&a.config)?;
    let c = &loaded.config;
    let Some(mesh) = Mesh::of(c)? else {
        bail!("{} has no [wireguard] table", a.config.display());
    };
    // The nodes carry each client as a peer, so a client must be in the config the nodes were
    // built from: its key is made by that build (or here, and then by the build reused).
    if !mesh.member(&a.name).is_some_and(|m| m.client) {
        bail!(
            "{:?} is not in [wireguard] clients of {}: add it there and rebuild the nodes, which \
             must know its key",
            a.name,
            a.config.display()
        );
    }
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::identity::default_dir(&loaded.dir));
    let keys = wireguard::client_keys(&state_dir, &mesh)?;
    let text = wireguard::render(&mesh, &keys, &a.name)?;
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.conf", c.cluster.name.get_ref(), a.name)));
    // It holds the client's private key: the operator's alone, appearing whole or not at all.
    crate::emit::atomic::write_private(&out, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", out.display()))?;
    if a.qr {
        println!("{}", wireguard::qr_text(&text)?);
    }
    eprintln!(
        "wrote {} (WireGuard client {} of {}): wg-quick up {}",
        out.display(),
        a.name,
        c.cluster.name.get_ref(),
        out.display()
    );
    Ok(())
}
