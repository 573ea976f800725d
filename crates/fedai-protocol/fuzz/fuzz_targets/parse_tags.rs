//! Arbitrary tags and content, *correctly signed*, so the fuzzer reaches the schema parsers past
//! the signature check. Input: a JSON object `{"k": kind, "c": content, "t": [[...], ...]}`.
#![no_main]

use fedai_protocol::nostr::prelude::*;
use fedai_protocol::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let kinds_list = fedai_protocol::kinds::FEDAI_KINDS;
    let kind = v["k"].as_u64().map(|k| kinds_list[(k as usize) % kinds_list.len()]).unwrap_or(5050);
    let content = v["c"].as_str().unwrap_or("").to_owned();
    let mut tags = Vec::new();
    for t in v["t"].as_array().into_iter().flatten() {
        let parts: Vec<String> = t.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect();
        if let Ok(tag) = Tag::parse(parts) {
            tags.push(tag);
        }
    }
    let worker = Keys::parse("c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add").unwrap();
    let customer = Keys::parse("7f7ff03d123792d6ac594bfa67bf6d0c0ab55b6b1fdb6249303fe861f1ccba9a").unwrap();
    let Ok(ev) = EventBuilder::new(Kind::from_u16(kind), content).tags(tags).finalize(&customer) else { return };
    let _ = validate::validate_event(&ev);
    let _ = JobRequest::from_event(&ev, Some(&worker));
    let _ = JobFeedback::from_event(&ev, Some(&worker));
    let _ = JobResult::from_event(&ev, Some(&worker));
    if let Ok(m) = MeteringRecord::from_event(&ev) {
        let _ = m.record.to_event(&worker);
    }
    let _ = Award::from_event(&ev);
    let _ = PaymentReceipt::from_event(&ev);
    if let Ok(ad) = CapabilityAd::from_event(&ev) {
        // Whatever parses must build again.
        ad.ad.to_event(&worker).expect("a parsed ad re-serialises");
    }
});
