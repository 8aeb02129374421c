//! Runs the parsed command line. This is the edge: `anyhow` with short context, one error
//! line on stderr, non-zero exit.

mod build;
mod check;
mod edit;
mod escape;
mod flash;
mod inspect;
mod kubeconfig;
mod personalize;
mod vpn_client;

use crate::cli::{Cli, Command};
use anyhow::{Context, Result, bail};
use clap::Parser;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// The exit status of a command whose reader went away (`imagegen inspect IMAGE | head`):
/// 128 + SIGPIPE, what the shell reports for a tool killed by SIGPIPE, as C tools are. Not 0,
/// since the output was cut short; no message, since the reader chose to stop reading.
const STDOUT_CLOSED: u8 = 128 + libc::SIGPIPE as u8;

/// Set when a write to standard output failed because its reader closed the pipe.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Standard output for what a command prints. It notes a closed pipe, so that `main` can tell
/// the error that ends the command from others: Rust ignores SIGPIPE, and the broken pipe of a
/// tool imagegen feeds (debugfs) must still be reported.
pub(crate) fn stdout() -> Stdout {
    Stdout(std::io::stdout().lock())
}

pub(crate) struct Stdout(std::io::StdoutLock<'static>);

impl Stdout {
    fn note<T>(r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            STDOUT_GONE.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Stdout::note(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Stdout::note(self.0.flush())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::interrupt::install();
    crate::io::progress::set_quiet(cli.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if STDOUT_GONE.load(Ordering::Relaxed) => ExitCode::from(STDOUT_CLOSED),
        Err(e) => {
            // Errors may quote names and symlink targets from the image; the newlines of a
            // tool's report are kept.
            eprintln!(
                "error: {}",
                escape::escape_controls(&one_line(&e), &['\n', '\t'])
            );
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Many library errors already print their cause (an
/// `io::Error` field named `source` is both in the message and the cause chain), so a cause
/// the line already says is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::inspect(a),
        Command::Ls(a) => edit::ls(a),
        Command::Cat(a) => edit::cat(a),
        Command::Cp(a) => edit::cp(a),
        Command::Mkdir(a) => edit::mkdir(a),
        Command::Ln(a) => edit::ln(a),
        Command::Rm(a) => edit::rm(a),
        Command::Grow(a) => edit::grow(a),
        Command::Build(a) => build::build(a),
        Command::Boards(a) => build::boards(a),
        Command::Personalize(a) => personalize::personalize(a),
        Command::Init(a) => build::init(a),
        Command::Check(a) => check::check(a),
        Command::Kubeconfig(a) => kubeconfig::kubeconfig(a),
        Command::VpnClient(a) => vpn_client::vpn_client(a),
        Command::Flash(a) => flash::flash(a),
    }
}

/// Opens an image only to read it: a compressed one through a scratch copy, which lives as
/// long as the returned `Readable`.
pub(crate) fn open_to_read(path: &Path) -> Result<(crate::image::Image, crate::image::Readable)> {
    let raw = crate::image::Readable::open(path)
        .with_context(|| format!("decompressing {}", path.display()))?;
    let image = crate::image::Image::open(raw.path())
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((image, raw))
}

/// Splits `IMAGE:/PATH`. The image part is the longest prefix before a ":/" that names an
/// existing file, so image names containing ':' still work.
pub(crate) fn split_target(target: &str) -> Result<(PathBuf, String)> {
    let mut fallback = None;
    for (i, _) in target.match_indices(":/") {
        let (img, path) = (&target[..i], &target[i + 1..]);
        if img.is_empty() {
            continue;
        }
        if Path::new(img).is_file() {
            return Ok((PathBuf::from(img), path.to_string()));
        }
        fallback.get_or_insert((img, path));
    }
    match fallback {
        Some((img, _)) => bail!("{img}: no such image file"),
        None => bail!("{target:?} is not IMAGE:/PATH (e.g. disk.img:/etc/hostname)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(crate::plan::PlanError::Read {
            path: "secrets/x".into(),
            source: io,
        })
        .context("building node a");
        assert_eq!(
            one_line(&e),
            format!("building node a: reading secrets/x: {text}")
        );
    }

    #[test]
    fn targets_split_at_the_existing_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a:b.img");
        std::fs::write(&img, b"").unwrap();
        let t = format!("{}:/etc/x", img.display());
        let (i, p) = split_target(&t).unwrap();
        assert_eq!(i, img);
        assert_eq!(p, "/etc/x");
        let missing = format!("{}/nope.img:/etc", dir.path().display());
        assert!(
            split_target(&missing)
                .unwrap_err()
                .to_string()
                .contains("no such image")
        );
        assert!(split_target("disk.img").is_err());
    }
}
