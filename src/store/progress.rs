//! Progress lines for long transfers, through `log` so a serial console shows them too.

use std::time::{Duration, Instant};

pub(crate) struct Progress {
    verb: &'static str,
    what: String,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Instant,
    interval: Duration,
}

impl Progress {
    pub fn new(verb: &'static str, what: String, interval: Duration) -> Progress {
        let now = Instant::now();
        Progress {
            verb,
            what,
            total: None,
            done: 0,
            start: now,
            last: now,
            interval,
        }
    }

    /// The size once it is known (a download learns it from the first response).
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
    }

    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self.last.elapsed() >= self.interval {
            self.last = Instant::now();
            log::info!("{}", self.line());
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let mut line = format!("{} {}: {}", self.verb, self.what, human_bytes(self.done));
        if let Some(total) = self.total.filter(|&t| t > 0) {
            line += &format!(
                " of {} ({:.0}%)",
                human_bytes(total),
                self.done as f64 * 100.0 / total as f64
            );
        }
        line += &format!(", {}/s", human_bytes(rate as u64));
        if let Some(total) = self.total {
            if rate > 0.0 && total > self.done {
                line += &format!(", ETA {}s", ((total - self.done) as f64 / rate).ceil());
            }
        }
        line
    }
}

/// A byte count for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_size_rate_and_eta_when_total_known() {
        let mut p = Progress::new("downloading", "x".into(), Duration::from_secs(3600));
        p.start -= Duration::from_secs(2);
        p.set_total(4 << 20);
        p.add(1 << 20);
        let line = p.line();
        assert!(
            line.starts_with("downloading x: 1.0 MiB of 4.0 MiB (25%), "),
            "{line}"
        );
        assert!(line.contains("KiB/s, ETA "), "{line}");
    }
}
