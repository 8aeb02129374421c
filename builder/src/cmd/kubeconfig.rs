//! kubeconfig.

use crate::cli::KubeconfigArgs;
use crate::cluster::{self, Bootstrap, Trust};
use crate::config;
use anyhow::{Context, Result, bail};
use std::path::PathBuf;

pub fn kubeconfig(a: KubeconfigArgs) -> Result<()> {
    let loaded = config::load(&a.config)?;
    let c = &loaded.config;
    let server_url = match Bootstrap::of(c).map_err(anyhow::Error::msg)? {
        Some(Bootstrap::New { server_url, .. }) => server_url,
        Some(Bootstrap::Join { .. }) => bail!(
            "this cluster.toml joins an existing cluster ([k3s] token_file), whose CAs imagegen \
             does not hold: take the kubeconfig from a server's /etc/rancher/k3s/k3s.yaml"
        ),
        None => bail!("{} has no [k3s] table", a.config.display()),
    };
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::identity::default_dir(&loaded.dir));
    let trust = Trust::load(&state_dir)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let name = c.cluster.name.get_ref();
    let text = cluster::kubeconfig::render(&trust, name, &server_url, now)?;
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}.kubeconfig")));
    // It holds cluster-admin's private key: the operator's alone, appearing whole or not at all.
    crate::emit::atomic::write_private(&out, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} (cluster-admin of {name} at {server_url}): KUBECONFIG={} kubectl get nodes",
        out.display(),
        out.display()
    );
    Ok(())
}
