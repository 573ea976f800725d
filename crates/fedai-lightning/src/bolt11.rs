//! BOLT11 invoices decoded and their signatures verified: the fields fed_AI checks a quote
//! against, nothing more.
//!
//! Why not `lightning-invoice`: it builds on `bitcoin` 0.32 and its `secp256k1` 0.29, while
//! Nostr (and so every fed_AI key) runs on `secp256k1` 0.30 — two copies of the same C library
//! in every build that pays. This module decodes with the `bech32` and `secp256k1` that nostr
//! already brings. `lightning-invoice` stays as a dev-dependency: the tests decode the invoices
//! it builds and compare every field, and the fuzz target runs this decoder.
//!
//! What is checked (BOLT11 "Requirements" for a reader): the bech32 checksum (long invoices
//! allowed, as in BOLT11), the `ln` + currency + amount prefix, a 35-bit timestamp, tagged
//! fields with their lengths (fields of unknown type or with a wrong length are skipped, as the
//! spec says), exactly one payment hash, exactly one of description and description hash, and a
//! low-S signature over SHA-256(hrp ‖ data) from the payee: the key in an `n` field, or else the
//! one recovered from the signature.

use std::ops::RangeInclusive;

use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Checksum, Fe1024, Fe32};
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use secp256k1::{Message, PublicKey, Secp256k1};
use sha2::{Digest, Sha256};

/// The chain an invoice is for (its human-readable prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Currency {
    /// `lnbc`.
    Bitcoin,
    /// `lntb`.
    BitcoinTestnet,
    /// `lntbs`.
    Signet,
    /// `lnbcrt`.
    Regtest,
    /// `lnsb`.
    Simnet,
}

impl Currency {
    /// The prefix after `ln`.
    pub fn prefix(self) -> &'static str {
        match self {
            Currency::Bitcoin => "bc",
            Currency::BitcoinTestnet => "tb",
            Currency::Signet => "tbs",
            Currency::Regtest => "bcrt",
            Currency::Simnet => "sb",
        }
    }
}

/// What the invoice's description commits to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Description {
    /// The text itself (`d`).
    Direct(String),
    /// SHA-256 of it (`h`).
    Hash([u8; 32]),
}

/// A decoded invoice whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bolt11 {
    /// The chain.
    pub currency: Currency,
    /// The amount asked, msat (`None`: any amount).
    pub amount_msat: Option<u64>,
    /// When it was made, unix seconds.
    pub timestamp: u64,
    /// How long it is valid after `timestamp`, seconds (3600 when unset).
    pub expiry_secs: u64,
    /// The payment hash.
    pub payment_hash: [u8; 32],
    /// The node paid: whose key signed the invoice.
    pub payee: PublicKey,
    /// The description or its hash.
    pub description: Description,
}

/// bech32 as BOLT11 uses it: the Bech32 checksum without BIP-173's 90-character limit
/// (invoices with route hints are longer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bolt11Bech32 {}

impl Checksum for Bolt11Bech32 {
    type MidstateRepr = u32;
    type CorrectionField = Fe1024;
    const ROOT_GENERATOR: Fe1024 = <Bech32 as Checksum>::ROOT_GENERATOR;
    const ROOT_EXPONENTS: RangeInclusive<usize> = <Bech32 as Checksum>::ROOT_EXPONENTS;
    /// As lightning-invoice: the largest length for which the checksum still detects errors.
    const CODE_LENGTH: usize = 7089;
    const CHECKSUM_LENGTH: usize = 6;
    const GENERATOR_SH: [u32; 5] = <Bech32 as Checksum>::GENERATOR_SH;
    const TARGET_RESIDUE: u32 = 1;
}

/// Words in the timestamp and in the signature.
const TIMESTAMP_WORDS: usize = 7;
const SIGNATURE_WORDS: usize = 104;

/// 5-bit words as bytes, most significant bit first; `pad`: the last partial byte is kept with
/// zero bits (the signed message), else dropped (field values).
fn to_bytes(words: &[Fe32], pad: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 5 / 8 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for w in words {
        acc = (acc << 5) | u32::from(w.to_u8());
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if pad && bits > 0 {
        out.push((acc << (8 - bits)) as u8);
    }
    out
}

fn to_u64(words: &[Fe32]) -> Option<u64> {
    if words.len() > 12 {
        return None; // more than 60 bits
    }
    Some(
        words
            .iter()
            .fold(0u64, |n, w| (n << 5) | u64::from(w.to_u8())),
    )
}

/// `ln` + currency + amount.
fn parse_hrp(hrp: &str) -> Result<(Currency, Option<u64>), String> {
    let rest = hrp.strip_prefix("ln").ok_or("the prefix is not `ln`")?;
    // Longest prefixes first: `bcrt` before `bc`, `tbs` before `tb`.
    let currency = [
        Currency::Regtest,
        Currency::Bitcoin,
        Currency::Signet,
        Currency::BitcoinTestnet,
        Currency::Simnet,
    ]
    .into_iter()
    .find(|c| {
        rest.strip_prefix(c.prefix())
            .is_some_and(|a| a.is_empty() || a.starts_with(|ch: char| ch.is_ascii_digit()))
    })
    .ok_or_else(|| format!("unknown currency in `{hrp}`"))?;
    let amount = &rest[currency.prefix().len()..];
    if amount.is_empty() {
        return Ok((currency, None));
    }
    let (digits, unit) = match amount.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&amount[..i], Some(c)),
        _ => (amount, None),
    };
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad amount `{amount}`"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad amount `{amount}`"))?;
    // msat per unit: 1 BTC = 10^11 msat.
    let msat = match unit {
        None => n.checked_mul(100_000_000_000),
        Some('m') => n.checked_mul(100_000_000),
        Some('u') => n.checked_mul(100_000),
        Some('n') => n.checked_mul(100),
        Some('p') if n.is_multiple_of(10) => Some(n / 10),
        Some('p') => return Err("a pico-bitcoin amount that is not whole msat".into()),
        Some(u) => return Err(format!("unknown amount unit `{u}`")),
    };
    Ok((currency, Some(msat.ok_or("amount overflows")?)))
}

/// Tagged field types (the bech32 value of their letter).
const TAG_P: u8 = 1; // p: payment hash
const TAG_X: u8 = 6; // x: expiry
const TAG_D: u8 = 13; // d: description
const TAG_N: u8 = 19; // n: payee
const TAG_H: u8 = 23; // h: description hash

/// Decode `invoice` and verify its signature.
pub fn decode(invoice: &str) -> Result<Bolt11, String> {
    let invoice = invoice.trim();
    // bech32 strings are all one case; BOLT11 readers take either.
    let lower = invoice.to_ascii_lowercase();
    if invoice != lower && invoice != invoice.to_ascii_uppercase() {
        return Err("mixed case".into());
    }
    let checked =
        CheckedHrpstring::new::<Bolt11Bech32>(&lower).map_err(|e| format!("not bech32: {e}"))?;
    let hrp = checked.hrp().to_lowercase();
    let (currency, amount_msat) = parse_hrp(&hrp)?;
    let words: Vec<Fe32> = checked.fe32_iter().collect();
    if words.len() < TIMESTAMP_WORDS + SIGNATURE_WORDS {
        return Err("too short".into());
    }
    let (data, sig) = words.split_at(words.len() - SIGNATURE_WORDS);
    let timestamp = to_u64(&data[..TIMESTAMP_WORDS]).ok_or("bad timestamp")?;
    let mut f = Fields::default();
    let mut rest = &data[TIMESTAMP_WORDS..];
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err("a tagged field is cut short".into());
        }
        let len = usize::from(rest[1].to_u8()) * 32 + usize::from(rest[2].to_u8());
        let value = rest.get(3..3 + len).ok_or("a tagged field is cut short")?;
        f.take(rest[0].to_u8(), value)?;
        rest = &rest[3 + len..];
    }
    // The signed message: the human-readable part's bytes, then the data (without the
    // signature) as bytes, zero-padded.
    let mut hash = Sha256::new();
    hash.update(hrp.as_bytes());
    hash.update(to_bytes(data, true));
    let msg = Message::from_digest(hash.finalize().into());
    let sig_bytes = to_bytes(sig, false);
    let recid = RecoveryId::try_from(i32::from(sig_bytes[64])).map_err(|_| "bad recovery id")?;
    let sig = RecoverableSignature::from_compact(&sig_bytes[..64], recid)
        .map_err(|_| "bad signature encoding")?;
    let secp = Secp256k1::verification_only();
    let payee = match f.payee {
        Some(pk) => pk,
        None => secp
            .recover_ecdsa(&msg, &sig)
            .map_err(|_| "no key signs this invoice")?,
    };
    // Verifies against the payee, and refuses a high-S signature (malleable).
    secp.verify_ecdsa(&msg, &sig.to_standard(), &payee)
        .map_err(|_| "the signature does not verify")?;
    Ok(Bolt11 {
        currency,
        amount_msat,
        timestamp,
        expiry_secs: f.expiry.unwrap_or(3600),
        payment_hash: f.payment_hash.ok_or("no payment hash")?,
        payee,
        description: match (f.description, f.description_hash) {
            (Some(d), None) => Description::Direct(d),
            (None, Some(h)) => Description::Hash(h),
            _ => return Err("needs exactly one of description and description hash".into()),
        },
    })
}

/// The tagged fields fed_AI reads.
#[derive(Default)]
struct Fields {
    payment_hash: Option<[u8; 32]>,
    description: Option<String>,
    description_hash: Option<[u8; 32]>,
    expiry: Option<u64>,
    payee: Option<PublicKey>,
}

impl Fields {
    /// One tagged field. Unknown types and known ones of the wrong length are skipped (BOLT11);
    /// a second payment hash or description is refused, so an invoice means one thing.
    fn take(&mut self, tag: u8, value: &[Fe32]) -> Result<(), String> {
        fn once<T>(slot: &mut Option<T>, v: T, what: &str) -> Result<(), String> {
            match slot {
                Some(_) => Err(format!("more than one {what}")),
                None => {
                    *slot = Some(v);
                    Ok(())
                }
            }
        }
        let hash32 = |v: &[Fe32]| -> Option<[u8; 32]> { to_bytes(v, false).try_into().ok() };
        match (tag, value.len()) {
            (TAG_P, 52) => once(
                &mut self.payment_hash,
                hash32(value).ok_or("bad p")?,
                "payment hash",
            ),
            (TAG_H, 52) => {
                let h = hash32(value).ok_or("bad h")?;
                once(&mut self.description_hash, h, "description hash")
            }
            (TAG_D, _) => {
                let d = String::from_utf8(to_bytes(value, false))
                    .map_err(|_| "the description is not UTF-8")?;
                once(&mut self.description, d, "description")
            }
            (TAG_X, _) => {
                let x = to_u64(value).ok_or("bad expiry")?;
                once(&mut self.expiry, x, "expiry")
            }
            (TAG_N, 53) => {
                let pk =
                    PublicKey::from_slice(&to_bytes(value, false)).map_err(|_| "bad payee key")?;
                once(&mut self.payee, pk, "payee")
            }
            _ => Ok(()),
        }
    }
}
