//! The cluster as a whole: how its k3s starts (which server initialises it, where the others
//! register), and the trust the builder owns for it (the CA set, the join token, the operator's
//! kubeconfig, the nodes' SSH host keys in a known_hosts file).
//!
//! A cluster is new unless `[k3s] token_file` is given: then it joins one that exists, and
//! the builder neither makes CAs nor initialises anything. A new cluster's CA set and token
//! secret are made once into `<state dir>/_cluster/` (`_` cannot start a node name, so it never
//! meets a node's directory) and reused by every rebuild, like the node identities.

pub mod ca;
pub mod known_hosts;
pub mod kubeconfig;
pub mod servers;
pub mod token;

use crate::config::{ClusterConfig, K3s, Role};
use crate::identity::IdentityError;
use std::path::{Path, PathBuf};

/// The directory of the cluster's shared state inside the state directory.
pub const STATE_SUBDIR: &str = "_cluster";
const CREATED_FILE: &str = "created";
/// The port k3s's supervisor and API listen on.
pub const K3S_PORT: u16 = 6443;
/// Where the token goes on every node.
pub const TOKEN_PATH: &str = "/etc/rancher/k3s/token";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("making a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error(
        "no cluster CA in {0}: it is made by the first `imagegen build` of a node of a new \
         cluster (or give the --state-dir that build used)"
    )]
    NoState(String),
    #[error("{0}")]
    Invalid(String),
}

impl ClusterError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
        move |source| ClusterError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// How k3s comes up in this cluster, from cluster.toml alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// `token_file` given: every node joins `server_url` with that token.
    Join { server_url: String },
    /// A new cluster: `first` starts it (`cluster-init`), every other node registers at
    /// `server_url`, with the minted token.
    New { first: String, server_url: String },
}

impl Bootstrap {
    /// What cluster.toml says, or why it says nothing usable (for `check`; the config parser
    /// refuses the same with the line).
    pub fn of(cfg: &ClusterConfig) -> Result<Option<Bootstrap>, String> {
        let Some(k) = &cfg.k3s else {
            return Ok(None);
        };
        let url = k.server_url.as_ref().map(|u| u.get_ref().clone());
        if k.token_file.is_some() {
            if k.init_server.is_some() {
                return Err(
                    "[k3s] init_server names the server that starts a new cluster; \
                            with token_file the cluster exists and every node joins it: \
                            remove one of the two"
                        .into(),
                );
            }
            return match url {
                Some(server_url) => Ok(Some(Bootstrap::Join { server_url })),
                None => Err(
                    "[k3s] token_file joins an existing cluster: give its server_url \
                             too (https://SERVER:6443)"
                        .into(),
                ),
            };
        }
        // `init_server` moves cluster-init off the first server: how that server is replaced
        // in a running HA cluster. Rebuilt with cluster-init, its empty disk would start a
        // second cluster with the same CA and token (k3s-io/k3s#13623 shows k3s does exactly
        // that for an init node without a server address), which the agents would trust.
        if let Some(name) = &k.init_server {
            let name = name.get_ref();
            return match cfg.nodes.iter().find(|n| n.name.get_ref() == name) {
                Some(n) if n.role == Role::Server => Self::new_at(cfg, n, url),
                Some(_) => Err(format!(
                    "[k3s] init_server {name:?} is not a server (role = \"server\")"
                )),
                None => Err(format!(
                    "[k3s] init_server {name:?} is no node of this config"
                )),
            };
        }
        let Some(first) = cfg.nodes.iter().find(|n| n.role == Role::Server) else {
            return Err(
                "no node has role = \"server\" and [k3s] gives no token_file: nothing \
                        would start the cluster and the agents would wait for ever. Add a server \
                        node, or join an existing cluster with [k3s] server_url and token_file \
                        (its /var/lib/rancher/k3s/server/token)"
                    .into(),
            );
        };
        Self::new_at(cfg, first, url)
    }

    /// A new cluster started by `first`, registered at `url` or else at `first`'s address.
    fn new_at(
        cfg: &ClusterConfig,
        first: &crate::config::Node,
        url: Option<String>,
    ) -> Result<Option<Bootstrap>, String> {
        let server_url = match (url, &first.address) {
            (Some(u), _) => u,
            (None, Some(a)) => url_for_host(a.get_ref()),
            // A lone server needs no registration address; its name is its hostname, which
            // is what the operator's kubeconfig and tls-san can best use.
            (None, None) if cfg.nodes.len() == 1 => url_for_host(first.name.get_ref()),
            (None, None) => {
                return Err(format!(
                    "[k3s] server_url is not given and the server that starts the cluster, \
                     {:?}, has no address: give server_url, or address = \"IP or DNS name\" \
                     on that node, so the other nodes know where to register",
                    first.name.get_ref()
                ));
            }
        };
        Ok(Some(Bootstrap::New {
            first: first.name.get_ref().clone(),
            server_url,
        }))
    }

    /// The registration address (`https://HOST:PORT`).
    pub fn server_url(&self) -> &str {
        match self {
            Bootstrap::Join { server_url } | Bootstrap::New { server_url, .. } => server_url,
        }
    }

    /// Whether `node` initialises the cluster.
    pub fn is_first(&self, node: &str) -> bool {
        matches!(self, Bootstrap::New { first, .. } if first == node)
    }
}

/// `https://HOST:6443`, an IPv6 address in brackets.
pub fn url_for_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{K3S_PORT}")
    } else {
        format!("https://{host}:{K3S_PORT}")
    }
}

/// The host of an `https://HOST[:PORT]/...` URL, without brackets.
pub fn url_host(url: &str) -> Option<String> {
    crate::plan::url_host(url)
}

/// The cluster's trust as the builder keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub tls: Vec<ca::TlsFile>,
    /// When the CAs were made (unix seconds): their names carry it (`k3s-client-ca@<it>`).
    pub created: i64,
    /// `K10<hash>::server:<secret>`.
    pub token: String,
}

impl Trust {
    fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_SUBDIR)
    }

    /// The trust from `state_dir`, made there on first use. The set appears whole or not at
    /// all: it is made in a temporary directory renamed into place.
    pub fn load_or_create(state_dir: &Path) -> Result<Trust, ClusterError> {
        crate::identity::make_private_dir(state_dir)?;
        let dir = Trust::dir(state_dir);
        if !dir.exists() {
            let tmp = state_dir.join(format!("{STATE_SUBDIR}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            crate::identity::make_private_dir(&tmp)?;
            let made = (|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_err(|e| ClusterError::Invalid(e.to_string()))?
                    .as_secs() as i64;
                ca::generate(&tmp.join("tls"), now)?;
                let created = tmp.join(CREATED_FILE);
                std::fs::write(&created, format!("{now}\n")).map_err(ClusterError::io(&created))?;
                token::create_secret(&tmp)?;
                std::fs::rename(&tmp, &dir).map_err(ClusterError::io(&dir))
            })();
            if made.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            made?;
        }
        Trust::load(state_dir)
    }

    /// The trust from `state_dir`; an error if it was never made.
    pub fn load(state_dir: &Path) -> Result<Trust, ClusterError> {
        let dir = Trust::dir(state_dir);
        if !dir.is_dir() {
            return Err(ClusterError::NoState(state_dir.display().to_string()));
        }
        crate::identity::make_private_dir(&dir)?;
        let tls = ca::load(&dir.join("tls"))?;
        let server_ca = &tls
            .iter()
            .find(|f| f.path == "server-ca.crt")
            .expect("in the set")
            .content;
        let token = token::mint(server_ca, &token::load_secret(&dir)?).ok_or_else(|| {
            ClusterError::Invalid(format!(
                "{}: server-ca.crt holds no certificate k3s can parse",
                dir.join("tls").display()
            ))
        })?;
        let path = dir.join(CREATED_FILE);
        let created = std::fs::read_to_string(&path)
            .map_err(ClusterError::io(&path))?
            .trim()
            .parse()
            .map_err(|_| ClusterError::Invalid(format!("{} is not a time", path.display())))?;
        Ok(Trust {
            tls,
            created,
            token,
        })
    }

    /// One file of the set by its path under `server/tls`.
    pub fn file(&self, path: &str) -> &[u8] {
        &self
            .tls
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} is in every CA set"))
            .content
    }
}

/// A file the cluster puts on a node: its token, and on servers of a new cluster the CA set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
    pub secret: bool,
}

/// The k3s files for `node`, read or made: the token (from `token_file` when joining, else the
/// minted one), and on servers of a new cluster the CA set. `state_dir` is where the cluster's
/// trust lives; `token_file` is resolved already.
pub fn node_files(
    k: &K3s,
    token_file: Option<&Path>,
    role: Role,
    state_dir: &Path,
) -> Result<Vec<NodeFile>, ClusterError> {
    let mut out = Vec::new();
    let token = match token_file {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|source| ClusterError::Io {
                path: format!("k3s token_file {}", path.display()),
                source,
            })?;
            let t = bytes.trim_ascii().to_vec();
            if t.is_empty() {
                return Err(ClusterError::Invalid(format!(
                    "k3s token_file {} is empty",
                    path.display()
                )));
            }
            t
        }
        None => {
            debug_assert!(k.token_file.is_none());
            let trust = Trust::load_or_create(state_dir)?;
            if role == Role::Server {
                for f in &trust.tls {
                    out.push(NodeFile {
                        path: format!("{}/{}", ca::TLS_DIR, f.path),
                        content: f.content.clone(),
                        mode: if f.private { 0o600 } else { 0o644 },
                        secret: f.private,
                    });
                }
            }
            trust.token.into_bytes()
        }
    };
    out.insert(
        0,
        NodeFile {
            path: TOKEN_PATH.into(),
            content: token,
            mode: 0o600,
            secret: true,
        },
    );
    Ok(out)
}

/// Directories to make, with their modes, parents first.
pub type NodeDirs = Vec<(&'static str, u32)>;

/// The directories [`node_files`] needs, parents first, with their modes: k3s makes
/// `server/tls` 0700 itself (the rotate listing in k3s issue #7082 shows keys 0600 under it).
pub fn node_dirs(files: &[NodeFile]) -> NodeDirs {
    let mut dirs = vec![("/etc/rancher/k3s", 0o755)];
    if files.iter().any(|f| f.path.starts_with(ca::TLS_DIR)) {
        dirs.extend([
            ("/var/lib/rancher/k3s/server", 0o700),
            (ca::TLS_DIR, 0o700),
            ("/var/lib/rancher/k3s/server/tls/etcd", 0o700),
        ]);
    }
    dirs
}
