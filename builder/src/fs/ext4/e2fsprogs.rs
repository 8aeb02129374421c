//! Running the e2fsprogs tools (debugfs, e2fsck, resize2fs) reproducibly: fixed clock, C locale.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

use crate::fs::FsError;

const MIN_VERSION: (u32, u32, u32) = (1, 47, 0);

/// `IMAGE?offset=N`, the unix_io syntax that makes every tool work in place inside a
/// whole-disk image. The image path itself must not contain '?', or unix_io would split there.
pub fn device(image: &Path, offset: u64) -> Result<String, FsError> {
    let image = crate::argv::path(image);
    let s = image.to_str().ok_or_else(|| FsError::InvalidPath {
        path: image.display().to_string(),
        reason: "the image path is not UTF-8".into(),
    })?;
    if s.contains('?') {
        return Err(FsError::InvalidPath {
            path: s.to_string(),
            reason: "e2fsprogs cannot open an image whose path contains '?'".into(),
        });
    }
    Ok(format!("{s}?offset={offset}"))
}

/// Runs an e2fsprogs tool with its clock pinned to `epoch` (every timestamp it writes,
/// including e2fsck's last-check time, comes from there) and untranslated messages.
pub fn run<I, S>(tool: &str, args: I, epoch: i64) -> Result<Output, FsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command(tool, epoch);
    cmd.args(args);
    output(cmd, tool)
}

/// The command `run` runs, for callers that also set its input.
pub fn command(tool: &str, epoch: i64) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("E2FSCK_TIME", epoch.to_string())
        .env("LC_ALL", "C");
    cmd
}

/// Runs `cmd` (made by [`command`]) to completion.
pub fn output(mut cmd: Command, tool: &str) -> Result<Output, FsError> {
    cmd.output().map_err(|e| FsError::Tool {
        tool: tool.to_string(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "not found: install e2fsprogs >= {}.{}.{}",
                MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
            )
        } else {
            e.to_string()
        },
    })
}

pub fn output_text(out: &Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s.trim_end().to_string()
}

/// `e2fsck -fn`: fails unless the filesystem is clean.
pub fn check(image: &Path, offset: u64, epoch: i64) -> Result<(), FsError> {
    let out = run("e2fsck", ["-fn".to_string(), device(image, offset)?], epoch)?;
    if !out.status.success() {
        return Err(FsError::Tool {
            tool: "e2fsck -fn".into(),
            detail: format!(
                "the filesystem is not clean ({}):\n{}",
                out.status,
                output_text(&out)
            ),
        });
    }
    Ok(())
}

/// `e2fsck -fn` before a change: a filesystem it finds problems in is refused untouched. The
/// space estimate trusts the free counts, and debugfs allocates whatever the bitmaps call
/// free: with a used block marked free, a new file would share it with an old one (seen:
/// "Multiply-claimed block(s)" after writing one small file).
pub fn precheck(image: &Path, offset: u64, epoch: i64) -> Result<(), FsError> {
    let out = run("e2fsck", ["-fn".to_string(), device(image, offset)?], epoch)?;
    match out.status.code() {
        Some(0) => Ok(()),
        // "File system errors left uncorrected", as -n leaves every one.
        Some(4) => Err(FsError::Corrupt(format!(
            "e2fsck -fn finds problems before any change, so imagegen leaves this ext4 \
             filesystem alone; repair it (e2fsck -fy on a copy) or use a fresh image:\n{}",
            output_text(&out)
        ))),
        _ => Err(FsError::Tool {
            tool: "e2fsck -fn".into(),
            detail: format!("{}:\n{}", out.status, output_text(&out)),
        }),
    }
}

/// Refuses a filesystem whose journal still holds transactions. The kernel replays a journal
/// whose start is not 0 at mount even when the superblock's needs_recovery flag is clear, which
/// would overwrite our changes with stale blocks; `e2fsck -fn` does not flag that state.
pub fn journal_gate(image: &Path, offset: u64) -> Result<(), FsError> {
    let out = run("dumpe2fs", ["-h".to_string(), device(image, offset)?], 0)?;
    let text = output_text(&out);
    if !out.status.success() {
        return Err(FsError::Tool {
            tool: "dumpe2fs -h".into(),
            detail: format!("{}:\n{text}", out.status),
        });
    }
    let start = text
        .lines()
        .find_map(|l| l.strip_prefix("Journal start:"))
        .map(str::trim);
    match start {
        None | Some("0") => Ok(()),
        Some(_) => Err(FsError::Unsupported(
            "the ext4 journal holds transactions that were never replayed: run `e2fsck -fy` on \
             the filesystem (answer yes to running the journal), or boot it once and shut it \
             down cleanly, then retry"
                .into(),
        )),
    }
}

/// The installed e2fsprogs version (from `debugfs -V`), for the build manifest. Fails if it is
/// older than 1.47.0, the first release that knows orphan_file.
pub fn e2fsprogs_version() -> Result<String, FsError> {
    let out = run("debugfs", ["-V"], 0)?;
    let text = output_text(&out);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("debugfs "))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| FsError::Tool {
            tool: "debugfs -V".into(),
            detail: format!("unexpected output: {text:?}"),
        })?;
    let parsed = parse_version(version).ok_or_else(|| FsError::Tool {
        tool: "debugfs -V".into(),
        detail: format!("cannot parse version {version:?}"),
    })?;
    if parsed < MIN_VERSION {
        return Err(FsError::Unsupported(format!(
            "e2fsprogs {version} is too old: imagegen needs >= {}.{}.{} (older releases cannot \
             check orphan_file filesystems); install a newer e2fsprogs",
            MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
        )));
    }
    Ok(version.to_string())
}

/// "1.47.0", "1.47.2-rc1", "1.48" -> (major, minor, patch).
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let core = v.split(['-', '~', '+']).next()?;
    let mut parts = core.split('.').map(str::parse::<u32>);
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("1.47.0"), Some((1, 47, 0)));
        assert_eq!(parse_version("1.47.2-rc1"), Some((1, 47, 2)));
        assert_eq!(parse_version("1.48"), Some((1, 48, 0)));
        assert!(parse_version("1.46.5").unwrap() < MIN_VERSION);
        assert_eq!(parse_version("x"), None);
    }
}
