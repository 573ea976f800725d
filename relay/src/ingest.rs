//! The `EVENT` path: checks in arrival order, then a save that runs concurrently with the
//! connection's other saves (so nostr-lmdb's ingester commits them together), answered with
//! `OK` only after its own commit.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use nostr_database::prelude::{RejectedReason, SaveEventStatus};
use nostr_sdk::prelude::{Event, Kind, MachineReadablePrefix, RelayMessage};

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

/// Check one event in arrival order.
pub fn admit(ctx: &Arc<ConnCtx>, s: &mut Session, event: Event, size: usize) -> Admit {
    let reject = |prefix, msg: &str, reason: &str| {
        ctx.metrics.rejected(reason);
        Admit::Reply(vec![ok_msg(&event, false, Some(prefix), msg)])
    };
    if !s.events.take() {
        return reject(
            MachineReadablePrefix::RateLimited,
            "slow down",
            "rate-limited",
        );
    }
    if size.saturating_sub(10) > ctx.limits.max_event_bytes {
        return reject(
            MachineReadablePrefix::Invalid,
            &format!("event is larger than {} bytes", ctx.limits.max_event_bytes),
            "too-large",
        );
    }
    // The global bound on writes in flight, checked before the expensive checks: a flood from
    // fresh keys and fresh connections is refused cheaply, and a quiet connection still gets
    // through.
    let permit = match ctx.writes.as_ref().map(|w| w.clone().try_acquire_owned()) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) if s.quiet.take() => None,
        Some(Err(_)) => {
            return reject(
                MachineReadablePrefix::RateLimited,
                "relay busy: too many writes in flight; retry with backoff",
                "busy",
            )
        }
    };
    if event.tags.len() > MAX_TAGS {
        return reject(
            MachineReadablePrefix::Invalid,
            &format!("more than {MAX_TAGS} tags"),
            "invalid",
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
    // NIP-42 / NIP-70: writes in `--auth write` mode, and protected events always, need an
    // authenticated connection; a protected event only from its own author.
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
        return Admit::Reply(vec![
            challenge,
            ok_msg(
                &event,
                false,
                Some(MachineReadablePrefix::AuthRequired),
                why,
            ),
        ]);
    }
    if protected && s.auth.pubkey != Some(event.pubkey) {
        return reject(
            MachineReadablePrefix::Blocked,
            "this event may only be published by its author",
            "blocked",
        );
    }
    if matches!(event.kind, Kind::Repost | Kind::GenericRepost)
        && Event::from_json(&event.content).is_ok_and(|e| e.is_protected())
    {
        return reject(
            MachineReadablePrefix::Blocked,
            "repost of a protected event",
            "blocked",
        );
    }
    if let Verdict::Reject { prefix, message } = ctx.policy.decide(&event) {
        return Admit::Reply(vec![ok_msg(&event, false, Some(prefix), &message)]);
    }
    // The event's JSON: the message less `["EVENT",` and `]`.
    let json_len = size.saturating_sub(10);
    if !event.kind.is_ephemeral() {
        if let Err(r) = ctx.quota.check(&event, json_len) {
            return reject(r.prefix, &r.message, r.reason);
        }
    }
    if event.kind.is_ephemeral() {
        // Broadcast only; the policy already counted it.
        ctx.hub.publish(&event);
        return Admit::Reply(vec![ok_msg(&event, true, None, "")]);
    }
    let ctx = ctx.clone();
    Admit::Save(Box::pin(async move {
        let _permit = permit;
        // Live subscribers hear an event only once it is stored (after its commit): a
        // subscription opened at any moment then sees every event, either in its query (stored
        // before) or live (stored after) — a subscriber that resubscribes after a `CLOSED` loses
        // nothing — and no subscriber ever acts on an event that a failed commit then loses.
        match ctx.db.save_event(&event).await {
            Ok(SaveEventStatus::Success) => {
                ctx.quota.stored(json_len);
                ctx.hub.publish(&event);
                ok_msg(&event, true, None, "")
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
