//! The DHCP reply parser on arbitrary bytes, as a hostile or broken server on the recovery network
//! could send them: it must return a lease or nothing, never panic, and a hostname it keeps must be one
//! `sethostname` and Kubernetes accept.
#![no_main]

use cpr::boot::dhcp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transaction id the client would wait for is the one in the packet, so the fuzzer gets past
    // the header check and explores the options.
    let xid = data
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if let Some((_, lease)) = dhcp::parse(data, xid) {
        if let Some(name) = &lease.hostname {
            assert!(
                !name.is_empty() && name.len() <= dhcp::HOSTNAME_MAX,
                "{name:?}"
            );
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                "{name:?}"
            );
            assert_eq!(
                dhcp::hostname(name.as_bytes()).as_deref(),
                Ok(name.as_str())
            );
        }
        assert!(lease.prefix <= 32);
    }
});
