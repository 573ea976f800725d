//! Recovery after a restart, from our own events on the relays (we keep no state).

use super::*;

impl Worker {
    pub(super) async fn recover(&self) {
        let i = &self.inner;
        let since = Timestamp::from_secs(
            i.started
                .as_secs()
                .saturating_sub(i.cfg.request_max_age.as_secs()),
        );
        let filter = Filter::new()
            .author(self.public_key())
            .kinds([
                Kind::from_u16(kinds::JOB_FEEDBACK),
                Kind::from_u16(kinds::JOB_RESULT),
                Kind::from_u16(kinds::EMBED_RESULT),
            ])
            .since(since);
        let events = match i
            .client
            .fetch_events(filter)
            .timeout(Duration::from_secs(5))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "recovery query failed; continuing without it");
                return;
            }
        };
        let (mut accepted, mut answered) = (HashSet::new(), HashSet::new());
        for ev in events.iter() {
            if kinds::is_request(ev.kind.as_u16().saturating_sub(1000)) {
                if let Ok(r) = JobResult::from_event(ev, None) {
                    answered.insert(r.request_id());
                }
            } else if let Ok(f) = JobFeedback::from_event(ev, None) {
                match f.status {
                    FeedbackStatus::Processing => {
                        accepted.insert(f.request_id);
                    }
                    FeedbackStatus::Error => {
                        answered.insert(f.request_id);
                    }
                    _ => {}
                }
            }
        }
        let pending: HashSet<EventId> = accepted.difference(&answered).copied().collect();
        if !pending.is_empty() {
            tracing::info!(
                jobs = pending.len(),
                "recovering jobs accepted before a restart"
            );
        }
        *i.recover.lock().unwrap_or_else(|e| e.into_inner()) = pending;
        *i.answered.lock().unwrap_or_else(|e| e.into_inner()) = answered;
    }
}
