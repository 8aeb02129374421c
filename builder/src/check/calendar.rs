//! Backup schedules, systemd `OnCalendar=` expressions (systemd.time(7), "CALENDAR EVENTS").
//! The agent writes the schedule into a timer unit on the node; systemd ignores a timer whose
//! expression it cannot parse, and the node would never back up, silently.
//!
//! The judge is systemd's own parser, `systemd-analyze calendar`, wherever it is installed
//! (every systemd system has it). Without it (a macOS laptop), [`parse`] checks the grammar of
//! systemd.time(7): the shorthands, then `[WEEKDAYS] [DATE] [TIME] [TIMEZONE]`, each component
//! a list of values, ranges (`..`) and repetitions (`/N`); it is looser than systemd on value
//! limits of some components, never stricter.

use std::process::Command;

/// Why systemd would refuse `expr`, or `None`.
pub fn problem(expr: &str) -> Option<String> {
    match Command::new("systemd-analyze")
        .args(["calendar", "--"])
        .arg(expr)
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) if out.status.code().is_some() => {
            let err = String::from_utf8_lossy(&out.stderr);
            Some(format!(
                "systemd does not accept it as OnCalendar= ({}); e.g. \"daily\", \"*-*-* 02:30\", \
                 \"Mon..Fri 22:00\"",
                err.lines().last().unwrap_or("").trim()
            ))
        }
        // Not installed, or killed: the grammar check.
        _ => parse(expr).err().map(|why| {
            format!("not an OnCalendar= expression: {why}; e.g. \"daily\", \"*-*-* 02:30\"")
        }),
    }
}

const SHORTHANDS: &[&str] = &[
    "minutely",
    "hourly",
    "daily",
    "monthly",
    "weekly",
    "yearly",
    "annually",
    "quarterly",
    "semiannually",
];
const DAYS: &[&str] = &[
    "mon",
    "tue",
    "wed",
    "thu",
    "fri",
    "sat",
    "sun",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The grammar check used without systemd-analyze.
pub fn parse(expr: &str) -> Result<(), String> {
    let e = expr.trim();
    if e.is_empty() {
        return Err("it is empty".into());
    }
    if SHORTHANDS.contains(&e.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    let mut words: Vec<&str> = e.split_whitespace().collect();
    // A trailing time zone (UTC or an Area/City name).
    if words.len() > 1 {
        let last = words[words.len() - 1];
        if last == "UTC" || last.contains('/') && !last.contains(':') && !last.contains('-') {
            words.pop();
        }
    }
    let mut rest = words.as_slice();
    if let Some(first) = rest.first()
        && first
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic())
    {
        weekdays(first)?;
        rest = &rest[1..];
    }
    match rest {
        [] => Ok(()),
        [one] if one.contains(':') => time(one),
        [one] => date(one),
        [d, t] => date(d).and_then(|()| time(t)),
        _ => Err(format!("{e:?} has more parts than weekdays, date and time")),
    }
}

fn weekdays(s: &str) -> Result<(), String> {
    for item in s.split(',') {
        for day in item.split("..") {
            if !DAYS.contains(&day.to_ascii_lowercase().as_str()) {
                return Err(format!("{day:?} is not a weekday (Mon..Sun)"));
            }
        }
    }
    Ok(())
}

fn date(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('-').collect();
    let limits: &[u32] = match parts.len() {
        2 => &[12, 31],
        3 => &[u32::MAX, 12, 31],
        _ => return Err(format!("date {s:?} must be YEAR-MONTH-DAY or MONTH-DAY")),
    };
    for (p, max) in parts.iter().zip(limits) {
        component(p, *max, s)?;
    }
    Ok(())
}

fn time(s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("time {s:?} must be HOUR:MINUTE[:SECOND]"));
    }
    for (p, max) in parts.iter().zip([23, 59, 59]) {
        // Seconds may carry a fraction.
        component(p.split('.').next().unwrap_or(p), max, s)?;
    }
    Ok(())
}

/// `*`, or a comma list of `N`, `N..M`, with an optional `/STEP`.
fn component(p: &str, max: u32, whole: &str) -> Result<(), String> {
    for item in p.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if let Some(s) = step
            && s.parse::<u32>().map_or(true, |n| n == 0)
        {
            return Err(format!("{whole:?}: step {s:?} must be a positive number"));
        }
        if range == "*" {
            continue;
        }
        for v in range.split("..") {
            match v.parse::<u32>() {
                Ok(n) if n <= max => {}
                _ => return Err(format!("{whole:?}: {v:?} is not a value there (0..{max})")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grammar check agrees with systemd-analyze where both are available.
    #[test]
    fn the_fallback_parser_agrees_with_systemd() {
        let cases = [
            "daily",
            "weekly",
            "*-*-* 02:30",
            "Mon..Fri 22:00",
            "Sat,Sun *-*-* 03:00:00",
            "*-*-1 04:00",
            "hourly",
            "*:0/15",
            "2026-01-01",
            "dialy",
            "25:00",
            "Mon..Fry 10:00",
            "*-*-* 02:30 foo bar",
            "",
        ];
        let have_systemd = Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        for c in cases {
            let ours = parse(c).is_ok();
            if have_systemd {
                let theirs = problem(c).is_none();
                assert_eq!(
                    ours, theirs,
                    "{c:?}: parser {ours}, systemd-analyze {theirs}"
                );
            }
        }
        assert!(parse("daily").is_ok() && parse("dialy").is_err());
        if !have_systemd {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "systemd-analyze needed"
            );
        }
    }
}
