//! Running the node's programs (`systemctl`, `dpkg`, `rsync`, `ssh`, the shutdown command).
//!
//! Programs are named in `node.toml` (`[commands]`, `[ups] shutdown_command`); a bare name is
//! looked up on `PATH`, so tests put recording stand-ins first on `PATH`. Programs run with the
//! agent's root as their working directory.

use std::env;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

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
    #[error("`{command}` did not finish within {secs} s and was killed")]
    TimedOut { command: String, secs: u64 },
    #[error("{program}: waiting for it: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// How a program run by [`output_bounded`] ended.
#[derive(Debug)]
pub struct Finished {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The error for a run that did not succeed, carrying the last lines of stderr.
    pub fn failed(&self) -> CommandError {
        CommandError::Failed {
            command: self.command.clone(),
            status: self.status.to_string(),
            stderr: tail(&self.stderr),
        }
    }
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
    let f = output_bounded(root, program, args, None)?;
    if f.status.success() {
        Ok(f.stdout)
    } else {
        Err(f.failed())
    }
}

/// The last three lines of a program's stderr, on one line.
fn tail(stderr: &str) -> String {
    let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// How often a bounded run looks whether its program ended.
const POLL: Duration = Duration::from_millis(50);

/// Runs `program args...` in the root like [`run`], but kills it, and every process it started,
/// once `limit` has passed (None: no limit). Returns how it ended, whatever its exit status, so
/// the caller can read all of stderr; only a kill at the limit is [`CommandError::TimedOut`].
///
/// The program gets its own process group so the kill reaches what it started too (rsync's
/// ssh, an ssh ProxyCommand): a survivor would keep the output pipes open and the run going.
pub fn output_bounded<S: AsRef<OsStr>>(
    root: &Root,
    program: &str,
    args: &[S],
    limit: Option<Duration>,
) -> Result<Finished, CommandError> {
    output_bounded_env(root, program, args, &[], limit)
}

/// [`output_bounded`] with `env` added to the program's environment (not secrets either).
pub fn output_bounded_env<S: AsRef<OsStr>>(
    root: &Root,
    program: &str,
    args: &[S],
    env: &[(&str, &str)],
    limit: Option<Duration>,
) -> Result<Finished, CommandError> {
    let path = resolve(program)?;
    let command = describe(&path, args);
    let mut child = Command::new(&path)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    // Both pipes are drained while the program runs, or it would block once one is full.
    let (tx, rx) = mpsc::channel();
    for (which, pipe) in [
        (
            0,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            1,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            let _ = tx.send((which, buf));
        });
    }
    drop(tx);
    let wait_err = |source| CommandError::Wait {
        program: program.to_owned(),
        source,
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(wait_err)? {
            break status;
        }
        if let Some(limit) = limit
            && started.elapsed() >= limit
        {
            kill_group(&mut child);
            let _ = child.wait();
            return Err(CommandError::TimedOut {
                command,
                secs: limit.as_secs(),
            });
        }
        thread::sleep(POLL);
    };
    // A process that left the group (setsid) may hold a pipe open: do not wait for it forever.
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok((0, b)) => stdout = b,
            Ok((_, b)) => stderr = b,
            Err(_) => break,
        }
    }
    Ok(Finished {
        command,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// SIGKILL to the child's process group (its pid, from `process_group(0)`), and to the child
/// itself should the group be gone.
fn kill_group(child: &mut std::process::Child) {
    // Never pid 1: kill(-1) would signal every process there is.
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .filter(|&p| p > 1)
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
}

fn describe<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}
