//! Signed test invoices with a throwaway key.

#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use fedai_lightning::invoice::Currency;
use fedai_lightning::job_memo;
use lightning_invoice::{InvoiceBuilder, PaymentSecret};

pub const REQ: &str = "abababababababababababababababababababababababababababababababab";

pub struct Inv {
    pub currency: Currency,
    pub amount_msat: Option<u64>,
    pub memo: Option<String>,
    /// The description hash is SHA-256 of this.
    pub memo_hash: Option<String>,
    pub age: Duration,
    pub expiry: Duration,
    pub key: [u8; 32],
    pub preimage: [u8; 32],
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
            preimage: [9; 32],
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn payee(key: [u8; 32]) -> String {
    let secp = Secp256k1::new();
    SecretKey::from_slice(&key)
        .unwrap()
        .public_key(&secp)
        .to_string()
}

/// The reference implementation's name for a chain.
pub fn reference_currency(c: Currency) -> lightning_invoice::Currency {
    match c {
        Currency::Bitcoin => lightning_invoice::Currency::Bitcoin,
        Currency::BitcoinTestnet => lightning_invoice::Currency::BitcoinTestnet,
        Currency::Signet => lightning_invoice::Currency::Signet,
        Currency::Regtest => lightning_invoice::Currency::Regtest,
        Currency::Simnet => lightning_invoice::Currency::Simnet,
    }
}

pub fn make(i: Inv) -> String {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&i.key).unwrap();
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - i.age;
    let b = InvoiceBuilder::new(reference_currency(i.currency))
        .payment_hash(sha256::Hash::hash(&i.preimage))
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
