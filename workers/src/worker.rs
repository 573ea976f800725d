//! The worker: subscribes to job requests on every relay, runs them on the runner, publishes
//! feedback, results and metering, and keeps its capability ad fresh.
//!
//! Stateless by design: nothing is kept on disk. After a restart the worker reads its own
//! feedback and results from the relays (within the request window) to find the jobs it had
//! accepted and not answered, and answers them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fedai_lightning::lnd::Lnd;
use fedai_lightning::{InvoiceBackend, InvoiceState};
use fedai_protocol::capability::PaymentInfo;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{
    kinds, Amount, Award, CapabilityAd, ErrorCode, FeedbackStatus, Freshness, JobFeedback,
    JobRequest, JobResult, MeteringRecord, ModelInfo, ParsedJobRequest, PaymentMode, Price,
    ProtocolError, ReplayGuard, Usage,
};
use fedai_runners::{HttpOptions, InferRequest, Piece, Runner, RunnerError, SandboxPolicy};
use futures_util::StreamExt;
use nostr_sdk::prelude::{Client, ClientNotification, RelayStatus};
use tokio::sync::{oneshot, Semaphore};

use crate::config::WorkerConfig;
use crate::hardware;
use crate::metrics::Metrics;

/// Software version advertised in the ad.
pub const VERSION: &str = concat!("fedai-worker/", env!("CARGO_PKG_VERSION"));

/// Partial chunks are flushed when this old or this large, to bound the event rate.
const PARTIAL_FLUSH: Duration = Duration::from_millis(40);
const PARTIAL_MAX_BYTES: usize = 256;

struct Inner {
    cfg: WorkerConfig,
    client: Client,
    /// Extra relays that customers named in `relays` tags, for their jobs' answers only (a
    /// client of its own, so nothing else we publish goes there); bounded in number.
    reply: Client,
    /// The reply relays in the order they were added (the oldest is dropped first).
    reply_order: Mutex<std::collections::VecDeque<RelayUrl>>,
    runner: Arc<dyn Runner>,
    models: RwLock<Vec<ModelInfo>>,
    healthy: AtomicBool,
    slots: Arc<Semaphore>,
    /// Jobs on the runner (the ad's load).
    in_flight: AtomicU32,
    /// Jobs taken and not yet answered, waiting for payment included (the drain waits for them).
    jobs: AtomicU32,
    /// Unpaid quotes per customer.
    quotes: Mutex<HashMap<PublicKey, u32>>,
    /// Requests whose `url`/`event`/`job` inputs are being fetched at once.
    fetches: Arc<Semaphore>,
    seen: Mutex<ReplayGuard>,
    /// Requests this process has taken to run: a request reaches the run path by more than
    /// one road (its own event, its award, recovery after a restart) and must run once.
    taken: Mutex<ReplayGuard>,
    running: Mutex<HashMap<EventId, (PublicKey, oneshot::Sender<Stop>)>>,
    accepting: AtomicBool,
    started: Timestamp,
    /// Accepted (processing sent) but unanswered before this process started.
    recover: Mutex<HashSet<EventId>>,
    /// Answered (result or error sent) before this process started.
    answered: Mutex<HashSet<EventId>>,
    metrics: Arc<Metrics>,
    /// Our Lightning node, when we take payments.
    ln: Option<Arc<dyn InvoiceBackend>>,
    /// Its public key (hex), for the ad.
    ln_node: Option<String>,
    /// Where zaps of job requests pay us, and the key that signs its receipts.
    zap: Option<ZapTarget>,
    /// Jobs waiting for a zap receipt, by request id.
    zap_waiters: Mutex<HashMap<EventId, tokio::sync::mpsc::Sender<Event>>>,
    /// Signalled when `in_flight` changes: customers schedule on the advertised load, and the
    /// simulator shows that stale load is what makes them pile onto full workers.
    load_changed: tokio::sync::Notify,
    /// `created_at` of the last ad, and the lock that keeps ads in order.
    last_ad: std::sync::atomic::AtomicU64,
    /// The load band (idle, busy, full) the last ad showed: a load change re-publishes the ad
    /// only when the band changes, so a busy worker does not publish an ad per job.
    last_band: std::sync::atomic::AtomicU8,
    ad_lock: tokio::sync::Mutex<()>,
}

/// A running worker.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

/// What a finished job hands to `deliver`.
struct Delivery {
    model: String,
    output: String,
    usage: Usage,
    wall: Duration,
}

/// Our zap target (a lightning address or LNURL-pay endpoint) and its LNURL service's terms.
struct ZapTarget {
    target: String,
    params: fedai_lightning::lnurl::PayParams,
    /// The `nostrPubkey` whose zap receipts count.
    server: PublicKey,
}

/// What a pay-before job offers the customer: a hold invoice on our node, a zap, or both.
struct Offer<'a> {
    price: u64,
    /// The hold invoice's hash and preimage, once it exists on our node.
    held: Option<(fedai_lightning::PaymentHash, fedai_lightning::Preimage)>,
    /// Its BOLT11, when created now (not found again after a restart); sent once.
    bolt11: Option<String>,
    /// Our zap target, when it takes this amount, and the receipts naming the job.
    zap: Option<(&'a ZapTarget, tokio::sync::mpsc::Receiver<Event>)>,
    /// The `payment-required` feedback sent: a zap of it pays too.
    quote_id: Option<EventId>,
}

/// A customer's payment for a job (pay-before).
enum Paid {
    /// Held by our node: settled on delivery, cancelled (refunded) on failure.
    Held {
        amount_msat: u64,
        preimage: fedai_lightning::Preimage,
        hash: fedai_lightning::PaymentHash,
    },
    /// Zapped to our lightning address: final.
    Zapped {
        amount_msat: u64,
        hash: fedai_lightning::PaymentHash,
    },
}

/// Why a running job is stopped before its runner finishes.
enum Stop {
    /// The request's author deleted it (NIP-09 kind 5).
    Cancelled,
    /// The drain deadline passed during shutdown.
    Shutdown,
}

impl Stop {
    fn outcome(self) -> Outcome {
        match self {
            Stop::Cancelled => {
                Outcome::Failed(ErrorCode::Cancelled, "cancelled by the customer".into())
            }
            Stop::Shutdown => Outcome::Failed(
                ErrorCode::Shutdown,
                "the worker stopped before the job finished; resubmit".into(),
            ),
        }
    }
}

enum Outcome {
    Done {
        output: String,
        usage: Usage,
        first_token: Option<Duration>,
        runner_time: Duration,
    },
    Failed(ErrorCode, String),
}

/// Bytes one generated token can take at most (the longest tokens are a few dozen bytes).
const MAX_BYTES_PER_TOKEN: usize = 64;

/// How long a paid job waits for a free slot before it is refunded.
const PAID_SLOT_WAIT: Duration = Duration::from_secs(30);
/// Unpaid quotes (hold invoices or zap offers waiting for payment) one customer may hold.
const QUOTES_PER_CUSTOMER: u32 = 2;

/// Counts something while alive (a job, for the drain on shutdown).
struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    fn new(c: &'a AtomicU32) -> Self {
        c.fetch_add(1, Ordering::SeqCst);
        Self(c)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job on the runner: counted in the ad's load and the metrics until dropped, on every path.
struct InFlight(Worker);

impl InFlight {
    fn new(w: &Worker) -> Self {
        let i = &w.inner;
        let n = i.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        i.load_changed.notify_one();
        i.metrics.set_in_flight(n as i64);
        Self(w.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let i = &self.0.inner;
        let n = i.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        i.load_changed.notify_one();
        i.metrics.set_in_flight(n as i64);
    }
}

/// A customer's place among the unpaid quotes.
struct QuoteSlot {
    worker: Worker,
    customer: PublicKey,
}

impl Drop for QuoteSlot {
    fn drop(&mut self) {
        let mut q = self
            .worker
            .inner
            .quotes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = q.get_mut(&self.customer) {
            *n -= 1;
            if *n == 0 {
                q.remove(&self.customer);
            }
        }
    }
}

/// The load band an ad shows: 0 idle, 1 busy, 2 full.
fn load_band(in_flight: u32, max: u32) -> u8 {
    match in_flight {
        0 => 0,
        n if n >= max => 2,
        _ => 1,
    }
}

fn runner_error_code(e: &RunnerError) -> ErrorCode {
    match e {
        RunnerError::UnknownModel(_) => ErrorCode::ModelUnavailable,
        RunnerError::Timeout(_) => ErrorCode::Timeout,
        _ => ErrorCode::RunnerFailed,
    }
}

impl Worker {
    /// Connect to the relays and the runner. Does not take jobs until [`Worker::run`].
    pub async fn connect(cfg: WorkerConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let mut policy = SandboxPolicy::default();
        policy
            .url_prefixes
            .extend(cfg.allow_runner_urls.iter().cloned());
        let opts = HttpOptions {
            idle_timeout: cfg.job_timeout.min(Duration::from_secs(120)),
            ..HttpOptions::default()
        };
        let runner = fedai_runners::build(&cfg.runner, &cfg.runner_url, &policy, opts)?;
        Self::with_runner(cfg, runner, metrics).await
    }

    /// Like [`Worker::connect`] with a runner built by the caller (tests, embedding).
    pub async fn with_runner(
        cfg: WorkerConfig,
        runner: Arc<dyn Runner>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let client = fedai_client::nostr_client();
        for r in &cfg.relays {
            client.add_relay(r.as_str()).await?;
        }
        // Relays that are down now are retried in the background (with backoff) by the client.
        client.connect().and_wait(Duration::from_secs(5)).await;
        let (ln, ln_node) = match &cfg.lnd {
            Some(l) => {
                let lnd = Lnd::connect(l).await?;
                let pubkey = lnd.node_pubkey().await?;
                tracing::info!(node = %pubkey, mode = cfg.payment_mode.as_str(), "lightning node connected");
                (Some(Arc::new(lnd) as Arc<dyn InvoiceBackend>), Some(pubkey))
            }
            None => (None, None),
        };
        let zap = match &cfg.lightning_address {
            Some(target) => {
                let params =
                    fedai_lightning::lnurl::LnurlClient::build(cfg.allow_private_addresses)?
                        .pay_params(target)
                        .await?;
                let Some(server) = params.nostr_pubkey else {
                    anyhow::bail!(
                        "{target} does not take zaps: its LNURL service gives no allowsNostr/nostrPubkey"
                    );
                };
                tracing::info!(target = %target, "taking zaps");
                Some(ZapTarget {
                    target: target.clone(),
                    params,
                    server,
                })
            }
            None => None,
        };
        let window = cfg.request_max_age.as_secs();
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(cfg.max_concurrent as usize)),
            client,
            reply: fedai_client::nostr_client(),
            reply_order: Mutex::new(std::collections::VecDeque::new()),
            runner,
            models: RwLock::new(Vec::new()),
            healthy: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            jobs: AtomicU32::new(0),
            quotes: Mutex::new(HashMap::new()),
            fetches: Arc::new(Semaphore::new(4)),
            seen: Mutex::new(ReplayGuard::new(window + 60, 200_000)),
            taken: Mutex::new(ReplayGuard::new(window + 60, 200_000)),
            running: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            started: Timestamp::now(),
            recover: Mutex::new(HashSet::new()),
            answered: Mutex::new(HashSet::new()),
            metrics,
            ln,
            ln_node,
            zap,
            zap_waiters: Mutex::new(HashMap::new()),
            load_changed: tokio::sync::Notify::new(),
            last_ad: std::sync::atomic::AtomicU64::new(0),
            last_band: std::sync::atomic::AtomicU8::new(u8::MAX),
            ad_lock: tokio::sync::Mutex::new(()),
            cfg,
        });
        let w = Self { inner };
        w.probe_runner().await;
        Ok(w)
    }

    /// The worker's public key.
    pub fn public_key(&self) -> PublicKey {
        self.inner.cfg.keys.public_key()
    }

    async fn probe_runner(&self) {
        let i = &self.inner;
        let ok = match i.runner.health().await {
            Ok(()) => match i.runner.list_models().await {
                Ok(m) if !m.is_empty() => {
                    *i.models.write().unwrap_or_else(|e| e.into_inner()) = m;
                    true
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "runner model list failed");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "runner health probe failed");
                false
            }
        };
        if ok != i.healthy.swap(ok, Ordering::SeqCst) {
            tracing::info!(healthy = ok, "runner health changed");
        }
        i.metrics.set_runner_healthy(ok);
    }

    fn price_for(&self, model: &str) -> Price {
        let c = &self.inner.cfg;
        c.prices
            .iter()
            .find(|p| p.model == model)
            .cloned()
            .unwrap_or(Price {
                model: model.to_owned(),
                ..c.default_price.clone()
            })
    }

    /// The capability ad as it stands now.
    pub fn ad(&self, healthy: bool, lifetime: Duration) -> CapabilityAd {
        let i = &self.inner;
        let models = i.models.read().unwrap_or_else(|e| e.into_inner()).clone();
        CapabilityAd {
            instance: i.cfg.instance.clone(),
            name: i.cfg.name.clone(),
            about: format!("{} runner", i.runner.kind()),
            job_kinds: vec![kinds::JOB_REQUEST],
            prices: models.iter().map(|m| self.price_for(&m.id)).collect(),
            models,
            max_concurrent: i.cfg.max_concurrent,
            in_flight: i.in_flight.load(Ordering::SeqCst),
            queue_depth: 0,
            hardware: hardware::detect(),
            runner: i.runner.kind().to_owned(),
            healthy,
            payment: PaymentInfo {
                mode: Some(i.cfg.payment_mode),
                ln_node: i.ln_node.clone(),
                lightning_address: i
                    .zap
                    .as_ref()
                    .filter(|z| z.target.contains('@'))
                    .map(|z| z.target.clone()),
                lnurl: i
                    .zap
                    .as_ref()
                    .filter(|z| !z.target.contains('@'))
                    .map(|z| z.target.clone()),
            },
            relays: i.cfg.relays.clone(),
            version: VERSION.into(),
            encryption_supported: true,
            expiration: Timestamp::from_secs(
                Timestamp::now().as_secs() + lifetime.as_secs().max(1),
            ),
        }
    }

    /// Publish the ad, each one with a later `created_at` than the last: relays keep one
    /// addressable event per `d` tag and break same-second ties by the lowest id, so two ads in
    /// one second could leave the older state standing.
    async fn publish_ad(&self, healthy: bool, lifetime: Duration) {
        let i = &self.inner;
        let _order = i.ad_lock.lock().await;
        loop {
            let last = i.last_ad.load(Ordering::SeqCst);
            if Timestamp::now().as_secs() > last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ad = self.ad(healthy, lifetime);
        let band = load_band(ad.in_flight, ad.max_concurrent);
        match ad.to_event(&i.cfg.keys) {
            Ok(ev) => {
                i.last_ad.store(ev.created_at.as_secs(), Ordering::SeqCst);
                i.last_band.store(band, Ordering::SeqCst);
                self.publish(&ev).await
            }
            Err(e) => tracing::warn!(error = %e, "cannot build capability ad"),
        }
    }

    async fn publish(&self, ev: &Event) {
        match self
            .inner
            .client
            .send_event(ev)
            .save_into_database(false)
            .await
        {
            Ok(out) if out.success.is_empty() => {
                tracing::warn!(id = %ev.id, kind = ev.kind.as_u16(), failed = ?out.failed.values().collect::<Vec<_>>(), "no relay accepted event")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(id = %ev.id, kind = ev.kind.as_u16(), error = %e, "publish failed")
            }
        }
    }

    /// Probe the runner; re-publish the ad when its health changed or a heartbeat is due.
    async fn heartbeat(&self, due: bool) {
        let i = &self.inner;
        let was = i.healthy.load(Ordering::SeqCst);
        self.probe_runner().await;
        let healthy = i.healthy.load(Ordering::SeqCst) && i.accepting.load(Ordering::SeqCst);
        if !due && was == i.healthy.load(Ordering::SeqCst) {
            return;
        }
        self.publish_ad(healthy, i.cfg.heartbeat * 3).await;
        let relays = i.client.relays().await;
        i.metrics.set_relays(
            relays
                .values()
                .filter(|r| r.status() == RelayStatus::Connected)
                .count() as i64,
        );
    }

    /// Read our own recent feedback and results to find jobs a previous run left unanswered.
    async fn recover(&self) {
        let i = &self.inner;
        let since = Timestamp::from_secs(
            i.started
                .as_secs()
                .saturating_sub(i.cfg.request_max_age.as_secs()),
        );
        let filter = Filter::new()
            .author(self.public_key())
            .kinds([
                Kind::from_u16(kinds::JOB_FEEDBACK),
                Kind::from_u16(kinds::JOB_RESULT),
            ])
            .since(since);
        let events = match i
            .client
            .fetch_events(filter)
            .timeout(Duration::from_secs(5))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "recovery query failed; continuing without it");
                return;
            }
        };
        let (mut accepted, mut answered) = (HashSet::new(), HashSet::new());
        for ev in events.iter() {
            if ev.kind.as_u16() == kinds::JOB_RESULT {
                if let Ok(r) = JobResult::from_event(ev, None) {
                    answered.insert(r.request_id());
                }
            } else if let Ok(f) = JobFeedback::from_event(ev, None) {
                match f.status {
                    FeedbackStatus::Processing => {
                        accepted.insert(f.request_id);
                    }
                    FeedbackStatus::Error => {
                        answered.insert(f.request_id);
                    }
                    _ => {}
                }
            }
        }
        let pending: HashSet<EventId> = accepted.difference(&answered).copied().collect();
        if !pending.is_empty() {
            tracing::info!(
                jobs = pending.len(),
                "recovering jobs accepted before a restart"
            );
        }
        *i.recover.lock().unwrap_or_else(|e| e.into_inner()) = pending;
        *i.answered.lock().unwrap_or_else(|e| e.into_inner()) = answered;
    }

    /// Take jobs until `shutdown` resolves, then drain and withdraw the ad.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let i = self.inner.clone();
        self.recover().await;
        // Notifications first: events that arrive right after the REQ must not be missed.
        let mut notifications = i.client.notifications();
        let since = Timestamp::from_secs(
            i.started
                .as_secs()
                .saturating_sub(i.cfg.request_max_age.as_secs()),
        );
        i.client
            .subscribe(
                Filter::new()
                    .kind(Kind::from_u16(kinds::JOB_REQUEST))
                    .since(since),
            )
            .await?;
        // Cancellations: NIP-09 deletions, with or without a `k` tag (generic clients omit it);
        // only a running job's own customer can stop it (`on_cancel`).
        i.client
            .subscribe(
                Filter::new()
                    .kind(Kind::from_u16(kinds::DELETION))
                    .since(i.started),
            )
            .await?;
        // Zap receipts naming us (payments to our lightning address, NIP-57).
        if i.zap.is_some() {
            i.client
                .subscribe(
                    Filter::new()
                        .kind(Kind::ZapReceipt)
                        .pubkey(self.public_key())
                        .since(i.started),
                )
                .await?;
        }
        // Awards of our quotes (auctions, fedai-04).
        i.client
            .subscribe(
                Filter::new()
                    .kind(Kind::from_u16(kinds::AWARD))
                    .pubkey(self.public_key())
                    .since(since),
            )
            .await?;
        let hb = {
            let w = self.clone();
            tokio::spawn(async move {
                // The runner is probed often (a local call); the ad goes out on a health change
                // and once a heartbeat otherwise.
                let beat = w.inner.cfg.heartbeat;
                let probe = beat.min(Duration::from_secs(5));
                let mut tick = tokio::time::interval(probe);
                let mut last = None::<Instant>;
                loop {
                    tick.tick().await;
                    let due = last.is_none_or(|t| t.elapsed() + probe / 2 >= beat);
                    w.heartbeat(due).await;
                    if due {
                        last = Some(Instant::now());
                    }
                }
            })
        };
        // Load-driven refresh: the ad follows the load band (idle, busy, full) within
        // `ad_refresh` (a change during the pause leaves a stored permit, so the last change is
        // always published); within a band, the once-a-minute heartbeat carries exact counts.
        let refresh = (!i.cfg.ad_refresh.is_zero()).then(|| {
            let w = self.clone();
            tokio::spawn(async move {
                let i = &w.inner;
                loop {
                    i.load_changed.notified().await;
                    if !i.accepting.load(Ordering::SeqCst) {
                        continue;
                    }
                    let band = load_band(i.in_flight.load(Ordering::SeqCst), i.cfg.max_concurrent);
                    if band == i.last_band.load(Ordering::SeqCst) {
                        continue;
                    }
                    let healthy = i.healthy.load(Ordering::SeqCst);
                    w.publish_ad(healthy, i.cfg.heartbeat * 3).await;
                    tokio::time::sleep(i.cfg.ad_refresh).await;
                }
            })
        });
        tracing::info!(pubkey = %self.public_key().to_bech32().unwrap_or_default(), relays = i.cfg.relays.len(), runner = i.runner.kind(), "worker running");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                n = notifications.next() => match n {
                    Some(ClientNotification::Event { event, .. }) => self.on_event(*event),
                    Some(ClientNotification::Shutdown) | None => break,
                    Some(_) => {}
                },
                _ = &mut shutdown => break,
            }
        }
        tracing::info!("shutting down: no new jobs");
        i.accepting.store(false, Ordering::SeqCst);
        let _ = i.client.unsubscribe_all().await;
        let deadline = Instant::now() + i.cfg.drain_timeout;
        while i.jobs.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Jobs still running past the drain deadline are stopped and answered with `shutdown`.
        let left: Vec<_> = i
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, (_, tx)) in left {
            let _ = tx.send(Stop::Shutdown);
        }
        while i.jobs.load(Ordering::SeqCst) > 0
            && Instant::now() < deadline + Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hb.abort();
        if let Some(r) = refresh {
            r.abort();
        }
        // Withdraw: a final ad marked down that expires almost at once.
        self.publish_ad(false, Duration::from_secs(2)).await;
        i.client.shutdown().await;
        i.reply.shutdown().await;
        tracing::info!("worker stopped");
        Ok(())
    }

    fn on_event(&self, event: Event) {
        let i = &self.inner;
        // Each event is acted on once, whichever relays deliver it.
        if i.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check_and_insert(event.id, Timestamp::now())
            .is_err()
        {
            return;
        }
        match event.kind.as_u16() {
            kinds::JOB_REQUEST => {
                let w = self.clone();
                tokio::spawn(async move { w.on_request(event, false).await });
            }
            kinds::AWARD => {
                let w = self.clone();
                tokio::spawn(async move { w.on_award(event).await });
            }
            kinds::DELETION => self.on_cancel(&event),
            k if k == Kind::ZapReceipt.as_u16() => self.on_zap_receipt(event),
            _ => {}
        }
    }

    fn on_cancel(&self, event: &Event) {
        // Every deletion on the relays reaches us (generic clients send no `k`): look for one of
        // our running jobs first, and verify only those that name one.
        let names_ours = {
            let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
            event.tags.event_ids().any(|id| running.contains_key(&id))
        };
        if !names_ours || event.verify().is_err() {
            return;
        }
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        for id in event.tags.event_ids() {
            // Only the request's author may cancel it.
            if running
                .get(&id)
                .is_some_and(|(customer, _)| *customer == event.pubkey)
            {
                if let Some((_, tx)) = running.remove(&id) {
                    tracing::info!(request = %id, "job cancelled by customer");
                    let _ = tx.send(Stop::Cancelled);
                }
            }
        }
    }

    /// Hand a zap receipt to the job it names, if one waits for it (it checks the receipt).
    /// Only our LNURL service's receipts are passed on, so a flood of others cannot crowd a
    /// real one out of the job's queue.
    fn on_zap_receipt(&self, event: Event) {
        if self
            .inner
            .zap
            .as_ref()
            .is_none_or(|z| z.server != event.pubkey)
        {
            return;
        }
        let waiters = self
            .inner
            .zap_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for id in event.tags.event_ids() {
            if let Some(tx) = waiters.get(&id) {
                let _ = tx.try_send(event.clone());
            }
        }
    }

    async fn refuse(&self, request: &ParsedJobRequest, code: ErrorCode, reason: String) {
        tracing::info!(request = %request.id, code = %code, "job refused");
        self.inner.metrics.job(code.as_str());
        let mut fb = JobFeedback::error(request.id, request.customer, code, reason);
        fb.encrypted = request.encrypted;
        if let Ok(ev) = fb.to_event(&self.inner.cfg.keys) {
            self.publish_job(request, &ev).await;
        }
    }

    /// Turn down a request before taking it. A request that names us gets an `error` with the
    /// reason; an open request is declined in silence — N workers must not answer one request
    /// with N refusals (fedai-01, "Open requests").
    async fn decline(
        &self,
        request: &ParsedJobRequest,
        directed: bool,
        code: ErrorCode,
        reason: String,
    ) {
        if directed {
            return self.refuse(request, code, reason).await;
        }
        tracing::debug!(request = %request.id, code = %code, "open request declined");
        self.inner.metrics.job("declined");
    }

    /// Turn down a request because every runner slot is taken.
    async fn decline_full(&self, request: &ParsedJobRequest, directed: bool) {
        let reason = format!("all {} slots are busy", self.inner.cfg.max_concurrent);
        self.decline(request, directed, ErrorCode::Capacity, reason)
            .await
    }

    /// Publish a job's event to our relays and, in the background, to the relays its customer
    /// named (`relays` tag): a slow or silent relay of the customer's choosing never holds up
    /// the job (nor its runner slot).
    async fn publish_job(&self, request: &ParsedJobRequest, ev: &Event) {
        self.publish(ev).await;
        if request.request.relays.is_empty() {
            return;
        }
        let (w, wanted, ev) = (self.clone(), request.request.relays.clone(), ev.clone());
        tokio::spawn(async move {
            let extra = w.reply_relays(&wanted).await;
            if extra.is_empty() {
                return;
            }
            if let Err(e) = w
                .inner
                .reply
                .send_event(&ev)
                .to(extra)
                .ok_timeout(Duration::from_secs(3))
                .save_into_database(false)
                .await
            {
                tracing::debug!(id = %ev.id, error = %e, "reply relays did not take the event");
            }
        });
    }

    /// The customer's reply relays that are not ours, checked (ws/wss; every address the host
    /// resolves to public, unless allowed) and connected; at most four per request and
    /// `max_reply_relays` in all, the least recently added dropped first.
    async fn reply_relays(&self, wanted: &[String]) -> Vec<RelayUrl> {
        let i = &self.inner;
        let mut out = Vec::new();
        for url in wanted.iter().take(4) {
            let Ok(parsed) = RelayUrl::parse(url) else {
                continue;
            };
            if i.cfg
                .relays
                .iter()
                .any(|r| RelayUrl::parse(r).is_ok_and(|r| r == parsed))
            {
                continue;
            }
            if let Err(e) = fedai_lightning::netguard::check_resolved(
                parsed.as_str(),
                &["wss", "ws"],
                i.cfg.allow_private_addresses,
            )
            .await
            {
                tracing::debug!(relay = %parsed, reason = %e, "reply relay refused");
                continue;
            }
            let known = i.reply.relays().await;
            if !known.contains_key(&parsed) {
                // Make room: the oldest reply relay goes (it is re-added when asked again).
                let oldest = {
                    let mut order = i.reply_order.lock().unwrap_or_else(|e| e.into_inner());
                    order.push_back(parsed.clone());
                    if order.len() > i.cfg.max_reply_relays.max(1) {
                        order.pop_front()
                    } else {
                        None
                    }
                };
                if let Some(old) = oldest {
                    let _ = i.reply.remove_relay(old.as_str()).await;
                }
                if i.reply.add_relay(parsed.as_str()).await.is_err() {
                    continue;
                }
                let _ = i
                    .reply
                    .try_connect_relay(parsed.as_str(), Duration::from_secs(3))
                    .await;
            }
            out.push(parsed);
        }
        out
    }

    /// This job's price on our ad: the runner's token count of the prompt (exact for
    /// llama.cpp), `max_tokens` out. Quotes and pay-before invoices use it.
    async fn job_price(&self, parsed: &ParsedJobRequest, req: &InferRequest) -> u64 {
        let input_tokens = match self.inner.runner.estimate(req).await {
            Ok(e) => e.input_tokens,
            Err(_) => (parsed.input_data.len() as u64).div_ceil(4),
        };
        self.price_for(&req.model)
            .cost_msat(input_tokens, req.max_tokens as u64)
    }

    /// Pay-before: a hold invoice whose preimage only we can derive (so a restarted worker can
    /// still settle), and/or our zap target, sent as `payment-required`; returns once our node
    /// holds the customer's HTLC (the money is locked, not taken: settled on delivery, cancelled
    /// on failure) or a valid zap receipt for the job arrives (final).
    async fn collect_payment(
        &self,
        parsed: &ParsedJobRequest,
        price: u64,
        cancel_rx: &mut oneshot::Receiver<Stop>,
    ) -> Result<Paid, Outcome> {
        let i = &self.inner;
        let mut offer = Offer {
            price,
            held: None,
            bolt11: None,
            zap: None,
            quote_id: None,
        };
        if let Some(ln) = &i.ln {
            let preimage = fedai_lightning::preimage_for(
                &i.cfg.keys.secret_key().to_secret_bytes(),
                &parsed.id.to_bytes(),
            );
            let hash = fedai_lightning::payment_hash(&preimage);
            let memo = fedai_lightning::job_memo(&parsed.id.to_hex());
            match ln
                .add_hold_invoice(hash, price, &memo, i.cfg.payment_timeout.as_secs())
                .await
            {
                Ok(inv) => {
                    offer.held = Some((hash, preimage));
                    offer.bolt11 = Some(inv.bolt11);
                }
                // Same request again (a restart): the invoice exists; its state decides below.
                Err(e) => match ln.invoice_state(hash).await {
                    Ok(InvoiceState::Accepted) => offer.held = Some((hash, preimage)),
                    _ => {
                        tracing::warn!(request = %parsed.id, error = %e, "cannot create the hold invoice")
                    }
                },
            }
        }
        // A zap, when our LNURL service takes this amount.
        if let Some(z) = i
            .zap
            .as_ref()
            .filter(|z| (z.params.min_msat..=z.params.max_msat).contains(&price))
        {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            i.zap_waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(parsed.id, tx.clone());
            // A request from before this process started may have been zapped before we
            // listened (our receipt subscription starts with the process): look it up.
            if parsed.created_at.as_secs() + 2 < i.started.as_secs() {
                let client = i.client.clone();
                let filter = Filter::new()
                    .kind(Kind::ZapReceipt)
                    .pubkey(self.public_key())
                    .event(parsed.id);
                tokio::spawn(async move {
                    if let Ok(evs) = client
                        .fetch_events(filter)
                        .timeout(Duration::from_secs(5))
                        .await
                    {
                        for ev in evs {
                            let _ = tx.try_send(ev);
                        }
                    }
                });
            }
            offer.zap = Some((z, rx));
        }
        let paid = self.await_payment(parsed, &mut offer, cancel_rx).await;
        if offer.zap.is_some() {
            let mut waiters = i.zap_waiters.lock().unwrap_or_else(|e| e.into_inner());
            waiters.remove(&parsed.id);
            if let Some(q) = offer.quote_id {
                waiters.remove(&q);
            }
        }
        let paid = paid?;
        // Paid by zap: a hold invoice offered alongside is cancelled, so nobody pays twice.
        if let (Paid::Zapped { .. }, Some((h, _)), Some(ln)) = (&paid, offer.held, &i.ln) {
            let _ = ln.cancel(h).await;
        }
        Ok(paid)
    }

    /// Send the offer as `payment-required` and wait for one of its ways to be taken.
    async fn await_payment(
        &self,
        parsed: &ParsedJobRequest,
        offer: &mut Offer<'_>,
        cancel_rx: &mut oneshot::Receiver<Stop>,
    ) -> Result<Paid, Outcome> {
        let i = &self.inner;
        let price = offer.price;
        let failed = |m: String| Outcome::Failed(ErrorCode::PaymentFailed, m);
        let held = offer.held;
        let cancel_hold = || async {
            if let (Some((h, _)), Some(ln)) = (held, &i.ln) {
                let _ = ln.cancel(h).await;
            }
        };
        let zap_target = offer.zap.as_ref().map(|(z, _)| *z);
        if held.is_none() && zap_target.is_none() {
            return Err(failed(
                "this worker cannot take a payment for this job now".into(),
            ));
        }
        if offer.bolt11.is_some() || zap_target.is_some() {
            let mut fb = JobFeedback::payment_required(
                parsed.id,
                parsed.customer,
                Amount {
                    msat: price,
                    bolt11: offer.bolt11.take(),
                },
            );
            fb.zap = zap_target.map(|z| z.target.clone());
            fb.encrypted = parsed.encrypted;
            match fb.to_event(&i.cfg.keys) {
                Ok(ev) => {
                    // A zap of this feedback (what NIP-90 clients zap) pays the job too.
                    offer.quote_id = Some(ev.id);
                    if offer.zap.is_some() {
                        let mut waiters = i.zap_waiters.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(tx) = waiters.get(&parsed.id).cloned() {
                            waiters.insert(ev.id, tx);
                        }
                    }
                    self.publish_job(parsed, &ev).await
                }
                Err(e) => return Err(failed(format!("cannot build the quote: {e}"))),
            }
            tracing::info!(request = %parsed.id, price_msat = price, zap = zap_target.is_some(), "waiting for payment");
        }
        let deadline = Instant::now() + i.cfg.payment_timeout;
        let mut watch_hold = true;
        loop {
            if let (Some((hash, preimage)), Some(ln)) = (held.filter(|_| watch_hold), &i.ln) {
                match ln.invoice_state(hash).await {
                    Ok(InvoiceState::Accepted) => {
                        return Ok(Paid::Held {
                            amount_msat: price,
                            preimage,
                            hash,
                        })
                    }
                    Ok(InvoiceState::Settled) => {
                        return Err(failed("this job's invoice was already settled".into()))
                    }
                    Ok(InvoiceState::Canceled) if zap_target.is_none() => {
                        return Err(failed("the invoice was cancelled".into()))
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                cancel_hold().await;
                return Err(failed(format!(
                    "not paid within {}s",
                    i.cfg.payment_timeout.as_secs()
                )));
            }
            let next_zap = async {
                match offer.zap.as_mut() {
                    Some((z, rx)) => rx.recv().await.map(|r| (*z, r)),
                    None => std::future::pending().await,
                }
            };
            // Our node pushes the hold invoice's state changes (no polling); with no invoice to
            // watch, only a zap, a cancellation or the deadline can end the wait.
            let left = deadline.saturating_duration_since(Instant::now());
            let invoice_moved = async {
                match (held.filter(|_| watch_hold), &i.ln) {
                    (Some((hash, _)), Some(ln)) => match ln.wait_past_open(hash, left).await {
                        Ok(Some(InvoiceState::Canceled)) if zap_target.is_some() => {
                            // Only a zap can pay now; stop watching the invoice.
                            false
                        }
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(request = %parsed.id, error = %e, "invoice state unavailable; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            true
                        }
                    },
                    _ => {
                        tokio::time::sleep(left).await;
                        true
                    }
                }
            };
            tokio::select! {
                keep = invoice_moved => watch_hold = keep,
                Some((z, receipt)) = next_zap => {
                    if let Some(paid) = self.check_zap(parsed, price, z, &receipt, offer.quote_id).await {
                        return Ok(paid);
                    }
                }
                Ok(stop) = &mut *cancel_rx => {
                    cancel_hold().await;
                    return Err(stop.outcome());
                }
            }
        }
    }

    /// A zap receipt for this job: valid per NIP-57 Appendix F and our own checks, and — when
    /// the invoice is our own node's — settled on our node.
    async fn check_zap(
        &self,
        parsed: &ParsedJobRequest,
        price: u64,
        z: &ZapTarget,
        receipt: &Event,
        quote_id: Option<EventId>,
    ) -> Option<Paid> {
        let i = &self.inner;
        let expect = fedai_lightning::zap::Expect {
            server: z.server,
            worker: self.public_key(),
            request_id: parsed.id,
            quote_id,
            min_amount_msat: price,
            currency: i.cfg.ln_network.clone(),
        };
        let zap = match fedai_lightning::zap::verify_receipt(receipt, &expect) {
            Ok(zap) => zap,
            Err(e) => {
                tracing::warn!(request = %parsed.id, receipt = %receipt.id, error = %e, "zap receipt refused");
                return None;
            }
        };
        if let (Some(ln), Some(node)) = (&i.ln, &i.ln_node) {
            if zap.payee_node.eq_ignore_ascii_case(node)
                && !matches!(
                    ln.invoice_state(zap.payment_hash).await,
                    Ok(InvoiceState::Settled)
                )
            {
                tracing::warn!(request = %parsed.id, receipt = %receipt.id, "zap receipt for an invoice our node has not been paid");
                return None;
            }
        }
        tracing::info!(request = %parsed.id, amount_msat = zap.amount_msat, "paid by zap");
        // What was zapped (at least the quote), as the metering record will say.
        Some(Paid::Zapped {
            amount_msat: zap.amount_msat,
            hash: zap.payment_hash,
        })
    }

    /// An award of one of our quotes: check it against the request and our own quote on the
    /// relays (we keep no state), then run the request as if it were directed to us.
    async fn on_award(&self, event: Event) {
        let i = &self.inner;
        let Ok(a) = Award::from_event(&event) else {
            return;
        };
        let me = self.public_key();
        if a.award.worker != me || a.award.expiration.is_some_and(|e| e <= Timestamp::now()) {
            return;
        }
        let filter = Filter::new().ids([a.award.request_id, a.award.quote_id]);
        let events = match i
            .client
            .fetch_events(filter)
            .timeout(Duration::from_secs(5))
            .await
        {
            Ok(evs) => evs,
            Err(e) => {
                tracing::warn!(award = %a.id, error = %e, "cannot fetch the awarded request");
                return;
            }
        };
        let request = events
            .iter()
            .find(|e| e.id == a.award.request_id && e.pubkey == a.customer)
            .cloned();
        // The award must name a quote we really made, for this request and this amount.
        let quote_ok = events
            .iter()
            .find(|e| e.id == a.award.quote_id && e.pubkey == me)
            .and_then(|e| JobFeedback::from_event(e, Some(&i.cfg.keys)).ok())
            .is_some_and(|q| {
                q.request_id == a.award.request_id
                    && q.status == FeedbackStatus::PaymentRequired
                    && q.amount.is_some_and(|x| x.msat == a.award.amount_msat)
            });
        match request {
            Some(req) if quote_ok => {
                tracing::info!(request = %req.id, award = %a.id, "quote awarded");
                self.on_request(req, true).await;
            }
            Some(req) => {
                let fb = JobFeedback::error(
                    req.id,
                    a.customer,
                    ErrorCode::InvalidRequest,
                    "the award does not match a quote of this worker",
                );
                if let Ok(ev) = fb.to_event(&i.cfg.keys) {
                    self.publish(&ev).await;
                }
            }
            None => tracing::info!(award = %a.id, "awarded request not found"),
        }
    }

    async fn on_request(&self, event: Event, awarded: bool) {
        let i = &self.inner;
        let me = self.public_key();
        let named = awarded || event.tags.public_keys().any(|p| p == me);
        let parsed = match JobRequest::from_event(&event, Some(&i.cfg.keys)) {
            Ok(p) => p,
            // Encrypted for another worker: not ours to read or answer.
            Err(ProtocolError::NotRecipient) => return,
            Err(e) => {
                if named && event.verify().is_ok() {
                    tracing::info!(request = %event.id, error = %e, "malformed request");
                    let fb = JobFeedback::error(
                        event.id,
                        event.pubkey,
                        ErrorCode::InvalidRequest,
                        e.to_string(),
                    );
                    if let Ok(ev) = fb.to_event(&i.cfg.keys) {
                        self.publish(&ev).await;
                    }
                }
                return;
            }
        };
        if parsed.request.provider.is_some_and(|p| p != me) {
            return; // directed to other workers
        }
        // A request that names us (or awards our quote) is answered even when refused; an open
        // one is declined in silence.
        let directed = named;
        // Stored requests from before this process started: only those we owe an answer.
        if parsed.created_at.as_secs() + 2 < i.started.as_secs() {
            let owed = i
                .recover
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&parsed.id)
                || (directed
                    && !i
                        .answered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&parsed.id));
            if !owed {
                return;
            }
        }
        match Freshness::for_requests(i.cfg.request_max_age.as_secs())
            .check(&event, Timestamp::now())
        {
            Ok(()) => {}
            Err(ProtocolError::TooOld { .. }) => return,
            Err(ProtocolError::Expired(_)) => {
                return self
                    .decline(
                        &parsed,
                        directed,
                        ErrorCode::Expired,
                        "the request expired before it could run".into(),
                    )
                    .await
            }
            Err(e) => {
                return self
                    .decline(&parsed, directed, ErrorCode::InvalidRequest, e.to_string())
                    .await
            }
        }
        if !i.accepting.load(Ordering::SeqCst) {
            return self
                .decline(
                    &parsed,
                    directed,
                    ErrorCode::Shutdown,
                    "the worker is shutting down".into(),
                )
                .await;
        }
        let models = i.models.read().unwrap_or_else(|e| e.into_inner()).clone();
        if !i.healthy.load(Ordering::SeqCst) || models.is_empty() {
            return self
                .decline(
                    &parsed,
                    directed,
                    ErrorCode::RunnerFailed,
                    "the inference runner is unavailable".into(),
                )
                .await;
        }
        let model = match &parsed.request.params.model {
            Some(m) if models.iter().any(|x| &x.id == m) => m.clone(),
            Some(m) => {
                let served: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
                return self
                    .decline(
                        &parsed,
                        directed,
                        ErrorCode::ModelUnavailable,
                        format!(
                            "model `{m}` is not served here (serving: {})",
                            served.join(", ")
                        ),
                    )
                    .await;
            }
            None => models[0].id.clone(),
        };
        if parsed.input_data.len() > i.cfg.max_prompt_bytes {
            return self
                .decline(
                    &parsed,
                    directed,
                    ErrorCode::PromptTooLarge,
                    format!(
                        "prompt is {} bytes; this worker accepts at most {}",
                        parsed.input_data.len(),
                        i.cfg.max_prompt_bytes
                    ),
                )
                .await;
        }
        let max_tokens = parsed
            .request
            .params
            .max_tokens
            .unwrap_or(i.cfg.default_max_tokens);
        if max_tokens > i.cfg.max_tokens {
            return self
                .decline(
                    &parsed,
                    directed,
                    ErrorCode::InvalidRequest,
                    format!(
                        "max_tokens {max_tokens} exceeds this worker's limit {}",
                        i.cfg.max_tokens
                    ),
                )
                .await;
        }
        // Inputs to fetch (`url`, `event`, `job`: NIP-90 references and job chaining) are
        // resolved before the job is priced or run.
        let input = if parsed.needs_inputs() {
            // Fetching is bounded in concurrency: requests cannot make us a fetching amplifier.
            let Ok(_fetching) = i.fetches.clone().try_acquire_owned() else {
                return self
                    .decline(
                        &parsed,
                        directed,
                        ErrorCode::Capacity,
                        "busy fetching other requests' inputs; try again".into(),
                    )
                    .await;
            };
            match crate::inputs::resolve(
                &i.client,
                &i.cfg.keys,
                &parsed.customer,
                &parsed.inputs,
                i.cfg.max_prompt_bytes,
                i.cfg.allow_private_addresses,
            )
            .await
            {
                Ok(text) => fedai_protocol::JobInput::Text(text),
                Err((code, reason)) => return self.decline(&parsed, directed, code, reason).await,
            }
        } else {
            parsed.request.input.clone()
        };
        let req = InferRequest {
            model: model.clone(),
            input,
            params: parsed.request.params.clone(),
            max_tokens,
        };
        let resumed = i
            .recover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&parsed.id);
        // A generic client's bid is the most it pays: a paid worker whose price is higher
        // declines (in silence when the request is open).
        if let (Some(bid), false) = (
            parsed.request.bid_msat,
            parsed.fedai || i.cfg.payment_mode == PaymentMode::Free,
        ) {
            let price = self.job_price(&parsed, &req).await;
            if price > bid {
                return self
                    .decline(
                        &parsed,
                        directed,
                        ErrorCode::InvalidRequest,
                        format!("this job costs {price} msat, over the bid of {bid} msat"),
                    )
                    .await;
            }
        }
        // A fed_AI auction (an open request with a bid, from fed_AI software): quote, and run
        // only when awarded (or when a previous run of this worker had already started it).
        // Generic clients send no award: their open requests are served below.
        if let (Some(bid), true, false) =
            (parsed.request.bid_msat, parsed.fedai, directed || resumed)
        {
            let price = self.job_price(&parsed, &req).await;
            if price > bid {
                tracing::info!(request = %parsed.id, "bid under our price: no quote");
                return;
            }
            let fb = JobFeedback::payment_required(
                parsed.id,
                parsed.customer,
                Amount {
                    msat: price,
                    bolt11: None,
                },
            );
            if let Ok(ev) = fb.to_event(&i.cfg.keys) {
                tracing::info!(request = %parsed.id, price_msat = price, "quoted");
                self.publish_job(&parsed, &ev).await;
            }
            return;
        }
        if i.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check_and_insert(parsed.id, Timestamp::now())
            .is_err()
        {
            return; // already running or answered by this process
        }
        // The job lives from here: the drain on shutdown waits for it, whatever path it takes.
        let _job = Counted::new(&i.jobs);
        let (cancel_tx, mut cancel_rx) = oneshot::channel();
        i.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(parsed.id, (parsed.customer, cancel_tx));
        let forget = || {
            i.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&parsed.id);
        };
        let started = Instant::now();
        // A worker paid only by zaps (no node of its own, so no escrow) takes the slot before
        // it asks: a zap is final, and a zapped job that then found no slot could not be
        // refunded.
        let mut early_permit = None;
        if i.cfg.payment_mode == PaymentMode::Before && i.ln.is_none() {
            match i.slots.clone().try_acquire_owned() {
                Ok(p) => early_permit = Some(p),
                Err(_) => {
                    forget();
                    return self.decline_full(&parsed, directed).await;
                }
            }
        }
        // Pay-before: the customer pays (its HTLC held by our node, or a zap) before the job
        // takes a slot, so unpaid requests cannot fill the runner; unpaid quotes are bounded
        // per customer and in all, so they cannot fill our node with hold invoices either.
        let paid = match i.cfg.payment_mode {
            PaymentMode::Before => {
                let Some(_quote) = self.quote_slot(parsed.customer) else {
                    forget();
                    return self
                        .decline(
                            &parsed,
                            directed,
                            ErrorCode::Capacity,
                            "too many unpaid quotes; try again later".into(),
                        )
                        .await;
                };
                let price = self.job_price(&parsed, &req).await;
                self.collect_payment(&parsed, price, &mut cancel_rx)
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        };
        // A slot for the runner. An unpaid job that finds none is declined at once; a paid one
        // waits for one (bounded), then is refunded (hold invoice) if none came.
        let mut stopped = None;
        let permit = match &paid {
            Err(_) => None,
            _ if early_permit.is_some() => early_permit,
            Ok(None) => i.slots.clone().try_acquire_owned().ok(),
            Ok(Some(_)) => tokio::select! {
                p = tokio::time::timeout(PAID_SLOT_WAIT.min(i.cfg.job_timeout), i.slots.clone().acquire_owned()) => p.ok().and_then(Result::ok),
                Ok(stop) = &mut cancel_rx => {
                    stopped = Some(stop);
                    None
                }
            },
        };
        if paid.as_ref().is_ok_and(Option::is_none) && permit.is_none() {
            forget();
            return self.decline_full(&parsed, directed).await;
        }
        let _running = permit.as_ref().map(|_| InFlight::new(self));
        if permit.is_some() {
            tracing::info!(request = %parsed.id, model = %model, encrypted = parsed.encrypted.is_some(), "job accepted");
        }
        let (outcome, paid) = match (paid, &permit) {
            (Err(failed), _) => (failed, None),
            (Ok(paid), None) => (
                match stopped {
                    Some(stop) => stop.outcome(),
                    None => Outcome::Failed(
                        ErrorCode::Capacity,
                        format!("all {} slots stayed busy", i.cfg.max_concurrent),
                    ),
                },
                paid,
            ),
            (Ok(paid), Some(_)) => {
                let mut processing =
                    JobFeedback::new(parsed.id, parsed.customer, FeedbackStatus::Processing);
                processing.encrypted = parsed.encrypted;
                if let Ok(ev) = processing.to_event(&i.cfg.keys) {
                    self.publish_job(&parsed, &ev).await;
                }
                let outcome = tokio::select! {
                    o = tokio::time::timeout(i.cfg.job_timeout, self.infer(&parsed, req)) => match o {
                        Ok(o) => o,
                        Err(_) => Outcome::Failed(ErrorCode::Timeout, format!("no result within {}s", i.cfg.job_timeout.as_secs())),
                    },
                    // A dropped sender is not a stop signal: only an explicit `Stop` ends the job early.
                    Ok(stop) = &mut cancel_rx => stop.outcome(),
                };
                (outcome, paid)
            }
        };
        i.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&parsed.id);
        // The slot guards the runner: free it as soon as the runner is done, before publishing
        // (in-flight still counts the job until its answer is out, for the drain on shutdown).
        drop(permit);
        match outcome {
            Outcome::Failed(code, mut reason) => {
                match (&paid, &i.ln) {
                    // Escrow: a failed job is never charged; the held HTLC goes back.
                    (Some(Paid::Held { hash, .. }), Some(ln)) => match ln.cancel(*hash).await {
                        Ok(()) => tracing::info!(request = %parsed.id, "payment refunded"),
                        Err(e) => {
                            tracing::warn!(request = %parsed.id, error = %e, "cannot cancel the hold invoice; it expires on its own")
                        }
                    },
                    // A zap is final: say so rather than let the customer wait for a refund.
                    (Some(Paid::Zapped { amount_msat, .. }), _) => {
                        tracing::warn!(request = %parsed.id, "a zapped job failed; zaps are not refunded");
                        reason.push_str(&format!(
                            " (the zap of {amount_msat} msat is final and not refunded)"
                        ));
                    }
                    _ => {}
                }
                self.refuse(&parsed, code, reason).await
            }
            Outcome::Done {
                output,
                usage,
                first_token,
                runner_time,
            } => {
                if let Some(ft) = first_token {
                    i.metrics.first_token(ft);
                }
                i.metrics.job_time(runner_time);
                let done = Delivery {
                    model,
                    output,
                    usage,
                    wall: started.elapsed(),
                };
                self.deliver(&event, &parsed, done, paid).await;
            }
        }
    }

    /// A place among the unpaid quotes: at most [`QUOTES_PER_CUSTOMER`] per customer and
    /// sixteen per slot (at least 64) in all; `None` when full. Released when dropped.
    fn quote_slot(&self, customer: PublicKey) -> Option<QuoteSlot> {
        let i = &self.inner;
        let mut q = i.quotes.lock().unwrap_or_else(|e| e.into_inner());
        let total: u32 = q.values().sum();
        let mine = q.get(&customer).copied().unwrap_or(0);
        if mine >= QUOTES_PER_CUSTOMER || total >= i.cfg.max_concurrent.saturating_mul(16).max(64) {
            return None;
        }
        *q.entry(customer).or_insert(0) += 1;
        Some(QuoteSlot {
            worker: self.clone(),
            customer,
        })
    }

    async fn infer(&self, parsed: &ParsedJobRequest, req: InferRequest) -> Outcome {
        let i = &self.inner;
        let t0 = Instant::now();
        // No token is this long: a runner that ignores `max_tokens` cannot grow our memory.
        let max_output = (req.max_tokens as usize).saturating_mul(MAX_BYTES_PER_TOKEN) + 4096;
        let mut stream = match i.runner.infer(req).await {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(runner_error_code(&e), e.to_string()),
        };
        let stream_partials = parsed.request.params.stream;
        let (mut output, mut pending, mut seq) = (String::new(), String::new(), 0u64);
        let mut last_flush = Instant::now();
        let mut first_token = None;
        let mut usage = None;
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(Piece::Text(t)) => {
                    first_token.get_or_insert_with(|| t0.elapsed());
                    if output.len() + t.len() > max_output {
                        return Outcome::Failed(
                            ErrorCode::RunnerFailed,
                            "the runner sent more text than max_tokens allows".into(),
                        );
                    }
                    output.push_str(&t);
                    if stream_partials {
                        pending.push_str(&t);
                        if last_flush.elapsed() >= PARTIAL_FLUSH
                            || pending.len() >= PARTIAL_MAX_BYTES
                        {
                            self.partial(parsed, seq, std::mem::take(&mut pending))
                                .await;
                            seq += 1;
                            last_flush = Instant::now();
                        }
                    }
                }
                Ok(Piece::Done {
                    input_tokens,
                    output_tokens,
                }) => {
                    usage = Some(Usage {
                        input_tokens,
                        output_tokens,
                    });
                    break;
                }
                Err(e) => return Outcome::Failed(runner_error_code(&e), e.to_string()),
            }
        }
        if stream_partials && !pending.is_empty() {
            self.partial(parsed, seq, pending).await;
        }
        match usage {
            Some(usage) => Outcome::Done {
                output,
                usage,
                first_token,
                runner_time: t0.elapsed(),
            },
            None => Outcome::Failed(
                ErrorCode::RunnerFailed,
                "the runner ended without reporting token usage".into(),
            ),
        }
    }

    async fn partial(&self, parsed: &ParsedJobRequest, seq: u64, chunk: String) {
        let mut fb = JobFeedback::partial(parsed.id, parsed.customer, seq, chunk);
        fb.encrypted = parsed.encrypted;
        // Streamed chunks go to our relays only: the result, on the reply relays too, has all.
        if let Ok(ev) = fb.to_event(&self.inner.cfg.keys) {
            self.publish(&ev).await;
        }
    }

    async fn deliver(
        &self,
        event: &Event,
        parsed: &ParsedJobRequest,
        done: Delivery,
        paid: Option<Paid>,
    ) {
        let Delivery {
            model,
            output,
            usage,
            wall,
        } = done;
        let i = &self.inner;
        let bytes_out = output.len() as u64;
        let mut payment_hash = None;
        let cost = self
            .price_for(&model)
            .cost_msat(usage.input_tokens, usage.output_tokens);
        let (price, bolt11) = match (&paid, &i.ln, i.cfg.payment_mode) {
            // Pay-before: claim the held payment, the quoted amount.
            (
                Some(Paid::Held {
                    amount_msat,
                    preimage,
                    hash,
                }),
                Some(ln),
                _,
            ) => {
                // The metering record names a payment only once it is really ours.
                match ln.settle(*preimage).await {
                    Ok(()) => payment_hash = Some(hex::encode(hash)),
                    Err(e) => {
                        tracing::error!(request = %parsed.id, error = %e, "cannot settle the hold invoice; the metering record names no payment")
                    }
                }
                (*amount_msat, None)
            }
            // Zapped: already ours.
            (Some(Paid::Zapped { amount_msat, hash }), _, _) => {
                payment_hash = Some(hex::encode(hash));
                (*amount_msat, None)
            }
            // Pay-after: an invoice for what the job cost, with the result.
            (None, Some(ln), PaymentMode::After) if cost > 0 => match ln
                .add_invoice(cost, &fedai_lightning::job_memo(&parsed.id.to_hex()), 3600)
                .await
            {
                Ok(inv) => {
                    payment_hash = Some(hex::encode(inv.payment_hash));
                    (cost, Some(inv.bolt11))
                }
                Err(e) => {
                    tracing::warn!(request = %parsed.id, error = %e, "cannot create the invoice");
                    (cost, None)
                }
            },
            _ => (cost, None),
        };
        let mut result = JobResult::for_request(event, parsed, output, model.clone(), usage);
        if price > 0 {
            result.amount = Some(Amount {
                msat: price,
                bolt11,
            });
        }
        let result_ev = match result.to_event(&i.cfg.keys) {
            Ok(ev) => ev,
            Err(e) => {
                return self
                    .refuse(
                        parsed,
                        ErrorCode::RunnerFailed,
                        format!("cannot build result: {e}"),
                    )
                    .await
            }
        };
        let record = MeteringRecord {
            request_id: parsed.id,
            result_id: result_ev.id,
            customer: parsed.customer,
            model,
            prompt_sha256: parsed.prompt_sha256(),
            usage,
            wall_ms: wall.as_millis() as u64,
            bytes_in: parsed.input_data.len() as u64,
            bytes_out,
            price_msat: price,
            payment_hash,
        };
        self.publish_job(parsed, &result_ev).await;
        match record.to_event(&i.cfg.keys) {
            Ok(ev) => self.publish_job(parsed, &ev).await,
            Err(e) => {
                tracing::warn!(request = %parsed.id, error = %e, "cannot build metering record")
            }
        }
        let mut success = JobFeedback::new(parsed.id, parsed.customer, FeedbackStatus::Success);
        success.encrypted = parsed.encrypted;
        if let Ok(ev) = success.to_event(&i.cfg.keys) {
            self.publish_job(parsed, &ev).await;
        }
        i.metrics.job("success");
        i.metrics.tokens(usage.input_tokens, usage.output_tokens);
        tracing::info!(request = %parsed.id, input_tokens = usage.input_tokens, output_tokens = usage.output_tokens, wall_ms = wall.as_millis() as u64, "job done");
    }
}
