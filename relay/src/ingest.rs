//! The `EVENT` path: checks in arrival order, then a save that runs concurrently with the
//! connection's other saves (so nostr-lmdb's ingester commits them together), answered with
//! `OK` only after its own commit.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use nostr_database::prelude::{RejectedReason, SaveEventStatus};
use nostr_sdk::prelude::{Event, Kind, MachineReadablePrefix, RelayMessage};
use tokio::sync::OwnedSemaphorePermit;

use crate::connection::{ConnCtx, Session};
use crate::policy::Verdict;

/// Kinds never accepted: they are meant for one recipient or one HTTP request, not a relay.
const BLOCKED_KINDS: [Kind; 5] = [
    Kind::Seal,
    Kind::ZapRequest,
    Kind::Authentication,
    Kind::BlossomAuth,
    Kind::HttpAuth,
];

/// Tags one event may carry (each live filter with tag conditions indexes them per event).
pub const MAX_TAGS: usize = 2_000;

/// `["OK", id, status, "<prefix>: <msg>"]`.
pub fn ok_msg(
    event: &Event,
    status: bool,
    prefix: Option<MachineReadablePrefix>,
    msg: &str,
) -> String {
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

/// A save in flight; resolves to its `OK` frame.
pub type SaveFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// What to do with one `EVENT`.
pub enum Admit {
    /// Answer now with these frames.
    Reply(Vec<String>),
    /// Answer when this save completes.
    Save(SaveFuture),
}

/// Why an event is refused: the `OK false` frame's prefix and message, and the metric's reason.
struct No {
    prefix: MachineReadablePrefix,
    message: String,
    reason: &'static str,
}

fn no(prefix: MachineReadablePrefix, message: impl Into<String>, reason: &'static str) -> No {
    No {
        prefix,
        message: message.into(),
        reason,
    }
}

/// Check one event in arrival order: the cheap checks first (a flood is refused before any
/// signature is verified), then the event itself, authentication, the write policy and the
/// quotas; then store it (or, if ephemeral, only broadcast it).
pub fn admit(ctx: &Arc<ConnCtx>, s: &mut Session, event: Event, size: usize) -> Admit {
    let refuse = |no: No| {
        ctx.metrics.rejected(no.reason);
        Admit::Reply(vec![ok_msg(&event, false, Some(no.prefix), &no.message)])
    };
    // The event's JSON: the message less `["EVENT",` and `]`.
    let json_len = size.saturating_sub(10);
    let permit = match cheap_checks(ctx, s, json_len) {
        Ok(p) => p,
        Err(no) => return refuse(no),
    };
    if let Err(no) = event_checks(&event) {
        return refuse(no);
    }
    if let Some(reply) = auth_checks(ctx, s, &event) {
        return reply;
    }
    if let Verdict::Reject { prefix, message } = ctx.policy.decide(&event) {
        return Admit::Reply(vec![ok_msg(&event, false, Some(prefix), &message)]);
    }
    if event.kind.is_ephemeral() {
        // Broadcast only; the policy already counted it.
        ctx.hub.publish(&event);
        return Admit::Reply(vec![ok_msg(&event, true, None, "")]);
    }
    if let Err(r) = ctx.quota.check(&event, json_len) {
        return refuse(no(r.prefix, r.message, r.reason));
    }
    Admit::Save(Box::pin(save(ctx.clone(), event, json_len, permit)))
}

/// An event's JSON no larger than the relay takes.
fn size_check(ctx: &ConnCtx, json_len: usize) -> Result<(), No> {
    if json_len > ctx.limits.max_event_bytes {
        let m = format!("event is larger than {} bytes", ctx.limits.max_event_bytes);
        return Err(no(MachineReadablePrefix::Invalid, m, "too-large"));
    }
    Ok(())
}

/// The connection's rate, the size, and a place under the global bound on writes in flight —
/// checked before the expensive checks: a flood from fresh keys and fresh connections is refused
/// cheaply, and a quiet connection still gets through.
fn cheap_checks(
    ctx: &ConnCtx,
    s: &mut Session,
    json_len: usize,
) -> Result<Option<OwnedSemaphorePermit>, No> {
    use MachineReadablePrefix::RateLimited;
    if !s.events.take() {
        return Err(no(RateLimited, "slow down", "rate-limited"));
    }
    size_check(ctx, json_len)?;
    match ctx.writes.as_ref().map(|w| w.clone().try_acquire_owned()) {
        None => Ok(None),
        Some(Ok(p)) => Ok(Some(p)),
        Some(Err(_)) if s.quiet.take() => Ok(None),
        Some(Err(_)) => Err(no(
            RateLimited,
            "relay busy: too many writes in flight; retry with backoff",
            "busy",
        )),
    }
}

/// What became of an event a sync brought from a peer relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// Stored (and broadcast to live subscribers).
    Stored,
    /// Already here.
    Duplicate,
    /// Refused: the reason, as an `OK false` would give it.
    Refused(String),
}

/// Admit an event a sync brought from a peer relay ([`crate::sync`]): what the event says of
/// itself (id, signature, expiry, kind, tags), the schema and PoW, and the quotas, as for a
/// client's `EVENT`. Not applied: the per-connection and per-pubkey rates (the peer's relay rated
/// the publisher; the sync bounds its own volume per round) and `--auth write` (a peer is the
/// operator's choice). Protected events (NIP-70) are never taken from a peer: only their author
/// may publish them. An event held already is answered before any check, so the echo of a
/// two-way sync costs a lookup, not a signature check or quota. Waits for a place under the
/// bound on writes in flight instead of refusing.
pub async fn admit_synced(ctx: &Arc<ConnCtx>, event: Event) -> Synced {
    let refuse = |no: No| {
        ctx.metrics.rejected(no.reason);
        Synced::Refused(format!("{}: {}", no.prefix, no.message))
    };
    // Held already (a two-way sync echoes every event back): nothing to verify or charge.
    match ctx.db.check_id(&event.id).await {
        Ok(nostr_database::DatabaseEventStatus::Saved) => return Synced::Duplicate,
        Ok(nostr_database::DatabaseEventStatus::Deleted) => {
            return Synced::Refused("blocked: this event is deleted".into())
        }
        _ => {}
    }
    let json_len = event.as_json().len();
    if let Err(no) = size_check(ctx, json_len) {
        return refuse(no);
    }
    if let Err(no) = event_checks(&event) {
        return refuse(no);
    }
    if event.is_protected() || event.kind.is_ephemeral() {
        return refuse(no(
            MachineReadablePrefix::Blocked,
            "protected and ephemeral events are not synced",
            "blocked",
        ));
    }
    if let Verdict::Reject { prefix, message } = ctx.policy.decide_unlimited(&event) {
        return Synced::Refused(format!("{prefix}: {message}"));
    }
    if let Err(r) = ctx.quota.check(&event, json_len) {
        return refuse(no(r.prefix, r.message, r.reason));
    }
    let permit = match &ctx.writes {
        Some(w) => match w.clone().acquire_owned().await {
            Ok(p) => Some(p),
            Err(_) => {
                ctx.quota.released(json_len);
                return Synced::Refused("error: shutting down".into());
            }
        },
        None => None,
    };
    match store(ctx, &event, json_len, permit).await {
        Saved::New => Synced::Stored,
        Saved::Duplicate => Synced::Duplicate,
        Saved::Refused(why) => Synced::Refused(format!("blocked: {why}")),
        Saved::Failed => Synced::Refused("error: database error".into()),
    }
}

/// What the event says of itself: tag count, kind, id, expiry, signature, and no repost of a
/// protected event.
fn event_checks(event: &Event) -> Result<(), No> {
    use MachineReadablePrefix::{Blocked, Invalid};
    if event.tags.len() > MAX_TAGS {
        return Err(no(Invalid, format!("more than {MAX_TAGS} tags"), "invalid"));
    }
    if BLOCKED_KINDS.contains(&event.kind) {
        let m = format!(
            "kind `{}` is not accepted by this relay",
            event.kind.as_u16()
        );
        return Err(no(Blocked, m, "blocked"));
    }
    if !event.verify_id() {
        return Err(no(Invalid, "invalid event ID", "invalid"));
    }
    if event.is_expired() {
        return Err(no(Invalid, "event is expired", "expired"));
    }
    if !event.verify_signature() {
        return Err(no(Invalid, "invalid event signature", "invalid"));
    }
    if matches!(event.kind, Kind::Repost | Kind::GenericRepost)
        && Event::from_json(&event.content).is_ok_and(|e| e.is_protected())
    {
        return Err(no(Blocked, "repost of a protected event", "blocked"));
    }
    Ok(())
}

/// NIP-42 / NIP-70: writes in `--auth write` mode, and protected events always, need an
/// authenticated connection (the answer then carries a challenge); a protected event only from
/// its own author. `Some` is the answer when the event is refused.
fn auth_checks(ctx: &ConnCtx, s: &mut Session, event: &Event) -> Option<Admit> {
    let protected = event.is_protected();
    if (ctx.auth_writes || protected) && s.auth.pubkey.is_none() {
        ctx.metrics.rejected("auth-required");
        let challenge = RelayMessage::Auth {
            challenge: Cow::Owned(s.auth.challenge()),
        }
        .as_json();
        let why = if protected {
            "this event is protected (NIP-70): AUTH as its author first"
        } else {
            "this relay takes events from authenticated clients: AUTH first"
        };
        let refusal = ok_msg(event, false, Some(MachineReadablePrefix::AuthRequired), why);
        return Some(Admit::Reply(vec![challenge, refusal]));
    }
    if protected && s.auth.pubkey != Some(event.pubkey) {
        ctx.metrics.rejected("blocked");
        return Some(Admit::Reply(vec![ok_msg(
            event,
            false,
            Some(MachineReadablePrefix::Blocked),
            "this event may only be published by its author",
        )]));
    }
    None
}

/// What a save did.
enum Saved {
    /// Stored now (and broadcast).
    New,
    /// Already stored.
    Duplicate,
    /// Refused by the store: deleted, or another reason (lowercase).
    Refused(String),
    /// The store failed.
    Failed,
}

/// Store an admitted event; its `OK` frame.
async fn save(
    ctx: Arc<ConnCtx>,
    event: Event,
    json_len: usize,
    permit: Option<OwnedSemaphorePermit>,
) -> String {
    use MachineReadablePrefix::{Blocked, Duplicate, Error};
    match store(&ctx, &event, json_len, permit).await {
        Saved::New => ok_msg(&event, true, None, ""),
        Saved::Duplicate => ok_msg(&event, true, Some(Duplicate), "already have this event"),
        Saved::Refused(why) => ok_msg(&event, false, Some(Blocked), &why),
        Saved::Failed => ok_msg(&event, false, Some(Error), "database error"),
    }
}

/// Store an admitted event.
///
/// Live subscribers hear an event only once it is stored (after its commit): a subscription
/// opened at any moment then sees every event, either in its query (stored before) or live
/// (stored after) — a subscriber that resubscribes after a `CLOSED` loses nothing — and no
/// subscriber ever acts on an event that a failed commit then loses.
async fn store(
    ctx: &ConnCtx,
    event: &Event,
    json_len: usize,
    _permit: Option<OwnedSemaphorePermit>,
) -> Saved {
    let saved = ctx.db.save_event(event).await;
    if !matches!(saved, Ok(SaveEventStatus::Success)) {
        // Nothing new stored: its reserved bytes go back to the quota.
        ctx.quota.released(json_len);
    }
    match saved {
        Ok(SaveEventStatus::Success) => {
            ctx.quota.stored(json_len);
            ctx.hub.publish(event);
            Saved::New
        }
        Ok(SaveEventStatus::Rejected(RejectedReason::Duplicate)) => Saved::Duplicate,
        Ok(SaveEventStatus::Rejected(RejectedReason::Deleted)) => {
            Saved::Refused("this event is deleted".into())
        }
        Ok(SaveEventStatus::Rejected(r)) => Saved::Refused(format!("{r:?}").to_lowercase()),
        Err(e) => {
            tracing::error!(error = %e, "cannot save event");
            Saved::Failed
        }
    }
}
