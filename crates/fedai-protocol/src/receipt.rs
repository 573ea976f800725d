//! Payment receipt (fed_AI kind 7062): the customer's proof that a job was paid.
//!
//! The preimage is the proof of payment (a zap receipt is not: NIP-57). The parser checks that
//! SHA-256(preimage) equals the payment hash, so a forged preimage is refused by anyone.
//!
//! ```text
//! ["e", "<request id>", "", "request"]  ["e", "<result id>", "", "result"]?  ["p", "<worker>"]
//! ["amount", "<msat>"]  ["bolt11", "<invoice>"]  ["payment_hash", "<hex>"]  ["preimage", "<hex>"]
//! ["description", "<zap request JSON>"]?   (paid by a zap: what the invoice's hash commits to)
//! ```

use nostr::prelude::{Event, EventId, Keys, PublicKey, Tag};

use crate::tags::{self, tag};
use crate::{kinds, sha256_hex, ProtocolError};

/// Proof that the customer paid the worker for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentReceipt {
    /// The job request.
    pub request_id: EventId,
    /// The result, when paid after delivery.
    pub result_id: Option<EventId>,
    /// The worker that was paid.
    pub worker: PublicKey,
    /// Amount paid in millisatoshi.
    pub amount_msat: u64,
    /// The invoice that was paid.
    pub bolt11: String,
    /// Hex payment hash.
    pub payment_hash: String,
    /// Hex preimage (SHA-256 of it is the payment hash).
    pub preimage: String,
    /// Paid by a zap: the zap request (NIP-57 kind 9734, JSON) whose SHA-256 is the invoice's
    /// description hash, naming the job request and the worker.
    pub zap_request: Option<String>,
}

/// A receipt received from the network, verified (signature and preimage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReceipt {
    /// Receipt event id.
    pub id: EventId,
    /// The customer who signed it.
    pub customer: PublicKey,
    /// The receipt.
    pub receipt: PaymentReceipt,
}

fn check_preimage(preimage: &str, payment_hash: &str) -> Result<(), ProtocolError> {
    let bytes = hex::decode(preimage)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or(ProtocolError::tag("preimage", "not 32 bytes of hex"))?;
    if sha256_hex(&bytes) != payment_hash.to_ascii_lowercase() {
        return Err(ProtocolError::PreimageMismatch);
    }
    Ok(())
}

impl PaymentReceipt {
    /// Build and sign (by the customer). Refuses a preimage that does not match.
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        check_preimage(&self.preimage, &self.payment_hash)?;
        let mut t: Vec<Tag> = vec![tags::marked_e_tag(&self.request_id, "request")];
        if let Some(r) = &self.result_id {
            t.push(tags::marked_e_tag(r, "result"));
        }
        t.extend([
            Tag::public_key(self.worker),
            tag("amount", [self.amount_msat.to_string()]),
            tag("bolt11", [self.bolt11.clone()]),
            tag("payment_hash", [self.payment_hash.clone()]),
            tag("preimage", [self.preimage.clone()]),
        ]);
        if let Some(z) = &self.zap_request {
            t.push(tag("description", [z.clone()]));
        }
        tags::sign(kinds::PAYMENT_RECEIPT, "", t, keys)
    }

    /// Verify and parse, including SHA-256(preimage) == payment hash.
    pub fn from_event(event: &Event) -> Result<ParsedReceipt, ProtocolError> {
        Self::parse(event, true)
    }

    /// Parse; `verify = false` only for events whose id and signature the caller has
    /// already verified (the relay's hot path).
    pub(crate) fn parse(event: &Event, verify: bool) -> Result<ParsedReceipt, ProtocolError> {
        tags::check(verify, event, kinds::PAYMENT_RECEIPT)?;
        let t = &event.tags;
        let has_result = tags::all(t, "e").any(|e| e.get(2).map(String::as_str) == Some("result"));
        let result_id = has_result
            .then(|| tags::marked_e(t, "result"))
            .transpose()?;
        let receipt = PaymentReceipt {
            request_id: tags::marked_e(t, "request")?,
            result_id,
            worker: tags::single_p(t)?,
            amount_msat: tags::parse_u64("amount", tags::value(t, "amount")?)?,
            bolt11: tags::value(t, "bolt11")?.to_owned(),
            payment_hash: tags::value(t, "payment_hash")?.to_owned(),
            preimage: tags::value(t, "preimage")?.to_owned(),
            zap_request: tags::opt_value(t, "description")?.map(str::to_owned),
        };
        check_preimage(&receipt.preimage, &receipt.payment_hash)?;
        Ok(ParsedReceipt {
            id: event.id,
            customer: event.pubkey,
            receipt,
        })
    }
}
