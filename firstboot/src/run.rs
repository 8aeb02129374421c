//! `run`: the first-boot steps, each idempotent, with one time budget for all network waits.
//! Steps that need the network and do not get it stay `pending`, the process ends so boot
//! completes, and the retry timer runs it again later.
//!
//! Order: protection first. The backup timer and the UPS watch (and, on the UPS server, NUT on
//! loopback with its primary upsmon) are set up before anything waits on the network, so a node
//! whose k3s server or VPN is not there yet is still shut down cleanly when the power goes. And a
//! waiting step never delays another that does not need its result: k3s that does not take its
//! address from ZeroTier runs beside the ZeroTier wait, and the UPS server's upsd starts listening
//! on the VPN address as soon as ZeroTier has one, not after k3s. The operator's staged
//! `.deb`s are installed after the protection (offline, nothing to wait for); `[packages] apt`
//! waits for the APT sources beside the other network waits; the operator's scripts come last.
//! A WireGuard tunnel whose wg-quick comes with the staged packages is brought up right after
//! them, before k3s, which talks over it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::attempts::Attempts;
use crate::config::{
    ConfigError, NODE_CONFIG_PATH, NodeConfig, NodeIpFrom, PathsSection, WireGuardSection,
    ZeroTierSection,
};
use crate::root::Root;
use crate::status::{self, State, Status, Update};
use crate::zerotier::Joined;
use crate::{backup, k3s, packages, scripts, seed, ups, wireguard, zerotier};

/// How long one `run` may take: below the unit's `TimeoutStartSec=300`
/// (units/imagegen-firstboot.service), so systemd never kills a script midway; a script whose
/// time limit no longer fits waits for the next run.
pub const RUN_LIMIT_SECS: u64 = 290;

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
    /// Still waiting, after `attempts` failed network attempts in this run.
    Pending {
        reason: String,
        attempts: u32,
    },
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

/// The seed step of imagegen-seed.service, early in boot: nothing that reads the seeded files
/// has started yet (the unit is ordered before them), so only what was set before it ran is
/// brought up to date: the hostname, which systemd set from /etc/hostname when it started, and
/// netplan's output, which its systemd generator wrote before any unit ran. No service is
/// restarted from here: a `systemctl` call from a unit that others wait for could wait on them.
pub fn early_seed(root: &Root, config: &NodeConfig) -> Result<State, RunError> {
    let rec = Recorder {
        root,
        boot: &config.paths.boot,
        node: &config.node.name,
    };
    let mut summary = Summary::default();
    let mut placed = Vec::new();
    seed_step(&rec, &mut summary, &mut placed)?;
    set_live_hostname(root, &placed);
    if placed.iter().any(|p| p.starts_with("/etc/netplan/")) {
        regenerate_netplan(root, &config.commands);
    }
    Ok(if summary.failed.is_empty() {
        State::Done
    } else {
        State::Failed
    })
}

/// netplan renders /etc/netplan into networkd and NetworkManager files under /run from a
/// systemd generator, before any unit runs (netplan docs, "Netplan Generator"); a netplan file
/// the seed placed after that is rendered by `netplan generate`, the same program
/// (netplan-generate(8)), before networkd or NetworkManager start. Best effort: the next boot's
/// generator reads the file anyway.
fn regenerate_netplan(root: &Root, commands: &crate::config::CommandsSection) {
    match crate::command::run(root, &commands.netplan, &["generate"]) {
        Ok(_) => eprintln!("seed: netplan generate: rendered the seeded network settings"),
        Err(crate::command::CommandError::NotFound { .. }) => {}
        Err(e) => eprintln!("seed: {e}"),
    }
}

/// The seeded hostname, now. Best effort: the next boot uses the file anyway.
fn set_live_hostname(root: &Root, placed: &[String]) {
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
}

/// Makes seeded identity files take effect on a running system, for a seed `run` takes in
/// after boot (imagegen-seed.service normally places it before any of this starts): the
/// hostname now, sshd restarted so it serves the node's own host keys, the node's firewall
/// loaded. Best effort: the files are in place, and the next boot uses them anyway.
fn apply_seeded_identity(root: &Root, config: &NodeConfig, placed: &[String]) {
    set_live_hostname(root, placed);
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

impl Summary {
    /// Sets a step's final state; a step run twice (the UPS server's) is listed once.
    fn set(&mut self, name: &str, state: State) {
        for list in [&mut self.done, &mut self.pending, &mut self.failed] {
            list.retain(|n| n != name);
        }
        match state {
            State::Done => &mut self.done,
            State::Pending => &mut self.pending,
            State::Failed => &mut self.failed,
        }
        .push(name.into());
    }
}

/// Writes step outcomes to the status; shared by the steps that run side by side (the status
/// file is locked per update).
struct Recorder<'a> {
    root: &'a Root,
    boot: &'a Path,
    node: &'a str,
}

impl Recorder<'_> {
    fn record(&self, name: &str, outcome: Outcome) -> Result<State, RunError> {
        let update = match outcome {
            Outcome::Done(d) => Update::done(d),
            Outcome::Pending { reason, attempts } => {
                eprintln!("{name}: pending: {reason}");
                Update {
                    attempts: (attempts > 0).then_some(attempts),
                    ..Update::pending(reason)
                }
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
        let state = update.state;
        status::set(self.root, self.boot, self.node, name, update)?;
        Ok(state)
    }

    /// A waiting step's attempt, as it happens (see `attempts`). At most one status write per
    /// attempt, and the backoff spaces attempts up to 5 s apart. A status that cannot be
    /// written is logged and the wait goes on: the step's final outcome is recorded (or its
    /// error returned) when the wait ends.
    fn attempt(&self, name: &str, reason: String, attempts: u32) {
        let update = Update {
            attempts: Some(attempts),
            ..Update::pending(reason)
        };
        if let Err(e) = status::set(self.root, self.boot, self.node, name, update) {
            eprintln!("{name}: cannot record attempt {attempts} in the status: {e}");
        }
    }

    /// Lists as pending every step `config` implies that the status does not list yet, so a
    /// step waiting on the network is visible from the start, not only once its wait ends (up to
    /// the whole time budget later). What an earlier run recorded stands.
    fn register_steps(&self, config: &NodeConfig) -> Result<(), RunError> {
        let known = status::load(self.root)?;
        let k3s_reason = match &config.k3s {
            Some(k) if k.node_ip_from == NodeIpFrom::Zerotier => {
                "waits for the ZeroTier address (node_ip_from = \"zerotier\")"
            }
            _ if k3s_needs_tunnel_from_debs(config) => TUNNEL_WAIT,
            _ => "starting",
        };
        let implied = [
            (config.backup.is_some(), "backup", "starting"),
            (config.ups.is_some(), "ups", "starting"),
            (config.zerotier.is_some(), "zerotier", "starting"),
            (
                tunnel_from_debs(config).is_some(),
                "wireguard",
                "waits for the staged packages (wireguard-tools, debs step)",
            ),
            (config.k3s.is_some(), "k3s", k3s_reason),
        ];
        let scripts = config
            .firstboot
            .scripts
            .iter()
            .map(|s| (scripts::step_name(s), "runs after the agent's own steps"));
        let pk = &config.packages;
        let packages = [
            (!pk.debs.is_empty(), "debs", "starting"),
            (
                !pk.apt.is_empty(),
                "apt",
                "waits for the network (the image's APT sources)",
            ),
        ];
        let implied = implied
            .into_iter()
            .chain(packages)
            .filter(|i| i.0)
            .map(|(_, name, reason)| (name.to_owned(), reason))
            .chain(scripts);
        for (name, reason) in implied {
            if known.step(&name).is_none() {
                status::set(
                    self.root,
                    self.boot,
                    self.node,
                    &name,
                    Update::pending(reason),
                )?;
            }
        }
        Ok(())
    }

    /// The status when `name` still has to run, `None` when it is done.
    fn current(&self, name: &str) -> Result<Option<Status>, RunError> {
        let s = status::load(self.root)?;
        Ok((!s.is_done(name)).then_some(s))
    }
}

/// Runs every step `config` implies, in the order the module comment gives.
pub fn run(root: &Root, config: &NodeConfig) -> Result<Summary, RunError> {
    let run_end = Instant::now() + Duration::from_secs(RUN_LIMIT_SECS);
    let deadline = deadline(config)?;
    let rec = Recorder {
        root,
        boot: &config.paths.boot,
        node: &config.node.name,
    };
    let mut summary = Summary::default();

    let mut placed = Vec::new();
    let seeded = seed_step(&rec, &mut summary, &mut placed)?;
    apply_seeded_identity(root, config, &placed);
    if seeded == Seeded::NewConfig {
        // A personalized generic image: the seed brought this node's own node.toml, so the
        // rest of the run is this node's, not the generic image's.
        eprintln!("seed: brought a new node.toml; continuing with it");
        let config = load_config(root)?;
        return run(root, &config);
    }

    rec.register_steps(config)?;

    // Protection first: nothing here waits on the network.
    if config.backup.is_some() {
        summary.set("backup", backup_step(&rec, config)?);
    }
    let mut joined = None;
    if let Some(earlier) = zerotier_done_earlier(&rec, config)? {
        summary.set("zerotier", State::Done);
        joined = earlier;
    }
    if config.ups.is_some() {
        summary.set("ups", ups_step(&rec, config, joined.as_ref())?);
    }

    if !config.packages.debs.is_empty() {
        summary.set("debs", debs_step(&rec, config)?);
    }
    if let Some(wg) = tunnel_from_debs(config) {
        summary.set("wireguard", tunnel_step(&rec, config, wg)?);
    }

    network_steps(&rec, config, joined, deadline, run_end, &mut summary)?;
    script_steps(&rec, config, run_end, &mut summary)?;
    Ok(summary)
}

/// The operator's scripts, in order (see `scripts`): done ones are skipped, the first that
/// fails stops the rest for this run, and one whose time limit no longer fits in this run waits
/// for the next.
fn script_steps(
    rec: &Recorder,
    config: &NodeConfig,
    run_end: Instant,
    summary: &mut Summary,
) -> Result<(), RunError> {
    let limit = Duration::from_secs(config.firstboot.timeout_secs);
    let mut blocked: Option<String> = None;
    for path in &config.firstboot.scripts {
        let name = scripts::step_name(path);
        if rec.current(&name)?.is_none() {
            summary.set(&name, State::Done);
            continue;
        }
        let left = run_end.saturating_duration_since(Instant::now());
        let o = if let Some(before) = &blocked {
            Outcome::Pending {
                reason: format!("waits for {before}"),
                attempts: 0,
            }
        } else if left < limit {
            blocked = Some(name.clone());
            Outcome::Pending {
                reason: format!(
                    "this run had {} s left, less than the script's {} s limit: the next run \
                     starts it",
                    left.as_secs(),
                    limit.as_secs()
                ),
                attempts: 0,
            }
        } else {
            eprintln!("{name}: running");
            match scripts::run(rec.root, path, limit) {
                Ok(d) => Outcome::Done(d),
                Err(e) => {
                    blocked = Some(name.clone());
                    failed(e)
                }
            }
        };
        summary.set(&name, rec.record(&name, o)?);
    }
    Ok(())
}

/// The end of the one time budget all network waits share.
fn deadline(config: &NodeConfig) -> Result<Instant, RunError> {
    let budget = Duration::from_secs(config.agent.time_budget_secs);
    Ok(Instant::now().checked_add(budget).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "[agent] time_budget_secs {} is too large",
            config.agent.time_budget_secs
        ))
    })?)
}

#[derive(PartialEq, Eq)]
enum Seeded {
    NewConfig,
    SameConfig,
}

/// The seed step. It runs every time: a user may personalize the card again later.
fn seed_step(
    rec: &Recorder,
    summary: &mut Summary,
    placed: &mut Vec<String>,
) -> Result<Seeded, RunError> {
    let before = status::load(rec.root)?;
    let mut seeded = Seeded::SameConfig;
    let outcome = match seed::consume(rec.root, rec.boot) {
        Ok(seed::Consumed::Placed(paths)) => {
            eprintln!("seed: placed {} file(s) and wiped the seed", paths.len());
            if paths.iter().any(|p| p == NODE_CONFIG_PATH) {
                seeded = Seeded::NewConfig;
            }
            let done = Outcome::Done(BTreeMap::from([("placed".to_owned(), paths.join(" "))]));
            placed.extend(paths);
            Some(done)
        }
        // No seed now: whatever the last one came to stands (a rejected seed stays failed until
        // a new one arrives).
        Ok(seed::Consumed::NoSeed) if before.step("seed").is_some() => None,
        Ok(seed::Consumed::NoSeed) => Some(Outcome::Done(BTreeMap::from([(
            "placed".to_owned(),
            "none (no seed on the boot partition)".to_owned(),
        )]))),
        Err(e) => Some(failed(e)),
    };
    let state = match outcome {
        Some(o) => rec.record("seed", o)?,
        None => before.step("seed").map_or(State::Done, |s| s.state),
    };
    summary.set("seed", state);
    Ok(seeded)
}

fn backup_step(rec: &Recorder, config: &NodeConfig) -> Result<State, RunError> {
    if rec.current("backup")?.is_none() {
        return Ok(State::Done);
    }
    let o = match backup::schedule(rec.root, config) {
        Ok(d) => Outcome::Done(d),
        Err(e) => failed(e),
    };
    rec.record("backup", o)
}

/// `Some` when an earlier run's ZeroTier step is done, with the address it got if the status
/// still has it (if not, the step runs again).
fn zerotier_done_earlier(
    rec: &Recorder,
    config: &NodeConfig,
) -> Result<Option<Option<Joined>>, RunError> {
    if config.zerotier.is_none() || rec.current("zerotier")?.is_some() {
        return Ok(None);
    }
    let s = status::load(rec.root)?;
    Ok(Some(
        s.detail("zerotier", "address")
            .zip(s.detail("zerotier", "interface"))
            .map(|(a, i)| Joined {
                address: a.into(),
                interface: i.into(),
            }),
    ))
}

/// The steps that wait on the network: k3s that does not take its address from ZeroTier runs
/// beside the ZeroTier wait; the UPS server's upsd gets the VPN address as soon as there is one.
fn network_steps(
    rec: &Recorder,
    config: &NodeConfig,
    mut joined: Option<Joined>,
    deadline: Instant,
    run_end: Instant,
    summary: &mut Summary,
) -> Result<(), RunError> {
    let k3s_needs_zerotier = config
        .k3s
        .as_ref()
        .is_some_and(|k| k.node_ip_from == NodeIpFrom::Zerotier);
    thread::scope(|scope| -> Result<(), RunError> {
        let beside = (config.k3s.is_some() && !k3s_needs_zerotier)
            .then(|| scope.spawn(|| k3s_step(rec, config, None, deadline)));
        // Needs only the APT sources: waits beside the others, never before them.
        let apt = (!config.packages.apt.is_empty())
            .then(|| scope.spawn(|| apt_step(rec, config, deadline, run_end)));

        if let Some(zt) = &config.zerotier
            && joined.is_none()
        {
            let state;
            (state, joined) = zerotier_step(rec, config, zt, deadline)?;
            summary.set("zerotier", state);
            // The UPS server's upsd can now listen on the VPN address too.
            if config.ups.is_some() && joined.is_some() && rec.current("ups")?.is_some() {
                summary.set("ups", ups_step(rec, config, joined.as_ref())?);
            }
        }

        let k3s = match beside {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| rec.record("k3s", failed("the k3s step panicked")).map(Some))?,
            None if config.k3s.is_some() => k3s_step(rec, config, joined.as_ref(), deadline)?,
            None => None,
        };
        if let Some(state) = k3s {
            summary.set("k3s", state);
        }
        if let Some(h) = apt {
            let state = h
                .join()
                .unwrap_or_else(|_| rec.record("apt", failed("the apt step panicked")))?;
            summary.set("apt", state);
        }
        Ok(())
    })
}

/// Joins the ZeroTier network; the address, when there is one, is the step's result.
fn zerotier_step(
    rec: &Recorder,
    config: &NodeConfig,
    zt: &ZeroTierSection,
    deadline: Instant,
) -> Result<(State, Option<Joined>), RunError> {
    let report = |n: u32, why: &str| {
        let reason = zerotier::ZeroTierError::Waiting(why.to_owned()).to_string();
        rec.attempt("zerotier", reason, n);
    };
    let mut attempts = Attempts::new("zerotier", &report);
    let (o, joined) = match zerotier::join(rec.root, zt, &config.commands, deadline, &mut attempts)
    {
        Ok(j) => {
            let d = BTreeMap::from([
                ("address".to_owned(), j.address.clone()),
                ("interface".to_owned(), j.interface.clone()),
            ]);
            (Outcome::Done(d), Some(j))
        }
        Err(e) if e.is_waiting() => (
            Outcome::Pending {
                reason: e.to_string(),
                attempts: attempts.count(),
            },
            None,
        ),
        Err(e) => (failed(e), None),
    };
    Ok((rec.record("zerotier", o)?, joined))
}

/// The staged `.deb`s, installed offline: nothing to wait for.
fn debs_step(rec: &Recorder, config: &NodeConfig) -> Result<State, RunError> {
    if rec.current("debs")?.is_none() {
        return Ok(State::Done);
    }
    let debs = &config.packages.debs;
    eprintln!("debs: installing {} staged package(s)", debs.len());
    let o = match packages::install_debs(rec.root, &config.commands.dpkg, debs) {
        Ok(()) => Outcome::Done(BTreeMap::from([(
            "installed".to_owned(),
            debs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        )])),
        Err(e) => failed(e),
    };
    rec.record("debs", o)
}

/// The `[wireguard]` tunnel whose wg-quick the staged packages bring (`after_debs`).
fn tunnel_from_debs(config: &NodeConfig) -> Option<&WireGuardSection> {
    config.wireguard.as_ref().filter(|w| w.after_debs)
}

/// k3s takes its address and flannel interface from a tunnel that waits for the debs step.
fn k3s_needs_tunnel_from_debs(config: &NodeConfig) -> bool {
    tunnel_from_debs(config).is_some()
        && config
            .k3s
            .as_ref()
            .is_some_and(|k| k.node_ip_from == NodeIpFrom::Wireguard)
}

const TUNNEL_WAIT: &str = "waits for the WireGuard tunnel, which comes with the staged packages";

/// Brings the tunnel up once the debs step installed wireguard-tools (see `wireguard`); fails
/// with the debs step's reason while it has not.
fn tunnel_step(
    rec: &Recorder,
    config: &NodeConfig,
    wg: &WireGuardSection,
) -> Result<State, RunError> {
    let Some(s) = rec.current("wireguard")? else {
        return Ok(State::Done);
    };
    let o = if !s.is_done("debs") {
        let why = s
            .step("debs")
            .and_then(|d| d.reason.clone())
            .unwrap_or_else(|| "it has not run".into());
        failed(format!(
            "{} needs wg-quick from the staged packages, which did not install (debs: {why})",
            wireguard::unit(wg)
        ))
    } else {
        match wireguard::bring_up(rec.root, wg, &config.commands) {
            Ok(d) => Outcome::Done(d),
            Err(e) => failed(e),
        }
    };
    rec.record("wireguard", o)
}

/// `[packages] apt`, once the APT sources answer.
fn apt_step(
    rec: &Recorder,
    config: &NodeConfig,
    deadline: Instant,
    run_end: Instant,
) -> Result<State, RunError> {
    if rec.current("apt")?.is_none() {
        return Ok(State::Done);
    }
    let report = |n: u32, why: &str| {
        rec.attempt(
            "apt",
            packages::PackagesError::Waiting(why.to_owned()).to_string(),
            n,
        );
    };
    let mut attempts = Attempts::new("apt", &report);
    let names = &config.packages.apt;
    let o = match packages::install_apt(
        rec.root,
        &config.commands,
        names,
        deadline,
        run_end,
        &mut attempts,
    ) {
        Ok(d) => Outcome::Done(d),
        Err(e) if e.is_waiting() => Outcome::Pending {
            reason: e.to_string(),
            attempts: attempts.count(),
        },
        Err(e) => failed(e),
    };
    rec.record("apt", o)
}

fn ups_step(
    rec: &Recorder,
    config: &NodeConfig,
    joined: Option<&Joined>,
) -> Result<State, RunError> {
    if rec.current("ups")?.is_none() {
        return Ok(State::Done);
    }
    let o = match ups::setup(rec.root, config, joined) {
        Ok(d) => Outcome::Done(d),
        Err(e) if e.is_waiting() => Outcome::Pending {
            reason: e.to_string(),
            attempts: 0,
        },
        Err(e) => failed(e),
    };
    rec.record("ups", o)
}

/// The k3s step; `None` when the config has no `[k3s]`.
fn k3s_step(
    rec: &Recorder,
    config: &NodeConfig,
    joined: Option<&Joined>,
    deadline: Instant,
) -> Result<Option<State>, RunError> {
    if config.k3s.is_none() {
        return Ok(None);
    }
    let Some(s) = rec.current("k3s")? else {
        return Ok(Some(State::Done));
    };
    // k3s started without wg0 fails on its flannel interface and node-ip: it waits for the
    // tunnel step, which the next run retries with the debs.
    if k3s_needs_tunnel_from_debs(config) && !s.is_done("wireguard") {
        let o = Outcome::Pending {
            reason: format!("{TUNNEL_WAIT} (see the wireguard step)"),
            attempts: 0,
        };
        return rec.record("k3s", o).map(Some);
    }
    let inputs = k3s::inputs_fingerprint(rec.root, config);
    let refused = s
        .step("k3s")
        .is_some_and(|st| st.refused_inputs.as_deref() == Some(inputs.as_str()));
    if refused {
        eprintln!(
            "k3s: refused earlier for this token and server; not retrying until the \
             token file or [k3s] server_url changes"
        );
        return Ok(Some(State::Failed));
    }
    let report = |n: u32, why: &str| {
        rec.attempt("k3s", k3s::K3sError::Waiting(why.to_owned()).to_string(), n);
    };
    let mut attempts = Attempts::new("k3s", &report);
    let o = match k3s::setup(rec.root, config, joined, deadline, &mut attempts) {
        Ok(d) => Outcome::Done(d),
        Err(e) if e.is_waiting() => Outcome::Pending {
            reason: e.to_string(),
            attempts: attempts.count(),
        },
        Err(e) if e.is_refusal() => Outcome::Failed {
            reason: e.to_string(),
            refused_inputs: Some(inputs),
        },
        Err(e) => failed(e),
    };
    rec.record("k3s", o).map(Some)
}
