//! A job request from arrival to a decision ([`crate::admit`]), and a taken job to its answer.

use fedai_lightning::payment::worker::Escrow;

use super::*;
use crate::admit::{self, Decision, Fresh, Pay, Screened};

/// Why an embedding job cannot run on `model` here, before anything runs: the model does not
/// embed, or the answer would hold more than one event may
/// ([`fedai_protocol::job::max_embed_texts`]). `None` for other jobs, and those that fit.
fn embed_fit(
    input: &fedai_protocol::JobInput,
    models: &[ModelInfo],
    model: &str,
) -> Option<(ErrorCode, String)> {
    let fedai_protocol::JobInput::Embed(texts) = input else {
        return None;
    };
    let dims = models
        .iter()
        .find(|m| m.id == model)
        .map_or(0, |m| m.dimensions);
    if dims == 0 {
        return Some((
            ErrorCode::ModelUnavailable,
            format!("model `{model}` does not embed here"),
        ));
    }
    let most = fedai_protocol::job::max_embed_texts(dims);
    (texts.len() > most).then(|| {
        (
            ErrorCode::InvalidRequest,
            format!(
                "{} texts of {dims} dimensions are over the {} values one answer holds: send at most {most} texts per job to this model",
                texts.len(),
                fedai_protocol::job::MAX_EMBED_VALUES
            ),
        )
    })
}

/// A taken job's place in the `running` map (where a cancellation finds it), removed on every
/// path out.
struct Running {
    worker: Worker,
    id: EventId,
}

impl Running {
    fn new(w: &Worker, parsed: &ParsedJobRequest, stop: oneshot::Sender<Stop>) -> Self {
        w.inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(parsed.id, (parsed.customer, stop));
        Self {
            worker: w.clone(),
            id: parsed.id,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.worker
            .inner
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl Worker {
    /// A job request (or the request of an award of our quote): screened, its inputs fetched,
    /// priced when that matters, then declined, quoted, or run.
    pub(super) async fn on_request(&self, event: Event, awarded: bool) {
        let directed = awarded || event.tags.public_keys().any(|p| p == self.public_key());
        let Some(parsed) = self.parse_request(&event, directed).await else {
            return;
        };
        let models = self
            .inner
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (facts, view) = (
            self.facts(&event, &parsed, directed),
            self.view(&models, &parsed.customer),
        );
        let (model, max_tokens) = match admit::screen(&facts, &view) {
            Screened::Ignore => return,
            Screened::Decline(code, reason) => {
                return self.decline(&parsed, directed, code, reason).await
            }
            Screened::Pass { model, max_tokens } => (model, max_tokens),
        };
        if let Some((code, reason)) = embed_fit(&parsed.request.input, &models, &model) {
            return self.decline(&parsed, directed, code, reason).await;
        }
        if !self.within_customer_rate(&parsed.customer) {
            let reason = "too many requests from this customer: slow down".to_owned();
            return self
                .decline(&parsed, directed, ErrorCode::Capacity, reason)
                .await;
        }
        let Some(input) = self.resolve_inputs(&parsed, directed).await else {
            return;
        };
        let req = InferRequest {
            model,
            input,
            params: parsed.request.params.clone(),
            max_tokens,
        };
        // Whether the price matters depends on nothing the awaits above change.
        let price = match admit::needs_price(&facts, &view) {
            true => Some(self.job_price(&parsed, &req).await),
            false => None,
        };
        // The load as it is now, after the awaits above.
        let facts = self.facts(&event, &parsed, directed);
        let view = self.view(&models, &parsed.customer);
        match admit::admit(&facts, &view, price) {
            Decision::Ignore => {}
            Decision::Decline(code, reason) => self.decline(&parsed, directed, code, reason).await,
            Decision::Quote(price) => self.quote(&parsed, price).await,
            Decision::Run(pay) => {
                let job = Job {
                    event: &event,
                    parsed: &parsed,
                    directed,
                    price: price.unwrap_or(0),
                };
                self.take(job, req, pay).await
            }
        }
    }

    /// Whether `customer` is within its request rate (always, without a limit).
    fn within_customer_rate(&self, customer: &PublicKey) -> bool {
        self.inner
            .per_customer
            .as_ref()
            .is_none_or(|l| l.allow(customer))
    }

    /// Parse and decrypt a request; a malformed one that names us is answered with the reason.
    /// `None`: not ours (encrypted for another worker, directed to others, or malformed).
    async fn parse_request(&self, event: &Event, directed: bool) -> Option<ParsedJobRequest> {
        let i = &self.inner;
        let parsed = match JobRequest::from_event(event, Some(&i.cfg.keys)) {
            Ok(p) => p,
            // Encrypted for another worker: not ours to read or answer.
            Err(ProtocolError::NotRecipient) => return None,
            Err(e) => {
                if directed && event.verify().is_ok() {
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
                return None;
            }
        };
        // Directed to other workers.
        (parsed
            .request
            .provider
            .is_none_or(|p| p == self.public_key()))
        .then_some(parsed)
    }

    /// What the admission decision needs to know of the request.
    fn facts<'a>(
        &self,
        event: &Event,
        parsed: &'a ParsedJobRequest,
        directed: bool,
    ) -> admit::Request<'a> {
        let i = &self.inner;
        let lock = |m: &Mutex<HashSet<EventId>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&parsed.id)
        };
        let fresh = match Freshness::for_requests(i.cfg.request_max_age.as_secs())
            .check(event, Timestamp::now())
        {
            Ok(()) => Fresh::Yes,
            Err(ProtocolError::TooOld { .. }) => Fresh::TooOld,
            Err(ProtocolError::Expired(_)) => Fresh::Expired,
            Err(_) => Fresh::FromFuture,
        };
        admit::Request {
            directed,
            stored: parsed.created_at.as_secs() + 2 < i.started.as_secs(),
            resumed: lock(&i.recover),
            answered: lock(&i.answered),
            taken: i
                .taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&parsed.id),
            fresh,
            model: parsed.request.params.model.as_deref(),
            // A tools job's function list goes into the prompt too.
            prompt_bytes: parsed.input_data.len()
                + parsed.request.params.tools.as_ref().map_or(0, String::len),
            max_tokens: parsed.request.params.max_tokens,
            bid_msat: parsed.request.bid_msat,
            fedai: parsed.fedai,
            missing_feature: match parsed.request.kind() {
                k if !i.cfg.job_kinds.contains(&k) && k == kinds::EMBED_REQUEST => {
                    Some("embeddings")
                }
                k if !i.cfg.job_kinds.contains(&k) => Some("text generation"),
                _ => parsed
                    .request
                    .params
                    .features()
                    .into_iter()
                    .find(|f| !i.runner.features().contains(f)),
            },
        }
    }

    /// The worker as the admission decision sees it now.
    fn view<'a>(&self, models: &'a [ModelInfo], customer: &PublicKey) -> admit::View<'a> {
        let i = &self.inner;
        let (my_quotes, all_quotes) = Place::held(self, customer, |i| &i.quotes);
        admit::View {
            accepting: i.accepting.load(Ordering::SeqCst),
            healthy: i.healthy.load(Ordering::SeqCst),
            models,
            max_prompt_bytes: i.cfg.max_prompt_bytes,
            default_max_tokens: i.cfg.default_max_tokens,
            max_tokens: i.cfg.max_tokens,
            mode: i.cfg.payment_mode,
            escrow: i.ln.is_some(),
            free_slots: i.slots.available_permits(),
            slots: i.cfg.max_concurrent,
            queued: self.queued(),
            queue: i.cfg.queue,
            my_quotes,
            all_quotes,
            quotes_per_customer: QUOTES_PER_CUSTOMER,
            quotes_total: quotes_total(&i.cfg),
        }
    }

    /// The prompt: the request's own input, or its `url`/`event`/`job` references fetched
    /// (NIP-90 inputs and job chaining). `None` when declined.
    async fn resolve_inputs(
        &self,
        parsed: &ParsedJobRequest,
        directed: bool,
    ) -> Option<fedai_protocol::JobInput> {
        let i = &self.inner;
        if !parsed.needs_inputs() {
            return Some(parsed.request.input.clone());
        }
        // Fetching is bounded in concurrency: requests cannot make us a fetching amplifier.
        let Ok(_fetching) = i.fetches.clone().try_acquire_owned() else {
            let reason = "busy fetching other requests' inputs; try again".into();
            self.decline(parsed, directed, ErrorCode::Capacity, reason)
                .await;
            return None;
        };
        let fetched = crate::inputs::resolve(
            &i.client,
            &i.cfg.keys,
            &parsed.customer,
            &parsed.inputs,
            i.cfg.max_prompt_bytes,
            i.cfg.allow_private_addresses,
        )
        .await;
        match fetched {
            Ok(text) => Some(fedai_protocol::JobInput::Text(text)),
            Err((code, reason)) => {
                self.decline(parsed, directed, code, reason).await;
                None
            }
        }
    }

    /// A fed_AI auction: quote our price; the job runs only when awarded.
    async fn quote(&self, parsed: &ParsedJobRequest, price: u64) {
        let amount = Amount {
            msat: price,
            bolt11: None,
        };
        let fb = JobFeedback::payment_required(parsed.id, parsed.customer, amount);
        if let Ok(ev) = fb.to_event(&self.inner.cfg.keys) {
            tracing::info!(request = %parsed.id, price_msat = price, "quoted");
            self.publish_job(parsed, &ev).await;
        }
    }

    /// Run an admitted job: once per process, paid first when pay-before, on a runner slot,
    /// then answered (and its payment settled) or refused (and refunded).
    async fn take(&self, job: Job<'_>, req: InferRequest, pay: Pay) {
        let i = &self.inner;
        let parsed = job.parsed;
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
        let running = Running::new(self, parsed, cancel_tx);
        let started = Instant::now();
        // Zap-only pay-before takes the slot before it asks (a zap cannot be refunded).
        let early = match pay {
            Pay::Before { slot_first: true } => match i.slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return self.decline_full(parsed, job.directed).await,
            },
            _ => None,
        };
        let mut escrow = None;
        if let Pay::Before { .. } = pay {
            // Unpaid quotes are bounded per customer and in all: they cannot fill our node
            // with hold invoices.
            let Some(_quote) = self.quote_slot(parsed.customer) else {
                let reason = admit::TOO_MANY_QUOTES.into();
                return self
                    .decline(parsed, job.directed, ErrorCode::Capacity, reason)
                    .await;
            };
            match self
                .collect_payment(parsed, job.price, &mut cancel_rx)
                .await
            {
                Ok(e) => escrow = Some(e),
                Err(failed) => return self.finish(job, &req.model, failed, None, started).await,
            }
        }
        let permit = match self
            .slot(job, escrow.is_some(), early, &mut cancel_rx)
            .await
        {
            Ok(p) => p,
            Err(NoSlot::Full) => return self.decline_full(parsed, job.directed).await,
            Err(NoSlot::Failed(failed)) => {
                return self.finish(job, &req.model, failed, escrow, started).await
            }
        };
        tracing::info!(request = %parsed.id, model = %req.model, encrypted = parsed.encrypted.is_some(), "job accepted");
        let model = req.model.clone();
        let outcome = self.run_job(parsed, req, &mut cancel_rx).await;
        drop(running);
        // The slot guards the runner: free it as soon as the runner is done, before publishing
        // (the job still counts until its answer is out, for the drain on shutdown).
        drop(permit);
        self.finish(job, &model, outcome, escrow, started).await
    }

    /// A runner slot: taken at once when one is free. Otherwise a paid job waits (bounded), and
    /// a job directed to us waits in the queue (bounded in length and time) — each told it waits,
    /// and kept alive with `processing` — while an open one is turned away (`Full`). A
    /// cancellation stops any wait.
    async fn slot(
        &self,
        job: Job<'_>,
        paid: bool,
        early: Option<tokio::sync::OwnedSemaphorePermit>,
        cancel_rx: &mut oneshot::Receiver<Stop>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, NoSlot> {
        let i = &self.inner;
        if let Some(p) = early {
            return Ok(p);
        }
        if let Ok(p) = i.slots.clone().try_acquire_owned() {
            return Ok(p);
        }
        let (wait, _place) = if paid {
            (PAID_SLOT_WAIT.min(i.cfg.job_timeout), None)
        } else if job.directed {
            // One customer may hold half the queue: others still get in.
            let mine = (i.cfg.queue / 2).max(1);
            let queue = i.cfg.queue;
            let Some(mine) = Place::take(self, job.parsed.customer, |i| &i.queued_by, mine, queue)
            else {
                return Err(NoSlot::Full);
            };
            self.say_queued(job.parsed);
            (i.cfg.queue_wait, Some(mine))
        } else {
            return Err(NoSlot::Full);
        };
        let acquire = tokio::time::timeout(wait, i.slots.clone().acquire_owned());
        tokio::pin!(acquire);
        let mut alive = keepalive_ticks();
        loop {
            tokio::select! {
                p = &mut acquire => {
                    // A slot that frees during the drain is not for a job that waited: the
                    // worker is stopping.
                    if !i.accepting.load(Ordering::SeqCst) {
                        return Err(NoSlot::Failed(Stop::Shutdown.outcome()));
                    }
                    return p.ok().and_then(Result::ok).ok_or_else(|| {
                        NoSlot::Failed(Outcome::Failed(
                            ErrorCode::Capacity,
                            format!("all {} slots stayed busy for {}s", i.cfg.max_concurrent, wait.as_secs()),
                        ))
                    })
                }
                Ok(stop) = &mut *cancel_rx => return Err(NoSlot::Failed(stop.outcome())),
                _ = alive.tick() => match paid {
                    true => self.keepalive(job.parsed, Some("paid; waiting for a free slot".into())),
                    false => self.say_queued(job.parsed),
                },
            }
        }
    }

    /// Directed jobs waiting in the queue now.
    fn queued(&self) -> u32 {
        let q = self
            .inner
            .queued_by
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.values().sum()
    }

    /// `processing`, with the job's place (the others in the queue wait before it, as far as
    /// it can tell) and about how long.
    fn say_queued(&self, parsed: &ParsedJobRequest) {
        let i = &self.inner;
        let ahead = self.queued().saturating_sub(1);
        let per_job = Duration::from_millis(i.avg_job_ms.load(Ordering::Relaxed).max(100));
        let eta = per_job * (ahead + 1) / i.cfg.max_concurrent.max(1);
        let info = format!("queued: {ahead} ahead, about {}s", eta.as_secs().max(1));
        self.keepalive(parsed, Some(info));
    }

    /// The job's end: answered and its payment claimed, or refused and its payment refunded.
    async fn finish(
        &self,
        job: Job<'_>,
        model: &str,
        outcome: Outcome,
        mut escrow: Option<Escrow>,
        started: Instant,
    ) {
        let i = &self.inner;
        match outcome {
            Outcome::Failed(code, mut reason) => {
                if let Some(e) = escrow.as_mut() {
                    self.refund(e, &mut reason).await;
                }
                self.refuse(job.parsed, code, reason).await
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
                // A moving average (1/8 weight to the newest) for the queue's estimates.
                let ms = runner_time.as_millis() as u64;
                let _ = i
                    .avg_job_ms
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                        Some(if a == 0 { ms } else { (a * 7 + ms) / 8 })
                    });
                let done = Delivery {
                    model: model.to_owned(),
                    output,
                    usage,
                    wall: started.elapsed(),
                };
                self.deliver(job.event, job.parsed, done, escrow).await;
            }
        }
    }

    /// A place among the unpaid quotes: at most [`QUOTES_PER_CUSTOMER`] per customer and
    /// [`quotes_total`] in all; `None` when full. Released when dropped.
    fn quote_slot(&self, customer: PublicKey) -> Option<Place> {
        let total = quotes_total(&self.inner.cfg);
        Place::take(self, customer, |i| &i.quotes, QUOTES_PER_CUSTOMER, total)
    }
}

/// Unpaid quotes in all: sixteen per slot, at least 64.
fn quotes_total(cfg: &WorkerConfig) -> u32 {
    cfg.max_concurrent.saturating_mul(16).max(64)
}

/// Why a job has no runner slot.
enum NoSlot {
    /// Full, and the job may not wait (open, or the queue is full): declined like a full worker.
    Full,
    /// It waited and got none (or was stopped): answered with this.
    Failed(Outcome),
}

/// An admitted job: its request and how to answer it.
#[derive(Clone, Copy)]
struct Job<'a> {
    event: &'a Event,
    parsed: &'a ParsedJobRequest,
    directed: bool,
    /// Its price on our ad (pay-before), msat.
    price: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_embedding_job_is_sized_to_its_model_before_it_runs() {
        let model = |dimensions| ModelInfo {
            id: "e".into(),
            context_length: 512,
            quantisation: "f16".into(),
            dimensions,
        };
        let texts = |n: usize| fedai_protocol::JobInput::Embed(vec!["t".into(); n]);
        assert!(
            embed_fit(&texts(64), &[model(512)], "e").is_none(),
            "64 × 512 fits"
        );
        let (code, why) = embed_fit(&texts(64), &[model(1024)], "e").unwrap();
        assert_eq!(code, ErrorCode::InvalidRequest);
        assert!(why.contains("at most 32 texts"), "{why}");
        assert!(embed_fit(&texts(1), &[model(16384)], "e").is_none());
        let (code, _) = embed_fit(&texts(1), &[model(0)], "e").unwrap();
        assert_eq!(
            code,
            ErrorCode::ModelUnavailable,
            "a model that does not embed"
        );
        let chat = fedai_protocol::JobInput::Text("hi".into());
        assert!(
            embed_fit(&chat, &[model(0)], "e").is_none(),
            "not an embedding job"
        );
    }
}
