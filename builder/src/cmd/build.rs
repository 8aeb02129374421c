//! build, boards, init, check.

use crate::agent::{self, AgentSet};
use crate::arch::Arch;
use crate::board;
use crate::cli::{BoardsArgs, BuildArgs, InitArgs, PersonalizeArgs};
use crate::config;
use crate::distro::Vendor;
use crate::fetch::{FetchOptions, Source};
use crate::{build, personalize};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;

pub fn build(a: BuildArgs) -> Result<()> {
    let config = match (a.board, a.config) {
        (Some(b), None) => build::Config::Board(b),
        (Some(b), Some(path)) => build::Config::File {
            path,
            nodes: build::Nodes::Generic(b),
        },
        (None, Some(path)) => build::Config::File {
            path,
            nodes: match (a.node, a.all) {
                (Some(n), _) => build::Nodes::One(n),
                (None, true) => build::Nodes::All,
                (None, false) => bail!("say which node to build: --node NAME or --all"),
            },
        },
        (None, None) => bail!("give --board BOARD, or --config FILE with --node NAME or --all"),
    };
    if a.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    let mut fetch = FetchOptions::default();
    if let Some(d) = a.cache_dir {
        fetch.cache_dir = d;
    }
    fetch.insecure = a.insecure;
    fetch.offline = a.offline;
    fetch.timeout = std::time::Duration::from_secs(a.timeout);
    fetch.retries = a.retries;
    let req = build::Request {
        config,
        output: a.output,
        disk_size: a.disk_size,
        base: a.base.as_deref().map(Source::parse),
        sha256: a.sha256,
        vendor: a.vendor.as_deref().map(Vendor::from_id).transpose()?,
        agents: a.agent,
        generic: a.no_secrets,
        state_dir: a.state_dir,
        fetch,
    };
    for w in build::run(&req)?.warnings {
        eprintln!("{w}");
    }
    Ok(())
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
        writeln!(out, "{:<14} default output: {}", "", b.output_name("NODE"))?;
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
    let shown = a.output.clone().unwrap_or_else(|| a.image.clone());
    let req = personalize::Request {
        image: a.image,
        config: a.config,
        node: a.node,
        state_dir: a.state_dir,
        vendor: a.vendor.as_deref().map(Vendor::from_id).transpose()?,
        offline: a.offline,
    };
    let done = personalize::run(&req)?;
    eprintln!(
        "wrote the seed for node {} to {}:{}; it is moved into place and wiped on first boot",
        req.node,
        shown.display(),
        done.seed
    );
    for w in done.warnings {
        eprintln!("{w}");
    }
    Ok(())
}
