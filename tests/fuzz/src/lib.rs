//! # fedai-fuzz
//!
//! One function per parser that takes bytes from the network, each of which must return (an
//! error is fine) and never panic, loop or allocate without a bound, whatever it is fed:
//!
//! | target | what reads it | input |
//! |---|---|---|
//! | `event` | relay, worker, client: every fed_AI parser | an event's JSON |
//! | `signed` | the same parsers past the signature check | `{"k": kind, "c": content, "t": [[tag…]…]}`, signed here |
//! | `bolt11` | the customer before paying; `fedai receipt` | a BOLT11 string |
//! | `lnurl` | zaps: LNURL-pay answers (LUD-06), lightning addresses | status byte + JSON body |
//! | `lnd` | the worker and payer: lnd's REST answers and JSON-line streams | cut byte + bytes |
//! | `zap` | the worker: zap requests and receipts (NIP-57) | `{"r": zap request JSON, "t": receipt tags}` |
//!
//! Two drivers: `fedai-fuzz` (this crate's binary: seeds + random mutations for a bounded time,
//! on stable Rust, run by CI), and libFuzzer harnesses in `libfuzzer/` for coverage-guided runs
//! (`cargo +nightly fuzz run --fuzz-dir tests/fuzz/libfuzzer <target>`).

use std::sync::OnceLock;

use fedai_lightning::{invoice, lnd, lnurl, zap};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::*;

/// A target: a name and the function that must not panic.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("event", event),
    ("signed", signed),
    ("bolt11", bolt11),
    ("lnurl", lnurl_answer),
    ("lnd", lnd_answer),
    ("zap", zap_receipt),
];

fn worker_keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        Keys::parse("c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add")
            .expect("valid key")
    })
}

fn customer_keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| {
        Keys::parse("7f7ff03d123792d6ac594bfa67bf6d0c0ab55b6b1fdb6249303fe861f1ccba9a")
            .expect("valid key")
    })
}

/// Every fed_AI parser over one event, as the relay, the worker and the client run them.
fn parse_all(ev: &Event) {
    let worker = worker_keys();
    let _ = validate::validate_event(ev);
    let _ = validate::validate_verified(ev);
    let _ = JobRequest::from_event(ev, Some(worker));
    let _ = JobFeedback::from_event(ev, Some(worker));
    let _ = JobResult::from_event(ev, Some(worker));
    if let Ok(m) = MeteringRecord::from_event(ev) {
        let _ = m.record.to_event(worker);
    }
    let _ = Award::from_event(ev);
    if let Ok(r) = PaymentReceipt::from_event(ev) {
        let _ = invoice::check_receipt(&invoice::ReceiptClaim {
            bolt11: &r.receipt.bolt11,
            amount_msat: r.receipt.amount_msat,
            payment_hash_hex: &r.receipt.payment_hash,
            request_id: r.receipt.request_id,
            worker: r.receipt.worker,
            zap_request: r.receipt.zap_request.as_deref(),
            payee: None,
        });
    }
    if let Ok(ad) = CapabilityAd::from_event(ev) {
        // Whatever parses must build again.
        ad.ad.to_event(worker).expect("a parsed ad re-serialises");
    }
    let _ = Freshness::default().check(ev, Timestamp::from_secs(1_800_000_000));
}

/// An event's JSON from the network.
pub fn event(data: &[u8]) {
    if let Ok(ev) = Event::from_json(data) {
        parse_all(&ev);
    }
}

/// Tags from a JSON array of string arrays (what the fuzzer writes), as tags.
fn tags_of(v: &serde_json::Value) -> Vec<Tag> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let parts: Vec<String> = t
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect();
            Tag::parse(parts).ok()
        })
        .collect()
}

/// Arbitrary tags and content, *correctly signed* by a customer, so the schema parsers past
/// the signature check are reached.
pub fn signed(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let all = kinds::FEDAI_KINDS;
    let kind = v["k"]
        .as_u64()
        .map(|k| all[(k as usize) % all.len()])
        .unwrap_or(kinds::JOB_REQUEST);
    let content = v["c"].as_str().unwrap_or("").to_owned();
    let builder = EventBuilder::new(Kind::from_u16(kind), content).tags(tags_of(&v["t"]));
    if let Ok(ev) = builder.finalize(customer_keys()) {
        parse_all(&ev);
    }
}

/// A BOLT11 string, checked as the customer checks a quote's invoice and as anyone checks a
/// receipt.
pub fn bolt11(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let job = "0".repeat(64);
    for commits_to in [
        invoice::Commitment::Job(&job),
        invoice::Commitment::DescriptionHash([0; 32]),
    ] {
        let _ = invoice::check(
            s,
            &invoice::Expected {
                amount_msat: 1_000,
                payee: Some("02"),
                currency: invoice::Currency::Simnet,
                commits_to,
                now_unix: 1_800_000_000,
            },
        );
    }
    let _ = invoice::check_receipt(&invoice::ReceiptClaim {
        bolt11: s,
        amount_msat: 1_000,
        payment_hash_hex: &job,
        request_id: EventId::from_byte_array([0; 32]),
        worker: worker_keys().public_key(),
        zap_request: None,
        payee: None,
    });
}

/// An LNURL service's answer: the first byte picks the HTTP status, the rest is the body.
pub fn lnurl_answer(data: &[u8]) {
    let Some((&st, body)) = data.split_first() else {
        return;
    };
    let status = [200u16, 200, 404, 500, 302][st as usize % 5];
    let endpoint = url::Url::parse("https://example.com/.well-known/lnurlp/w").expect("valid");
    if let Ok(json) = lnurl::parse_answer(status, body) {
        let _ = lnurl::parse_invoice(&json);
        let _ = lnurl::parse_pay_params(endpoint, json);
    }
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = lnurl::endpoint(s);
    }
}

/// lnd's answers: the first byte is where the stream is cut into two chunks.
pub fn lnd_answer(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    lnd::decode_any(rest, cut as usize);
}

/// A zap request (`r`, as a JSON string) and a zap receipt signed by the LNURL service with
/// the fuzzed tags (`t`), checked as the worker checks them.
pub fn zap_receipt(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Some(r) = v["r"].as_str() {
        let _ = zap::parse_request(r);
        let _ = zap::check_request(r, 1_000);
    }
    let server = customer_keys();
    let builder = EventBuilder::new(Kind::ZapReceipt, "").tags(tags_of(&v["t"]));
    let Ok(ev) = builder.finalize(server) else {
        return;
    };
    let expect = zap::Expect {
        server: server.public_key(),
        worker: worker_keys().public_key(),
        request_id: EventId::from_byte_array([0; 32]),
        quote_id: None,
        min_amount_msat: 1_000,
        currency: invoice::Currency::Simnet,
    };
    let _ = zap::verify_receipt(&ev, &expect);
}
