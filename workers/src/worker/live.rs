//! Subscriptions that outlive what relays do to them.
//!
//! A relay may close a live subscription at any time (`CLOSED`): nostr-sdk's LocalRelay does so
//! for every connection whose live buffer overflowed during a burst of other people's events
//! (fedai-relay cuts only a subscription its reader fell behind on), public relays do so under
//! load or on restart, and nostr-sdk's client then forgets the
//! subscription (it re-sends only those it still holds when a connection comes back). A worker
//! that subscribed once would hear no more jobs while its heartbeat kept advertising it.
//!
//! So each subscription has a fixed id; a `CLOSED` for one of ours on a relay is logged,
//! counted, and answered by subscribing again on that relay after a backoff (250 ms doubling to
//! 30 s, reset once the subscription stayed open a minute), with `since` set a minute before
//! the newest event seen: the relay's store fills the gap, and the replay guard drops what was
//! already handled. A worker with no live job subscription on any connected relay advertises
//! itself unhealthy until one is back.

use std::collections::HashMap;

use nostr_sdk::prelude::{RelayMessage, ReqTarget, SubscriptionId};

use super::*;

/// Job requests.
pub(super) const JOBS: &str = "fedai-jobs";
/// NIP-09 deletions (cancellations).
const CANCELS: &str = "fedai-cancels";
/// Awards of our quotes.
const AWARDS: &str = "fedai-awards";
/// Zap receipts naming us.
const ZAPS: &str = "fedai-zaps";

/// How far before the newest event seen a resubscription starts: relays' clocks and arrival
/// order differ, and re-delivered events are dropped by the replay guard.
const OVERLAP_SECS: u64 = 60;
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A subscription open this long since its last close starts its backoff again.
const STABLE: Duration = Duration::from_secs(60);
/// A closed job subscription still counts as live this long: its resubscription, after at most
/// one backoff, catches up from the store; only one that stays closed longer (the relay refusing
/// it) makes the worker advertise itself unhealthy — a sustained burst must not make the ad flap.
const GRACE: Duration = BACKOFF_MAX.saturating_add(Duration::from_secs(3));

/// Which subscriptions relays have closed, and the newest event seen.
#[derive(Default)]
pub(super) struct Live {
    /// (relay, subscription) closed by the relay and not yet open again, and since when.
    closed: Mutex<HashMap<(RelayUrl, String), Instant>>,
    /// Retries of each (relay, subscription) and when the last one was made: the count starts
    /// again only after a subscription stayed open a while (an EOSE proves nothing: a relay
    /// flooded by others answers the REQ and closes it again at once).
    attempts: Mutex<HashMap<(RelayUrl, String), (u32, Instant)>>,
    /// The newest `created_at` (never in the future) of an event our subscriptions brought.
    newest: std::sync::atomic::AtomicU64,
}

impl Worker {
    /// Every subscription, with its filter as it should be opened now.
    fn live_filters(&self) -> Vec<(&'static str, Filter)> {
        let i = &self.inner;
        let me = self.public_key();
        let window = Timestamp::from_secs(
            i.started
                .as_secs()
                .saturating_sub(i.cfg.request_max_age.as_secs()),
        );
        // After a first connection: from a minute before the newest event seen, never earlier
        // than what the first subscription asked for.
        let newest = i.live.newest.load(Ordering::SeqCst);
        let resume = |from: Timestamp| {
            Timestamp::from_secs(from.as_secs().max(newest.saturating_sub(OVERLAP_SECS)))
        };
        let mut out = vec![
            (
                JOBS,
                Filter::new()
                    .kinds(i.cfg.job_kinds.iter().map(|k| Kind::from_u16(*k)))
                    .since(resume(window)),
            ),
            // With or without a `k` tag (generic clients omit it); only a running job's own
            // customer can stop it (`on_cancel`).
            (
                CANCELS,
                Filter::new()
                    .kind(Kind::from_u16(kinds::DELETION))
                    .since(resume(i.started)),
            ),
            (
                AWARDS,
                Filter::new()
                    .kind(Kind::from_u16(kinds::AWARD))
                    .pubkey(me)
                    .since(resume(window)),
            ),
        ];
        if i.zap.is_some() {
            out.push((
                ZAPS,
                Filter::new()
                    .kind(Kind::ZapReceipt)
                    .pubkey(me)
                    .since(resume(i.started)),
            ));
        }
        out
    }

    /// Open every subscription on every relay.
    pub(super) async fn subscribe(&self) -> anyhow::Result<()> {
        for (id, filter) in self.live_filters() {
            self.inner
                .client
                .subscribe(filter)
                .with_id(SubscriptionId::new(id))
                .await?;
        }
        Ok(())
    }

    /// Remember the newest event a subscription brought (capped at now: a future-dated event
    /// must not move resubscriptions past events still to come).
    pub(super) fn saw(&self, event: &Event) {
        let now = Timestamp::now().as_secs();
        self.inner
            .live
            .newest
            .fetch_max(event.created_at.as_secs().min(now), Ordering::SeqCst);
    }

    /// A relay message other than an event: `CLOSED` of one of ours is answered by
    /// subscribing again.
    pub(super) fn on_relay_message(&self, relay: RelayUrl, message: RelayMessage<'_>) {
        let RelayMessage::Closed {
            subscription_id,
            message,
        } = message
        else {
            return;
        };
        let Some(id) = ours(&subscription_id) else {
            return;
        };
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return;
        }
        let key = (relay.clone(), id.to_owned());
        let mut closed = self
            .inner
            .live
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // One resubscription at a time per relay and subscription; a CLOSED while one is under
        // way changes nothing (and is not logged again).
        if let std::collections::hash_map::Entry::Vacant(e) = closed.entry(key) {
            e.insert(Instant::now());
            tracing::warn!(%relay, subscription = id, reason = %message, "a relay closed our subscription; subscribing again");
            self.inner.metrics.subscription_closed();
            let w = self.clone();
            tokio::spawn(async move { w.resubscribe(relay, id).await });
        }
    }

    /// Subscribe `id` again on `relay`, after a backoff, until it is open or we stop.
    async fn resubscribe(&self, relay: RelayUrl, id: &'static str) {
        let i = &self.inner;
        let key = (relay.clone(), id.to_owned());
        let subscribed = loop {
            let n = {
                let mut attempts = i.live.attempts.lock().unwrap_or_else(|e| e.into_inner());
                let (n, last) = attempts.entry(key.clone()).or_insert((0, Instant::now()));
                if last.elapsed() > STABLE {
                    *n = 0;
                }
                *n += 1;
                *last = Instant::now();
                *n
            };
            let wait = fedai_transport::backoff(BACKOFF_FIRST, n - 1, BACKOFF_MAX);
            tokio::time::sleep(wait).await;
            if !i.accepting.load(Ordering::SeqCst) {
                break false;
            }
            let Some((_, filter)) = self.live_filters().into_iter().find(|(x, _)| *x == id) else {
                break false;
            };
            let target = ReqTarget::single(relay.clone(), [filter]);
            match i
                .client
                .subscribe(target)
                .with_id(SubscriptionId::new(id))
                .await
            {
                Ok(out) if out.success.contains_key(&relay) => {
                    tracing::info!(%relay, subscription = id, attempt = n, "subscribed again");
                    i.metrics.resubscribed();
                    break true;
                }
                Ok(_) => {
                    tracing::debug!(%relay, subscription = id, "resubscription not sent; retrying")
                }
                Err(e) => {
                    tracing::debug!(%relay, subscription = id, error = %e, "resubscription failed; retrying")
                }
            }
        };
        i.live
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        // Advertised unhealthy meanwhile: say at once that we hear jobs again, not at the next
        // health probe.
        if subscribed && id == JOBS && !i.hearing.load(Ordering::SeqCst) {
            self.heartbeat(false).await;
        }
    }

    /// Relays that are connected and whose job subscription is open — or was closed so
    /// recently that its resubscription (within one backoff) is still under way.
    pub(super) async fn live_job_relays(&self) -> usize {
        let i = &self.inner;
        let relays = i.client.relays().await;
        let closed = i.live.closed.lock().unwrap_or_else(|e| e.into_inner());
        relays
            .iter()
            .filter(|(url, r)| {
                r.status() == RelayStatus::Connected
                    && closed
                        .get(&((*url).clone(), JOBS.to_owned()))
                        .is_none_or(|since| since.elapsed() < GRACE)
            })
            .count()
    }
}

/// One of our subscription ids.
fn ours(id: &SubscriptionId) -> Option<&'static str> {
    [JOBS, CANCELS, AWARDS, ZAPS]
        .into_iter()
        .find(|x| id.as_str() == *x)
}
