//! Anyone can check a payment receipt against its invoice: a real invoice and preimage
//! re-used for another job, another worker or another amount are refused.

mod common;

use common::{make, Inv, REQ};
use fedai_lightning::invoice::{check_receipt, Currency, ReceiptClaim};
use fedai_lightning::zap::{self, ZapFor};
use fedai_lightning::LnError;
use nostr::prelude::{EventId, Keys};
use sha2::{Digest, Sha256};

fn refused<T: std::fmt::Debug>(r: Result<T, LnError>, why: &str) {
    match r {
        Err(LnError::Invoice(m)) => assert!(m.contains(why), "{m} (expected: {why})"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

#[test]
fn a_receipt_counts_only_for_the_job_its_invoice_commits_to() {
    let request_id = EventId::from_hex(REQ).unwrap();
    let worker = Keys::generate().public_key();
    let bolt11 = make(Inv::default());
    let hash = hex::encode(Sha256::digest([9u8; 32]));
    let claim = ReceiptClaim {
        bolt11: &bolt11,
        amount_msat: 21_000,
        payment_hash_hex: &hash,
        request_id,
        worker,
        zap_request: None,
        payee: None,
    };
    let c = check_receipt(&claim).unwrap();
    assert_eq!(c.currency, Currency::Simnet);
    assert!(!c.by_zap);
    // The same invoice and preimage replayed as the receipt of another job.
    let other = EventId::from_slice(&[0xcd; 32]).unwrap();
    refused(
        check_receipt(&ReceiptClaim {
            request_id: other,
            ..claim
        }),
        "does not commit",
    );
    refused(
        check_receipt(&ReceiptClaim {
            amount_msat: 42_000,
            ..claim
        }),
        "the quote was",
    );
    let wrong = hex::encode([1u8; 32]);
    refused(
        check_receipt(&ReceiptClaim {
            payment_hash_hex: &wrong,
            ..claim
        }),
        "payment hash",
    );
}

#[test]
fn a_zapped_receipt_counts_only_for_the_zapped_job_and_worker() {
    let (customer, worker) = (Keys::generate(), Keys::generate().public_key());
    let request_id = EventId::from_hex(REQ).unwrap();
    let zr = zap::request(
        &customer,
        &ZapFor {
            worker,
            request_id,
            amount_msat: 21_000,
            relays: vec!["ws://127.0.0.1:1".into()],
            lnurl: "lnurl1x".into(),
        },
    )
    .unwrap();
    let json = zr.as_json();
    let bolt11 = make(Inv {
        memo: None,
        memo_hash: Some(json.clone()),
        ..Inv::default()
    });
    let hash = hex::encode(Sha256::digest([9u8; 32]));
    let claim = ReceiptClaim {
        bolt11: &bolt11,
        amount_msat: 21_000,
        payment_hash_hex: &hash,
        request_id,
        worker,
        zap_request: Some(&json),
        payee: None,
    };
    assert!(check_receipt(&claim).unwrap().by_zap);
    refused(
        check_receipt(&ReceiptClaim {
            worker: Keys::generate().public_key(),
            ..claim
        }),
        "not a zap of this job to this worker",
    );
    refused(
        check_receipt(&ReceiptClaim {
            request_id: EventId::from_slice(&[0xcd; 32]).unwrap(),
            ..claim
        }),
        "not a zap of this job to this worker",
    );
    // Without the zap request, the invoice commits to nothing this receipt names.
    refused(
        check_receipt(&ReceiptClaim {
            zap_request: None,
            ..claim
        }),
        "does not commit",
    );
}

/// A customer cannot pay an invoice of its own node (committing to the job, for the quoted
/// amount) and present it as the receipt of a payment to the worker: the invoice must be payable
/// to the node the worker advertised.
#[test]
fn a_receipt_for_an_invoice_of_another_node_is_refused() {
    let request_id = EventId::from_hex(REQ).unwrap();
    let worker = Keys::generate().public_key();
    let workers_node = common::payee([7; 32]);
    let forged = make(Inv {
        key: [8; 32], // the customer's own node
        ..Inv::default()
    });
    let hash = hex::encode(Sha256::digest([9u8; 32]));
    let claim = ReceiptClaim {
        bolt11: &forged,
        amount_msat: 21_000,
        payment_hash_hex: &hash,
        request_id,
        worker,
        zap_request: None,
        payee: Some(&workers_node),
    };
    refused(check_receipt(&claim), "not to the advertised node");
    let honest = make(Inv::default());
    assert!(check_receipt(&ReceiptClaim {
        bolt11: &honest,
        ..claim
    })
    .is_ok());
}
