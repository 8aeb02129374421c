//! build, boards, init, check.

use crate::agent::{self, Agent, AgentSet};
use crate::arch::Arch;
use crate::board;
use crate::build;
use crate::cli::{BoardsArgs, BuildArgs, InitArgs, PersonalizeArgs};
use crate::config::{self, ClusterConfig};
use crate::distro::Vendor;
use crate::fetch::{FetchOptions, Source};
use crate::plan;
use crate::pubkey;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn build(a: BuildArgs) -> Result<()> {
    let (config, config_dir, nodes): (ClusterConfig, PathBuf, Vec<String>) =
        match (&a.board, &a.config) {
            (Some(b), _) => {
                let board = board::get(b)?;
                let (user, keys) = operator_defaults()?;
                let c = plan::default_config(&board, &user, keys)?;
                (c, PathBuf::from("."), vec![board.id.clone()])
            }
            (None, Some(path)) => {
                let loaded = config::load(path)?;
                // Once per run, before any node is built.
                if let Some(note) = loaded.config.not_applied() {
                    eprintln!("warning: {}: {note}", path.display());
                }
                let nodes = match (&a.node, a.all) {
                    (Some(n), _) => {
                        loaded.node(n)?;
                        vec![n.clone()]
                    }
                    (None, true) => loaded
                        .config
                        .nodes
                        .iter()
                        .map(|n| n.name.get_ref().clone())
                        .collect(),
                    (None, false) => bail!("say which node to build: --node NAME or --all"),
                };
                (loaded.config, loaded.dir, nodes)
            }
            (None, None) => bail!("give --board BOARD, or --config FILE with --node NAME or --all"),
        };
    if nodes.is_empty() {
        bail!("the config has no [[nodes]]");
    }
    let mut fetch = FetchOptions::default();
    if let Some(d) = &a.cache_dir {
        fetch.cache_dir = d.clone();
    }
    fetch.insecure = a.insecure;
    if a.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    fetch.timeout = std::time::Duration::from_secs(a.timeout);
    fetch.retries = a.retries;
    let agents = agents(&a.agent, &fetch)?;
    check_agents(&agents, &config, &nodes)?;
    let vendor = a.vendor.as_deref().map(Vendor::from_id).transpose()?;
    let base = a.base.as_deref().map(Source::parse);
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::identity::default_dir(&config_dir));

    for node in &nodes {
        let out = output_path(&a, node)?;
        let req = build::Request {
            config: &config,
            config_dir: &config_dir,
            node,
            out: &out,
            base: base.clone(),
            sha256: a.sha256.clone(),
            vendor,
            agents: agents.agents(),
            generic: a.no_secrets,
            state_dir: &state_dir,
            fetch: &fetch,
        };
        let m = build::build(&req).with_context(|| format!("building node {node}"))?;
        eprintln!(
            "wrote {} ({} bytes raw, sha256 {})",
            out.display(),
            m.output.raw_size,
            m.output.sha256
        );
        if !a.no_secrets {
            eprintln!(
                "{}",
                crate::cluster::known_hosts::write_beside(&out, &config, node, &state_dir)?
            );
        }
    }
    // After the builds, so a failed build still says one thing only, and once for --all.
    if let Some(w) = plan::backup_pin_warning(&config) {
        eprintln!("{w}");
    }
    Ok(())
}

fn output_path(a: &BuildArgs, node: &str) -> Result<PathBuf> {
    let default = format!("{node}.img.zst");
    Ok(match (&a.output, a.all) {
        (Some(o), true) => {
            std::fs::create_dir_all(o).with_context(|| format!("creating {}", o.display()))?;
            o.join(default)
        }
        (Some(o), false) => o.clone(),
        (None, _) => PathBuf::from(default),
    })
}

/// The agents found beside this imagegen (see `crate::agent` for the search order), with each
/// `--agent` replacing the one of its architecture.
fn agents(args: &[String], fetch: &FetchOptions) -> Result<AgentSet> {
    let mut set = AgentSet::discover(&agent::default_search_dirs())?;
    for arg in args {
        let path = match Source::parse(arg) {
            Source::File(p) => p,
            Source::Url(u) => {
                // A downloaded binary runs as root on every node: it must be pinned.
                let (url, sha) = u
                    .split_once("#sha256=")
                    .with_context(|| format!("--agent {u}: give its sha256 as URL#sha256=HEX"))?;
                crate::fetch::fetch_base(&Source::Url(url.into()), Some(sha), None, fetch)
                    .with_context(|| format!("getting the agent {url}"))?
                    .raw_path
            }
        };
        set.give(Agent {
            arch: agent::agent_arch(&path)?,
            path,
            source: arg.clone(),
        })?;
    }
    Ok(set)
}

/// Every node's board must have an agent: checked for all of them before the first download,
/// so `--all` does not stop after building half the cluster.
fn check_agents(agents: &AgentSet, config: &ClusterConfig, nodes: &[String]) -> Result<()> {
    for node in nodes {
        // An unknown node or board is left to build::build, which names it in its own words.
        let Some(board) = config
            .nodes
            .iter()
            .find(|n| n.name.get_ref() == node)
            .and_then(|n| board::get(n.board.get_ref()).ok())
        else {
            continue;
        };
        agents
            .for_board(&board)
            .with_context(|| format!("building node {node}"))?;
    }
    Ok(())
}

/// The admin for `--board` builds: the operator's user name and ~/.ssh/*.pub keys.
fn operator_defaults() -> Result<(String, Vec<String>)> {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| {
            !matches!(u.as_str(), "root" | "pi" | "ubuntu" | "debian")
                && u.bytes().next().is_some_and(|c| c.is_ascii_lowercase())
                && u.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
        })
        .unwrap_or_else(|| "admin".into());
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut keys = Vec::new();
    if let Some(ssh) = home.as_deref().map(|h| h.join(".ssh"))
        && let Ok(rd) = std::fs::read_dir(&ssh)
    {
        let mut pubs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pub"))
            .collect();
        pubs.sort();
        for p in pubs {
            // Whatever else sits in ~/.ssh is the operator's business: a file that holds no
            // usable key is skipped, and said so, rather than stopping the build.
            let read = std::fs::read_to_string(&p).map_err(|e| e.to_string());
            match read.and_then(|t| pubkey::authorized_keys_lines(&t).map_err(|e| e.to_string())) {
                Ok(found) => keys.extend(found),
                Err(e) => eprintln!("warning: skipping {}: {e}", p.display()),
            }
        }
    }
    if keys.is_empty() {
        bail!(
            "no SSH public key in ~/.ssh/*.pub: nobody could log in to the node. Make one with \
             `ssh-keygen -t ed25519`, or write a cluster.toml (`imagegen init`) with \
             [admin] ssh_authorized_keys and use --config"
        );
    }
    Ok((user, keys))
}

pub fn boards(a: BoardsArgs) -> Result<()> {
    let boards = board::all()?;
    let mut out = super::stdout();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &boards)?;
        writeln!(out)?;
        return Ok(());
    }
    for b in &boards {
        writeln!(
            out,
            "{:<14} {:<8} {}",
            b.id,
            b.arch.to_string(),
            b.description
        )?;
        writeln!(
            out,
            "{:<14} default base: {} {}",
            "", b.base.vendor, b.base.url
        )?;
        writeln!(out, "{:<14} also accepts: {}", "", b.accepts.join(", "))?;
    }
    // Where each board architecture's agent would come from, so a missing one shows before a
    // build does.
    writeln!(out)?;
    for line in wrap(crate::agent::SEARCH_ORDER, 92) {
        writeln!(out, "{line}")?;
    }
    match AgentSet::discover(&agent::default_search_dirs()) {
        Ok(set) => {
            let dirs: Vec<String> = set
                .searched()
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            writeln!(out, "  searched {}", dirs.join(", "))?;
            for arch in Arch::ALL {
                let used = boards.iter().any(|b| b.arch == arch);
                match set.get(arch) {
                    Some(a) => writeln!(out, "  agent {:<8} {}", arch.to_string(), a.source)?,
                    None if used => writeln!(
                        out,
                        "  agent {:<8} none found: run `bash ci/build-agents`, or give --agent",
                        arch.to_string()
                    )?,
                    None => {}
                }
            }
        }
        Err(e) => writeln!(out, "  agents: {e}")?,
    }
    Ok(())
}

/// `text` in lines of at most `width` columns, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

pub fn init(a: InitArgs) -> Result<()> {
    write_new(&a.path, config::EXAMPLE.as_bytes(), a.force)?;
    eprintln!(
        "wrote {}: edit it, then `imagegen check --config {}`",
        a.path.display(),
        a.path.display()
    );
    Ok(())
}

fn write_new(path: &Path, content: &[u8], force: bool) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).with_context(|| {
        if path.exists() {
            format!("{} exists (use --force to replace it)", path.display())
        } else {
            format!("creating {}", path.display())
        }
    })?;
    f.write_all(content)?;
    Ok(())
}

pub fn personalize(a: PersonalizeArgs) -> Result<()> {
    let loaded = config::load(&a.config)?;
    let node = loaded.node(&a.node)?;
    let board = board::get(node.board.get_ref())?;
    let state_dir = a
        .state_dir
        .clone()
        .unwrap_or_else(|| crate::identity::default_dir(&loaded.dir));
    let identity = crate::identity::load_or_create(&state_dir, &a.node)
        .context("loading the node's identity")?;
    let vendor = a.vendor.as_deref().map(Vendor::from_id).transpose()?;
    let path = crate::personalize::personalize(&crate::personalize::Request {
        image: &a.image,
        config: &loaded,
        node: &a.node,
        board: &board,
        identity: &identity,
        vendor,
    })?;
    eprintln!(
        "wrote the seed for node {} to {}:{path}; it is moved into place and wiped on first boot",
        a.node,
        a.output.as_ref().unwrap_or(&a.image).display()
    );
    if let Some(w) = plan::backup_pin_warning(&loaded.config) {
        eprintln!("{w}");
    }
    Ok(())
}
