//! NIP-57 zaps of a job request, as payment for the job.
//!
//! The customer signs a zap request (kind 9734) naming the job request (`e`) and the worker
//! (`p`), sends it to the worker's LNURL-pay callback and pays the invoice it gets back, whose
//! description hash commits to that zap request. Once paid, the LNURL service publishes a zap
//! receipt (kind 9735) carrying the invoice and the zap request. A worker runs the job only on a
//! receipt that passes [`verify_receipt`] (NIP-57 Appendix F, plus the description hash and
//! both signatures).
//!
//! A zap receipt is a statement by the worker's own LNURL service, not a proof of payment; the
//! worker trusts it as it trusts the custodian of its address (and checks its own node where the
//! invoice is its node's). The customer's proof is the preimage its payer returns. Zaps are
//! final: unlike a hold invoice there is no escrow, so a customer is refunded of a failed zapped
//! job only by the worker's good will.

use crate::bolt11::Description;
use nostr::prelude::{
    Event, EventBuilder, EventId, FinalizeEvent, Keys, Kind, PublicKey, Tag, Timestamp,
};
use sha2::{Digest, Sha256};

use crate::invoice::Currency;
use crate::{LnError, PaymentHash, Preimage};

fn refuse(m: impl Into<String>) -> LnError {
    LnError::Zap(m.into())
}

fn values<'a>(ev: &'a Event, name: &'a str) -> impl Iterator<Item = &'a [String]> + 'a {
    ev.tags
        .iter()
        .map(|t| t.as_slice())
        .filter(move |t| t.first().map(String::as_str) == Some(name))
}

fn first<'a>(ev: &'a Event, name: &'a str) -> Option<&'a str> {
    values(ev, name)
        .next()
        .and_then(|t| t.get(1))
        .map(String::as_str)
}

/// The description hash of a zap's invoice: SHA-256 of the zap request's JSON, exactly as
/// sent to the LNURL callback.
pub fn description_hash(zap_request_json: &str) -> [u8; 32] {
    Sha256::digest(zap_request_json.as_bytes()).into()
}

/// What a customer zaps.
#[derive(Debug, Clone)]
pub struct ZapFor {
    /// The worker (the zap's recipient).
    pub worker: PublicKey,
    /// The job request paid for.
    pub request_id: EventId,
    /// The amount, msat (the worker's quote).
    pub amount_msat: u64,
    /// Where the LNURL service publishes the receipt: the relays the worker listens on.
    pub relays: Vec<String>,
    /// The bech32 LNURL of the worker's pay endpoint.
    pub lnurl: String,
}

/// The zap request (kind 9734), signed by the customer.
pub fn request(keys: &Keys, z: &ZapFor) -> Result<Event, LnError> {
    let mut relays = vec!["relays".to_owned()];
    relays.extend(z.relays.iter().cloned());
    let tags = [
        Tag::parse(relays),
        Tag::parse(["amount".to_owned(), z.amount_msat.to_string()]),
        Tag::parse(["lnurl".to_owned(), z.lnurl.clone()]),
        Ok(Tag::public_key(z.worker)),
        Ok(Tag::event(z.request_id)),
    ]
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| refuse(e.to_string()))?;
    EventBuilder::new(Kind::ZapRequest, "")
        .tags(tags)
        .finalize(keys)
        .map_err(|e| refuse(e.to_string()))
}

/// A zap request from its JSON: an event with a valid id and signature, of kind 9734.
pub fn parse_request(json: &str) -> Result<Event, LnError> {
    let ev = Event::from_json(json).map_err(|_| refuse("the zap request is not an event"))?;
    ev.verify()
        .map_err(|_| refuse("the zap request's id or signature is invalid"))?;
    if ev.kind != Kind::ZapRequest {
        return Err(refuse("not a zap request (kind 9734)"));
    }
    Ok(ev)
}

/// Whether a zap event (request or receipt) names this worker (`p`) and this job (`e`).
pub(crate) fn names(ev: &Event, worker: PublicKey, request_id: EventId) -> bool {
    // Exactly one of each (NIP-57): a zap that names several jobs (or several recipients)
    // would otherwise pay for each of them once.
    let only = |name: &str, want: &str| {
        let mut v = values(ev, name);
        matches!((v.next(), v.next()), (Some([_, got, ..]), None) if got.eq_ignore_ascii_case(want))
    };
    only("p", &worker.to_hex()) && only("e", &request_id.to_hex())
}

/// The relays a zap request asks its receipt to be published to.
pub fn relays(zap_request: &Event) -> Vec<String> {
    values(zap_request, "relays")
        .next()
        .map(|t| t[1..].to_vec())
        .unwrap_or_default()
}

/// A zap request as an LNURL service must check it before issuing an invoice (NIP-57
/// Appendix D): signed, kind 9734, one `p`, at most one `e`, relays named, and an `amount` tag,
/// when present, equal to the amount asked. Returns the parsed request.
pub fn check_request(json: &str, amount_msat: u64) -> Result<Event, LnError> {
    let ev = parse_request(json)?;
    if values(&ev, "p").count() != 1 {
        return Err(refuse("a zap request names exactly one recipient"));
    }
    if values(&ev, "e").count() > 1 {
        return Err(refuse("a zap request names at most one event"));
    }
    if relays(&ev).is_empty() {
        return Err(refuse("the zap request names no relays"));
    }
    if let Some(a) = first(&ev, "amount") {
        if a.parse::<u64>().ok() != Some(amount_msat) {
            return Err(refuse("the zap request's amount is not the amount asked"));
        }
    }
    Ok(ev)
}

/// The zap receipt (kind 9735) an LNURL service publishes once the invoice is paid (NIP-57
/// Appendix E), signed with its `nostrPubkey`.
pub fn receipt(
    server: &Keys,
    zap_request: &Event,
    bolt11: &str,
    preimage: Option<&Preimage>,
    paid_at: Timestamp,
) -> Result<Event, LnError> {
    let mut tags: Vec<Tag> = zap_request
        .tags
        .iter()
        .filter(|t| {
            matches!(
                t.as_slice().first().map(String::as_str),
                Some("p" | "e" | "a")
            )
        })
        .cloned()
        .collect();
    let more = [
        ["P".to_owned(), zap_request.pubkey.to_hex()],
        ["bolt11".to_owned(), bolt11.to_owned()],
        ["description".to_owned(), zap_request.as_json()],
    ];
    for t in more {
        tags.push(Tag::parse(t).map_err(|e| refuse(e.to_string()))?);
    }
    if let Some(p) = preimage {
        tags.push(
            Tag::parse(["preimage".to_owned(), hex::encode(p)])
                .map_err(|e| refuse(e.to_string()))?,
        );
    }
    EventBuilder::new(Kind::ZapReceipt, "")
        .tags(tags)
        .custom_created_at(paid_at)
        .finalize(server)
        .map_err(|e| refuse(e.to_string()))
}

/// What a worker requires of a zap receipt for a job.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Its LNURL service's `nostrPubkey`: the only key whose receipts count.
    pub server: PublicKey,
    /// The worker.
    pub worker: PublicKey,
    /// The job request.
    pub request_id: EventId,
    /// The worker's `payment-required` feedback for it: NIP-90 clients zap that event, and a
    /// zap of it pays the job just as a zap of the request does.
    pub quote_id: Option<EventId>,
    /// The quote, msat: the zap must be at least this.
    pub min_amount_msat: u64,
    /// The chain.
    pub currency: Currency,
}

/// A zap receipt that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zap {
    /// Who signed the zap request.
    pub payer: PublicKey,
    /// Paid, msat.
    pub amount_msat: u64,
    /// The invoice.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: PaymentHash,
    /// The node the invoice pays (hex).
    pub payee_node: String,
    /// The zap request (JSON) the invoice's description hash commits to.
    pub zap_request: String,
}

/// Check a zap receipt against the job (NIP-57 Appendix F and more): the receipt is validly
/// signed by the worker's LNURL service; its invoice is a valid signed BOLT11 on the right chain
/// whose description hash is SHA-256 of the embedded zap request; the zap request is validly
/// signed, kind 9734, names this worker and this job, and its `amount` (if any) is the invoice's;
/// the invoice pays at least the quote; a `preimage` tag, if any, hashes to the payment hash.
pub fn verify_receipt(ev: &Event, e: &Expect) -> Result<Zap, LnError> {
    if ev.kind != Kind::ZapReceipt {
        return Err(refuse("not a zap receipt (kind 9735)"));
    }
    ev.verify()
        .map_err(|_| refuse("the receipt's id or signature is invalid"))?;
    if ev.pubkey != e.server {
        return Err(refuse(
            "the receipt is not signed by the worker's LNURL service",
        ));
    }
    let bolt11 = first(ev, "bolt11").ok_or_else(|| refuse("the receipt has no invoice"))?;
    let inv = crate::bolt11::decode(bolt11)
        .map_err(|err| refuse(format!("the receipt's invoice is not valid: {err}")))?;
    if inv.currency != e.currency {
        return Err(refuse(format!(
            "the invoice is for {:?}, expected {:?}",
            inv.currency, e.currency
        )));
    }
    let amount_msat = inv
        .amount_msat
        .ok_or_else(|| refuse("the invoice has no amount"))?;
    let description =
        first(ev, "description").ok_or_else(|| refuse("the receipt has no zap request"))?;
    let want = description_hash(description);
    match inv.description {
        Description::Hash(h) if h == want => {}
        _ => {
            return Err(refuse(
                "the invoice's description hash does not commit to the zap request",
            ))
        }
    }
    let zr = parse_request(description)?;
    let for_job = |x: &Event| {
        names(x, e.worker, e.request_id) || e.quote_id.is_some_and(|q| names(x, e.worker, q))
    };
    if !for_job(&zr) || !for_job(ev) {
        return Err(refuse("the zap is not for this worker and job"));
    }
    if let Some(a) = first(&zr, "amount") {
        if a.parse::<u64>().ok() != Some(amount_msat) {
            return Err(refuse("the invoice's amount is not the zap request's"));
        }
    }
    if amount_msat < e.min_amount_msat {
        return Err(refuse(format!(
            "zapped {amount_msat} msat, the quote was {} msat",
            e.min_amount_msat
        )));
    }
    let payment_hash: PaymentHash = inv.payment_hash;
    if let Some(p) = first(ev, "preimage") {
        let ok = hex::decode(p).is_ok_and(|b| <[u8; 32]>::from(Sha256::digest(&b)) == payment_hash);
        if !ok {
            return Err(refuse("the receipt's preimage does not match the invoice"));
        }
    }
    Ok(Zap {
        payer: zr.pubkey,
        amount_msat,
        bolt11: bolt11.to_owned(),
        payment_hash,
        payee_node: inv.payee.to_string(),
        zap_request: description.to_owned(),
    })
}
