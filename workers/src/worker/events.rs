//! What arrives on the subscriptions: requests, awards, cancellations, zap receipts.

use super::*;

impl Worker {
    pub(super) fn on_event(&self, event: Event) {
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
        // Ids, kinds and keys only: never content, which may be a prompt or an output.
        tracing::debug!(id = %event.id, kind = event.kind.as_u16(), author = %event.pubkey, "event");
        match event.kind.as_u16() {
            k if self.inner.cfg.job_kinds.contains(&k) => {
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

    pub(super) fn on_cancel(&self, event: &Event) {
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
    pub(super) fn on_zap_receipt(&self, event: Event) {
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

    /// An award of one of our quotes: check it against the request and our own quote on the
    /// relays (we keep no state), then run the request as if it were directed to us.
    pub(super) async fn on_award(&self, event: Event) {
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
}
