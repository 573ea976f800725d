//! Our BOLT11 decoder against the reference implementation (lightning-invoice): every field of
//! invoices it builds, on every chain, and the refusals a reader owes (tampering, a wrong key,
//! a bad checksum, mixed case).

mod common;

use std::str::FromStr;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Fe32, Fe32IterExt, Hrp};
use common::{make, Inv};
use fedai_lightning::bolt11::{decode, Currency, Description};
use lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescriptionRef};

fn same_as_reference(s: &str) {
    let ours = decode(s).unwrap_or_else(|e| panic!("{e}: {s}"));
    let theirs = Bolt11Invoice::from_str(s).unwrap();
    assert_eq!(
        common::reference_currency(ours.currency),
        theirs.currency(),
        "{s}"
    );
    assert_eq!(ours.amount_msat, theirs.amount_milli_satoshis(), "{s}");
    assert_eq!(ours.timestamp, theirs.duration_since_epoch().as_secs());
    assert_eq!(ours.expiry_secs, theirs.expiry_time().as_secs());
    assert_eq!(
        &ours.payment_hash[..],
        theirs.payment_hash().as_ref() as &[u8]
    );
    assert_eq!(
        ours.payee.to_string(),
        theirs.get_payee_pub_key().to_string()
    );
    match (&ours.description, theirs.description()) {
        (Description::Direct(a), Bolt11InvoiceDescriptionRef::Direct(b)) => {
            assert_eq!(a, &b.as_inner().0)
        }
        (Description::Hash(a), Bolt11InvoiceDescriptionRef::Hash(b)) => {
            assert_eq!(&a[..], AsRef::<[u8]>::as_ref(&b.0))
        }
        (a, _) => panic!("description differs: {a:?}"),
    }
}

#[test]
fn every_field_matches_the_reference_on_every_chain() {
    let chains = [
        Currency::Bitcoin,
        Currency::BitcoinTestnet,
        Currency::Signet,
        Currency::Regtest,
        Currency::Simnet,
    ];
    // Amounts that take each unit (m, u, n, p), none, and large ones.
    let amounts = [
        None,
        Some(1),
        Some(10),
        Some(1_000),
        Some(21_000),
        Some(100_000_000),
        Some(123_456_789_000),
        Some(2_100_000_000_000_000),
    ];
    for (i, currency) in chains.into_iter().enumerate() {
        for (j, amount_msat) in amounts.into_iter().enumerate() {
            let key = [(i * 16 + j + 1) as u8; 32];
            same_as_reference(&make(Inv {
                currency,
                amount_msat,
                key,
                ..Inv::default()
            }));
            same_as_reference(&make(Inv {
                currency,
                amount_msat,
                memo: None,
                memo_hash: Some(format!("zap {i} {j}")),
                expiry: std::time::Duration::from_secs(86_400 * 7),
                key,
                ..Inv::default()
            }));
        }
    }
    // A long, non-ASCII description.
    same_as_reference(&make(Inv {
        memo: Some("fed_AI ⚡ ".repeat(40)),
        ..Inv::default()
    }));
}

/// The invoice re-encoded with its human-readable part replaced (a valid checksum, the old
/// signature).
fn with_hrp(s: &str, hrp: &str) -> String {
    let c = CheckedHrpstring::new::<bech32::Bech32>(s).unwrap();
    let words: Vec<Fe32> = c.fe32_iter().collect();
    words
        .into_iter()
        .with_checksum::<bech32::Bech32>(&Hrp::parse(hrp).unwrap())
        .chars()
        .collect()
}

/// Without an `n` field the payee is the key recovered from the signature: a changed amount or
/// chain then "verifies" for some other key — never the real payee's, which is what
/// `invoice::check` compares with the worker's advertised node.
#[test]
fn a_changed_amount_or_chain_is_not_signed_by_the_payee() {
    let s = make(Inv::default()); // lnsb210n…
    let real = decode(&s).unwrap();
    assert_eq!(real.payee.to_string(), common::payee(Inv::default().key));
    assert_eq!(decode(&with_hrp(&s, "lnsb210n")).unwrap(), real);
    for hrp in ["lnsb2100n", "lnsb21u", "lnsb", "lnbcrt210n"] {
        match decode(&with_hrp(&s, hrp)) {
            Err(_) => {}
            Ok(forged) => assert_ne!(forged.payee, real.payee, "{hrp}"),
        }
    }
}

#[test]
fn malformed_invoices_are_refused_with_a_reason() {
    let s = make(Inv::default());
    let mut bad_checksum = s.clone();
    let last = bad_checksum.pop().unwrap();
    bad_checksum.push(if last == 'q' { 'p' } else { 'q' });
    assert!(decode(&bad_checksum).unwrap_err().contains("bech32"));
    let mut mixed = s.clone();
    mixed.replace_range(0..2, "LN");
    assert_eq!(decode(&mixed).unwrap_err(), "mixed case");
    assert!(decode(&s.to_uppercase()).is_ok(), "all upper case is fine");
    assert!(decode("lnsb1qqqqqq").is_err());
    assert!(decode("").is_err());
    assert!(decode(&with_hrp(&s, "lnsb210x"))
        .unwrap_err()
        .contains("unit"));
    assert!(decode(&with_hrp(&s, "lnsb015p"))
        .unwrap_err()
        .contains("amount"));
    assert!(decode(&with_hrp(&s, "lnxx210n"))
        .unwrap_err()
        .contains("currency"));
}

/// An `n` field names the payee: the signature must verify against it (no recovery); an `n`
/// naming another key than the signer's is refused, as the reference refuses it.
#[test]
fn the_payee_field_is_checked_not_trusted() {
    use bitcoin::hashes::{sha256, Hash};
    use bitcoin::secp256k1::{Secp256k1, SecretKey};
    use lightning_invoice::{InvoiceBuilder, PaymentSecret};
    let secp = Secp256k1::new();
    let signer = SecretKey::from_slice(&[5; 32]).unwrap();
    let other = SecretKey::from_slice(&[6; 32]).unwrap();
    let build = |n: &SecretKey| {
        InvoiceBuilder::new(lightning_invoice::Currency::Simnet)
            .payment_hash(sha256::Hash::hash(&[1; 32]))
            .payment_secret(PaymentSecret([3; 32]))
            .current_timestamp()
            .min_final_cltv_expiry_delta(18)
            .description("x".into())
            .amount_milli_satoshis(5_000)
            .payee_pub_key(n.public_key(&secp))
            .build_signed(|m| secp.sign_ecdsa_recoverable(m, &signer))
            .unwrap()
            .to_string()
    };
    let good = build(&signer);
    same_as_reference(&good);
    assert_eq!(
        decode(&good).unwrap().payee.to_string(),
        signer.public_key(&secp).to_string()
    );
    let lying = build(&other);
    assert!(
        Bolt11Invoice::from_str(&lying).is_err(),
        "the reference refuses it"
    );
    assert!(decode(&lying).unwrap_err().contains("signature"));
}
