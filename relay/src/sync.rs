//! Relay-to-relay sync: a market spread over several relays converges (`--sync-peer`).
//!
//! For each peer, in rounds (every `--sync-every-secs`):
//! 1. **Reconcile** with NIP-77 negentropy: this relay opens the session with the items of its
//!    own store for the synced kinds and time window (`negentropy_items`, no event read), the
//!    peer answers with fingerprints; a few round trips later each side knows which ids the
//!    other lacks. Only ids cross the wire, so two sets that differ by one event cost about as
//!    much as two equal ones, and events already held are never fetched again.
//! 2. **Fetch** what the peer has and we lack, by id, in chunks; every event goes through the
//!    same checks as one a client publishes (id, signature, expiry, kinds, schema, PoW,
//!    quotas: [`crate::ingest::admit_synced`]) and live subscribers hear it once stored. An
//!    event that is not one of the ids asked for, or outside the synced kinds and window, is
//!    dropped unread: a peer cannot use the sync to push anything else.
//! 3. **Push** what we have and the peer lacks, as a client would publish it (the peer applies
//!    its own policy; refusals are counted, not retried within the round).
//!
//! Between rounds a live subscription to the peer (`REQ` for the synced kinds, from now) brings
//! new events as they happen, through the same checks; it runs after a failed round too (a
//! peer without NIP-77 is then followed live only). Rounds catch what the tail missed while a
//! connection was down. Every round is bounded in events (`--sync-max-per-round` each way), in
//! time and in what the peer may send (messages no larger than an event we would take, a fetch
//! no longer than the ids asked for), so a peer with millions of events we lack is caught up over
//! several rounds, never in one unbounded burst. A window with more items than either side's
//! negentropy session holds is reconciled in time slices, halved until each fits. Ids refused
//! once (by us, or by the peer when pushed) are remembered (bounded) and not transferred again.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nostr_sdk::prelude::{
    Client, Event, EventId, Filter, Kind, Relay, RelayLimits, RelayNotification, RelayUrl,
    SyncOptions, Timestamp,
};
use tokio::sync::watch;

use crate::connection::ConnCtx;
use crate::ingest::{admit_synced, Synced};
use crate::query::MAX_NEG_ITEMS;

/// What to sync, with whom, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Relays to converge with.
    pub peers: Vec<String>,
    /// Kinds synced.
    pub kinds: Vec<u16>,
    /// Only events this recent (seconds) are reconciled.
    pub window_secs: u64,
    /// Seconds between reconciliation rounds; the live tail runs in between.
    pub every_secs: u64,
    /// Events fetched (and, separately, pushed) at most per round.
    pub max_per_round: usize,
    /// Also push to the peer what it lacks (otherwise only fetch).
    pub push: bool,
}

/// The kinds a fed_AI market needs on every relay: its own kinds, job feedback and deletions
/// (cancellations), and NIP-65 relay lists.
pub fn default_kinds() -> Vec<u16> {
    let mut k: Vec<u16> = fedai_protocol::kinds::FEDAI_KINDS.to_vec();
    k.extend([fedai_protocol::kinds::DELETION, 10002]);
    k
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            kinds: default_kinds(),
            window_secs: 86_400,
            every_secs: 60,
            max_per_round: 20_000,
            push: true,
        }
    }
}

/// One round with one peer, measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Items this relay reconciled with.
    pub local_items: usize,
    /// Ids the peer has that we lacked.
    pub missing_here: usize,
    /// Ids we have that the peer lacked.
    pub missing_there: usize,
    /// Events fetched and stored here.
    pub stored: usize,
    /// Events fetched but refused by our checks (or not what was asked).
    pub refused: usize,
    /// Events pushed and accepted by the peer.
    pub pushed: usize,
    /// Events pushed but refused by the peer.
    pub push_refused: usize,
    /// Bytes sent to and received from the peer during reconciliation only.
    pub neg_bytes_sent: usize,
    /// See `neg_bytes_sent`.
    pub neg_bytes_received: usize,
    /// Time of the reconciliation, ms.
    pub neg_ms: u64,
}

/// Ids asked for in one `REQ`.
const FETCH_CHUNK: usize = 250;
/// How long the peer may take to answer one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one reconciliation may take in all.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one whole round may take (reconciliation, fetches, pushes).
const ROUND_DEADLINE: Duration = Duration::from_secs(600);
/// How long the peer may take to acknowledge one pushed event.
const PUSH_OK_TIMEOUT: Duration = Duration::from_secs(5);
/// Items per negentropy session at most: under our own responder's limit, and most relays'.
const SLICE_ITEMS: usize = MAX_NEG_ITEMS * 4 / 5;
/// Halvings of the window at most.
const MAX_SPLITS: u32 = 16;
/// Ids remembered as refused, per peer.
const MEMO: usize = 100_000;

/// Ids refused once, in either direction: not transferred again (bounded, oldest forgotten).
#[derive(Debug, Default)]
pub struct Refusals {
    set: HashSet<EventId>,
    order: VecDeque<EventId>,
}

impl Refusals {
    fn remember(&mut self, id: EventId) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > MEMO {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn knows(&self, id: &EventId) -> bool {
        self.set.contains(id)
    }
}

/// Sync with every configured peer until shutdown (one task per peer).
pub fn spawn(
    ctx: Arc<ConnCtx>,
    mut cfg: SyncConfig,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    if cfg.push && ctx.auth_reads && !cfg.peers.is_empty() {
        // Readers here must authenticate; a peer may serve what we push to anyone.
        tracing::warn!(
            "--auth read|both: not pushing events to sync peers (they are only fetched)"
        );
        cfg.push = false;
    }
    cfg.max_per_round = cfg.max_per_round.max(1);
    let cfg = Arc::new(cfg);
    cfg.peers
        .iter()
        .filter_map(|p| match RelayUrl::parse(p) {
            Ok(url) => Some(url),
            Err(e) => {
                tracing::error!(peer = %p, error = %e, "not a relay URL; not syncing with it");
                None
            }
        })
        .map(|url| tokio::spawn(peer_loop(ctx.clone(), url, cfg.clone(), shutdown.clone())))
        .collect()
}

/// A client for one peer: what it may send us is bounded by what we would take from a client
/// (an event no larger than `--max-event-bytes`; signatures checked as events arrive).
fn peer_client(max_event_bytes: usize) -> Client {
    let max = u32::try_from(max_event_bytes).unwrap_or(u32::MAX);
    let mut limits = RelayLimits::default();
    // NEG-MSG frames too must fit: nostr-sdk's own are at most 60 KB.
    limits.messages.max_size = Some(max.saturating_add(4096).max(128 * 1024));
    limits.events.max_size = Some(max);
    Client::builder()
        .websocket_transport(fedai_transport::NoDelayTransport)
        .relay_limits(limits)
        .verify_subscriptions(true)
        .notification_channel_size(std::num::NonZeroUsize::new(256).expect("non-zero"))
        .build()
}

async fn peer_loop(
    ctx: Arc<ConnCtx>,
    url: RelayUrl,
    cfg: Arc<SyncConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut refusals = Refusals::default();
    while !*shutdown.borrow() {
        let client = peer_client(ctx.limits.max_event_bytes);
        let pause = match connect_and_sync(
            &ctx,
            &client,
            &url,
            &cfg,
            &mut shutdown,
            &mut refusals,
            &mut failures,
        )
        .await
        {
            Ok(()) => Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(peer = %url, error = %e, "sync connection to peer lost");
                failures += 1;
                fedai_transport::backoff(Duration::from_secs(1), failures, Duration::from_secs(60))
            }
        };
        client.shutdown().await;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Connect, then alternate rounds and the live tail until the connection fails or shutdown.
async fn connect_and_sync(
    ctx: &Arc<ConnCtx>,
    client: &Client,
    url: &RelayUrl,
    cfg: &SyncConfig,
    shutdown: &mut watch::Receiver<bool>,
    refusals: &mut Refusals,
    failures: &mut u32,
) -> Result<(), String> {
    client
        .add_relay(url.clone())
        .await
        .map_err(|e| e.to_string())?;
    let relay = client
        .relay(url.clone())
        .await
        .map_err(|e| e.to_string())?
        .ok_or("relay not added")?;
    relay
        .try_connect()
        .timeout(STEP_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let kinds: Vec<Kind> = cfg.kinds.iter().map(|k| Kind::from_u16(*k)).collect();
    loop {
        let outcome = tokio::select! {
            r = tokio::time::timeout(ROUND_DEADLINE, round(ctx, &relay, &kinds, cfg, refusals)) => {
                r.unwrap_or_else(|_| Err("the round took too long".to_owned()))
            }
            _ = shutdown.changed() => return Ok(()),
        };
        // More to transfer than one round takes, and this one moved something: go again soon.
        let mut again = false;
        match outcome {
            Ok(stats) => {
                ctx.metrics.sync_round(true);
                *failures = 0;
                tracing::info!(
                    peer = %url,
                    local_items = stats.local_items,
                    missing_here = stats.missing_here,
                    missing_there = stats.missing_there,
                    stored = stats.stored,
                    refused = stats.refused,
                    pushed = stats.pushed,
                    push_refused = stats.push_refused,
                    neg_bytes_sent = stats.neg_bytes_sent,
                    neg_bytes_received = stats.neg_bytes_received,
                    neg_ms = stats.neg_ms,
                    "sync round"
                );
                let moved = stats.stored + stats.pushed > 0;
                let more = stats.missing_here > cfg.max_per_round
                    || (cfg.push && stats.missing_there > cfg.max_per_round);
                again = moved && more;
            }
            Err(e) => {
                // The tail still runs: a peer without NIP-77 is followed live.
                ctx.metrics.sync_round(false);
                tracing::warn!(peer = %url, error = %e, "sync round failed");
            }
        }
        let wait = Duration::from_secs(if again { 1 } else { cfg.every_secs.max(1) });
        tail(ctx, &relay, &kinds, cfg, wait, shutdown).await?;
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

/// The synced kinds between `since` and `until` (inclusive).
fn slice(kinds: &[Kind], since: Timestamp, until: Timestamp) -> Filter {
    Filter::new()
        .kinds(kinds.iter().copied())
        .since(since)
        .until(until)
}

/// Whether a peer refused a negentropy session for its size (ours says "more than N items";
/// other relays say "too many").
fn too_large(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("more than") || e.contains("too many")
}

/// One reconciliation and the transfers it calls for.
pub async fn round(
    ctx: &Arc<ConnCtx>,
    relay: &Relay,
    kinds: &[Kind],
    cfg: &SyncConfig,
    refusals: &mut Refusals,
) -> Result<RoundStats, String> {
    let now = Timestamp::now();
    let since = now - Duration::from_secs(cfg.window_secs);
    let mut st = RoundStats::default();
    let (mut missing_here, mut missing_there) = (Vec::new(), Vec::new());
    // Slices of the window, halved while either side has too many items for one session.
    let mut todo = vec![(since, now, 0u32)];
    while let Some((a, b, depth)) = todo.pop() {
        let filter = slice(kinds, a, b);
        let items = ctx
            .db
            .negentropy_items(filter.clone())
            .await
            .map_err(|e| format!("local items: {e}"))?;
        let result = if items.len() > SLICE_ITEMS {
            Err(format!("more than {SLICE_ITEMS} items here"))
        } else {
            st.local_items += items.len();
            reconcile(relay, filter, items, &mut st).await
        };
        match result {
            Ok((here, there)) => {
                missing_here.extend(here);
                missing_there.extend(there);
            }
            Err(e) if too_large(&e) && depth < MAX_SPLITS && b > a => {
                let mid = a + Duration::from_secs((b.as_secs() - a.as_secs()) / 2);
                todo.push((a, mid, depth + 1));
                todo.push((mid + Duration::from_secs(1), b, depth + 1));
            }
            Err(e) => return Err(e),
        }
    }
    st.missing_here = missing_here.len();
    st.missing_there = missing_there.len();

    let window = slice(kinds, since, now);
    let wanted: Vec<EventId> = missing_here
        .into_iter()
        .filter(|id| !refusals.knows(id))
        .take(cfg.max_per_round)
        .collect();
    for chunk in wanted.chunks(FETCH_CHUNK) {
        let asked: HashSet<EventId> = chunk.iter().copied().collect();
        let events = relay
            .fetch_events(Filter::new().ids(chunk.iter().copied()))
            .max_events(chunk.len())
            .timeout(STEP_TIMEOUT)
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        for event in events {
            // Only what was asked for: the peer cannot push other events through the sync.
            if !asked.contains(&event.id) || !window.match_event(&event, Default::default()) {
                st.refused += 1;
                continue;
            }
            let id = event.id;
            match admit_synced(ctx, event).await {
                Synced::Stored => st.stored += 1,
                Synced::Duplicate => {}
                Synced::Refused(_) => {
                    st.refused += 1;
                    refusals.remember(id);
                }
            }
        }
    }
    if cfg.push {
        let ours: Vec<EventId> = missing_there
            .into_iter()
            .filter(|id| !refusals.knows(id))
            .take(cfg.max_per_round)
            .collect();
        for id in ours {
            let Ok(Some(event)) = ctx.db.event_by_id(&id).await else {
                continue; // deleted or expired meanwhile
            };
            // Only its author may publish a protected event (NIP-70); a relay never does.
            if event.is_protected() {
                continue;
            }
            match relay.send_event(&event).ok_timeout(PUSH_OK_TIMEOUT).await {
                Ok(_) => st.pushed += 1,
                Err(_) => {
                    st.push_refused += 1;
                    refusals.remember(id);
                }
            }
        }
    }
    ctx.metrics.sync_events(st.stored, st.pushed);
    ctx.metrics
        .sync_negentropy_bytes(st.neg_bytes_sent, st.neg_bytes_received);
    Ok(st)
}

/// One negentropy session over `filter` with our `items`: the ids only the peer has, and
/// those only we have. Bounded in time: a peer that keeps the session going (and the id sets
/// growing) is dropped.
async fn reconcile(
    relay: &Relay,
    filter: Filter,
    items: Vec<(EventId, Timestamp)>,
    st: &mut RoundStats,
) -> Result<(Vec<EventId>, Vec<EventId>), String> {
    let (sent0, recv0) = (relay.stats().bytes_sent(), relay.stats().bytes_received());
    let t = Instant::now();
    let summary = tokio::time::timeout(
        RECONCILE_TIMEOUT,
        relay.sync(filter).items(items).opts(
            SyncOptions::new()
                .dry_run()
                .initial_timeout(STEP_TIMEOUT)
                .idle_timeout(STEP_TIMEOUT),
        ),
    )
    .await
    .map_err(|_| "negentropy: took too long".to_owned())?
    .map_err(|e| format!("negentropy: {e}"))?;
    st.neg_ms += t.elapsed().as_millis() as u64;
    st.neg_bytes_sent += relay.stats().bytes_sent().saturating_sub(sent0);
    st.neg_bytes_received += relay.stats().bytes_received().saturating_sub(recv0);
    // `remote`: ids only the peer has; `local`: ids only we have.
    Ok((
        summary.remote.into_iter().collect(),
        summary.local.into_iter().collect(),
    ))
}

/// Follow the peer live for `wait` (or until shutdown): each new event of the synced kinds goes
/// through the same checks as a client's.
async fn tail(
    ctx: &Arc<ConnCtx>,
    relay: &Relay,
    kinds: &[Kind],
    cfg: &SyncConfig,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mut notes = relay.notifications();
    // From a few seconds back: an event stored during the round is then not missed.
    let live = Filter::new()
        .kinds(kinds.iter().copied())
        .since(Timestamp::now() - Duration::from_secs(5));
    let sub = relay
        .subscribe(live)
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    let end = tokio::time::Instant::now() + wait;
    let window = slice(
        kinds,
        Timestamp::now() - Duration::from_secs(cfg.window_secs),
        Timestamp::from_secs(u64::MAX / 2),
    );
    // A peer that streams faster than a round's worth is not followed further until the next
    // round, which then fetches what was skipped, bounded as every round is.
    let mut budget = cfg.max_per_round;
    let result = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break Ok(()),
            _ = shutdown.changed() => break Ok(()),
            n = notes.next() => match n {
                Some(RelayNotification::Event { subscription_id, event }) if subscription_id == sub => {
                    let event: Event = *event;
                    if budget == 0 || !window.match_event(&event, Default::default()) {
                        continue;
                    }
                    budget -= 1;
                    if let Synced::Stored = admit_synced(ctx, event).await {
                        ctx.metrics.sync_events(1, 0);
                    }
                }
                Some(RelayNotification::RelayStatus { status }) if !status.is_connected() => {
                    break Err("peer disconnected".to_owned());
                }
                Some(_) => {}
                None => break Err("peer connection closed".to_owned()),
            }
        }
    };
    let _ = relay.unsubscribe(&sub).await;
    result
}
