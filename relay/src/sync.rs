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
//! new events as they happen, through the same checks. Rounds catch what the tail missed while
//! a connection was down. Every round is bounded (`--sync-max-per-round` events each way), so a
//! peer with millions of events we lack is caught up over several rounds, never in one unbounded
//! burst.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use nostr_sdk::prelude::{
    Event, EventId, Filter, Kind, RelayNotification, RelayUrl, SyncOptions, Timestamp,
};
use tokio::sync::watch;

use crate::connection::ConnCtx;
use crate::ingest::{admit_synced, Synced};

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

/// Sync with every configured peer until shutdown (one task per peer).
pub fn spawn(
    ctx: Arc<ConnCtx>,
    cfg: SyncConfig,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
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

async fn peer_loop(
    ctx: Arc<ConnCtx>,
    url: RelayUrl,
    cfg: Arc<SyncConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    while !*shutdown.borrow() {
        let client = fedai_transport::nostr_client();
        let pause = match connect_and_sync(&ctx, &client, &url, &cfg, &mut shutdown).await {
            Ok(()) => {
                failures = 0;
                Duration::from_secs(1)
            }
            Err(e) => {
                ctx.metrics.sync_round(false);
                tracing::warn!(peer = %url, error = %e, "sync with peer failed");
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
    client: &nostr_sdk::prelude::Client,
    url: &RelayUrl,
    cfg: &SyncConfig,
    shutdown: &mut watch::Receiver<bool>,
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
        let stats = round(ctx, &relay, &kinds, cfg).await?;
        ctx.metrics.sync_round(true);
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
        // More to fetch than one round takes: go again at once.
        let full = stats.missing_here > cfg.max_per_round
            || (cfg.push && stats.missing_there > cfg.max_per_round);
        let wait = if full {
            Duration::ZERO
        } else {
            Duration::from_secs(cfg.every_secs.max(1))
        };
        tail(ctx, &relay, &kinds, cfg, wait, shutdown).await?;
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

/// The synced kinds in the window, as of now.
fn window(kinds: &[Kind], cfg: &SyncConfig) -> Filter {
    Filter::new()
        .kinds(kinds.iter().copied())
        .since(Timestamp::now() - Duration::from_secs(cfg.window_secs))
}

/// One reconciliation and the transfers it calls for.
pub async fn round(
    ctx: &Arc<ConnCtx>,
    relay: &nostr_sdk::prelude::Relay,
    kinds: &[Kind],
    cfg: &SyncConfig,
) -> Result<RoundStats, String> {
    let filter = window(kinds, cfg);
    let items = ctx
        .db
        .negentropy_items(filter.clone())
        .await
        .map_err(|e| format!("local items: {e}"))?;
    let mut st = RoundStats {
        local_items: items.len(),
        ..RoundStats::default()
    };
    let (sent0, recv0) = (relay.stats().bytes_sent(), relay.stats().bytes_received());
    let t = Instant::now();
    // The whole reconciliation is bounded in time: a peer that keeps the session going (and
    // the id sets growing) is dropped.
    let summary = tokio::time::timeout(
        RECONCILE_TIMEOUT,
        relay
            .sync(filter.clone())
            .items(items)
            .opts(SyncOptions::new().dry_run().initial_timeout(STEP_TIMEOUT)),
    )
    .await
    .map_err(|_| "negentropy: took too long".to_owned())?
    .map_err(|e| format!("negentropy: {e}"))?;
    st.neg_ms = t.elapsed().as_millis() as u64;
    st.neg_bytes_sent = relay.stats().bytes_sent() - sent0;
    st.neg_bytes_received = relay.stats().bytes_received() - recv0;
    // `remote`: ids only the peer has; `local`: ids only we have.
    st.missing_here = summary.remote.len();
    st.missing_there = summary.local.len();

    let wanted: Vec<EventId> = summary.remote.into_iter().take(cfg.max_per_round).collect();
    for chunk in wanted.chunks(FETCH_CHUNK) {
        let asked: HashSet<EventId> = chunk.iter().copied().collect();
        let events = relay
            .fetch_events(Filter::new().ids(chunk.iter().copied()))
            .timeout(STEP_TIMEOUT)
            .await
            .map_err(|e| format!("fetch: {e}"))?;
        for event in events {
            // Only what was asked for: the peer cannot push other events through the sync.
            if !asked.contains(&event.id) || !filter.match_event(&event, Default::default()) {
                st.refused += 1;
                continue;
            }
            match admit_synced(ctx, event).await {
                Synced::Stored | Synced::Duplicate => st.stored += 1,
                Synced::Refused(_) => st.refused += 1,
            }
        }
    }
    if cfg.push {
        let ours: Vec<EventId> = summary.local.into_iter().take(cfg.max_per_round).collect();
        for id in ours {
            let Ok(Some(event)) = ctx.db.event_by_id(&id).await else {
                continue; // deleted or expired meanwhile
            };
            // Only its author may publish a protected event (NIP-70); a relay never does.
            if event.is_protected() {
                continue;
            }
            match relay.send_event(&event).await {
                Ok(_) => st.pushed += 1,
                Err(_) => st.push_refused += 1,
            }
        }
    }
    ctx.metrics.sync_events(st.stored, st.pushed);
    ctx.metrics
        .sync_negentropy_bytes(st.neg_bytes_sent, st.neg_bytes_received);
    Ok(st)
}

/// Follow the peer live for `wait` (or until shutdown): each new event of the synced kinds goes
/// through the same checks as a client's.
async fn tail(
    ctx: &Arc<ConnCtx>,
    relay: &nostr_sdk::prelude::Relay,
    kinds: &[Kind],
    cfg: &SyncConfig,
    wait: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    if wait.is_zero() {
        return Ok(());
    }
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
    let window = window(kinds, cfg);
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
