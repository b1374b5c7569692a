//! `cpr backup --metrics-file PATH`: a Prometheus textfile-collector file (node_exporter's
//! `--collector.textfile.directory`) describing the last backup attempt and the last success.
//!
//! The file is replaced atomically (temp → fsync → rename; the temp name ends in `.tmp`, which the
//! collector ignores since it reads `*.prom` only), so a scrape never sees half a file. A failed
//! attempt updates the attempt and failure metrics and carries the last success's values over from
//! the previous file, so an alert on `time() - cpr_backup_last_success_timestamp_seconds` keeps
//! working through a run of failures. The failure counter lives in the file itself: it counts
//! failures since the file was created, and a rate() over it survives its reset like any counter's.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::backup::BackupReport;
use super::Error;

pub(crate) struct Metric {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

const LAST_SUCCESS: Metric = Metric {
    name: "cpr_backup_last_success_timestamp_seconds",
    kind: "gauge",
    help: "Unix time at which the last successful backup finished.",
};
const LAST_ATTEMPT: Metric = Metric {
    name: "cpr_backup_last_attempt_timestamp_seconds",
    kind: "gauge",
    help: "Unix time at which the last backup attempt finished, successful or not.",
};
const LAST_ATTEMPT_OK: Metric = Metric {
    name: "cpr_backup_last_attempt_success",
    kind: "gauge",
    help: "1 if the last backup attempt succeeded, 0 if it failed.",
};
const DURATION: Metric = Metric {
    name: "cpr_backup_duration_seconds",
    kind: "gauge",
    help: "How long the last successful backup took.",
};
const BUNDLE_SIZE: Metric = Metric {
    name: "cpr_backup_bundle_size_bytes",
    kind: "gauge",
    help: "Size in the store of the last successful backup's bundle.",
};
const REVISION: Metric = Metric {
    name: "cpr_backup_etcd_revision",
    kind: "gauge",
    help: "etcd revision of the snapshot in the last successful backup.",
};
const DB_SIZE: Metric = Metric {
    name: "cpr_backup_etcd_db_size_bytes",
    kind: "gauge",
    help: "Size of the etcd database snapshot in the last successful backup.",
};
const FAILURES: Metric = Metric {
    name: "cpr_backup_failures_total",
    kind: "counter",
    help: "Failed backup attempts since this metrics file was created.",
};

/// In the order they are written.
const METRICS: [&Metric; 8] = [
    &LAST_SUCCESS,
    &LAST_ATTEMPT,
    &LAST_ATTEMPT_OK,
    &DURATION,
    &BUNDLE_SIZE,
    &REVISION,
    &DB_SIZE,
    &FAILURES,
];

/// The metrics of one textfile, in the order they are written, and the four every operation's
/// file has (`cpr backup`'s, `cpr drill`'s).
pub(crate) struct Family {
    pub metrics: &'static [&'static Metric],
    pub last_success: &'static Metric,
    pub last_attempt: &'static Metric,
    pub last_attempt_ok: &'static Metric,
    pub failures: &'static Metric,
}

const BACKUP: Family = Family {
    metrics: &METRICS,
    last_success: &LAST_SUCCESS,
    last_attempt: &LAST_ATTEMPT,
    last_attempt_ok: &LAST_ATTEMPT_OK,
    failures: &FAILURES,
};

/// Records one backup attempt: `report` is the successful backup, `None` a failed one.
pub fn record(path: &Path, report: Option<&BackupReport>, now: SystemTime) -> Result<(), Error> {
    let figures = report.map(|report| {
        vec![
            (&DURATION, seconds(report.duration)),
            (&BUNDLE_SIZE, report.size as f64),
            (&REVISION, report.revision as f64),
            (&DB_SIZE, report.db_size as f64),
        ]
    });
    record_attempt(path, &BACKUP, figures.as_deref(), now)
}

/// Records one attempt of `family` in the file at `path`: `figures` are the success's own values,
/// `None` a failure, which keeps the last success's values and counts one more failure.
pub(crate) fn record_attempt(
    path: &Path,
    family: &Family,
    figures: Option<&[(&Metric, f64)]>,
    now: SystemTime,
) -> Result<(), Error> {
    let mut values = previous(path, family.metrics);
    let position = |metric: &Metric| {
        family
            .metrics
            .iter()
            .position(|m| m.name == metric.name)
            .expect("every metric is listed in its family")
    };
    let now = seconds(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    values[position(family.last_attempt)] = Some(now);
    match figures {
        Some(figures) => {
            values[position(family.last_attempt_ok)] = Some(1.0);
            values[position(family.last_success)] = Some(now);
            for (metric, value) in figures {
                values[position(metric)] = Some(*value);
            }
            values[position(family.failures)].get_or_insert(0.0);
        }
        None => {
            values[position(family.last_attempt_ok)] = Some(0.0);
            let failures = values[position(family.failures)].unwrap_or(0.0) + 1.0;
            values[position(family.failures)] = Some(failures);
        }
    }
    crate::fsutil::write_atomic(path, render(family.metrics, &values).as_bytes(), 0o644).map_err(
        |source| Error::Metrics {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// Milliseconds are plenty for timestamps and durations, and keep the file readable.
pub(crate) fn seconds(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

/// The values by position in `metrics`; `None` is not written.
fn render(metrics: &[&Metric], values: &[Option<f64>]) -> String {
    let mut out = String::new();
    for (metric, value) in metrics.iter().zip(values) {
        if let Some(value) = value {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n",
                name = metric.name,
                help = metric.help,
                kind = metric.kind
            ));
        }
    }
    out
}

/// The values of the file this cpr wrote last time; anything else in it (or a missing or unreadable
/// file) counts as no previous values.
fn previous(path: &Path, metrics: &[&Metric]) -> Vec<Option<f64>> {
    let mut values = vec![None; metrics.len()];
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return values,
        Err(e) => {
            log::warn!(
                "metrics: cannot read the previous {}: {e}; the failure count starts again",
                path.display()
            );
            return values;
        }
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let known = metrics.iter().position(|m| m.name == name);
        if let (Some(i), Ok(value)) = (known, value.parse::<f64>()) {
            values[i] = Some(value).filter(|v| v.is_finite());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> BackupReport {
        BackupReport {
            bundle: "c/n/20261124T100000Z.tar.zst".into(),
            store: "/srv".into(),
            size: 12_345,
            db_size: 65_536,
            revision: 42,
            files: 30,
            duration: Duration::from_millis(1_500),
            warnings: Vec::new(),
            removed_dead_uploads: Vec::new(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn value(text: &str, name: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(String::from)
    }

    #[test]
    fn success_then_failures_carry_the_success_and_count_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpr.prom");
        record(&path, None, at(100)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(value(&text, FAILURES.name).as_deref(), Some("1"));
        assert_eq!(value(&text, LAST_SUCCESS.name), None, "{text}");

        record(&path, Some(&report()), at(200)).unwrap();
        record(&path, None, at(300)).unwrap();
        record(&path, None, at(400)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(value(&text, FAILURES.name).as_deref(), Some("3"));
        assert_eq!(value(&text, LAST_SUCCESS.name).as_deref(), Some("200"));
        assert_eq!(value(&text, LAST_ATTEMPT.name).as_deref(), Some("400"));
        assert_eq!(value(&text, LAST_ATTEMPT_OK.name).as_deref(), Some("0"));
        assert_eq!(value(&text, DURATION.name).as_deref(), Some("1.5"));
        assert_eq!(value(&text, REVISION.name).as_deref(), Some("42"));
        assert!(text.contains("# TYPE cpr_backup_failures_total counter\n"));
        assert!(!dir.path().join("cpr.prom.tmp").exists());
    }

    #[test]
    fn a_missing_directory_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir/cpr.prom");
        let err = record(&path, Some(&report()), at(100)).unwrap_err();
        assert_eq!(err.exit_code(), 7);
        let message = err.to_string();
        assert!(message.contains("no-such-dir/cpr.prom"), "{message}");
        assert!(message.contains("Create its directory"), "{message}");
    }

    #[test]
    fn a_foreign_or_damaged_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cpr.prom");
        std::fs::write(
            &path,
            "garbage\ncpr_backup_failures_total NaN\nother_metric 5\n",
        )
        .unwrap();
        record(&path, None, at(100)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(value(&text, FAILURES.name).as_deref(), Some("1"));
        assert!(!text.contains("other_metric"));
    }
}
