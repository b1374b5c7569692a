//! Object names: `<cluster>/<node>/<UTC YYYYMMDDTHHMMSSZ>.tar.zst[.age]`, so that names sort by time.

use std::fmt;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::Error;

pub const PLAIN_SUFFIX: &str = ".tar.zst";
pub const ENCRYPTED_SUFFIX: &str = ".tar.zst.age";
pub const SIGNATURE_SUFFIX: &str = ".minisig";

const STAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BundleName {
    pub cluster: String,
    pub node: String,
    /// `YYYYMMDDTHHMMSSZ`; sorts like the time it stands for.
    pub stamp: String,
    pub encrypted: bool,
}

/// `at` as a bundle name's stamp, `YYYYMMDDTHHMMSSZ` in UTC; also what names a file kept aside.
pub fn stamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(STAMP)
        .expect("the stamp format has only numeric fields")
}

impl BundleName {
    pub fn new(
        cluster: &str,
        node: &str,
        at: OffsetDateTime,
        encrypted: bool,
    ) -> Result<Self, Error> {
        let name = BundleName {
            cluster: cluster.to_string(),
            node: node.to_string(),
            stamp: stamp(at),
            encrypted,
        };
        name.check()?;
        Ok(name)
    }

    pub fn parse(object: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Name {
            name: object.to_string(),
            why: why.to_string(),
        };
        let mut parts = object.split('/');
        let (Some(cluster), Some(node), Some(file), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected <cluster>/<node>/<stamp>.tar.zst[.age]"));
        };
        let (stamp, encrypted) = if let Some(stamp) = file.strip_suffix(ENCRYPTED_SUFFIX) {
            (stamp, true)
        } else if let Some(stamp) = file.strip_suffix(PLAIN_SUFFIX) {
            (stamp, false)
        } else {
            return Err(bad("the file name must end in .tar.zst or .tar.zst.age"));
        };
        let name = BundleName {
            cluster: cluster.to_string(),
            node: node.to_string(),
            stamp: stamp.to_string(),
            encrypted,
        };
        name.check()?;
        Ok(name)
    }

    /// The directory-like prefix that holds every bundle of one node, with its `index.json`.
    pub fn node_prefix(cluster: &str, node: &str) -> String {
        format!("{cluster}/{node}/")
    }

    pub fn created(&self) -> OffsetDateTime {
        PrimitiveDateTime::parse(&self.stamp, STAMP)
            .expect("checked when the name was made")
            .assume_utc()
    }

    pub fn signature_name(&self) -> String {
        format!("{self}{SIGNATURE_SUFFIX}")
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |why: String| Error::Name {
            name: self.to_string(),
            why,
        };
        for (what, label) in [("cluster", &self.cluster), ("node", &self.node)] {
            if !is_label(label) {
                return Err(bad(format!(
                    "the {what} name {label:?} must be 1-253 characters of a-z, A-Z, 0-9, '.', '-', '_', starting with a letter or digit"
                )));
            }
        }
        if PrimitiveDateTime::parse(&self.stamp, STAMP).is_err() {
            return Err(bad(format!(
                "{:?} is not a UTC stamp YYYYMMDDTHHMMSSZ",
                self.stamp
            )));
        }
        Ok(())
    }
}

impl fmt::Display for BundleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = if self.encrypted {
            ENCRYPTED_SUFFIX
        } else {
            PLAIN_SUFFIX
        };
        write!(f, "{}/{}/{}{suffix}", self.cluster, self.node, self.stamp)
    }
}

fn is_label(label: &str) -> bool {
    (1..=253).contains(&label.len())
        && label.as_bytes()[0].is_ascii_alphanumeric()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let early =
            BundleName::new("prod", "master0", datetime!(2026-01-02 03:04:05 UTC), false).unwrap();
        let late = BundleName::new(
            "prod",
            "master0",
            datetime!(2026-11-24 08:00:00 +02:00),
            true,
        )
        .unwrap();
        assert_eq!(early.to_string(), "prod/master0/20260102T030405Z.tar.zst");
        assert_eq!(
            late.to_string(),
            "prod/master0/20261124T060000Z.tar.zst.age"
        );
        assert_eq!(BundleName::parse(&late.to_string()).unwrap(), late);
        assert!(early.to_string() < late.to_string());
        assert_eq!(late.created(), datetime!(2026-11-24 06:00:00 UTC));
        assert_eq!(
            late.signature_name(),
            "prod/master0/20261124T060000Z.tar.zst.age.minisig"
        );
    }

    #[test]
    fn rejects_names_that_could_escape_or_mislead() {
        for bad in [
            "../master0/20260102T030405Z.tar.zst",
            "prod/master0/x/20260102T030405Z.tar.zst",
            "prod/master0/20260102T030405Z.tar",
            "prod/master0/2026-01-02.tar.zst",
            "prod//20260102T030405Z.tar.zst",
            "prod/.hidden/20260102T030405Z.tar.zst",
        ] {
            assert!(BundleName::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
