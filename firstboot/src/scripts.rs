//! The operator's `[firstboot] scripts`: each run once, in order, after the agent's own steps.
//! One status step per script (`script:NN-name`), so the status shows which ran, which failed
//! with what exit status, and which still wait. A script that succeeded is never run again; one
//! that failed is run again by the next run (the retry timer), and the scripts after it wait for
//! it, since a later script may build on an earlier one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::command::{self, CommandError};
use crate::root::Root;

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("exited with status {code}")]
    Exit { code: String },
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The status step of the script staged at `path` ("script:01-setup.sh").
pub fn step_name(path: &Path) -> String {
    format!(
        "script:{}",
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned()
        )
    )
}

/// Runs the script at `path` (a node path) with the root as its working directory, killed with
/// everything it started after `limit`. Its output goes to the agent's stderr, the journal on a
/// node, each line marked with the step.
pub fn run(
    root: &Root,
    path: &Path,
    limit: Duration,
) -> Result<BTreeMap<String, String>, ScriptError> {
    let step = step_name(path);
    let program = root.path(path);
    let program = program.to_string_lossy();
    let no_args: [&str; 0] = [];
    let f = command::output_bounded(root, &program, &no_args, Some(limit))?;
    for line in f.stdout.lines().chain(f.stderr.lines()) {
        eprintln!("{step}: {line}");
    }
    let code = f
        .status
        .code()
        .map_or_else(|| f.status.to_string(), |c| c.to_string());
    if f.status.success() {
        Ok(BTreeMap::from([("exit".to_owned(), code)]))
    } else {
        Err(ScriptError::Exit { code })
    }
}
