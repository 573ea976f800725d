//! Pay-before: the offer (a hold invoice on our node, a zap to our lightning address, or both)
//! and its escrow. The decisions are [`Escrow`]'s, a sans-IO state machine in
//! `fedai-lightning`; this file only drives it — feeds it what our node, the relays and the
//! clock report, and does what it answers.

use fedai_lightning::payment::worker::{Action, Escrow, Input, State};

use super::*;

/// The hold invoice on our node for a job: its hash and preimage, and its BOLT11 when it was
/// created now (one found again after a restart is not sent twice).
type Hold = (
    fedai_lightning::PaymentHash,
    fedai_lightning::Preimage,
    Option<String>,
);

impl Worker {
    /// This job's price on our ad: the runner's token count of the prompt (exact for
    /// llama.cpp), `max_tokens` out. Quotes and pay-before invoices use it.
    pub(super) async fn job_price(&self, parsed: &ParsedJobRequest, req: &InferRequest) -> u64 {
        // The prompt as the runner will see it (a tools job adds its tool list).
        let mut prepared = req.clone();
        let _ = fedai_runners::tools::prepare(&mut prepared);
        let input_tokens = match self.inner.runner.estimate(&prepared).await {
            Ok(e) => e.input_tokens,
            Err(_) => (parsed.input_data.len() as u64).div_ceil(4),
        };
        // An embedding writes nothing: its price is its input's.
        let output_tokens = match req.input {
            fedai_protocol::JobInput::Embed(_) => 0,
            _ => u64::from(req.max_tokens),
        };
        self.price_for(&req.model)
            .cost_msat(input_tokens, output_tokens)
    }

    /// Pay-before: offer the job at `price` and return once it is paid — our node holds the
    /// customer's HTLC (locked, not taken: settled on delivery, cancelled on failure) or a valid
    /// zap receipt for the job arrived (final). The hold invoice's preimage is derived from our
    /// key and the request, so a restarted worker can still settle.
    pub(super) async fn collect_payment(
        &self,
        parsed: &ParsedJobRequest,
        price: u64,
        cancel_rx: &mut oneshot::Receiver<Stop>,
    ) -> Result<Escrow, Outcome> {
        let i = &self.inner;
        let hold = self.hold_invoice(parsed, price).await;
        let zap = i
            .zap
            .as_ref()
            .filter(|z| (z.params.min_msat..=z.params.max_msat).contains(&price));
        let receipts = zap.map(|_| self.listen_for_zaps(parsed));
        let (escrow, first) = Escrow::offer(
            price,
            hold.as_ref().map(|(h, p, _)| (*h, *p)),
            zap.is_some(),
            Instant::now(),
            i.cfg.payment_timeout,
        );
        let bolt11 = hold.and_then(|(_, _, b)| b);
        let paid = match first.is_empty() {
            true => match self.send_offer(parsed, price, bolt11, zap).await {
                Ok(quote_id) => {
                    let (zaps, mut escrow) = (receipts.map(|rx| (rx, quote_id)), escrow);
                    self.await_payment(parsed, &mut escrow, zaps, cancel_rx)
                        .await
                        .map(|()| escrow)
                }
                Err(failed) => {
                    // Nobody saw the offer: withdraw it at once.
                    let mut escrow = escrow;
                    self.withdraw(&mut escrow).await;
                    Err(failed)
                }
            },
            false => self.act(&escrow, first).await.map(|()| escrow),
        };
        if zap.is_some() {
            let mut waiters = i.zap_waiters.lock().unwrap_or_else(|e| e.into_inner());
            waiters.retain(|_, tx| !tx.is_closed());
            waiters.remove(&parsed.id);
        }
        paid
    }

    /// A hold invoice for the job on our node (or the one a previous run made, when it holds
    /// the payment already); `None` without a node, or when the node refuses.
    pub(super) async fn hold_invoice(&self, parsed: &ParsedJobRequest, price: u64) -> Option<Hold> {
        let i = &self.inner;
        let ln = i.ln.as_ref()?;
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
            Ok(inv) => Some((hash, preimage, Some(inv.bolt11))),
            // Same request again (a restart): the invoice exists; its state decides.
            Err(e) => match ln.invoice_state(hash).await {
                Ok(InvoiceState::Accepted) => Some((hash, preimage, None)),
                _ => {
                    tracing::warn!(request = %parsed.id, error = %e, "cannot create the hold invoice");
                    None
                }
            },
        }
    }

    /// Zap receipts naming the job (or, once sent, its quote) reach the returned queue.
    pub(super) fn listen_for_zaps(
        &self,
        parsed: &ParsedJobRequest,
    ) -> tokio::sync::mpsc::Receiver<Event> {
        let i = &self.inner;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        i.zap_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(parsed.id, tx.clone());
        // A request from before this process started may have been zapped before we listened
        // (our receipt subscription starts with the process): look it up.
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
        rx
    }

    /// Send the offer as `payment-required` (when there is something new to send); returns the
    /// feedback's id, whose zaps pay the job too (what NIP-90 clients zap).
    pub(super) async fn send_offer(
        &self,
        parsed: &ParsedJobRequest,
        price: u64,
        bolt11: Option<String>,
        zap: Option<&ZapTarget>,
    ) -> Result<Option<EventId>, Outcome> {
        let i = &self.inner;
        if bolt11.is_none() && zap.is_none() {
            return Ok(None); // an invoice a previous run sent, already held
        }
        let amount = Amount {
            msat: price,
            bolt11,
        };
        let mut fb = JobFeedback::payment_required(parsed.id, parsed.customer, amount);
        fb.zap = zap.map(|z| z.target.clone());
        fb.encrypted = parsed.encrypted;
        let ev = fb.to_event(&i.cfg.keys).map_err(|e| {
            Outcome::Failed(
                ErrorCode::PaymentFailed,
                format!("cannot build the quote: {e}"),
            )
        })?;
        if zap.is_some() {
            let mut waiters = i.zap_waiters.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(tx) = waiters.get(&parsed.id).cloned() {
                waiters.insert(ev.id, tx);
            }
        }
        self.publish_job(parsed, &ev).await;
        tracing::info!(request = %parsed.id, price_msat = price, zap = zap.is_some(), "waiting for payment");
        Ok(Some(ev.id))
    }

    /// Do what the escrow asks before the job runs: `Ok` once it may run.
    pub(super) async fn act(&self, escrow: &Escrow, actions: Vec<Action>) -> Result<(), Outcome> {
        for a in actions {
            match a {
                Action::CancelHold(h) => self.cancel_hold(h).await,
                Action::Fail(m) => return Err(Outcome::Failed(ErrorCode::PaymentFailed, m)),
                Action::Run | Action::Settle(_) => {}
            }
        }
        match escrow.is_paid() {
            true => Ok(()),
            false => Err(Outcome::Failed(ErrorCode::PaymentFailed, "not paid".into())),
        }
    }

    /// Feed the escrow until it is paid or ends: our node's pushed invoice states (no polling),
    /// zap receipts, the customer's cancellation, and the deadline.
    pub(super) async fn await_payment(
        &self,
        parsed: &ParsedJobRequest,
        escrow: &mut Escrow,
        mut zaps: Option<(tokio::sync::mpsc::Receiver<Event>, Option<EventId>)>,
        cancel_rx: &mut oneshot::Receiver<Stop>,
    ) -> Result<(), Outcome> {
        // While the customer pays, `processing` every KEEPALIVE: its client counts silence.
        let mut alive = keepalive_ticks();
        // Our node's stream for the hold invoice lives across keepalive ticks and rejected
        // receipts; it is opened again only after the escrow took an input.
        let mut hold = Box::pin(self.hold_moved(escrow.watch_hold(), escrow.deadline()));
        loop {
            let input = tokio::select! {
                _ = alive.tick() => {
                    self.keepalive(parsed, Some("waiting for payment".into()));
                    continue;
                }
                s = &mut hold => s,
                // Only the receipt is taken here (cancel-safe); it is checked below, where no
                // other branch can interrupt the check and drop a real zap.
                Some(receipt) = next_receipt(escrow, &mut zaps) => {
                    let quote_id = zaps.as_ref().and_then(|(_, q)| *q);
                    match self.check_zap(parsed, escrow.price_msat(), &receipt, quote_id).await {
                        Some(paid) => paid,
                        None => continue,
                    }
                }
                Ok(stop) = &mut *cancel_rx => {
                    self.withdraw(escrow).await;
                    return Err(stop.outcome());
                }
                _ = tokio::time::sleep_until(escrow.deadline().into()) => Input::Tick(Instant::now()),
            };
            let actions = escrow.on(input).unwrap_or_default();
            if !actions.is_empty() || escrow.state() != State::Quoted {
                return self.act(escrow, actions).await;
            }
            hold = Box::pin(self.hold_moved(escrow.watch_hold(), escrow.deadline()));
        }
    }

    /// Withdraw an unpaid offer (the customer stopped, or nobody saw it): the escrow cancels
    /// the hold invoice.
    async fn withdraw(&self, escrow: &mut Escrow) {
        let actions = escrow.on(Input::Stopped).unwrap_or_default();
        let _ = self.act(escrow, actions).await;
    }

    /// The hold invoice's next state, pushed by our node; pending when there is none to watch.
    pub(super) async fn hold_moved(
        &self,
        watch: Option<fedai_lightning::PaymentHash>,
        deadline: Instant,
    ) -> Input {
        let (Some(hash), Some(ln)) = (watch, &self.inner.ln) else {
            return std::future::pending().await;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match ln.wait_past_open(hash, left).await {
            Ok(Some(InvoiceState::Accepted)) => Input::HoldAccepted,
            Ok(Some(InvoiceState::Settled)) => Input::HoldSettled,
            Ok(Some(InvoiceState::Canceled)) => Input::HoldCancelled,
            Ok(_) => Input::Tick(Instant::now()),
            Err(e) => {
                tracing::warn!(error = %e, "invoice state unavailable; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                Input::Tick(Instant::now())
            }
        }
    }

    /// A zap receipt for this job: valid per NIP-57 Appendix F and our own checks, and — when
    /// the invoice is our own node's — settled on our node.
    pub(super) async fn check_zap(
        &self,
        parsed: &ParsedJobRequest,
        price: u64,
        receipt: &Event,
        quote_id: Option<EventId>,
    ) -> Option<Input> {
        let i = &self.inner;
        let z = i.zap.as_ref()?;
        let expect = fedai_lightning::zap::Expect {
            server: z.server,
            worker: self.public_key(),
            request_id: parsed.id,
            quote_id,
            min_amount_msat: price,
            currency: i.cfg.ln_network,
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
        Some(Input::Zap {
            amount_msat: zap.amount_msat,
            hash: zap.payment_hash,
        })
    }

    pub(super) async fn cancel_hold(&self, hash: fedai_lightning::PaymentHash) {
        if let Some(ln) = &self.inner.ln {
            if let Err(e) = ln.cancel(hash).await {
                tracing::warn!(error = %e, "cannot cancel the hold invoice; it expires on its own");
            }
        }
    }

    /// The job ended without an answer: refund a held payment (the escrow says how), or say
    /// in the reason that a zap is final.
    pub(super) async fn refund(&self, escrow: &mut Escrow, reason: &mut String) {
        let actions = escrow.on(Input::JobFailed).unwrap_or_default();
        for a in actions {
            if let Action::CancelHold(h) = a {
                self.cancel_hold(h).await;
                tracing::info!("payment refunded");
            }
        }
        if let State::Kept { amount_msat } = escrow.state() {
            tracing::warn!("a zapped job failed; zaps are not refunded");
            reason.push_str(&format!(
                " (the zap of {amount_msat} msat is final and not refunded)"
            ));
        }
    }

    /// The job is answered: claim the payment. Returns the payment hash the metering record
    /// names: only once the money is really ours.
    pub(super) async fn claim(
        &self,
        parsed: &ParsedJobRequest,
        escrow: &mut Escrow,
    ) -> Option<fedai_lightning::PaymentHash> {
        let actions = escrow.on(Input::Delivered).unwrap_or_default();
        for a in actions {
            if let (Action::Settle(preimage), Some(ln)) = (a, &self.inner.ln) {
                let settled = ln.settle(preimage).await;
                if let Err(e) = &settled {
                    tracing::error!(request = %parsed.id, error = %e, "cannot settle the hold invoice; the metering record names no payment");
                }
                let _ = escrow.on(Input::SettleDone(settled.is_ok()));
            }
        }
        escrow.metered().and_then(|(_, hash)| hash)
    }
}

/// The next zap receipt naming this job; pending when zaps cannot pay it (none offered, or
/// the escrow no longer takes one).
async fn next_receipt(
    escrow: &Escrow,
    zaps: &mut Option<(tokio::sync::mpsc::Receiver<Event>, Option<EventId>)>,
) -> Option<Event> {
    match zaps.as_mut() {
        Some((rx, _)) if escrow.takes_zap() => rx.recv().await,
        _ => std::future::pending().await,
    }
}
