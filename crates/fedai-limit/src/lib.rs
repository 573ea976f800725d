//! # fedai-limit
//!
//! Rate limits on `governor` (GCRA) for every fed_AI intake — the relay's connections and
//! publishers, a worker's customers: one per-connection limiter type ([`Bucket`]) and one
//! per-key limiter ([`KeyedLimiter`]) whose state store is bounded.
//!
//! governor's own keyed stores grow with every key until `retain_recent` finds keys whose
//! allowance has fully come back; a flood of fresh keys at a slow rate would never be
//! reclaimed. [`BoundedStore`] keeps at most [`MAX_KEYS`] keys in shards and forgets the oldest
//! key of a full shard — its next event starts from a full allowance, as a new key's would — so
//! memory and the time per event are bounded whatever a flood of fresh keys does.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

const SHARDS: usize = 16;
/// Keys remembered in all.
pub const MAX_KEYS: usize = 100_000;

/// `capacity` at once (at most `u32::MAX` units: a daily byte quota above 4 GiB is 4 GiB),
/// refilled at `per_sec`.
fn quota(capacity: f64, per_sec: f64) -> Quota {
    let burst =
        NonZeroU32::new(capacity.clamp(1.0, u32::MAX as f64) as u32).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs_f64(1.0 / per_sec.max(1e-9)).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("a positive period")
        .allow_burst(burst)
}

/// One connection's allowance of something (events, queries, messages).
#[derive(Debug)]
pub struct Bucket(DefaultDirectRateLimiter);

impl Bucket {
    /// `per_minute` at once, refilled at `per_minute / 60` per second.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1) as f64;
        Self::with(per_minute, per_minute / 60.0)
    }

    /// `capacity` at once, refilled at `per_sec` per second.
    pub fn with(capacity: f64, per_sec: f64) -> Self {
        Self(RateLimiter::direct(quota(capacity, per_sec)))
    }

    /// Take one, if the allowance has one.
    pub fn take(&mut self) -> bool {
        self.0.check().is_ok()
    }
}

/// One shard: the states, and their keys in insertion order (for eviction).
#[derive(Debug)]
struct Shard<K> {
    states: HashMap<K, InMemoryState>,
    order: VecDeque<K>,
}

impl<K> Default for Shard<K> {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

/// A governor state store of at most [`MAX_KEYS`] keys, sharded so that publishers on
/// different keys rarely share a lock.
#[derive(Debug)]
pub struct BoundedStore<K> {
    hasher: RandomState,
    shards: Vec<Mutex<Shard<K>>>,
}

impl<K> Default for BoundedStore<K> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

impl<K> BoundedStore<K> {
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).states.len())
            .sum()
    }
}

/// The store, shared between the limiter and whoever counts its keys.
#[derive(Debug)]
pub struct SharedStore<K>(Arc<BoundedStore<K>>);

impl<K> Clone for SharedStore<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K> Default for SharedStore<K> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: Hash + Eq + Clone> StateStore for SharedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let shard = &self.0.shards[(self.0.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let Shard { states, order } = &mut *shard;
        if !states.contains_key(key) {
            if states.len() >= MAX_KEYS / SHARDS {
                if let Some(old) = order.pop_front() {
                    states.remove(&old);
                }
            }
            order.push_back(key.clone());
        }
        states
            .entry(key.clone())
            .or_default()
            .measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// A per-key limiter: GCRA from governor over a [`BoundedStore`].
#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: RateLimiter<K, SharedStore<K>, C, NoOpMiddleware<C::Instant>>,
    store: SharedStore<K>,
    /// The whole allowance: a cost above it is refused before governor computes with it.
    burst: u32,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `per_minute` per key, with a burst of the same size.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1) as f64;
        Self::with_rate(per_minute, per_minute / 60.0)
    }

    /// `capacity` units per key at once, refilled at `per_sec` units per second.
    pub fn with_rate(capacity: f64, per_sec: f64) -> Self {
        Self::with_clock(capacity, per_sec, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    /// As [`KeyedLimiter::with_rate`], on `clock` (tests move a fake one).
    pub fn with_clock(capacity: f64, per_sec: f64, clock: C) -> Self {
        let store = SharedStore::default();
        let q = quota(capacity, per_sec);
        Self {
            limiter: RateLimiter::new(q, store.clone(), clock),
            store,
            burst: q.burst_size().get(),
        }
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.store.0.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Take one unit for `key`; false when the key is over its rate.
    pub fn allow(&self, key: &K) -> bool {
        self.limiter.check_key(key).is_ok()
    }

    /// Take `cost` units for `key`; false (and nothing taken) when it has fewer, or when
    /// `cost` is more than its whole allowance.
    pub fn allow_n(&self, key: &K, cost: u64) -> bool {
        let Some(n) = u32::try_from(cost).ok().and_then(NonZeroU32::new) else {
            return cost == 0;
        };
        if n.get() > self.burst {
            return false;
        }
        matches!(self.limiter.check_key_n(key, n), Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use nostr_sdk::prelude::{Keys, PublicKey};

    #[test]
    fn limiter_refills_and_isolates_keys() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(60.0, 1.0, clock.clone()); // one per second
        let a = Keys::generate().public_key();
        let b = Keys::generate().public_key();
        for _ in 0..60 {
            assert!(l.allow(&a));
        }
        assert!(!l.allow(&a), "burst exhausted");
        assert!(l.allow(&b), "other keys unaffected");
        clock.advance(Duration::from_millis(1100));
        assert!(l.allow(&a), "refilled after a second");
        assert!(!l.allow(&a), "one per second");
    }

    #[test]
    fn costs_are_taken_whole_or_not_at_all() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(1000.0, 1000.0 / 86_400.0, clock.clone());
        let k = Keys::generate().public_key();
        assert!(l.allow_n(&k, 600));
        assert!(!l.allow_n(&k, 600), "400 left");
        assert!(l.allow_n(&k, 400));
        assert!(!l.allow_n(&k, 5_000), "more than the whole allowance");
        clock.advance(Duration::from_secs(86_400));
        assert!(l.allow_n(&k, 1000), "a day later, all of it");
    }

    /// A flood of fresh keys cannot grow the limiter without bound (nor make each event scan
    /// it): memory stays at the cap, and a key within it is still limited.
    #[test]
    fn a_fresh_key_flood_keeps_the_limiter_bounded() {
        let l = KeyedLimiter::<PublicKey>::new(1);
        // Many distinct valid keys, cheaply: about half of all x coordinates are on the curve.
        let mut keys = (0u64..).filter_map(|i| {
            let mut b = [0x5au8; 32];
            b[..8].copy_from_slice(&i.to_le_bytes());
            PublicKey::from_slice(&b).ok()
        });
        for _ in 0..(MAX_KEYS + MAX_KEYS / 2) {
            assert!(l.allow(&keys.next().unwrap()));
        }
        assert!(l.len() <= MAX_KEYS, "{} keys remembered", l.len());
        let k = Keys::generate().public_key();
        assert!(l.allow(&k));
        assert!(!l.allow(&k), "a remembered key is still limited");
    }

    #[test]
    fn a_connection_bucket_allows_its_burst_then_refuses() {
        let mut b = Bucket::new(3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
    }
}
