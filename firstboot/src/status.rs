//! Persistent step status: `/var/lib/imagegen/status.json`, plus a short text copy on the boot
//! partition that a user can read from any PC.
//!
//! `run` and `ups-watch` both update it, so every update is a locked read-modify-write.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::root::Root;

pub const STATUS_PATH: &str = "/var/lib/imagegen/status.json";
const LOCK_PATH: &str = "/var/lib/imagegen/status.lock";
/// Name of the human-readable copy on the boot partition.
pub const BOOT_STATUS_NAME: &str = "imagegen-status.txt";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStatus {
    pub state: State,
    /// Why it is pending or failed; never a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`, when the state was last set (a new attempt count alone
    /// does not move it).
    pub since: String,
    /// Failed network attempts of this run so far, for a step that waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Facts the step learned (address, interface...), for later steps and the operator.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, String>,
    /// For failures that must not be retried blindly: a hash of the inputs that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_inputs: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub steps: BTreeMap<String, StepStatus>,
}

impl Status {
    pub fn step(&self, name: &str) -> Option<&StepStatus> {
        self.steps.get(name)
    }

    pub fn is_done(&self, name: &str) -> bool {
        self.step(name).is_some_and(|s| s.state == State::Done)
    }

    pub fn detail(&self, step: &str, key: &str) -> Option<&str> {
        self.step(step)?.details.get(key).map(String::as_str)
    }

    /// Human-readable summary, one line per step.
    pub fn to_text(&self) -> String {
        let mut out = format!("imagegen node {}\n", self.node);
        for (name, s) in &self.steps {
            let state = match s.state {
                State::Pending => "pending",
                State::Done => "done",
                State::Failed => "FAILED",
            };
            out.push_str(&format!("{name:<10} {state:<8} {}", s.since));
            if let Some(n) = s.attempts {
                out.push_str(&format!("  attempt {n}"));
            }
            if let Some(r) = &s.reason {
                out.push_str(&format!("  {r}"));
            }
            for (k, v) in &s.details {
                out.push_str(&format!("  {k}={v}"));
            }
            out.push('\n');
        }
        out
    }
}

/// Reads the status; a missing file is an empty status.
pub fn load(root: &Root) -> io::Result<Status> {
    match fs::read(root.path(STATUS_PATH)) {
        Ok(b) => serde_json::from_slice(&b).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::default()),
        Err(e) => Err(e),
    }
}

/// A new state for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub state: State,
    pub reason: Option<String>,
    pub details: BTreeMap<String, String>,
    pub refused_inputs: Option<String>,
    pub attempts: Option<u32>,
}

impl Update {
    pub fn done(details: BTreeMap<String, String>) -> Update {
        Update {
            state: State::Done,
            reason: None,
            details,
            refused_inputs: None,
            attempts: None,
        }
    }

    pub fn failed(reason: impl Into<String>) -> Update {
        Update {
            state: State::Failed,
            reason: Some(reason.into()),
            details: BTreeMap::new(),
            refused_inputs: None,
            attempts: None,
        }
    }

    pub fn pending(reason: impl Into<String>) -> Update {
        Update {
            state: State::Pending,
            ..Update::failed(reason)
        }
    }
}

/// Sets one step's state under the lock, and refreshes the boot copy. Writes nothing when the
/// step is already in exactly that state, so a rerun that changes nothing leaves the tree alone.
pub fn set(root: &Root, boot: &Path, node: &str, step: &str, u: Update) -> io::Result<()> {
    let _lock = lock(root)?;
    let mut status = load(root)?;
    let old = status.steps.get(step);
    if let Some(old) = old
        && old.state == u.state
        && old.reason == u.reason
        && old.details == u.details
        && old.refused_inputs == u.refused_inputs
        && old.attempts == u.attempts
        && status.node == node
    {
        return Ok(());
    }
    // "pending since 10:00, attempt 40" says more than a time that moves with every attempt.
    let since = match old {
        Some(o) if o.state == u.state && o.reason == u.reason => o.since.clone(),
        _ => utc_now(),
    };
    status.node = node.to_owned();
    status.steps.insert(
        step.to_owned(),
        StepStatus {
            state: u.state,
            reason: u.reason,
            since,
            details: u.details,
            refused_inputs: u.refused_inputs,
            attempts: u.attempts,
        },
    );
    let json = serde_json::to_vec_pretty(&status).map_err(io::Error::other)?;
    root.write_atomic(STATUS_PATH, &json, 0o644)?;
    // Only when the boot partition is mounted: never create the mount point ourselves.
    if root.path(boot).is_dir() {
        root.write_atomic(
            boot.join(BOOT_STATUS_NAME),
            status.to_text().as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

fn lock(root: &Root) -> io::Result<File> {
    let p = root.path(LOCK_PATH);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)?;
    f.lock()?;
    Ok(f)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let (d, t) = utc_parts(SystemTime::now());
    format!("{d}T{t}Z")
}

/// Current UTC time as `YYYYMMDDTHHMMSSZ`, for file and directory names.
pub fn utc_compact() -> String {
    let (d, t) = utc_parts(SystemTime::now());
    format!("{}T{}Z", d.replace('-', ""), t.replace(':', ""))
}

fn utc_parts(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates() {
        let at = |s| utc_parts(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), ("1970-01-01".into(), "00:00:00".into()));
        // `date -u -d @1709210096` = Thu Feb 29 12:34:56 UTC 2024
        assert_eq!(at(1_709_210_096), ("2024-02-29".into(), "12:34:56".into()));
    }
}
