//! Running a call: the plan (is the model live, which workers may serve it, what it may cost,
//! the budget reserved), one job per choice followed to its verified end, and the answer —
//! whole, or streamed as server-sent events.
//!
//! Each job runs in a task of its own, so the budget is settled and an abandoned job is
//! cancelled even when the app has gone: when the app disconnects, the channel the job writes
//! to closes, the job stops being followed and its request is cancelled on Nostr (a NIP-09
//! deletion, on which the worker stops generating).

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fedai_client::{ClientError, JobOutcome, JobUpdate, PayContext, RunOptions};
use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::{EventId, ToBech32};
use fedai_protocol::{JobParams, JobRequest, JsonAnswer};
use fedai_scheduler::{Policy, Rejection};
use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::answer::{self, Finished, Meta};
use crate::ledger::Reservation;
use crate::openai::Call;
use crate::{ApiError, Inner};

/// What a job tells the answer.
enum Msg {
    /// The job request was published (its first attempt).
    Submitted(EventId),
    /// Streamed text.
    Delta(String),
    /// The end: the verified choice and the part of its output not streamed yet, or why not.
    Done(Result<(Box<Finished>, String), ApiError>),
}

/// A call's plan: how its jobs run and the budget they may use.
struct Plan {
    opts: RunOptions,
    /// Reserved for each job that starts at once (none without a wallet, or with its budget
    /// spent); the others reserve theirs when they start ([`reserve_more`]).
    shares: Vec<Option<Reservation>>,
    /// What each job may pay, and its attempts (for the later reservations).
    per_job: u64,
    attempts: u32,
}

/// Embedding jobs of one call that run at once: a batch of thousands of texts goes through a
/// few at a time, holding a few of the gateway's job slots, not all of them.
const EMBED_WINDOW: usize = 4;

/// Run `call` and answer it.
pub(crate) async fn respond(g: Arc<Inner>, mut call: Call) -> Response {
    let ads = match g.workers().await {
        Ok(ads) => ads,
        Err(e) => return ApiError::from_client(&e).into_response(),
    };
    let embed = call.endpoint == crate::openai::Endpoint::Embeddings;
    if embed {
        let Some(dims) = embed_dimensions(&ads, &call.model, &call.routing) else {
            // No live worker embeds with it: the plan says why (unknown model, a text model),
            // or no worker is ready.
            return match plan(&g, &call, &ads, 1) {
                Err(e) => e,
                Ok(p) => {
                    release(&g, p.shares);
                    ApiError::no_worker(format!("no live worker embeds with `{}` now", call.model))
                }
            }
            .into_response();
        };
        // The jobs are sized for that width, and go only to workers that give it.
        for a in &ads {
            if a.ad.takes_kind(fedai_protocol::kinds::EMBED_REQUEST)
                && !a
                    .ad
                    .models
                    .iter()
                    .any(|m| m.id == call.model && m.dimensions == dims)
            {
                call.routing.ignore.push(a.worker);
            }
        }
        let per_job = fedai_protocol::job::max_embed_texts(dims);
        call.batches = crate::openai::embed_batches(&call.texts, &call.model, per_job);
        call.n = call.batches.len() as u32;
    }
    let n = call.n as usize;
    let window = if embed { n.min(EMBED_WINDOW) } else { n };
    let permits: Option<Vec<OwnedSemaphorePermit>> = (0..window)
        .map(|_| g.jobs.clone().try_acquire_owned().ok())
        .collect();
    let Some(mut permits) = permits else {
        return ApiError::no_worker("the gateway runs as many jobs as it may now; try again")
            .into_response();
    };
    let plan = match plan(&g, &call, &ads, window) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let meta = Meta::new(call.endpoint, &call.model);
    // One job per choice, or per batch of an embedding call.
    let requests: Vec<JobRequest> = match call.batches.is_empty() {
        true => vec![call.job.clone(); n],
        false => std::mem::take(&mut call.batches),
    };
    let mut receivers = Vec::with_capacity(n);
    let mut jobs = Vec::with_capacity(n);
    let mut shares = plan.shares.into_iter();
    for request in requests {
        let share = shares.next().flatten();
        let (tx, rx) = mpsc::channel(64);
        receivers.push(rx);
        let job = Job {
            g: g.clone(),
            request,
            ads: ads.clone(),
            opts: plan.opts.clone(),
            share,
            _permit: None,
        };
        jobs.push((job, tx));
    }
    if window == n {
        for (mut job, tx) in jobs {
            job._permit = permits.pop();
            tokio::spawn(job.drive(tx));
        }
    } else {
        let later = Later {
            per_job: plan.per_job,
            attempts: plan.attempts,
            cap: plan.opts.max_price_msat.unwrap_or(0),
        };
        tokio::spawn(feed(g.clone(), jobs, permits, later));
    }
    if call.stream {
        stream(meta, call.include_usage, receivers.into_iter().next()).await
    } else {
        whole(meta, receivers, call.base64).await
    }
}

/// What a job that starts later reserves: its price cap and fees, as the first ones did.
struct Later {
    per_job: u64,
    attempts: u32,
    /// The cap the first reservations allowed (0: free workers only).
    cap: u64,
}

/// Start `jobs` in order, at most as many at once as `permits` (the gateway's job slots this
/// call holds until its last job ends). Jobs past the first window reserve their budget share
/// as they start, so a long call does not hold the whole budget (nor leave it all counted
/// after a crash). A job whose reader has gone (the app hung up, or another batch failed) is
/// not started, and its share is given back.
async fn feed(
    g: Arc<Inner>,
    jobs: Vec<(Job, mpsc::Sender<Msg>)>,
    permits: Vec<OwnedSemaphorePermit>,
    later: Later,
) {
    let first = permits.len();
    let window = Arc::new(tokio::sync::Semaphore::new(first));
    let mut running = Vec::new();
    for (k, (mut job, tx)) in jobs.into_iter().enumerate() {
        let Ok(p) = window.clone().acquire_owned().await else {
            break;
        };
        if tx.is_closed() {
            release(&g, vec![job.share.take()]);
            continue;
        }
        if k >= first {
            match reserve_more(&g, &later) {
                Ok(share) => job.share = share,
                Err(e) => {
                    let _ = tx.send(Msg::Done(Err(e))).await;
                    continue;
                }
            }
        }
        job._permit = Some(p);
        running.push(tokio::spawn(job.drive(tx)));
    }
    for r in running {
        let _ = r.await;
    }
    drop(permits);
}

/// The vector length an embedding call's jobs are sized for: the one most live workers that
/// may serve it (healthy, within the app's `only`/`ignore`) advertise for the model (the
/// smaller on a tie); `None` when none advertises one.
fn embed_dimensions(
    ads: &[ParsedCapabilityAd],
    model: &str,
    r: &crate::openai::Routing,
) -> Option<u32> {
    let mut count: std::collections::BTreeMap<u32, usize> = Default::default();
    for a in ads {
        let eligible = a.ad.healthy
            && a.ad.takes_kind(fedai_protocol::kinds::EMBED_REQUEST)
            && (r.only.is_empty() || r.only.contains(&a.worker))
            && !r.ignore.contains(&a.worker);
        let dims =
            a.ad.models
                .iter()
                .find(|m| m.id == model)
                .map(|m| m.dimensions);
        if let (true, Some(d @ 1..)) = (eligible, dims) {
            *count.entry(d).or_default() += 1;
        }
    }
    // Most workers; on a tie the smaller width (iterated widest first, and `max_by_key` keeps
    // the last of equal counts).
    count
        .into_iter()
        .rev()
        .max_by_key(|(_, n)| *n)
        .map(|(d, _)| d)
}

/// A later job's budget share: the same cap and fees as the first jobs', or 402 when the
/// budget no longer holds them.
fn reserve_more(g: &Inner, l: &Later) -> Result<Option<Reservation>, ApiError> {
    let Some(w) = &g.wallet else {
        return Ok(None);
    };
    if l.cap == 0 {
        // The first jobs could pay nothing: free workers only, nothing to reserve.
        return Ok(None);
    }
    let fees = w.pay.max_fee_msat.saturating_mul(u64::from(l.attempts));
    let want = l.per_job.min(l.cap).saturating_add(fees);
    match w.ledger.reserve(want, want) {
        Ok(Some(r)) if r.msat >= want => Ok(Some(r)),
        Ok(Some(r)) => {
            let _ = w.ledger.settle(r, 0);
            Err(ApiError::payment(
                "the gateway's budget ran out during the call",
            ))
        }
        Ok(None) => Err(ApiError::payment(
            "the gateway's budget ran out during the call",
        )),
        Err(e) => Err(ApiError::upstream(e.to_string())),
    }
}

fn plan(
    g: &Inner,
    call: &Call,
    ads: &[ParsedCapabilityAd],
    reserve_now: usize,
) -> Result<Plan, ApiError> {
    let serving: Vec<&ParsedCapabilityAd> =
        ads.iter().filter(|a| a.ad.serves(&call.model)).collect();
    if serving.is_empty() {
        return Err(ApiError::unknown_model(&call.model));
    }
    let kind = call.job.kind();
    if !serving.iter().any(|a| a.ad.takes_kind(kind)) {
        return Err(ApiError::invalid(
            Some("model"),
            match kind {
                fedai_protocol::kinds::EMBED_REQUEST => format!(
                    "no worker embeds with `{}`: its workers serve text generation",
                    call.model
                ),
                _ => format!(
                    "`{}` is an embedding model here: use POST /v1/embeddings",
                    call.model
                ),
            },
        ));
    }
    let features = call.job.params.features();
    if !serving.iter().any(|a| a.ad.supports(&features)) {
        // The only optional feature today is the JSON schema of `response_format`.
        return Err(ApiError::unsupported("response_format"));
    }
    let r = &call.routing;
    let attempts = if r.allow_fallbacks {
        g.cfg.max_attempts.max(1)
    } else {
        1
    };
    let n = u64::from(call.n);
    let per_job = r
        .max_price_msat
        .unwrap_or(u64::MAX)
        .min(g.cfg.max_price_msat)
        / n;
    let (shares, cap, pay) = reserve(g, reserve_now as u32, per_job, attempts)?;
    let opts = RunOptions {
        policy: Policy::new(r.sort.unwrap_or_default()),
        max_price_msat: Some(cap),
        timeout: g.cfg.timeout,
        max_attempts: attempts,
        private: g.cfg.private,
        only: r.only.clone(),
        ignore: r.ignore.clone(),
        pay,
        ..RunOptions::default()
    };
    if let Err(e) = affordable(g, call, ads, &opts, cap) {
        release(g, shares);
        return Err(e);
    }
    Ok(Plan {
        opts,
        shares,
        per_job,
        attempts,
    })
}

type Reserved = (Vec<Option<Reservation>>, u64, Option<PayContext>);

/// Reserve each job's cap and fees from the budget; the cap a job may pay (0: free workers).
fn reserve(g: &Inner, n: u32, per_job: u64, attempts: u32) -> Result<Reserved, ApiError> {
    let Some(w) = &g.wallet else {
        return Ok(((0..n).map(|_| None).collect(), 0, None));
    };
    // Routing fees are counted at their cap: a payer does not say what it paid.
    let fees = w.pay.max_fee_msat.saturating_mul(u64::from(attempts));
    let mut shares = Vec::new();
    let mut cap = per_job;
    for _ in 0..n {
        match w
            .ledger
            .reserve(per_job.saturating_add(fees), fees.saturating_add(1))
        {
            Ok(r) => {
                cap = cap.min(r.as_ref().map_or(0, |r| r.msat - fees));
                shares.push(r);
            }
            Err(e) => {
                release(g, shares);
                return Err(ApiError::upstream(e.to_string()));
            }
        }
    }
    let pay = (cap > 0).then(|| PayContext {
        max_msat: Some(cap),
        confirm: None,
        ..w.pay.clone()
    });
    Ok((shares, cap, pay))
}

/// Give back reservations of jobs that will not run.
fn release(g: &Inner, shares: Vec<Option<Reservation>>) {
    if let Some(w) = &g.wallet {
        for s in shares.into_iter().flatten() {
            let _ = w.ledger.settle(s, 0);
        }
    }
}

/// 402 up front when every worker serving the model asks more than this call may pay.
fn affordable(
    g: &Inner,
    call: &Call,
    ads: &[ParsedCapabilityAd],
    opts: &RunOptions,
    cap: u64,
) -> Result<(), ApiError> {
    let explained = g.client.explain(ads, &call.job, opts);
    if explained.iter().any(|e| e.chosen) {
        return Ok(());
    }
    let price = |e: &fedai_client::market::Explained| match e.rejected {
        Some(Rejection::OverPrice { price_msat, .. }) => Some(price_msat),
        _ => None,
    };
    let busy = explained.iter().any(|e| {
        matches!(
            e.rejected,
            Some(Rejection::NoCapacity { .. } | Rejection::Busy { .. })
        )
    });
    let Some(cheapest) = explained.iter().filter_map(price).min() else {
        return Ok(());
    };
    if busy {
        return Ok(());
    }
    Err(ApiError::payment(match &g.wallet {
        None => format!(
            "workers for `{}` ask for payment (from {cheapest} msat) and this gateway has no wallet",
            call.model
        ),
        Some(w) if cap == 0 => format!(
            "the gateway's budget is spent ({} msat committed)",
            w.ledger.committed_msat()
        ),
        Some(_) => format!(
            "every worker for `{}` asks more ({cheapest} msat or more) than this request may pay ({cap} msat)",
            call.model
        ),
    }))
}

/// One job of a call, run in its own task.
struct Job {
    g: Arc<Inner>,
    request: JobRequest,
    ads: Vec<ParsedCapabilityAd>,
    opts: RunOptions,
    share: Option<Reservation>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Job {
    /// Follow the job, forwarding its text to `tx`; settle its budget share at the end.
    async fn drive(self, tx: mpsc::Sender<Msg>) {
        let fee = self.opts.pay.as_ref().map_or(0, |p| p.max_fee_msat);
        let max_tokens = self.request.params.max_tokens;
        let kind = self.request.kind();
        let params = self.request.params.clone();
        // However the job goes (busy retries, stalls, failovers), the call ends by then.
        let deadline = tokio::time::Instant::now()
            + self.opts.timeout * self.opts.max_attempts.max(1)
            + OVERALL_SLACK;
        let client = self.g.client.clone();
        let started = std::time::Instant::now();
        let m = &self.g.metrics;
        m.jobs.inc();
        let mut handle = client.start_on(self.ads, self.request, self.opts);
        // A tools job that may call functions answers in JSON: no text of it streams (what a
        // worker sends as `partial` anyway is not shown).
        // Nor does an embedding job's (its answer is vectors).
        let mut f = Followed {
            text_streams: (params.tools.is_none() || params.tool_choice.as_deref() == Some("none"))
                && kind == fedai_protocol::kinds::JOB_REQUEST,
            ..Followed::default()
        };
        let mut first_token = true;
        let abandoned = loop {
            let u = tokio::select! {
                u = handle.update() => u,
                _ = tx.closed() => break Some(None),
                _ = tokio::time::sleep_until(deadline) => {
                    break Some(Some(ApiError::timeout("the job did not finish in time")))
                }
            };
            match f.on(u, fee) {
                Step::Next => {}
                Step::Send(msg) => {
                    if first_token && matches!(msg, Msg::Delta(_)) {
                        first_token = false;
                        m.first_token.observe(started.elapsed().as_secs_f64());
                    }
                    // A reader that stops reading is a reader gone: the job is not held for it.
                    match tokio::time::timeout(SEND_TIMEOUT, tx.send(msg)).await {
                        Ok(Ok(())) => {}
                        _ => break Some(None),
                    }
                }
                Step::Ended => break None,
                Step::Abandon(e) => break Some(Some(e)),
            }
        };
        let end = match abandoned {
            // The app went away, or the stream cannot go on: stop the job on Nostr.
            Some(why) => {
                handle.abort();
                // Payments announced before the abort still move: count every one.
                while let Some(u) = handle.update().await {
                    f.on(Some(u), fee);
                }
                if let Some(id) = f.last {
                    if let Err(e) = client.cancel_kind(id, kind).await {
                        tracing::warn!(error = %e, "cannot cancel an abandoned job");
                    }
                }
                why.map(Err)
            }
            None => Some(done(
                handle.outcome().await,
                max_tokens,
                &params,
                &f.streamed,
            )),
        };
        if let (Some(w), Some(share)) = (&self.g.wallet, self.share) {
            if let Err(e) = w.ledger.settle(share, f.spent) {
                tracing::error!(error = %e, "cannot settle the budget ledger");
            }
        }
        m.charged_msat.inc_by(f.spent);
        m.jobs.dec();
        if let Some(end) = end {
            let end = end.map(|(f, tail)| (Box::new(f), tail));
            let _ = tx.send(Msg::Done(end)).await;
        }
    }
}

/// How long a slow app may leave a chunk unread.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Beyond `attempts × timeout`: payment and busy retries.
const OVERALL_SLACK: std::time::Duration = std::time::Duration::from_secs(90);

/// What the gateway has seen of one job.
#[derive(Default)]
struct Followed {
    /// The latest attempt's request.
    last: Option<EventId>,
    /// Announced payments and their fee caps, msat: what the ledger is charged.
    spent: u64,
    /// Text forwarded so far.
    streamed: String,
    /// Whether `partial` text is the answer's (not for a tools job's JSON).
    text_streams: bool,
}

/// What to do after an update.
enum Step {
    Next,
    Send(Msg),
    Ended,
    Abandon(ApiError),
}

impl Followed {
    fn on(&mut self, u: Option<JobUpdate>, fee: u64) -> Step {
        match u {
            None => Step::Ended,
            Some(JobUpdate::Submitted(id)) => match self.last.replace(id) {
                None => Step::Send(Msg::Submitted(id)),
                Some(_) => Step::Next,
            },
            Some(JobUpdate::Paying(msat)) => {
                self.spent = self.spent.saturating_add(msat).saturating_add(fee);
                Step::Next
            }
            Some(JobUpdate::Partial(_)) if !self.text_streams => Step::Next,
            Some(JobUpdate::Partial(t)) => {
                self.streamed.push_str(&t);
                Step::Send(Msg::Delta(t))
            }
            Some(JobUpdate::Failover { .. }) if !self.streamed.is_empty() => {
                Step::Abandon(ApiError::upstream(
                    "the worker failed mid-stream (the text streamed so far is void)",
                ))
            }
            Some(_) => Step::Next,
        }
    }
}

/// A job's outcome as a verified choice (usage from the signed metering) and the output not
/// yet streamed; or the error an app should see.
fn done(
    r: Result<JobOutcome, ClientError>,
    max_tokens: Option<u32>,
    params: &JobParams,
    streamed: &str,
) -> Result<(Finished, String), ApiError> {
    let o = r.map_err(|e| ApiError::from_client(&e))?;
    let Some((m, _)) = &o.metering else {
        return Err(ApiError::upstream(
            "the worker sent no signed metering for its result; not returned as final",
        ));
    };
    let (output, tool_calls, logprobs) = if params.json_answer() {
        // The SDK held the answer to the request before paying; read it the same way.
        let a = JsonAnswer::for_request(&o.output, params)
            .map_err(|e| ApiError::upstream(format!("the worker's answer is not valid: {e}")))?;
        (a.content, a.tool_calls, a.logprobs)
    } else {
        (o.output.clone(), Vec::new(), Vec::new())
    };
    let Some(tail) = output.strip_prefix(streamed) else {
        return Err(ApiError::upstream(
            "the streamed text is not the start of the worker's signed output",
        ));
    };
    let usage = &m.record.usage;
    let length = max_tokens.is_some_and(|t| usage.output_tokens >= u64::from(t));
    let f = Finished {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost_msat: m.record.price_msat,
        paid_msat: o.payment.as_ref().map_or(0, |p| p.amount_msat),
        request_id: o.request.id,
        worker: o.result.worker,
        result_id: o.result.id,
        metering_id: m.id,
        // OpenAI ends a call of a function the app named with `stop`.
        finish_reason: if !tool_calls.is_empty() && !named_choice(params) {
            "tool_calls"
        } else if length {
            "length"
        } else {
            "stop"
        },
        tool_calls,
        logprobs,
        output: output.clone(),
    };
    Ok((f, tail.to_owned()))
}

/// Whether `tool_choice` named a function.
fn named_choice(p: &JobParams) -> bool {
    p.tool_choice.as_deref().is_some_and(|c| c.starts_with('{'))
}

/// Jobs whose ids the `x-fedai-*` headers list (more would pass what HTTP clients take in a
/// header).
const MAX_HEADER_JOBS: usize = 8;

/// Wait for every choice and answer with them all, or with the first error.
async fn whole(meta: Meta, receivers: Vec<mpsc::Receiver<Msg>>, base64: bool) -> Response {
    // Every job's end, as it comes: the first error ends the call at once, and dropping the
    // other receivers stops their jobs (and keeps later batches from starting).
    let mut slots: Vec<Option<Finished>> = receivers.iter().map(|_| None).collect();
    let mut ends: futures_util::stream::FuturesUnordered<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(i, mut rx)| async move {
            let end = loop {
                match rx.recv().await {
                    Some(Msg::Delta(_) | Msg::Submitted(_)) => continue,
                    Some(Msg::Done(r)) => break r,
                    None => break Err(ApiError::upstream("the job ended without an answer")),
                }
            };
            (i, end)
        })
        .collect();
    while let Some((i, end)) = ends.next().await {
        match end {
            Ok((f, _)) => slots[i] = Some(*f),
            Err(e) => return e.into_response(),
        }
    }
    drop(ends);
    let done: Vec<Finished> = slots.into_iter().flatten().collect();
    let mut r = match meta.endpoint {
        crate::openai::Endpoint::Embeddings => match answer::embeddings(&meta, &done, base64) {
            Ok(body) => {
                let mut r = (StatusCode::OK, body).into_response();
                r.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => {
                return ApiError::upstream(format!("the workers' answers: {e}")).into_response()
            }
        },
        _ => crate::json_response(StatusCode::OK, &answer::completion(&meta, &done)),
    };
    // Each job's ids, in order (one for a single choice), while they fit a header (the body's
    // `fedai` names every job); the msat summed.
    let h = r.headers_mut();
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    if done.len() <= MAX_HEADER_JOBS {
        let list =
            |f: &dyn Fn(&Finished) -> String| done.iter().map(f).collect::<Vec<_>>().join(",");
        put("x-fedai-request", list(&|f| f.request_id.to_hex()));
        put(
            "x-fedai-worker",
            list(&|f| f.worker.to_bech32().unwrap_or_default()),
        );
        put("x-fedai-metering", list(&|f| f.metering_id.to_hex()));
    }
    let sum = |f: fn(&Finished) -> u64| done.iter().map(f).sum::<u64>().to_string();
    put("x-fedai-cost-msat", sum(|f| f.cost_msat));
    put("x-fedai-paid-msat", sum(|f| f.paid_msat));
    r
}

/// Server-sent events: the role, the text as it comes, then the end (or an error event). The
/// answer starts once the job request is out, so that a job that cannot start (no worker, over
/// the budget) is an HTTP error with its status, and the headers name the request.
async fn stream(meta: Meta, include_usage: bool, rx: Option<mpsc::Receiver<Msg>>) -> Response {
    let data = |v: serde_json::Value| Ok::<_, Infallible>(SseEvent::default().data(v.to_string()));
    let Some(mut rx) = rx else {
        return ApiError::upstream("no job to stream").into_response();
    };
    let mut pending = None;
    let request = match rx.recv().await {
        Some(Msg::Submitted(id)) => Some(id),
        Some(Msg::Done(Err(e))) => return e.into_response(),
        None => return ApiError::upstream("the job ended without an answer").into_response(),
        Some(other) => {
            pending = Some(other);
            None
        }
    };
    let rx = Some(rx);
    let first = vec![data(answer::chunk(&meta, "", true, None))];
    let rest = futures_util::stream::unfold((rx, pending), move |(rx, pending)| {
        let meta = meta.clone();
        async move {
            let mut rx = rx?;
            let next = match pending {
                Some(m) => Some(m),
                None => rx.recv().await,
            };
            let events = match next {
                Some(Msg::Submitted(_)) => return Some((Vec::new(), (Some(rx), None))),
                Some(Msg::Delta(t)) => {
                    let event = data(answer::chunk(&meta, &t, false, None));
                    return Some((vec![event], (Some(rx), None)));
                }
                Some(Msg::Done(Ok((f, tail)))) => {
                    let mut out = Vec::new();
                    if !tail.is_empty() {
                        out.push(data(answer::chunk(&meta, &tail, false, None)));
                    }
                    if !f.tool_calls.is_empty() {
                        out.push(data(answer::tool_calls_chunk(&meta, &f.tool_calls)));
                    }
                    if !f.logprobs.is_empty() {
                        out.push(data(answer::logprobs_chunk(&meta, &f.logprobs)));
                    }
                    out.push(data(answer::chunk(&meta, "", false, Some(&*f))));
                    if include_usage {
                        out.push(data(answer::usage_chunk(&meta, &f)));
                    }
                    out.push(Ok(SseEvent::default().data("[DONE]")));
                    out
                }
                Some(Msg::Done(Err(e))) => vec![data(e.body())],
                None => vec![data(
                    ApiError::upstream("the job ended without an answer").body(),
                )],
            };
            Some((events, (None, None)))
        }
    });
    let events = futures_util::stream::iter([first])
        .chain(rest)
        .flat_map(futures_util::stream::iter);
    let mut r = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    if let Some(id) = request.and_then(|id| HeaderValue::from_str(&id.to_hex()).ok()) {
        r.headers_mut()
            .insert(HeaderName::from_static("x-fedai-request"), id);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tools_jobs_partials_are_not_shown_as_text() {
        // A worker streaming "text" for a job whose answer is JSON (calls or content): nothing
        // reaches the app before the verified answer.
        let mut f = Followed::default();
        assert!(matches!(
            f.on(Some(JobUpdate::Partial("{\"tool_calls\"".into())), 0),
            Step::Next
        ));
        assert!(f.streamed.is_empty());
        // A plain job's partials are the answer's text.
        let mut f = Followed {
            text_streams: true,
            ..Followed::default()
        };
        assert!(matches!(
            f.on(Some(JobUpdate::Partial("Hi".into())), 0),
            Step::Send(Msg::Delta(_))
        ));
        assert_eq!(f.streamed, "Hi");
    }

    fn embedder(dimensions: u32, healthy: bool) -> ParsedCapabilityAd {
        use fedai_protocol::{CapabilityAd, Hardware, Keys, ModelInfo, Timestamp};
        ParsedCapabilityAd {
            worker: Keys::generate().public_key(),
            created_at: Timestamp::now(),
            ad: CapabilityAd {
                instance: "e".into(),
                name: "e".into(),
                about: String::new(),
                job_kinds: vec![fedai_protocol::kinds::EMBED_REQUEST],
                models: vec![ModelInfo {
                    id: "nomic".into(),
                    context_length: 2048,
                    quantisation: "f16".into(),
                    dimensions,
                }],
                prices: Vec::new(),
                max_concurrent: 1,
                in_flight: 0,
                queue_depth: 0,
                hardware: Hardware::Cpu {
                    name: "cpu".into(),
                    cores: 1,
                    memory_mib: 1,
                },
                runner: "llama-cpp".into(),
                healthy,
                payment: Default::default(),
                relays: Vec::new(),
                version: "0".into(),
                encryption_supported: true,
                features: Vec::new(),
                expiration: Timestamp::now() + 60,
            },
        }
    }

    #[test]
    fn embedding_jobs_are_sized_by_the_width_most_eligible_workers_give() {
        let r = crate::openai::Routing::default();
        let honest = [embedder(768, true), embedder(768, true)];
        // One stranger's claim, unhealthy or outnumbered, sizes nothing.
        let mut ads = honest.to_vec();
        ads.push(embedder(16384, false));
        ads.push(embedder(4, true));
        assert_eq!(embed_dimensions(&ads, "nomic", &r), Some(768));
        assert_eq!(embed_dimensions(&ads, "other", &r), None);
        assert_eq!(embed_dimensions(&[embedder(0, true)], "nomic", &r), None);
        // A tie: the smaller width.
        let tie = [embedder(1024, true), embedder(384, true)];
        assert_eq!(embed_dimensions(&tie, "nomic", &r), Some(384));
        // Only the workers the app allows count.
        let only = crate::openai::Routing {
            only: vec![tie[0].worker],
            ..Default::default()
        };
        assert_eq!(embed_dimensions(&tie, "nomic", &only), Some(1024));
    }

    #[tokio::test]
    async fn the_first_failed_job_ends_the_call_and_stops_the_rest() {
        let (tx0, rx0) = mpsc::channel(64);
        let (tx1, rx1) = mpsc::channel(64);
        tx1.send(Msg::Done(Err(ApiError::upstream("batch 1 failed"))))
            .await
            .unwrap();
        let meta = Meta::new(crate::openai::Endpoint::Embeddings, "e");
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            whole(meta, vec![rx0, rx1], false),
        )
        .await
        .expect("not held by the slow batch 0");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(tx0.is_closed(), "batch 0 is told to stop");
    }

    #[test]
    fn a_named_function_ends_with_stop() {
        let mut p = JobParams {
            tool_choice: Some(r#"{"type":"function","function":{"name":"f"}}"#.into()),
            ..JobParams::default()
        };
        assert!(named_choice(&p));
        p.tool_choice = Some("required".into());
        assert!(!named_choice(&p));
    }
}
