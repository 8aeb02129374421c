//! Backups: the `run` step that schedules them (systemd timer, k3s etcd snapshot settings) and the
//! `backup` command that sends one snapshot.
//!
//! One run rsyncs the configured paths over SSH into
//! `<dir>/<cluster>/<node>/.partial-<timestamp>/`, hard-linking unchanged files against the last
//! good backup (`latest`), and only after rsync succeeded renames it to `<timestamp>` and moves
//! `latest`. A failed or interrupted run leaves the previous backups untouched.
//!
//! What the node trusts: the backups carry /etc, every secret of the node, so ssh checks the
//! NAS's host key before the node logs in. A key pinned in `[backup] known_hosts_file` must
//! match; without one the first key seen is recorded in [`TOFU_KNOWN_HOSTS`] (trust on first
//! use) and any other key refused after. Either way a refusal happens before authentication:
//! nothing is sent.
//!
//! How long a run may take: each ssh command is killed after `connect_timeout_secs +
//! io_timeout_secs`, rsync gives up after `io_timeout_secs` without data, and ssh drops a
//! connection whose NAS stopped answering keepalives; the unit's `TimeoutStartSec=` bounds it all.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::{self, CommandError, Finished};
use crate::config::{BackupSection, NodeConfig, Role};
use crate::known_hosts;
use crate::root::Root;
use crate::status::utc_compact;

pub const TIMER_DROPIN: &str = "/etc/systemd/system/imagegen-backup.timer.d/schedule.conf";
pub const ETCD_DROPIN: &str = "/etc/rancher/k3s/config.yaml.d/50-imagegen-etcd-snapshots.yaml";
/// Where the NAS host key is recorded on first use when node.toml pins none.
pub const TOFU_KNOWN_HOSTS: &str = "/var/lib/imagegen/backup-known-hosts";

/// ssh_config(5): after ServerAliveInterval seconds without data ssh asks the NAS for an
/// answer through the encrypted channel, and drops the connection after ServerAliveCountMax
/// unanswered asks: a NAS that vanished mid-run is noticed in about a minute, where TCP alone
/// (keepalive off by default, 2 h when on) would wait for hours.
const SERVER_ALIVE_INTERVAL: u32 = 15;
const SERVER_ALIVE_COUNT_MAX: u32 = 4;

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
    /// ssh refused the NAS's host key, or it could not be checked: nothing was sent.
    #[error("backup refused: {0}")]
    HostKey(String),
    #[error("backup: timed out {step}: {detail}; the previous backups are untouched")]
    TimedOut { step: &'static str, detail: String },
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
    d.insert("host_key".into(), HostKeys::of(b).describe_policy());
    Ok(d)
}

/// Quotes for the remote shell that ssh hands its command to.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// How the NAS's host key is checked.
enum HostKeys {
    /// node.toml's `known_hosts_file`: only keys listed there.
    Pinned(PathBuf),
    /// None pinned: [`TOFU_KNOWN_HOSTS`], which ssh fills on first use.
    FirstUse(PathBuf),
}

impl HostKeys {
    fn of(b: &BackupSection) -> HostKeys {
        match &b.known_hosts_file {
            Some(k) => HostKeys::Pinned(k.clone()),
            None => HostKeys::FirstUse(PathBuf::from(TOFU_KNOWN_HOSTS)),
        }
    }

    /// The known_hosts file, as a path on the node.
    fn file(&self) -> &Path {
        match self {
            HostKeys::Pinned(p) | HostKeys::FirstUse(p) => p,
        }
    }

    fn describe_policy(&self) -> String {
        match self {
            HostKeys::Pinned(p) => format!("pinned in {}", p.display()),
            HostKeys::FirstUse(p) => format!(
                "none pinned: trusted on first use, recorded in {}",
                p.display()
            ),
        }
    }

    /// The ssh options that check the host key against this file and no other.
    fn ssh_options(&self, root: &Root) -> Vec<OsString> {
        let mut file = OsString::from("UserKnownHostsFile=");
        file.push(root.path(self.file()));
        // ssh_config(5) StrictHostKeyChecking: `yes` never adds a key and refuses a changed
        // one; `accept-new` adds the key of a host it has none for and refuses a changed one
        // (and, tested with OpenSSH 9.2, a key of another type for a known host too).
        let strict = match self {
            HostKeys::Pinned(_) => "StrictHostKeyChecking=yes",
            HostKeys::FirstUse(_) => "StrictHostKeyChecking=accept-new",
        };
        let mut a: Vec<OsString> = vec!["-o".into(), file];
        a.extend(
            [
                "-o",
                strict,
                // Only this file decides: not /etc/ssh/ssh_known_hosts (GlobalKnownHostsFile),
                // and the NAS cannot add keys to it after login (UpdateHostKeys).
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "UpdateHostKeys=no",
            ]
            .map(OsString::from),
        );
        a
    }

    /// The keys the file holds now (none when it does not exist).
    fn recorded(&self, root: &Root) -> Vec<known_hosts::Entry> {
        root.read_to_string(self.file())
            .map(|t| known_hosts::entries(&t))
            .unwrap_or_default()
    }

    /// Why ssh refused the NAS, from its stderr, for an operator who must act on it.
    fn refusal(&self, host: &str, stderr: &str) -> String {
        let file = self.file().display();
        let shown = offered_key(stderr)
            .map(|(kind, fp)| format!("{host} now shows the {kind} key {fp}"))
            .unwrap_or_else(|| format!("{host} shows a key"));
        let changed = stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("has changed and you have requested strict checking");
        let what = match self {
            HostKeys::Pinned(_) if changed => {
                format!("the NAS host key changed: {shown}, not the one pinned in {file}")
            }
            HostKeys::Pinned(_) => {
                format!("the NAS host key is not pinned: {shown}, and {file} pins none for it")
            }
            HostKeys::FirstUse(_) => format!(
                "the NAS host key changed: {shown}, not the one trusted on first use and recorded in {file}"
            ),
        };
        let fix = match self {
            HostKeys::Pinned(_) => {
                "pin its new key ([backup] host_keys in cluster.toml) and rebuild or personalize the node"
            }
            HostKeys::FirstUse(_) => {
                "pin its new key ([backup] host_keys in cluster.toml), or delete that file to trust the next key seen"
            }
        };
        format!(
            "{what}; nothing was sent, and backups stay refused until the operator acts: if the \
             NAS was reinstalled, {fix}; if not, something else answers at its address"
        )
    }
}

/// `(type, SHA256:...)` of the key the server showed, as ssh prints it when refusing a changed
/// key ("The fingerprint for the ED25519 key sent by the remote host is\nSHA256:....").
fn offered_key(stderr: &str) -> Option<(String, String)> {
    let mut lines = stderr.lines();
    let line = lines
        .by_ref()
        .find(|l| l.contains("key sent by the remote host is"))?;
    let kind = line
        .split_whitespace()
        .skip_while(|w| *w != "the")
        .nth(1)?
        .to_owned();
    let fp = lines.next()?.trim().trim_end_matches('.').to_owned();
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b':' | b'-');
    (fp.starts_with("SHA256:") && fp.bytes().all(plain) && kind.bytes().all(plain))
        .then_some((kind, fp))
}

/// `SHA256:...` of each key, comma-separated.
fn fingerprints(entries: &[known_hosts::Entry]) -> String {
    entries
        .iter()
        .map(|e| e.key.fingerprint())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a successful run reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `host:dir` of the snapshot written.
    pub dest: String,
    /// How the NAS's host key was trusted (for the status).
    pub host_key: String,
}

/// One backup run.
pub fn run(root: &Root, config: &NodeConfig) -> Result<Report, BackupError> {
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
    let keys = HostKeys::of(b);
    match &keys {
        HostKeys::Pinned(k) if !root.exists(k) => {
            return Err(BackupError::HostKey(format!(
                "the NAS host key cannot be checked: the pinned {} is missing; nothing was sent",
                k.display()
            )));
        }
        HostKeys::Pinned(_) => {}
        HostKeys::FirstUse(k) => {
            // ssh does not make the directory; without it, it would warn and go on trusting
            // a key it never recorded.
            if let Some(d) = root.path(k).parent() {
                std::fs::create_dir_all(d).map_err(|source| BackupError::Write {
                    path: TOFU_KNOWN_HOSTS.into(),
                    source,
                })?;
            }
        }
    }
    let recorded_before = keys.recorded(root);
    let base = format!(
        "{}/{}/{}",
        dir.trim_end_matches('/'),
        config.node.cluster,
        config.node.name
    );
    let ts = utc_compact();
    let partial = format!("{base}/.partial-{ts}");
    let ssh_args = ssh_args(root, b, &keys);
    let nas = host.rsplit_once('@').map_or(host, |(_, h)| h);
    // A remote command is a mkdir or a rename: connecting is all that can take long.
    let limit = Duration::from_secs(b.connect_timeout_secs + b.io_timeout_secs);
    let ssh = |step: &'static str, remote: String| -> Result<(), BackupError> {
        let mut args = ssh_args.clone();
        args.push(host.into());
        args.push(remote.into());
        let f = command::output_bounded(root, &config.commands.ssh, &args, Some(limit))
            .map_err(|e| timed_out(step, e, b))?;
        check(step, f, &keys, nas, b)
    };

    ssh(
        "preparing the backup directory on the NAS",
        format!("mkdir -p {}", sh(&base)),
    )?;
    let host_key = match &keys {
        HostKeys::Pinned(_) => keys.describe_policy(),
        HostKeys::FirstUse(file) => {
            let now = keys.recorded(root);
            if now.is_empty() {
                return Err(BackupError::HostKey(format!(
                    "ssh did not record the NAS host key in {}; nothing was sent",
                    file.display()
                )));
            }
            let text = format!("NAS host key trusted on first use: {}", fingerprints(&now));
            let new: Vec<_> = now
                .iter()
                .filter(|e| !recorded_before.contains(e))
                .cloned()
                .collect();
            if !new.is_empty() {
                eprintln!(
                    "backup: NAS host key trusted on first use: {}; recorded in {}",
                    fingerprints(&new),
                    file.display()
                );
            }
            text
        }
    };

    let mut args: Vec<OsString> = ["-a", "--relative", "--numeric-ids", "--delete"]
        .map(OsString::from)
        .to_vec();
    // rsync(1) --timeout: "If no data is transferred for the specified time then rsync will
    // exit" (code 30). Without it a NAS that stops answering holds the run for good.
    args.push(format!("--timeout={}", b.io_timeout_secs).into());
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
    // No overall limit: a first backup over a slow link may rightly take hours, as long as
    // data flows (--timeout, keepalives); the unit's TimeoutStartSec= is the last bound.
    let step = "sending the files";
    let f = command::output_bounded(root, &config.commands.rsync, &args, None)
        .map_err(|e| timed_out(step, e, b))?;
    // rsync(1) EXIT VALUES: 30 "Timeout in data send/receive".
    if f.status.code() == Some(30) {
        return Err(BackupError::TimedOut {
            step,
            detail: format!(
                "no data for {} s (rsync --timeout, [backup] io_timeout_secs)",
                b.io_timeout_secs
            ),
        });
    }
    check(step, f, &keys, nas, b)?;

    let done = format!("{base}/{ts}");
    ssh(
        "finishing the snapshot on the NAS",
        format!(
            "[ ! -e {d} ] && mv {p} {d} && ln -sfn {t} {l}",
            p = sh(&partial),
            d = sh(&done),
            t = sh(&ts),
            l = sh(&format!("{base}/latest"))
        ),
    )?;
    eprintln!("backup: done: {host}:{done}");
    Ok(Report {
        dest: format!("{host}:{done}"),
        host_key,
    })
}

/// A run killed at its limit, said as a timeout of the backup.
fn timed_out(step: &'static str, e: CommandError, b: &BackupSection) -> BackupError {
    match e {
        CommandError::TimedOut { secs, .. } => BackupError::TimedOut {
            step,
            detail: format!(
                "no result within {secs} s ([backup] connect_timeout_secs {} + io_timeout_secs \
                 {}), killed",
                b.connect_timeout_secs, b.io_timeout_secs
            ),
        },
        e => e.into(),
    }
}

/// Turns a finished ssh or rsync into the run's result: a host key refusal and a timeout are
/// told apart from other failures, since the operator acts differently on each.
fn check(
    step: &'static str,
    f: Finished,
    keys: &HostKeys,
    nas: &str,
    b: &BackupSection,
) -> Result<(), BackupError> {
    if f.status.success() {
        return Ok(());
    }
    let err = &f.stderr;
    if err.contains("Host key verification failed") {
        return Err(BackupError::HostKey(keys.refusal(nas, err)));
    }
    // ssh's words for ConnectTimeout ("Connection timed out during banner exchange",
    // "connect to host ... Connection timed out") and for unanswered keepalives
    // ("Timeout, server ... not responding").
    if let Some(line) = err
        .lines()
        .find(|l| l.contains("timed out") || l.starts_with("Timeout, server"))
    {
        return Err(BackupError::TimedOut {
            step,
            detail: format!(
                "{} (ConnectTimeout {} s, ServerAliveInterval {SERVER_ALIVE_INTERVAL} s x \
                 {SERVER_ALIVE_COUNT_MAX})",
                line.trim(),
                b.connect_timeout_secs
            ),
        });
    }
    Err(f.failed().into())
}

fn ssh_args(root: &Root, b: &BackupSection, keys: &HostKeys) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-i".into(), root.path(&b.ssh_key_file).into()];
    a.extend(
        [
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={}", b.connect_timeout_secs),
            "-o".into(),
            format!("ServerAliveInterval={SERVER_ALIVE_INTERVAL}"),
            "-o".into(),
            format!("ServerAliveCountMax={SERVER_ALIVE_COUNT_MAX}"),
        ]
        .map(OsString::from),
    );
    if let Some(port) = b.ssh_port {
        a.push("-p".into());
        a.push(port.to_string().into());
    }
    a.extend(keys.ssh_options(root));
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGED: &str = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ECDSA key sent by the remote host is
SHA256:U/5oNfbCzLqGinoAeOmf6TrKiMvw31yIPdWpVbIEJR4.
Please contact your system administrator.
Add correct host key in /tmp/exp/kh to get rid of this message.
Offending ED25519 key in /tmp/exp/kh:1
  remove with:
  ssh-keygen -f \"/tmp/exp/kh\" -R \"[127.0.0.1]:24022\"
Host key for [127.0.0.1]:24022 has changed and you have requested strict checking.
Host key verification failed.
";

    #[test]
    fn refusals_say_what_changed_and_what_to_do() {
        assert_eq!(
            offered_key(CHANGED),
            Some((
                "ECDSA".into(),
                "SHA256:U/5oNfbCzLqGinoAeOmf6TrKiMvw31yIPdWpVbIEJR4".into()
            ))
        );
        let r = HostKeys::FirstUse(TOFU_KNOWN_HOSTS.into()).refusal("nas", CHANGED);
        assert!(
            r.starts_with("the NAS host key changed: nas now shows the ECDSA key SHA256:U/5o"),
            "{r}"
        );
        assert!(r.contains("until the operator acts"), "{r}");
        let unknown = "No ED25519 host key is known for nas and you have requested strict checking.\nHost key verification failed.\n";
        assert_eq!(offered_key(unknown), None);
        let r = HostKeys::Pinned("/etc/k".into()).refusal("nas", unknown);
        assert!(r.contains("/etc/k pins none"), "{r}");
        // Nothing from a hostile stderr that is not a fingerprint is repeated.
        let hostile = "The fingerprint for the X key sent by the remote host is\nSHA256:a b\n";
        assert_eq!(offered_key(hostile), None);
    }

    #[test]
    fn ssh_is_bounded_and_checks_the_host_key() {
        let b: BackupSection =
            toml::from_str("target = \"b@nas:/srv\"\npaths = [\"/etc\"]\nssh_key_file = \"/k\"\n")
                .unwrap();
        let root = Root::new("/r");
        let a = ssh_args(&root, &b, &HostKeys::of(&b));
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        let opts: Vec<&str> = a
            .windows(2)
            .filter(|w| w[0] == "-o")
            .map(|w| w[1])
            .collect();
        for want in [
            "BatchMode=yes",
            "ConnectTimeout=10",
            "ServerAliveInterval=15",
            "ServerAliveCountMax=4",
            "UserKnownHostsFile=/r/var/lib/imagegen/backup-known-hosts",
            "StrictHostKeyChecking=accept-new",
            "GlobalKnownHostsFile=/dev/null",
            "UpdateHostKeys=no",
        ] {
            assert!(opts.contains(&want), "{want} not in {opts:?}");
        }
        assert!(
            !opts
                .iter()
                .any(|o| o.contains("=no") && o.starts_with("Strict"))
        );
    }
}
