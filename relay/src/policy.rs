//! The write policy.
//!
//! The connection has already checked the per-connection rate, size, kind, id, signature and
//! expiry when [`FedaiWritePolicy`] runs. It adds:
//! - schema validation of every fed_AI kind with the protocol crate (`invalid:` + reason);
//! - a per-pubkey rate limit across connections (`rate-limited:`);
//! - a minimum NIP-13 difficulty for job requests only (`pow:`).

use std::sync::Arc;

use fedai_protocol::{kinds, validate};
use nostr_sdk::prelude::{Event, MachineReadablePrefix, PublicKey};

use crate::metrics::Metrics;
use fedai_limit::KeyedLimiter;

/// What the write policy says about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Store (or broadcast) it.
    Accept,
    /// Refuse it with `OK false "<prefix>: <message>"`.
    Reject {
        /// NIP-01 machine-readable prefix.
        prefix: MachineReadablePrefix,
        /// Human-readable reason.
        message: String,
    },
}

impl Verdict {
    fn reject(prefix: MachineReadablePrefix, message: impl Into<String>) -> Self {
        Self::Reject {
            prefix,
            message: message.into(),
        }
    }
}

/// fed_AI write policy.
#[derive(Debug)]
pub struct FedaiWritePolicy {
    metrics: Arc<Metrics>,
    limiter: KeyedLimiter<PublicKey>,
    min_pow_jobs: u8,
}

impl FedaiWritePolicy {
    /// A policy with a per-pubkey limit and an optional job-request PoW floor.
    pub fn new(metrics: Arc<Metrics>, per_pubkey_per_minute: u32, min_pow_jobs: u8) -> Self {
        Self {
            metrics,
            limiter: KeyedLimiter::new(per_pubkey_per_minute),
            min_pow_jobs,
        }
    }

    /// The decision for one event whose id and signature are verified.
    pub fn decide(&self, event: &Event) -> Verdict {
        if !self.limiter.allow(&event.pubkey) {
            self.metrics.rejected("rate-limited");
            return Verdict::reject(
                MachineReadablePrefix::RateLimited,
                "too many events from this pubkey",
            );
        }
        self.decide_unlimited(event)
    }

    /// [`Self::decide`] without the per-pubkey rate (events a sync brings from a peer relay,
    /// which rated their publisher when it took them).
    pub fn decide_unlimited(&self, event: &Event) -> Verdict {
        let kind = event.kind.as_u16();
        if kinds::is_request(kind) && self.min_pow_jobs > 0 && !event.check_pow(self.min_pow_jobs) {
            self.metrics.rejected("pow");
            return Verdict::reject(
                MachineReadablePrefix::Pow,
                format!("job requests need a difficulty >= {}", self.min_pow_jobs),
            );
        }
        if let Err(e) = validate::validate_verified(event) {
            self.metrics.rejected("invalid");
            // Log the kind and error class, never the content.
            tracing::debug!(kind, id = %event.id, error = %e, "rejected malformed fedai event");
            return Verdict::reject(MachineReadablePrefix::Invalid, e.to_string());
        }
        if event.kind.is_ephemeral() {
            // Ephemeral events are broadcast without touching the store.
            self.metrics.accepted(kind);
            self.metrics.live_event();
        }
        Verdict::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::*;

    fn reject_prefix(r: Verdict) -> Option<String> {
        match r {
            Verdict::Accept => None,
            Verdict::Reject { prefix, message } => Some(format!("{prefix}: {message}")),
        }
    }

    #[test]
    fn malformed_job_request_is_invalid_and_normal_kinds_pass() {
        let p = FedaiWritePolicy::new(Arc::new(Metrics::default()), 1000, 0);
        let keys = Keys::generate();
        let bad = EventBuilder::new(Kind::from_u16(5050), "")
            .tag(Tag::custom("param", ["max_tokens", "many"]))
            .tag(Tag::hashtag("fedai"))
            .finalize(&keys)
            .unwrap();
        let msg = reject_prefix(p.decide(&bad)).unwrap();
        assert!(msg.starts_with("invalid: "), "{msg}");
        // The same event from another application (no fed_AI marker) is carried.
        let theirs = EventBuilder::new(Kind::from_u16(5050), "")
            .tag(Tag::custom("param", ["max_tokens", "many"]))
            .finalize(&keys)
            .unwrap();
        assert!(reject_prefix(p.decide(&theirs)).is_none());
        let note = EventBuilder::new(Kind::TextNote, "hello")
            .finalize(&keys)
            .unwrap();
        assert!(reject_prefix(p.decide(&note)).is_none());
    }

    #[test]
    fn pow_applies_to_job_requests_only() {
        let p = FedaiWritePolicy::new(Arc::new(Metrics::default()), 1000, 30);
        let keys = Keys::generate();
        let job = fedai_protocol::JobRequest::text("hi")
            .to_event(&keys, None)
            .unwrap();
        let msg = reject_prefix(p.decide(&job)).unwrap();
        assert!(msg.starts_with("pow: "), "{msg}");
        let note = EventBuilder::new(Kind::TextNote, "x")
            .finalize(&keys)
            .unwrap();
        assert!(reject_prefix(p.decide(&note)).is_none());
    }

    #[test]
    fn per_pubkey_limit_rejects_with_rate_limited() {
        let p = FedaiWritePolicy::new(Arc::new(Metrics::default()), 2, 0);
        let keys = Keys::generate();
        let ev = || {
            EventBuilder::new(Kind::TextNote, "x")
                .finalize(&keys)
                .unwrap()
        };
        assert!(reject_prefix(p.decide(&ev())).is_none());
        assert!(reject_prefix(p.decide(&ev())).is_none());
        let msg = reject_prefix(p.decide(&ev())).unwrap();
        assert!(msg.starts_with("rate-limited: "), "{msg}");
    }
}
