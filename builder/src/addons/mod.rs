//! Cluster add-ons, deployed by k3s itself: `[addons]` in cluster.toml.
//!
//! k3s applies every manifest under `/var/lib/rancher/k3s/server/manifests/` on the server it
//! runs on (k3s `pkg/deploy/controller.go`, `listFilesIn`), and installs the Helm chart of each
//! `HelmChart` resource there with its helm-controller. So an add-on is one HelmChart manifest,
//! written into the first server of a new cluster only: one server applying it is enough, and
//! the first server is the one that exists before any other. etcd snapshots are k3s
//! configuration instead (`etcd-snapshot-schedule-cron`), on every server, with their directory
//! added to the servers' backup paths.

pub mod helmchart;

use crate::config::{ClusterConfig, Role};
use serde::Deserialize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Where k3s's deploy controller looks for manifests on a server.
pub const MANIFESTS_DIR: &str = "/var/lib/rancher/k3s/server/manifests";
/// k3s's default etcd snapshot directory (`--etcd-snapshot-dir`: `${data-dir}/db/snapshots`).
pub const SNAPSHOT_DIR: &str = "/var/lib/rancher/k3s/server/db/snapshots";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addons {
    /// kube-prometheus-stack: Prometheus, Grafana, node exporter on every node.
    #[serde(default)]
    pub monitoring: Option<ChartAddon>,
    /// Headlamp, a web dashboard for cluster administration.
    #[serde(default)]
    pub dashboard: Option<ChartAddon>,
    /// nfs-subdir-external-provisioner: persistent volumes on the NAS.
    #[serde(default)]
    pub nfs_storage: Option<NfsStorage>,
    /// Scheduled etcd snapshots on the servers, copied to the NAS with the backups.
    #[serde(default)]
    pub etcd_snapshots: Option<EtcdSnapshots>,
}

/// What the user may give for any chart add-on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartAddon {
    /// A Helm values file (YAML), relative to cluster.toml.
    #[serde(default)]
    pub values: Option<Spanned<PathBuf>>,
    /// The chart as a `.tgz` (`helm pull`), embedded so nothing is downloaded at first boot.
    #[serde(default)]
    pub chart: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NfsStorage {
    #[serde(default)]
    pub values: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub chart: Option<Spanned<PathBuf>>,
    /// The NFS server; default: the host of `[backup] target` (the NAS).
    #[serde(default)]
    pub server: Option<Spanned<String>>,
    /// The export on it, e.g. `/volume1/k3s`.
    pub path: Spanned<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSnapshots {
    /// Cron schedule (k3s `etcd-snapshot-schedule-cron`); default: node.toml's.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// How many snapshots each server keeps (k3s `etcd-snapshot-retention`); default:
    /// node.toml's.
    #[serde(default)]
    pub retention: Option<u32>,
}

/// A chart add-on imagegen knows, pinned to one chart version from one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    /// Its key in `[addons]`, and its manifest's name (`imagegen-KEY.json`).
    pub key: &'static str,
    /// The chart's name in the repository, also the Helm release's name.
    pub chart: &'static str,
    pub repo: &'static str,
    pub version: &'static str,
    /// The namespace the chart is installed into (the HelmChart itself lives in kube-system).
    pub namespace: &'static str,
}

// Versions read from each chart's Chart.yaml on its default branch, repositories from each
// project's README (`helm repo add ...`):
// - prometheus-community/helm-charts, charts/kube-prometheus-stack/Chart.yaml at cf408a29
//   (2026-08-22): version 88.5.3;
// - kubernetes-sigs/headlamp, charts/headlamp/Chart.yaml at 6d2b42cc (2026-08-21): 0.45.0;
// - kubernetes-sigs/nfs-subdir-external-provisioner, charts/nfs-subdir-external-provisioner/
//   Chart.yaml at 59a3ca2c (2024-02-15, its latest release): 4.0.18.
pub const MONITORING: Pinned = Pinned {
    key: "monitoring",
    chart: "kube-prometheus-stack",
    repo: "https://prometheus-community.github.io/helm-charts",
    version: "88.5.3",
    namespace: "monitoring",
};
pub const DASHBOARD: Pinned = Pinned {
    key: "dashboard",
    chart: "headlamp",
    repo: "https://kubernetes-sigs.github.io/headlamp/",
    version: "0.45.0",
    // Where Headlamp's README installs it.
    namespace: "kube-system",
};
pub const NFS_STORAGE: Pinned = Pinned {
    key: "nfs_storage",
    chart: "nfs-subdir-external-provisioner",
    repo: "https://kubernetes-sigs.github.io/nfs-subdir-external-provisioner/",
    version: "4.0.18",
    namespace: "kube-system",
};

#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    #[error("addons.{key} {what} {path}: {source}")]
    Read {
        key: &'static str,
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("addons.{key} chart {path} is not a gzip file (a chart .tgz from `helm pull`)")]
    NotGzip { key: &'static str, path: String },
    #[error("addons.{key} values {path} is not UTF-8 text")]
    NotText { key: &'static str, path: String },
    #[error("{0}")]
    Invalid(String),
}

/// One chart add-on switched on, with what the user gave for it.
pub struct Enabled<'a> {
    pub pinned: Pinned,
    pub values: Option<&'a Spanned<PathBuf>>,
    pub chart: Option<&'a Spanned<PathBuf>>,
    /// `--set` values imagegen decides (the NFS server and export).
    pub set: Vec<(&'static str, String)>,
}

/// The chart add-ons `[addons]` switches on, in a fixed order.
pub fn enabled(cfg: &ClusterConfig) -> Result<Vec<Enabled<'_>>, AddonError> {
    let Some(a) = &cfg.addons else {
        return Ok(Vec::new());
    };
    let mut v = Vec::new();
    for (pinned, c) in [(MONITORING, &a.monitoring), (DASHBOARD, &a.dashboard)] {
        if let Some(c) = c {
            v.push(Enabled {
                pinned,
                values: c.values.as_ref(),
                chart: c.chart.as_ref(),
                set: Vec::new(),
            });
        }
    }
    if let Some(n) = &a.nfs_storage {
        v.push(Enabled {
            pinned: NFS_STORAGE,
            values: n.values.as_ref(),
            chart: n.chart.as_ref(),
            set: vec![
                ("nfs.server", nfs_server(cfg, n)?),
                ("nfs.path", n.path.get_ref().clone()),
            ],
        });
    }
    Ok(v)
}

fn nfs_server(cfg: &ClusterConfig, n: &NfsStorage) -> Result<String, AddonError> {
    if let Some(s) = &n.server {
        return Ok(s.get_ref().clone());
    }
    let target = cfg
        .backup
        .as_ref()
        .map(|b| b.target.get_ref())
        .ok_or_else(|| {
            AddonError::Invalid(
                "addons.nfs_storage needs server = \"NAS\" (or a [backup] target on the NAS)"
                    .into(),
            )
        })?;
    crate::plan::ssh_url_host(target).map_err(|e| AddonError::Invalid(e.to_string()))
}

/// A manifest for the first server.
pub struct Manifest {
    pub path: String,
    pub content: Vec<u8>,
    /// It carries a user's values file, which may hold passwords.
    pub secret: bool,
}

/// The HelmChart manifests for `node`: all of them on the first server of a new cluster,
/// none elsewhere.
pub fn manifests(
    cfg: &ClusterConfig,
    node: &str,
    config_dir: &Path,
) -> Result<Vec<Manifest>, AddonError> {
    let first = matches!(
        crate::cluster::Bootstrap::of(cfg),
        Ok(Some(b)) if b.is_first(node)
    );
    if !first {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in enabled(cfg)? {
        let key = e.pinned.key;
        let values = match e.values {
            Some(p) => {
                let path = config_dir.join(p.get_ref());
                let bytes = read(key, "values", &path)?;
                Some(String::from_utf8(bytes).map_err(|_| AddonError::NotText {
                    key,
                    path: path.display().to_string(),
                })?)
            }
            None => None,
        };
        let chart = match e.chart {
            Some(p) => {
                let path = config_dir.join(p.get_ref());
                let bytes = read(key, "chart", &path)?;
                if !is_gzip(&bytes) {
                    return Err(AddonError::NotGzip {
                        key,
                        path: path.display().to_string(),
                    });
                }
                Some(bytes)
            }
            None => None,
        };
        let secret = values.is_some();
        let hc = helmchart::HelmChart::new(&e.pinned, values, chart.as_deref(), &e.set);
        out.push(Manifest {
            path: format!("{MANIFESTS_DIR}/imagegen-{}.json", key.replace('_', "-")),
            content: hc.to_json(),
            secret,
        });
    }
    Ok(out)
}

fn read(key: &'static str, what: &'static str, path: &Path) -> Result<Vec<u8>, AddonError> {
    std::fs::read(path).map_err(|source| AddonError::Read {
        key,
        what,
        path: path.display().to_string(),
        source,
    })
}

/// RFC 1952: a gzip member starts with ID1 0x1f, ID2 0x8b.
fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// `etcd_snapshots` on a server: the schedule and retention for its k3s config.
pub fn etcd_snapshots(cfg: &ClusterConfig, role: Role) -> Option<&EtcdSnapshots> {
    (role == Role::Server)
        .then(|| cfg.addons.as_ref()?.etcd_snapshots.as_ref())
        .flatten()
}

/// Why k3s would not take `s` as `etcd-snapshot-schedule-cron`, roughly: k3s parses it with
/// robfig/cron's standard parser (k3s `pkg/etcd`, `cron.New()`), five fields or a descriptor.
fn cron_problem(s: &str) -> Option<String> {
    let s = s.trim();
    let descriptors = [
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    if descriptors.contains(&s) || s.starts_with("@every ") {
        return None;
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    let ok_field = |f: &&str| {
        f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"*/,-?".contains(&b))
    };
    (fields.len() != 5 || !fields.iter().all(ok_field)).then(|| {
        format!(
            "addons.etcd_snapshots schedule {s:?} is not a cron schedule (five fields, \
             like \"0 */12 * * *\", or @daily)"
        )
    })
}

/// Everything `check` finds wrong with `[addons]`, each with its span when it has one. The
/// files are read as the build will read them.
pub fn problems(cfg: &ClusterConfig, config_dir: &Path) -> Vec<(Option<Range<usize>>, String)> {
    let mut out = Vec::new();
    let Some(a) = &cfg.addons else {
        return out;
    };
    if cfg.k3s.is_none() {
        out.push((None, "[addons] are deployed by k3s: add [k3s]".into()));
    }
    if let Some(e) = &a.etcd_snapshots {
        if cfg.backup.is_none() {
            out.push((
                e.schedule.as_ref().map(Spanned::span),
                "addons.etcd_snapshots copies the snapshots to the NAS with the backups: add \
                 [backup]"
                    .into(),
            ));
        }
        if let Some(s) = &e.schedule
            && let Some(why) = cron_problem(s.get_ref())
        {
            out.push((Some(s.span()), why));
        }
    }
    let enabled = match enabled(cfg) {
        Ok(v) => v,
        Err(e) => {
            let span = a.nfs_storage.as_ref().map(|n| n.path.span());
            out.push((span, e.to_string()));
            return out;
        }
    };
    for e in enabled {
        let key = e.pinned.key;
        if let Some(p) = e.values {
            let path = config_dir.join(p.get_ref());
            match read(key, "values", &path) {
                Err(err) => out.push((Some(p.span()), err.to_string())),
                Ok(b) if std::str::from_utf8(&b).is_err() => out.push((
                    Some(p.span()),
                    AddonError::NotText {
                        key,
                        path: path.display().to_string(),
                    }
                    .to_string(),
                )),
                Ok(_) => {}
            }
        }
        if let Some(p) = e.chart {
            let path = config_dir.join(p.get_ref());
            match read(key, "chart", &path) {
                Err(err) => out.push((Some(p.span()), err.to_string())),
                Ok(b) if !is_gzip(&b) => out.push((
                    Some(p.span()),
                    AddonError::NotGzip {
                        key,
                        path: path.display().to_string(),
                    }
                    .to_string(),
                )),
                Ok(_) => {}
            }
        }
    }
    out
}
