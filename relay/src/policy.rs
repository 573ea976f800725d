//! The write policy.
//!
//! The connection has already checked the per-connection rate, size, kind, id, signature and
//! expiry when [`FedaiWritePolicy`] runs. It adds:
//! - schema validation of every fed_AI kind with the protocol crate (`invalid:` + reason);
//! - a per-pubkey rate limit across connections (`rate-limited:`);
//! - a minimum NIP-13 difficulty for job requests only (`pow:`).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fedai_protocol::{kinds, validate};
use nostr_sdk::prelude::{Event, MachineReadablePrefix, PublicKey};

use crate::metrics::Metrics;

/// A token bucket refilled continuously at `per_minute / 60` tokens per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

const SHARDS: usize = 16;
/// Keys remembered in all: past this, the oldest key is forgotten (its next event starts from a
/// full bucket, as a new key's would). Bounded memory and O(1) per event, whatever a flood of
/// fresh keys does.
const MAX_KEYS: usize = 100_000;

/// One shard: the buckets, and their keys in insertion order (for eviction).
#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<PublicKey, Bucket>,
    order: VecDeque<PublicKey>,
}

/// Per-key rate limiter, sharded so that publishers on different keys rarely share a lock.
#[derive(Debug)]
pub struct KeyedLimiter {
    /// Bucket size (the burst).
    capacity: f64,
    /// Refill per second.
    per_sec: f64,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

impl KeyedLimiter {
    /// `per_minute` events per key, with a burst of the same size.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1) as f64;
        Self::with_rate(per_minute, per_minute / 60.0)
    }

    /// A bucket of `capacity` units per key, refilled at `per_sec` units per second.
    pub fn with_rate(capacity: f64, per_sec: f64) -> Self {
        Self {
            capacity: capacity.max(1.0),
            per_sec,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).buckets.len())
            .sum()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take one token for `key`; false when the key is over its rate.
    pub fn allow(&self, key: &PublicKey, now: Instant) -> bool {
        self.allow_n(key, now, 1.0)
    }

    /// Take `cost` units for `key`; false (and nothing taken) when it has fewer.
    pub fn allow_n(&self, key: &PublicKey, now: Instant, cost: f64) -> bool {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let Shard { buckets, order } = &mut *shard;
        if !buckets.contains_key(key) {
            if buckets.len() >= MAX_KEYS / SHARDS {
                if let Some(old) = order.pop_front() {
                    buckets.remove(&old);
                }
            }
            order.push_back(*key);
        }
        let b = buckets.entry(*key).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_sec;
        b.tokens = (b.tokens + refill).min(self.capacity);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            true
        } else {
            false
        }
    }
}

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
    limiter: KeyedLimiter,
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
        if !self.limiter.allow(&event.pubkey, Instant::now()) {
            self.metrics.rejected("rate-limited");
            return Verdict::reject(
                MachineReadablePrefix::RateLimited,
                "too many events from this pubkey",
            );
        }
        let kind = event.kind.as_u16();
        if kind == kinds::JOB_REQUEST
            && self.min_pow_jobs > 0
            && !event.check_pow(self.min_pow_jobs)
        {
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
    use std::time::Duration;

    #[test]
    fn limiter_refills_and_isolates_keys() {
        let l = KeyedLimiter::new(60); // one per second
        let a = Keys::generate().public_key();
        let b = Keys::generate().public_key();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(l.allow(&a, t0));
        }
        assert!(!l.allow(&a, t0), "burst exhausted");
        assert!(l.allow(&b, t0), "other keys unaffected");
        assert!(
            l.allow(&a, t0 + Duration::from_millis(1100)),
            "refilled after a second"
        );
    }

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

    /// A flood of fresh keys cannot grow the limiter without bound (nor make each event scan
    /// it): memory stays at the cap, and a key within it is still limited.
    #[test]
    fn a_fresh_key_flood_keeps_the_limiter_bounded() {
        let l = KeyedLimiter::new(1);
        let now = Instant::now();
        // Many distinct valid keys, cheaply: about half of all x coordinates are on the curve.
        let mut keys = (0u64..).filter_map(|i| {
            let mut b = [0x5au8; 32];
            b[..8].copy_from_slice(&i.to_le_bytes());
            PublicKey::from_slice(&b).ok()
        });
        for _ in 0..(MAX_KEYS + MAX_KEYS / 2) {
            assert!(l.allow(&keys.next().unwrap(), now));
        }
        assert!(l.len() <= MAX_KEYS, "{} keys remembered", l.len());
        let k = Keys::generate().public_key();
        assert!(l.allow(&k, now));
        assert!(!l.allow(&k, now), "a remembered key is still limited");
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
