//! Waiting on the network: an attempt repeated with exponential backoff until it succeeds, fails
//! for good, or the run's deadline passes.
//!
//! k3s (the server's `/cacerts` and `/ping`) and ZeroTier (the local API, until the network has an
//! address) wait the same way; one loop keeps their pacing and their reporting the same. The
//! pause starts at 200 ms and doubles up to 5 s: quick while a service is starting, and at most one
//! status write (see `Attempts`) every 5 s during a long wait. No pause runs past the deadline.

use std::thread;
use std::time::{Duration, Instant};

use crate::attempts::Attempts;

const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// An error that may only mean "not yet".
pub trait Waiting {
    /// Why the attempt should be repeated; `None` for an error that repeating cannot fix.
    fn waiting(&self) -> Option<&str>;
}

/// Runs `attempt` until it succeeds or fails with an error that is not [`Waiting`]. Every waiting
/// failure goes to `attempts` (counted and reported with its reason); the last one is returned
/// once the deadline has passed.
pub fn retry_until<T, E: Waiting>(
    deadline: Instant,
    attempts: &mut Attempts,
    attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    retry_with(
        deadline,
        attempts,
        attempt,
        &Instant::now,
        &mut thread::sleep,
    )
}

/// [`retry_until`] with its clock and its sleep given, so tests need not wait.
fn retry_with<T, E: Waiting>(
    deadline: Instant,
    attempts: &mut Attempts,
    mut attempt: impl FnMut() -> Result<T, E>,
    now: &dyn Fn() -> Instant,
    sleep: &mut dyn FnMut(Duration),
) -> Result<T, E> {
    let mut pause = FIRST_PAUSE;
    loop {
        let e = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(why) = e.waiting() else {
            return Err(e);
        };
        attempts.failed(why);
        let left = deadline.saturating_duration_since(now());
        if left.is_zero() {
            return Err(e);
        }
        sleep(pause.min(left));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Wait(String),
        Fatal,
    }

    impl Waiting for E {
        fn waiting(&self) -> Option<&str> {
            match self {
                E::Wait(w) => Some(w),
                E::Fatal => None,
            }
        }
    }

    /// The result, the pauses, and the reports `(count, why)` of one `run`.
    type Ran = (Result<u32, E>, Vec<Duration>, Vec<(u32, String)>);

    /// Runs `retry_with` on a clock that only sleeping moves, the attempt given the attempt
    /// number (from 1).
    fn run(budget: Duration, mut attempt: impl FnMut(u32) -> Result<u32, E>) -> Ran {
        let start = Instant::now();
        let clock = Cell::new(start);
        let mut pauses = Vec::new();
        let reports = RefCell::new(Vec::new());
        let report = |n: u32, why: &str| reports.borrow_mut().push((n, why.to_owned()));
        let mut attempts = Attempts::new("test", &report);
        let mut n = 0;
        let result = retry_with(
            start + budget,
            &mut attempts,
            || {
                n += 1;
                attempt(n)
            },
            &|| clock.get(),
            &mut |d| {
                pauses.push(d);
                clock.set(clock.get() + d);
            },
        );
        assert_eq!(attempts.count() as usize, reports.borrow().len());
        (result, pauses, reports.into_inner())
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn success_after_waiting_is_returned_with_each_failure_reported() {
        let (r, pauses, reports) = run(Duration::from_secs(60), |n| {
            if n < 3 {
                Err(E::Wait(format!("not yet {n}")))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r, Ok(3));
        assert_eq!(pauses, [200 * MS, 400 * MS]);
        assert_eq!(
            reports,
            [(1, "not yet 1".to_owned()), (2, "not yet 2".to_owned())]
        );
    }

    #[test]
    fn no_pause_runs_past_the_deadline() {
        let (r, pauses, reports) = run(Duration::from_secs(1), |n| Err(E::Wait(format!("w{n}"))));
        // 200 + 400 ms, then only the 400 ms left of the budget instead of 800; the attempt at
        // the deadline is the last, and its reason is the one returned.
        assert_eq!(pauses, [200 * MS, 400 * MS, 400 * MS]);
        assert_eq!(r, Err(E::Wait("w4".into())));
        assert_eq!(reports.last(), Some(&(4, "w4".to_owned())));
    }

    #[test]
    fn pauses_double_up_to_five_seconds() {
        let (_, pauses, reports) = run(Duration::from_secs(30), |_| Err(E::Wait("w".into())));
        let s = |ms: u64| Duration::from_millis(ms);
        assert_eq!(
            pauses,
            [
                s(200),
                s(400),
                s(800),
                s(1600),
                s(3200),
                s(5000),
                s(5000),
                s(5000),
                s(5000),
                s(3800)
            ]
        );
        assert_eq!(pauses.iter().sum::<Duration>(), Duration::from_secs(30));
        assert_eq!(reports.len(), 11);
    }

    #[test]
    fn an_error_that_is_not_waiting_ends_at_once() {
        let (r, pauses, reports) = run(Duration::from_secs(60), |_| Err(E::Fatal));
        assert_eq!(r, Err(E::Fatal));
        assert!(pauses.is_empty() && reports.is_empty());
    }

    #[test]
    fn a_spent_budget_still_gets_one_attempt() {
        let (r, pauses, reports) = run(Duration::ZERO, |n| {
            if n == 1 {
                Err(E::Wait("w".into()))
            } else {
                Ok(n)
            }
        });
        assert_eq!(r, Err(E::Wait("w".into())));
        assert!(pauses.is_empty());
        assert_eq!(reports, [(1, "w".to_owned())]);
    }
}
