//! # fedai-client
//!
//! The customer side of fed_AI, used by the `fedai` CLI (and later the gateway):
//! - [`FedaiClient::workers`]: live capability ads from every relay, expired ones dropped;
//! - [`FedaiClient::run`]: choose a worker with `fedai-scheduler` (or run an auction), submit,
//!   stream partial tokens in order, verify result and metering, and fail over to the next
//!   worker on error, timeout or an invalid result — one answer or one error, never two;
//! - [`FedaiClient::quotes`]: collect quotes without running;
//! - [`FedaiClient::submit`]: one attempt with a request the caller addressed itself.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fedai_client::ClientError> {
//! use fedai_client::{FedaiClient, JobUpdate, RunOptions};
//! use fedai_protocol::{JobRequest, Keys};
//! let client = FedaiClient::connect(&["ws://127.0.0.1:7777".into()], Keys::generate()).await?;
//! let mut req = JobRequest::chat("Say hello");
//! req.params.stream = true;
//! let done = client
//!     .run(req, &RunOptions::default(), |u| {
//!         if let JobUpdate::Partial(text) = u { print!("{text}") }
//!     })
//!     .await?;
//! println!("\n{}", done.output);
//! # Ok(()) }
//! ```

pub mod market;
pub mod transport;

pub use fedai_lightning;
pub use market::{Quote, RunOptions};

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::metering::ParsedMetering;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::ParsedJobResult;
use fedai_protocol::{
    kinds, CapabilityAd, Encryption, ErrorCode, FeedbackStatus, JobFeedback, JobRequest, JobResult,
    MeteringCheck, MeteringRecord, ParsedJobRequest,
};
use futures_util::StreamExt;
use nostr_sdk::prelude::{Client, ClientNotification};

pub use transport::nostr_client;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Relay connection or subscription failed.
    #[error("relay error: {0}")]
    Relay(String),
    /// Building or parsing a protocol message failed.
    #[error(transparent)]
    Protocol(#[from] fedai_protocol::ProtocolError),
    /// The worker refused or failed the job.
    #[error("worker error `{code}`: {reason}")]
    Job {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human reason.
        reason: String,
    },
    /// No result before the deadline.
    #[error("no result within {0:?}")]
    Timeout(Duration),
    /// No worker fits.
    #[error("no live worker serves this job")]
    NoWorker,
    /// The chosen worker answered with a result that fails verification.
    #[error("invalid result from the worker: {0}")]
    InvalidResult(String),
    /// Payment was asked and could not be made (no payer configured, an invoice that fails the
    /// checks, a quote over the cap, or a failed Lightning payment).
    #[error("payment: {0}")]
    Payment(String),
    /// The chosen worker went silent: no acknowledgement (`processing`, a quote) soon after the
    /// request, or no sign of progress for the stall window while the job ran — a dead or
    /// deaf worker, noticed in seconds rather than at the deadline.
    #[error("the worker went silent: {0}")]
    Silent(String),
    /// Every attempt failed; the last error.
    #[error("{attempts} attempt(s) failed; last: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
}

/// Partial chunks held for reordering at most this far ahead of the next one expected.
const MAX_EARLY_CHUNKS: u64 = 1024;

/// Times one job's subscription is re-opened after relays closed it.
const MAX_REOPENS: u32 = 32;

/// Exponential backoff: `first` doubled `round` times, at most `cap` (the one formula behind
/// every retry here and in the worker).
pub fn backoff(first: Duration, round: u32, cap: Duration) -> Duration {
    first.saturating_mul(1u32 << round.min(31)).min(cap)
}

/// How long [`FedaiClient::connect`] waits for a first relay.
const CONNECT_WAIT: Duration = Duration::from_millis(2500);

/// Progress of a job, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum JobUpdate {
    /// The request was published.
    Submitted(EventId),
    /// A worker started it.
    Processing(PublicKey),
    /// The next chunk of streamed output (delivered in `seq` order, without gaps).
    Partial(String),
    /// The worker asked for payment and the invoice passed the checks: paying this many msat.
    Paying(u64),
    /// The attempt with this worker failed and the job moves to another: discard the partial
    /// output shown so far.
    Failover {
        /// The worker that failed.
        worker: PublicKey,
        /// Why.
        error: String,
    },
}

/// A finished, verified job.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The request as parsed back.
    pub request: ParsedJobRequest,
    /// The result (verified; decrypted if it was encrypted).
    pub result: ParsedJobResult,
    /// Output text.
    pub output: String,
    /// The metering record and what its verification covered, if it arrived in time.
    pub metering: Option<(ParsedMetering, MeteringCheck)>,
    /// From publishing the request to the first streamed token (or to the result).
    pub first_token: Duration,
    /// From publishing the request to the verified result.
    pub total: Duration,
    /// What was paid for it, with the proof.
    pub payment: Option<PaymentProof>,
    /// Whether the text streamed through [`JobUpdate::Partial`] is the start of the verified
    /// output (trivially true when nothing was streamed). False when a worker restarted mid-job
    /// or misbehaved: the shown text is then not what was signed, and only `output` is.
    pub stream_matched: bool,
}

/// A payment made for a job: the preimage is the proof (its SHA-256 is the payment hash the
/// metering record carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentProof {
    /// Paid, msat.
    pub amount_msat: u64,
    /// The invoice.
    pub bolt11: String,
    /// Hex.
    pub payment_hash: String,
    /// Hex.
    pub preimage: String,
    /// The receipt event published (kind 7062).
    pub receipt: Option<EventId>,
}

/// How this customer pays, when a worker asks.
#[derive(Clone)]
pub struct PayContext {
    /// The customer's Lightning payer.
    pub payer: std::sync::Arc<dyn fedai_lightning::Payer>,
    /// The chain invoices must be on.
    pub currency: fedai_lightning::invoice::Currency,
    /// Never pay more per job, msat; [`DEFAULT_MAX_PAY_MSAT`] when unset — a payer always has
    /// a cap.
    pub max_msat: Option<u64>,
    /// Routing fee cap, msat.
    pub max_fee_msat: u64,
    /// Pay by zap (NIP-57) when a worker offers no invoice, only a zap target. A zap is final:
    /// unlike a hold invoice there is no escrow, so a failed job is not refunded.
    pub zaps: bool,
    /// Asked before paying more than `confirm_above_msat`, with the amount and the worker;
    /// `false` declines the payment. `None` pays without asking (within the caps).
    pub confirm: Option<Confirm>,
    /// The amount above which `confirm` is asked, msat.
    pub confirm_above_msat: u64,
    /// Let a worker's LNURL pay target be on loopback or a private network (tests, private
    /// markets); off, the zap path reaches public addresses only.
    pub allow_private_lnurl: bool,
}

impl PayContext {
    /// Pay with `payer` on `currency`, with the default caps: at most
    /// [`DEFAULT_MAX_PAY_MSAT`] a job, 10 sat of routing fees, zaps allowed, no confirmation,
    /// public LNURL services only.
    pub fn new(
        payer: std::sync::Arc<dyn fedai_lightning::Payer>,
        currency: fedai_lightning::invoice::Currency,
    ) -> Self {
        Self {
            payer,
            currency,
            max_msat: None,
            max_fee_msat: 10_000,
            zaps: true,
            confirm: None,
            confirm_above_msat: 0,
            allow_private_lnurl: false,
        }
    }
}

/// A person's approval of a payment: `(amount_msat, worker) -> pay?`.
pub type Confirm = std::sync::Arc<dyn Fn(u64, PublicKey) -> bool + Send + Sync>;

/// The cap on one job's payment when the customer set none, msat (100 sat).
pub const DEFAULT_MAX_PAY_MSAT: u64 = 100_000;

impl std::fmt::Debug for PayContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayContext")
            .field("currency", &self.currency)
            .field("max_msat", &self.max_msat)
            .field("max_fee_msat", &self.max_fee_msat)
            .field("zaps", &self.zaps)
            .field("confirm_above_msat", &self.confirm_above_msat)
            .finish_non_exhaustive()
    }
}

/// A payment started for the current request: running, then its outcome.
struct Pending {
    amount_msat: u64,
    /// The payment; its error is why it failed.
    task: Option<tokio::task::JoinHandle<Result<Paid, String>>>,
    done: Option<Result<Paid, String>>,
}

/// A completed Lightning payment, not yet checked against its invoice.
struct Paid {
    bolt11: String,
    hash: [u8; 32],
    preimage: [u8; 32],
    /// Paid by zap: the zap request the invoice commits to.
    zap_request: Option<String>,
}

impl Pending {
    fn start(
        amount_msat: u64,
        pay: impl std::future::Future<Output = Result<Paid, String>> + Send + 'static,
    ) -> Self {
        Self {
            amount_msat,
            task: Some(tokio::spawn(pay)),
            done: None,
        }
    }

    /// Resolves when a running payment ends (never, when none runs): `Err` when it failed.
    async fn ended(p: &mut Option<Pending>) -> Result<(), ClientError> {
        let Some(task) = p.as_mut().and_then(|p| p.task.as_mut()) else {
            return std::future::pending().await;
        };
        let r = task.await.unwrap_or_else(|e| Err(e.to_string()));
        let failed = r
            .as_ref()
            .err()
            .map(|why| ClientError::Payment(why.clone()));
        if let Some(p) = p.as_mut() {
            p.task = None;
            p.done = Some(r);
        }
        failed.map_or(Ok(()), Err)
    }
}

/// A published request being followed: its subscription and notification stream.
pub(crate) struct Tracker {
    notifications: std::pin::Pin<Box<dyn futures_util::Stream<Item = ClientNotification> + Send>>,
    event: Event,
    parsed: ParsedJobRequest,
    sub: nostr_sdk::prelude::SubscriptionId,
    /// What `sub` asks for: opened again on a relay that closes it.
    filter: Filter,
    /// Times a relay closed `sub` (the backoff of the next resubscription).
    reopened: u32,
    /// Set when the request is no longer followed: a late resubscription must not outlive it.
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Fail over on silence: the chosen worker must acknowledge within `.0` and show signs of
    /// life at least every `.1` while it works (None: wait for the deadline).
    pub(crate) liveness: Option<(Duration, Duration)>,
    sent_at: tokio::time::Instant,
    /// How to pay if asked, and what the worker's ad says of it.
    pub(crate) pay: Option<PayPlan>,
    pending: Option<Pending>,
}

/// How to pay one worker for one job: the customer's payer, and what the worker's ad promises.
#[derive(Debug, Clone)]
pub(crate) struct PayPlan {
    pub(crate) ctx: PayContext,
    /// This job's payment: quote → approved → paying → paid (the cap and the ad's bound, enforced).
    pub(crate) spend: fedai_lightning::payment::customer::Spend,
    /// The worker's advertised LN node: the payee to expect.
    pub(crate) payee: Option<String>,
    /// The ad's price for the job's model: what the signed usage may cost.
    pub(crate) ad_price: Option<fedai_protocol::Price>,
    /// The worker.
    pub(crate) worker: PublicKey,
}

/// A connection to fed_AI relays with the customer's keys.
pub struct FedaiClient {
    client: Client,
    keys: Keys,
    /// What this customer observed of each worker (the scheduler's input).
    stats: std::sync::Mutex<HashMap<PublicKey, fedai_scheduler::WorkerStats>>,
    /// The clock the statistics' cooldowns use.
    epoch: std::time::Instant,
    /// Ids of the requests published lately (bounded): the same request built twice in one
    /// second is one event, which relays take as a duplicate (or refuse once deleted).
    published: std::sync::Mutex<std::collections::VecDeque<EventId>>,
}

impl FedaiClient {
    /// Connect to `relays` (waits up to 5 s; unreachable relays are retried in the background).
    ///
    /// Fails within about three seconds, naming each relay and why, when none of them can be
    /// reached: a customer must not wait out a job timeout to learn the network is not there.
    /// Relays that are down while others answer are retried in the background.
    pub async fn connect(relays: &[String], keys: Keys) -> Result<Self, ClientError> {
        if relays.is_empty() {
            return Err(ClientError::Relay("no relay given".into()));
        }
        let client = transport::nostr_client();
        for r in relays {
            client
                .add_relay(r.as_str())
                .await
                .map_err(|e| ClientError::Relay(format!("{r}: {e}")))?;
        }
        client.connect().and_wait(CONNECT_WAIT).await;
        let statuses = client.relays().await;
        if !statuses
            .values()
            .any(|r| r.status() == nostr_sdk::prelude::RelayStatus::Connected)
        {
            let mut why = Vec::new();
            for url in statuses.keys() {
                why.push(format!(
                    "{url} ({})",
                    transport::unreachable_reason(url).await
                ));
            }
            client.shutdown().await;
            return Err(ClientError::Relay(format!(
                "cannot reach any relay: {}",
                why.join(", ")
            )));
        }
        Ok(Self {
            client,
            keys,
            stats: Default::default(),
            epoch: std::time::Instant::now(),
            published: Default::default(),
        })
    }

    /// The customer's public key.
    pub fn public_key(&self) -> PublicKey {
        self.keys.public_key()
    }

    /// Fetch events matching `filter` from all relays.
    pub async fn fetch(
        &self,
        filter: Filter,
        timeout: Duration,
    ) -> Result<Vec<Event>, ClientError> {
        let events = self
            .client
            .fetch_events(filter)
            .timeout(timeout)
            .await
            .map_err(|e| ClientError::Relay(e.to_string()))?;
        Ok(events.into_iter().collect())
    }

    /// Live fed_AI workers: the newest ad per (worker, instance), verified, not expired.
    pub async fn workers(&self) -> Result<Vec<ParsedCapabilityAd>, ClientError> {
        let filter = Filter::new()
            .kind(Kind::from_u16(kinds::CAPABILITY_AD))
            .custom_tag(
                SingleLetterTag::from_char('t').expect("t is a tag letter"),
                kinds::FEDAI_TOPIC,
            );
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

    /// Publish `request` (encrypted to its provider when `private`), stream updates to
    /// `on_update`, and return the verified result. Errors from the worker end the job.
    pub async fn submit(
        &self,
        request: JobRequest,
        private: bool,
        timeout: Duration,
        mut on_update: impl FnMut(JobUpdate),
    ) -> Result<JobOutcome, ClientError> {
        let mut t = self.publish_request(&request, private).await?;
        on_update(JobUpdate::Submitted(t.event.id));
        let r = self
            .follow(&mut t, request.provider, timeout, &mut on_update)
            .await;
        self.close(t).await;
        r
    }

    /// Subscribe to a request's answers, then publish it (in that order: early answers must
    /// not be missed).
    pub(crate) async fn publish_request(
        &self,
        request: &JobRequest,
        private: bool,
    ) -> Result<Tracker, ClientError> {
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
            .kinds([kinds::JOB_FEEDBACK, kinds::JOB_RESULT, kinds::METERING].map(Kind::from_u16))
            .event(event.id);
        let sub = self
            .client
            .subscribe(filter.clone())
            .await
            .map_err(|e| ClientError::Relay(e.to_string()))?
            .value;
        self.send(&event).await?;
        Ok(Tracker {
            notifications,
            event,
            parsed,
            sub,
            filter,
            reopened: 0,
            done: Default::default(),
            liveness: None,
            sent_at: tokio::time::Instant::now(),
            pay: None,
            pending: None,
        })
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

    /// Publish an event; at least one relay must accept it.
    pub(crate) async fn send(&self, event: &Event) -> Result<(), ClientError> {
        let sent = self
            .client
            .send_event(event)
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
    fn reopen_if_closed(
        &self,
        t: &mut Tracker,
        relay: nostr_sdk::prelude::RelayUrl,
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
        if subscription_id.as_ref() != &t.sub || t.reopened >= MAX_REOPENS {
            return;
        }
        tracing::warn!(%relay, reason = %message, "a relay closed the job's subscription; subscribing again");
        let wait = backoff(
            Duration::from_millis(100),
            t.reopened,
            Duration::from_millis(6_400),
        );
        t.reopened += 1;
        let (client, id, filter) = (self.client.clone(), t.sub.clone(), t.filter.clone());
        let done = t.done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if done.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let target = nostr_sdk::prelude::ReqTarget::single(relay, [filter]);
            if let Err(e) = client.subscribe(target).with_id(id).await {
                tracing::warn!(error = %e, "cannot subscribe to the job's answers again");
            }
        });
    }

    pub(crate) async fn close(&self, t: Tracker) {
        t.done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.client.unsubscribe(&t.sub).await;
    }

    /// Cancel a request (NIP-09 deletion): its worker stops it and answers `cancelled`.
    pub async fn cancel(&self, request_id: EventId) -> Result<(), ClientError> {
        let ev = fedai_protocol::cancellation(request_id, &self.keys)?;
        self.send(&ev).await
    }

    /// Follow a published request until `worker`'s (any worker's, when `None`) verified result,
    /// its error, or the deadline.
    pub(crate) async fn follow(
        &self,
        t: &mut Tracker,
        worker_filter: Option<PublicKey>,
        timeout: Duration,
        on_update: &mut impl FnMut(JobUpdate),
    ) -> Result<JobOutcome, ClientError> {
        let request_id = t.event.id;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut next_seq = 0u64;
        let mut early: BTreeMap<u64, String> = BTreeMap::new();
        let mut result: Option<ParsedJobResult> = None;
        let mut meterings: Vec<ParsedMetering> = Vec::new();
        let mut processing_seen = false;
        // On an open job, the first worker to stream is the only one whose chunks are shown,
        // and what was shown must be the start of the verified result.
        let mut streamer: Option<PublicKey> = worker_filter;
        let mut streamed = String::new();
        let mut stream_from_other = false;
        let mut metering_deadline = None;
        let mut first_token = None;
        // A payment that failed: reported unless the worker's own error arrives within a grace
        // period (a failed job cancels its hold invoice, and the worker's reason is the news).
        let mut payment_failed: Option<ClientError> = None;
        let mut deadline = deadline;
        // When the chosen worker was last heard from (at first: when it was asked — the
        // request's publication, or an auction's award).
        let mut heard = tokio::time::Instant::now();
        let mut acked = false;
        let outcome = loop {
            // A silent worker: no acknowledgement soon after the request, or no sign of life
            // for the stall window — also while our payment runs (a hold invoice's payment
            // completes only when the job is done; the worker keeps saying `processing`).
            let silent_at = match (t.liveness, worker_filter, &result) {
                (Some((ack, stall)), Some(_), None) => {
                    Some(heard + if acked { stall } else { ack })
                }
                _ => None,
            };
            let until = metering_deadline
                .unwrap_or(deadline)
                .min(deadline)
                .min(silent_at.unwrap_or(deadline));
            let n = tokio::select! {
                n = tokio::time::timeout_at(until, t.notifications.next()) => n,
                r = Pending::ended(&mut t.pending) => {
                    // The worker may have waited for this payment (a zap's receipt comes
                    // after it): give it a full window from now.
                    heard = tokio::time::Instant::now();
                    if let Err(e) = r {
                        payment_failed = Some(e);
                        deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                    continue;
                }
            };
            let n = match n {
                Ok(Some(n)) => n,
                Ok(None) => break Err(ClientError::Relay("client shut down".into())),
                Err(_) => match (result.take(), payment_failed.take()) {
                    (Some(r), _) => break Ok(r),
                    (None, Some(e)) => break Err(e),
                    (None, None) if silent_at.is_some_and(|s| s <= tokio::time::Instant::now()) => {
                        break Err(ClientError::Silent(match acked {
                            false => format!(
                                "no acknowledgement within {:?}",
                                t.liveness.map(|l| l.0).unwrap_or_default()
                            ),
                            true => format!(
                                "no sign of progress for {:?}",
                                t.liveness.map(|l| l.1).unwrap_or_default()
                            ),
                        }))
                    }
                    (None, None) => break Err(ClientError::Timeout(timeout)),
                },
            };
            let ev = match n {
                ClientNotification::Event { event, .. } => event,
                ClientNotification::Message { relay_url, message } => {
                    self.reopen_if_closed(t, relay_url, &message);
                    continue;
                }
                ClientNotification::Shutdown => continue,
            };
            // Only the worker we chose may answer a directed or awarded job.
            if worker_filter.is_some_and(|w| w != ev.pubkey) {
                continue;
            }
            if worker_filter.is_some() && ev.tags.event_ids().any(|id| id == request_id) {
                heard = tokio::time::Instant::now();
                acked = true;
            }
            let chosen = worker_filter.is_some();
            match ev.kind.as_u16() {
                kinds::JOB_FEEDBACK => {
                    let Ok(fb) = JobFeedback::from_event(&ev, Some(&self.keys)) else {
                        continue;
                    };
                    if fb.request_id != request_id {
                        continue;
                    }
                    match fb.status {
                        FeedbackStatus::Processing if !processing_seen => {
                            processing_seen = true;
                            on_update(JobUpdate::Processing(ev.pubkey));
                        }
                        FeedbackStatus::Partial => {
                            if *streamer.get_or_insert(ev.pubkey) != ev.pubkey {
                                continue; // another worker's chunks on an open job
                            }
                            first_token.get_or_insert_with(|| t.sent_at.elapsed());
                            // A bounded reorder buffer: a worker cannot grow it without limit.
                            if let Some(seq) = fb
                                .seq
                                .filter(|s| *s >= next_seq && *s < next_seq + MAX_EARLY_CHUNKS)
                            {
                                early.insert(seq, fb.content);
                                while let Some(chunk) = early.remove(&next_seq) {
                                    streamed.push_str(&chunk);
                                    on_update(JobUpdate::Partial(chunk));
                                    next_seq += 1;
                                }
                            }
                        }
                        FeedbackStatus::PaymentRequired if chosen && result.is_none() => {
                            let Some(amount) = fb.amount else { continue };
                            if t.pending.is_some() {
                                continue; // pay once per request
                            }
                            // An invoice (escrow) first; a zap only where it is all that is
                            // offered; a bare quote (an auction's) asks nothing yet.
                            let started = match (amount.bolt11, fb.zap) {
                                (Some(bolt11), _) => {
                                    start_payment(t, request_id, amount.msat, bolt11)
                                }
                                (None, Some(target)) => {
                                    self.start_zap(t, ev.pubkey, amount.msat, target).await
                                }
                                (None, None) => continue,
                            };
                            match started {
                                Ok(()) => on_update(JobUpdate::Paying(amount.msat)),
                                Err(e) => break Err(e),
                            }
                        }
                        FeedbackStatus::Error if result.is_none() => {
                            break Err(ClientError::Job {
                                code: fb.code.unwrap_or(ErrorCode::Other("unknown".into())),
                                reason: fb.info.unwrap_or_default(),
                            });
                        }
                        _ => {}
                    }
                }
                kinds::JOB_RESULT if result.is_none() => {
                    let r = match JobResult::from_event(&ev, Some(&self.keys)) {
                        Ok(r) => r,
                        // From the worker we chose, an unreadable result is a failure to act
                        // on now; from anyone else on an open job it is noise.
                        Err(e) if chosen && ev.tags.event_ids().any(|id| id == request_id) => {
                            break Err(ClientError::InvalidResult(e.to_string()))
                        }
                        Err(_) => {
                            tracing::warn!(id = %ev.id, "ignoring an invalid result");
                            continue;
                        }
                    };
                    if r.request_id() != request_id {
                        continue;
                    }
                    // A worker chosen from fed_AI ads answers as fed_AI (marker, usage, model):
                    // a bare NIP-90 result from it would carry no usage to check.
                    if chosen && !kinds::has_fedai_marker(&ev.tags) {
                        break Err(ClientError::InvalidResult(
                            "a result without fed_AI's usage and model".into(),
                        ));
                    }
                    // On an open job, a result from another worker than the one that streamed
                    // is taken, and the stream is then not what was signed.
                    stream_from_other = streamer.is_some_and(|s| s != ev.pubkey);
                    first_token.get_or_insert_with(|| t.sent_at.elapsed());
                    // Give the metering record a moment to arrive (it is published right after).
                    metering_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    let have_metering = meterings.iter().any(|m| m.record.result_id == r.id);
                    result = Some(r);
                    if have_metering {
                        break Ok(result.take().expect("just set"));
                    }
                }
                kinds::METERING => {
                    let Ok(m) = MeteringRecord::from_event(&ev) else {
                        continue;
                    };
                    let done = result.as_ref().is_some_and(|r| r.id == m.record.result_id);
                    meterings.push(m);
                    if done {
                        break Ok(result.take().expect("checked"));
                    }
                }
                _ => {}
            }
        };
        let result = match outcome {
            Ok(r) => r,
            Err(e) => {
                // The worker failed after we paid: its node cancels the hold invoice and our
                // payment fails back; nothing to wait for here.
                t.pending = None;
                return Err(e);
            }
        };
        // What was streamed must be the start of the verified result (chunks may have been
        // missed, never altered); otherwise the shown text is not what was signed.
        let stream_matched = !stream_from_other && result.result.output.starts_with(&streamed);
        let metering = match meterings
            .into_iter()
            .find(|m| m.record.result_id == result.id)
        {
            Some(m) => {
                let check = m
                    .verify(&result, &t.parsed)
                    .map_err(|e| ClientError::InvalidResult(format!("metering: {e}")))?;
                Some((m, check))
            }
            None => None,
        };
        // The worker's own counts, checked against what the customer can see: a prompt of N
        // bytes cannot take more than N tokens (plus a chat template's), and a charge must be
        // the ad's price applied to the signed usage.
        let usage = result.result.usage;
        let in_bound = t.parsed.input_data.len() as u64 + market::TEMPLATE_TOKENS;
        if usage.input_tokens > in_bound {
            t.pending = None;
            return Err(ClientError::InvalidResult(format!(
                "metering claims {} input tokens for a prompt of at most {in_bound}",
                usage.input_tokens
            )));
        }
        if let (Some(price), Some(a)) = (
            t.pay.as_ref().and_then(|p| p.ad_price.as_ref()),
            result.result.amount.as_ref(),
        ) {
            let fair = price.cost_msat(usage.input_tokens, usage.output_tokens);
            if a.bolt11.is_some() {
                fedai_lightning::payment::customer::fair_charge(a.msat, fair)
                    .map_err(|e| ClientError::InvalidResult(e.to_string()))?;
            }
        }
        // Pay-after: the invoice came with the result.
        if t.pending.is_none() && t.pay.is_some() {
            if let Some(a) = result.result.amount.clone() {
                if let Some(bolt11) = a.bolt11 {
                    start_payment(t, request_id, a.msat, bolt11)?;
                    on_update(JobUpdate::Paying(a.msat));
                }
            }
        }
        // A payment is only ever started under a plan (`pay_context`).
        let payment = match (t.pending.take(), t.pay.as_mut()) {
            (Some(p), Some(plan)) => Some(self.finish_payment(p, &mut plan.spend, &result).await?),
            _ => None,
        };
        let total = t.sent_at.elapsed();
        let output = result.result.output.clone();
        Ok(JobOutcome {
            request: t.parsed.clone(),
            result,
            output,
            metering,
            first_token: first_token.unwrap_or(total),
            total,
            payment,
            stream_matched,
        })
    }

    /// Pay by zap (NIP-57): the worker's pay terms, a zap request for this job signed by us,
    /// the callback's invoice checked to commit to it, then the payment — all in the background,
    /// as the worker waits for the zap receipt before it starts.
    async fn start_zap(
        &self,
        t: &mut Tracker,
        worker: PublicKey,
        amount_msat: u64,
        target: String,
    ) -> Result<(), ClientError> {
        let ctx = pay_context(t, amount_msat)?;
        if !ctx.zaps {
            return Err(ClientError::Payment(
                "the worker takes only zaps (no escrow), and paying by zap is off".into(),
            ));
        }
        let relays: Vec<String> = self
            .client
            .relays()
            .await
            .keys()
            .map(|u| u.to_string())
            .collect();
        let (keys, request_id) = (self.keys.clone(), t.event.id);
        let allow_private = ctx.allow_private_lnurl;
        let zap = async move {
            use fedai_lightning::{invoice, lnurl, zap};
            let pay = |e: fedai_lightning::LnError| e.to_string();
            let ln = lnurl::LnurlClient::build(allow_private).map_err(pay)?;
            let params = ln.pay_params(&target).await.map_err(pay)?;
            if params.nostr_pubkey.is_none() {
                return Err(format!(
                    "the worker's pay target {target} does not take zaps"
                ));
            }
            let request = zap::request(
                &keys,
                &zap::ZapFor {
                    worker,
                    request_id,
                    amount_msat,
                    relays,
                    lnurl: lnurl::encode(&params.endpoint),
                },
            )
            .map_err(pay)?
            .as_json();
            let bolt11 = ln
                .invoice(&params, amount_msat, Some(&request))
                .await
                .map_err(pay)?;
            let checked = invoice::check(
                &bolt11,
                &invoice::Expected {
                    amount_msat,
                    // The LNURL service's node, which the worker's ad does not name.
                    payee: None,
                    currency: ctx.currency.clone(),
                    commits_to: invoice::Commitment::DescriptionHash(zap::description_hash(
                        &request,
                    )),
                    now_unix: Timestamp::now().as_secs(),
                },
            )
            .map_err(pay)?;
            let preimage = ctx
                .payer
                .pay(&bolt11, ctx.max_fee_msat, 120)
                .await
                .map_err(pay)?;
            Ok(Paid {
                bolt11,
                hash: checked.payment_hash,
                preimage,
                zap_request: Some(request),
            })
        };
        t.pending = Some(Pending::start(amount_msat, zap));
        Ok(())
    }

    /// Wait for a started payment (a hold invoice completes once the worker settles, which it
    /// does before publishing the result), check the preimage, publish the receipt.
    async fn finish_payment(
        &self,
        p: Pending,
        spend: &mut fedai_lightning::payment::customer::Spend,
        result: &ParsedJobResult,
    ) -> Result<PaymentProof, ClientError> {
        let amount_msat = p.amount_msat;
        let mut slot = Some(p);
        if slot.as_ref().is_some_and(|p| p.done.is_none()) {
            let wait = Pending::ended(&mut slot);
            if tokio::time::timeout(Duration::from_secs(60), wait)
                .await
                .is_err()
            {
                return Err(ClientError::Payment(format!(
                    "the payment of {amount_msat} msat did not complete"
                )));
            }
        }
        let paid = slot
            .and_then(|p| p.done)
            .unwrap_or_else(|| Err("the payment did not complete".into()))
            .map_err(ClientError::Payment)?;
        // The preimage must open the invoice: only then is it proof of payment.
        let refused =
            |r: fedai_lightning::payment::customer::Refusal| ClientError::Payment(r.to_string());
        // A zap's invoice was fetched and checked in the background.
        if let fedai_lightning::payment::customer::State::Approved { .. } = spend.state() {
            spend.invoice(amount_msat, paid.hash).map_err(refused)?;
        }
        spend.paid(Ok(paid.preimage)).map_err(refused)?;
        let receipt = fedai_protocol::PaymentReceipt {
            request_id: result.request_id(),
            result_id: Some(result.id),
            worker: result.worker,
            amount_msat,
            bolt11: paid.bolt11.clone(),
            payment_hash: hex::encode(paid.hash),
            preimage: hex::encode(paid.preimage),
            zap_request: paid.zap_request,
        };
        let receipt_id = match receipt.to_event(&self.keys) {
            Ok(ev) => self.send(&ev).await.ok().map(|()| ev.id),
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the payment receipt");
                None
            }
        };
        Ok(PaymentProof {
            amount_msat,
            bolt11: paid.bolt11,
            payment_hash: receipt.payment_hash,
            preimage: receipt.preimage,
            receipt: receipt_id,
        })
    }

    /// Close connections.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
    }
}

/// How to pay `amount_msat` for this request, if we pay it at all: a payer exists, and the
/// job's [`Spend`](fedai_lightning::payment::customer::Spend) approves the quote — within the
/// customer's cap (always one), within what the worker's own ad promises for the job, asked of
/// the person above the confirmation threshold, and only once per job.
fn pay_context(t: &mut Tracker, amount_msat: u64) -> Result<PayContext, ClientError> {
    use fedai_lightning::payment::customer::Next;
    let Some(plan) = &mut t.pay else {
        return Err(ClientError::Payment(format!(
            "the worker asks {amount_msat} msat and no payer is configured"
        )));
    };
    let refused =
        |r: fedai_lightning::payment::customer::Refusal| ClientError::Payment(r.to_string());
    if let Next::Confirm(amount) = plan.spend.quote(amount_msat).map_err(refused)? {
        let yes = plan
            .ctx
            .confirm
            .as_ref()
            .is_some_and(|confirm| confirm(amount, plan.worker));
        plan.spend.confirm(yes).map_err(refused)?;
    }
    Ok(plan.ctx.clone())
}

/// Check an invoice against the request and the worker's ad, then start paying it.
fn start_payment(
    t: &mut Tracker,
    request_id: EventId,
    amount_msat: u64,
    bolt11: String,
) -> Result<(), ClientError> {
    let ctx = pay_context(t, amount_msat)?;
    let plan = t.pay.as_mut().expect("pay_context found a plan");
    let payee = plan.payee.as_deref();
    let now = Timestamp::now().as_secs();
    let checked = fedai_lightning::invoice::check(
        &bolt11,
        &fedai_lightning::invoice::Expected {
            amount_msat,
            payee,
            currency: ctx.currency.clone(),
            commits_to: fedai_lightning::invoice::Commitment::Job(&request_id.to_hex()),
            now_unix: now,
        },
    )
    .map_err(|e| ClientError::Payment(e.to_string()))?;
    plan.spend
        .invoice(amount_msat, checked.payment_hash)
        .map_err(|e| ClientError::Payment(e.to_string()))?;
    let (payer, fee, hash) = (ctx.payer.clone(), ctx.max_fee_msat, checked.payment_hash);
    let pay = async move {
        let preimage = payer
            .pay(&bolt11, fee, 120)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Paid {
            bolt11,
            hash,
            preimage,
            zap_request: None,
        })
    };
    t.pending = Some(Pending::start(amount_msat, pay));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_cap() {
        let (first, cap) = (Duration::from_millis(250), Duration::from_secs(30));
        let waits: Vec<u64> = (0..10)
            .map(|r| backoff(first, r, cap).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(backoff(first, u32::MAX, cap), cap, "no overflow");
    }
}
