//! A live view of the market: every worker's newest capability ad, kept current by one
//! subscription instead of a fetch per job.
//!
//! [`FedaiClient::workers`] asks the relays for every ad each time: fine for a command that
//! runs one job, too slow and too heavy for a process that runs many (a gateway answering
//! calls, a dashboard) — each fetch is a round trip and carries every ad in the market.
//! [`FedaiClient::watch_workers`] fetches once, then follows new ads as workers publish them
//! (heartbeats, load changes), re-subscribing when a relay closes the subscription.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, CapabilityAd};
use futures_util::StreamExt;
use nostr_sdk::prelude::{ClientNotification, RelayUrl};

use crate::client::{ad_filter, resubscribe_later};
use crate::{backoff, ClientError, FedaiClient};

/// The most ads a watch keeps: a flood of ads cannot grow it without bound. Past it, expired
/// ads go first, then the one published longest ago (a squatter must keep re-signing to stay).
pub const MAX_WATCHED_ADS: usize = 10_000;

/// Instances one key may hold in the watch.
const MAX_PER_WORKER: usize = 8;

/// The largest ad kept, bytes of content and tag values: an honest ad is a few KiB; a relay or
/// a worker cannot make the watch hold (and a gateway clone per call) ads of hundreds of KiB.
const MAX_AD_BYTES: usize = 64 * 1024;

/// An event's size as the watch counts it: its content and every tag value.
fn ad_bytes(event: &fedai_protocol::Event) -> usize {
    event.content.len()
        + event
            .tags
            .iter()
            .map(|t| t.as_slice().iter().map(String::len).sum::<usize>())
            .sum::<usize>()
}

type Key = (PublicKey, String);

/// A live set of capability ads ([`FedaiClient::watch_workers`]). Dropping it stops following
/// and closes its subscription.
pub struct WorkerWatch {
    ads: Arc<RwLock<HashMap<Key, ParsedCapabilityAd>>>,
    task: tokio::task::JoinHandle<()>,
    /// Held for its `Drop`.
    _sub: Subscription,
}

/// The watch's subscription: closed on every relay when the watch goes (or never started).
struct Subscription {
    client: nostr_sdk::prelude::Client,
    id: SubscriptionId,
    /// Set once closed: a re-subscription scheduled before must not reopen it.
    done: Arc<AtomicBool>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let (client, id) = (self.client.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { client.unsubscribe(&id).await });
        }
    }
}

impl Drop for WorkerWatch {
    /// Stop following; the subscription (a field) closes itself next.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WorkerWatch {
    /// Live fed_AI workers now: the newest ad per (worker, instance), healthy, not expired,
    /// in a stable order — what [`FedaiClient::workers`] would fetch, without the round trip.
    pub fn workers(&self) -> Vec<ParsedCapabilityAd> {
        let now = Timestamp::now();
        let ads = self.ads.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ParsedCapabilityAd> = ads
            .values()
            .filter(|a| a.ad.healthy && a.ad.expiration > now)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.worker, &a.ad.instance).cmp(&(b.worker, &b.ad.instance)));
        out
    }
}

/// Keep `ad` if it is newer than what is known of its (worker, instance), within the bounds.
fn keep(ads: &mut HashMap<Key, ParsedCapabilityAd>, ad: ParsedCapabilityAd) {
    let key = (ad.worker, ad.ad.instance.clone());
    match ads.get(&key) {
        Some(old) if old.created_at >= ad.created_at => return,
        Some(_) => {}
        None => {
            if ads.keys().filter(|(w, _)| *w == ad.worker).count() >= MAX_PER_WORKER {
                return;
            }
            if ads.len() >= MAX_WATCHED_ADS {
                let now = Timestamp::now();
                ads.retain(|_, a| a.ad.expiration > now);
            }
            if ads.len() >= MAX_WATCHED_ADS {
                let oldest = ads
                    .iter()
                    .min_by_key(|(_, a)| a.created_at)
                    .map(|(k, a)| (k.clone(), a.created_at));
                match oldest {
                    Some((k, at)) if at < ad.created_at => {
                        ads.remove(&k);
                    }
                    _ => return,
                }
            }
        }
    }
    ads.insert(key, ad);
}

impl FedaiClient {
    /// Follow the market's capability ads live (see [`WorkerWatch`]): one fetch now, then every
    /// new ad as it is published.
    pub async fn watch_workers(&self) -> Result<WorkerWatch, ClientError> {
        let notifications = self.client.notifications();
        // Live from now on (a second back: ads published while the fetch runs are not lost).
        let since = Timestamp::from_secs(Timestamp::now().as_secs().saturating_sub(1));
        let id = self
            .client
            .subscribe(ad_filter().since(since))
            .await
            .map_err(|e| ClientError::Relay(e.to_string()))?
            .value;
        // From here the subscription closes itself if anything below fails.
        let sub = Subscription {
            client: self.client.clone(),
            id: id.clone(),
            done: Arc::default(),
        };
        let ads: Arc<RwLock<HashMap<Key, ParsedCapabilityAd>>> = Arc::default();
        {
            let fetched = self.workers().await?;
            let mut map = ads.write().unwrap_or_else(|e| e.into_inner());
            for ad in fetched {
                keep(&mut map, ad);
            }
        }
        let task = tokio::spawn(follow(
            self.client.clone(),
            notifications,
            id,
            ads.clone(),
            sub.done.clone(),
        ));
        Ok(WorkerWatch {
            ads,
            task,
            _sub: sub,
        })
    }
}

/// Keep the watch's map current from the client's notifications: every valid fed_AI ad the
/// client sees counts (nostr-sdk announces an event once per client, whichever subscription or
/// fetch met it first), and a relay that closes the subscription gets it back — one reopen
/// pending per relay, after a backoff that grows while it keeps closing.
async fn follow(
    client: nostr_sdk::prelude::Client,
    mut notifications: impl futures_util::Stream<Item = ClientNotification> + Unpin,
    id: SubscriptionId,
    ads: Arc<RwLock<HashMap<Key, ParsedCapabilityAd>>>,
    done: Arc<AtomicBool>,
) {
    let pending: Arc<std::sync::Mutex<HashSet<RelayUrl>>> = Arc::default();
    let mut reopened = 0u32;
    while let Some(n) = notifications.next().await {
        match n {
            ClientNotification::Event { event, .. }
                if event.kind == Kind::from_u16(kinds::CAPABILITY_AD)
                    && ad_bytes(&event) <= MAX_AD_BYTES =>
            {
                if let Ok(ad) = CapabilityAd::from_event(&event) {
                    keep(&mut ads.write().unwrap_or_else(|e| e.into_inner()), ad);
                }
            }
            ClientNotification::Message { relay_url, message } => {
                let RelayMessage::Closed {
                    subscription_id, ..
                } = *message
                else {
                    continue;
                };
                if subscription_id.as_ref() != &id
                    || !pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(relay_url.clone())
                {
                    continue;
                }
                let wait = backoff(
                    Duration::from_millis(200),
                    reopened,
                    Duration::from_secs(30),
                );
                reopened = reopened.saturating_add(1);
                // One reopen pending per relay: its slot frees when the wait is over.
                let (pending, relay) = (pending.clone(), relay_url.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&relay);
                });
                // From a minute before the reopen (the wait included).
                let back = Timestamp::now()
                    .as_secs()
                    .saturating_sub(60 + wait.as_secs());
                let filter = ad_filter().since(Timestamp::from_secs(back));
                resubscribe_later(&client, relay_url, id.clone(), filter, wait, done.clone());
            }
            ClientNotification::Shutdown => break,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::capability::{Hardware, ModelInfo, PaymentInfo};

    fn ad(keys: &Keys, created: u64, healthy: bool) -> ParsedCapabilityAd {
        ParsedCapabilityAd {
            worker: keys.public_key(),
            created_at: Timestamp::from_secs(created),
            ad: fedai_protocol::CapabilityAd {
                instance: "w".into(),
                name: "w".into(),
                about: String::new(),
                job_kinds: vec![kinds::JOB_REQUEST],
                models: vec![ModelInfo {
                    id: "m".into(),
                    context_length: 2048,
                    quantisation: "q".into(),
                    dimensions: 0,
                }],
                prices: Vec::new(),
                max_concurrent: 1,
                in_flight: 0,
                queue_depth: 0,
                hardware: Hardware::Cpu {
                    name: "c".into(),
                    cores: 1,
                    memory_mib: 1,
                },
                runner: "mock".into(),
                healthy,
                payment: PaymentInfo::default(),
                relays: Vec::new(),
                version: "v".into(),
                encryption_supported: true,
                features: Vec::new(),
                expiration: Timestamp::from_secs(u64::from(u32::MAX)),
            },
        }
    }

    #[test]
    fn the_newest_ad_wins_and_the_set_is_bounded() {
        let k = Keys::generate();
        let mut ads = HashMap::new();
        keep(&mut ads, ad(&k, 10, true));
        keep(&mut ads, ad(&k, 9, false));
        assert!(
            ads.values().next().unwrap().ad.healthy,
            "an older ad never wins"
        );
        keep(&mut ads, ad(&k, 11, false));
        assert!(!ads.values().next().unwrap().ad.healthy, "a newer one does");
        for _ in 0..MAX_WATCHED_ADS + 5 {
            keep(&mut ads, ad(&Keys::generate(), 10, true));
        }
        assert_eq!(ads.len(), MAX_WATCHED_ADS);
        // Full of ads published at 10: a newer one gets in (the oldest goes), an older one not.
        let fresh = Keys::generate();
        keep(&mut ads, ad(&fresh, 12, true));
        assert!(ads.contains_key(&(fresh.public_key(), "w".to_string())));
        let stale = Keys::generate();
        keep(&mut ads, ad(&stale, 5, true));
        assert!(!ads.contains_key(&(stale.public_key(), "w".to_string())));
        assert_eq!(ads.len(), MAX_WATCHED_ADS);
    }

    #[test]
    fn an_oversized_ad_is_measured_as_such() {
        let k = Keys::generate();
        let big = EventBuilder::new(
            Kind::from_u16(kinds::CAPABILITY_AD),
            "x".repeat(MAX_AD_BYTES + 1),
        )
        .finalize(&k)
        .unwrap();
        assert!(ad_bytes(&big) > MAX_AD_BYTES);
    }

    #[test]
    fn one_key_holds_a_few_instances_at_most() {
        let k = Keys::generate();
        let mut ads = HashMap::new();
        for i in 0..20 {
            let mut a = ad(&k, 10, true);
            a.ad.instance = format!("w{i}");
            keep(&mut ads, a);
        }
        assert_eq!(ads.len(), MAX_PER_WORKER);
    }
}
