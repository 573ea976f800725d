//! A BOLT11 invoice checked against what was agreed, before any money moves.

use sha2::{Digest, Sha256};

pub use crate::bolt11::Currency;
use crate::bolt11::{Bolt11, Description};

use crate::{job_memo, LnError, PaymentHash};

/// The chain called `name` on command lines: `bitcoin`, `testnet`, `signet`, `regtest` or
/// `simnet`.
pub fn network(name: &str) -> Option<Currency> {
    Some(match name {
        "bitcoin" => Currency::Bitcoin,
        "testnet" => Currency::BitcoinTestnet,
        "signet" => Currency::Signet,
        "regtest" => Currency::Regtest,
        "simnet" => Currency::Simnet,
        _ => return None,
    })
}

/// What the invoice must say.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// The quoted amount, msat (an invoice without an amount is refused).
    pub amount_msat: u64,
    /// The LN node the worker advertised (hex); `None` skips the check.
    pub payee: Option<&'a str>,
    /// The chain.
    pub currency: Currency,
    /// What the invoice's description must commit to.
    pub commits_to: Commitment<'a>,
    /// Now, unix seconds (expiry is checked against it).
    pub now_unix: u64,
}

/// What an invoice's description commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commitment<'a> {
    /// The job request with this id (hex): the description, or the description hash, is
    /// [`job_memo`] of it. Invoices a worker's own node issues.
    Job(&'a str),
    /// This description hash: SHA-256 of a zap request (NIP-57) that names the job.
    DescriptionHash([u8; 32]),
}

/// An invoice that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Its payment hash.
    pub payment_hash: PaymentHash,
    /// The payee node (hex).
    pub payee: String,
    /// When it expires, unix seconds.
    pub expires_at: u64,
}

fn refuse(m: impl Into<String>) -> LnError {
    LnError::Invoice(m.into())
}

/// Parse `bolt11` (its signature is verified by the parse) and check amount, expiry, network,
/// payee and the commitment to the job request.
pub fn check(bolt11: &str, e: &Expected<'_>) -> Result<Checked, LnError> {
    check_parsed(&parse(bolt11)?, e)
}

/// Parse a BOLT11 invoice; the parse verifies its signature.
fn parse(bolt11: &str) -> Result<Bolt11, LnError> {
    crate::bolt11::decode(bolt11)
        .map_err(|err| refuse(format!("not a valid signed BOLT11 invoice: {err}")))
}

fn check_parsed(inv: &Bolt11, e: &Expected<'_>) -> Result<Checked, LnError> {
    if inv.currency != e.currency {
        return Err(refuse(format!(
            "invoice is for {:?}, expected {:?}",
            inv.currency, e.currency
        )));
    }
    match inv.amount_msat {
        Some(a) if a == e.amount_msat => {}
        Some(a) => {
            return Err(refuse(format!(
                "invoice asks {a} msat, the quote was {} msat",
                e.amount_msat
            )))
        }
        None => return Err(refuse("invoice has no amount")),
    }
    let expires_at = inv.timestamp.saturating_add(inv.expiry_secs);
    if expires_at <= e.now_unix {
        return Err(refuse("invoice has expired"));
    }
    let payee = inv.payee.to_string();
    if let Some(want) = e.payee {
        if !payee.eq_ignore_ascii_case(want) {
            return Err(refuse(format!(
                "invoice is payable to {payee}, not to the advertised node {want}"
            )));
        }
    }
    let commits = match (e.commits_to, &inv.description) {
        (Commitment::Job(id), Description::Direct(d)) => *d == job_memo(id),
        (Commitment::Job(id), Description::Hash(h)) => {
            *h == <[u8; 32]>::from(Sha256::digest(job_memo(id).as_bytes()))
        }
        (Commitment::DescriptionHash(want), Description::Hash(h)) => *h == want,
        (Commitment::DescriptionHash(_), Description::Direct(_)) => false,
    };
    if !commits {
        return Err(refuse(
            "invoice description does not commit to this job request",
        ));
    }
    Ok(Checked {
        payment_hash: inv.payment_hash,
        payee,
        expires_at,
    })
}

/// What a payment receipt claims (fed_AI kind 7062, whose parser has already checked
/// SHA-256(preimage) = payment hash).
#[derive(Debug, Clone, Copy)]
pub struct ReceiptClaim<'a> {
    /// The invoice paid.
    pub bolt11: &'a str,
    /// The amount paid, msat.
    pub amount_msat: u64,
    /// The payment hash (hex).
    pub payment_hash_hex: &'a str,
    /// The job request it pays for.
    pub request_id: nostr::prelude::EventId,
    /// The worker paid.
    pub worker: nostr::prelude::PublicKey,
    /// The zap request, when paid by a zap.
    pub zap_request: Option<&'a str>,
    /// The Lightning node the worker advertised (hex), when known: the invoice must be payable
    /// to it. Without it, a customer could pay an invoice of its own node (committing to the
    /// job) and present that as a receipt.
    pub payee: Option<&'a str>,
}

/// A receipt whose invoice backs its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptCheck {
    /// The chain of the invoice.
    pub currency: Currency,
    /// Paid by a zap.
    pub by_zap: bool,
}

/// Check a receipt's claim against its invoice, as anyone can after the fact: the invoice is
/// validly signed, asks exactly the amount, has the receipt's payment hash, and commits to this
/// job — its description names the request, or (a zap) its description hash is SHA-256 of a
/// validly signed zap request naming this request and this worker. So a receipt re-published
/// for another job, or another worker, with a real invoice and preimage is refused. Expiry is
/// not checked (a receipt is written after payment).
pub fn check_receipt(r: &ReceiptClaim<'_>) -> Result<ReceiptCheck, LnError> {
    let request_hex = r.request_id.to_hex();
    let commits_to = match r.zap_request {
        None => Commitment::Job(&request_hex),
        Some(z) => {
            let zr = crate::zap::parse_request(z)?;
            if !crate::zap::names(&zr, r.worker, r.request_id) {
                return Err(refuse(
                    "the zap request is not a zap of this job to this worker",
                ));
            }
            Commitment::DescriptionHash(crate::zap::description_hash(z))
        }
    };
    let inv = parse(r.bolt11)?;
    let e = Expected {
        amount_msat: r.amount_msat,
        payee: r.payee,
        currency: inv.currency,
        commits_to,
        now_unix: 0,
    };
    let c = check_parsed(&inv, &e)?;
    if !hex::encode(c.payment_hash).eq_ignore_ascii_case(r.payment_hash_hex) {
        return Err(refuse("the invoice's payment hash is not the receipt's"));
    }
    Ok(ReceiptCheck {
        currency: inv.currency,
        by_zap: r.zap_request.is_some(),
    })
}
