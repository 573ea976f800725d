//! The capability ad: what the runner serves, at what price and load, kept fresh.

use super::*;

impl Worker {
    pub(super) async fn probe_runner(&self) {
        let i = &self.inner;
        let ok = match i.runner.health().await {
            Ok(()) => match i.runner.list_models().await {
                Ok(mut m) if !m.is_empty() => {
                    // An embedder that embeds with none of its models serves nothing.
                    let embeds = self.measure_dimensions(&mut m).await;
                    *i.models.write().unwrap_or_else(|e| e.into_inner()) = m;
                    embeds || i.cfg.job_kinds.contains(&kinds::JOB_REQUEST)
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "runner model list failed");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "runner health probe failed");
                false
            }
        };
        if ok != i.healthy.swap(ok, Ordering::SeqCst) {
            tracing::info!(healthy = ok, "runner health changed");
        }
        i.metrics.set_runner_healthy(ok);
    }

    /// Serving embeddings: each model's vector length, measured by embedding a word, so the
    /// ad can say it and jobs are sized by it. Whether any model embeds. A measure is kept for
    /// as long as the model stays listed; a model that did not embed is tried again only after
    /// [`DIMENSIONS_RETRY`], each try bounded by [`DIMENSIONS_TIMEOUT`], all of them at once:
    /// a runner that hangs or refuses cannot hold up the heartbeat nor be asked every probe.
    async fn measure_dimensions(&self, models: &mut [ModelInfo]) -> bool {
        let i = &self.inner;
        if !i.cfg.job_kinds.contains(&kinds::EMBED_REQUEST) {
            return false;
        }
        let mut known = i.dimensions.lock().await;
        known.retain(|id, _| models.iter().any(|m| m.id == *id));
        let due: Vec<String> = models
            .iter()
            .filter(|m| match known.get(&m.id) {
                Some((d, _)) if *d > 0 => false,
                Some((_, at)) => at.elapsed() >= DIMENSIONS_RETRY,
                None => true,
            })
            .map(|m| m.id.clone())
            .collect();
        let probe = ["dimensions".to_owned()];
        let (runner, probe) = (&i.runner, &probe);
        let measured = futures_util::future::join_all(due.iter().map(|id| async move {
            let r = tokio::time::timeout(DIMENSIONS_TIMEOUT, runner.embed(id, probe)).await;
            let dims = match r {
                Ok(Ok(e)) => e.vectors.first().map_or(0, |v| v.len() as u32),
                Ok(Err(e)) => {
                    tracing::warn!(model = %id, error = %e, "the runner does not embed with this model");
                    0
                }
                Err(_) => {
                    tracing::warn!(model = %id, "the runner did not embed a word in time");
                    0
                }
            };
            (id.clone(), dims)
        }))
        .await;
        for (id, dims) in measured {
            known.insert(id, (dims, Instant::now()));
        }
        for m in models.iter_mut() {
            m.dimensions = known.get(&m.id).map_or(0, |(d, _)| *d);
        }
        models.iter().any(|m| m.dimensions > 0)
    }

    pub(super) fn price_for(&self, model: &str) -> Price {
        let c = &self.inner.cfg;
        c.prices
            .iter()
            .find(|p| p.model == model)
            .cloned()
            .unwrap_or(Price {
                model: model.to_owned(),
                ..c.default_price.clone()
            })
    }

    /// The capability ad as it stands now.
    pub fn ad(&self, healthy: bool, lifetime: Duration) -> CapabilityAd {
        let i = &self.inner;
        let models = i.models.read().unwrap_or_else(|e| e.into_inner()).clone();
        CapabilityAd {
            instance: i.cfg.instance.clone(),
            name: i.cfg.name.clone(),
            about: format!("{} runner", i.runner.kind()),
            job_kinds: i.cfg.job_kinds.clone(),
            prices: models.iter().map(|m| self.price_for(&m.id)).collect(),
            models,
            max_concurrent: i.cfg.max_concurrent,
            in_flight: i.in_flight.load(Ordering::SeqCst),
            queue_depth: 0,
            hardware: hardware::detect(),
            runner: i.runner.kind().to_owned(),
            healthy,
            payment: PaymentInfo {
                mode: Some(i.cfg.payment_mode),
                ln_node: i.ln_node.clone(),
                lightning_address: i
                    .zap
                    .as_ref()
                    .filter(|z| z.target.contains('@'))
                    .map(|z| z.target.clone()),
                lnurl: i
                    .zap
                    .as_ref()
                    .filter(|z| !z.target.contains('@'))
                    .map(|z| z.target.clone()),
            },
            relays: i.cfg.relays.clone(),
            version: VERSION.into(),
            encryption_supported: true,
            // The runner's features are text generation's: an embedder alone lists none.
            features: match i.cfg.job_kinds.contains(&kinds::JOB_REQUEST) {
                true => i.runner.features().iter().map(|f| f.to_string()).collect(),
                false => Vec::new(),
            },
            expiration: Timestamp::from_secs(
                Timestamp::now().as_secs() + lifetime.as_secs().max(1),
            ),
        }
    }

    /// Publish our NIP-65 relay list (kind 10002): the relays we read jobs on and publish
    /// answers to, as `r` tags without a marker (both). Any Nostr client (and the customer
    /// SDK's `fedai relays`) can then find where to reach us from our key alone; the ad's
    /// `relays` tag says the same for fed_AI clients. Replaceable: one per key, the newest wins.
    pub(super) async fn publish_relay_list(&self) {
        let i = &self.inner;
        let tags = i
            .cfg
            .relays
            .iter()
            .filter(|r| RelayUrl::parse(r).is_ok())
            .filter_map(|r| Tag::parse(["r", r.as_str()]).ok());
        match EventBuilder::new(Kind::RelayList, "")
            .tags(tags)
            .finalize(&i.cfg.keys)
        {
            Ok(ev) => self.publish(&ev).await,
            Err(e) => tracing::warn!(error = %e, "cannot build the relay list"),
        }
    }

    /// Publish the ad, each one with a later `created_at` than the last: relays keep one
    /// addressable event per `d` tag and break same-second ties by the lowest id, so two ads in
    /// one second could leave the older state standing.
    pub(super) async fn publish_ad(&self, healthy: bool, lifetime: Duration) {
        let i = &self.inner;
        let _order = i.ad_lock.lock().await;
        loop {
            let last = i.last_ad.load(Ordering::SeqCst);
            if Timestamp::now().as_secs() > last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ad = self.ad(healthy, lifetime);
        let band = load_band(ad.in_flight, ad.max_concurrent);
        match ad.to_event(&i.cfg.keys) {
            Ok(ev) => {
                i.last_ad.store(ev.created_at.as_secs(), Ordering::SeqCst);
                i.last_band.store(band, Ordering::SeqCst);
                self.publish(&ev).await
            }
            Err(e) => tracing::warn!(error = %e, "cannot build capability ad"),
        }
    }

    /// Probe the runner and count the relays we hear jobs from; re-publish the ad when what it
    /// says of our health changed, or a heartbeat is due. Healthy means: the runner answers, we
    /// take jobs, and at least one connected relay has our job subscription open.
    pub(super) async fn heartbeat(&self, due: bool) {
        let i = &self.inner;
        self.probe_runner().await;
        let relays = i.client.relays().await;
        let connected = relays
            .values()
            .filter(|r| r.status() == RelayStatus::Connected)
            .count();
        i.metrics.set_relays(connected as i64);
        let live = self.live_job_relays().await;
        i.metrics.set_live_job_relays(live as i64);
        let hearing = live > 0;
        if hearing != i.hearing.swap(hearing, Ordering::SeqCst) {
            match hearing {
                true => tracing::info!(relays = live, "hearing job requests again"),
                false => tracing::warn!(
                    connected,
                    "no relay has our job subscription open: advertising unhealthy until one does"
                ),
            }
        }
        let healthy =
            i.healthy.load(Ordering::SeqCst) && i.accepting.load(Ordering::SeqCst) && hearing;
        let was = i.advertised_healthy.swap(healthy, Ordering::SeqCst);
        if !due && was == healthy {
            return;
        }
        self.publish_ad(healthy, i.cfg.heartbeat * 3).await;
    }
}

/// How long a model that did not embed waits before it is tried again.
const DIMENSIONS_RETRY: Duration = Duration::from_secs(600);
/// The longest wait for a runner to embed one word.
const DIMENSIONS_TIMEOUT: Duration = Duration::from_secs(10);
