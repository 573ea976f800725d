//! The worker's life: subscribe, keep the ad fresh, take events until shutdown, then drain.

use super::*;

impl Worker {
    /// Take jobs until `shutdown` resolves, then drain and withdraw the ad.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let i = self.inner.clone();
        self.recover().await;
        // Notifications first: events that arrive right after the REQ must not be missed.
        let mut notifications = i.client.notifications();
        self.subscribe().await?;
        self.publish_relay_list().await;
        let hb = self.spawn_heartbeat();
        let refresh = self.spawn_refresh();
        tracing::info!(pubkey = %self.public_key().to_bech32().unwrap_or_default(), relays = i.cfg.relays.len(), runner = i.runner.kind(), "worker running");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                n = notifications.next() => match n {
                    Some(ClientNotification::Event { event, .. }) => {
                        self.saw(&event);
                        self.on_event(*event)
                    }
                    Some(ClientNotification::Message { relay_url, message }) => {
                        self.on_relay_message(relay_url, *message)
                    }
                    Some(ClientNotification::Shutdown) | None => break,
                },
                _ = &mut shutdown => break,
            }
        }
        self.drain().await;
        hb.abort();
        if let Some(r) = refresh {
            r.abort();
        }
        // Withdraw: a final ad marked down that expires almost at once.
        self.publish_ad(false, Duration::from_secs(2)).await;
        i.client.shutdown().await;
        i.reply.shutdown().await;
        tracing::info!("worker stopped");
        Ok(())
    }

    /// The runner is probed often (a local call); the ad goes out on a health change and once
    /// a heartbeat otherwise.
    fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let w = self.clone();
        tokio::spawn(async move {
            let beat = w.inner.cfg.heartbeat;
            let probe = beat.min(Duration::from_secs(5));
            let mut tick = tokio::time::interval(probe);
            let mut last = None::<Instant>;
            loop {
                tick.tick().await;
                let due = last.is_none_or(|t| t.elapsed() + probe / 2 >= beat);
                w.heartbeat(due).await;
                if due {
                    last = Some(Instant::now());
                }
            }
        })
    }

    /// Load-driven refresh: the ad follows the load band (idle, busy, full) within
    /// `ad_refresh` (a change during the pause leaves a stored permit, so the last change is
    /// always published); within a band, the once-a-minute heartbeat carries exact counts.
    fn spawn_refresh(&self) -> Option<tokio::task::JoinHandle<()>> {
        let w = self.clone();
        (!self.inner.cfg.ad_refresh.is_zero()).then(|| {
            tokio::spawn(async move {
                let i = &w.inner;
                loop {
                    i.load_changed.notified().await;
                    if !i.accepting.load(Ordering::SeqCst) {
                        continue;
                    }
                    let band = load_band(i.in_flight.load(Ordering::SeqCst), i.cfg.max_concurrent);
                    if band == i.last_band.load(Ordering::SeqCst) {
                        continue;
                    }
                    let healthy = i.advertised_healthy.load(Ordering::SeqCst);
                    w.publish_ad(healthy, i.cfg.heartbeat * 3).await;
                    tokio::time::sleep(i.cfg.ad_refresh).await;
                }
            })
        })
    }

    /// Stop taking jobs and wait for the running ones (up to the drain timeout); those still
    /// running then are stopped and answered with `shutdown`.
    async fn drain(&self) {
        let i = &self.inner;
        tracing::info!("shutting down: no new jobs");
        i.accepting.store(false, Ordering::SeqCst);
        let _ = i.client.unsubscribe_all().await;
        let deadline = Instant::now() + i.cfg.drain_timeout;
        while i.jobs.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: Vec<_> = i
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, (_, tx)) in left {
            let _ = tx.send(Stop::Shutdown);
        }
        while i.jobs.load(Ordering::SeqCst) > 0
            && Instant::now() < deadline + Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
