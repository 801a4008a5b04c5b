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

use crate::config::{Config, OriginRef, SnapshotConfig};
use crate::identity::NodeId;

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

/// The peers that keep this node's own feed, as the config names them (`"self"` or the node's
/// id): compaction never drops what one of them may still need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// Peers the feed is pushed to. Each counts with what its receipts acknowledge (nothing
    /// until its first).
    pub push: Vec<NodeId>,
    /// Peers that may read the feed (`serve`). Each counts with what it said it held in its
    /// last pull, and with nothing until it has pulled (it may hold part of the feed from
    /// before pulls were recorded).
    pub readers: Vec<NodeId>,
}

impl Holders {
    /// The holders of `own`'s feed in `config`.
    pub fn of_own_feed(config: &Config, own: NodeId) -> Holders {
        let names_own = |list: &[OriginRef]| {
            list.iter()
                .any(|o| matches!(o, OriginRef::SelfNode) || *o == OriginRef::Node(own))
        };
        let ids = |pick: fn(&crate::config::PeerConfig) -> &[OriginRef]| {
            config
                .peers
                .iter()
                .filter(|p| names_own(pick(p)))
                .map(|p| p.id)
                .collect()
        };
        Holders {
            push: ids(|p| &p.push),
            readers: ids(|p| &p.serve),
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

    #[test]
    fn holders_of_the_own_feed_are_named_as_self_or_by_id() {
        const ID: &str = "ed25519:iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w";
        let own: NodeId = crate::identity::NodeKey::from_seed([3; 32]).id();
        let other: NodeId = crate::identity::NodeKey::from_seed([4; 32]).id();
        let config = |lists: &str| {
            Config::parse(
                std::path::Path::new("/etc/tandem/t.toml"),
                &format!("[node]\nname = \"n\"\n[[peer]]\nname = \"p\"\nurl = \"http://x\"\nid = \"{ID}\"\n{lists}\n"),
            )
            .unwrap()
        };
        let peer: NodeId = ID.parse().unwrap();
        for name in ["\"self\"".to_owned(), format!("\"{own}\"")] {
            let pushed = config(&format!("push = [{name}]"));
            assert_eq!(
                Holders::of_own_feed(&pushed, own),
                Holders {
                    push: vec![peer],
                    readers: vec![]
                },
                "{name}"
            );
            let served = config(&format!("serve = [{name}]"));
            assert_eq!(
                Holders::of_own_feed(&served, own),
                Holders {
                    push: vec![],
                    readers: vec![peer]
                },
                "{name}"
            );
        }
        let by_id = config(&format!("push = [\"{own}\"]\nserve = [\"{own}\"]"));
        assert_eq!(Holders::of_own_feed(&by_id, other), Holders::default());
    }

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
