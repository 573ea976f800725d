//! Award (fed_AI kind 7061): the customer picks one quote of an auction.
//!
//! After an open request with a `bid` collects `payment-required` quotes, the customer publishes
//! an award naming the chosen worker and quote. Only the awarded worker runs the job; the others
//! drop it. Stored (regular kind) so a restarted, stateless worker can find its awards again.
//!
//! ```text
//! ["e", "<request id>", "", "request"]  ["e", "<quote feedback id>", "", "quote"]
//! ["p", "<worker>"]  ["amount", "<msat>"]  ["expiration", "<unix>"]?
//! ```

use nostr::prelude::{Event, EventId, Keys, PublicKey, Tag, Timestamp};

use crate::tags::{self, tag};
use crate::{kinds, ProtocolError};

/// The customer's choice of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    /// The job request.
    pub request_id: EventId,
    /// The `payment-required` feedback that carried the chosen quote.
    pub quote_id: EventId,
    /// The chosen worker.
    pub worker: PublicKey,
    /// The quoted amount accepted, in millisatoshi.
    pub amount_msat: u64,
    /// After this time the award lapses.
    pub expiration: Option<Timestamp>,
}

/// An award received from the network, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAward {
    /// Award event id.
    pub id: EventId,
    /// The customer who signed it.
    pub customer: PublicKey,
    /// The award.
    pub award: Award,
}

impl Award {
    /// Build and sign (by the customer).
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        let mut t: Vec<Tag> = vec![
            tags::marked_e_tag(&self.request_id, "request"),
            tags::marked_e_tag(&self.quote_id, "quote"),
            Tag::public_key(self.worker),
            tag("amount", [self.amount_msat.to_string()]),
        ];
        if let Some(e) = self.expiration {
            t.push(Tag::expiration(e));
        }
        tags::sign(kinds::AWARD, "", t, keys)
    }

    /// Verify and parse.
    pub fn from_event(event: &Event) -> Result<ParsedAward, ProtocolError> {
        Self::parse(event, true)
    }

    /// Parse; `verify = false` only for events whose id and signature the caller has
    /// already verified (the relay's hot path).
    pub(crate) fn parse(event: &Event, verify: bool) -> Result<ParsedAward, ProtocolError> {
        tags::check(verify, event, kinds::AWARD)?;
        let t = &event.tags;
        Ok(ParsedAward {
            id: event.id,
            customer: event.pubkey,
            award: Award {
                request_id: tags::marked_e(t, "request")?,
                quote_id: tags::marked_e(t, "quote")?,
                worker: tags::single_p(t)?,
                amount_msat: tags::parse_u64("amount", tags::value(t, "amount")?)?,
                expiration: tags::opt_value(t, "expiration")?
                    .map(|v| tags::parse_u64("expiration", v).map(Timestamp::from_secs))
                    .transpose()?,
            },
        })
    }
}
