//! BOLT11 checks: every way an invoice can disagree with the quote is refused, with a reason.

mod common;

use std::time::Duration;

use bitcoin::hashes::{sha256, Hash};
use common::{make, now, payee, Inv, REQ};
use fedai_lightning::invoice::{check, Commitment, Currency, Expected};
use fedai_lightning::{job_memo, LnError};

fn expected(payee_hex: &str) -> Expected<'_> {
    Expected {
        amount_msat: 21_000,
        payee: Some(payee_hex),
        currency: Currency::Simnet,
        commits_to: Commitment::Job(REQ),
        now_unix: now(),
    }
}

fn refused(r: Result<fedai_lightning::invoice::Checked, LnError>, why: &str) {
    match r {
        Err(LnError::Invoice(m)) => assert!(m.contains(why), "{m} (expected: {why})"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    }
}

#[test]
fn a_matching_invoice_passes_with_its_hash_and_payee() {
    let pk = payee([7; 32]);
    let c = check(&make(Inv::default()), &expected(&pk)).unwrap();
    assert_eq!(c.payment_hash, sha256::Hash::hash(&[9; 32]).to_byte_array());
    assert_eq!(c.payee, pk);
    assert!(c.expires_at > now() + 500);
    // A description hash that commits to the request passes too.
    let by_hash = make(Inv {
        memo: None,
        memo_hash: Some(job_memo(REQ)),
        ..Inv::default()
    });
    check(&by_hash, &expected(&pk)).unwrap();
}

#[test]
fn every_disagreement_is_refused() {
    let pk = payee([7; 32]);
    let e = expected(&pk);
    refused(
        check(
            &make(Inv {
                amount_msat: Some(21_001),
                ..Inv::default()
            }),
            &e,
        ),
        "the quote was",
    );
    refused(
        check(
            &make(Inv {
                amount_msat: None,
                ..Inv::default()
            }),
            &e,
        ),
        "no amount",
    );
    refused(
        check(
            &make(Inv {
                age: Duration::from_secs(700),
                ..Inv::default()
            }),
            &e,
        ),
        "expired",
    );
    refused(
        check(
            &make(Inv {
                currency: Currency::Bitcoin,
                ..Inv::default()
            }),
            &e,
        ),
        "expected Simnet",
    );
    refused(
        check(
            &make(Inv {
                key: [8; 32],
                ..Inv::default()
            }),
            &e,
        ),
        "not to the advertised node",
    );
    refused(
        check(
            &make(Inv {
                memo: Some(job_memo(&"cd".repeat(32))),
                ..Inv::default()
            }),
            &e,
        ),
        "does not commit",
    );
    refused(
        check(
            &make(Inv {
                memo: None,
                memo_hash: Some("something else".into()),
                ..Inv::default()
            }),
            &e,
        ),
        "does not commit",
    );
    // A tampered character breaks the checksum or the signature.
    let good = make(Inv::default());
    let mut bad: Vec<char> = good.chars().collect();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == 'q' { 'p' } else { 'q' };
    refused(
        check(&bad.into_iter().collect::<String>(), &e),
        "not a valid signed BOLT11",
    );
    refused(check("lnsb1garbage", &e), "not a valid signed BOLT11");
}
