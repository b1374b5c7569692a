//! Retention: which bundles of one node a `--keep-*` policy keeps, and deleting the rest so that an
//! interrupted prune never leaves the index naming an object that is gone.
//!
//! The policy follows restic's `forget` (internal/restic/snapshot_policy.go): walking the bundles
//! newest first, each rule keeps the newest bundle of each of its last N periods (hours, days, ISO
//! weeks) that hold a bundle — `--keep-last N` keeps the newest N — and a bundle kept by any rule is
//! kept. Like restic, a rule with periods left over when it reaches the oldest bundle keeps that one
//! too, so a young store keeps as much history as the policy allows. Periods are UTC, as the stamps
//! in bundle names are (restic uses the local zone; a node's zone is not in the bundle).
//!
//! This module knows names and times only; which bundle *verifies* is the caller's business (see
//! `ops::prune`), and it passes the names that must stay whatever the policy says.

use serde::Serialize;
use time::OffsetDateTime;

use super::index::{self, IndexEntry};
use super::{Error, Store};
use crate::bundle::name::SIGNATURE_SUFFIX;

/// Counts of `--keep-last`, `--keep-hourly`, `--keep-daily`, `--keep-weekly`; 0 turns a rule off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
}

impl Policy {
    /// A policy with every rule off would delete everything; callers refuse it (restic keeps all).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "keep last {}, hourly {}, daily {}, weekly {}",
            self.last, self.hourly, self.daily, self.weekly
        )
    }
}

/// What the policy decided for one bundle, and why it stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    /// The rules that keep it (`last`, `hourly`, `daily`, `weekly`, `protected`); empty when deleted.
    pub reasons: Vec<&'static str>,
}

/// The period a rule groups bundles by: two bundles in the same period compete for one slot.
fn period(rule: &str, t: OffsetDateTime, position: usize) -> i64 {
    let (year, month, day, hour) = (
        i64::from(t.year()),
        i64::from(u8::from(t.month())),
        i64::from(t.day()),
        i64::from(t.hour()),
    );
    match rule {
        "hourly" => ((year * 100 + month) * 100 + day) * 100 + hour,
        "daily" => (year * 100 + month) * 100 + day,
        "weekly" => {
            let (iso_year, week, _) = t.to_iso_week_date();
            i64::from(iso_year) * 100 + i64::from(week)
        }
        // `last`: every bundle is a period of its own.
        _ => position as i64,
    }
}

/// Decides for every bundle of one node. `bundles` may come in any order; decisions come newest
/// first. Names in `protected` are kept whatever the rules say.
pub fn plan(policy: &Policy, bundles: &[IndexEntry], protected: &[&str]) -> Vec<Decision> {
    let mut sorted: Vec<&IndexEntry> = bundles.iter().collect();
    // Newest first; equal times (never from cpr's own names) fall back to the name for a stable order.
    sorted.sort_by(|a, b| (b.created, &b.name).cmp(&(a.created, &a.name)));
    let mut rules = [
        ("last", policy.last, None::<i64>),
        ("hourly", policy.hourly, None),
        ("daily", policy.daily, None),
        ("weekly", policy.weekly, None),
    ];
    let oldest = sorted.len().saturating_sub(1);
    sorted
        .iter()
        .enumerate()
        .map(|(position, entry)| {
            let mut reasons = Vec::new();
            for (rule, left, last_period) in rules.iter_mut() {
                if *left == 0 {
                    continue;
                }
                let this = period(rule, entry.created, position);
                if *last_period != Some(this) || position == oldest {
                    *last_period = Some(this);
                    *left -= 1;
                    reasons.push(*rule);
                }
            }
            if protected.contains(&entry.name.as_str()) {
                reasons.push("protected");
            }
            Decision {
                name: entry.name.clone(),
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

/// Deletes bundles of one node, in the order that keeps the store consistent at every instant:
/// 1. the index drops them all in one write, so it never names an object that is gone (a read-only
///    HTTP server answers from the index alone);
/// 2. each bundle, oldest first (an interruption leaves the most recent history), then its
///    `.minisig`. A crash before 2 leaves objects the index no longer names: a store that lists
///    (directory, S3) still shows them and the next prune deletes them — an HTTP server, which lists
///    from the index alone, keeps them unseen until removed by hand; a crash between a bundle and its
///    signature leaves a signature with no bundle, which the next prune removes (`orphan_signatures`).
pub fn delete(store: &dyn Store, cluster: &str, node: &str, names: &[&str]) -> Result<(), Error> {
    if names.is_empty() {
        return Ok(());
    }
    index::remove(store, cluster, node, names)?;
    crate::host::failpoint("prune:index-written");
    let mut oldest_first = names.to_vec();
    oldest_first.sort();
    for name in oldest_first {
        store.delete(name)?;
        crate::host::failpoint("prune:bundle-deleted");
        store.delete(&format!("{name}{SIGNATURE_SUFFIX}"))?;
    }
    Ok(())
}

/// Signatures in the node's directory whose bundle is gone (what a prune interrupted between a
/// bundle and its signature leaves). Stores that cannot list (HTTP) only show what the index names,
/// so they never report any.
pub fn orphan_signatures(
    store: &dyn Store,
    cluster: &str,
    node: &str,
) -> Result<Vec<String>, Error> {
    let prefix = crate::bundle::name::BundleName::node_prefix(cluster, node);
    let names: Vec<String> = store.list(&prefix)?.into_iter().map(|o| o.name).collect();
    Ok(names
        .iter()
        .filter_map(|n| n.strip_suffix(SIGNATURE_SUFFIX))
        .filter(|bundle| !names.iter().any(|n| n == bundle))
        .map(|bundle| format!("{bundle}{SIGNATURE_SUFFIX}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn entry(created: OffsetDateTime) -> IndexEntry {
        let name = format!(
            "c/n/{}.tar.zst",
            created
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap()
        );
        IndexEntry {
            name,
            size: 1,
            created,
            node: "n".into(),
            revision: None,
            encrypted: false,
            signed: false,
            sha256: None,
            blake3: None,
            renamed_from: None,
            etcd_members: Vec::new(),
            extra: Default::default(),
        }
    }

    fn kept(policy: Policy, bundles: &[IndexEntry]) -> Vec<String> {
        plan(&policy, bundles, &[])
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.name[4..17].to_string())
            .collect()
    }

    /// Every 20 minutes for three days, from Friday 2026-11-20 00:00 UTC.
    fn every_20_minutes() -> Vec<IndexEntry> {
        (0..3 * 72)
            .map(|i| entry(datetime!(2026-11-20 00:00 UTC) + time::Duration::minutes(20 * i)))
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let kept = kept(
            Policy {
                last: 3,
                ..Policy::default()
            },
            &every_20_minutes(),
        );
        assert_eq!(kept, ["20261122T2340", "20261122T2320", "20261122T2300"]);
    }

    #[test]
    fn hourly_keeps_the_newest_of_each_of_the_last_hours() {
        let kept = kept(
            Policy {
                hourly: 3,
                ..Policy::default()
            },
            &every_20_minutes(),
        );
        assert_eq!(kept, ["20261122T2340", "20261122T2240", "20261122T2140"]);
    }

    #[test]
    fn daily_and_weekly_use_utc_days_and_iso_weeks() {
        let bundles = every_20_minutes();
        let daily = kept(
            Policy {
                daily: 2,
                ..Policy::default()
            },
            &bundles,
        );
        assert_eq!(daily, ["20261122T2340", "20261121T2340"]);
        // 2026-11-22 is a Sunday: ISO week 47 ends there, so a Monday bundle starts week 48.
        let mut with_monday = bundles.clone();
        with_monday.push(entry(datetime!(2026-11-23 00:10 UTC)));
        let weekly = kept(
            Policy {
                weekly: 2,
                ..Policy::default()
            },
            &with_monday,
        );
        assert_eq!(weekly, ["20261123T0010", "20261122T2340"]);
    }

    #[test]
    fn periods_without_a_bundle_do_not_count() {
        // Days 1, 2 and 5: --keep-daily 3 reaches back to day 1 over the empty days 3 and 4.
        let bundles = [
            entry(datetime!(2026-11-01 10:00 UTC)),
            entry(datetime!(2026-11-01 12:00 UTC)),
            entry(datetime!(2026-11-02 10:00 UTC)),
            entry(datetime!(2026-11-05 10:00 UTC)),
            entry(datetime!(2026-11-05 11:00 UTC)),
        ];
        let kept = kept(
            Policy {
                daily: 3,
                ..Policy::default()
            },
            &bundles,
        );
        assert_eq!(kept, ["20261105T1100", "20261102T1000", "20261101T1200"]);
    }

    #[test]
    fn a_bundle_kept_by_any_rule_is_kept_and_says_why() {
        let decisions = plan(
            &Policy {
                last: 2,
                hourly: 2,
                daily: 1,
                weekly: 0,
            },
            &every_20_minutes(),
            &[],
        );
        let reasons: Vec<(&str, Vec<&str>)> = decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| (&d.name[4..17], d.reasons.clone()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("20261122T2340", vec!["last", "hourly", "daily"]),
                ("20261122T2320", vec!["last"]),
                ("20261122T2240", vec!["hourly"]),
            ]
        );
        assert_eq!(decisions.len(), 216);
    }

    #[test]
    fn leftover_counts_keep_the_oldest_bundle_as_restic_does() {
        let bundles = [
            entry(datetime!(2026-11-01 10:00 UTC)),
            entry(datetime!(2026-11-01 10:30 UTC)),
            entry(datetime!(2026-11-01 11:00 UTC)),
        ];
        let kept = kept(
            Policy {
                hourly: 5,
                ..Policy::default()
            },
            &bundles,
        );
        assert_eq!(kept, ["20261101T1100", "20261101T1030", "20261101T1000"]);
    }

    #[test]
    fn protected_bundles_stay_whatever_the_rules_say() {
        let bundles = every_20_minutes();
        let old = bundles[5].name.clone();
        let decisions = plan(
            &Policy {
                last: 1,
                ..Policy::default()
            },
            &bundles,
            &[old.as_str()],
        );
        let kept: Vec<_> = decisions.iter().filter(|d| d.keep).collect();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].name, old);
        assert_eq!(kept[1].reasons, ["protected"]);
    }

    #[test]
    fn input_order_does_not_matter_and_empty_is_empty() {
        let mut bundles = every_20_minutes();
        let policy = Policy {
            daily: 2,
            hourly: 4,
            ..Policy::default()
        };
        let forward = plan(&policy, &bundles, &[]);
        bundles.reverse();
        assert_eq!(plan(&policy, &bundles, &[]), forward);
        assert!(plan(&policy, &[], &[]).is_empty());
        assert!(Policy::default().is_empty() && !policy.is_empty());
    }
}
