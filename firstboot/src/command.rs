//! Running the node's programs (`systemctl`, `dpkg`, `rsync`, `ssh`, the shutdown command).
//!
//! Programs are named in `node.toml` (`[commands]`, `[ups] shutdown_command`); a bare name is
//! looked up on `PATH`, so tests put recording stand-ins first on `PATH`. Programs run with the
//! agent's root as their working directory.

use std::env;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::root::Root;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{program}: not found on PATH")]
    NotFound { program: String },
    #[error("{program}: cannot start: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

pub fn resolve(program: &str) -> Result<PathBuf, CommandError> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    env::var_os("PATH")
        .and_then(|paths| {
            env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| CommandError::NotFound {
            program: program.to_owned(),
        })
}

/// Runs `program args...` in the root; returns stdout. The error carries the last lines of stderr.
/// Arguments must not be secrets: they show up in errors and in `ps`.
pub fn run<S: AsRef<OsStr>>(
    root: &Root,
    program: &str,
    args: &[S],
) -> Result<String, CommandError> {
    let path = resolve(program)?;
    let out = Command::new(&path)
        .args(args)
        .current_dir(root.dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    Err(CommandError::Failed {
        command: describe(&path, args),
        status: out.status.to_string(),
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
    })
}

fn describe<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}
