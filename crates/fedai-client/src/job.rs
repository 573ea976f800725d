//! One job's life as a sans-IO state machine: events in, actions out.
//!
//! [`JobTracker`] decides everything about one published request — which answers count, the
//! order of streamed chunks, when to pay, when the result is complete, when the worker has gone
//! silent — without a relay, a clock or a wallet: the caller feeds it events
//! ([`JobTracker::on_event`]), payment outcomes ([`JobTracker::on_payment_ended`]) and the time
//! ([`JobTracker::on_wake`] at [`JobTracker::wake_at`]), and carries out the [`Action`]s it
//! returns. [`crate::FedaiClient`] drives it over nostr-sdk; the tests below drive it by hand.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fedai_protocol::metering::ParsedMetering;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::ParsedJobResult;
use fedai_protocol::{
    kinds, ErrorCode, FeedbackStatus, JobFeedback, JobResult, MeteringCheck, MeteringRecord,
    ParsedJobRequest,
};

use crate::{ClientError, JobUpdate};

/// Partial chunks held for reordering at most this far ahead of the next one expected.
const MAX_EARLY_CHUNKS: u64 = 1024;

/// Metering records kept while waiting for the result: a worker cannot grow the list without
/// bound (its own record comes right after its result).
const MAX_METERINGS: usize = 64;

/// Bytes of chunks held for reordering, at most: past it early chunks are dropped (the result
/// still arrives whole; the stream then does not match it).
const MAX_EARLY_BYTES: usize = 4 << 20;

/// Bytes one job may stream: past it the chosen worker has failed (a runner's answer is
/// bounded by `max_tokens`; this is far above any), and on an open job the stream stops.
pub const MAX_STREAM_BYTES: usize = 16 << 20;

/// How long a result waits for its metering record (published right after it).
const METERING_GRACE: Duration = Duration::from_secs(2);

/// How long a failed payment waits for the worker's own error, which is the better news.
const PAYMENT_FAILURE_GRACE: Duration = Duration::from_secs(2);

/// Tokens a chat template may add around the prompt (role markers, a default system prompt).
pub const TEMPLATE_TOKENS: u64 = 256;

/// Special tokens an embedder may add around each text (BOS, EOS, a separator, an
/// instruction prefix's few).
pub const EMBED_TEXT_TOKENS: usize = 8;

/// The most prompt tokens a worker may count for `request`, whose input data is `data_len`
/// bytes: a token covers at least one byte, plus a chat template's; a tools job adds its tool
/// list, the instructions around it and the JSON that earlier calls and outputs are written in
/// (`fedai_runners::tools`).
pub fn prompt_token_bound(data_len: usize, request: &fedai_protocol::JobRequest) -> u64 {
    use fedai_protocol::job::{TOOLS_GUIDE_BYTES, TOOL_TURN_BYTES};
    // Texts to embed: no template, a token a byte, and a few special tokens each.
    let texts = request.input.embed_texts();
    if !texts.is_empty() {
        let bytes: usize = texts.iter().map(String::len).sum();
        return (bytes + EMBED_TEXT_TOKENS * texts.len()) as u64;
    }
    let mut n = data_len + TEMPLATE_TOKENS as usize;
    let p = &request.params;
    if let Some(tools) = &p.tools {
        if p.tool_choice.as_deref() != Some("none") {
            n += tools.len() + TOOLS_GUIDE_BYTES;
        }
        n += TOOL_TURN_BYTES * request.input.tool_turns();
    }
    n as u64
}

/// What the caller must do.
#[derive(Debug)]
pub enum Action {
    /// Tell the customer.
    Update(JobUpdate),
    /// The chosen worker asks this invoice (a hold invoice: escrow) to be paid. Check it and
    /// pay within the caps, or end the job with the refusal.
    PayInvoice {
        /// The quoted amount, msat.
        amount_msat: u64,
        /// The invoice.
        bolt11: String,
    },
    /// The chosen worker takes only a zap (NIP-57) to this LNURL target.
    PayZap {
        /// The worker.
        worker: PublicKey,
        /// The quoted amount, msat.
        amount_msat: u64,
        /// Its lightning address or LNURL.
        target: String,
    },
    /// The job is over: the verified answer, or why not. The last action.
    Done(Result<Box<Answer>, ClientError>),
}

/// A result that passed the tracker's checks.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The result (decrypted when it was encrypted).
    pub result: ParsedJobResult,
    /// Its metering record and what its verification covered, when it came in time.
    pub metering: Option<(ParsedMetering, MeteringCheck)>,
    /// From publication to the first token (or to the result).
    pub first_token: Duration,
    /// Whether what was streamed is the start of the verified output.
    pub stream_matched: bool,
}

/// Whether `m` is the metering record of `r`: it names it and its worker signed it (anyone can
/// publish a record naming a result; only the worker's counts).
fn meters(m: &ParsedMetering, r: &ParsedJobResult) -> bool {
    m.record.result_id == r.id && m.worker == r.worker
}

/// The state of one published request.
#[derive(Debug)]
pub struct JobTracker {
    request: ParsedJobRequest,
    /// Decrypts answers to a private request.
    keys: Keys,
    /// The only worker that may answer (directed or awarded jobs); `None`: an open job.
    worker: Option<PublicKey>,
    /// Fail over on silence: `(ack, stall)`.
    liveness: Option<(Duration, Duration)>,
    sent_at: Instant,
    deadline: Instant,
    timeout: Duration,
    /// The reorder buffer of streamed chunks.
    next_seq: u64,
    early: BTreeMap<u64, String>,
    early_bytes: usize,
    /// On an open job the first worker to stream is the only one whose chunks are shown.
    streamer: Option<PublicKey>,
    streamed: String,
    first_token: Option<Duration>,
    processing_seen: bool,
    result: Option<ParsedJobResult>,
    metering_deadline: Option<Instant>,
    meterings: Vec<ParsedMetering>,
    /// An embedding job: the vector length the chosen worker's ad gives its model.
    dimensions: Option<u32>,
    /// A payment was asked for (once per request).
    paying: bool,
    /// A payment that failed: reported unless the worker's own error comes within a grace
    /// period (a failed job cancels its hold invoice, and the worker's reason is the news).
    payment_failed: Option<ClientError>,
    /// On an open job, the first error feedback: anyone can send one, so it ends nothing — it
    /// is the answer at the deadline if no result came.
    open_error: Option<ClientError>,
    /// When the chosen worker was last heard from (at first: when it was asked).
    heard: Instant,
    acked: bool,
    done: bool,
}

impl JobTracker {
    /// Follow `request` (published at `now`) until `worker`'s result (any worker's, when
    /// `None`), its error, or `timeout`.
    pub fn new(
        request: ParsedJobRequest,
        keys: Keys,
        worker: Option<PublicKey>,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        Self {
            request,
            keys,
            worker,
            liveness: None,
            sent_at: now,
            deadline: now + timeout,
            timeout,
            next_seq: 0,
            early: BTreeMap::new(),
            early_bytes: 0,
            streamer: worker,
            streamed: String::new(),
            first_token: None,
            processing_seen: false,
            result: None,
            metering_deadline: None,
            meterings: Vec::new(),
            dimensions: None,
            paying: false,
            payment_failed: None,
            open_error: None,
            heard: now,
            acked: false,
            done: false,
        }
    }

    /// Fail over when the chosen worker does not acknowledge within `ack`, or then shows no
    /// sign of life for `stall` (directed jobs; an auction waits for the deadline).
    pub fn with_liveness(mut self, ack: Duration, stall: Duration) -> Self {
        self.liveness = Some((ack, stall));
        self
    }

    /// An embedding job: refuse vectors of another length than `dimensions` (the chosen
    /// worker's ad; 0 or `None`: unchecked).
    pub fn with_dimensions(mut self, dimensions: Option<u32>) -> Self {
        self.dimensions = dimensions;
        self
    }

    /// The request followed.
    pub fn request(&self) -> &ParsedJobRequest {
        &self.request
    }

    /// When it was published.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }

    /// Whether [`Action::Done`] was returned.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Follow the same request again, now awarded to `worker` (an auction's next winner).
    /// Its first token and total time still count from the request's publication.
    pub fn reassign(&mut self, worker: PublicKey, now: Instant) {
        let sent_at = self.sent_at;
        *self = Self {
            liveness: self.liveness,
            sent_at,
            ..Self::new(
                self.request.clone(),
                self.keys.clone(),
                Some(worker),
                self.timeout,
                now,
            )
        };
    }

    /// When the chosen worker counts as silent, if it can.
    fn silent_at(&self) -> Option<Instant> {
        match (self.liveness, self.worker, &self.result) {
            (Some((ack, stall)), Some(_), None) => {
                Some(self.heard + if self.acked { stall } else { ack })
            }
            _ => None,
        }
    }

    /// When to call [`on_wake`](Self::on_wake) if nothing arrives before.
    pub fn wake_at(&self) -> Instant {
        let mut at = self.deadline;
        if let Some(m) = self.metering_deadline {
            at = at.min(m);
        }
        if let Some(s) = self.silent_at() {
            at = at.min(s);
        }
        at
    }

    /// The time has come: a result without metering is taken as it is, a failed payment
    /// reported, a silent worker or the deadline ends the job.
    pub fn on_wake(&mut self, now: Instant) -> Vec<Action> {
        if self.done || now < self.wake_at() {
            return Vec::new();
        }
        if let Some(r) = self.result.take() {
            return self.finish(r, now);
        }
        if let Some(e) = self.payment_failed.take() {
            return self.fail(e);
        }
        if self.silent_at().is_some_and(|s| s <= now) {
            let (ack, stall) = self.liveness.unwrap_or_default();
            let why = if self.acked {
                format!("no sign of progress for {stall:?}")
            } else {
                format!("no acknowledgement within {ack:?}")
            };
            return self.fail(ClientError::Silent(why));
        }
        if let Some(e) = self.open_error.take() {
            return self.fail(e);
        }
        self.fail(ClientError::Timeout(self.timeout))
    }

    /// A payment asked for ended (`Err`: why it failed). The worker may have waited for it (a
    /// zap's receipt comes after it): it gets a full window from now.
    pub fn on_payment_ended(&mut self, r: Result<(), ClientError>, now: Instant) {
        self.heard = now;
        if let Err(e) = r {
            self.payment_failed = Some(e);
            self.deadline = self.deadline.min(now + PAYMENT_FAILURE_GRACE);
        }
    }

    fn fail(&mut self, e: ClientError) -> Vec<Action> {
        self.done = true;
        vec![Action::Done(Err(e))]
    }

    /// An event from a relay (any: the tracker takes only what answers its request).
    pub fn on_event(&mut self, ev: &Event, now: Instant) -> Vec<Action> {
        if self.done {
            return Vec::new();
        }
        let request_id = self.request.id;
        // Only the worker we chose may answer a directed or awarded job.
        if self.worker.is_some_and(|w| w != ev.pubkey) {
            return Vec::new();
        }
        let chosen = self.worker.is_some();
        if chosen && ev.tags.event_ids().any(|id| id == request_id) {
            self.heard = now;
            self.acked = true;
        }
        match ev.kind.as_u16() {
            kinds::JOB_FEEDBACK => self.on_feedback(ev, now),
            k if k == kinds::result_of(self.request.request.kind()) && self.result.is_none() => {
                self.on_result(ev, now)
            }
            kinds::METERING => self.on_metering(ev, now),
            _ => Vec::new(),
        }
    }

    fn on_feedback(&mut self, ev: &Event, now: Instant) -> Vec<Action> {
        let Ok(fb) = JobFeedback::from_event(ev, Some(&self.keys)) else {
            return Vec::new();
        };
        if fb.request_id != self.request.id {
            return Vec::new();
        }
        let chosen = self.worker.is_some();
        let mut out = Vec::new();
        match fb.status {
            FeedbackStatus::Processing if !self.processing_seen => {
                self.processing_seen = true;
                out.push(Action::Update(JobUpdate::Processing(ev.pubkey)));
            }
            FeedbackStatus::Partial => {
                if *self.streamer.get_or_insert(ev.pubkey) != ev.pubkey {
                    return out; // another worker's chunks on an open job
                }
                let sent_at = self.sent_at;
                self.first_token.get_or_insert_with(|| now - sent_at);
                // A bounded reorder buffer: a worker cannot grow it without limit.
                let next = self.next_seq;
                let fits = self.early_bytes + fb.content.len() <= MAX_EARLY_BYTES;
                if let Some(seq) = fb
                    .seq
                    .filter(|s| *s >= next && *s < next + MAX_EARLY_CHUNKS && fits)
                {
                    self.early_bytes += fb.content.len();
                    if let Some(old) = self.early.insert(seq, fb.content) {
                        self.early_bytes -= old.len();
                    }
                    while let Some(chunk) = self.early.remove(&self.next_seq) {
                        self.early_bytes -= chunk.len();
                        if self.streamed.len() + chunk.len() > MAX_STREAM_BYTES {
                            if chosen {
                                return self.fail(ClientError::InvalidResult(format!(
                                    "the worker streamed more than {MAX_STREAM_BYTES} bytes"
                                )));
                            }
                            // An open job's stream stops; its result may still come.
                            self.early.clear();
                            self.early_bytes = 0;
                            break;
                        }
                        self.streamed.push_str(&chunk);
                        out.push(Action::Update(JobUpdate::Partial(chunk)));
                        self.next_seq += 1;
                    }
                }
            }
            FeedbackStatus::PaymentRequired if chosen && self.result.is_none() && !self.paying => {
                let Some(amount) = fb.amount else {
                    return out;
                };
                // An invoice (escrow) first; a zap only where it is all that is offered; a bare
                // quote (an auction's) asks nothing yet.
                match (amount.bolt11, fb.zap) {
                    (Some(bolt11), _) => out.push(Action::PayInvoice {
                        amount_msat: amount.msat,
                        bolt11,
                    }),
                    (None, Some(target)) => out.push(Action::PayZap {
                        worker: ev.pubkey,
                        amount_msat: amount.msat,
                        target,
                    }),
                    (None, None) => return out,
                }
                self.paying = true;
                out.push(Action::Update(JobUpdate::Paying(amount.msat)));
            }
            FeedbackStatus::Error if self.result.is_none() => {
                let e = ClientError::Job {
                    code: fb.code.unwrap_or(ErrorCode::Other("unknown".into())),
                    reason: fb.info.unwrap_or_default(),
                };
                if chosen {
                    return self.fail(e);
                }
                self.open_error.get_or_insert(e);
            }
            _ => {}
        }
        out
    }

    fn on_result(&mut self, ev: &Event, now: Instant) -> Vec<Action> {
        let chosen = self.worker.is_some();
        let request_id = self.request.id;
        let r = match JobResult::from_event(ev, Some(&self.keys)) {
            Ok(r) => r,
            // From the worker we chose, an unreadable result is a failure to act on now; from
            // anyone else on an open job it is noise.
            Err(e) if chosen && ev.tags.event_ids().any(|id| id == request_id) => {
                return self.fail(ClientError::InvalidResult(e.to_string()));
            }
            Err(_) => {
                tracing::warn!(id = %ev.id, "ignoring an invalid result");
                return Vec::new();
            }
        };
        if r.request_id() != request_id {
            return Vec::new();
        }
        // A worker chosen from fed_AI ads answers as fed_AI (marker, usage, model): a bare
        // NIP-90 result from it would carry no usage to check.
        if chosen && !kinds::has_fedai_marker(&ev.tags) {
            return self.fail(ClientError::InvalidResult(
                "a result without fed_AI's usage and model".into(),
            ));
        }
        let sent_at = self.sent_at;
        self.first_token.get_or_insert_with(|| now - sent_at);
        if self.meterings.iter().any(|m| meters(m, &r)) {
            return self.finish(r, now);
        }
        // Give the metering record a moment to arrive (it is published right after).
        self.metering_deadline = Some(now + METERING_GRACE);
        self.result = Some(r);
        Vec::new()
    }

    fn on_metering(&mut self, ev: &Event, now: Instant) -> Vec<Action> {
        let Ok(m) = MeteringRecord::from_event(ev) else {
            return Vec::new();
        };
        let completes = self.result.as_ref().is_some_and(|r| meters(&m, r));
        if self.meterings.len() < MAX_METERINGS || completes {
            self.meterings.push(m);
        }
        match self.result.take() {
            Some(r) if completes => self.finish(r, now),
            r => {
                self.result = r;
                Vec::new()
            }
        }
    }

    /// The result, checked: its metering record (when one came) verified against it and the
    /// request, and the usage it claims bounded by what the customer can see.
    fn finish(&mut self, result: ParsedJobResult, now: Instant) -> Vec<Action> {
        self.done = true;
        vec![Action::Done(self.verify(result, now).map(Box::new))]
    }

    fn verify(&mut self, result: ParsedJobResult, now: Instant) -> Result<Answer, ClientError> {
        // On an open job, a result from another worker than the one that streamed is taken,
        // and the stream is then not what was signed.
        let from_other = self.streamer.is_some_and(|s| s != result.worker);
        // What was streamed must be the start of the verified result (chunks may have been
        // missed, never altered); otherwise the shown text is not what was signed.
        // A tools or logprobs job's answer is a JSON answer, held to the request before
        // anything is paid or shown; its text is what may have streamed.
        let tool_answer = match self.request.request.params.json_answer() {
            true if !result.output_sealed => Some(
                fedai_protocol::JsonAnswer::for_request(
                    &result.result.output,
                    &self.request.request.params,
                )
                .map_err(|e| ClientError::InvalidResult(e.to_string()))?,
            ),
            _ => None,
        };
        // An embedding job's answer is one vector per text, and it writes no tokens.
        if self.request.request.kind() == kinds::EMBED_REQUEST {
            if result.result.usage.output_tokens != 0 {
                return Err(ClientError::InvalidResult(format!(
                    "an embedding job writes no tokens; the result claims {}",
                    result.result.usage.output_tokens
                )));
            }
            if !result.output_sealed {
                let a = fedai_protocol::EmbedAnswer::for_request(
                    &result.result.output,
                    &self.request.request.input,
                )
                .map_err(|e| ClientError::InvalidResult(e.to_string()))?;
                // As wide as the worker's ad said (jobs were sized by it).
                if let Some(d) = self.dimensions.filter(|d| *d > 0) {
                    if a.dimensions() != d as usize {
                        return Err(ClientError::InvalidResult(format!(
                            "vectors of {} dimensions from a model advertised with {d}",
                            a.dimensions()
                        )));
                    }
                }
            }
        }
        let signed_text = tool_answer
            .as_ref()
            .map_or(result.result.output.as_str(), |a| a.content.as_str());
        let stream_matched = !from_other && signed_text.starts_with(&self.streamed);
        let metering = match std::mem::take(&mut self.meterings)
            .into_iter()
            .find(|m| meters(m, &result))
        {
            Some(m) => {
                let check = m
                    .verify(&result, &self.request)
                    .map_err(|e| ClientError::InvalidResult(format!("metering: {e}")))?;
                Some((m, check))
            }
            None => None,
        };
        // The worker's own counts, checked against what the customer can see: a prompt of N
        // bytes cannot take more than N tokens (plus a chat template's).
        let usage = result.result.usage;
        let in_bound = prompt_token_bound(self.request.input_data.len(), &self.request.request);
        if usage.input_tokens > in_bound {
            return Err(ClientError::InvalidResult(format!(
                "metering claims {} input tokens for a prompt of at most {in_bound}",
                usage.input_tokens
            )));
        }
        Ok(Answer {
            first_token: self.first_token.unwrap_or(now - self.sent_at),
            result,
            metering,
            stream_matched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::{Amount, JobFeedback, JobRequest, MeteringRecord, Usage};

    /// A customer, a worker, a published request and a tracker following it.
    struct Job {
        customer: Keys,
        worker: Keys,
        request: Event,
        parsed: ParsedJobRequest,
        t0: Instant,
        tracker: JobTracker,
    }

    const TIMEOUT: Duration = Duration::from_secs(60);
    const ACK: Duration = Duration::from_secs(5);
    const STALL: Duration = Duration::from_secs(30);

    fn job() -> Job {
        job_with(JobRequest::chat("Why is the sky blue?"))
    }

    fn job_with(mut req: JobRequest) -> Job {
        let (customer, worker) = (Keys::generate(), Keys::generate());
        req.provider = Some(worker.public_key());
        let request = req.to_event(&customer, None).unwrap();
        let parsed = JobRequest::from_event(&request, None).unwrap();
        let t0 = Instant::now();
        let tracker = JobTracker::new(
            parsed.clone(),
            customer.clone(),
            Some(worker.public_key()),
            TIMEOUT,
            t0,
        )
        .with_liveness(ACK, STALL);
        Job {
            customer,
            worker,
            request,
            parsed,
            t0,
            tracker,
        }
    }

    impl Job {
        fn at(&self, secs: f64) -> Instant {
            self.t0 + Duration::from_secs_f64(secs)
        }
        fn feedback(&self, fb: JobFeedback) -> Event {
            fb.to_event(&self.worker).unwrap()
        }
        fn status(&self, s: FeedbackStatus) -> Event {
            self.feedback(JobFeedback::new(
                self.request.id,
                self.customer.public_key(),
                s,
            ))
        }
        fn partial(&self, seq: u64, chunk: &str) -> Event {
            self.feedback(JobFeedback::partial(
                self.request.id,
                self.customer.public_key(),
                seq,
                chunk.into(),
            ))
        }
        fn result_by(&self, keys: &Keys, output: &str, input_tokens: u64) -> Event {
            let usage = Usage {
                input_tokens,
                output_tokens: 3,
            };
            let mut r = JobResult::for_request(
                &self.request,
                &self.parsed,
                output.into(),
                "smollm2".into(),
                usage,
            );
            r.amount = None;
            r.to_event(keys).unwrap()
        }
        fn result(&self, output: &str) -> Event {
            self.result_by(&self.worker, output, 12)
        }
        fn metering(&self, result: &Event, output: &str) -> Event {
            MeteringRecord {
                request_id: self.request.id,
                result_id: result.id,
                customer: self.customer.public_key(),
                model: "smollm2".into(),
                prompt_sha256: self.parsed.prompt_sha256(),
                usage: Usage {
                    input_tokens: 12,
                    output_tokens: 3,
                },
                wall_ms: 40,
                bytes_in: self.parsed.input_data.len() as u64,
                bytes_out: output.len() as u64,
                price_msat: 0,
                payment_hash: None,
            }
            .to_event(&self.worker)
            .unwrap()
        }
        /// `error` feedback on the job, signed by `keys`.
        fn error_by(&self, keys: &Keys, reason: &str) -> Event {
            JobFeedback::error(
                self.request.id,
                self.customer.public_key(),
                ErrorCode::RunnerFailed,
                reason,
            )
            .to_event(keys)
            .unwrap()
        }
        fn feed(&mut self, ev: &Event, secs: f64) -> Vec<Action> {
            let now = self.at(secs);
            self.tracker.on_event(ev, now)
        }
    }

    fn updates(actions: &[Action]) -> Vec<JobUpdate> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Update(u) => Some(u.clone()),
                _ => None,
            })
            .collect()
    }

    fn done(actions: Vec<Action>) -> Result<Box<Answer>, ClientError> {
        match actions.into_iter().last() {
            Some(Action::Done(r)) => r,
            other => panic!("expected the end of the job, got {other:?}"),
        }
    }

    #[test]
    fn streams_in_order_and_ends_with_the_metered_result() {
        let mut j = job();
        let ev = j.status(FeedbackStatus::Processing);
        let a = j.feed(&ev, 0.1);
        assert_eq!(updates(&a), [JobUpdate::Processing(j.worker.public_key())]);
        // Chunk 1 before chunk 0: held, then both delivered in order.
        let (c1, c0) = (j.partial(1, " sky"), j.partial(0, "Blue"));
        assert!(updates(&j.feed(&c1, 0.2)).is_empty());
        assert_eq!(
            updates(&j.feed(&c0, 0.3)),
            [
                JobUpdate::Partial("Blue".into()),
                JobUpdate::Partial(" sky".into())
            ]
        );
        let result = j.result("Blue sky!");
        assert!(j.feed(&result, 0.5).is_empty(), "waits for the metering");
        let metering = j.metering(&result, "Blue sky!");
        let answer = done(j.feed(&metering, 0.6)).unwrap();
        assert!(answer.stream_matched);
        assert!(answer.metering.is_some());
        assert_eq!(answer.first_token, Duration::from_secs_f64(0.2));
        assert!(j.tracker.is_done());
        assert!(j.feed(&metering, 0.7).is_empty(), "nothing after the end");
    }

    #[test]
    fn metering_first_then_result_ends_at_once() {
        let mut j = job();
        let result = j.result("Blue.");
        let metering = j.metering(&result, "Blue.");
        assert!(j.feed(&metering, 0.1).is_empty());
        assert!(done(j.feed(&result, 0.2)).unwrap().metering.is_some());
    }

    #[test]
    fn a_result_without_metering_is_taken_after_the_grace() {
        let mut j = job();
        let result = j.result("Blue.");
        assert!(j.feed(&result, 1.0).is_empty());
        assert_eq!(j.tracker.wake_at(), j.at(1.0) + METERING_GRACE);
        assert!(j.tracker.on_wake(j.at(2.0)).is_empty(), "too early");
        let answer = done(j.tracker.on_wake(j.at(3.0))).unwrap();
        assert!(answer.metering.is_none());
    }

    #[test]
    fn another_workers_events_are_ignored_on_a_directed_job() {
        let mut j = job();
        let stranger = Keys::generate();
        let fake = j.result_by(&stranger, "forged", 12);
        assert!(j.feed(&fake, 0.1).is_empty());
        let err = JobFeedback::error(
            j.request.id,
            j.customer.public_key(),
            ErrorCode::Other("x".into()),
            "no",
        )
        .to_event(&stranger)
        .unwrap();
        assert!(j.feed(&err, 0.2).is_empty());
        assert!(!j.tracker.is_done());
    }

    #[test]
    fn the_workers_error_ends_the_job_with_its_code() {
        let mut j = job();
        let ev = j.feedback(JobFeedback::error(
            j.request.id,
            j.customer.public_key(),
            ErrorCode::Capacity,
            "busy",
        ));
        match done(j.feed(&ev, 0.1)) {
            Err(ClientError::Job { code, reason }) => {
                assert_eq!(code, ErrorCode::Capacity);
                assert_eq!(reason, "busy");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunks_too_far_ahead_are_dropped_and_the_stream_then_does_not_match() {
        let mut j = job();
        let far = j.partial(MAX_EARLY_CHUNKS, "junk");
        assert!(j.feed(&far, 0.1).is_empty());
        assert!(
            j.tracker.early.is_empty(),
            "the reorder buffer stays bounded"
        );
        let wrong = j.partial(0, "Not what was signed");
        j.feed(&wrong, 0.2);
        let result = j.result("Blue.");
        j.feed(&result, 0.3);
        let metering = j.metering(&result, "Blue.");
        assert!(!done(j.feed(&metering, 0.4)).unwrap().stream_matched);
    }

    #[test]
    fn pays_an_invoice_once_and_announces_it() {
        let mut j = job();
        let ask = |bolt11: &str| {
            JobFeedback::payment_required(
                j.request.id,
                j.customer.public_key(),
                Amount {
                    msat: 5_000,
                    bolt11: Some(bolt11.into()),
                },
            )
        };
        let (first, second) = (
            j.feedback(ask("lnbc1first")),
            j.feedback(ask("lnbc1second")),
        );
        let a = j.feed(&first, 0.1);
        assert!(matches!(
            &a[..],
            [
                Action::PayInvoice { amount_msat: 5_000, bolt11 },
                Action::Update(JobUpdate::Paying(5_000))
            ] if bolt11 == "lnbc1first"
        ));
        assert!(j.feed(&second, 0.2).is_empty(), "pays once per request");
    }

    #[test]
    fn a_failed_payment_is_reported_unless_the_workers_error_comes_first() {
        let mut j = job();
        j.tracker
            .on_payment_ended(Err(ClientError::Payment("no route".into())), j.at(1.0));
        assert_eq!(j.tracker.wake_at(), j.at(1.0) + PAYMENT_FAILURE_GRACE);
        assert!(matches!(
            done(j.tracker.on_wake(j.at(3.0))),
            Err(ClientError::Payment(_))
        ));

        let mut j = job();
        j.tracker
            .on_payment_ended(Err(ClientError::Payment("no route".into())), j.at(1.0));
        let ev = j.feedback(JobFeedback::error(
            j.request.id,
            j.customer.public_key(),
            ErrorCode::PaymentFailed,
            "hold invoice cancelled",
        ));
        assert!(matches!(
            done(j.feed(&ev, 1.5)),
            Err(ClientError::Job { .. })
        ));
    }

    #[test]
    fn a_silent_worker_fails_over_at_the_ack_then_the_stall_window() {
        let mut j = job();
        assert_eq!(j.tracker.wake_at(), j.at(0.0) + ACK);
        assert!(matches!(
            done(j.tracker.on_wake(j.at(5.0))),
            Err(ClientError::Silent(why)) if why.contains("acknowledgement")
        ));

        let mut j = job();
        let ev = j.status(FeedbackStatus::Processing);
        j.feed(&ev, 1.0);
        assert_eq!(j.tracker.wake_at(), j.at(1.0) + STALL);
        assert!(matches!(
            done(j.tracker.on_wake(j.at(31.0))),
            Err(ClientError::Silent(why)) if why.contains("progress")
        ));
    }

    #[test]
    fn an_open_job_waits_for_the_deadline() {
        let (customer, t0) = (Keys::generate(), Instant::now());
        let request = JobRequest::chat("hi").to_event(&customer, None).unwrap();
        let parsed = JobRequest::from_event(&request, None).unwrap();
        let mut t = JobTracker::new(parsed, customer, None, TIMEOUT, t0).with_liveness(ACK, STALL);
        assert_eq!(t.wake_at(), t0 + TIMEOUT, "no silence on an open job");
        assert!(matches!(
            done(t.on_wake(t0 + TIMEOUT)),
            Err(ClientError::Timeout(_))
        ));
    }

    #[test]
    fn usage_beyond_what_the_prompt_can_hold_is_refused() {
        let mut j = job();
        let inflated = j.result_by(&j.worker.clone(), "Blue.", 1_000_000);
        j.feed(&inflated, 0.1);
        assert!(matches!(
            done(j.tracker.on_wake(j.at(3.0))),
            Err(ClientError::InvalidResult(why)) if why.contains("input tokens")
        ));
    }

    #[test]
    fn a_tools_answer_is_held_to_its_request_before_it_is_taken() {
        let mut req = JobRequest::chat("Weather in Paris?");
        req.params.tools =
            Some(r#"[{"type":"function","function":{"name":"get_weather"}}]"#.into());
        req.params.tool_choice = Some("required".into());
        let call = |name: &str| {
            format!(
                r#"{{"tool_calls":[{{"id":"c0","type":"function","function":{{"name":"{name}","arguments":"{{}}"}}}}]}}"#
            )
        };
        for (output, ok) in [
            (call("get_weather"), true),
            (call("transfer_funds"), false),
            (r#"{"content":"Sunny."}"#.to_owned(), false),
            ("Sunny.".to_owned(), false),
        ] {
            let mut j = job_with(req.clone());
            let result = j.result(&output);
            j.feed(&result, 0.1);
            let end = done(j.tracker.on_wake(j.at(3.0)));
            match ok {
                true => assert!(end.is_ok(), "{output}: {end:?}"),
                false => assert!(
                    matches!(&end, Err(ClientError::InvalidResult(why)) if why.contains("answer: ")),
                    "{output}: {end:?}"
                ),
            }
        }
    }

    #[test]
    fn an_embedding_answer_is_held_to_its_request_before_it_is_taken() {
        let req = JobRequest::embed(["a cat", "a dog"]);
        let two = fedai_protocol::EmbedAnswer {
            vectors: vec![vec![0.5, 0.5], vec![0.1, 0.9]],
        };
        let one = fedai_protocol::EmbedAnswer {
            vectors: vec![vec![0.5, 0.5]],
        };
        for (output, written, ok) in [
            (two.to_output(), 0, true),
            (one.to_output(), 0, false),
            ("[0.5, 0.5]".to_owned(), 0, false),
            // Billed for tokens an embedder never writes.
            (two.to_output(), 500, false),
        ] {
            let mut j = job_with(req.clone());
            assert_eq!(j.request.kind.as_u16(), kinds::EMBED_REQUEST);
            let usage = Usage {
                input_tokens: 4,
                output_tokens: written,
            };
            let r =
                JobResult::for_request(&j.request, &j.parsed, output.clone(), "e".into(), usage)
                    .to_event(&j.worker)
                    .unwrap();
            assert_eq!(r.kind.as_u16(), kinds::EMBED_RESULT);
            j.feed(&r, 0.1);
            let end = done(j.tracker.on_wake(j.at(3.0)));
            match ok {
                true => assert!(end.is_ok(), "{output}: {end:?}"),
                false => assert!(
                    matches!(&end, Err(ClientError::InvalidResult(_))),
                    "{output} ({written} written): {end:?}"
                ),
            }
        }
        // Vectors narrower (or wider) than the chosen worker's ad said: refused too.
        let mut j = job_with(req.clone());
        j.tracker = JobTracker::new(
            j.parsed.clone(),
            j.customer.clone(),
            Some(j.worker.public_key()),
            TIMEOUT,
            j.t0,
        )
        .with_dimensions(Some(768));
        let usage = Usage {
            input_tokens: 4,
            output_tokens: 0,
        };
        let r = JobResult::for_request(&j.request, &j.parsed, two.to_output(), "e".into(), usage)
            .to_event(&j.worker)
            .unwrap();
        j.feed(&r, 0.1);
        let end = done(j.tracker.on_wake(j.at(3.0)));
        assert!(
            matches!(&end, Err(ClientError::InvalidResult(why)) if why.contains("768")),
            "{end:?}"
        );
        // The input allowance is the texts' bytes and a few tokens each, no chat template.
        assert_eq!(
            prompt_token_bound(0, &req),
            (5 + 5 + 2 * EMBED_TEXT_TOKENS) as u64
        );
    }

    #[test]
    fn a_bare_nip90_result_from_the_chosen_worker_is_invalid() {
        let mut j = job();
        let bare = EventBuilder::new(Kind::from_u16(kinds::JOB_RESULT), "Blue.")
            .tags([
                Tag::event(j.request.id),
                Tag::public_key(j.customer.public_key()),
                Tag::parse(["request".to_owned(), j.request.as_json()]).unwrap(),
            ])
            .finalize(&j.worker)
            .unwrap();
        assert!(matches!(
            done(j.feed(&bare, 0.1)),
            Err(ClientError::InvalidResult(_))
        ));
    }

    /// An open job (no chosen worker) with an honest worker and a stranger on the relay.
    fn open_job() -> Job {
        let mut j = job();
        j.tracker = JobTracker::new(j.parsed.clone(), j.customer.clone(), None, TIMEOUT, j.t0);
        j
    }

    #[test]
    fn on_an_open_job_a_strangers_error_or_metering_ends_nothing() {
        let mut j = open_job();
        let stranger = Keys::generate();
        let err = j.error_by(&stranger, "go away");
        assert!(j.feed(&err, 0.1).is_empty(), "anyone may send an error");
        let result = j.result("Blue.");
        assert!(j.feed(&result, 0.2).is_empty());
        // A record naming the result, signed by someone else, is not its metering.
        let forged = MeteringRecord {
            request_id: j.request.id,
            result_id: result.id,
            customer: j.customer.public_key(),
            model: "smollm2".into(),
            prompt_sha256: j.parsed.prompt_sha256(),
            usage: Usage::default(),
            wall_ms: 1,
            bytes_in: 0,
            bytes_out: 0,
            price_msat: 0,
            payment_hash: None,
        }
        .to_event(&stranger)
        .unwrap();
        assert!(j.feed(&forged, 0.3).is_empty());
        let metering = j.metering(&result, "Blue.");
        let answer = done(j.feed(&metering, 0.4)).unwrap();
        assert_eq!(answer.metering.unwrap().0.worker, j.worker.public_key());

        // With no result by the deadline, the error heard is the answer.
        let mut j = open_job();
        let err = j.error_by(&stranger, "go away");
        assert!(j.feed(&err, 0.1).is_empty());
        assert!(matches!(
            done(j.tracker.on_wake(j.at(60.0))),
            Err(ClientError::Job { reason, .. }) if reason == "go away"
        ));
    }

    #[test]
    fn a_worker_cannot_stream_without_bound() {
        let mut j = job();
        let chunk = "x".repeat(1 << 20);
        let mut ended = None;
        for seq in 0..40u64 {
            let ev = j.partial(seq, &chunk);
            if let Some(Action::Done(r)) = j.feed(&ev, 0.1 + seq as f64 / 1000.0).pop() {
                ended = Some((seq, r));
                break;
            }
        }
        let (seq, r) = ended.expect("the stream was cut");
        assert_eq!(seq as usize, MAX_STREAM_BYTES / chunk.len());
        assert!(matches!(r, Err(ClientError::InvalidResult(_))));
        // Early chunks are bounded in bytes too.
        let mut j = job();
        for seq in 1..7u64 {
            let ev = j.partial(seq, &chunk);
            j.feed(&ev, 0.1);
        }
        assert!(j.tracker.early_bytes <= MAX_EARLY_BYTES);
    }

    #[test]
    fn an_auction_reassigned_keeps_the_publication_time() {
        let mut j = job();
        let next = Keys::generate();
        j.tracker.reassign(next.public_key(), j.at(10.0));
        assert_eq!(j.tracker.sent_at(), j.t0);
        let old = j.status(FeedbackStatus::Processing);
        assert!(
            j.feed(&old, 10.5).is_empty(),
            "the previous winner no longer counts"
        );
    }

    #[test]
    fn a_tools_job_may_count_its_tool_list_as_prompt() {
        let plain = fedai_protocol::JobRequest::chat("Weather in Paris?");
        let mut tools = plain.clone();
        let list = r#"[{"type":"function","function":{"name":"get_weather"}}]"#;
        tools.params.tools = Some(list.into());
        let n = plain.input.data().len();
        assert_eq!(prompt_token_bound(n, &plain), n as u64 + TEMPLATE_TOKENS);
        // The worker lists the tools in the system message and instructs the model: a metering
        // record counting them is honest, not an overcharge.
        assert_eq!(
            prompt_token_bound(n, &tools),
            (n + list.len() + fedai_protocol::job::TOOLS_GUIDE_BYTES) as u64 + TEMPLATE_TOKENS
        );
        // Answering in text lists nothing: no allowance for the list.
        tools.params.tool_choice = Some("none".into());
        assert_eq!(prompt_token_bound(n, &tools), n as u64 + TEMPLATE_TOKENS);
    }
}
