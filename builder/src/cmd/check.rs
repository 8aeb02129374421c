//! check.

use crate::check;
use crate::cli::CheckArgs;
use crate::plan;
use anyhow::{Result, bail};
use std::path::Path;

pub fn check(a: CheckArgs) -> Result<()> {
    let r = report(&a.config)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let n = r.errors.len();
    if n == 1 {
        bail!("{}", r.errors[0]);
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    if n > 0 {
        bail!(
            "{}: {n} problem{} (above)",
            a.config.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    let c = &r.loaded.as_ref().expect("parsed when no error").config;
    eprintln!(
        "{}: cluster {:?}, {} node(s): ok",
        a.config.display(),
        c.cluster.name.get_ref(),
        c.nodes.len()
    );
    Ok(())
}

/// Everything `imagegen check` finds wrong with the config at `path`, also what the files it
/// names hold. `flash --config` runs it before writing, so that a card is not left holding a
/// generic image because a secret file was missing.
pub(super) fn report(path: &Path) -> Result<check::Report> {
    let mut r = check::run(path)?;
    if let Some(l) = &r.loaded
        && r.errors.is_empty()
    {
        // A known_hosts_file must parse and list the NAS, or every backup would be refused.
        if let Err(e) = plan::backup_known_hosts(&l.config, &l.dir) {
            r.errors.push(e.to_string());
        }
        if let Some(w) = plan::backup_pin_warning(&l.config) {
            r.warnings
                .push(w.trim_start_matches("warning: ").to_string());
        }
    }
    Ok(r)
}
