//! The bbolt reader (`cpr etcd snapshot status`, verify, and the restore's consistency walk) on
//! arbitrary db files: an error or a status, never a panic, a hang or an allocation beyond the file.
#![no_main]

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
    });
});
