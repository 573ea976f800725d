//! Live subscriptions: which connection wants which events, and the fan-out of each stored
//! event to them.
//!
//! Every connection registers here and gets its own queue. When an event is stored (after its
//! commit) or an ephemeral event is accepted, [`Hub::publish`] serializes it once and queues a
//! frame for each connection subscription whose filters match. Only events that match a
//! connection's own filters ever enter its queue, so a burst of other people's traffic costs a
//! reader nothing; a connection that reads slower than its **own** subscriptions produce loses
//! only the subscriptions that overflowed, each told with a `CLOSED` naming it, and keeps the
//! rest.
//!
//! Memory is bounded twice: each connection may have at most [`Limits::conn_bytes`] of frames
//! queued, and all connections together [`Limits::total_bytes`].
//!
//! The work per event does not grow with unrelated subscriptions: each filter is indexed under
//! the values of one field an event must match (its ids, authors, one tag's values or kinds —
//! whichever has fewest), so publishing an event looks up its id, author, kind and tags and
//! matches only the filters found there, plus those without any such field.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nostr_sdk::prelude::{
    Event, EventId, Filter, Kind, MatchEventOptions, PublicKey, SingleLetterTag, SubscriptionId,
};
use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;

/// The queue bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of frames one connection may have queued before its overflowing subscription is cut.
    pub conn_bytes: usize,
    /// Bytes of frames all connections together may have queued.
    pub total_bytes: usize,
    /// Filters in live subscriptions, all connections together: each stored event is matched
    /// against every one, so this bounds the work per event.
    pub total_filters: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // With at most 128 connections per address (the default), one address can fill
            // at most half of the relay-wide bound.
            conn_bytes: 2 << 20,
            total_bytes: 512 << 20,
            total_filters: 50_000,
        }
    }
}

/// The hub holds as many live filters as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The `CLOSED` reason for a subscription cut because its reader fell behind.
pub const SLOW_READER: &str = "error: slow reader: this subscription's live events outran the connection; resubscribe with `since` to catch up from the store";

/// Where a filter is found: one value of one field that an event must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Id(EventId),
    Author(PublicKey),
    Tag(SingleLetterTag, String),
    Kind(Kind),
    /// The filter names no ids, authors, tags or kinds.
    Any,
}

/// One opening of one subscription of one connection.
type Entry = (u64, SubscriptionId, u64);

/// The slots of a filter: the values of its field with fewest values (an empty set of ids,
/// authors or kinds means "any"; an empty set of tag values matches nothing: no slot).
fn slots(f: &Filter) -> Vec<Slot> {
    let mut best: Option<Vec<Slot>> = None;
    let mut consider = |v: Vec<Slot>| {
        if best.as_ref().is_none_or(|b| v.len() < b.len()) {
            best = Some(v);
        }
    };
    if let Some(ids) = f.ids.as_ref().filter(|v| !v.is_empty()) {
        consider(ids.iter().map(|i| Slot::Id(*i)).collect());
    }
    if let Some(authors) = f.authors.as_ref().filter(|v| !v.is_empty()) {
        consider(authors.iter().map(|a| Slot::Author(*a)).collect());
    }
    for (tag, values) in &f.generic_tags {
        consider(values.iter().map(|v| Slot::Tag(*tag, v.clone())).collect());
    }
    if let Some(kinds) = f.kinds.as_ref().filter(|v| !v.is_empty()) {
        consider(kinds.iter().map(|k| Slot::Kind(*k)).collect());
    }
    best.unwrap_or_else(|| vec![Slot::Any])
}

/// The slots an event can be found under.
fn event_slots(e: &Event) -> Vec<Slot> {
    let mut out = vec![
        Slot::Id(e.id),
        Slot::Author(e.pubkey),
        Slot::Kind(e.kind),
        Slot::Any,
    ];
    out.extend(
        e.tags
            .iter()
            .filter_map(|t| Some(Slot::Tag(t.single_letter_tag()?, t.content()?.to_owned()))),
    );
    out
}

/// Connections and the filter index, under one lock: publishing reads it, subscribing and
/// disconnecting write it briefly.
#[derive(Default)]
struct State {
    conns: HashMap<u64, Arc<Listener>>,
    index: HashMap<Slot, HashSet<Entry>>,
    entries: usize,
}

impl State {
    fn add(&mut self, entry: &Entry, filters: &[Filter]) {
        for f in filters {
            for slot in slots(f) {
                if self.index.entry(slot).or_default().insert(entry.clone()) {
                    self.entries += 1;
                }
            }
        }
    }

    fn remove(&mut self, entry: &Entry, filters: &[Filter]) {
        for f in filters {
            for slot in slots(f) {
                if let Some(set) = self.index.get_mut(&slot) {
                    if set.remove(entry) {
                        self.entries -= 1;
                    }
                    if set.is_empty() {
                        self.index.remove(&slot);
                    }
                }
            }
        }
    }
}

/// Index entries (filter values) for all connections together.
const MAX_INDEX_ENTRIES: usize = 500_000;

/// The live subscriptions of all connections.
pub struct Hub {
    state: RwLock<State>,
    next_id: AtomicU64,
    queued: AtomicUsize,
    filters: AtomicUsize,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// One live subscription: its filters, and which opening of its id it is (frames queued for an
/// earlier opening — closed, cut or replaced since — are dropped, never delivered under the id).
struct Sub {
    generation: u64,
    filters: Vec<Filter>,
    /// Size of the `REQ` that opened it (a connection's live REQs are bounded in bytes).
    bytes: usize,
}

/// A frame queued for one opening of one subscription.
struct Queued {
    sub: SubscriptionId,
    generation: u64,
    frame: String,
}

/// One connection's side of the hub.
struct Listener {
    subs: Mutex<HashMap<SubscriptionId, Sub>>,
    generations: AtomicU64,
    tx: mpsc::UnboundedSender<Queued>,
    queued: AtomicUsize,
    cut: Mutex<Vec<SubscriptionId>>,
    cut_notify: Notify,
}

/// What a connection receives from the hub.
pub enum Delivery {
    /// A serialized `["EVENT", sub, event]` frame.
    Frame(String),
    /// These subscriptions were cut: the connection fell behind on them.
    Cut(Vec<SubscriptionId>),
}

impl Hub {
    /// An empty hub.
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(State::default()),
            next_id: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            filters: AtomicUsize::new(0),
            limits,
            metrics,
        })
    }

    /// Register a connection; it leaves the hub when the [`Registration`] drops.
    pub fn register(self: &Arc<Self>) -> Registration {
        let (tx, rx) = mpsc::unbounded_channel();
        let listener = Arc::new(Listener {
            subs: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            tx,
            queued: AtomicUsize::new(0),
            cut: Mutex::new(Vec::new()),
            cut_notify: Notify::new(),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.state
            .write()
            .expect("hub lock")
            .conns
            .insert(id, listener.clone());
        Registration {
            id,
            hub: self.clone(),
            listener,
            rx,
        }
    }

    /// Bytes queued for all connections.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queue `event` for every subscription that matches it. Never blocks on a reader.
    pub fn publish(&self, event: &Event) {
        let state = self.state.read().expect("hub lock");
        // Candidates from the index, one per connection subscription.
        let mut found: HashMap<u64, HashSet<&SubscriptionId>> = HashMap::new();
        for slot in event_slots(event) {
            for (conn, sub, _) in state.index.get(&slot).into_iter().flatten() {
                found.entry(*conn).or_default().insert(sub);
            }
        }
        if found.is_empty() {
            return;
        }
        let json = event.as_json();
        let mut cut_entries = Vec::new();
        for (conn, ids) in found {
            let Some(l) = state.conns.get(&conn) else {
                continue;
            };
            let mut subs = l.subs.lock().expect("subs lock");
            let mut cut = Vec::new();
            for id in ids {
                let Some(sub) = subs.get(id) else { continue };
                if !sub
                    .filters
                    .iter()
                    .any(|f| f.match_event(event, MatchEventOptions::new()))
                {
                    continue;
                }
                let frame = event_frame(id, &json);
                let n = frame.len();
                let fits = l.queued.load(Ordering::Relaxed) + n <= self.limits.conn_bytes
                    && self.queued.load(Ordering::Relaxed) + n <= self.limits.total_bytes;
                let queued = Queued {
                    sub: id.clone(),
                    generation: sub.generation,
                    frame,
                };
                if fits && l.tx.send(queued).is_ok() {
                    l.queued.fetch_add(n, Ordering::Relaxed);
                    self.queued.fetch_add(n, Ordering::Relaxed);
                } else {
                    cut.push(id.clone());
                }
            }
            if !cut.is_empty() {
                for id in &cut {
                    if let Some(sub) = subs.remove(id) {
                        self.filters.fetch_sub(sub.filters.len(), Ordering::Relaxed);
                        cut_entries.push(((conn, id.clone(), sub.generation), sub.filters));
                    }
                }
                self.metrics.subscriptions_cut(cut.len());
                l.cut.lock().expect("cut lock").extend(cut);
                l.cut_notify.notify_one();
            }
        }
        drop(state);
        if !cut_entries.is_empty() {
            let mut state = self.state.write().expect("hub lock");
            for (entry, filters) in &cut_entries {
                state.remove(entry, filters);
            }
        }
    }
}

/// `["EVENT",<sub>,<event>]` from an event already serialized.
pub fn event_frame(sub: &SubscriptionId, event_json: &str) -> String {
    let sub = serde_json::to_string(sub.as_str()).expect("a string serializes");
    let mut frame = String::with_capacity(event_json.len() + sub.len() + 12);
    frame.push_str("[\"EVENT\",");
    frame.push_str(&sub);
    frame.push(',');
    frame.push_str(event_json);
    frame.push(']');
    frame
}

/// A connection's membership in the hub: its live subscriptions and its queue.
pub struct Registration {
    id: u64,
    hub: Arc<Hub>,
    listener: Arc<Listener>,
    rx: mpsc::UnboundedReceiver<Queued>,
}

impl Registration {
    /// Start (or replace) a live subscription opened by a `REQ` of `bytes`, unless the hub holds
    /// its limit of filters.
    pub fn subscribe(
        &self,
        id: SubscriptionId,
        filters: Vec<Filter>,
        bytes: usize,
    ) -> Result<(), Full> {
        // Lock order everywhere: the hub's state, then a connection's subscriptions.
        let mut state = self.hub.state.write().expect("hub lock");
        let mut subs = self.listener.subs.lock().expect("subs lock");
        let old = subs.get(&id).map_or(0, |s| s.filters.len());
        let total = &self.hub.filters;
        let now = total.load(Ordering::Relaxed).saturating_sub(old);
        let values: usize = filters.iter().map(|f| slots(f).len()).sum();
        if now + filters.len() > self.hub.limits.total_filters
            || state.entries + values > MAX_INDEX_ENTRIES
        {
            return Err(Full);
        }
        if let Some(prev) = subs.remove(&id) {
            state.remove(&(self.id, id.clone(), prev.generation), &prev.filters);
        }
        total.fetch_add(filters.len(), Ordering::Relaxed);
        total.fetch_sub(old, Ordering::Relaxed);
        let generation = self.listener.generations.fetch_add(1, Ordering::Relaxed);
        state.add(&(self.id, id.clone(), generation), &filters);
        subs.insert(
            id,
            Sub {
                generation,
                filters,
                bytes,
            },
        );
        Ok(())
    }

    /// End a live subscription; whether it existed.
    pub fn unsubscribe(&self, id: &SubscriptionId) -> bool {
        let mut state = self.hub.state.write().expect("hub lock");
        let removed = self.listener.subs.lock().expect("subs lock").remove(id);
        if let Some(sub) = &removed {
            state.remove(&(self.id, id.clone(), sub.generation), &sub.filters);
            self.hub
                .filters
                .fetch_sub(sub.filters.len(), Ordering::Relaxed);
        }
        removed.is_some()
    }

    /// Whether `id` is a live subscription.
    pub fn has(&self, id: &SubscriptionId) -> bool {
        self.listener
            .subs
            .lock()
            .expect("subs lock")
            .contains_key(id)
    }

    /// Bytes of the `REQ`s that opened the live subscriptions.
    pub fn held_bytes(&self) -> usize {
        let subs = self.listener.subs.lock().expect("subs lock");
        subs.values().map(|s| s.bytes).sum()
    }

    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        self.listener.subs.lock().expect("subs lock").len()
    }

    /// Whether there is no live subscription.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next frame or cut notice (cancel-safe).
    pub async fn next(&mut self) -> Delivery {
        loop {
            let cut = std::mem::take(&mut *self.listener.cut.lock().expect("cut lock"));
            if !cut.is_empty() {
                return Delivery::Cut(cut);
            }
            tokio::select! {
                biased;
                _ = self.listener.cut_notify.notified() => continue,
                queued = self.rx.recv() => match queued {
                    Some(q) => {
                        if let Some(frame) = self.current(q) {
                            return Delivery::Frame(frame);
                        }
                    }
                    // The sender lives in the listener we hold: never closed.
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }

    /// A frame already queued, without waiting.
    pub fn try_frame(&mut self) -> Option<String> {
        loop {
            let q = self.rx.try_recv().ok()?;
            if let Some(frame) = self.current(q) {
                return Some(frame);
            }
        }
    }

    /// The frame, if its subscription is still the opening it was queued for.
    fn current(&self, q: Queued) -> Option<String> {
        self.release(q.frame.len());
        let subs = self.listener.subs.lock().expect("subs lock");
        let live = subs
            .get(&q.sub)
            .is_some_and(|s| s.generation == q.generation);
        live.then_some(q.frame)
    }

    fn release(&self, n: usize) {
        self.listener.queued.fetch_sub(n, Ordering::Relaxed);
        self.hub.queued.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.hub.state.write().expect("hub lock");
        state.conns.remove(&self.id);
        let subs = std::mem::take(&mut *self.listener.subs.lock().expect("subs lock"));
        let mut filters = 0;
        for (id, sub) in subs {
            state.remove(&(self.id, id, sub.generation), &sub.filters);
            filters += sub.filters.len();
        }
        drop(state);
        self.hub.filters.fetch_sub(filters, Ordering::Relaxed);
        // Frames still queued are dropped with the receiver: give their bytes back.
        self.hub.queued.fetch_sub(
            self.listener.queued.swap(0, Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::*;

    fn note(kind: u16, keys: &Keys) -> Event {
        EventBuilder::new(Kind::from_u16(kind), "x")
            .finalize(keys)
            .unwrap()
    }

    async fn frame(r: &mut Registration) -> Option<Delivery> {
        tokio::time::timeout(std::time::Duration::from_millis(20), r.next())
            .await
            .ok()
    }

    #[tokio::test]
    async fn only_matching_events_are_queued() {
        let hub = Hub::new(Limits::default(), Arc::new(Metrics::default()));
        let mut a = hub.register();
        a.subscribe(
            SubscriptionId::new("jobs"),
            vec![Filter::new().kind(Kind::from_u16(5050))],
            0,
        )
        .unwrap();
        let keys = Keys::generate();
        for _ in 0..1000 {
            hub.publish(&note(1, &keys));
        }
        assert_eq!(hub.queued_bytes(), 0, "unrelated events queue nothing");
        let job = note(5050, &keys);
        hub.publish(&job);
        match frame(&mut a).await {
            Some(Delivery::Frame(f)) => {
                let v: serde_json::Value = serde_json::from_str(&f).unwrap();
                assert_eq!(v[0], "EVENT");
                assert_eq!(v[1], "jobs");
                assert_eq!(v[2]["id"], job.id.to_hex());
            }
            _ => panic!("the matching event is delivered"),
        }
        assert_eq!(hub.queued_bytes(), 0);
    }

    /// A reader that falls behind loses only the subscription that overflowed, is told which,
    /// and another reader on the same events loses nothing.
    #[tokio::test]
    async fn a_slow_reader_loses_only_its_overflowing_subscription() {
        let limits = Limits {
            conn_bytes: 20_000,
            ..Limits::default()
        };
        let hub = Hub::new(limits, Arc::new(Metrics::default()));
        let mut slow = hub.register();
        slow.subscribe(
            SubscriptionId::new("notes"),
            vec![Filter::new().kind(Kind::TextNote)],
            0,
        )
        .unwrap();
        slow.subscribe(
            SubscriptionId::new("jobs"),
            vec![Filter::new().kind(Kind::from_u16(5050))],
            0,
        )
        .unwrap();
        let mut fast = hub.register();
        fast.subscribe(
            SubscriptionId::new("notes"),
            vec![Filter::new().kind(Kind::TextNote)],
            0,
        )
        .unwrap();
        let keys = Keys::generate();
        let mut got = 0;
        for _ in 0..200 {
            hub.publish(&note(1, &keys));
            while let Some(Delivery::Frame(_)) = frame(&mut fast).await {
                got += 1;
            }
        }
        assert_eq!(got, 200, "the reader that keeps up gets every event");
        assert!(!slow.has(&SubscriptionId::new("notes")));
        assert!(
            slow.has(&SubscriptionId::new("jobs")),
            "the quiet one stays"
        );
        let mut cut = None;
        while let Some(d) = frame(&mut slow).await {
            if let Delivery::Cut(ids) = d {
                cut = Some(ids);
            }
        }
        assert_eq!(cut, Some(vec![SubscriptionId::new("notes")]));
        assert_eq!(hub.queued_bytes(), 0, "drained");
    }

    /// Frames queued for a subscription that was then closed or replaced are never delivered
    /// under its id (after its CLOSED, or after the new opening's EOSE).
    #[tokio::test]
    async fn frames_of_a_closed_or_replaced_subscription_are_dropped() {
        let hub = Hub::new(Limits::default(), Arc::new(Metrics::default()));
        let mut a = hub.register();
        let id = SubscriptionId::new("s");
        a.subscribe(id.clone(), vec![Filter::new().kind(Kind::TextNote)], 0)
            .unwrap();
        let keys = Keys::generate();
        hub.publish(&note(1, &keys));
        // Replaced by a filter the queued note does not match.
        a.subscribe(
            id.clone(),
            vec![Filter::new().kind(Kind::from_u16(5050))],
            0,
        )
        .unwrap();
        let job = note(5050, &keys);
        hub.publish(&job);
        match frame(&mut a).await {
            Some(Delivery::Frame(f)) => assert!(f.contains(&job.id.to_hex()), "{f}"),
            _ => panic!("the new opening's event is delivered"),
        }
        assert!(
            frame(&mut a).await.is_none(),
            "the old opening's frame is dropped"
        );
        hub.publish(&note(5050, &keys));
        assert!(a.unsubscribe(&id));
        assert!(frame(&mut a).await.is_none(), "closed: nothing more");
        assert_eq!(hub.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_dropped_connection_gives_its_queued_bytes_back() {
        let hub = Hub::new(Limits::default(), Arc::new(Metrics::default()));
        let a = hub.register();
        a.subscribe(SubscriptionId::new("all"), vec![Filter::new()], 0)
            .unwrap();
        hub.publish(&note(1, &Keys::generate()));
        assert!(hub.queued_bytes() > 0);
        drop(a);
        assert_eq!(hub.queued_bytes(), 0);
        assert_eq!(hub.filters.load(Ordering::Relaxed), 0);
        let state = hub.state.read().unwrap();
        assert!(state.conns.is_empty());
        assert_eq!((state.index.len(), state.entries), (0, 0));
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// Live filters are bounded for the whole relay: a REQ past the bound is refused, and
    /// closing, replacing and disconnecting give filters back.
    #[test]
    fn live_filters_are_bounded_for_all_connections() {
        let limits = Limits {
            total_filters: 10,
            ..Limits::default()
        };
        let hub = Hub::new(limits, Arc::new(Metrics::default()));
        let a = hub.register();
        let b = hub.register();
        let six = vec![Filter::new().kind(Kind::TextNote); 6];
        a.subscribe(SubscriptionId::new("x"), six.clone(), 0)
            .unwrap();
        assert_eq!(
            b.subscribe(SubscriptionId::new("y"), six.clone(), 0),
            Err(Full)
        );
        // Replacing counts only the difference.
        a.subscribe(SubscriptionId::new("x"), six.clone(), 0)
            .unwrap();
        assert!(a.unsubscribe(&SubscriptionId::new("x")));
        b.subscribe(SubscriptionId::new("y"), six.clone(), 0)
            .unwrap();
        drop(b);
        a.subscribe(SubscriptionId::new("x"), six, 0).unwrap();
        assert_eq!(hub.filters.load(Ordering::Relaxed), 6);
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;
    use nostr_sdk::prelude::*;
    use std::time::Duration;

    /// The index finds exactly what matching every filter would: for filters on each field
    /// (and none), every event is delivered to the subscriptions whose filters match it.
    #[tokio::test]
    async fn the_index_delivers_exactly_what_the_filters_match() {
        let hub = Hub::new(Limits::default(), Arc::new(Metrics::default()));
        let (a, b) = (Keys::generate(), Keys::generate());
        let events: Vec<Event> = vec![
            EventBuilder::new(Kind::TextNote, "1").finalize(&a).unwrap(),
            EventBuilder::new(Kind::from_u16(5050), "2")
                .tag(Tag::public_key(b.public_key()))
                .finalize(&a)
                .unwrap(),
            EventBuilder::new(Kind::from_u16(7000), "3")
                .tag(Tag::hashtag("fedai"))
                .finalize(&b)
                .unwrap(),
        ];
        let filters = vec![
            Filter::new(),
            Filter::new().kind(Kind::TextNote),
            Filter::new().kinds([Kind::from_u16(5050), Kind::from_u16(7000)]),
            Filter::new().author(a.public_key()),
            Filter::new().author(b.public_key()).kind(Kind::TextNote),
            Filter::new().pubkey(b.public_key()),
            Filter::new().hashtag("fedai").kind(Kind::from_u16(7000)),
            Filter::new().id(events[0].id),
            Filter::new().kinds(Vec::<Kind>::new()),
            Filter::new()
                .authors([a.public_key(), b.public_key()])
                .hashtag("nope"),
        ];
        let mut regs = Vec::new();
        for f in &filters {
            let r = hub.register();
            r.subscribe(SubscriptionId::new("s"), vec![f.clone()], 0)
                .unwrap();
            regs.push(r);
        }
        for e in &events {
            hub.publish(e);
        }
        for (f, r) in filters.iter().zip(regs.iter_mut()) {
            let want: Vec<String> = events
                .iter()
                .filter(|e| f.match_event(e, MatchEventOptions::new()))
                .map(|e| e.id.to_hex())
                .collect();
            let mut got = Vec::new();
            while let Ok(Delivery::Frame(frame)) =
                tokio::time::timeout(Duration::from_millis(10), r.next()).await
            {
                let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
                got.push(v[2]["id"].as_str().unwrap().to_owned());
            }
            got.sort();
            let mut want = want;
            want.sort();
            assert_eq!(got, want, "{f:?}");
        }
        drop(regs);
        let state = hub.state.read().unwrap();
        assert_eq!(
            (state.index.len(), state.entries),
            (0, 0),
            "all entries removed"
        );
    }
}
