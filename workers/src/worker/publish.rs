//! Publishing: our relays, the customer's reply relays, and refusals.

use super::*;

impl Worker {
    pub(super) async fn publish(&self, ev: &Event) {
        match self
            .inner
            .client
            .send_event(ev)
            .save_into_database(false)
            .await
        {
            Ok(out) if out.success.is_empty() => {
                tracing::warn!(id = %ev.id, kind = ev.kind.as_u16(), failed = ?out.failed.values().collect::<Vec<_>>(), "no relay accepted event")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(id = %ev.id, kind = ev.kind.as_u16(), error = %e, "publish failed")
            }
        }
    }

    pub(super) async fn refuse(&self, request: &ParsedJobRequest, code: ErrorCode, reason: String) {
        tracing::info!(request = %request.id, code = %code, "job refused");
        self.inner.metrics.job(code.as_str());
        let mut fb = JobFeedback::error(request.id, request.customer, code, reason);
        fb.encrypted = request.encrypted;
        if let Ok(ev) = fb.to_event(&self.inner.cfg.keys) {
            self.publish_job(request, &ev).await;
        }
    }

    /// Turn down a request before taking it. A request that names us gets an `error` with the
    /// reason; an open request is declined in silence — N workers must not answer one request
    /// with N refusals (fedai-01, "Open requests").
    pub(super) async fn decline(
        &self,
        request: &ParsedJobRequest,
        directed: bool,
        code: ErrorCode,
        reason: String,
    ) {
        if directed {
            return self.refuse(request, code, reason).await;
        }
        tracing::debug!(request = %request.id, code = %code, "open request declined");
        self.inner.metrics.job("declined");
    }

    /// Turn down a request because every runner slot is taken.
    pub(super) async fn decline_full(&self, request: &ParsedJobRequest, directed: bool) {
        let reason = crate::admit::all_busy(self.inner.cfg.max_concurrent);
        self.decline(request, directed, ErrorCode::Capacity, reason)
            .await
    }

    /// Publish a job's event to our relays and, in the background, to the relays its customer
    /// named (`relays` tag): a slow or silent relay of the customer's choosing never holds up
    /// the job (nor its runner slot).
    pub(super) async fn publish_job(&self, request: &ParsedJobRequest, ev: &Event) {
        self.publish_replying(&request.request.relays, ev).await
    }

    /// [`Self::publish_job`] given the request's `relays` alone.
    pub(super) async fn publish_replying(&self, relays: &[String], ev: &Event) {
        self.publish(ev).await;
        if relays.is_empty() {
            return;
        }
        let (w, wanted, ev) = (self.clone(), relays.to_vec(), ev.clone());
        tokio::spawn(async move {
            let extra = w.reply_relays(&wanted).await;
            if extra.is_empty() {
                return;
            }
            if let Err(e) = w
                .inner
                .reply
                .send_event(&ev)
                .to(extra)
                .ok_timeout(Duration::from_secs(3))
                .save_into_database(false)
                .await
            {
                tracing::debug!(id = %ev.id, error = %e, "reply relays did not take the event");
            }
        });
    }

    /// The customer's reply relays that are not ours, checked (ws/wss; every address the host
    /// resolves to public, unless allowed) and connected; at most four per request and
    /// `max_reply_relays` in all, the least recently added dropped first.
    pub(super) async fn reply_relays(&self, wanted: &[String]) -> Vec<RelayUrl> {
        let i = &self.inner;
        let mut out = Vec::new();
        for url in wanted.iter().take(4) {
            let Ok(parsed) = RelayUrl::parse(url) else {
                continue;
            };
            if i.cfg
                .relays
                .iter()
                .any(|r| RelayUrl::parse(r).is_ok_and(|r| r == parsed))
            {
                continue;
            }
            if let Err(e) = fedai_lightning::netguard::check_resolved(
                parsed.as_str(),
                &["wss", "ws"],
                i.cfg.allow_private_addresses,
            )
            .await
            {
                tracing::debug!(relay = %parsed, reason = %e, "reply relay refused");
                continue;
            }
            let known = i.reply.relays().await;
            if !known.contains_key(&parsed) {
                // Make room: the oldest reply relay goes (it is re-added when asked again).
                let oldest = {
                    let mut order = i.reply_order.lock().unwrap_or_else(|e| e.into_inner());
                    order.push_back(parsed.clone());
                    if order.len() > i.cfg.max_reply_relays.max(1) {
                        order.pop_front()
                    } else {
                        None
                    }
                };
                if let Some(old) = oldest {
                    let _ = i.reply.remove_relay(old.as_str()).await;
                }
                if i.reply.add_relay(parsed.as_str()).await.is_err() {
                    continue;
                }
                let _ = i
                    .reply
                    .try_connect_relay(parsed.as_str(), Duration::from_secs(3))
                    .await;
            }
            out.push(parsed);
        }
        out
    }
}
