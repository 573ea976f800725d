//! Refusing expired, future-dated and replayed events.
//!
//! Signatures prove who wrote an event, not when it may be acted on. Every receiver of job traffic
//! runs events through [`Freshness`] (NIP-40 expiration, clock skew, maximum age) and, for events
//! that trigger work, through a [`ReplayGuard`] so the same request delivered by several relays,
//! or replayed by an attacker, is acted on once.

use std::collections::{HashMap, VecDeque};

use nostr::prelude::{Event, EventId, Timestamp};

use crate::ProtocolError;

/// Time-based acceptance rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// How far in the future `created_at` may be (clock skew), seconds.
    pub max_future_skew: u64,
    /// How old an event may be, seconds; `None` accepts any age.
    pub max_age: Option<u64>,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            max_future_skew: 300,
            max_age: None,
        }
    }
}

impl Freshness {
    /// Rules for job requests: at most `max_age` seconds old.
    pub fn for_requests(max_age: u64) -> Self {
        Self {
            max_age: Some(max_age),
            ..Self::default()
        }
    }

    /// Check `event` at time `now`.
    pub fn check(&self, event: &Event, now: Timestamp) -> Result<(), ProtocolError> {
        if let Some(exp) = event.tags.expiration() {
            if exp <= now {
                return Err(ProtocolError::Expired(exp.as_secs()));
            }
        }
        let created = event.created_at.as_secs();
        if created > now.as_secs().saturating_add(self.max_future_skew) {
            return Err(ProtocolError::FromFuture {
                created_at: created,
                skew: self.max_future_skew,
            });
        }
        if let Some(max_age) = self.max_age {
            if now.as_secs().saturating_sub(created) > max_age {
                return Err(ProtocolError::TooOld { max_age });
            }
        }
        Ok(())
    }
}

/// Remembers event ids seen within a window, bounded in memory.
///
/// Entries older than `window` seconds are forgotten; [`Freshness::max_age`] must be at most the
/// window so that a forgotten id can no longer pass the age check. When `capacity` is reached the
/// oldest entries are evicted first.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    window: u64,
    capacity: usize,
    seen: HashMap<EventId, u64>,
    order: VecDeque<(u64, EventId)>,
}

impl ReplayGuard {
    /// A guard remembering ids for `window` seconds, at most `capacity` of them.
    pub fn new(window: u64, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Whether `id` is remembered (without recording it).
    pub fn contains(&self, id: &EventId) -> bool {
        self.seen.contains_key(id)
    }

    fn prune(&mut self, now: u64) {
        while let Some(&(t, id)) = self.order.front() {
            if now.saturating_sub(t) > self.window || self.seen.len() > self.capacity {
                self.order.pop_front();
                if self.seen.get(&id) == Some(&t) {
                    self.seen.remove(&id);
                }
            } else {
                break;
            }
        }
    }

    /// Record `id` as seen at `now`; an error if it was already seen within the window.
    pub fn check_and_insert(&mut self, id: EventId, now: Timestamp) -> Result<(), ProtocolError> {
        let now = now.as_secs();
        self.prune(now);
        if self.seen.contains_key(&id) {
            return Err(ProtocolError::Replayed(id.to_hex()));
        }
        self.seen.insert(id, now);
        self.order.push_back((now, id));
        self.prune(now);
        Ok(())
    }
}
