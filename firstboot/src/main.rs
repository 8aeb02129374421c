#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imagegen_firstboot::root::Root;
use imagegen_firstboot::status::{self, Update};
use imagegen_firstboot::{backup, nut, run};

/// First-boot agent of imagegen nodes.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Tree to work in; every file read or written is under it.
    #[arg(long, global = true, default_value = "/")]
    root: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the first-boot steps (safe to run again).
    Run,
    /// Place the seed `imagegen personalize` wrote, early in boot, before the network and
    /// sshd start (imagegen-seed.service); `run` takes in one that arrives later.
    Seed,
    /// Watch the UPS and power off when it is critical.
    UpsWatch,
    /// Send one backup to the target.
    Backup,
    /// Show the step status.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.root.is_dir() {
        eprintln!("error: --root {} is not a directory", cli.root.display());
        return ExitCode::FAILURE;
    }
    let root = Root::new(cli.root);
    match execute(&root, cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(root: &Root, cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Status { json } => {
            let s = status::load(root)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if s.steps.is_empty() {
                println!("no status yet");
            } else {
                print!("{}", s.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run => {
            let config = run::load_config(root)?;
            let summary = run::run(root, &config)?;
            eprintln!(
                "run: done [{}] pending [{}] failed [{}]",
                summary.done.join(" "),
                summary.pending.join(" "),
                summary.failed.join(" ")
            );
            Ok(if summary.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Seed => {
            let config = run::load_config(root)?;
            let state = run::early_seed(root, &config)?;
            Ok(if state == status::State::Failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::UpsWatch => {
            let config = run::load_config(root)?;
            let ups = config
                .ups
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("node.toml has no [ups] table"))?;
            nut::watch(root, &config.paths.boot, &config.node.name, ups)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backup => {
            let config = run::load_config(root)?;
            let boot = &config.paths.boot;
            let node = &config.node.name;
            // Replaced by the outcome when the run ends; left as it is when systemd kills the
            // run at the unit's TimeoutStartSec=, so the status shows it never finished.
            status::set(
                root,
                boot,
                node,
                "backup-run",
                Update::pending(
                    "running (a run that stays so was killed: the unit's TimeoutStartSec=4h)",
                ),
            )?;
            match backup::run(root, &config) {
                Ok(r) => {
                    let d = BTreeMap::from([
                        ("last".to_owned(), r.dest),
                        ("host_key".to_owned(), r.host_key),
                    ]);
                    status::set(root, boot, node, "backup-run", Update::done(d))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    status::set(
                        root,
                        boot,
                        node,
                        "backup-run",
                        Update::failed(e.to_string()),
                    )?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}
