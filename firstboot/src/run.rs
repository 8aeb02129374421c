//! `run`: the first-boot steps in order, each idempotent, with one time budget for all network
//! waits. Steps that need the network and do not get it stay `pending`, the process ends so boot
//! completes, and the retry timer runs it again later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, NODE_CONFIG_PATH, NodeConfig, PathsSection};
use crate::root::Root;
use crate::status::{self, State, Status, Update};
use crate::zerotier::Joined;
use crate::{backup, k3s, seed, ups, zerotier};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("status file: {0}")]
    Status(#[from] std::io::Error),
}

/// What a step came to.
enum Outcome {
    Done(BTreeMap<String, String>),
    Pending(String),
    Failed {
        reason: String,
        refused_inputs: Option<String>,
    },
}

fn failed(e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed {
        reason: e.to_string(),
        refused_inputs: None,
    }
}

/// Loads and validates `node.toml`; a failure is recorded in the status before it is returned.
pub fn load_config(root: &Root) -> Result<NodeConfig, RunError> {
    let path = root.path(NODE_CONFIG_PATH);
    let result = std::fs::read_to_string(&path)
        .map_err(|source| RunError::ReadConfig {
            path: PathBuf::from(NODE_CONFIG_PATH),
            source,
        })
        .and_then(|s| Ok(NodeConfig::from_toml_str(&s)?));
    let boot = PathsSection::default().boot;
    match &result {
        Ok(c) => status::set(
            root,
            &c.paths.boot,
            &c.node.name,
            "config",
            Update::done(BTreeMap::new()),
        )?,
        Err(e) => status::set(root, &boot, "", "config", Update::failed(e.to_string()))?,
    }
    result
}

/// Makes seeded identity files take effect on the running system: the hostname now, sshd
/// restarted so it serves the node's own host keys, the node's firewall loaded. Best effort:
/// the files are in place, and the next boot uses them anyway.
fn apply_seeded_identity(root: &Root, config: &NodeConfig, placed: &[String]) {
    if placed.iter().any(|p| p == "/etc/hostname")
        && let Ok(name) = std::fs::read_to_string(root.path("/etc/hostname"))
    {
        let live = root.path("/proc/sys/kernel/hostname");
        if live.exists()
            && let Err(e) = std::fs::write(&live, name.trim())
        {
            eprintln!("seed: cannot set the hostname now: {e}");
        }
    }
    if placed.iter().any(|p| p.starts_with("/etc/ssh/ssh_host_")) {
        let restarted = crate::command::run(
            root,
            &config.commands.systemctl,
            &["try-restart", "ssh.service"],
        );
        if let Err(e) = restarted {
            eprintln!("seed: cannot restart sshd for the new host keys: {e}");
        }
    }
    // The seed carries this node's firewall (a server opens more ports than the agent the
    // generic image was built for); our ruleset reloads atomically.
    if placed.iter().any(|p| p == "/etc/nftables.conf") {
        let reloaded = crate::command::run(
            root,
            &config.commands.systemctl,
            &["try-reload-or-restart", "nftables.service"],
        );
        if let Err(e) = reloaded {
            eprintln!("seed: cannot reload the firewall: {e}");
        }
    }
}

/// Summary of one `run`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub done: Vec<String>,
    pub pending: Vec<String>,
    pub failed: Vec<String>,
}

pub fn run(root: &Root, config: &NodeConfig) -> Result<Summary, RunError> {
    let deadline = Instant::now() + Duration::from_secs(config.agent.time_budget_secs);
    let boot: &Path = &config.paths.boot;
    let node = config.node.name.as_str();
    let mut summary = Summary::default();
    let record = |name: &str, outcome: Outcome, summary: &mut Summary| -> Result<(), RunError> {
        let update = match outcome {
            Outcome::Done(d) => Update::done(d),
            Outcome::Pending(r) => {
                eprintln!("{name}: pending: {r}");
                Update::pending(r)
            }
            Outcome::Failed {
                reason,
                refused_inputs,
            } => {
                eprintln!("{name}: failed: {reason}");
                Update {
                    refused_inputs,
                    ..Update::failed(reason)
                }
            }
        };
        match update.state {
            State::Done => summary.done.push(name.into()),
            State::Pending => summary.pending.push(name.into()),
            State::Failed => summary.failed.push(name.into()),
        }
        status::set(root, boot, node, name, update)?;
        Ok(())
    };

    // The seed runs every time: a user may personalize the card again later.
    let before = status::load(root)?;
    let mut reload = false;
    let seed_outcome = match seed::consume(root, boot) {
        Ok(seed::Consumed::Placed(paths)) => {
            eprintln!("seed: placed {} file(s) and wiped the seed", paths.len());
            reload = paths.iter().any(|p| p == NODE_CONFIG_PATH);
            apply_seeded_identity(root, config, &paths);
            Some(Outcome::Done(BTreeMap::from([(
                "placed".to_owned(),
                paths.join(" "),
            )])))
        }
        Ok(seed::Consumed::NoSeed) if before.is_done("seed") => None,
        Ok(seed::Consumed::NoSeed) => Some(Outcome::Done(BTreeMap::from([(
            "placed".to_owned(),
            "none (no seed on the boot partition)".to_owned(),
        )]))),
        Err(e) => Some(failed(e)),
    };
    match seed_outcome {
        Some(o) => record("seed", o, &mut summary)?,
        None => summary.done.push("seed".into()),
    }
    if reload {
        // A personalized generic image: the seed brought this node's own node.toml, so the
        // rest of the run is this node's, not the generic image's.
        eprintln!("seed: brought a new node.toml; continuing with it");
        let config = load_config(root)?;
        return run(root, &config);
    }

    let current = |name: &str| -> Result<Option<Status>, RunError> {
        let s = status::load(root)?;
        Ok((!s.is_done(name)).then_some(s))
    };

    if config.backup.is_some() {
        if current("backup")?.is_some() {
            let o = match backup::schedule(root, config) {
                Ok(d) => Outcome::Done(d),
                Err(e) => failed(e),
            };
            record("backup", o, &mut summary)?;
        } else {
            summary.done.push("backup".into());
        }
    }

    let mut joined: Option<Joined> = None;
    if let Some(zt) = &config.zerotier {
        match current("zerotier")? {
            None => {
                let s = status::load(root)?;
                joined = s
                    .detail("zerotier", "address")
                    .zip(s.detail("zerotier", "interface"))
                    .map(|(a, i)| Joined {
                        address: a.into(),
                        interface: i.into(),
                    });
                summary.done.push("zerotier".into());
            }
            Some(_) => {
                let o = match zerotier::join(root, zt, &config.commands, deadline) {
                    Ok(j) => {
                        let d = BTreeMap::from([
                            ("address".to_owned(), j.address.clone()),
                            ("interface".to_owned(), j.interface.clone()),
                        ]);
                        joined = Some(j);
                        Outcome::Done(d)
                    }
                    Err(e) if e.is_waiting() => Outcome::Pending(e.to_string()),
                    Err(e) => failed(e),
                };
                record("zerotier", o, &mut summary)?;
            }
        }
    }

    if config.k3s.is_some() {
        match current("k3s")? {
            None => summary.done.push("k3s".into()),
            Some(s) => {
                let inputs = k3s::inputs_fingerprint(root, config);
                let refused = s
                    .step("k3s")
                    .is_some_and(|st| st.refused_inputs.as_deref() == Some(inputs.as_str()));
                if refused {
                    eprintln!(
                        "k3s: refused earlier for this token and server; not retrying until the \
                         token file or [k3s] server_url changes"
                    );
                    summary.failed.push("k3s".into());
                } else {
                    let o = match k3s::setup(root, config, joined.as_ref(), deadline) {
                        Ok(d) => Outcome::Done(d),
                        Err(e) if e.is_waiting() => Outcome::Pending(e.to_string()),
                        Err(e) if e.is_refusal() => Outcome::Failed {
                            reason: e.to_string(),
                            refused_inputs: Some(inputs),
                        },
                        Err(e) => failed(e),
                    };
                    record("k3s", o, &mut summary)?;
                }
            }
        }
    }

    if config.ups.is_some() {
        if current("ups")?.is_some() {
            let o = match ups::setup(root, config, joined.as_ref()) {
                Ok(d) => Outcome::Done(d),
                Err(e) if e.is_waiting() => Outcome::Pending(e.to_string()),
                Err(e) => failed(e),
            };
            record("ups", o, &mut summary)?;
        } else {
            summary.done.push("ups".into());
        }
    }
    Ok(summary)
}
