//! The bbolt reader (`cpr etcd snapshot status`, verify, and the restore's consistency walk) on
//! arbitrary db files: an error or a status, never a panic, a hang or an allocation beyond the file.
//! The restore's check through page skeletons must give the verdict of the walk over the pages,
//! however the db was cut into chunks on its way; the streamed read of bucket `key`
//! (`etcd::stream`, a bundle's snapshot) must give the revisions the read in place gives, and the
//! streamed status (`cpr verify`) the status in place, or fail where they fail.
#![no_main]

use cpr::etcd::bbolt::Db;
use cpr::etcd::keys::{each_revision, Record};
use cpr::etcd::skeleton::Skeletons;
use cpr::etcd::status::{checked_revision, streamed_status, Tally};
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
        let status = cpr::etcd::snapshot_status(file.path()).ok();
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
        let in_place = each_revision(file.path(), &|_| true, &mut |r| {
            in_place.push(Record::from(r))
        })
        .ok()
        .map(|()| in_place);
        SCRATCH.with(|scratch| {
            let mut streamed = Vec::new();
            let streamed_status = stream::record(
                &mut &data[..],
                data.len() as u64,
                scratch.path(),
                &mut Tally::of_leaf,
            )
            .ok()
            .and_then(|recorded| streamed_status(&recorded).ok());
            assert_eq!(streamed_status, status);
            let streamed = stream::record(
                &mut &data[..],
                data.len() as u64,
                scratch.path(),
                &mut stream::revisions(&|_| true, &mut Record::from),
            )
            .ok()
            .and_then(|recorded| {
                recorded
                    .replay(&|_| true, &mut Record::from, &mut |s| streamed.push(s))
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
