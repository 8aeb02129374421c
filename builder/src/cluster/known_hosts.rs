//! `OUT.known_hosts` beside a node image: the node's SSH host keys (made by the builder, see
//! `crate::identity`) under every name the operator may reach it by, so the first SSH login
//! is verified instead of trusted on first use.

use crate::config::ClusterConfig;
use crate::emit::atomic::PendingFile;
use crate::identity::Identity;
use imagegen_firstboot::known_hosts::{PublicKey, host_name};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The names `node` is known by: its name (its hostname), its `address`, the host of the
/// registration address when it is the server the cluster starts on, and its `[wireguard]`
/// address, where the operator's own machines (`clients`) reach it over the mesh.
pub fn names(cfg: &ClusterConfig, node: &str) -> Vec<String> {
    let mut names = vec![node.to_string()];
    if let Some(a) = cfg
        .nodes
        .iter()
        .find(|n| n.name.get_ref() == node)
        .and_then(|n| n.address.as_ref())
    {
        names.push(a.get_ref().clone());
    }
    if let Ok(Some(b)) = super::Bootstrap::of(cfg)
        && b.is_first(node)
        && let Some(h) = super::url_host(b.server_url())
    {
        names.push(h);
    }
    if let Ok(Some(mesh)) = crate::vpn::wireguard::Mesh::of(cfg)
        && let Some(m) = mesh.member(node)
    {
        names.push(m.address.to_string());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names.iter().filter_map(|n| host_name(n, None)) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// The known_hosts text: one line per host key, the key's comment left out.
pub fn render(cfg: &ClusterConfig, node: &str, id: &Identity) -> Result<String, String> {
    let names = names(cfg, node).join(",");
    let mut s = format!("# Written by imagegen: the SSH host keys of node {node}.\n");
    for k in &id.host_keys {
        let text = String::from_utf8_lossy(&k.public);
        let f: Vec<&str> = text.split_whitespace().collect();
        let key = match f.as_slice() {
            [kind, b64, ..] => PublicKey::parse(kind, b64),
            _ => Err("not a public key line".into()),
        }
        .map_err(|why| format!("node {node}'s {} host key: {why}", k.kind))?;
        s.push_str(&format!("{names} {}\n", key.to_text()));
    }
    Ok(s)
}

/// `OUT.known_hosts` for an image written to `out`.
pub fn path_beside(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".known_hosts");
    PathBuf::from(p)
}

/// Writes `OUT.known_hosts` beside `out` (atomically) and returns the line to log in with.
pub fn write_beside(
    out: &Path,
    cfg: &ClusterConfig,
    node: &str,
    state_dir: &Path,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let id =
        crate::identity::load_or_create(state_dir, node).context("loading the node's identity")?;
    let text = render(cfg, node, &id).map_err(anyhow::Error::msg)?;
    let path = path_beside(out);
    let f = PendingFile::create(&path).with_context(|| format!("creating {}", path.display()))?;
    f.file()
        .write_all(text.as_bytes())
        .and_then(|()| f.sync())
        .and_then(|()| f.commit())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "log in: ssh {}@{node}   (host keys: {}; append it to ~/.ssh/known_hosts, or pass \
         -o UserKnownHostsFile={})",
        cfg.admin.user.get_ref(),
        path.display(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ssh-keygen -t ed25519`.
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBIK8P55P+/ZVf44Hspc1HpLTmeNKtVROxzoAauOWZPf me";

    fn config(wireguard: bool) -> ClusterConfig {
        let (mesh, endpoint) = if wireguard {
            (
                "[wireguard]\nnetwork = \"10.100.0.0/24\"\n",
                "endpoint = \"10.99.0.1:51820\"\n",
            )
        } else {
            ("", "")
        };
        let text = format!(
            "[cluster]\nname = \"c\"\n[admin]\nuser = \"ops\"\n\
             ssh_authorized_keys = [\"{KEY}\"]\n\
             [k3s]\nserver_url = \"https://10.100.0.1:6443\"\n{mesh}\
             [[nodes]]\nname = \"m\"\nboard = \"x86-64\"\nrole = \"server\"\n\
             address = \"10.99.0.1\"\n{endpoint}\
             [[nodes]]\nname = \"w\"\nboard = \"x86-64\"\nrole = \"agent\"\n"
        );
        crate::config::parse(&text, Path::new("cluster.toml")).unwrap()
    }

    #[test]
    fn a_mesh_address_is_a_name() {
        let c = config(false);
        assert_eq!(names(&c, "m"), ["m", "10.99.0.1", "10.100.0.1"]);
        assert_eq!(names(&c, "w"), ["w"]);
        let c = config(true);
        // The registration host is the server's mesh address here: named once.
        assert_eq!(names(&c, "m"), ["m", "10.99.0.1", "10.100.0.1"]);
        assert_eq!(names(&c, "w"), ["w", "10.100.0.2"]);
    }
}
