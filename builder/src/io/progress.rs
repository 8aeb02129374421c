//! Progress of long work on stderr. On a terminal, a bar with rate and ETA per stage. Where
//! stderr is not a terminal (a CI log, a pipe), a bar would print nothing useful, and minutes of
//! silence look like a hang: there each finished stage prints one line with what it did and how
//! long it took (`flash 3.0 GiB in 41.2 s`). `--quiet` silences both.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Stages quicker than this print no line: a log needs a sign of life during long work, not a
/// line for every quick step (and a failed command keeps its one error line).
const LINE_AFTER: Duration = Duration::from_secs(2);

/// For tests only: print the line of every finished stage, however quick.
pub const EVERY_STAGE_ENV: &str = "IMAGEGEN_TEST_EVERY_STAGE_LINE";

/// Silences bars and stage lines for the rest of the process (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// One stage of long work (`fetch`, `unpack`, `emit`, `flash`, `verify`) over `total` bytes
/// (a spinner when unknown). The bar shows `subject` (a file name) or the stage.
pub fn bar(stage: &'static str, subject: Option<&str>, total: Option<u64>) -> Progress {
    let quiet = QUIET.load(Ordering::Relaxed);
    let terminal = io::stderr().is_terminal();
    let target = if terminal && !quiet {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(total, target);
    let template = if total.is_some() {
        "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
    } else {
        "{msg:>12} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(subject.unwrap_or(stage).to_string());
    Progress {
        bar: pb,
        stage,
        subject: subject.map(str::to_string),
        lines: !terminal && !quiet,
        started: Instant::now(),
    }
}

/// A stage in progress. Dropped unfinished (the stage failed), it clears its bar and says
/// nothing; the error says what went wrong.
pub struct Progress {
    bar: ProgressBar,
    stage: &'static str,
    subject: Option<String>,
    lines: bool,
    started: Instant,
}

impl Progress {
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }

    /// The stage is done: its bar goes, or, off a terminal, its line is printed.
    pub fn finish(self) {
        let elapsed = self.started.elapsed();
        if self.lines && (elapsed >= LINE_AFTER || std::env::var_os(EVERY_STAGE_ENV).is_some()) {
            eprintln!(
                "{}",
                line(
                    self.stage,
                    self.subject.as_deref(),
                    self.bar.position(),
                    elapsed
                )
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// `fetch debian-12.raw.xz 412.0 MiB in 38.2 s`
fn line(stage: &str, subject: Option<&str>, bytes: u64, elapsed: Duration) -> String {
    let subject = subject.map(|s| format!(" {s}")).unwrap_or_default();
    format!(
        "{stage}{subject} {} in {:.1} s",
        human_size(bytes),
        elapsed.as_secs_f64()
    )
}

/// Bytes in binary units with one decimal: `776.0 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Advances a stage by what is read through it.
pub struct ProgressReader<R> {
    inner: R,
    progress: Progress,
}

impl<R: Read> ProgressReader<R> {
    pub fn new(inner: R, progress: Progress) -> Self {
        ProgressReader { inner, progress }
    }

    /// The reader and its stage, which the caller finishes once the work succeeded.
    pub fn into_parts(self) -> (R, Progress) {
        (self.inner, self.progress)
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Advances a stage by what is written through it.
pub struct ProgressWriter<W> {
    inner: W,
    progress: Progress,
}

impl<W: Write> ProgressWriter<W> {
    pub fn new(inner: W, progress: Progress) -> Self {
        ProgressWriter { inner, progress }
    }

    /// The writer and its stage, which the caller finishes once the work succeeded.
    pub fn into_parts(self) -> (W, Progress) {
        (self.inner, self.progress)
    }
}

impl<W: Write> Write for ProgressWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_line_says_what_and_how_long() {
        assert_eq!(
            line(
                "fetch",
                Some("debian-12.raw.xz"),
                412 << 20,
                Duration::from_millis(38_240)
            ),
            "fetch debian-12.raw.xz 412.0 MiB in 38.2 s"
        );
        assert_eq!(
            line("flash", None, 3 << 30, Duration::from_secs(41)),
            "flash 3.0 GiB in 41.0 s"
        );
        assert_eq!(human_size(512), "512 B");
    }
}
