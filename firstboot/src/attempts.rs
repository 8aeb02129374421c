//! The attempts of a step that waits on the network, reported as they happen.
//!
//! A waiting step used to reach the status only when its wait ended, up to the whole time budget
//! later, so `imagegen-firstboot status` did not list a step the journal showed retrying. Each
//! failed attempt now goes to the log (when its reason changed) and to a reporter, which `run`
//! points at the status.

/// Counts and reports the failed attempts of one step.
pub struct Attempts<'a> {
    step: &'static str,
    count: u32,
    last: String,
    report: &'a dyn Fn(u32, &str),
}

impl<'a> Attempts<'a> {
    /// `report(count, why)` is called after every failed attempt.
    pub fn new(step: &'static str, report: &'a dyn Fn(u32, &str)) -> Attempts<'a> {
        Attempts {
            step,
            count: 0,
            last: String::new(),
            report,
        }
    }

    /// One attempt failed for `why` (never a secret): logged when the reason changed, reported
    /// every time.
    pub fn failed(&mut self, why: &str) {
        self.count = self.count.saturating_add(1);
        if why != self.last {
            eprintln!("{}: waiting: {why}", self.step);
            why.clone_into(&mut self.last);
        }
        (self.report)(self.count, why);
    }

    /// Failed attempts so far.
    pub fn count(&self) -> u32 {
        self.count
    }
}
