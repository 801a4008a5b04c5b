//! Which snapshots to keep: the `[snapshots] keep_*` policy, with the meaning restic's `forget`
//! gives the same options. Pure: times in, a set of kept snapshots out.
//!
//! Going from the newest snapshot to the oldest, `keep_last = n` keeps the n newest;
//! `keep_hourly = n` keeps the newest snapshot of each of the n most recent hours that have
//! one, and likewise `keep_daily` (calendar days), `keep_weekly` (ISO weeks) and
//! `keep_monthly` (calendar months). A snapshot kept by any rule is kept. Buckets are in UTC,
//! like the schedule. The newest snapshot is always kept.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::config::SnapshotConfig;

/// The counts of a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// The most recent snapshots.
    pub last: u32,
    /// The newest of each of the most recent hours.
    pub hourly: u32,
    /// The newest of each of the most recent days.
    pub daily: u32,
    /// The newest of each of the most recent ISO weeks.
    pub weekly: u32,
    /// The newest of each of the most recent months.
    pub monthly: u32,
}

impl From<&SnapshotConfig> for Policy {
    fn from(c: &SnapshotConfig) -> Policy {
        Policy {
            last: c.keep_last,
            hourly: c.keep_hourly,
            daily: c.keep_daily,
            weekly: c.keep_weekly,
            monthly: c.keep_monthly,
        }
    }
}

/// The indexes (into `times`, milliseconds since the epoch) of the snapshots to keep.
pub fn keep(times: &[u64], policy: Policy) -> BTreeSet<usize> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    // Newest first; ties by position, so the result does not depend on the input order.
    order.sort_by(|a, b| times[*b].cmp(&times[*a]).then(b.cmp(a)));
    type Bucket = fn(DateTime<Utc>) -> (i32, u32, u32, u32);
    let rules: [(u32, Bucket); 5] = [
        (policy.last, |_| (0, 0, 0, 0)),
        (policy.hourly, |t| (t.year(), t.ordinal(), t.hour(), 0)),
        (policy.daily, |t| (t.year(), t.ordinal(), 0, 0)),
        (policy.weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        (policy.monthly, |t| (t.year(), t.month(), 0, 0)),
    ];
    let mut kept = BTreeSet::new();
    if let Some(newest) = order.first() {
        kept.insert(*newest);
    }
    for (rule, (count, bucket)) in rules.iter().enumerate() {
        let mut left = *count;
        let mut last_bucket = None;
        for &i in &order {
            if left == 0 {
                break;
            }
            let t = DateTime::<Utc>::from_timestamp_millis(times[i] as i64).unwrap_or_default();
            // keep_last counts every snapshot; the others, one per new bucket.
            let b = if rule == 0 { None } else { Some(bucket(t)) };
            if rule == 0 || b != last_bucket {
                kept.insert(i);
                left -= 1;
                last_bucket = b;
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .timestamp_millis() as u64
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let times = [
            at(2026, 1, 1, 0, 0),
            at(2026, 1, 3, 0, 0),
            at(2026, 1, 2, 0, 0),
        ];
        let policy = Policy {
            last: 2,
            ..Policy::default()
        };
        assert_eq!(keep(&times, policy), BTreeSet::from([1, 2]));
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        // Three on Jan 1, two on Jan 2, one on Jan 4.
        let times = [
            at(2026, 1, 1, 1, 0),
            at(2026, 1, 1, 12, 0),
            at(2026, 1, 1, 23, 0),
            at(2026, 1, 2, 8, 0),
            at(2026, 1, 2, 9, 0),
            at(2026, 1, 4, 0, 0),
        ];
        let policy = Policy {
            daily: 2,
            ..Policy::default()
        };
        assert_eq!(keep(&times, policy), BTreeSet::from([4, 5]));
        let policy = Policy {
            daily: 10,
            ..Policy::default()
        };
        assert_eq!(keep(&times, policy), BTreeSet::from([2, 4, 5]));
    }

    #[test]
    fn rules_combine_and_weeks_are_iso_weeks() {
        // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
        let times = [
            at(2025, 12, 15, 0, 0),
            at(2026, 1, 4, 10, 0),
            at(2026, 1, 5, 10, 0),
            at(2026, 1, 5, 11, 0),
        ];
        let policy = Policy {
            last: 1,
            weekly: 2,
            monthly: 2,
            ..Policy::default()
        };
        // last: #3; weekly: #3 (week 2), #1 (week 1); monthly: #3 (Jan), #0 (Dec).
        assert_eq!(keep(&times, policy), BTreeSet::from([0, 1, 3]));
    }

    #[test]
    fn hourly_and_the_newest_is_always_kept() {
        let times = [
            at(2026, 3, 1, 10, 5),
            at(2026, 3, 1, 10, 50),
            at(2026, 3, 1, 11, 0),
        ];
        let policy = Policy {
            hourly: 1,
            ..Policy::default()
        };
        assert_eq!(keep(&times, policy), BTreeSet::from([2]));
        assert_eq!(keep(&times, Policy::default()), BTreeSet::from([2]));
        assert!(keep(&[], policy).is_empty());
    }
}
