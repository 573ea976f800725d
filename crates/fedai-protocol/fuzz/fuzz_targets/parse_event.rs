//! Arbitrary bytes as an event from the network: decoding and every parser must never panic.
#![no_main]

use fedai_protocol::nostr::prelude::*;
use fedai_protocol::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ev) = Event::from_json(data) else { return };
    let keys = Keys::parse("c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add").unwrap();
    let _ = validate::validate_event(&ev);
    let _ = JobRequest::from_event(&ev, Some(&keys));
    let _ = JobFeedback::from_event(&ev, Some(&keys));
    let _ = JobResult::from_event(&ev, Some(&keys));
    let _ = MeteringRecord::from_event(&ev);
    let _ = Award::from_event(&ev);
    let _ = PaymentReceipt::from_event(&ev);
    let _ = CapabilityAd::from_event(&ev);
    let _ = Freshness::default().check(&ev, Timestamp::from_secs(1_800_000_000));
});
