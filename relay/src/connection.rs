//! One WebSocket connection: the relay owns the whole Nostr session.
//!
//! One task per connection reads client messages and writes everything the client is sent:
//! - `EVENT` ([`crate::ingest`]): checks run in order as messages arrive, then up to
//!   [`MAX_PIPELINE`] saves per connection are in flight at once, so nostr-lmdb's ingester commits
//!   them together (group commit). Each `OK true` is sent only after its own commit.
//! - `REQ`, `CLOSE`, `COUNT`, `NEG-*` ([`crate::query`]); `AUTH` ([`crate::auth`]).
//! - live events from the [`crate::hub`], which queues for this connection only what matches its
//!   own subscriptions, bounded in bytes.
//!
//! An idle connection holds a socket, a 4 KiB read buffer, its session state and a hub entry:
//! a few KiB, not the ~410 KB that proxying each connection into nostr-sdk's `LocalRelay` cost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, SplitSink};
use futures_util::{FutureExt, SinkExt, StreamExt};
use nostr_database::prelude::NostrDatabase;
use nostr_sdk::prelude::{ClientMessage, RelayMessage, SubscriptionId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::auth::Nip42;
use crate::hub::{Delivery, Hub, Registration, SLOW_READER};
use crate::ingest::{self, Admit, SaveFuture};
use crate::metrics::Metrics;
use crate::policy::FedaiWritePolicy;
use crate::query::{self, NegSession};
use crate::quota::Quota;
use fedai_limit::Bucket;

/// Saves in flight per connection before the relay stops reading from it.
pub const MAX_PIPELINE: usize = 256;

/// Writes a connection may make past the global bound at once, and per second after that.
const QUIET_BURST: f64 = 20.0;
const QUIET_PER_SEC: f64 = 5.0;

/// How long a write may wait for the client to read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// A ping this often; a peer silent for 2.5 periods is dropped.
const PING_EVERY: Duration = Duration::from_secs(60);

/// Live frames written per flush.
const LIVE_BATCH: usize = 64;

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Max event size in bytes.
    pub max_event_bytes: usize,
    /// EVENTs per minute per connection.
    pub events_per_minute: u32,
    /// REQ/COUNT/NEG messages per minute per connection.
    pub queries_per_minute: u32,
    /// Client messages of any type per minute (past it the connection is closed).
    pub messages_per_minute: u32,
    /// Events one filter returns at most.
    pub max_query_results: usize,
}

/// Shared state for connection handlers.
pub struct ConnCtx {
    /// Event store.
    pub db: Arc<dyn NostrDatabase>,
    /// Live subscriptions of all connections.
    pub hub: Arc<Hub>,
    /// Write policy.
    pub policy: Arc<FedaiWritePolicy>,
    /// Storage quotas.
    pub quota: Arc<Quota>,
    /// Writes in flight to the store, all connections (`None`: unbounded).
    pub writes: Option<Arc<Semaphore>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: Limits,
    /// `--auth write|both`: events need an authenticated connection.
    pub auth_writes: bool,
    /// `--auth read|both`: queries need an authenticated connection.
    pub auth_reads: bool,
    /// The URLs clients use to reach this relay (NIP-42).
    pub public_urls: Vec<String>,
    /// Flips to `true` at shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl ConnCtx {
    fn ws_config(&self) -> WebSocketConfig {
        let max = self.limits.max_event_bytes + 1024;
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            // Grows for a large message and shrinks back; idle connections stay small.
            .read_buffer_size(4096)
            // A threshold, not an allocation: flush batches of small frames at once.
            .write_buffer_size(16 * 1024)
    }
}

/// One connection's state.
pub struct Session {
    /// Live subscriptions and their queue.
    pub reg: Registration,
    /// Negentropy sessions.
    pub neg: HashMap<SubscriptionId, NegSession>,
    /// NIP-42 state.
    pub auth: Nip42,
    /// The `Host` the client dialed.
    pub host: Option<String>,
    /// EVENT rate.
    pub events: Bucket,
    /// REQ/COUNT/NEG rate.
    pub queries: Bucket,
    /// Writes past the global bound: a connection that publishes a little (a worker, a
    /// customer) goes ahead of a flood, which spends these at once.
    pub quiet: Bucket,
    messages: Bucket,
}

fn notice(msg: &str) -> String {
    RelayMessage::Notice(msg.into()).as_json()
}

/// Handle one client message of `size` bytes; frames to send now, saves to await.
async fn handle(
    ctx: &Arc<ConnCtx>,
    s: &mut Session,
    pending: &mut FuturesUnordered<SaveFuture>,
    msg: ClientMessage<'_>,
    size: usize,
) -> Vec<String> {
    match msg {
        ClientMessage::Event(e) => match ingest::admit(ctx, s, e.into_owned(), size) {
            Admit::Reply(frames) => frames,
            Admit::Save(f) => {
                pending.push(f);
                Vec::new()
            }
        },
        ClientMessage::Req {
            subscription_id,
            filters,
        } => {
            let filters = filters.into_iter().map(|f| f.into_owned()).collect();
            query::req(ctx, s, subscription_id.into_owned(), filters, size).await
        }
        ClientMessage::Close(id) => {
            query::close(s, &id);
            Vec::new()
        }
        ClientMessage::Count {
            subscription_id,
            filter,
        } => query::count(ctx, s, subscription_id.into_owned(), filter.into_owned()).await,
        ClientMessage::Auth(e) => {
            let (ok, msg) = match s.auth.check(&e, &ctx.public_urls, s.host.as_deref()) {
                Ok(()) => (true, String::new()),
                Err(why) => (false, format!("auth-required: {why}")),
            };
            vec![RelayMessage::Ok {
                event_id: e.id,
                status: ok,
                message: msg.into(),
            }
            .as_json()]
        }
        ClientMessage::NegOpen {
            subscription_id,
            filter,
            initial_message,
        } => {
            query::neg_open(
                ctx,
                s,
                subscription_id.into_owned(),
                filter.into_owned(),
                &initial_message,
            )
            .await
        }
        ClientMessage::NegMsg {
            subscription_id,
            message,
        } => query::neg_msg_in(s, subscription_id.into_owned(), &message),
        ClientMessage::NegClose { subscription_id } => {
            query::neg_close(s, &subscription_id);
            Vec::new()
        }
    }
}

type WsError = tokio_tungstenite::tungstenite::Error;

fn timed_out() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the client stopped reading",
    ))
}

/// Send frames and flush, or fail if the client has not taken them within [`WRITE_TIMEOUT`]:
/// a client that stops reading must not pin its queue, its query results or a store lock.
async fn emit<S>(
    out: &mut SplitSink<WebSocketStream<S>, Message>,
    frames: impl IntoIterator<Item = String>,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut frames = frames.into_iter().peekable();
    if frames.peek().is_none() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        for f in frames {
            out.feed(Message::text(f)).await?;
        }
        out.flush().await
    })
    .await
    .map_err(|_| timed_out())?
}

impl Session {
    /// A new connection's session: its hub registration and full rate buckets.
    fn new(ctx: &ConnCtx, host: Option<String>) -> Self {
        Self {
            reg: ctx.hub.register(),
            neg: HashMap::new(),
            auth: Nip42::default(),
            host,
            events: Bucket::new(ctx.limits.events_per_minute),
            queries: Bucket::new(ctx.limits.queries_per_minute),
            quiet: Bucket::with(QUIET_BURST, QUIET_PER_SEC),
            messages: Bucket::new(ctx.limits.messages_per_minute),
        }
    }
}

/// Live frames for this connection: the delivered one and what else is ready (up to a batch),
/// or `CLOSED` for subscriptions cut for falling behind (not for one re-opened since).
fn live_frames(s: &mut Session, d: Delivery) -> Vec<String> {
    let mut frames = Vec::new();
    match d {
        Delivery::Frame(f) => {
            frames.push(f);
            while frames.len() < LIVE_BATCH {
                match s.reg.try_frame() {
                    Some(f) => frames.push(f),
                    None => break,
                }
            }
        }
        Delivery::Cut(ids) => {
            for id in ids.into_iter().filter(|id| !s.reg.has(id)) {
                let closed = RelayMessage::Closed {
                    subscription_id: std::borrow::Cow::Borrowed(&id),
                    message: SLOW_READER.into(),
                };
                frames.push(closed.as_json());
            }
        }
    }
    frames
}

/// One WebSocket message from the client: the frames to answer with, and whether to go on.
async fn on_message(
    ctx: &Arc<ConnCtx>,
    s: &mut Session,
    pending: &mut FuturesUnordered<SaveFuture>,
    msg: Message,
) -> (Vec<String>, bool) {
    let t = match msg {
        Message::Text(t) => t,
        Message::Close(_) => return (Vec::new(), false),
        Message::Binary(_) => {
            let go_on = s.messages.take();
            let frames = go_on
                .then(|| notice("invalid: binary messages are not accepted"))
                .into_iter()
                .collect();
            return (frames, go_on);
        }
        // ping/pong: tungstenite answers pings itself
        _ => return (Vec::new(), true),
    };
    if !s.messages.take() {
        ctx.metrics.rejected("rate-limited");
        let bye = notice("rate-limited: too many messages; closing the connection");
        return (vec![bye], false);
    }
    let msg = match ClientMessage::from_json(t.as_bytes()) {
        Ok(m) => m,
        Err(e) => {
            let why = notice(&format!("invalid: cannot parse message: {e}"));
            return (vec![why], true);
        }
    };
    // Reads wait for this connection's saves in flight: a client sees its own writes, and a
    // store whose reads queue behind its writes (a lock) cannot stall a read on a save that
    // only this task polls.
    let mut frames = Vec::new();
    if !matches!(msg, ClientMessage::Event(_)) {
        while let Some(reply) = pending.next().await {
            frames.push(reply);
        }
    }
    frames.extend(handle(ctx, s, pending, msg, t.len()).await);
    (frames, true)
}

/// Serve one upgraded connection until either side closes. `read` holds bytes the client sent
/// after the upgrade request; `_permit` is this connection's place under the connection limit.
pub async fn serve<S>(
    stream: S,
    read: Vec<u8>,
    peer: SocketAddr,
    host: Option<String>,
    ctx: Arc<ConnCtx>,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws =
        WebSocketStream::from_partially_read(stream, read, Role::Server, Some(ctx.ws_config()))
            .await;
    let (mut out, mut inp) = ws.split();
    tracing::debug!(%peer, "connection opened");
    let mut s = Session::new(&ctx, host);
    let mut pending: FuturesUnordered<SaveFuture> = FuturesUnordered::new();
    let mut shutdown = ctx.shutdown.clone();
    let mut heard = Instant::now();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;

    let result: Result<(), WsError> = async {
        loop {
            tokio::select! {
                // Answer completed saves first: they free pipeline slots.
                biased;
                Some(reply) = pending.next(), if !pending.is_empty() => {
                    // A group commit completes many saves at once: answer them in one write.
                    let mut replies = vec![reply];
                    while let Some(Some(r)) = pending.next().now_or_never() {
                        replies.push(r);
                    }
                    emit(&mut out, replies).await?;
                }
                d = s.reg.next() => {
                    let frames = live_frames(&mut s, d);
                    emit(&mut out, frames).await?;
                }
                msg = inp.next(), if pending.len() < MAX_PIPELINE => {
                    heard = Instant::now();
                    let (frames, go_on) = match msg {
                        Some(Ok(m)) => on_message(&ctx, &mut s, &mut pending, m).await,
                        None => (Vec::new(), false),
                        Some(Err(e)) => return Err(e),
                    };
                    // A refusal to go on is still said first, where the socket takes it.
                    let sent = emit(&mut out, frames).await;
                    if !go_on {
                        break;
                    }
                    sent?;
                }
                _ = ping.tick() => {
                    // A peer that answers nothing (not even pings) for this long is gone: its
                    // permit, subscriptions and queue go back.
                    if heard.elapsed() > PING_EVERY * 5 / 2 {
                        break;
                    }
                    tokio::time::timeout(WRITE_TIMEOUT, out.send(Message::Ping(Default::default())))
                        .await
                        .map_err(|_| timed_out())??;
                }
                _ = shutdown.changed() => break,
            }
        }
        // Client gone or relay stopping: finish the saves already accepted for storage,
        // answering where the socket still works, so nothing acknowledged is lost and nothing is
        // half-done.
        let mut frames = Vec::new();
        while let Some(reply) = pending.next().await {
            frames.push(reply);
        }
        let _ = emit(&mut out, frames).await;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended with error"),
    }
    let _ = out.close().await;
}
