//! The manifest parser on arbitrary bytes: it must return a manifest or an error, never panic, and a
//! manifest it accepts must pass its own validation and survive a round trip.
#![no_main]

use cpr::bundle::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::from_json(data, "fuzz") {
        let again = Manifest::from_json(&manifest.to_json(), "fuzz").expect("round trip");
        assert_eq!(again, manifest);
    }
});
