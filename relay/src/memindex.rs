//! `--memory` storage with an index on `e` tags.
//!
//! nostr-memory answers a filter it has no index for by scanning every stored event, and the
//! market's commonest query is one of those: every job's `{kinds: [7000, 6050, 7060], #e:
//! [request]}`. A profile of the relay under the job benchmark put half its CPU in that scan
//! (`Filter::tag_match`), so each job cost O(events stored) and throughput fell as the store
//! filled (docs/benchmarks.md, issue 16). This wrapper keeps `e` value → event ids, answers such
//! filters from it (each candidate still checked with `match_event`), and passes everything
//! else through. LMDB indexes tags itself and is not wrapped.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use nostr_database::prelude::{DatabaseEventStatus, Features, NostrDatabase, SaveEventStatus};
use nostr_sdk::prelude::{Event, EventId, Filter, MatchEventOptions, SingleLetterTag, Timestamp};

use crate::store::Fut;

/// Index entries kept at most (an entry is two event ids plus the map's overhead, ~120 bytes).
/// Stale ones (events evicted, deleted or replaced) are dropped when a lookup meets them. Past
/// the bound — someone publishing events with thousands of `e` tags each — the index stops
/// answering and every query goes back to the scan: slower, never wrong.
const MAX_ENTRIES: usize = 2 * crate::store::MEMORY_MAX_EVENTS;

/// Most `#e` values a filter may name and still be answered from the index.
const MAX_VALUES: usize = 256;

fn e_tag() -> SingleLetterTag {
    SingleLetterTag::from_char('e').expect("e is a tag letter")
}

#[derive(Default)]
struct Index {
    /// `e` value (an event id; other values are not indexed) → the events that carry it.
    by_e: HashMap<EventId, Vec<EventId>>,
    entries: usize,
    /// The bound was reached: the index no longer knows every event, so it answers nothing.
    overflowed: bool,
}

impl Index {
    fn add(&mut self, event: &Event) {
        if self.overflowed {
            return;
        }
        let e = e_tag();
        let mut values: Vec<EventId> = event
            .tags
            .iter()
            .filter(|t| t.single_letter_tag() == Some(e))
            .filter_map(|t| t.content().and_then(|v| EventId::from_hex(v).ok()))
            .collect();
        // One entry per value, however often the event repeats it.
        values.sort_unstable();
        values.dedup();
        if self.entries + values.len() > MAX_ENTRIES {
            tracing::warn!(
                entries = self.entries,
                "the e-tag index is full; queries fall back to scanning the memory store"
            );
            self.overflowed = true;
            self.by_e = HashMap::new();
            return;
        }
        for v in values {
            self.by_e.entry(v).or_default().push(event.id);
            self.entries += 1;
        }
    }

    /// Forget `stale` ids (no longer stored) under `key`.
    fn prune(&mut self, key: &EventId, stale: &[EventId]) {
        if let Some(ids) = self.by_e.get_mut(key) {
            let before = ids.len();
            ids.retain(|id| !stale.contains(id));
            self.entries -= before - ids.len();
            if ids.is_empty() {
                self.by_e.remove(key);
            }
        }
    }
}

/// A memory store whose `#e` queries use an index.
pub struct Indexed {
    inner: Arc<dyn NostrDatabase>,
    index: Mutex<Index>,
}

impl Indexed {
    /// Wrap a (fresh, empty) memory store.
    pub fn new(inner: Arc<dyn NostrDatabase>) -> Self {
        Self {
            inner,
            index: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `#e` values of a filter the index can answer: `#e` set with event ids only (an event
    /// whose `e` tag is not an id was not indexed, so other values go to the scan), no ids and
    /// no search.
    fn indexable(filter: &Filter) -> Option<Vec<EventId>> {
        let values = filter.generic_tags.get(&e_tag())?;
        if filter.ids.is_some() || filter.search.is_some() || values.len() > MAX_VALUES {
            return None;
        }
        values
            .iter()
            .map(|v| EventId::from_hex(v).ok().filter(|id| id.to_hex() == *v))
            .collect()
    }

    /// Answer from the index; `None` when it cannot (it overflowed).
    async fn query_indexed(&self, filter: &Filter, values: &[EventId]) -> Option<BTreeSet<Event>> {
        let candidates: Vec<(EventId, EventId)> = {
            let index = self.lock();
            if index.overflowed {
                return None;
            }
            values
                .iter()
                .filter_map(|v| index.by_e.get(v).map(|ids| (v, ids)))
                .flat_map(|(v, ids)| ids.iter().map(move |id| (*v, *id)))
                .collect()
        };
        let mut out = BTreeSet::new();
        let mut stale: Vec<(EventId, EventId)> = Vec::new();
        for (key, id) in candidates {
            match self.inner.event_by_id(&id).await {
                Ok(Some(ev)) => {
                    if filter.match_event(&ev, MatchEventOptions::new()) {
                        out.insert(ev);
                    }
                }
                Ok(None) => stale.push((key, id)),
                Err(_) => {}
            }
        }
        if !stale.is_empty() {
            let mut index = self.lock();
            for (key, id) in &stale {
                index.prune(key, std::slice::from_ref(id));
            }
        }
        // Newest first (Event's order), then the filter's limit, as a scan would give.
        Some(match filter.limit {
            Some(n) if out.len() > n => out.into_iter().take(n).collect(),
            _ => out,
        })
    }
}

impl fmt::Debug for Indexed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Indexed").finish_non_exhaustive()
    }
}

impl NostrDatabase for Indexed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    fn save_event<'a>(&'a self, event: &'a Event) -> Fut<'a, SaveEventStatus> {
        Box::pin(async move {
            let status = self.inner.save_event(event).await?;
            if matches!(status, SaveEventStatus::Success) {
                self.lock().add(event);
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
        Box::pin(async move {
            if let Some(values) = Self::indexable(&filter) {
                if let Some(found) = self.query_indexed(&filter, &values).await {
                    return Ok(found.len());
                }
            }
            self.inner.count(filter).await
        })
    }

    fn query(&self, filter: Filter) -> Fut<'_, BTreeSet<Event>> {
        Box::pin(async move {
            if let Some(values) = Self::indexable(&filter) {
                if let Some(found) = self.query_indexed(&filter, &values).await {
                    return Ok(found);
                }
            }
            self.inner.query(filter).await
        })
    }

    fn negentropy_items(&self, filter: Filter) -> Fut<'_, Vec<(EventId, Timestamp)>> {
        self.inner.negentropy_items(filter)
    }

    fn delete(&self, filter: Filter) -> Fut<'_, ()> {
        self.inner.delete(filter)
    }

    fn wipe(&self) -> Fut<'_, ()> {
        Box::pin(async move {
            self.inner.wipe().await?;
            *self.lock() = Index::default();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::{EventBuilder, FinalizeEvent, Keys, Kind, Tag};

    /// The index gives what the scan gives: same events, same order, the limit applied.
    #[tokio::test]
    async fn indexed_queries_answer_as_the_scan_does() {
        let memory = || {
            Arc::new(nostr_memory::MemoryDatabase::bounded(
                std::num::NonZeroUsize::new(10_000).unwrap(),
            ))
        };
        let scan = memory();
        let indexed = Indexed::new(memory());
        let keys = Keys::generate();
        let targets: Vec<EventId> = (0..5).map(|i| EventId::from_byte_array([i; 32])).collect();
        for i in 0..200u64 {
            let kind = [7000u16, 6050, 7060, 1][i as usize % 4];
            let ev = EventBuilder::new(Kind::from_u16(kind), format!("{i}"))
                .tag(Tag::event(targets[i as usize % 5]))
                .custom_created_at(Timestamp::from_secs(1_800_000_000 + i))
                .finalize(&keys)
                .unwrap();
            scan.save_event(&ev).await.unwrap();
            indexed.save_event(&ev).await.unwrap();
        }
        for filter in [
            Filter::new()
                .kinds([7000, 6050, 7060].map(Kind::from_u16))
                .event(targets[2]),
            Filter::new().event(targets[0]).limit(7),
            Filter::new()
                .events([targets[1], targets[3]])
                .kind(Kind::from_u16(1)),
            Filter::new().event(EventId::from_byte_array([9; 32])),
        ] {
            assert!(Indexed::indexable(&filter).is_some());
            let want = scan.query(filter.clone()).await.unwrap();
            let got = indexed.query(filter.clone()).await.unwrap();
            assert_eq!(
                got.iter().map(|e| e.id).collect::<Vec<_>>(),
                want.iter().map(|e| e.id).collect::<Vec<_>>(),
                "{filter:?}"
            );
            assert_eq!(indexed.count(filter.clone()).await.unwrap(), want.len());
        }
        // A value that is not an event id (upper case, a word) goes to the scan.
        let upper = EventId::from_byte_array([0xab; 32]).to_hex().to_uppercase();
        let upper = Filter::new().custom_tag(e_tag(), upper);
        assert!(Indexed::indexable(&upper).is_none());
        // A deleted event is gone from indexed answers too.
        let first = scan.query(Filter::new().event(targets[4])).await.unwrap();
        let victim = first.iter().next().unwrap().id;
        indexed.delete(Filter::new().id(victim)).await.unwrap();
        let got = indexed
            .query(Filter::new().event(targets[4]))
            .await
            .unwrap();
        assert!(!got.iter().any(|e| e.id == victim));
        assert_eq!(got.len(), first.len() - 1);
        // …and its entry is gone from the index.
        let entries = indexed.lock().entries;
        assert_eq!(entries, 199, "one stale entry pruned");
    }

    /// An event repeating one `e` value a thousand times costs one entry; past the bound the
    /// index stops answering and queries fall back to the scan, still right.
    #[tokio::test]
    async fn the_index_is_bounded_and_falls_back_to_the_scan() {
        let store = Arc::new(nostr_memory::MemoryDatabase::bounded(
            std::num::NonZeroUsize::new(100).unwrap(),
        ));
        let indexed = Indexed::new(store);
        let keys = Keys::generate();
        let target = EventId::from_byte_array([7; 32]);
        let ev = EventBuilder::new(Kind::from_u16(1), "x")
            .tags((0..1000).map(|_| Tag::event(target)))
            .finalize(&keys)
            .unwrap();
        indexed.save_event(&ev).await.unwrap();
        assert_eq!(indexed.lock().entries, 1);
        indexed.lock().entries = MAX_ENTRIES;
        let other = EventBuilder::new(Kind::from_u16(1), "y")
            .tag(Tag::event(target))
            .finalize(&keys)
            .unwrap();
        indexed.save_event(&other).await.unwrap();
        assert!(indexed.lock().overflowed);
        let got = indexed.query(Filter::new().event(target)).await.unwrap();
        assert_eq!(got.len(), 2, "the scan answers once the index gave up");
    }
}
