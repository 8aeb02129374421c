//! `[packages]`: the operator's software. Staged `.deb`s are installed offline with dpkg, the
//! way the staged zerotier-one package is (`zerotier` calls [`install_debs`] too); archive
//! packages with apt-get once the node reaches its APT sources, retried with the network waits'
//! backoff, so a node without the network yet leaves the step pending and boots on.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::attempts::Attempts;
use crate::backoff::{Waiting, retry_until};
use crate::command::{self, CommandError};
use crate::config::CommandsSection;
use crate::root::Root;

#[derive(Debug, thiserror::Error)]
pub enum PackagesError {
    #[error("{0}")]
    Command(#[from] CommandError),
    #[error("staged package {0} is missing")]
    Missing(String),
    /// Not an error of ours: the APT sources cannot be reached yet.
    #[error("still waiting: {0}")]
    Waiting(String),
    #[error("less than {0} s left in this run to install; the next run does")]
    NoTime(u64),
}

impl Waiting for PackagesError {
    fn waiting(&self) -> Option<&str> {
        match self {
            PackagesError::Waiting(why) => Some(why),
            _ => None,
        }
    }
}

impl PackagesError {
    /// Still waiting for the network or for time: the step stays pending.
    pub fn is_waiting(&self) -> bool {
        matches!(self, PackagesError::Waiting(_) | PackagesError::NoTime(_))
    }
}

/// Held while this process runs dpkg or `apt-get install`: the zerotier-one install and the
/// apt step run in parallel threads, and a `dpkg -i` that finds dpkg's lock taken fails at once
/// (apt waits for it, dpkg does not).
static DPKG: Mutex<()> = Mutex::new(());

fn dpkg_lock() -> std::sync::MutexGuard<'static, ()> {
    // A panic elsewhere while holding it leaves nothing half-done that the lock protects.
    DPKG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Installs the staged packages at `debs` (node paths) with one `dpkg -i`, so packages that
/// depend on each other are unpacked before any is configured (dpkg(1) `--install`).
pub fn install_debs(root: &Root, dpkg: &str, debs: &[PathBuf]) -> Result<(), PackagesError> {
    if let Some(gone) = debs.iter().find(|d| !root.exists(d)) {
        return Err(PackagesError::Missing(gone.display().to_string()));
    }
    let mut args = vec![OsString::from("-i")];
    args.extend(debs.iter().map(|d| root.path(d).into_os_string()));
    let _dpkg = dpkg_lock();
    command::run(root, dpkg, &args)?;
    Ok(())
}

/// Environment for apt-get and the maintainer scripts it runs: no debconf question may wait
/// for an answer nobody gives (debconf(7), "noninteractive" frontend).
const APT_ENV: &[(&str, &str)] = &[("DEBIAN_FRONTEND", "noninteractive")];

/// Options every apt-get call gets. `APT::Update::Error-Mode=any` makes `update` fail when a
/// source cannot be fetched (by default it warns and exits 0, so "no network" would look like
/// success: apt.conf(5)); an older apt ignores the option. The lock timeout lets apt wait for
/// cloud-init's or unattended-upgrades' apt instead of failing at once; the dpkg options keep
/// the image's configuration files when a package brings new ones, without asking.
const APT_OPTIONS: &[&str] = &[
    "-q",
    "-o",
    "APT::Update::Error-Mode=any",
    "-o",
    "DPkg::Lock::Timeout=60",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
];

/// The least time an install is started with; one that is killed midway leaves dpkg to finish
/// with `--configure -a` (below) in the next run.
const MIN_INSTALL: Duration = Duration::from_secs(30);

/// `apt-get update` until the sources answer (or `deadline`), then `apt-get install -y` the
/// `names`, killed at `run_end`. A dpkg interrupted by an earlier run's kill or a power cut is
/// finished first (`dpkg --configure -a`), or apt-get would refuse to install.
pub fn install_apt(
    root: &Root,
    commands: &CommandsSection,
    names: &[String],
    deadline: Instant,
    run_end: Instant,
    attempts: &mut Attempts,
) -> Result<BTreeMap<String, String>, PackagesError> {
    retry_until(deadline, attempts, || {
        let left = run_end.saturating_duration_since(Instant::now());
        let f = match apt(root, commands, &["update"], left) {
            Ok(f) => f,
            Err(e @ CommandError::TimedOut { .. }) => {
                return Err(PackagesError::Waiting(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        if f.status.success() {
            Ok(())
        } else {
            Err(PackagesError::Waiting(format!(
                "apt-get update: {}",
                f.failed()
            )))
        }
    })?;
    let left = run_end.saturating_duration_since(Instant::now());
    if left < MIN_INSTALL {
        return Err(PackagesError::NoTime(MIN_INSTALL.as_secs()));
    }
    let _dpkg = dpkg_lock();
    command::run(root, &commands.dpkg, &["--configure", "-a"])?;
    let mut args = vec!["install", "-y"];
    args.extend(names.iter().map(String::as_str));
    let left = run_end.saturating_duration_since(Instant::now());
    let f = apt(root, commands, &args, left)?;
    if !f.status.success() {
        return Err(f.failed().into());
    }
    Ok(BTreeMap::from([("installed".to_owned(), names.join(" "))]))
}

fn apt(
    root: &Root,
    commands: &CommandsSection,
    args: &[&str],
    limit: Duration,
) -> Result<command::Finished, CommandError> {
    let all: Vec<&str> = APT_OPTIONS.iter().chain(args).copied().collect();
    command::output_bounded_env(root, &commands.apt_get, &all, APT_ENV, Some(limit))
}
