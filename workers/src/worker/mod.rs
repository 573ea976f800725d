//! The worker: subscribes to job requests on every relay, runs them on the runner, publishes
//! feedback, results and metering, and keeps its capability ad fresh.
//!
//! Stateless by design: nothing is kept on disk. After a restart the worker reads its own
//! feedback and results from the relays (within the request window) to find the jobs it had
//! accepted and not answered, and answers them.
//!
//! Code map: [`Worker`] and its [`Builder`] (here); `run` (subscriptions, heartbeat, drain);
//! `events` (what arrives); `intake` (a request to a [`crate::admit`] decision, a taken job
//! to its end); `pay` (pay-before, driving `fedai_lightning::payment::worker::Escrow`); `job`
//! (the runner, the answer, metering, the charge); `publish` (our relays, reply relays,
//! refusals); `ads` (the capability ad); `recover` (after a restart).

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

mod ads;
mod events;
mod intake;
mod job;
mod live;
mod pay;
mod publish;
mod recover;
mod run;

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
    /// At least one relay has our job subscription open (`live`).
    hearing: AtomicBool,
    /// What the last ad said of our health.
    advertised_healthy: AtomicBool,
    /// Subscriptions relays closed, and where to resume them (`live`).
    live: live::Live,
    slots: Arc<Semaphore>,
    /// Jobs on the runner (the ad's load).
    in_flight: AtomicU32,
    /// Jobs taken and not yet answered, waiting for payment included (the drain waits for them).
    jobs: AtomicU32,
    /// Directed jobs waiting in the queue for a slot, per customer (one customer may hold
    /// half the queue).
    queued_by: Mutex<HashMap<PublicKey, u32>>,
    /// Requests per customer (`None`: no limit): checked before inputs are fetched or a price
    /// counted, the expensive part of intake.
    per_customer: Option<fedai_limit::KeyedLimiter<PublicKey>>,
    /// Runner time per job, a moving average (ms): the queue's wait estimate.
    avg_job_ms: std::sync::atomic::AtomicU64,
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
    /// Serving embeddings: each model's measured vector length (0: it did not embed), and when
    /// it was measured. Held while measuring, so two probes never measure at once.
    dimensions: tokio::sync::Mutex<HashMap<String, (u32, Instant)>>,
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

/// A customer's place in a per-customer count (unpaid quotes, queued jobs), given back when
/// dropped, on every path.
struct Place {
    worker: Worker,
    customer: PublicKey,
    of: fn(&Inner) -> &Mutex<HashMap<PublicKey, u32>>,
}

impl Place {
    /// What `customer` holds in the count, and what all customers hold.
    fn held(
        w: &Worker,
        customer: &PublicKey,
        of: fn(&Inner) -> &Mutex<HashMap<PublicKey, u32>>,
    ) -> (u32, u32) {
        let q = of(&w.inner).lock().unwrap_or_else(|e| e.into_inner());
        (q.get(customer).copied().unwrap_or(0), q.values().sum())
    }

    /// A place when `customer` holds fewer than `mine` and all customers fewer than `all`.
    fn take(
        w: &Worker,
        customer: PublicKey,
        of: fn(&Inner) -> &Mutex<HashMap<PublicKey, u32>>,
        mine: u32,
        all: u32,
    ) -> Option<Self> {
        let mut q = of(&w.inner).lock().unwrap_or_else(|e| e.into_inner());
        let total: u32 = q.values().sum();
        if q.get(&customer).copied().unwrap_or(0) >= mine || total >= all {
            return None;
        }
        *q.entry(customer).or_insert(0) += 1;
        Some(Self {
            worker: w.clone(),
            customer,
            of,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut q = (self.of)(&self.worker.inner)
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

/// Ticks every KEEPALIVE, the first one KEEPALIVE from now: when a job that runs, waits for a
/// slot or waits for payment says `processing` again.
fn keepalive_ticks() -> tokio::time::Interval {
    let every = fedai_transport::KEEPALIVE;
    tokio::time::interval_at(tokio::time::Instant::now() + every, every)
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

/// Sets up a [`Worker`] (as ldk-node's builder: configuration first, then one `connect`).
pub struct Builder {
    cfg: WorkerConfig,
    runner: Option<Arc<dyn Runner>>,
    metrics: Option<Arc<Metrics>>,
}

impl Builder {
    /// Run jobs on this runner instead of the one the configuration names.
    pub fn runner(mut self, runner: Arc<dyn Runner>) -> Self {
        self.runner = Some(runner);
        self
    }

    /// Report to these metrics (served on `/metrics` by the binary).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Connect to the relays, the runner and the Lightning node; probe the runner.
    pub async fn connect(self) -> anyhow::Result<Worker> {
        let cfg = self.cfg;
        let runner = match self.runner {
            Some(r) => r,
            None => {
                let mut policy = SandboxPolicy::default();
                policy
                    .url_prefixes
                    .extend(cfg.allow_runner_urls.iter().cloned());
                let opts = HttpOptions {
                    idle_timeout: cfg.job_timeout.min(Duration::from_secs(120)),
                    ..HttpOptions::default()
                };
                fedai_runners::build(&cfg.runner, &cfg.runner_url, &policy, opts)?
            }
        };
        Worker::start(cfg, runner, self.metrics.unwrap_or_default()).await
    }
}

impl Worker {
    /// Connect to the relays and the runner `cfg` names. Does not take jobs until
    /// [`Worker::run`]. The same as `Worker::builder(cfg).metrics(metrics).connect()`.
    pub async fn connect(cfg: WorkerConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Self::builder(cfg).metrics(metrics).connect().await
    }

    /// A worker to set up: the configuration, and optionally a runner built by the caller
    /// (tests, embedding) and the metrics it reports to.
    pub fn builder(cfg: WorkerConfig) -> Builder {
        Builder {
            cfg,
            runner: None,
            metrics: None,
        }
    }

    async fn start(
        cfg: WorkerConfig,
        runner: Arc<dyn Runner>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let client = fedai_transport::nostr_client();
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
            reply: fedai_transport::nostr_client(),
            reply_order: Mutex::new(std::collections::VecDeque::new()),
            runner,
            models: RwLock::new(Vec::new()),
            healthy: AtomicBool::new(false),
            hearing: AtomicBool::new(true),
            advertised_healthy: AtomicBool::new(false),
            live: live::Live::default(),
            in_flight: AtomicU32::new(0),
            jobs: AtomicU32::new(0),
            queued_by: Mutex::new(HashMap::new()),
            per_customer: (cfg.requests_per_minute_per_customer > 0)
                .then(|| fedai_limit::KeyedLimiter::new(cfg.requests_per_minute_per_customer)),
            avg_job_ms: std::sync::atomic::AtomicU64::new(0),
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
            dimensions: tokio::sync::Mutex::new(HashMap::new()),
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
}
