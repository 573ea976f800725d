//! A job on the runner: stream, answer, meter, and settle or refund its payment.

use fedai_lightning::payment::worker::Escrow;

use super::*;

impl Worker {
    /// Say `processing`, then run the job on the runner until it ends, times out, or is stopped
    /// (cancelled by its customer, or the drain deadline passed).
    pub(super) async fn run_job(
        &self,
        parsed: &ParsedJobRequest,
        req: InferRequest,
        cancel_rx: &mut oneshot::Receiver<Stop>,
    ) -> Outcome {
        let i = &self.inner;
        let _running = InFlight::new(self);
        // `processing` goes out while the runner starts: its round trip to the relays (a
        // commit on a durable relay) no longer delays the first token. The first `partial`
        // and the end of the run wait for it, so the customer still sees it first.
        let announced = self.processing(parsed, None).map(|ev| {
            let (w, relays) = (self.clone(), parsed.request.relays.clone());
            tokio::spawn(async move { w.publish_replying(&relays, &ev).await })
        });
        let limit = i.cfg.job_timeout;
        let infer = tokio::time::timeout(limit, self.infer(parsed, req, announced));
        tokio::pin!(infer);
        // `processing` again every KEEPALIVE while the runner works: the customer's sign that
        // this worker is alive (it fails over on silence, fedai-01).
        let mut alive = keepalive_ticks();
        loop {
            tokio::select! {
                o = &mut infer => break o.unwrap_or_else(|_| {
                    Outcome::Failed(ErrorCode::Timeout, format!("no result within {}s", limit.as_secs()))
                }),
                // A dropped sender is not a stop signal: only an explicit `Stop` ends the job early.
                Ok(stop) = &mut *cancel_rx => break stop.outcome(),
                _ = alive.tick() => self.keepalive(parsed, None),
            }
        }
    }

    /// `processing` again (with `info`), published in the background: a slow relay must not
    /// hold up the runner's stream or a cancellation.
    pub(super) fn keepalive(&self, parsed: &ParsedJobRequest, info: Option<String>) {
        let Some(ev) = self.processing(parsed, info) else {
            return;
        };
        let (w, relays) = (self.clone(), parsed.request.relays.clone());
        tokio::spawn(async move { w.publish_replying(&relays, &ev).await });
    }

    /// A `processing` feedback for the job (with `info`), encrypted as its request was.
    fn processing(&self, parsed: &ParsedJobRequest, info: Option<String>) -> Option<Event> {
        let mut fb = JobFeedback::new(parsed.id, parsed.customer, FeedbackStatus::Processing);
        fb.info = info;
        fb.encrypted = parsed.encrypted;
        fb.to_event(&self.inner.cfg.keys).ok()
    }

    /// Run `req` on the runner, streaming partials when asked; `announced` is the `processing`
    /// publication to wait for before anything else about the job goes out.
    pub(super) async fn infer(
        &self,
        parsed: &ParsedJobRequest,
        req: InferRequest,
        mut announced: Option<tokio::task::JoinHandle<()>>,
    ) -> Outcome {
        let i = &self.inner;
        if let fedai_protocol::JobInput::Embed(texts) = &req.input {
            return self.embed(&req.model, texts, announced).await;
        }
        let t0 = Instant::now();
        // No token is this long: a runner that ignores `max_tokens` cannot grow our memory.
        let max_output = (req.max_tokens as usize).saturating_mul(MAX_BYTES_PER_TOKEN) + 4096;
        // Function calling runs on the runner's JSON Schema support (fedai_runners::tools).
        let mut req = req;
        let max_tokens = req.max_tokens;
        let tools = match fedai_runners::tools::prepare(&mut req) {
            Ok(plan) => plan,
            Err(e) => return Outcome::Failed(runner_error_code(&e), e.to_string()),
        };
        let mut stream = match i.runner.infer(req).await {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(runner_error_code(&e), e.to_string()),
        };
        // A tool answer's raw JSON is not text for the customer: only plain text streams.
        let stream_partials = parsed.request.params.stream
            && matches!(tools, None | Some(fedai_runners::tools::Plan::Text));
        let (mut output, mut pending, mut seq) = (String::new(), String::new(), 0u64);
        let mut last_flush = Instant::now();
        let mut first_token = None;
        let mut usage = None;
        let want_logprobs = parsed.request.params.logprobs;
        let top = usize::from(parsed.request.params.top_logprobs.unwrap_or(0));
        let mut logprobs = Vec::new();
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(Piece::Logprob(l)) if want_logprobs => {
                    // A runner sending more than max_tokens of them cannot grow our memory.
                    if logprobs.len() >= max_tokens as usize || l.top_logprobs.len() > top {
                        return Outcome::Failed(
                            ErrorCode::RunnerFailed,
                            "the runner sent more log probabilities than asked".into(),
                        );
                    }
                    logprobs.push(l);
                }
                Ok(Piece::Logprob(_)) => {}
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
                        // The first token goes out at once (time to first token is what a
                        // person waits on); later ones are batched.
                        if seq == 0
                            || last_flush.elapsed() >= PARTIAL_FLUSH
                            || pending.len() >= PARTIAL_MAX_BYTES
                        {
                            if let Some(h) = announced.take() {
                                let _ = h.await;
                            }
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
        if let Some(h) = announced.take() {
            let _ = h.await;
        }
        if stream_partials && !pending.is_empty() {
            self.partial(parsed, seq, pending).await;
        }
        if let (Some(plan), Some(_)) = (tools, usage) {
            output = match fedai_runners::tools::answer(plan, &parsed.input_data, &output) {
                Ok(a) => a.to_output(),
                Err(_) if usage.is_some_and(|u| u.output_tokens >= u64::from(max_tokens)) => {
                    return Outcome::Failed(
                        ErrorCode::RunnerFailed,
                        format!("the tool answer was cut at max_tokens ({max_tokens}) before it was complete"),
                    )
                }
                Err(e) => return Outcome::Failed(ErrorCode::RunnerFailed, e.to_string()),
            };
        }
        if want_logprobs && usage.is_some() {
            match fit_logprobs(&output, logprobs) {
                Some(logprobs) => {
                    output = fedai_protocol::JsonAnswer {
                        content: output,
                        tool_calls: Vec::new(),
                        logprobs,
                    }
                    .to_output()
                }
                None => {
                    return Outcome::Failed(
                        ErrorCode::RunnerFailed,
                        "the runner's token log probabilities do not make its text".into(),
                    )
                }
            }
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

    /// An embedding job: the runner's vectors as an [`fedai_protocol::EmbedAnswer`], metered by
    /// the tokens it read (it writes none). The runner checked the vectors' shape.
    async fn embed(
        &self,
        model: &str,
        texts: &[String],
        announced: Option<tokio::task::JoinHandle<()>>,
    ) -> Outcome {
        let t0 = Instant::now();
        let embedded = self.inner.runner.embed(model, texts).await;
        if let Some(h) = announced {
            let _ = h.await;
        }
        match embedded {
            Ok(e) => Outcome::Done {
                output: fedai_protocol::EmbedAnswer { vectors: e.vectors }.to_output(),
                usage: Usage {
                    input_tokens: e.input_tokens,
                    output_tokens: 0,
                },
                first_token: None,
                runner_time: t0.elapsed(),
            },
            Err(e) => Outcome::Failed(runner_error_code(&e), e.to_string()),
        }
    }

    pub(super) async fn partial(&self, parsed: &ParsedJobRequest, seq: u64, chunk: String) {
        let mut fb = JobFeedback::partial(parsed.id, parsed.customer, seq, chunk);
        fb.encrypted = parsed.encrypted;
        // Streamed chunks go to our relays only: the result, on the reply relays too, has all.
        if let Ok(ev) = fb.to_event(&self.inner.cfg.keys) {
            self.publish(&ev).await;
        }
    }

    pub(super) async fn deliver(
        &self,
        event: &Event,
        parsed: &ParsedJobRequest,
        done: Delivery,
        paid: Option<Escrow>,
    ) {
        let Delivery {
            model,
            output,
            usage,
            wall,
        } = done;
        let i = &self.inner;
        let bytes_out = output.len() as u64;
        // The result is built before a held payment is claimed: a job whose answer cannot be
        // built is refunded, never charged.
        let mut paid = paid;
        let (price, bolt11, mut payment_hash) = match &paid {
            Some(escrow) => (escrow.amount_msat(), None, None),
            None => self.invoice_after(parsed, &model, usage).await,
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
                let mut reason = format!("cannot build result: {e}");
                if let Some(escrow) = paid.as_mut() {
                    self.refund(escrow, &mut reason).await;
                }
                return self.refuse(parsed, ErrorCode::RunnerFailed, reason).await;
            }
        };
        // A result no relay would take is never paid for: refunded and refused instead.
        if result_ev.as_json().len() > MAX_RESULT_BYTES {
            let mut reason = format!(
                "the result would be over {} KiB, more than relays take",
                MAX_RESULT_BYTES / 1024
            );
            if let Some(escrow) = paid.as_mut() {
                self.refund(escrow, &mut reason).await;
            }
            return self.refuse(parsed, ErrorCode::RunnerFailed, reason).await;
        }
        if let Some(escrow) = paid.as_mut() {
            payment_hash = self.claim(parsed, escrow).await;
        }
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
            payment_hash: payment_hash.map(hex::encode),
        };
        self.publish_job(parsed, &result_ev).await;
        match record.to_event_for(parsed.request.kind(), &i.cfg.keys) {
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

    /// Pay-after: an invoice for the ad's price of the usage, sent with the result (its hash
    /// named in the metering record). Free jobs, and workers without a node, charge the price
    /// with no invoice.
    async fn invoice_after(
        &self,
        parsed: &ParsedJobRequest,
        model: &str,
        usage: Usage,
    ) -> (u64, Option<String>, Option<fedai_lightning::PaymentHash>) {
        let i = &self.inner;
        let cost = self
            .price_for(model)
            .cost_msat(usage.input_tokens, usage.output_tokens);
        let (Some(ln), PaymentMode::After, true) = (&i.ln, i.cfg.payment_mode, cost > 0) else {
            return (cost, None, None);
        };
        let memo = fedai_lightning::job_memo(&parsed.id.to_hex());
        match ln.add_invoice(cost, &memo, 3600).await {
            Ok(inv) => (cost, Some(inv.bolt11), Some(inv.payment_hash)),
            Err(e) => {
                tracing::warn!(request = %parsed.id, error = %e, "cannot create the invoice");
                (cost, None, None)
            }
        }
    }
}

/// The largest result event a worker publishes (fedai-relay takes 512 KiB).
const MAX_RESULT_BYTES: usize = 448 * 1024;

/// The tokens that make `text`, in order: a stop sequence's tokens, which the runner leaves out
/// of the text, are dropped; `None` when the tokens do not make the text (a customer checks
/// that they do).
fn fit_logprobs(
    text: &str,
    logprobs: Vec<fedai_protocol::TokenLogprob>,
) -> Option<Vec<fedai_protocol::TokenLogprob>> {
    let mut made = 0;
    let mut out = Vec::with_capacity(logprobs.len());
    for l in logprobs {
        if made == text.len() || !text[made..].starts_with(&l.token) {
            break;
        }
        made += l.token.len();
        out.push(l);
    }
    (made == text.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::fit_logprobs;
    use fedai_protocol::TokenLogprob;

    fn tokens(t: &[&str]) -> Vec<TokenLogprob> {
        t.iter()
            .map(|t| TokenLogprob {
                token: (*t).into(),
                logprob: -0.5,
                top_logprobs: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn log_probabilities_are_fitted_to_the_text() {
        let fit = |text: &str, t: &[&str]| fit_logprobs(text, tokens(t)).map(|v| v.len());
        assert_eq!(fit("Hello world", &["Hello", " world"]), Some(2));
        assert_eq!(
            fit("Hello", &["Hello", "\n\n"]),
            Some(1),
            "a stop sequence dropped"
        );
        assert_eq!(fit("Hello world", &["Hello"]), None, "text without tokens");
        assert_eq!(fit("Hello", &["Help"]), None);
        assert_eq!(fit("", &[]), Some(0));
    }
}
