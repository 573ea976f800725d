//! One WebSocket connection: a pipelined write path in front of the LocalRelay.
//!
//! The LocalRelay handles a connection's messages one at a time: it reads an EVENT, awaits its
//! database commit, answers `OK`, and only then reads the next message. On durable storage that
//! caps one connection at one commit per event (~1,100 events/s here), whatever the client
//! pipelines. fedai-relay therefore terminates the WebSocket itself and:
//! - handles `EVENT` messages here: checks (rate, size, kind, id, signature, expiry, policy) run
//!   in order as they arrive, then up to [`MAX_PIPELINE`] saves per connection are in flight at
//!   once, so nostr-lmdb's ingester commits them together (group commit). Each `OK true` is sent
//!   only after its own commit; accepted events are then handed to the LocalRelay's live
//!   subscriptions with `notify_event`;
//! - forwards every other message (REQ, CLOSE, COUNT, AUTH, NEG-*) unchanged to the LocalRelay
//!   over an in-memory WebSocket, and its answers back.
//!
//! Events that need the LocalRelay's per-session NIP-42 state (relay in auth mode, NIP-70
//! protected events) take the forwarded path too.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use nostr_database::prelude::{NostrDatabase, RejectedReason, SaveEventStatus};
use nostr_sdk::prelude::{
    ClientMessage, Event, Kind, LocalRelay, MachineReadablePrefix, RelayMessage, WritePolicyResult,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::metrics::Metrics;
use crate::policy::FedaiWritePolicy;

/// Saves in flight per connection before the relay stops reading from it.
pub const MAX_PIPELINE: usize = 256;

/// Size of the in-memory pipe to the LocalRelay.
const INNER_PIPE_BYTES: usize = 1 << 20;

/// Kinds the LocalRelay refuses by default; the pipelined path refuses them too.
const BLOCKED_KINDS: [Kind; 5] = [
    Kind::Seal,
    Kind::ZapRequest,
    Kind::Authentication,
    Kind::BlossomAuth,
    Kind::HttpAuth,
];

/// Shared state for connection handlers.
pub struct ConnCtx {
    /// The relay core (subscriptions, queries, auth).
    pub relay: LocalRelay,
    /// Event store.
    pub db: Arc<dyn NostrDatabase>,
    /// Write policy (shared with the LocalRelay).
    pub policy: Arc<FedaiWritePolicy>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Max event size in bytes.
    pub max_event_bytes: usize,
    /// EVENTs per minute per connection.
    pub events_per_minute: u32,
    /// Whether the pipelined path is used (off in NIP-42 auth mode).
    pub pipeline: bool,
}

impl ConnCtx {
    fn ws_config(&self) -> WebSocketConfig {
        let max = self.max_event_bytes + 1024;
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }
}

/// Per-connection token bucket.
struct Bucket {
    per_minute: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1) as f64;
        Self {
            per_minute,
            tokens: per_minute,
            at: Instant::now(),
        }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.at).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn ok_msg(event: &Event, status: bool, prefix: Option<MachineReadablePrefix>, msg: &str) -> String {
    let message = match prefix {
        Some(p) => format!("{p}: {msg}"),
        None => msg.to_owned(),
    };
    RelayMessage::Ok {
        event_id: event.id,
        status,
        message: Cow::Owned(message),
    }
    .as_json()
}

type SaveFuture = Pin<Box<dyn Future<Output = String> + Send>>;

enum Admit {
    /// Answer now.
    Reply(String),
    /// Answer when this save completes.
    Save(SaveFuture),
    /// Let the LocalRelay handle it.
    Forward,
}

/// Checks in arrival order; the save itself runs concurrently.
fn admit(ctx: &Arc<ConnCtx>, bucket: &mut Bucket, event: Event, size: usize) -> Admit {
    if event.is_protected() {
        return Admit::Forward;
    }
    let reject = |prefix, msg: &str, reason: &str| {
        ctx.metrics.rejected(reason);
        Admit::Reply(ok_msg(&event, false, Some(prefix), msg))
    };
    if !bucket.take() {
        return reject(
            MachineReadablePrefix::RateLimited,
            "slow down",
            "rate-limited",
        );
    }
    if size.saturating_sub(10) > ctx.max_event_bytes {
        return reject(
            MachineReadablePrefix::Invalid,
            &format!("event is larger than {} bytes", ctx.max_event_bytes),
            "too-large",
        );
    }
    if BLOCKED_KINDS.contains(&event.kind) {
        return reject(
            MachineReadablePrefix::Blocked,
            &format!(
                "kind `{}` is not accepted by this relay",
                event.kind.as_u16()
            ),
            "blocked",
        );
    }
    if !event.verify_id() {
        return reject(
            MachineReadablePrefix::Invalid,
            "invalid event ID",
            "invalid",
        );
    }
    if event.is_expired() {
        return reject(
            MachineReadablePrefix::Invalid,
            "event is expired",
            "expired",
        );
    }
    if !event.verify_signature() {
        return reject(
            MachineReadablePrefix::Invalid,
            "invalid event signature",
            "invalid",
        );
    }
    if let WritePolicyResult::Reject {
        prefix,
        message,
        status,
    } = ctx.policy.decide(&event)
    {
        return Admit::Reply(ok_msg(&event, status, Some(prefix), &message));
    }
    if event.kind.is_ephemeral() {
        // Broadcast only; the policy already counted it.
        let reply = ok_msg(&event, true, None, "");
        ctx.relay.notify_event(event);
        return Admit::Reply(reply);
    }
    let ctx = ctx.clone();
    Admit::Save(Box::pin(async move {
        // Live subscribers hear an event only once it is stored (after its commit): a
        // subscription opened at any moment then sees every event, either in its query (stored
        // before) or live (stored after) — a subscriber that resubscribes after a `CLOSED` loses
        // nothing — and no subscriber ever acts on an event that a failed commit then loses.
        match ctx.db.save_event(&event).await {
            Ok(SaveEventStatus::Success) => {
                let reply = ok_msg(&event, true, None, "");
                ctx.relay.notify_event(event);
                reply
            }
            Ok(SaveEventStatus::Rejected(RejectedReason::Duplicate)) => ok_msg(
                &event,
                true,
                Some(MachineReadablePrefix::Duplicate),
                "already have this event",
            ),
            Ok(SaveEventStatus::Rejected(RejectedReason::Deleted)) => ok_msg(
                &event,
                false,
                Some(MachineReadablePrefix::Blocked),
                "this event is deleted",
            ),
            Ok(SaveEventStatus::Rejected(r)) => ok_msg(
                &event,
                false,
                Some(MachineReadablePrefix::Blocked),
                &format!("{r:?}").to_lowercase(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot save event");
                ok_msg(
                    &event,
                    false,
                    Some(MachineReadablePrefix::Error),
                    "database error",
                )
            }
        }
    }))
}

/// Serve one upgraded connection until either side closes.
pub async fn serve<S>(stream: S, peer: SocketAddr, ctx: Arc<ConnCtx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = ctx.ws_config();
    let outer = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    let (inner_io, relay_io) = tokio::io::duplex(INNER_PIPE_BYTES);
    let relay = ctx.relay.clone();
    let relay_task = tokio::spawn(async move {
        if let Err(e) = relay.take_connection(relay_io, peer).await {
            tracing::debug!(%peer, error = %e, "relay session ended with error");
        }
    });
    let inner = WebSocketStream::from_raw_socket(inner_io, Role::Client, Some(config)).await;
    let (mut out_tx, mut out_rx) = outer.split();
    let (mut in_tx, mut in_rx) = inner.split();
    let mut pending: FuturesUnordered<SaveFuture> = FuturesUnordered::new();
    let mut bucket = Bucket::new(ctx.events_per_minute);

    let result: Result<(), tokio_tungstenite::tungstenite::Error> = async {
        loop {
            tokio::select! {
                // Answer completed saves first: they free pipeline slots.
                biased;
                Some(reply) = pending.next(), if !pending.is_empty() => {
                    out_tx.send(Message::text(reply)).await?;
                }
                msg = in_rx.next() => match msg {
                    Some(Ok(Message::Text(t))) => out_tx.send(Message::Text(t)).await?,
                    Some(Ok(_)) => {}
                    // The LocalRelay ended the session (shutdown, limits): end the connection.
                    _ => break,
                },
                msg = out_rx.next(), if pending.len() < MAX_PIPELINE => match msg {
                    Some(Ok(Message::Text(t))) => {
                        let text = t.as_str();
                        let is_event = ctx.pipeline && text.trim_start().strip_prefix('[')
                            .map(|r| r.trim_start().starts_with("\"EVENT\""))
                            .unwrap_or(false);
                        if !is_event {
                            in_tx.send(Message::Text(t)).await?;
                            continue;
                        }
                        let event = match ClientMessage::from_json(text.as_bytes()) {
                            Ok(ClientMessage::Event(e)) => e.into_owned(),
                            // Let the LocalRelay answer malformed messages (NOTICE).
                            _ => { in_tx.send(Message::Text(t)).await?; continue; }
                        };
                        match admit(&ctx, &mut bucket, event, text.len()) {
                            Admit::Reply(r) => out_tx.send(Message::text(r)).await?,
                            Admit::Save(f) => pending.push(f),
                            Admit::Forward => in_tx.send(Message::Text(t)).await?,
                        }
                    }
                    Some(Ok(Message::Binary(b))) => in_tx.send(Message::Binary(b)).await?,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {} // ping/pong/raw frames: tungstenite answers pings itself
                    Some(Err(e)) => return Err(e),
                },
            }
        }
        // Client gone or session over: finish the saves already accepted for storage, answering
        // where the socket still works, so nothing acknowledged is lost and nothing is half-done.
        while let Some(reply) = pending.next().await {
            let _ = out_tx.send(Message::text(reply)).await;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
    let _ = in_tx.close().await;
    let _ = out_tx.close().await;
    relay_task.abort();
}
