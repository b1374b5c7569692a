//! The bbolt reader (`cpr etcd snapshot status`, verify, and the restore's consistency walk) on
//! arbitrary db files: an error or a status, never a panic, a hang or an allocation beyond the file.
//! The restore's check through page skeletons must give the verdict of the walk over the pages,
//! however the db was cut into chunks on its way.
#![no_main]

use cpr::etcd::bbolt::Db;
use cpr::etcd::skeleton::Skeletons;
use cpr::etcd::status::checked_revision;
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
    });
});
