//! Reads: `REQ` (stored events, then live ones through the [`crate::hub`]), `CLOSE`, `COUNT`
//! (NIP-45) and negentropy set reconciliation (NIP-77, `NEG-OPEN` / `NEG-MSG` / `NEG-CLOSE`).
//!
//! Every answer is a list of frames for the connection to send. Limits refuse with `CLOSED` (or
//! `NEG-ERR`) and a machine-readable prefix, and end only the subscription concerned.

use std::borrow::Cow;
use std::collections::BTreeSet;

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use nostr_sdk::prelude::{Event, Filter, MachineReadablePrefix, RelayMessage, SubscriptionId};

use crate::connection::{ConnCtx, Session};
use crate::hub::event_frame;

/// Longest subscription id accepted (bytes).
pub const MAX_SUBID_BYTES: usize = 250;
/// Live subscriptions per connection.
pub const MAX_SUBS: usize = 100;
/// Filters in one `REQ`.
pub const MAX_FILTERS: usize = 20;
/// Bytes of `REQ` messages kept as live subscriptions, per connection.
pub const MAX_SUB_BYTES: usize = 256 * 1024;
/// Events a filter without `limit` returns.
pub const DEFAULT_LIMIT: usize = 500;
/// Values in one filter (ids, authors, kinds and tag values together). Matching is by set
/// lookup, so this bounds memory, not time; fed_AI's own worker asks for 1,000 result kinds.
pub const MAX_FILTER_VALUES: usize = 10_000;
/// Bytes of stored events one `REQ` returns before its `EOSE` (a relay may return fewer
/// events than asked for; the client pages with `until`).
pub const MAX_REQ_BYTES: usize = 8 << 20;
/// Negentropy sessions per connection.
pub const MAX_NEG_SUBS: usize = 4;
/// Items held by one connection's negentropy sessions together.
pub const MAX_NEG_ITEMS: usize = 50_000;
/// Largest negentropy message the relay sends.
const NEG_FRAME_LIMIT: u64 = 60_000;

/// One negentropy session.
pub struct NegSession {
    state: Negentropy<'static, NegentropyStorageVector>,
    items: usize,
}

fn closed(id: &SubscriptionId, prefix: MachineReadablePrefix, msg: &str) -> String {
    tracing::debug!(%prefix, msg, "subscription refused");
    RelayMessage::Closed {
        subscription_id: Cow::Borrowed(id),
        message: Cow::Owned(format!("{prefix}: {msg}")),
    }
    .as_json()
}

fn neg_err(id: &SubscriptionId, prefix: MachineReadablePrefix, msg: &str) -> String {
    RelayMessage::NegErr {
        subscription_id: Cow::Borrowed(id),
        message: Cow::Owned(format!("{prefix}: {msg}")),
    }
    .as_json()
}

/// The `AUTH` challenge and `CLOSED` for a read that needs authentication.
fn auth_first(s: &mut Session, id: &SubscriptionId, neg: bool) -> Vec<String> {
    let challenge = RelayMessage::Auth {
        challenge: Cow::Owned(s.auth.challenge()),
    }
    .as_json();
    let msg = "this relay serves authenticated clients: AUTH first";
    let refusal = if neg {
        neg_err(id, MachineReadablePrefix::AuthRequired, msg)
    } else {
        closed(id, MachineReadablePrefix::AuthRequired, msg)
    };
    vec![challenge, refusal]
}

/// Why a read (`REQ`, `COUNT`, `NEG-OPEN`) is refused.
enum Refused {
    /// With this prefix and reason.
    Say(MachineReadablePrefix, String),
    /// The relay serves authenticated clients only.
    Auth,
}

impl Refused {
    fn say(prefix: MachineReadablePrefix, msg: impl Into<String>) -> Self {
        Self::Say(prefix, msg.into())
    }

    /// The frames that tell the client: `CLOSED`, or `NEG-ERR` for a negentropy session.
    fn frames(self, s: &mut Session, id: &SubscriptionId, neg: bool) -> Vec<String> {
        match self {
            Self::Auth => auth_first(s, id, neg),
            Self::Say(prefix, msg) if neg => vec![neg_err(id, prefix, &msg)],
            Self::Say(prefix, msg) => vec![closed(id, prefix, &msg)],
        }
    }
}

/// What every read checks first: the id's length and the connection's query rate.
fn first_checks(s: &mut Session, id: &SubscriptionId) -> Result<(), Refused> {
    if id.as_str().len() > MAX_SUBID_BYTES {
        return Err(Refused::say(
            MachineReadablePrefix::Invalid,
            format!("subscription id longer than {MAX_SUBID_BYTES} bytes"),
        ));
    }
    if !s.queries.take() {
        return Err(Refused::say(
            MachineReadablePrefix::RateLimited,
            "too many queries",
        ));
    }
    Ok(())
}

/// What every read checks last: authentication, then the filters themselves.
fn access_checks<'a>(
    ctx: &ConnCtx,
    s: &Session,
    filters: impl IntoIterator<Item = &'a Filter>,
) -> Result<(), Refused> {
    if ctx.auth_reads && s.auth.pubkey.is_none() {
        return Err(Refused::Auth);
    }
    match filters.into_iter().find_map(refuse_filter) {
        Some((prefix, msg)) => Err(Refused::Say(prefix, msg)),
        None => Ok(()),
    }
}

/// Why a filter is refused: full-text search is not served (matching it against every live
/// event is quadratic in sizes a client chooses), and a filter's values are bounded.
fn refuse_filter(f: &Filter) -> Option<(MachineReadablePrefix, String)> {
    if f.search.is_some() {
        return Some((
            MachineReadablePrefix::Unsupported,
            "search (NIP-50) is not supported by this relay".into(),
        ));
    }
    let values = f.ids.as_ref().map_or(0, |v| v.len())
        + f.authors.as_ref().map_or(0, |v| v.len())
        + f.kinds.as_ref().map_or(0, |v| v.len())
        + f.generic_tags.values().map(|v| v.len()).sum::<usize>();
    (values > MAX_FILTER_VALUES).then(|| {
        (
            MachineReadablePrefix::Invalid,
            format!("a filter holds more than {MAX_FILTER_VALUES} values"),
        )
    })
}

/// Cap a filter's `limit` at the relay's bound (a filter with `ids` defaults to their number).
fn bound(mut f: Filter, max: usize) -> Filter {
    let asked = f
        .limit
        .unwrap_or_else(|| f.ids.as_ref().map_or(DEFAULT_LIMIT, |ids| ids.len()));
    f.limit = Some(asked.min(max));
    f
}

/// `REQ`: the stored events matching `filters` (newest first), `EOSE`, then live events. A
/// refused `REQ` also ends the subscription it would have replaced (the client is told it is
/// closed).
pub async fn req(
    ctx: &ConnCtx,
    s: &mut Session,
    id: SubscriptionId,
    filters: Vec<Filter>,
    size: usize,
) -> Vec<String> {
    // Whatever happens next, the previous subscription of this id ends here.
    s.reg.unsubscribe(&id);
    match req_checks(ctx, s, &id, &filters, size) {
        Ok(()) => serve(ctx, s, id, filters, size).await,
        Err(r) => r.frames(s, &id, false),
    }
}

fn req_checks(
    ctx: &ConnCtx,
    s: &mut Session,
    id: &SubscriptionId,
    filters: &[Filter],
    size: usize,
) -> Result<(), Refused> {
    first_checks(s, id)?;
    if s.reg.len() >= MAX_SUBS {
        return Err(Refused::say(
            MachineReadablePrefix::RateLimited,
            format!("too many subscriptions on this connection (max {MAX_SUBS})"),
        ));
    }
    if filters.len() > MAX_FILTERS {
        return Err(Refused::say(
            MachineReadablePrefix::Invalid,
            format!("more than {MAX_FILTERS} filters in one REQ"),
        ));
    }
    if s.reg.held_bytes() + size > MAX_SUB_BYTES {
        return Err(Refused::say(
            MachineReadablePrefix::RateLimited,
            format!("live subscriptions on this connection exceed {MAX_SUB_BYTES} bytes"),
        ));
    }
    access_checks(ctx, s, filters)
}

/// A `REQ` that passed its checks: subscribe live, query, answer.
async fn serve(
    ctx: &ConnCtx,
    s: &mut Session,
    id: SubscriptionId,
    filters: Vec<Filter>,
    size: usize,
) -> Vec<String> {
    let filters: Vec<Filter> = filters
        .into_iter()
        .map(|f| bound(f, ctx.limits.max_query_results))
        .collect();
    // Live first, then the query: an event stored meanwhile is then in one or the other (or
    // both: clients dedupe by id), never in neither.
    if s.reg.subscribe(id.clone(), filters.clone(), size).is_err() {
        return vec![closed(
            &id,
            MachineReadablePrefix::RateLimited,
            "this relay holds as many live subscriptions as it can; try later",
        )];
    }
    let ids_asked: Option<usize> = filters
        .iter()
        .map(|f| f.ids.as_ref().map(|ids| ids.len()))
        .sum();
    let mut events: BTreeSet<Event> = BTreeSet::new();
    let max = ctx.limits.max_query_results;
    for mut f in filters {
        // The REQ's filters share one budget: a REQ of 20 filters reads no more than one.
        let room = max.saturating_sub(events.len());
        if room == 0 {
            break;
        }
        f.limit = Some(f.limit.map_or(room, |l| l.min(room)));
        match ctx.db.query(f).await {
            Ok(found) => events.extend(found),
            Err(e) => {
                tracing::warn!(error = %e, "query failed");
                s.reg.unsubscribe(&id);
                return vec![closed(&id, MachineReadablePrefix::Error, "database error")];
            }
        }
    }
    let found = events.len();
    // Newest first, at most `max_query_results` and MAX_REQ_BYTES for the whole REQ.
    let mut out = Vec::new();
    let mut bytes = 0;
    for e in events
        .iter()
        .filter(|e| !e.is_expired())
        .take(ctx.limits.max_query_results)
    {
        let frame = event_frame(&id, &e.as_json());
        bytes += frame.len();
        if bytes > MAX_REQ_BYTES {
            break;
        }
        out.push(frame);
    }
    drop(events);
    out.push(RelayMessage::EndOfStoredEvents(Cow::Borrowed(&id)).as_json());
    // A lookup by ids that found them all is complete: nothing live can add to it.
    if ids_asked == Some(found) {
        s.reg.unsubscribe(&id);
        out.push(
            RelayMessage::Closed {
                subscription_id: Cow::Borrowed(&id),
                message: Cow::Borrowed(""),
            }
            .as_json(),
        );
    }
    out
}

/// `CLOSE`: end a live subscription (no answer).
pub fn close(s: &mut Session, id: &SubscriptionId) {
    s.reg.unsubscribe(id);
}

/// `COUNT` (NIP-45).
pub async fn count(ctx: &ConnCtx, s: &mut Session, id: SubscriptionId, f: Filter) -> Vec<String> {
    if let Err(r) = first_checks(s, &id).and_then(|()| access_checks(ctx, s, [&f])) {
        return r.frames(s, &id, false);
    }
    // Counting a filter walks its matches: bounded like a query (NIP-45 lets a relay say it
    // stopped; counts at the bound are "at least").
    let f = bound(f, ctx.limits.max_query_results);
    match ctx.db.count(f).await {
        Ok(count) => vec![RelayMessage::Count {
            subscription_id: Cow::Borrowed(&id),
            count,
        }
        .as_json()],
        Err(e) => {
            tracing::warn!(error = %e, "count failed");
            vec![closed(&id, MachineReadablePrefix::Error, "database error")]
        }
    }
}

fn neg_msg(id: &SubscriptionId, msg: &[u8]) -> String {
    RelayMessage::NegMsg {
        subscription_id: Cow::Borrowed(id),
        message: Cow::Owned(hex::encode(msg)),
    }
    .as_json()
}

/// `NEG-OPEN`: index the matching items and answer the client's first message.
pub async fn neg_open(
    ctx: &ConnCtx,
    s: &mut Session,
    id: SubscriptionId,
    mut f: Filter,
    initial: &str,
) -> Vec<String> {
    let checks = first_checks(s, &id).and_then(|()| {
        if !s.neg.contains_key(&id) && s.neg.len() >= MAX_NEG_SUBS {
            return Err(Refused::say(
                MachineReadablePrefix::RateLimited,
                "too many negentropy sessions",
            ));
        }
        access_checks(ctx, s, [&f])
    });
    if let Err(r) = checks {
        return r.frames(s, &id, true);
    }
    let Ok(initial) = hex::decode(initial) else {
        return vec![neg_err(
            &id,
            MachineReadablePrefix::Invalid,
            "message is not hex",
        )];
    };
    let held: usize = s
        .neg
        .iter()
        .filter(|(k, _)| **k != id)
        .map(|(_, n)| n.items)
        .sum();
    let room = MAX_NEG_ITEMS.saturating_sub(held);
    // One more than the room tells "exactly full" from "too many".
    f.limit = Some(f.limit.map_or(room + 1, |l| l.min(room + 1)));
    let items = match ctx.db.negentropy_items(f).await {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "negentropy query failed");
            return vec![neg_err(&id, MachineReadablePrefix::Error, "database error")];
        }
    };
    if items.len() > room {
        return vec![neg_err(
            &id,
            MachineReadablePrefix::Blocked,
            &format!("more than {room} items: narrow the filter (kinds, since/until)"),
        )];
    }
    let n = items.len();
    let mut storage = NegentropyStorageVector::with_capacity(n);
    for (event_id, at) in items {
        if storage
            .insert(at.as_secs(), Id::from_byte_array(event_id.to_bytes()))
            .is_err()
        {
            return vec![neg_err(&id, MachineReadablePrefix::Error, "index error")];
        }
    }
    let answer = storage
        .seal()
        .ok()
        .and_then(|_| Negentropy::owned(storage, NEG_FRAME_LIMIT).ok())
        .and_then(|mut state| state.reconcile(&initial).ok().map(|msg| (state, msg)));
    match answer {
        Some((state, msg)) => {
            let frame = neg_msg(&id, &msg);
            s.neg.insert(id, NegSession { state, items: n });
            vec![frame]
        }
        None => {
            s.neg.remove(&id);
            vec![neg_err(
                &id,
                MachineReadablePrefix::Invalid,
                "bad negentropy message",
            )]
        }
    }
}

/// `NEG-MSG`: the next round of a reconciliation.
pub fn neg_msg_in(s: &mut Session, id: SubscriptionId, message: &str) -> Vec<String> {
    if !s.queries.take() {
        return vec![neg_err(
            &id,
            MachineReadablePrefix::RateLimited,
            "too many queries",
        )];
    }
    let Some(session) = s.neg.get_mut(&id) else {
        return vec![neg_err(
            &id,
            MachineReadablePrefix::Error,
            "no such negentropy session",
        )];
    };
    match hex::decode(message)
        .ok()
        .and_then(|m| session.state.reconcile(&m).ok())
    {
        Some(msg) => vec![neg_msg(&id, &msg)],
        None => {
            // A failed round leaves the state unusable: end this session, keep the socket.
            s.neg.remove(&id);
            vec![neg_err(
                &id,
                MachineReadablePrefix::Invalid,
                "bad negentropy message",
            )]
        }
    }
}

/// `NEG-CLOSE`.
pub fn neg_close(s: &mut Session, id: &SubscriptionId) {
    s.neg.remove(id);
}
