//! A live view of the market: every worker's newest capability ad, kept current by one
//! subscription instead of a fetch per job.
//!
//! [`FedaiClient::workers`] asks the relays for every ad each time: fine for a command that
//! runs one job, too slow and too heavy for a process that runs many (a gateway answering
//! calls, a dashboard) — each fetch is a round trip and carries every ad in the market.
//! [`FedaiClient::watch_workers`] fetches once, then follows new ads as workers publish them
//! (heartbeats, load changes), re-subscribing when a relay closes the subscription.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, CapabilityAd};
use futures_util::StreamExt;
use nostr_sdk::prelude::{ClientNotification, ReqTarget};

use crate::{backoff, ClientError, FedaiClient};

/// The most ads a watch keeps: a flood of ads from fresh keys cannot grow it without bound
/// (expired ones are dropped first; past the bound, new workers wait for room).
pub const MAX_WATCHED_ADS: usize = 10_000;

type Key = (PublicKey, String);

/// A live set of capability ads ([`FedaiClient::watch_workers`]). Dropping it stops following.
pub struct WorkerWatch {
    ads: Arc<RwLock<HashMap<Key, ParsedCapabilityAd>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WorkerWatch {
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

/// Keep `ad` if it is newer than what is known of its (worker, instance), within the bound.
fn keep(ads: &mut HashMap<Key, ParsedCapabilityAd>, ad: ParsedCapabilityAd) {
    let key = (ad.worker, ad.ad.instance.clone());
    match ads.get(&key) {
        Some(old) if old.created_at >= ad.created_at => return,
        Some(_) => {}
        None if ads.len() >= MAX_WATCHED_ADS => {
            let now = Timestamp::now();
            ads.retain(|_, a| a.ad.expiration > now);
            if ads.len() >= MAX_WATCHED_ADS {
                return;
            }
        }
        None => {}
    }
    ads.insert(key, ad);
}

fn ad_filter() -> Filter {
    Filter::new()
        .kind(Kind::from_u16(kinds::CAPABILITY_AD))
        .custom_tag(
            SingleLetterTag::from_char('t').expect("t is a tag letter"),
            kinds::FEDAI_TOPIC,
        )
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
        let ads: Arc<RwLock<HashMap<Key, ParsedCapabilityAd>>> = Arc::default();
        {
            let fetched = self.workers().await?;
            let mut map = ads.write().unwrap_or_else(|e| e.into_inner());
            for ad in fetched {
                keep(&mut map, ad);
            }
        }
        let (client, shared) = (self.client.clone(), ads.clone());
        let task = tokio::spawn(async move {
            let mut notifications = notifications;
            let mut reopened = 0u32;
            while let Some(n) = notifications.next().await {
                match n {
                    ClientNotification::Event {
                        subscription_id,
                        event,
                        ..
                    } if subscription_id == id => {
                        if let Ok(ad) = CapabilityAd::from_event(&event) {
                            keep(&mut shared.write().unwrap_or_else(|e| e.into_inner()), ad);
                        }
                    }
                    ClientNotification::Message { relay_url, message } => {
                        let RelayMessage::Closed {
                            subscription_id, ..
                        } = *message
                        else {
                            continue;
                        };
                        if subscription_id.as_ref() != &id {
                            continue;
                        }
                        // A relay closed it (a restart, a limit): open it there again, from a
                        // little before now, after a backoff that grows while it keeps closing.
                        let wait = backoff(
                            Duration::from_millis(200),
                            reopened,
                            Duration::from_secs(30),
                        );
                        reopened = reopened.saturating_add(1);
                        let (client, id) = (client.clone(), id.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let back = Timestamp::now().as_secs().saturating_sub(60);
                            let filter = ad_filter().since(Timestamp::from_secs(back));
                            let target = ReqTarget::single(relay_url, [filter]);
                            let _ = client.subscribe(target).with_id(id).await;
                        });
                    }
                    ClientNotification::Shutdown => break,
                    _ => {}
                }
            }
        });
        Ok(WorkerWatch { ads, task })
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
    }
}
