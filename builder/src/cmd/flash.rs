//! `imagegen flash`: the safety checks and the conversation with the user around
//! [`crate::flash`].

use crate::cli::{FlashArgs, PersonalizeArgs};
use crate::flash::device::{self, Disk, Target as Kind, human_size};
use crate::flash::source::Source;
use crate::flash::{self, Target};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

pub fn flash(a: FlashArgs) -> Result<()> {
    let root = device::sysroot();
    if a.list {
        return list(&root, a.json);
    }
    let (Some(image), Some(dev)) = (a.image.as_deref(), a.device.as_deref()) else {
        bail!("give IMAGE and DEVICE, or --list");
    };
    let source = Source::open(image)?;
    if let (Some(config), Some(node)) = (&a.config, &a.node) {
        preflight(config, node)?;
    }
    let kind = device::identify(&root, dev)?;
    let node = match &kind {
        Kind::File(p) => p.clone(),
        Kind::Disk(d) => {
            refuse_unsafe(d, a.force)?;
            d.node.clone()
        }
    };
    let mut target = Target::open(&node)?;
    target.check_fits(source.size)?;
    if let Kind::Disk(d) = &kind
        && !a.yes
    {
        confirm(d, image)?;
    }
    // A file made by this run goes away when the run fails or is interrupted; a card cannot,
    // so the user is told what state it is in.
    let _guard = target
        .created()
        .then(|| crate::interrupt::Guard::new(&node));
    let incomplete = format!(
        "imagegen: interrupted: {} is incomplete and will not boot; flash it again",
        dev.display()
    );
    let _notice = crate::interrupt::Notice::new(&incomplete);
    let created = target.created();
    let result = flash::write_and_verify(&source, &mut target, !a.no_verify);
    drop(target);
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            if created {
                let _ = std::fs::remove_file(&node);
            }
            return Err(e).with_context(|| match kind {
                Kind::Disk(_) => format!("{} is incomplete and will not boot", dev.display()),
                Kind::File(_) if created => format!("{} was removed", dev.display()),
                Kind::File(_) => format!("{} holds an incomplete image", dev.display()),
            });
        }
    };
    if let (Some(config), Some(node_name)) = (a.config, a.node) {
        super::personalize::warn_if_seeded(&node, dev, a.vendor.as_deref());
        super::build::personalize(PersonalizeArgs {
            image: node.clone(),
            output: None,
            config,
            node: node_name,
            state_dir: a.state_dir,
            vendor: a.vendor,
            offline: a.offline,
        })
        .with_context(|| {
            format!(
                "{} holds the generic image but not the node's seed",
                dev.display()
            )
        })?;
        std::fs::File::open(&node)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", dev.display()))?;
    }
    eprintln!(
        "wrote {} to {}: {} of its {} written in {:.1} s{}",
        image.display(),
        dev.display(),
        human_size(report.written),
        human_size(report.image_size),
        report.write_seconds,
        match report.verified {
            Some(n) => format!(
                ", {} read back and verified in {:.1} s",
                human_size(n),
                report.verify_seconds
            ),
            None => ", not verified (--no-verify)".to_string(),
        }
    );
    if matches!(kind, Kind::Disk(_))
        && let Some(warning) = Target::reread_partitions(&node)
    {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// A config that cannot personalize fails before the card is touched: what `imagegen check`
/// finds (values, secret files), the node and its board. What needs the image itself (its
/// vendor, the agent on it) can only be checked once it is on the card.
fn preflight(config: &Path, node: &str) -> Result<()> {
    let r = super::check::report(config)?;
    if let Some(first) = r.errors.first() {
        let more = match r.errors.len() {
            1 => String::new(),
            n => format!(
                " (and {} more: see imagegen check --config {})",
                n - 1,
                config.display()
            ),
        };
        bail!("{first}{more}; nothing was written");
    }
    let loaded = r.loaded.expect("parsed when no error");
    let n = loaded.node(node)?;
    crate::board::get(n.board.get_ref())?;
    Ok(())
}

fn refuse_unsafe(d: &Disk, force: bool) -> Result<()> {
    let refusals = d.refusals();
    let blocking: Vec<_> = refusals.iter().filter(|r| !r.forceable || !force).collect();
    if !blocking.is_empty() {
        let reasons: Vec<&str> = blocking.iter().map(|r| r.reason.as_str()).collect();
        let hint = if blocking.iter().all(|r| r.forceable) {
            " (pass --force if you are sure)"
        } else {
            ""
        };
        bail!("refusing to write: {}{hint}", reasons.join("; "));
    }
    for r in refusals {
        eprintln!("warning: {} (--force given)", r.reason);
    }
    Ok(())
}

fn confirm(d: &Disk, image: &Path) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "{} would be overwritten, and stdin is not a terminal to ask: pass --yes to confirm",
            d.path
        );
    }
    eprint!(
        "{}\nWrite {} to it? Everything on {} will be lost. [y/N] ",
        d.describe(),
        image.display(),
        d.path
    );
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        bail!("nothing written");
    }
    Ok(())
}

fn list(root: &Path, json: bool) -> Result<()> {
    let disks: Vec<Disk> = device::list(root)?
        .into_iter()
        .filter(|d| d.refusals().is_empty())
        .collect();
    let mut out = super::stdout();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&disks)?)?;
    } else if disks.is_empty() {
        eprintln!("no removable, USB or SD card drive found that is not in use");
    } else {
        for d in &disks {
            writeln!(out, "{}", d.describe())?;
        }
    }
    Ok(())
}
