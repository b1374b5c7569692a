//! The streaming bundle reader on arbitrary bytes. Random bytes rarely get past zstd, so the first
//! byte picks the mode: odd feeds the rest as a stored bundle (zstd frame parsing), even compresses
//! the rest first so the fuzzer explores the tar and manifest checks behind it.
#![no_main]

use cpr::bundle::{read_bundle, read_manifest, Discard, FrameChecksum};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let stored = if mode & 1 == 1 {
        rest.to_vec()
    } else {
        zstd::encode_all(rest, 1).expect("compressing in memory")
    };
    let manifest = read_manifest(&stored[..], "fuzz");
    if let Ok(full) = read_bundle(&stored[..], "fuzz", FrameChecksum::Check, &mut Discard) {
        // A bundle that reads whole has the manifest that inspect shows.
        assert_eq!(manifest.expect("the manifest of a readable bundle"), full);
    }
});
