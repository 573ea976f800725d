//! BOLT11 checks: every way an invoice can disagree with the quote is refused, with a reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use fedai_lightning::invoice::{check, Currency, Expected};
use fedai_lightning::{job_memo, LnError};
use lightning_invoice::{InvoiceBuilder, PaymentSecret};

const REQ: &str = "abababababababababababababababababababababababababababababababab";

struct Inv {
    currency: Currency,
    amount_msat: Option<u64>,
    memo: Option<String>,
    memo_hash: Option<String>,
    age: Duration,
    expiry: Duration,
    key: [u8; 32],
}

impl Default for Inv {
    fn default() -> Self {
        Self {
            currency: Currency::Simnet,
            amount_msat: Some(21_000),
            memo: Some(job_memo(REQ)),
            memo_hash: None,
            age: Duration::ZERO,
            expiry: Duration::from_secs(600),
            key: [7; 32],
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn payee(key: [u8; 32]) -> String {
    let secp = Secp256k1::new();
    SecretKey::from_slice(&key)
        .unwrap()
        .public_key(&secp)
        .to_string()
}

fn make(i: Inv) -> String {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&i.key).unwrap();
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - i.age;
    let b = InvoiceBuilder::new(i.currency)
        .payment_hash(sha256::Hash::hash(b"preimage"))
        .payment_secret(PaymentSecret([3; 32]))
        .duration_since_epoch(ts)
        .min_final_cltv_expiry_delta(18)
        .expiry_time(i.expiry);
    let b = match (i.memo, i.memo_hash) {
        (Some(m), _) => b.description(m),
        (None, Some(h)) => b.description_hash(sha256::Hash::hash(h.as_bytes())),
        (None, None) => b.description(String::new()),
    };
    let signed = |b: InvoiceBuilder<_, _, _, _, _, _>| {
        b.build_signed(|m| secp.sign_ecdsa_recoverable(m, &sk))
            .unwrap()
            .to_string()
    };
    match i.amount_msat {
        Some(a) => signed(b.amount_milli_satoshis(a)),
        None => signed(b),
    }
}

fn expected(payee_hex: &str) -> Expected<'_> {
    Expected {
        amount_msat: 21_000,
        payee: Some(payee_hex),
        currency: Currency::Simnet,
        request_id_hex: REQ,
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
    assert_eq!(
        c.payment_hash,
        sha256::Hash::hash(b"preimage").to_byte_array()
    );
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
