//! Choosing workers and recovering from their failures: scheduled directed jobs with
//! failover, and auctions (quotes → award).
//!
//! The choice is [`fedai_scheduler::select`] over the live ads and this customer's own
//! observations of each worker. A failed attempt (error feedback, timeout, invalid result)
//! puts the worker in cooldown, cancels the request (NIP-09) and moves on to the next choice,
//! up to `max_attempts`; every attempt is a new request id, and only the current attempt's
//! worker is listened to, so the caller receives one answer or one error — never two.

use std::time::Duration;

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{Award, ErrorCode, FeedbackStatus, JobFeedback, JobRequest};
use fedai_scheduler::{
    select_into, Candidate, Decision, Failure, JobSpec, Policy, Rejection, Rng, WorkerStats,
};
use futures_util::StreamExt;
use nostr_sdk::prelude::ClientNotification;

use crate::job::{prompt_token_bound, JobTracker};
use crate::pay::{Budget, Payments};
use crate::{ClientError, FedaiClient, JobOutcome, JobUpdate};

pub use fedai_transport::KEEPALIVE;

/// Workers tried for one job at most (failed attempts plus capacity refusals).
const MAX_TRIES: usize = 16;

/// How [`FedaiClient::run`] chooses and retries.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Scheduler policy (strategy weights, top-N, trust floor, cooldown).
    pub policy: Policy,
    /// Never pay more than this per job, msat (also sent as the request's `bid`).
    pub max_price_msat: Option<u64>,
    /// Encrypt each attempt to its worker (NIP-44). Not possible in an auction.
    pub private: bool,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Failed attempts before giving up (1 = no failover). Capacity refusals move the job on
    /// without counting.
    pub max_attempts: u32,
    /// Only this worker (no failover to others).
    pub worker: Option<PublicKey>,
    /// Only these workers (empty: any).
    pub only: Vec<PublicKey>,
    /// Never these workers.
    pub ignore: Vec<PublicKey>,
    /// Run an auction: publish an open request with a `bid`, collect quotes this long, award.
    pub auction: Option<Duration>,
    /// Pay workers that ask (pay-before hold invoices, pay-after invoices); without it a job
    /// that asks for payment ends with [`ClientError::Payment`].
    #[cfg(feature = "lightning")]
    pub pay: Option<crate::PayContext>,
    /// Fail over when the chosen worker has not acknowledged the request (`processing`, a
    /// quote) within this long (it may first fetch `url` inputs, up to 10 s): a dead worker
    /// costs seconds, not the whole `timeout`. Directed jobs only (not auctions).
    pub ack_timeout: Duration,
    /// …or, once it has, when it shows no sign of progress (workers repeat `processing` every
    /// [`KEEPALIVE`] while a job runs) for this long.
    pub stall_timeout: Duration,
    /// Spot-check this fraction of jobs (0 to 1; 0: never): every job then runs with a fixed
    /// seed (its own, when it has one) and encrypted to its worker; after the answer, a job
    /// picked at this rate goes to up to two other workers serving the model, and a worker
    /// whose answer disagrees with two that agree is caught ([`crate::SpotVerdict`]). Each
    /// check costs one or two more jobs, paid like any (their sum in
    /// [`crate::SpotCheck::cost_msat`]). Not with auctions, a pinned worker, or no model.
    pub spot_check: f64,
    /// Publish this customer's attestations (fedai-06): `delivered` for each verified job,
    /// `failed` for an attempt that failed (not for a capacity refusal), `mismatch` for a
    /// worker a spot check caught. Public: they say whom this key used.
    pub attest: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            max_price_msat: None,
            private: false,
            timeout: Duration::from_secs(120),
            max_attempts: 3,
            worker: None,
            only: Vec::new(),
            ignore: Vec::new(),
            auction: None,
            #[cfg(feature = "lightning")]
            pay: None,
            ack_timeout: Duration::from_secs(15),
            stall_timeout: KEEPALIVE * 3,
            spot_check: 0.0,
            attest: false,
        }
    }
}

/// A worker's `payment-required` answer to an open request with a bid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The quoting worker.
    pub worker: PublicKey,
    /// The feedback event carrying the quote (named in the award).
    pub feedback_id: EventId,
    /// Price, msat.
    pub amount_msat: u64,
    /// Invoice, when the worker asks for payment.
    pub bolt11: Option<String>,
}

/// One candidate worker in an explanation.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The worker.
    pub worker: PublicKey,
    /// Its instance (`d` tag).
    pub instance: String,
    /// Its score, when it passed the filters.
    pub scored: Option<fedai_scheduler::Scored>,
    /// Why it was filtered out, otherwise.
    pub rejected: Option<Rejection>,
    /// Whether it was picked.
    pub chosen: bool,
}

/// Token estimate for prices and context checks: prompt bytes / 4, output = `max_tokens`.
fn job_spec(request: &JobRequest, opts: &RunOptions, default_max_tokens: u32) -> JobSpec {
    JobSpec {
        input_tokens: (request.input.data().len() as u64).div_ceil(4),
        output_tokens: match request.kind() {
            // An embedding writes nothing.
            fedai_protocol::kinds::EMBED_REQUEST => 0,
            _ => request.params.max_tokens.unwrap_or(default_max_tokens) as u64,
        },
        max_price_msat: opts.max_price_msat.or(request.bid_msat),
        needs_encryption: opts.private,
    }
}

impl FedaiClient {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The scheduler's view of `ads` for `request`, and its decision (`explain`: with every
    /// rejection and its reason, which a large market pays for in memory).
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        ads: &[ParsedCapabilityAd],
        request: &JobRequest,
        opts: &RunOptions,
        tried: &[PublicKey],
        quotes: Option<&[Quote]>,
        rng: &mut Rng,
        explain: bool,
    ) -> Decision {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let spec = job_spec(request, opts, 256);
        let model = request.params.model.as_deref();
        // Optional features the request needs (`json_schema`, …): only workers that list them.
        let features = request.params.features();
        // And the job kind: an embedding goes only to workers that list 5060.
        let kind = request.kind();
        let candidates: Vec<Candidate> = ads
            .iter()
            .map(|a| {
                // No model asked: the worker's first model.
                let m = model.or(a.ad.models.first().map(|m| m.id.as_str()));
                let info = m.and_then(|m| a.ad.models.iter().find(|x| x.id == m));
                let quote = quotes.map(|q| q.iter().find(|q| q.worker == a.worker));
                Candidate {
                    price: info.and_then(|i| a.ad.price_for(&i.id)),
                    quote_msat: quote.flatten().map(|q| q.amount_msat),
                    context_length: info.map_or(0, |i| i.context_length),
                    max_concurrent: a.ad.max_concurrent,
                    in_flight: a.ad.in_flight,
                    healthy: a.ad.healthy,
                    encryption: a.ad.encryption_supported,
                    excluded: tried.contains(&a.worker)
                        || opts.worker.is_some_and(|w| w != a.worker)
                        || !(opts.only.is_empty() || opts.only.contains(&a.worker))
                        || opts.ignore.contains(&a.worker)
                        || !a.ad.supports(&features)
                        || !a.ad.takes_kind(kind)
                        || !embeds(info, &request.input)
                        || quote.is_some_and(|q| q.is_none()),
                    stats: stats.get(&a.worker),
                    speed_hint_tps: None,
                }
            })
            .collect();
        let mut d = Decision {
            explain,
            ..Decision::default()
        };
        select_into(&mut d, &candidates, &spec, &opts.policy, self.now_ms(), rng);
        d
    }

    /// The worker the scheduler picks for `request` among `ads` (no job is sent).
    pub fn choose<'a>(
        &self,
        ads: &'a [ParsedCapabilityAd],
        request: &JobRequest,
        opts: &RunOptions,
    ) -> Option<&'a ParsedCapabilityAd> {
        let d = self.decide(
            ads,
            request,
            opts,
            &[],
            None,
            &mut Rng::from_entropy(),
            false,
        );
        d.chosen_index().map(|i| &ads[i])
    }

    /// Why each live worker would or would not be chosen for `request` (`fedai infer --explain`).
    pub fn explain(
        &self,
        ads: &[ParsedCapabilityAd],
        request: &JobRequest,
        opts: &RunOptions,
    ) -> Vec<Explained> {
        let d = self.decide(
            ads,
            request,
            opts,
            &[],
            None,
            &mut Rng::from_entropy(),
            true,
        );
        let mut out: Vec<Explained> = ads
            .iter()
            .map(|a| Explained {
                worker: a.worker,
                instance: a.ad.instance.clone(),
                scored: None,
                rejected: None,
                chosen: false,
            })
            .collect();
        for s in &d.ranked {
            out[s.index].scored = Some(*s);
        }
        for (i, r) in &d.rejected {
            out[*i].rejected = Some(*r);
        }
        if let Some(i) = d.chosen_index() {
            out[i].chosen = true;
        }
        out.sort_by(|a, b| {
            let key = |e: &Explained| e.scored.map_or(f64::INFINITY, |s| s.score);
            key(a).total_cmp(&key(b))
        });
        out
    }

    /// Re-run `request` (as sent, seed included) on up to two other workers serving its model
    /// and compare their answers with `job`'s ([`fedai_scheduler::spot::verdict`]); the odd one
    /// out, if any, is recorded as a [`Failure::Mismatch`].
    async fn spot_check(
        &self,
        ads: &[ParsedCapabilityAd],
        request: &JobRequest,
        job: &JobOutcome,
        opts: &RunOptions,
    ) -> crate::SpotCheck {
        let mut answers = vec![(
            job.result.worker,
            comparable(&job.output, &request.params),
            job.request.id,
        )];
        let mut cost_msat = 0u64;
        let verdict = loop {
            let mut ignore = opts.ignore.clone();
            ignore.extend(answers.iter().map(|(w, _, _)| *w));
            let referee = RunOptions {
                worker: None,
                ignore,
                spot_check: 0.0,
                max_attempts: 2,
                ..opts.clone()
            };
            let mut req = request.clone();
            req.provider = None;
            req.relays.clear();
            // Boxed: `run_on` calling itself.
            let run = Box::pin(self.run_on(ads.to_vec(), req, &referee, |_| {}));
            match run.await {
                Ok(o) => {
                    cost_msat += o.payment.as_ref().map_or(0, |p| p.amount_msat);
                    answers.push((
                        o.result.worker,
                        comparable(&o.output, &request.params),
                        o.request.id,
                    ));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no referee for a spot check");
                    break if answers.len() == 1 {
                        crate::SpotVerdict::NoReferee
                    } else {
                        crate::SpotVerdict::Undecided
                    };
                }
            }
            let texts: Vec<&str> = answers.iter().map(|(_, o, _)| o.as_str()).collect();
            match fedai_scheduler::spot::verdict(&texts) {
                fedai_scheduler::spot::Verdict::Agree => break crate::SpotVerdict::Agree,
                fedai_scheduler::spot::Verdict::OddOneOut(i) => {
                    let (caught, request_id) = (answers[i].0, answers[i].2);
                    tracing::warn!(worker = %caught, "spot check: its answer disagrees with two that agree");
                    self.record(caught, Err(Failure::Mismatch), opts);
                    if opts.attest {
                        let a = fedai_protocol::Attestation {
                            worker: caught,
                            verdict: fedai_protocol::AttestationVerdict::Mismatch,
                            request_id,
                            result_id: None,
                            metering_id: None,
                        };
                        let _ = self.attest(&a).await;
                    }
                    break crate::SpotVerdict::Caught(caught);
                }
                fedai_scheduler::spot::Verdict::Undecided if answers.len() < 3 => continue,
                fedai_scheduler::spot::Verdict::Undecided => break crate::SpotVerdict::Undecided,
            }
        };
        crate::SpotCheck {
            workers: answers.into_iter().map(|(w, _, _)| w).collect(),
            verdict,
            cost_msat,
        }
    }

    fn record(&self, worker: PublicKey, outcome: Result<&JobOutcome, Failure>, opts: &RunOptions) {
        let now = self.now_ms();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let s = stats.entry(worker).or_default();
        match outcome {
            Ok(o) => {
                let first = o.first_token.as_secs_f64() * 1000.0;
                let total = o.total.as_secs_f64() * 1000.0;
                s.record_success(first, o.result.result.usage.output_tokens, total - first);
            }
            Err(f) => s.record_failure(f, now, &opts.policy.cooldown),
        }
    }

    /// A snapshot of this customer's observations of `worker`.
    pub fn worker_stats(&self, worker: &PublicKey) -> Option<WorkerStats> {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(worker)
            .cloned()
    }

    /// Run `request` on the best live worker with failover (or by auction, per `opts`);
    /// streams updates to `on_update` and returns one verified result or one error.
    pub async fn run(
        &self,
        request: JobRequest,
        opts: &RunOptions,
        on_update: impl FnMut(JobUpdate),
    ) -> Result<JobOutcome, ClientError> {
        let ads = self.workers().await?;
        self.run_on(ads, request, opts, on_update).await
    }

    /// [`run`](Self::run) over ads the caller has just fetched ([`workers`](Self::workers)):
    /// a caller that looked at them first (which models are live, whether any worker fits)
    /// saves a round trip to the relays.
    pub async fn run_on(
        &self,
        mut ads: Vec<ParsedCapabilityAd>,
        request: JobRequest,
        opts: &RunOptions,
        mut on_update: impl FnMut(JobUpdate),
    ) -> Result<JobOutcome, ClientError> {
        if opts.auction.is_some() {
            return self.run_auction(&ads, request, opts, &mut on_update).await;
        }
        let mut rng = Rng::from_entropy();
        // Spot checks (not of a worker the customer pinned, and only with a model named: a
        // referee must run the same one). Every job then carries a seed and is encrypted to
        // its worker, checked or not, so a worker cannot tell a checked job (or its referee
        // request) from another, nor copy an earlier public answer; which jobs are checked is
        // decided after the answer.
        // Not of embeddings yet: runners' vectors differ in their last bits, and comparing them
        // needs a similarity threshold, not the text equality spot checks use.
        let checking = opts.spot_check > 0.0
            && opts.worker.is_none()
            && request.params.model.is_some()
            && request.kind() != fedai_protocol::kinds::EMBED_REQUEST;
        let mut request = request;
        let private_opts;
        let opts = if checking {
            if request.params.seed.is_none() {
                request.params.seed = Some(rng.next_u64() >> 1);
            }
            private_opts = RunOptions {
                private: true,
                ..opts.clone()
            };
            &private_opts
        } else {
            opts
        };
        let mut tries = Tries::default();
        // One spending cap for the whole job, whatever its attempts (see `Budget`).
        let budget = Budget::new();
        // When every worker turned the job away as busy, try them again after a backoff with
        // jitter (load comes in bursts), within the attempt's deadline.
        let start = tokio::time::Instant::now();
        let busy_until = start + opts.timeout.min(BUSY_RETRY_BUDGET);
        // No ad at all (a relay slow to answer under load, a worker between heartbeats): look
        // again for a few seconds before saying no worker serves the job.
        let unseen_until = start + opts.timeout.min(UNSEEN_RETRY_BUDGET);
        let mut busy_rounds = 0u32;
        while tries.more(opts) {
            let attempt = tries.tried.len();
            let d = self.decide(&ads, &request, opts, &tries.tried, None, &mut rng, false);
            let Some(i) = d.chosen_index() else {
                let until = match (tries.only_busy(), ads.is_empty() && tries.tried.is_empty()) {
                    (true, _) if opts.worker.is_none() => busy_until,
                    (_, true) => unseen_until,
                    _ => break,
                };
                let wait = busy_backoff(busy_rounds, &mut rng);
                if tokio::time::Instant::now() + wait > until {
                    break;
                }
                tracing::debug!(?wait, "every worker is busy; trying again");
                tokio::time::sleep(wait).await;
                busy_rounds += 1;
                tries.tried.clear();
                ads = self.workers().await?;
                continue;
            };
            let worker = ads[i].worker;
            let mut req = request.clone();
            req.provider = Some(worker);
            if req.bid_msat.is_none() {
                req.bid_msat = opts.max_price_msat;
            }
            // Post where the worker reads, too, and ask it to answer there and here.
            let reached = self.reach(&ads[i]).await;
            if req.relays.is_empty() && !reached.urls.is_empty() {
                req.relays = self
                    .job_relays(&reached.urls)
                    .iter()
                    .map(|u| u.to_string())
                    .collect();
            }
            tracing::debug!(%worker, attempt, "attempt");
            let mut sub = self
                .publish_request(&req, opts.private, &reached.urls)
                .await?;
            let mut pay = Payments::for_worker(opts, &ads[i], &request, &budget);
            let dimensions = ad_model(&ads[i], &request).map(|m| m.dimensions);
            let mut job = JobTracker::new(
                sub.parsed.clone(),
                self.keys().clone(),
                Some(worker),
                opts.timeout,
                std::time::Instant::now(),
            )
            .with_liveness(opts.ack_timeout, opts.stall_timeout)
            .with_dimensions(dimensions);
            on_update(JobUpdate::Submitted(sub.event.id));
            let attempt_id = sub.event.id;
            let r = self
                .follow(&mut sub, &mut job, &mut pay, &mut on_update)
                .await;
            self.close(sub).await;
            match r {
                Ok(mut o) => {
                    self.record(worker, Ok(&o), opts);
                    if opts.attest {
                        if let Err(e) = self.attest_delivered(&o).await {
                            tracing::debug!(error = %e, "attestation not published");
                        }
                    }
                    if checking && fedai_scheduler::spot::pick(opts.spot_check, rng.next_f64()) {
                        o.spot_check = Some(self.spot_check(&ads, &request, &o, opts).await);
                    }
                    return Ok(o);
                }
                Err(e) => {
                    // Not for a capacity refusal, nor for our own payment's failure.
                    if opts.attest
                        && !matches!(e, ClientError::Payment(_))
                        && failure_of(&e).is_some_and(|f| f != Failure::Busy)
                    {
                        let a = fedai_protocol::Attestation {
                            worker,
                            verdict: fedai_protocol::AttestationVerdict::Failed,
                            request_id: attempt_id,
                            result_id: None,
                            metering_id: None,
                        };
                        let _ = self.attest(&a).await;
                    }
                    tries.failed(self, worker, e, opts, &mut on_update)?;
                    // Tell the worker to stop (it may still be running); best effort.
                    let _ = self
                        .cancel_on(attempt_id, request.kind(), &reached.urls)
                        .await;
                }
            }
        }
        Err(tries.into_error())
    }

    /// Publish `request` open with a bid, collect quotes for `window`, and return them
    /// (cheapest first) without awarding: `fedai quote`.
    pub async fn quotes(
        &self,
        request: JobRequest,
        bid_msat: u64,
        window: Duration,
    ) -> Result<Vec<Quote>, ClientError> {
        let mut req = request;
        req.provider = None;
        req.bid_msat = Some(bid_msat);
        let mut sub = self.publish_request(&req, false, &[]).await?;
        let id = sub.event.id;
        let quotes = collect_quotes(&mut sub.notifications, id, self.keys(), window).await;
        self.close(sub).await;
        // Nobody will be awarded: withdraw the request.
        let _ = self.cancel_kind(id, req.kind()).await;
        Ok(quotes)
    }

    async fn run_auction(
        &self,
        ads: &[ParsedCapabilityAd],
        request: JobRequest,
        opts: &RunOptions,
        on_update: &mut impl FnMut(JobUpdate),
    ) -> Result<JobOutcome, ClientError> {
        let window = opts.auction.unwrap_or(Duration::from_secs(2));
        let mut req = request.clone();
        req.provider = None;
        // The bid caps what workers may quote; without a cap, any quote may come.
        req.bid_msat = Some(opts.max_price_msat.or(req.bid_msat).unwrap_or(u64::MAX / 2));
        let mut sub = self.publish_request(&req, false, &[]).await?;
        on_update(JobUpdate::Submitted(sub.event.id));
        let quotes =
            collect_quotes(&mut sub.notifications, sub.event.id, self.keys(), window).await;
        // No failover on silence in an auction: the next award names the same request, and a
        // slow first winner could then answer it too (the deadline still applies).
        let mut job = JobTracker::new(
            sub.parsed.clone(),
            self.keys().clone(),
            None,
            opts.timeout,
            std::time::Instant::now(),
        );
        let mut rng = Rng::from_entropy();
        let mut tries = Tries::default();
        // One spending cap for the whole job, whatever its attempts (see `Budget`).
        let budget = Budget::new();
        while tries.more(opts) {
            let d = self.decide(
                ads,
                &req,
                opts,
                &tries.tried,
                Some(&quotes),
                &mut rng,
                false,
            );
            let Some(i) = d.chosen_index() else { break };
            let worker = ads[i].worker;
            let q = quotes
                .iter()
                .find(|q| q.worker == worker)
                .expect("only quoting workers are candidates");
            let award = Award {
                request_id: sub.event.id,
                quote_id: q.feedback_id,
                worker,
                amount_msat: q.amount_msat,
                expiration: Some(Timestamp::now() + opts.timeout.as_secs()),
            }
            .to_event(self.keys())?;
            self.send(&award).await?;
            let mut pay = Payments::for_worker(opts, &ads[i], &request, &budget);
            job.reassign(worker, std::time::Instant::now());
            let r = self.follow(&mut sub, &mut job, &mut pay, on_update).await;
            match r {
                Ok(o) => {
                    self.record(worker, Ok(&o), opts);
                    self.close(sub).await;
                    return Ok(o);
                }
                Err(e) => {
                    if let Err(e) = tries.failed(self, worker, e, opts, on_update) {
                        self.close(sub).await;
                        return Err(e);
                    }
                }
            }
        }
        self.close(sub).await;
        Err(tries.into_error())
    }
}

/// How long [`FedaiClient::run`] keeps retrying when every worker is busy (at most the
/// attempt's timeout).
const BUSY_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// How long [`FedaiClient::run`] keeps looking when it sees no ad at all.
const UNSEEN_RETRY_BUDGET: Duration = Duration::from_secs(4);

/// The wait before the `round`-th retry of busy workers: 250 ms doubling to 4 s, ±50 % jitter
/// (customers retrying in step would arrive as the same burst again).
fn busy_backoff(round: u32, rng: &mut Rng) -> Duration {
    let base = crate::backoff(Duration::from_millis(250), round, Duration::from_secs(4));
    let jitter = 0.5 + (rng.next_u64() % 1000) as f64 / 1000.0;
    base.mul_f64(jitter)
}

/// The workers a job has tried and how its attempts went. A capacity refusal comes back at
/// once: it moves the job on without using up an attempt (the simulator showed "cheapest"
/// dropping a third of the jobs otherwise), but each worker is tried once at most.
#[derive(Default)]
struct Tries {
    tried: Vec<PublicKey>,
    failures: u32,
    /// Some worker turned the job away as busy.
    busy: bool,
    last: Option<ClientError>,
}

impl Tries {
    /// Workers turned the job away as busy, and none failed it.
    fn only_busy(&self) -> bool {
        self.busy && self.failures == 0
    }

    /// Whether another worker may be tried.
    fn more(&self, opts: &RunOptions) -> bool {
        self.failures < opts.max_attempts.max(1) && self.tried.len() < MAX_TRIES
    }

    /// Record `worker`'s failure and announce the failover; `Err(e)` when `e` cannot succeed
    /// elsewhere either.
    fn failed(
        &mut self,
        client: &FedaiClient,
        worker: PublicKey,
        e: ClientError,
        opts: &RunOptions,
        on_update: &mut impl FnMut(JobUpdate),
    ) -> Result<(), ClientError> {
        let Some(f) = failure_of(&e) else {
            return Err(e);
        };
        match f {
            Failure::Busy => self.busy = true,
            _ => self.failures += 1,
        }
        client.record(worker, Err(f), opts);
        self.tried.push(worker);
        on_update(JobUpdate::Failover {
            worker,
            error: e.to_string(),
        });
        self.last = Some(e);
        Ok(())
    }

    /// The error once no worker is left to try.
    fn into_error(self) -> ClientError {
        match self.last {
            None => ClientError::NoWorker,
            Some(e) => ClientError::Exhausted {
                attempts: self.tried.len().max(1) as u32,
                last: Box::new(e),
            },
        }
    }
}

/// Which failures move a job to another worker (and how they count against the worker);
/// `None`: the job cannot succeed elsewhere either (relay down, our own request invalid).
fn failure_of(e: &ClientError) -> Option<Failure> {
    match e {
        ClientError::Job { code, .. } => match code {
            ErrorCode::Capacity | ErrorCode::Shutdown => Some(Failure::Busy),
            ErrorCode::PromptTooLarge | ErrorCode::InvalidRequest | ErrorCode::Expired => None,
            ErrorCode::Cancelled => None,
            _ => Some(Failure::Error),
        },
        ClientError::Timeout(_) | ClientError::Silent(_) => Some(Failure::Timeout),
        ClientError::InvalidResult(_) => Some(Failure::Invalid),
        ClientError::Payment(_) => Some(Failure::Error),
        _ => None,
    }
}

/// `max_tokens` assumed for a request that sets none (the workers' default limit).
const DEFAULT_MAX_TOKENS_BOUND: u64 = 4096;

/// Whether a model (as its ad lists it) can answer `input`: any model a text-generation job,
/// and for an embedding job one that embeds with room for its texts (the answer must fit one
/// event, [`fedai_protocol::job::max_embed_texts`]).
fn embeds(info: Option<&fedai_protocol::ModelInfo>, input: &fedai_protocol::JobInput) -> bool {
    let texts = input.embed_texts().len();
    texts == 0
        || info.is_some_and(|m| {
            m.dimensions > 0 && texts <= fedai_protocol::job::max_embed_texts(m.dimensions)
        })
}

/// The ad's entry for the model `request` runs on (the worker's first when it names none).
fn ad_model<'a>(
    ad: &'a ParsedCapabilityAd,
    request: &JobRequest,
) -> Option<&'a fedai_protocol::ModelInfo> {
    match &request.params.model {
        Some(m) => ad.ad.models.iter().find(|x| x.id == *m),
        None => ad.ad.models.first(),
    }
}

/// The ad's price for the model `request` runs on (the worker's first model when it names none).
pub fn ad_price<'a>(
    ad: &'a ParsedCapabilityAd,
    request: &JobRequest,
) -> Option<&'a fedai_protocol::Price> {
    let model = match &request.params.model {
        Some(m) => m.as_str(),
        None => ad.ad.models.first()?.id.as_str(),
    };
    ad.ad.prices.iter().find(|p| p.model == model)
}

/// What spot checks compare of an answer: its text, and for a JSON answer its text and calls,
/// not its log probabilities (floats that differ from machine to machine for the same tokens).
fn comparable(output: &str, params: &fedai_protocol::JobParams) -> String {
    if !params.json_answer() {
        return output.to_owned();
    }
    match fedai_protocol::JsonAnswer::parse(output) {
        Ok(a) => {
            let calls: Vec<(&str, &str)> = a
                .tool_calls
                .iter()
                .map(|c| (c.function.name.as_str(), c.function.arguments.as_str()))
                .collect();
            format!("{}\n{calls:?}", a.content)
        }
        Err(_) => output.to_owned(),
    }
}

/// The most `ad` prices `request` at: its price for the model applied to an upper bound of the
/// prompt's tokens (a token covers at least one byte, plus a template's) and `max_tokens` out.
pub fn ad_bound_msat(ad: &ParsedCapabilityAd, request: &JobRequest) -> Option<u64> {
    let price = ad_price(ad, request)?;
    let input = prompt_token_bound(request.input.data().len(), request);
    let output = match request.kind() {
        fedai_protocol::kinds::EMBED_REQUEST => 0,
        _ => request
            .params
            .max_tokens
            .map_or(DEFAULT_MAX_TOKENS_BOUND, u64::from),
    };
    Some(price.cost_msat(input, output))
}

async fn collect_quotes(
    notifications: &mut std::pin::Pin<
        Box<dyn futures_util::Stream<Item = ClientNotification> + Send>,
    >,
    request_id: EventId,
    keys: &Keys,
    window: Duration,
) -> Vec<Quote> {
    let deadline = tokio::time::Instant::now() + window;
    let mut quotes: Vec<Quote> = Vec::new();
    while let Ok(Some(n)) = tokio::time::timeout_at(deadline, notifications.next()).await {
        let ClientNotification::Event { event, .. } = n else {
            continue;
        };
        let Ok(fb) = JobFeedback::from_event(&event, Some(keys)) else {
            continue;
        };
        if fb.request_id != request_id || fb.status != FeedbackStatus::PaymentRequired {
            continue;
        }
        let Some(amount) = fb.amount else { continue };
        // One quote per worker: its latest.
        quotes.retain(|q| q.worker != event.pubkey);
        quotes.push(Quote {
            worker: event.pubkey,
            feedback_id: event.id,
            amount_msat: amount.msat,
            bolt11: amount.bolt11,
        });
    }
    quotes.sort_by_key(|q| q.amount_msat);
    quotes
}

#[cfg(test)]
mod tests {
    use super::{comparable, embeds};

    #[test]
    fn embedding_jobs_go_only_to_models_that_embed_with_room_for_them() {
        let model = |dimensions| fedai_protocol::ModelInfo {
            id: "e".into(),
            context_length: 512,
            quantisation: "f16".into(),
            dimensions,
        };
        let texts = |n: usize| fedai_protocol::JobInput::Embed(vec!["t".into(); n]);
        assert!(embeds(Some(&model(768)), &texts(42)));
        assert!(
            !embeds(Some(&model(768)), &texts(43)),
            "the answer would not fit"
        );
        assert!(!embeds(Some(&model(0)), &texts(1)), "not an embedder");
        assert!(!embeds(None, &texts(1)), "model not served");
        let chat = fedai_protocol::JobInput::Text("hi".into());
        assert!(
            embeds(Some(&model(0)), &chat),
            "text jobs are not held to this"
        );
    }
    use fedai_protocol::{JobParams, JsonAnswer, TokenLogprob};

    #[test]
    fn spot_checks_compare_text_not_log_probabilities() {
        let p = JobParams {
            logprobs: true,
            max_tokens: Some(4),
            ..JobParams::default()
        };
        let answer = |logprob: f32| {
            JsonAnswer {
                content: "Blue".into(),
                logprobs: vec![TokenLogprob {
                    token: "Blue".into(),
                    logprob,
                    top_logprobs: Vec::new(),
                }],
                ..JsonAnswer::default()
            }
            .to_output()
        };
        // Two honest machines: the same token, floats a rounding apart.
        assert_eq!(
            comparable(&answer(-0.1234567), &p),
            comparable(&answer(-0.1234571), &p)
        );
        let plain = JobParams::default();
        assert_eq!(comparable("Blue", &plain), "Blue");
    }
}
