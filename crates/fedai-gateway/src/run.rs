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
    /// Reserved for each job (none without a wallet, or with its budget spent).
    shares: Vec<Option<Reservation>>,
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
        // Sized for the widest vectors any worker embedding the model gives.
        let dims = ads
            .iter()
            .filter(|a| a.ad.takes_kind(fedai_protocol::kinds::EMBED_REQUEST))
            .flat_map(|a| &a.ad.models)
            .filter(|m| m.id == call.model)
            .map(|m| m.dimensions)
            .max()
            .unwrap_or(0);
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
    let plan = match plan(&g, &call, &ads) {
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
    for (share, request) in plan.shares.into_iter().zip(requests) {
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
        tokio::spawn(feed(g.clone(), jobs, permits));
    }
    if call.stream {
        stream(meta, call.include_usage, receivers.into_iter().next()).await
    } else {
        whole(meta, receivers, call.base64).await
    }
}

/// Start `jobs` in order, at most as many at once as `permits` (the gateway's job slots this
/// call holds until its last job ends). A job whose reader has gone (the app hung up, or an
/// earlier batch failed) is not started, and its budget share is given back.
async fn feed(
    g: Arc<Inner>,
    jobs: Vec<(Job, mpsc::Sender<Msg>)>,
    permits: Vec<OwnedSemaphorePermit>,
) {
    let window = Arc::new(tokio::sync::Semaphore::new(permits.len()));
    let mut running = Vec::new();
    for (mut job, tx) in jobs {
        let Ok(p) = window.clone().acquire_owned().await else {
            break;
        };
        if tx.is_closed() {
            release(&g, vec![job.share.take()]);
            continue;
        }
        job._permit = Some(p);
        running.push(tokio::spawn(job.drive(tx)));
    }
    for r in running {
        let _ = r.await;
    }
    drop(permits);
}

fn plan(g: &Inner, call: &Call, ads: &[ParsedCapabilityAd]) -> Result<Plan, ApiError> {
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
    let (shares, cap, pay) = reserve(g, call.n, per_job, attempts)?;
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
    Ok(Plan { opts, shares })
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
    let mut done = Vec::new();
    for mut rx in receivers {
        let end = loop {
            match rx.recv().await {
                Some(Msg::Delta(_) | Msg::Submitted(_)) => continue,
                Some(Msg::Done(r)) => break r,
                None => break Err(ApiError::upstream("the job ended without an answer")),
            }
        };
        match end {
            Ok((f, _)) => done.push(*f),
            Err(e) => return e.into_response(),
        }
    }
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
