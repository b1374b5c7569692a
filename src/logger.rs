//! The `log` facade's sink: plain lines on stderr, readable on a serial console.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        wanted(metadata.level(), metadata.target(), log::max_level())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        // One write per line so that concurrent threads never interleave within a line.
        let line = format!("cpr: {level}: {}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// cpr's own records up to `max`; a dependency's (rustls, reqwest, hyper, h2, tonic: any target outside
/// the `cpr` crate) only at warn and above, so `CPR_LOG=debug` shows cpr's steps, not TLS handshakes.
fn wanted(level: Level, target: &str, max: LevelFilter) -> bool {
    let ours = target == "cpr" || target.starts_with("cpr::");
    level <= max && (ours || level <= Level::Warn)
}

/// `CPR_LOG` = error|warn|info|debug|trace; info by default. Dependencies log at warn and above only.
pub fn init() {
    let level = std::env::var("CPR_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_log_at_warn_and_above_only_whatever_the_level() {
        let max = LevelFilter::Trace;
        assert!(wanted(Level::Debug, "cpr::store::http", max));
        assert!(wanted(Level::Trace, "cpr", max));
        assert!(!wanted(Level::Debug, "rustls::client::hs", max));
        assert!(!wanted(Level::Info, "reqwest::connect", max));
        assert!(
            !wanted(Level::Trace, "cprx", max),
            "a crate named like cpr is not cpr"
        );
        assert!(wanted(Level::Warn, "rustls::conn", max));
        assert!(wanted(Level::Error, "h2::proto", max));
        assert!(!wanted(Level::Warn, "rustls::conn", LevelFilter::Error));
        assert!(!wanted(Level::Debug, "cpr::boot", LevelFilter::Info));
    }
}
