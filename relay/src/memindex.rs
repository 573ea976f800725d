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

/// Index entries kept at most (stale ones — of events evicted or deleted — included); past it
/// the index is rebuilt from what is stored. An entry is two event ids (64 bytes) plus the map's
/// overhead: the index stays well under the memory store's own size.
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
}

impl Index {
    fn add(&mut self, event: &Event) {
        let e = e_tag();
        for tag in event.tags.iter() {
            if tag.single_letter_tag() == Some(e) {
                if let Some(v) = tag.content().and_then(|v| EventId::from_hex(v).ok()) {
                    self.by_e.entry(v).or_default().push(event.id);
                    self.entries += 1;
                }
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

    /// Every stored event indexed again (the index outgrew its bound with stale entries).
    async fn rebuild(&self) {
        let Ok(all) = self.inner.query(Filter::new()).await else {
            return;
        };
        let mut fresh = Index::default();
        for ev in &all {
            fresh.add(ev);
        }
        *self.lock() = fresh;
    }

    async fn query_indexed(&self, filter: Filter, values: Vec<EventId>) -> BTreeSet<Event> {
        let ids: Vec<EventId> = {
            let index = self.lock();
            let mut ids: Vec<EventId> = values
                .iter()
                .filter_map(|v| index.by_e.get(v))
                .flatten()
                .copied()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let mut out = BTreeSet::new();
        for id in ids {
            if let Ok(Some(ev)) = self.inner.event_by_id(&id).await {
                if filter.match_event(&ev, MatchEventOptions::new()) {
                    out.insert(ev);
                }
            }
        }
        // Newest first (Event's order), then the filter's limit, as a scan would give.
        match filter.limit {
            Some(n) if out.len() > n => out.into_iter().take(n).collect(),
            _ => out,
        }
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
                let full = {
                    let mut index = self.lock();
                    index.add(event);
                    index.entries > MAX_ENTRIES
                };
                if full {
                    self.rebuild().await;
                }
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
            match Self::indexable(&filter) {
                Some(values) => Ok(self.query_indexed(filter, values).await.len()),
                None => self.inner.count(filter).await,
            }
        })
    }

    fn query(&self, filter: Filter) -> Fut<'_, BTreeSet<Event>> {
        Box::pin(async move {
            match Self::indexable(&filter) {
                Some(values) => Ok(self.query_indexed(filter, values).await),
                None => self.inner.query(filter).await,
            }
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
    }
}
