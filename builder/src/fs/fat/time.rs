//! FAT timestamps: local "DOS" date-times from 1980 to 2107 with 2-second resolution. imagegen
//! writes them as UTC (and runs mtools with TZ=UTC), which is what Linux shows with its
//! default `tz` for vfat.

use std::cell::Cell;

use fatfs::{Date, DateTime, Time, TimeProvider};

/// 1980-01-01T00:00:00Z, the first time FAT can store.
const FIRST: i64 = 315_532_800;
/// 2107-12-31T23:59:58Z, the last one.
const LAST: i64 = 4_354_819_198;

/// The time FAT will actually hold for `t`: clamped to the FAT range (a SOURCE_DATE_EPOCH of 0
/// becomes 1980-01-01, as zip tools do) and rounded down to an even second.
pub(super) fn representable(t: i64) -> i64 {
    let t = t.clamp(FIRST, LAST);
    t - t.rem_euclid(2)
}

pub(super) fn to_dos(t: i64) -> DateTime {
    let t = representable(t);
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // Every value is inside FAT's range after `representable`, so the narrowing is lossless.
    DateTime {
        date: Date {
            year: year as u16,
            month: month as u16,
            day: day as u16,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Seconds since the epoch of a stored date-time. Garbage fields (month 0, as some tools
/// leave) are pulled into range rather than trusted.
pub(super) fn from_dos(dt: DateTime) -> i64 {
    let month = i64::from(dt.date.month.clamp(1, 12));
    let day = i64::from(dt.date.day.max(1));
    days_from_civil(i64::from(dt.date.year), month, day) * 86_400
        + i64::from(dt.time.hour) * 3600
        + i64::from(dt.time.min) * 60
        + i64::from(dt.time.sec)
}

thread_local! {
    static BATCH_TIME: Cell<i64> = const { Cell::new(FIRST) };
}

/// fatfs's idea of "now" while it writes: the batch's epoch. fatfs stamps it on the entry of a
/// directory whose entries it changes. It wants a `&'static TimeProvider`, so the time lives
/// in a thread-local that `BatchTime` sets; fatfs calls back on the thread that writes.
#[derive(Debug)]
pub(super) struct BatchClock;

pub(super) static BATCH_CLOCK: BatchClock = BatchClock;

impl TimeProvider for BatchClock {
    fn get_current_date(&self) -> Date {
        self.get_current_date_time().date
    }

    fn get_current_date_time(&self) -> DateTime {
        to_dos(BATCH_TIME.with(Cell::get))
    }
}

/// Sets what `BatchClock` tells for as long as it lives.
pub(super) struct BatchTime {
    previous: i64,
}

impl BatchTime {
    pub(super) fn set(t: i64) -> BatchTime {
        BatchTime {
            previous: BATCH_TIME.with(|c| c.replace(t)),
        }
    }
}

impl Drop for BatchTime {
    fn drop(&mut self) {
        BATCH_TIME.with(|c| c.set(self.previous));
    }
}

// Proleptic Gregorian calendar <-> days since 1970-01-01 (H. Hinnant's algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_inside_the_range() {
        // 2023-11-14T22:13:20Z, as `date -u -d @1700000000` prints it.
        let dt = to_dos(1_700_000_000);
        assert_eq!((dt.date.year, dt.date.month, dt.date.day), (2023, 11, 14));
        assert_eq!((dt.time.hour, dt.time.min, dt.time.sec), (22, 13, 20));
        for t in [FIRST, 951_782_400, 1_700_000_000, LAST] {
            assert_eq!(from_dos(to_dos(t)), t);
        }
    }

    #[test]
    fn clamps_and_rounds() {
        assert_eq!(representable(0), FIRST);
        assert_eq!(representable(i64::MAX), LAST);
        assert_eq!(representable(1_700_000_001), 1_700_000_000);
        assert_eq!(from_dos(to_dos(-5)), FIRST);
    }
}
