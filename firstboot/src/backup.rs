//! Backups: the `run` step that schedules them (systemd timer, k3s etcd snapshot settings) and the
//! `backup` command that sends one snapshot.
//!
//! One run rsyncs the configured paths over SSH into
//! `<dir>/<cluster>/<node>/.partial-<timestamp>/`, hard-linking unchanged files against the last
//! good backup (`latest`), and only after rsync succeeded renames it to `<timestamp>` and moves
//! `latest`. A failed or interrupted run leaves the previous backups untouched.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use crate::command::{self, CommandError};
use crate::config::{BackupSection, NodeConfig, Role};
use crate::root::Root;
use crate::status::utc_compact;

pub const TIMER_DROPIN: &str = "/etc/systemd/system/imagegen-backup.timer.d/schedule.conf";
pub const ETCD_DROPIN: &str = "/etc/rancher/k3s/config.yaml.d/50-imagegen-etcd-snapshots.yaml";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup: no [backup] table in node.toml")]
    NotConfigured,
    #[error("backup: target {0:?} is not user@host:/dir")]
    Target(String),
    #[error("backup: {path} does not exist on this node")]
    MissingPath { path: String },
    #[error("backup: write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("backup: {0}")]
    Command(#[from] CommandError),
}

/// The `run` step: schedule backups; on servers also etcd snapshots.
pub fn schedule(root: &Root, config: &NodeConfig) -> Result<BTreeMap<String, String>, BackupError> {
    let Some(b) = &config.backup else {
        return Ok(BTreeMap::new());
    };
    let write = |path: &str, content: String, mode| {
        root.write_atomic(path, content.as_bytes(), mode)
            .map_err(|source| BackupError::Write {
                path: path.into(),
                source,
            })
    };
    // An empty OnCalendar= first clears the unit's own default.
    let dropin = format!(
        "# Written by imagegen-firstboot from [backup] schedule.\n[Timer]\nOnCalendar=\nOnCalendar={}\n",
        b.schedule
    );
    write(TIMER_DROPIN, dropin, 0o644)?;
    if config.node.role == Role::Server
        && let Some(k3s) = &config.k3s
    {
        let yaml = format!(
            "# Written by imagegen-firstboot from [k3s] etcd_snapshot_*.\n\
             etcd-snapshot-schedule-cron: {}\netcd-snapshot-retention: {}\n",
            serde_json::Value::from(k3s.etcd_snapshot_schedule.as_str()),
            k3s.etcd_snapshot_retention
        );
        write(ETCD_DROPIN, yaml, 0o600)?;
    }
    let systemctl = &config.commands.systemctl;
    command::run(root, systemctl, &["daemon-reload"])?;
    command::run(
        root,
        systemctl,
        &["enable", "--now", "imagegen-backup.timer"],
    )?;
    let mut d = BTreeMap::new();
    d.insert("schedule".into(), b.schedule.clone());
    Ok(d)
}

/// Quotes for the remote shell that ssh hands its command to.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// One backup run. Returns the remote directory it wrote.
pub fn run(root: &Root, config: &NodeConfig) -> Result<String, BackupError> {
    let b = config.backup.as_ref().ok_or(BackupError::NotConfigured)?;
    let (host, dir) = b
        .target
        .split_once(':')
        .filter(|(h, d)| !h.is_empty() && d.starts_with('/'))
        .ok_or_else(|| BackupError::Target(b.target.clone()))?;
    for p in &b.paths {
        if !root.exists(p) {
            return Err(BackupError::MissingPath {
                path: p.display().to_string(),
            });
        }
    }
    let base = format!(
        "{}/{}/{}",
        dir.trim_end_matches('/'),
        config.node.cluster,
        config.node.name
    );
    let ts = utc_compact();
    let partial = format!("{base}/.partial-{ts}");
    let ssh_args = ssh_args(root, b);
    let ssh = |remote: String| -> Result<(), BackupError> {
        let mut args = ssh_args.clone();
        args.push(host.into());
        args.push(remote.into());
        command::run(root, &config.commands.ssh, &args)?;
        Ok(())
    };

    ssh(format!("mkdir -p {}", sh(&base)))?;
    let mut args: Vec<OsString> = ["-a", "--relative", "--numeric-ids", "--delete"]
        .map(OsString::from)
        .to_vec();
    // Relative to the destination; rsync only warns when there is no previous backup yet.
    args.push("--link-dest=../latest".into());
    let mut e = command::resolve(&config.commands.ssh)?.into_os_string();
    for a in &ssh_args {
        e.push(" ");
        e.push(a);
    }
    args.push("-e".into());
    args.push(e);
    for p in &b.paths {
        // `/./` tells --relative where the path to recreate on the target begins.
        let mut src = root.dir().as_os_str().to_owned();
        src.push("/.");
        src.push(Path::new("/").join(p.strip_prefix("/").unwrap_or(p)));
        args.push(src);
    }
    args.push(format!("{host}:{partial}/").into());
    eprintln!(
        "backup: sending {} path(s) to {host}:{partial}",
        b.paths.len()
    );
    command::run(root, &config.commands.rsync, &args)?;

    let done = format!("{base}/{ts}");
    ssh(format!(
        "[ ! -e {d} ] && mv {p} {d} && ln -sfn {t} {l}",
        p = sh(&partial),
        d = sh(&done),
        t = sh(&ts),
        l = sh(&format!("{base}/latest"))
    ))?;
    eprintln!("backup: done: {host}:{done}");
    Ok(format!("{host}:{done}"))
}

fn ssh_args(root: &Root, b: &BackupSection) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-i".into(), root.path(&b.ssh_key_file).into()];
    a.extend(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"].map(OsString::from));
    if let Some(port) = b.ssh_port {
        a.push("-p".into());
        a.push(port.to_string().into());
    }
    match &b.known_hosts_file {
        Some(k) => {
            let mut opt = OsString::from("UserKnownHostsFile=");
            opt.push(root.path(k));
            a.extend([
                "-o".into(),
                opt,
                "-o".into(),
                "StrictHostKeyChecking=yes".into(),
            ]);
        }
        None => a.extend(
            [
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
            ]
            .map(OsString::from),
        ),
    }
    a
}
