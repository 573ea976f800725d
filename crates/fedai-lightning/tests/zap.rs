//! NIP-57 zaps of a job request: a receipt counts only when every check passes, and each
//! forgery is refused with its reason.

mod common;

use common::{make, now, Inv};
use fedai_lightning::invoice::{check, Commitment, Currency, Expected};
use fedai_lightning::zap::{self, Expect, ZapFor};
use fedai_lightning::LnError;
use nostr::prelude::{Event, EventId, FinalizeEvent, Keys, Tag, Timestamp};
use sha2::{Digest, Sha256};

struct Fixture {
    customer: Keys,
    worker: Keys,
    server: Keys,
    request_id: EventId,
}

impl Fixture {
    fn new() -> Self {
        Self {
            customer: Keys::generate(),
            worker: Keys::generate(),
            server: Keys::generate(),
            request_id: EventId::from_slice(&[0xab; 32]).unwrap(),
        }
    }

    fn zap_for(&self, amount_msat: u64) -> ZapFor {
        ZapFor {
            worker: self.worker.public_key(),
            request_id: self.request_id,
            amount_msat,
            relays: vec!["ws://127.0.0.1:7777".into()],
            lnurl: fedai_lightning::lnurl::encode(
                &url::Url::parse("http://127.0.0.1:9/.well-known/lnurlp/worker").unwrap(),
            ),
        }
    }

    fn expect(&self, min_amount_msat: u64) -> Expect {
        Expect {
            server: self.server.public_key(),
            worker: self.worker.public_key(),
            request_id: self.request_id,
            quote_id: None,
            min_amount_msat,
            currency: Currency::Simnet,
        }
    }

    /// A zap request and the invoice an honest LNURL service issues for it.
    fn request_and_invoice(&self, amount_msat: u64) -> (Event, String) {
        let zr = zap::request(&self.customer, &self.zap_for(amount_msat)).unwrap();
        let inv = make(Inv {
            amount_msat: Some(amount_msat),
            memo: None,
            memo_hash: Some(zr.as_json()),
            ..Inv::default()
        });
        (zr, inv)
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, LnError>, why: &str) {
    match r {
        Err(LnError::Zap(m)) => assert!(m.contains(why), "{m} (expected: {why})"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

#[test]
fn an_honest_zap_passes_and_names_its_payment() {
    let f = Fixture::new();
    let (zr, inv) = f.request_and_invoice(21_000);
    // The customer's check of the invoice before paying: it commits to the zap request.
    let h: [u8; 32] = Sha256::digest(zr.as_json().as_bytes()).into();
    check(
        &inv,
        &Expected {
            amount_msat: 21_000,
            payee: None,
            currency: Currency::Simnet,
            commits_to: Commitment::DescriptionHash(h),
            now_unix: now(),
        },
    )
    .unwrap();
    // The LNURL service accepts the zap request for this amount, and no other.
    zap::check_request(&zr.as_json(), 21_000).unwrap();
    refused(zap::check_request(&zr.as_json(), 20_000), "amount");
    let receipt = zap::receipt(&f.server, &zr, &inv, Some(&[9; 32]), Timestamp::now()).unwrap();
    let z = zap::verify_receipt(&receipt, &f.expect(21_000)).unwrap();
    assert_eq!(z.amount_msat, 21_000);
    assert_eq!(z.payer, f.customer.public_key());
    assert_eq!(z.payment_hash, <[u8; 32]>::from(Sha256::digest([9u8; 32])));
    assert_eq!(z.zap_request, zr.as_json());
}

#[test]
fn every_forgery_is_refused() {
    let f = Fixture::new();
    let (zr, inv) = f.request_and_invoice(21_000);
    let now = Timestamp::now();

    // Signed by someone other than the worker's LNURL service.
    let r = zap::receipt(&Keys::generate(), &zr, &inv, None, now).unwrap();
    refused(zap::verify_receipt(&r, &f.expect(21_000)), "not signed by");

    // Less than the quote.
    let r = zap::receipt(&f.server, &zr, &inv, None, now).unwrap();
    refused(zap::verify_receipt(&r, &f.expect(21_001)), "the quote was");

    // Another chain.
    let mut e = f.expect(21_000);
    e.currency = Currency::Bitcoin;
    refused(zap::verify_receipt(&r, &e), "expected Bitcoin");

    // For another job.
    let mut e = f.expect(21_000);
    e.request_id = EventId::from_slice(&[0xcd; 32]).unwrap();
    refused(zap::verify_receipt(&r, &e), "not for this worker and job");

    // An invoice whose description hash commits to something else.
    let other = make(Inv {
        memo: None,
        memo_hash: Some("something else".into()),
        ..Inv::default()
    });
    let r = zap::receipt(&f.server, &zr, &other, None, now).unwrap();
    refused(
        zap::verify_receipt(&r, &f.expect(21_000)),
        "does not commit to the zap request",
    );

    // An invoice for another amount than the zap request names.
    let (zr_big, _) = f.request_and_invoice(50_000);
    let inv_small = make(Inv {
        amount_msat: Some(21_000),
        memo: None,
        memo_hash: Some(zr_big.as_json()),
        ..Inv::default()
    });
    let r = zap::receipt(&f.server, &zr_big, &inv_small, None, now).unwrap();
    refused(
        zap::verify_receipt(&r, &f.expect(21_000)),
        "not the zap request's",
    );

    // A preimage that is not the invoice's.
    let r = zap::receipt(&f.server, &zr, &inv, Some(&[1; 32]), now).unwrap();
    refused(
        zap::verify_receipt(&r, &f.expect(21_000)),
        "preimage does not match",
    );

    // A zap request whose signature does not hold (its content changed after signing), with
    // an invoice that commits to the altered JSON.
    let mut forged: serde_json::Value = serde_json::from_str(&zr.as_json()).unwrap();
    forged["content"] = "changed".into();
    let forged = forged.to_string();
    let inv_forged = make(Inv {
        memo: None,
        memo_hash: Some(forged.clone()),
        ..Inv::default()
    });
    let r = nostr::prelude::EventBuilder::new(nostr::prelude::Kind::ZapReceipt, "")
        .tags([
            Tag::public_key(f.worker.public_key()),
            Tag::event(f.request_id),
            Tag::parse(["bolt11", inv_forged.as_str()]).unwrap(),
            Tag::parse(["description", forged.as_str()]).unwrap(),
        ])
        .finalize(&f.server)
        .unwrap();
    refused(
        zap::verify_receipt(&r, &f.expect(21_000)),
        "zap request's id or signature",
    );

    // Not a receipt at all.
    refused(zap::verify_receipt(&zr, &f.expect(21_000)), "kind 9735");
}

#[test]
fn an_lnurl_service_refuses_bad_zap_requests() {
    let f = Fixture::new();
    refused(zap::check_request("{}", 1), "not an event");
    let mut z = f.zap_for(1_000);
    z.relays.clear();
    let zr = zap::request(&f.customer, &z).unwrap();
    refused(zap::check_request(&zr.as_json(), 1_000), "no relays");
    let note = nostr::prelude::EventBuilder::new(nostr::prelude::Kind::TextNote, "hi")
        .finalize(&f.customer)
        .unwrap();
    refused(zap::check_request(&note.as_json(), 1_000), "kind 9734");
}

/// NIP-90 clients zap the `payment-required` feedback that carries the amount: such a zap pays
/// the job when the worker names that feedback as its quote, and no other job.
#[test]
fn a_zap_of_the_quote_feedback_pays_its_job_only() {
    let f = Fixture::new();
    let quote = EventId::from_slice(&[0xcd; 32]).unwrap();
    let zr = zap::request(
        &f.customer,
        &ZapFor {
            request_id: quote,
            ..f.zap_for(21_000)
        },
    )
    .unwrap();
    let inv = make(Inv {
        amount_msat: Some(21_000),
        memo: None,
        memo_hash: Some(zr.as_json()),
        ..Inv::default()
    });
    let receipt = zap::receipt(&f.server, &zr, &inv, None, Timestamp::now()).unwrap();
    // Without the quote's id, a zap of another event is not for this job.
    refused(
        zap::verify_receipt(&receipt, &f.expect(21_000)),
        "not for this worker and job",
    );
    let mut e = f.expect(21_000);
    e.quote_id = Some(quote);
    assert_eq!(
        zap::verify_receipt(&receipt, &e).unwrap().amount_msat,
        21_000
    );
    // The quote of another job does not pay this one.
    e.quote_id = Some(EventId::from_slice(&[0xee; 32]).unwrap());
    refused(
        zap::verify_receipt(&receipt, &e),
        "not for this worker and job",
    );
}

/// Seeds for the `bolt11` and `zap` fuzz targets (tests/fuzz): signed invoices and a zap
/// receipt's tags with the keys those targets use. Run with `FEDAI_WRITE_SEEDS=1` to rewrite.
#[test]
#[ignore = "writes fuzz seeds"]
fn write_fuzz_seeds() {
    let Some(_) = std::env::var_os("FEDAI_WRITE_SEEDS") else {
        return;
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/seeds");
    let key = |hex: &str| Keys::parse(hex).unwrap();
    let worker = key("c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add");
    let server = key("7f7ff03d123792d6ac594bfa67bf6d0c0ab55b6b1fdb6249303fe861f1ccba9a");
    let f = Fixture {
        customer: Keys::generate(),
        worker,
        server,
        request_id: EventId::from_slice(&[0; 32]).unwrap(),
    };
    let (zr, inv) = f.request_and_invoice(1_000);
    let receipt = zap::receipt(&f.server, &zr, &inv, Some(&[9; 32]), Timestamp::now()).unwrap();
    let tags: Vec<Vec<String>> = receipt.tags.iter().map(|t| t.as_slice().to_vec()).collect();
    let zap_seed = serde_json::json!({"r": zr.as_json(), "t": tags});
    std::fs::create_dir_all(root.join("zap")).unwrap();
    std::fs::write(root.join("zap/receipt.json"), zap_seed.to_string()).unwrap();
    std::fs::create_dir_all(root.join("bolt11")).unwrap();
    std::fs::write(root.join("bolt11/zap-invoice.txt"), &inv).unwrap();
    let job = make(Inv {
        amount_msat: Some(1_000),
        memo: Some(fedai_lightning::job_memo(&"0".repeat(64))),
        ..Inv::default()
    });
    std::fs::write(root.join("bolt11/job-invoice.txt"), job).unwrap();
    let no_amount = make(Inv {
        amount_msat: None,
        ..Inv::default()
    });
    std::fs::write(root.join("bolt11/no-amount.txt"), no_amount).unwrap();
}

/// A zap request naming two jobs (or two recipients) pays for none: each would otherwise take
/// the same receipt as its payment.
#[test]
fn one_zap_pays_for_one_job_only() {
    let f = Fixture::new();
    let other_job = EventId::from_slice(&[0xcd; 32]).unwrap();
    let zr = nostr::prelude::EventBuilder::new(nostr::prelude::Kind::ZapRequest, "")
        .tags([
            Tag::public_key(f.worker.public_key()),
            Tag::event(f.request_id),
            Tag::event(other_job),
            Tag::parse(["relays", "ws://127.0.0.1:7777"]).unwrap(),
            Tag::parse(["amount", "21000"]).unwrap(),
        ])
        .finalize(&f.customer)
        .unwrap();
    let inv = make(Inv {
        amount_msat: Some(21_000),
        memo: None,
        memo_hash: Some(zr.as_json()),
        ..Inv::default()
    });
    let r = zap::receipt(&f.server, &zr, &inv, None, Timestamp::now()).unwrap();
    refused(
        zap::verify_receipt(&r, &f.expect(21_000)),
        "not for this worker and job",
    );
    let mut e = f.expect(21_000);
    e.request_id = other_job;
    refused(zap::verify_receipt(&r, &e), "not for this worker and job");
}
