//! Attestation (a NIP-32 label, kind 1985): a customer's signed statement about one job of a
//! worker — delivered, failed, or caught by a spot check — naming the request, result and
//! metering events so that anyone can check it against them.
//!
//! ```text
//! ["L", "fedai/attest"]  ["l", "<delivered|failed|mismatch>", "fedai/attest"]  ["p", "<worker>"]
//! ["e", "<request id>", "", "request"]  ["e", "<result id>", "", "result"]?
//! ["e", "<metering id>", "", "metering"]?
//! ```
//!
//! NIP-32 reads every `p` and `e` tag as a target: the label is about the worker and about the
//! job those events make up.
//!
//! A `delivered` attestation names the result and the metering record: the worker signed the
//! metering, which names the request and the customer, so a reader can check that the attester
//! really was the customer of a job that worker ran (and paid, when the metering has a price).

use nostr::prelude::{Event, EventId, Keys, PublicKey, Timestamp};

use crate::tags::{self, tag};
use crate::{kinds, ProtocolError};

/// The NIP-32 namespace of fed_AI attestations.
pub const NAMESPACE: &str = "fedai/attest";

/// What the customer says of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A verified result with its metering.
    Delivered,
    /// An error, a timeout, or a result that failed verification.
    Failed,
    /// A spot check caught it: its answer disagreed with two other workers that agreed.
    Mismatch,
}

impl Verdict {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Mismatch => "mismatch",
        }
    }

    fn parse(s: &str) -> Result<Self, ProtocolError> {
        match s {
            "delivered" => Ok(Self::Delivered),
            "failed" => Ok(Self::Failed),
            "mismatch" => Ok(Self::Mismatch),
            _ => Err(ProtocolError::tag("l", format!("unknown verdict `{s}`"))),
        }
    }
}

/// A customer's statement about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The worker it is about.
    pub worker: PublicKey,
    /// What happened.
    pub verdict: Verdict,
    /// The job request.
    pub request_id: EventId,
    /// The result (required for `delivered`).
    pub result_id: Option<EventId>,
    /// The worker's metering record (required for `delivered`).
    pub metering_id: Option<EventId>,
}

/// An attestation received from the network, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAttestation {
    /// Its event id.
    pub id: EventId,
    /// Who signed it.
    pub attester: PublicKey,
    /// When.
    pub created_at: Timestamp,
    /// What it says.
    pub attestation: Attestation,
}

impl Attestation {
    fn check(&self) -> Result<(), ProtocolError> {
        if self.verdict == Verdict::Delivered
            && (self.result_id.is_none() || self.metering_id.is_none())
        {
            return Err(ProtocolError::tag(
                "e",
                "a `delivered` attestation names the result and the metering",
            ));
        }
        Ok(())
    }

    /// Build and sign (by the customer).
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        self.check()?;
        let mut t = vec![
            tag("L", [NAMESPACE]),
            tag("l", [self.verdict.as_str(), NAMESPACE]),
            nostr::prelude::Tag::public_key(self.worker),
            tags::marked_e_tag(&self.request_id, "request"),
        ];
        if let Some(r) = &self.result_id {
            t.push(tags::marked_e_tag(r, "result"));
        }
        if let Some(m) = &self.metering_id {
            t.push(tags::marked_e_tag(m, "metering"));
        }
        // No `t` tag: NIP-32 would read it as labelling the topic itself.
        tags::sign(kinds::LABEL, "", t, keys)
    }

    /// Verify and parse.
    pub fn from_event(event: &Event) -> Result<ParsedAttestation, ProtocolError> {
        tags::verified(event, kinds::LABEL)?;
        let t = &event.tags;
        if tags::value(t, "L")? != NAMESPACE {
            return Err(ProtocolError::tag("L", "not the fedai/attest namespace"));
        }
        let l = tags::one(t, "l")?;
        if l.get(1).map(String::as_str) != Some(NAMESPACE) {
            return Err(ProtocolError::tag("l", "not marked fedai/attest"));
        }
        let marked = |m: &'static str| -> Result<Option<EventId>, ProtocolError> {
            let has = tags::all(t, "e").any(|e| e.get(2).map(String::as_str) == Some(m));
            has.then(|| tags::marked_e(t, m)).transpose()
        };
        let attestation = Attestation {
            worker: tags::single_p(t)?,
            verdict: Verdict::parse(&l[0])?,
            request_id: tags::marked_e(t, "request")?,
            result_id: marked("result")?,
            metering_id: marked("metering")?,
        };
        attestation.check()?;
        Ok(ParsedAttestation {
            id: event.id,
            attester: event.pubkey,
            created_at: event.created_at,
            attestation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let customer = Keys::generate();
        let a = Attestation {
            worker: Keys::generate().public_key(),
            verdict: Verdict::Delivered,
            request_id: EventId::from_byte_array([7; 32]),
            result_id: Some(EventId::from_byte_array([7; 32])),
            metering_id: Some(EventId::from_byte_array([7; 32])),
        };
        let ev = a.to_event(&customer).unwrap();
        let p = Attestation::from_event(&ev).unwrap();
        assert_eq!(
            (p.attestation, p.attester),
            (a.clone(), customer.public_key())
        );
        // `delivered` without its evidence is refused on both sides.
        let bare = Attestation {
            metering_id: None,
            ..a.clone()
        };
        assert!(bare.to_event(&customer).is_err());
        // Another namespace's label is not ours.
        let other = tags::sign(
            kinds::LABEL,
            "",
            vec![
                tag("L", ["ugc"]),
                tag("l", ["delivered", "ugc"]),
                nostr::prelude::Tag::public_key(a.worker),
            ],
            &customer,
        )
        .unwrap();
        assert!(Attestation::from_event(&other).is_err());
        let failed = Attestation {
            verdict: Verdict::Failed,
            result_id: None,
            metering_id: None,
            ..a
        };
        let p = Attestation::from_event(&failed.to_event(&customer).unwrap()).unwrap();
        assert_eq!(p.attestation.verdict, Verdict::Failed);
    }
}
