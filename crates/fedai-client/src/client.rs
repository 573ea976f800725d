//! The connection: relays, the customer's keys, publishing, and one subscription per job.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, CapabilityAd, Encryption, JobRequest, ParsedJobRequest};
use futures_util::Stream;
use nostr_sdk::prelude::{Client, ClientNotification, RelayStatus, RelayUrl, ReqTarget};

use crate::{backoff, ClientError};

/// How long [`FedaiClient::connect`] waits for a first relay.
const CONNECT_WAIT: Duration = Duration::from_millis(2500);

/// Times one job's subscription is re-opened after relays closed it.
const MAX_REOPENS: u32 = 32;

/// A connection to fed_AI relays with the customer's keys. Cheap to clone: clones share the
/// connection and this customer's observations of workers.
#[derive(Clone)]
pub struct FedaiClient {
    pub(crate) client: Client,
    keys: Keys,
    /// What this customer observed of each worker (the scheduler's input).
    pub(crate) stats: Arc<Mutex<HashMap<PublicKey, fedai_scheduler::WorkerStats>>>,
    /// The clock the statistics' cooldowns use.
    pub(crate) epoch: std::time::Instant,
    /// Ids of the requests published lately (bounded): the same request built twice in one
    /// second is one event, which relays take as a duplicate (or refuse once deleted).
    published: Arc<Mutex<VecDeque<EventId>>>,
    /// Relays this customer was given; a worker's relays are added beside them.
    own: Arc<Vec<RelayUrl>>,
    /// Relays added because a chosen worker reads there (bounded).
    extra: Arc<Mutex<WorkerRelays>>,
    /// Worker relays at private addresses are allowed (a local or LAN market).
    allow_private: bool,
    /// What the reputation store held (or this client last saved) per worker: a save adds only
    /// what was observed since.
    #[cfg_attr(not(feature = "store"), allow(dead_code))]
    pub(crate) baseline: Arc<Mutex<HashMap<PublicKey, fedai_scheduler::WorkerStats>>>,
}

/// The relays added for chosen workers: least recently used first, each with the jobs using
/// it now (only an unused one is closed to make room), and those that failed lately.
#[derive(Default)]
pub(crate) struct WorkerRelays {
    order: VecDeque<RelayUrl>,
    in_use: HashMap<RelayUrl, usize>,
    failed: HashMap<RelayUrl, std::time::Instant>,
}

/// The worker relays one job reached; they stay open while it holds this.
pub(crate) struct Reached {
    pub(crate) urls: Vec<RelayUrl>,
    extra: Arc<Mutex<WorkerRelays>>,
}

impl Drop for Reached {
    fn drop(&mut self) {
        let mut w = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        for u in &self.urls {
            if let Some(n) = w.in_use.get_mut(u) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// How long a worker relay that failed to open is not tried again.
const FAILED_RELAY_PAUSE: Duration = Duration::from_secs(60);
/// How long a worker's relay may take to acknowledge an event we send it.
const WORKER_RELAY_OK: Duration = Duration::from_secs(3);

/// Relays of a chosen worker's ad connected per job, at most.
const WORKER_RELAYS_PER_JOB: usize = 3;
/// Relays added for workers, at most, beside the customer's own.
const MAX_WORKER_RELAYS: usize = 8;
/// How long to wait for a worker's relay to open.
const WORKER_RELAY_WAIT: Duration = Duration::from_secs(2);

/// Builds a [`FedaiClient`]: `FedaiClient::builder().relay(url).keys(keys).connect().await`.
#[derive(Debug, Default)]
pub struct Builder {
    relays: Vec<String>,
    keys: Option<Keys>,
    connect_wait: Option<Duration>,
    allow_private_relays: bool,
}

impl Builder {
    /// Add a relay (`ws://` or `wss://`).
    pub fn relay(mut self, url: impl Into<String>) -> Self {
        self.relays.push(url.into());
        self
    }

    /// Add relays.
    pub fn relays<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.relays.extend(urls.into_iter().map(Into::into));
        self
    }

    /// The customer's keys (default: fresh ones, for a customer who needs no identity).
    pub fn keys(mut self, keys: Keys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// How long to wait for a first relay to connect (default 2.5 s).
    pub fn connect_wait(mut self, wait: Duration) -> Self {
        self.connect_wait = Some(wait);
        self
    }

    /// Reach workers' relays at private addresses too (loopback, LAN): for a local or LAN
    /// market. Off by default: a worker's ad is a stranger's word, and must not make us open
    /// connections into our own network.
    pub fn allow_private_relays(mut self, allow: bool) -> Self {
        self.allow_private_relays = allow;
        self
    }

    /// Connect. Fails, naming each relay and why, when none of them can be reached: a
    /// customer must not wait out a job timeout to learn the network is not there. Relays
    /// that are down while others answer are retried in the background.
    pub async fn connect(self) -> Result<FedaiClient, ClientError> {
        if self.relays.is_empty() {
            return Err(ClientError::Relay("no relay given".into()));
        }
        let client = fedai_transport::nostr_client();
        for r in &self.relays {
            client
                .add_relay(r.as_str())
                .await
                .map_err(|e| ClientError::Relay(format!("{r}: {e}")))?;
        }
        client
            .connect()
            .and_wait(self.connect_wait.unwrap_or(CONNECT_WAIT))
            .await;
        let statuses = client.relays().await;
        if !statuses
            .values()
            .any(|r| r.status() == RelayStatus::Connected)
        {
            let mut why = Vec::new();
            for url in statuses.keys() {
                why.push(format!(
                    "{url} ({})",
                    fedai_transport::unreachable_reason(url).await
                ));
            }
            client.shutdown().await;
            return Err(ClientError::Relay(format!(
                "cannot reach any relay: {}",
                why.join(", ")
            )));
        }
        let own = statuses.keys().cloned().collect();
        Ok(FedaiClient {
            client,
            keys: self.keys.unwrap_or_else(Keys::generate),
            stats: Default::default(),
            epoch: std::time::Instant::now(),
            published: Default::default(),
            own: Arc::new(own),
            extra: Default::default(),
            allow_private: self.allow_private_relays,
            baseline: Default::default(),
        })
    }
}

/// After `wait`, open subscription `id` with `filter` on `relay` again (it closed it), unless
/// `done` says its owner stopped following; closed again when `done` was set meanwhile. Jobs'
/// subscriptions and the live ad view both recover this way.
pub(crate) fn resubscribe_later(
    client: &Client,
    relay: RelayUrl,
    id: nostr_sdk::prelude::SubscriptionId,
    filter: Filter,
    wait: Duration,
    done: Arc<AtomicBool>,
) {
    let client = client.clone();
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if done.load(Ordering::SeqCst) {
            return;
        }
        let target = ReqTarget::single(relay, [filter]);
        if let Err(e) = client.subscribe(target).with_id(id.clone()).await {
            tracing::warn!(error = %e, "cannot subscribe again");
        }
        // Its owner stopped following while this reopened it: close it again.
        if done.load(Ordering::SeqCst) {
            let _ = client.unsubscribe(&id).await;
        }
    });
}

/// fed_AI capability ads: kind 31990 with `#t` = `fedai`.
pub(crate) fn ad_filter() -> Filter {
    Filter::new()
        .kind(Kind::from_u16(kinds::CAPABILITY_AD))
        .custom_tag(
            SingleLetterTag::from_char('t').expect("t is a tag letter"),
            kinds::FEDAI_TOPIC,
        )
}

/// A published request's answers as they arrive: its subscription on every relay.
pub(crate) struct Sub {
    pub(crate) notifications: std::pin::Pin<Box<dyn Stream<Item = ClientNotification> + Send>>,
    pub(crate) event: Event,
    pub(crate) parsed: ParsedJobRequest,
    id: nostr_sdk::prelude::SubscriptionId,
    /// What `id` asks for: opened again on a relay that closes it.
    filter: Filter,
    /// Times a relay closed it (the backoff of the next resubscription).
    reopened: u32,
    /// Set when the request is no longer followed: a late resubscription must not outlive it.
    done: Arc<AtomicBool>,
    /// To close the subscription when the job is dropped without [`FedaiClient::close`].
    client: Client,
}

impl Drop for Sub {
    /// A job dropped mid-way (its task aborted: an app that hung up, a stopped handle) closes
    /// its subscription on every relay: relays cap subscriptions per connection, and a leaked
    /// one per abandoned job would soon make them refuse every new job's.
    fn drop(&mut self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let (client, id) = (self.client.clone(), self.id.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.unsubscribe(&id).await;
            });
        }
    }
}

impl FedaiClient {
    /// Start building a client.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A client with no relay, for tests of what needs none.
    #[cfg(test)]
    pub(crate) fn offline(keys: Keys) -> Self {
        FedaiClient {
            client: fedai_transport::nostr_client(),
            keys,
            stats: Default::default(),
            epoch: std::time::Instant::now(),
            published: Default::default(),
            own: Default::default(),
            extra: Default::default(),
            allow_private: false,
            baseline: Default::default(),
        }
    }

    /// Reach the worker of `ad` where it reads: connect to the relays its ad names that we are
    /// not on (at most [`WORKER_RELAYS_PER_JOB`], one per host; [`MAX_WORKER_RELAYS`] in all,
    /// an unused one closed to make room), so a request posted now reaches it and its answers
    /// reach us, whichever relays we started from. Each relay is checked first: `ws`/`wss`
    /// only, and every address it resolves to public unless [`Builder::allow_private_relays`]
    /// — an ad is a stranger's word and must not make us open connections into our own
    /// network. They do not reconnect by themselves (a name re-pointed after the check would
    /// be followed): the next job that needs one checks it again. A relay that failed to open
    /// is not tried again for a minute. The relays stay open while the job holds [`Reached`].
    pub(crate) async fn reach(&self, ad: &ParsedCapabilityAd) -> Reached {
        let mut urls = Vec::new();
        let mut hosts = std::collections::HashSet::new();
        for url in &ad.ad.relays {
            if urls.len() >= WORKER_RELAYS_PER_JOB {
                break;
            }
            let Ok(parsed) = RelayUrl::parse(url) else {
                continue;
            };
            if self.own.contains(&parsed) || urls.contains(&parsed) {
                continue;
            }
            // One relay per host: path variants of one server do not take every place.
            let host = url::Url::parse(parsed.as_str())
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned));
            if !host.is_some_and(|h| hosts.insert(h)) {
                continue;
            }
            if let Some(at) = self.failed_lately(&parsed) {
                tracing::debug!(relay = %parsed, ?at, "a worker's relay failed lately");
                continue;
            }
            if let Err(e) =
                fedai_netguard::check_resolved(parsed.as_str(), &["ws", "wss"], self.allow_private)
                    .await
            {
                tracing::debug!(relay = %parsed, reason = %e, "a worker's relay refused");
                continue;
            }
            if self.open_worker_relay(&parsed).await {
                urls.push(parsed);
            } else {
                let mut w = self.extra.lock().unwrap_or_else(|e| e.into_inner());
                w.failed.retain(|_, t| t.elapsed() < FAILED_RELAY_PAUSE);
                if w.failed.len() < 1024 {
                    w.failed.insert(parsed, std::time::Instant::now());
                }
            }
        }
        Reached {
            urls,
            extra: self.extra.clone(),
        }
    }

    fn failed_lately(&self, url: &RelayUrl) -> Option<std::time::Instant> {
        let w = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        w.failed
            .get(url)
            .copied()
            .filter(|t| t.elapsed() < FAILED_RELAY_PAUSE)
    }

    /// Make `url` one of the open worker relays, marked in use by one more job; whether it is
    /// open. No lock is held while connecting.
    async fn open_worker_relay(&self, url: &RelayUrl) -> bool {
        let (known, evict) = {
            let mut w = self.extra.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = w.order.iter().position(|r| r == url) {
                let r = w.order.remove(at).expect("position is in range");
                w.order.push_back(r);
                *w.in_use.entry(url.clone()).or_default() += 1;
                (true, None)
            } else {
                let evict = if w.order.len() >= MAX_WORKER_RELAYS {
                    let Some(at) = w
                        .order
                        .iter()
                        .position(|r| w.in_use.get(r).copied().unwrap_or(0) == 0)
                    else {
                        // Every worker relay is in use: this job goes without this one.
                        return false;
                    };
                    let old = w.order.remove(at).expect("position is in range");
                    w.in_use.remove(&old);
                    Some(old)
                } else {
                    None
                };
                w.order.push_back(url.clone());
                w.in_use.insert(url.clone(), 1);
                (false, evict)
            }
        };
        if let Some(old) = evict {
            let _ = self.client.remove_relay(old).await;
        }
        let connected = known
            && self
                .client
                .relay(url.clone())
                .await
                .ok()
                .flatten()
                .is_some_and(|r| r.status() == RelayStatus::Connected);
        if connected {
            return true;
        }
        let added = known
            || self
                .client
                .add_relay(url.clone())
                .reconnect(false)
                .await
                .is_ok();
        let opened = added
            && self
                .client
                .try_connect_relay(url.clone(), WORKER_RELAY_WAIT)
                .await
                .is_ok();
        if !opened {
            {
                let mut w = self.extra.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = w.in_use.get_mut(url) {
                    *n = n.saturating_sub(1);
                }
                if !known {
                    w.order.retain(|r| r != url);
                    w.in_use.remove(url);
                }
            }
            if !known {
                let _ = self.client.remove_relay(url.clone()).await;
            }
        }
        opened
    }

    /// The relays a job's events go to and its answers are followed on: ours, and the worker
    /// relays it reached.
    pub(crate) fn job_relays(&self, reached: &[RelayUrl]) -> Vec<RelayUrl> {
        self.own.iter().chain(reached).cloned().collect()
    }

    /// Connect to `relays` with `keys` (see [`Builder::connect`]).
    pub async fn connect(relays: &[String], keys: Keys) -> Result<Self, ClientError> {
        Self::builder()
            .relays(relays.iter().cloned())
            .keys(keys)
            .connect()
            .await
    }

    /// The customer's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public_key()
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The relays this client uses.
    pub async fn relay_urls(&self) -> Vec<String> {
        self.client
            .relays()
            .await
            .keys()
            .map(|u| u.to_string())
            .collect()
    }

    /// Fetch events matching `filter` from all relays.
    pub async fn fetch(
        &self,
        filter: Filter,
        timeout: Duration,
    ) -> Result<Vec<Event>, ClientError> {
        // Our relays only: worker relays reached for jobs answer for those jobs.
        let targets: Vec<(RelayUrl, Vec<Filter>)> = self
            .own
            .iter()
            .map(|u| (u.clone(), vec![filter.clone()]))
            .collect();
        let events = self
            .client
            .fetch_events(targets)
            .timeout(timeout)
            .await
            .map_err(|e| ClientError::Relay(e.to_string()))?;
        Ok(events.into_iter().collect())
    }

    /// Live fed_AI workers: the newest ad per (worker, instance), verified, not expired.
    pub async fn workers(&self) -> Result<Vec<ParsedCapabilityAd>, ClientError> {
        let filter = ad_filter();
        let now = Timestamp::now();
        let mut newest: HashMap<(PublicKey, String), ParsedCapabilityAd> = HashMap::new();
        for ev in self.fetch(filter, Duration::from_secs(3)).await? {
            let Ok(ad) = CapabilityAd::from_event(&ev) else {
                continue;
            };
            if ad.ad.expiration <= now {
                continue;
            }
            let key = (ad.worker, ad.ad.instance.clone());
            if newest
                .get(&key)
                .is_none_or(|old| old.created_at < ad.created_at)
            {
                newest.insert(key, ad);
            }
        }
        let mut ads: Vec<_> = newest.into_values().filter(|a| a.ad.healthy).collect();
        ads.sort_by_key(|a| (a.worker, a.ad.instance.clone()));
        Ok(ads)
    }

    /// Subscribe to a request's answers, then publish it (in that order: early answers must
    /// not be missed).
    pub(crate) async fn publish_request(
        &self,
        request: &JobRequest,
        private: bool,
        reached: &[RelayUrl],
    ) -> Result<Sub, ClientError> {
        let event = self.fresh_event(request, private).await?;
        let parsed = JobRequest::from_event(&event, None).or_else(|e| match e {
            // Our own encrypted request: we know the plaintext.
            fedai_protocol::ProtocolError::NotRecipient => Ok(ParsedJobRequest::from_own(
                &event,
                request,
                Some(Encryption::Nip44),
            )),
            e => Err(e),
        })?;
        let notifications = self.client.notifications();
        let filter = Filter::new()
            .kinds(
                [
                    kinds::JOB_FEEDBACK,
                    kinds::result_of(request.kind()),
                    kinds::METERING,
                ]
                .map(Kind::from_u16),
            )
            .event(event.id);
        // Followed on our relays and those this job reached, not on other jobs' worker relays.
        let targets: Vec<(RelayUrl, Vec<Filter>)> = self
            .job_relays(reached)
            .into_iter()
            .map(|u| (u, vec![filter.clone()]))
            .collect();
        let id = self
            .client
            .subscribe(targets)
            .await
            .map_err(|e| ClientError::Relay(e.to_string()))?
            .value;
        let sub = Sub {
            notifications,
            event,
            parsed,
            id,
            filter,
            reopened: 0,
            done: Default::default(),
            client: self.client.clone(),
        };
        // A request no relay took: dropping `sub` closes its subscription.
        self.send_to(&sub.event, reached).await?;
        Ok(sub)
    }

    /// The request as a new event: one identical to a request published lately (same
    /// customer, content and second — a retry, or the same prompt twice) waits for the next
    /// second, so every attempt has an id of its own.
    async fn fresh_event(&self, request: &JobRequest, private: bool) -> Result<Event, ClientError> {
        loop {
            let event = request.to_event(&self.keys, private.then_some(Encryption::Nip44))?;
            {
                let mut seen = self.published.lock().unwrap_or_else(|e| e.into_inner());
                if !seen.contains(&event.id) {
                    seen.push_back(event.id);
                    if seen.len() > 256 {
                        seen.pop_front();
                    }
                    return Ok(event);
                }
            }
            let into = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_millis() as u64;
            tokio::time::sleep(Duration::from_millis(1000 - into.min(999) + 5)).await;
        }
    }

    /// Publish an event on our relays; at least one must accept it.
    pub(crate) async fn send(&self, event: &Event) -> Result<(), ClientError> {
        self.send_to(event, &[]).await
    }

    /// Publish an event on our relays (at least one must accept it) and on the worker relays
    /// `reached`, without waiting long for those: a stranger's relay that never acknowledges
    /// must not slow the job.
    pub(crate) async fn send_to(
        &self,
        event: &Event,
        reached: &[RelayUrl],
    ) -> Result<(), ClientError> {
        if !reached.is_empty() {
            let (client, ev, to) = (self.client.clone(), event.clone(), reached.to_vec());
            tokio::spawn(async move {
                let _ = client
                    .send_event(&ev)
                    .to(to)
                    .ok_timeout(WORKER_RELAY_OK)
                    .save_into_database(false)
                    .await;
            });
        }
        let sent = self
            .client
            .send_event(event)
            .to(self.own.iter().cloned())
            .save_into_database(false)
            .await
            .map_err(|e| ClientError::Relay(e.to_string()))?;
        if sent.success.is_empty() {
            let why: Vec<String> = sent.failed.values().cloned().collect();
            return Err(ClientError::Relay(format!(
                "no relay accepted event {}: {}",
                event.id,
                why.join("; ")
            )));
        }
        Ok(())
    }

    /// A relay closed the subscription to this job's answers (`CLOSED`: its live buffer
    /// overflowed in a burst, a restart, a limit): open it again there after a short backoff.
    /// It asks for every answer to the request, so what arrived in between comes from the
    /// relay's store; events already seen are not notified twice.
    pub(crate) fn reopen_if_closed(
        &self,
        sub: &mut Sub,
        relay: RelayUrl,
        message: &RelayMessage<'_>,
    ) {
        let RelayMessage::Closed {
            subscription_id,
            message,
        } = message
        else {
            return;
        };
        // At most a few dozen per job: a relay that keeps sending CLOSED cannot make us spawn
        // without bound.
        if subscription_id.as_ref() != &sub.id || sub.reopened >= MAX_REOPENS {
            return;
        }
        tracing::warn!(%relay, reason = %message, "a relay closed the job's subscription; subscribing again");
        let wait = backoff(
            Duration::from_millis(100),
            sub.reopened,
            Duration::from_millis(6_400),
        );
        sub.reopened += 1;
        let filter = sub.filter.clone();
        resubscribe_later(
            &self.client,
            relay,
            sub.id.clone(),
            filter,
            wait,
            sub.done.clone(),
        );
    }

    /// Stop following a request.
    pub(crate) async fn close(&self, sub: Sub) {
        sub.done.store(true, Ordering::SeqCst);
        let _ = self.client.unsubscribe(&sub.id).await;
    }

    /// Cancel a text-generation request (NIP-09 deletion): its worker stops it and answers
    /// `cancelled`.
    pub async fn cancel(&self, request_id: EventId) -> Result<(), ClientError> {
        self.cancel_on(request_id, kinds::JOB_REQUEST, &[]).await
    }

    /// [`Self::cancel`] of a request of kind `kind` (the deletion's `k`).
    pub async fn cancel_kind(&self, request_id: EventId, kind: u16) -> Result<(), ClientError> {
        self.cancel_on(request_id, kind, &[]).await
    }

    /// [`Self::cancel_kind`], also on the worker relays a job reached.
    pub(crate) async fn cancel_on(
        &self,
        request_id: EventId,
        kind: u16,
        reached: &[RelayUrl],
    ) -> Result<(), ClientError> {
        let ev = fedai_protocol::cancellation_of(request_id, kind, &self.keys)?;
        self.send_to(&ev, reached).await
    }

    /// Close connections (of every clone).
    pub async fn shutdown(self) {
        self.client.shutdown().await;
    }
}
