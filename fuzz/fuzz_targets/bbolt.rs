//! The bbolt reader (`cpr etcd snapshot status`, verify, and the restore's consistency walk) on
//! arbitrary db files: an error or a status, never a panic, a hang or an allocation beyond the file.
//! The restore's check through page skeletons must give the verdict of the walk over the pages,
//! however the db was cut into chunks on its way; the streamed read of bucket `key`
//! (`etcd::stream`, a bundle's snapshot) must give the revisions the read in place gives, or fail
//! where it fails.
#![no_main]

use cpr::etcd::bbolt::Db;
use cpr::etcd::keys::{each_revision, Revision};
use cpr::etcd::skeleton::Skeletons;
use cpr::etcd::status::checked_revision;
use cpr::etcd::stream;
use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::FileExt;

fuzz_target!(|data: &[u8]| {
    // One scratch file per process, rewritten for each input: the reader works on files.
    thread_local! {
        static FILE: tempfile::NamedTempFile = tempfile::NamedTempFile::new().expect("temp file");
    }
    FILE.with(|file| {
        let handle = file.as_file();
        handle.set_len(0).expect("truncate");
        handle.write_all_at(data, 0).expect("write");
        let _ = cpr::etcd::snapshot_status(file.path());
        let Ok(db) = Db::open(handle, data.len() as u64) else {
            return;
        };
        let pages = checked_revision(&db, None).ok();
        for chunk in [4096, 64 << 10] {
            let mut skeletons = Skeletons::new(usize::MAX);
            for (i, part) in data.chunks(chunk).enumerate() {
                skeletons.record((i * chunk) as u64, part);
            }
            assert_eq!(checked_revision(&db, Some(&skeletons)).ok(), pages);
        }
        let mut in_place = Vec::new();
        let in_place = each_revision(file.path(), &|_| true, &mut |r| in_place.push(seen(r)))
            .ok()
            .map(|()| in_place);
        SCRATCH.with(|scratch| {
            let mut streamed = Vec::new();
            let streamed = stream::record(
                &mut &data[..],
                data.len() as u64,
                scratch.path(),
                &|_| true,
                &mut seen,
            )
            .ok()
            .and_then(|recorded| {
                recorded
                    .replay(&|_| true, &mut seen, &mut |s| streamed.push(s))
                    .ok()
            })
            .map(|()| streamed);
            assert_eq!(streamed, in_place);
        });
    });
});

thread_local! {
    static SCRATCH: tempfile::TempDir = tempfile::tempdir().expect("scratch dir");
}

/// What tells revisions apart: the etcd key, the mod revision and the value (none: a deletion).
#[derive(Clone, PartialEq, prost::Message)]
struct Seen {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    mod_revision: i64,
    #[prost(bytes = "vec", optional, tag = "3")]
    value: Option<Vec<u8>>,
}

fn seen(revision: Revision) -> Seen {
    match revision {
        Revision::Put {
            key,
            mod_revision,
            value,
        } => Seen {
            key,
            mod_revision,
            value: Some(value),
        },
        Revision::Delete { key } => Seen {
            key,
            mod_revision: 0,
            value: None,
        },
    }
}
