//! Event storage: LMDB (durable) or memory, behind a wrapper that counts what is stored and
//! queried, plus the retention sweeper.
//!
//! Durability: nostr-lmdb's ingester commits every write it has queued in **one** LMDB transaction
//! and answers each waiting `save_event` only after that commit (group commit). The relay sends
//! `OK true` only after `save_event` returns, so an acknowledged event is on disk.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nostr_database::prelude::{
    DatabaseEventStatus, Error as DatabaseError, Features, NostrDatabase, RejectedReason,
    SaveEventStatus,
};
use nostr_sdk::prelude::{Event, EventId, Filter, Kind, Timestamp};

use crate::config::{Retention, Storage};
use crate::metrics::Metrics;

pub(crate) type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, DatabaseError>> + Send + 'a>>;

/// Maximum events kept by `--memory` mode before the oldest are dropped.
pub const MEMORY_MAX_EVENTS: usize = 1_000_000;

/// Open the configured store.
pub async fn open(storage: &Storage) -> Result<Arc<dyn NostrDatabase>, DatabaseError> {
    Ok(match storage {
        Storage::Memory => Arc::new(crate::memindex::Indexed::new(Arc::new(
            nostr_memory::MemoryDatabase::bounded(
                NonZeroUsize::new(MEMORY_MAX_EVENTS).expect("non-zero"),
            ),
        ))),
        Storage::Lmdb { dir, map_size } => {
            std::fs::create_dir_all(dir).map_err(DatabaseError::other)?;
            Arc::new(
                nostr_lmdb::NostrLmdb::builder(dir)
                    .map_size(*map_size)
                    .build()
                    .await
                    .map_err(DatabaseError::other)?,
            )
        }
    })
}

/// A database that records metrics for every save and query, delegating to `inner`.
pub struct Metered {
    inner: Arc<dyn NostrDatabase>,
    metrics: Arc<Metrics>,
}

impl Metered {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn NostrDatabase>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl fmt::Debug for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metered")
            .field("backend", &self.inner.backend())
            .finish()
    }
}

impl NostrDatabase for Metered {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    fn save_event<'a>(&'a self, event: &'a Event) -> Fut<'a, SaveEventStatus> {
        Box::pin(async move {
            let status = self.inner.save_event(event).await?;
            match &status {
                SaveEventStatus::Success => {
                    self.metrics.accepted(event.kind.as_u16());
                    self.metrics.live_event();
                }
                SaveEventStatus::Rejected(RejectedReason::Duplicate) => self.metrics.duplicate(),
                SaveEventStatus::Rejected(_) => self.metrics.rejected("blocked"),
            }
            Ok(status)
        })
    }

    fn check_id<'a>(&'a self, event_id: &'a EventId) -> Fut<'a, DatabaseEventStatus> {
        self.inner.check_id(event_id)
    }

    fn event_by_id<'a>(&'a self, event_id: &'a EventId) -> Fut<'a, Option<Event>> {
        self.inner.event_by_id(event_id)
    }

    fn count(&self, filter: Filter) -> Fut<'_, usize> {
        self.inner.count(filter)
    }

    fn query(&self, filter: Filter) -> Fut<'_, BTreeSet<Event>> {
        Box::pin(async move {
            let events = self.inner.query(filter).await?;
            self.metrics.query(events.len());
            Ok(events)
        })
    }

    fn negentropy_items(&self, filter: Filter) -> Fut<'_, Vec<(EventId, Timestamp)>> {
        self.inner.negentropy_items(filter)
    }

    fn delete(&self, filter: Filter) -> Fut<'_, ()> {
        self.inner.delete(filter)
    }

    fn wipe(&self) -> Fut<'_, ()> {
        self.inner.wipe()
    }
}

/// Old events looked at per sweep for the `other` rule (sweeps are a minute apart: a backlog
/// drains over several of them, without one long pause).
const OTHER_PER_SWEEP: usize = 5_000;

/// Where the `other` rule's walk through old events resumes: it pages backwards in time from
/// the age limit, so kept kinds (audit records, replaceable events) never block it.
pub type Cursor = Option<Timestamp>;

/// One retention sweep: delete events of each rule's kind older than its age (`seconds` 0:
/// kept), then one page of the walk for regular events of kinds without a rule older than
/// `other` (0: kept) — replaceable and addressable events (ads, profiles, relay lists) are
/// never swept that way. Returns where the walk resumes.
pub async fn sweep(
    db: &dyn NostrDatabase,
    rules: &[Retention],
    other: u64,
    now: Timestamp,
    cursor: Cursor,
) -> Cursor {
    for r in rules.iter().filter(|r| r.seconds > 0) {
        let until = Timestamp::from_secs(now.as_secs().saturating_sub(r.seconds));
        let filter = Filter::new().kind(Kind::from_u16(r.kind)).until(until);
        if let Err(e) = db.delete(filter).await {
            tracing::warn!(kind = r.kind, error = %e, "retention sweep failed");
        }
    }
    if other == 0 {
        return None;
    }
    let limit = Timestamp::from_secs(now.as_secs().saturating_sub(other));
    let until = cursor.filter(|c| *c < limit).unwrap_or(limit);
    sweep_other(db, rules, until, OTHER_PER_SWEEP).await
}

/// One page (`page` events, newest first) of old events up to `until`: those of regular kinds
/// without a rule are deleted. Returns the cursor just before the page's oldest event, or
/// `None` when the walk reached the end (the next one starts again at the age limit).
async fn sweep_other(
    db: &dyn NostrDatabase,
    rules: &[Retention],
    until: Timestamp,
    page: usize,
) -> Cursor {
    let old = match db.query(Filter::new().until(until).limit(page)).await {
        Ok(evs) => evs,
        Err(e) => {
            tracing::warn!(error = %e, "retention sweep (other kinds) failed");
            return None;
        }
    };
    let next = (old.len() >= page)
        .then(|| old.iter().map(|e| e.created_at).min())
        .flatten()
        .and_then(|t| t.as_secs().checked_sub(1))
        .map(Timestamp::from_secs);
    let ids: Vec<EventId> = old
        .into_iter()
        .filter(|e| e.kind.is_regular() && !rules.iter().any(|r| r.kind == e.kind.as_u16()))
        .map(|e| e.id)
        .collect();
    if !ids.is_empty() {
        if let Err(e) = db.delete(Filter::new().ids(ids)).await {
            tracing::warn!(error = %e, "retention sweep (other kinds) failed");
        }
    }
    next
}

/// Run retention sweeps every `every` until `shutdown` fires.
pub async fn retention_loop(
    db: Arc<dyn NostrDatabase>,
    rules: Vec<Retention>,
    other: u64,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if rules.iter().all(|r| r.seconds == 0) && other == 0 {
        return;
    }
    let mut tick = tokio::time::interval(every);
    let mut cursor = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                cursor = sweep(db.as_ref(), &rules, other, Timestamp::now(), cursor).await;
                metrics.retention_run();
            }
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::{EventBuilder, FinalizeEvent, Keys};

    const NOW: Timestamp = Timestamp::from_secs(1_800_000_000);

    /// An event of `kind` made `age` seconds before [`NOW`].
    fn aged(keys: &Keys, kind: u16, age: u64) -> Event {
        EventBuilder::new(Kind::from_u16(kind), format!("{kind}-{age}"))
            .custom_created_at(Timestamp::from_secs(NOW.as_secs() - age))
            .finalize(keys)
            .unwrap()
    }

    #[tokio::test]
    async fn sweep_deletes_old_events_by_rule_and_other_regular_kinds_by_default() {
        let db = open(&Storage::Memory).await.unwrap();
        let (keys, now) = (Keys::generate(), NOW);
        let ev = |kind: u16, age: u64| aged(&keys, kind, age);
        let old_req = ev(5050, 1000);
        let new_req = ev(5050, 10);
        let old_metering = ev(7060, 1000);
        let old_note = ev(1, 1000);
        let new_note = ev(1, 10);
        let old_profile = ev(0, 1000);
        for e in [
            &old_req,
            &new_req,
            &old_metering,
            &old_note,
            &new_note,
            &old_profile,
        ] {
            assert!(db.save_event(e).await.unwrap().is_success());
        }
        let rules = [
            Retention {
                kind: 5050,
                seconds: 100,
            },
            Retention {
                kind: 7060,
                seconds: 0,
            },
        ];
        assert_eq!(sweep(db.as_ref(), &rules, 500, now, None).await, None);
        let left: Vec<EventId> = db
            .query(Filter::new())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert!(!left.contains(&old_req.id), "old request deleted");
        assert!(left.contains(&new_req.id), "recent request kept");
        assert!(
            left.contains(&old_metering.id),
            "a kind kept for ever is not `other`"
        );
        assert!(
            !left.contains(&old_note.id),
            "old events of other kinds deleted"
        );
        assert!(
            left.contains(&new_note.id),
            "recent events of other kinds kept"
        );
        assert!(
            left.contains(&old_profile.id),
            "replaceable events are never swept"
        );
    }

    /// Kept events newer than an old note fill whole pages: the walk pages past them (it does
    /// not look at the same newest page for ever) and reaches the note.
    #[tokio::test]
    async fn the_other_walk_pages_past_kept_events() {
        let db = open(&Storage::Memory).await.unwrap();
        let (keys, now) = (Keys::generate(), NOW);
        let ev = |kind: u16, age: u64| aged(&keys, kind, age);
        let note = ev(1, 2_000);
        let kept: Vec<Event> = (0..4).map(|n| ev(7060, 1_000 + n)).collect();
        for e in kept.iter().chain([&note]) {
            assert!(db.save_event(e).await.unwrap().is_success());
        }
        let rules = [Retention {
            kind: 7060,
            seconds: 0,
        }];
        let until = Timestamp::from_secs(now.as_secs() - 500);
        // Pages of two: two pages of kept records, then the note.
        let mut cursor = sweep_other(db.as_ref(), &rules, until, 2).await;
        let mut pages = 1;
        while let Some(c) = cursor {
            cursor = sweep_other(db.as_ref(), &rules, c, 2).await;
            pages += 1;
            assert!(pages < 10, "the walk ends");
        }
        assert_eq!(pages, 3, "two pages of kept records, then the note");
        let left = db.query(Filter::new()).await.unwrap();
        assert!(
            !left.iter().any(|e| e.id == note.id),
            "the old note deleted"
        );
        assert_eq!(left.len(), 4, "the kept records stay");
    }
}
