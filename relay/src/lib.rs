//! # fedai-relay
//!
//! The relay that fed_AI operators host: a general Nostr relay (any kind) that owns its
//! connections and subscriptions ([`connection`], [`hub`]) over nostr-lmdb, with what a job
//! market needs on top:
//! - durable LMDB storage with group commit ([`store`]); `--memory` for tests;
//! - live fan-out that queues for each connection only what its filters match, bounded in bytes,
//!   and cuts only the subscription of a reader that falls behind ([`hub`]);
//! - validation of every fed_AI kind with the protocol crate ([`policy`]), per-pubkey rate
//!   limits, optional PoW for job requests, optional NIP-42 auth;
//! - retention per kind ([`store::retention_loop`]);
//! - sync with peer relays by NIP-77 negentropy and a live tail ([`sync`], `--sync-peer`);
//! - one port for WebSocket, NIP-11, `/health` and `/metrics` ([`http`]), with `TCP_NODELAY`.
//!
//! Start one in-process with [`RelayServer::start`]; the `fedai-relay` binary is a thin wrapper.

pub mod auth;
pub mod config;
pub mod connection;
pub mod dashboard;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod memindex;
pub mod metrics;
pub mod nip11;
pub mod policy;
pub mod query;
pub mod quota;
pub mod store;
pub mod sync;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Cli, RelayConfig, Storage};
use metrics::Metrics;

/// Errors starting the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the event store: {0}")]
    Store(String),
}

/// Every 10 s: re-base the storage estimate on the store's exact count (retention sweeps and
/// replaced events shrink it) and publish the writes in flight.
async fn recount_loop(
    db: Arc<dyn nostr_database::prelude::NostrDatabase>,
    quota: Arc<quota::Quota>,
    writes: Option<Arc<tokio::sync::Semaphore>>,
    max_writes: usize,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.changed() => return,
        }
        if let Some(w) = &writes {
            metrics.set_pending_writes(max_writes.saturating_sub(w.available_permits()) as u64);
        }
        match db.count(nostr_sdk::prelude::Filter::new()).await {
            Ok(n) => quota.recount(n),
            Err(e) => tracing::warn!(error = %e, "cannot count stored events"),
        }
    }
}

/// After connections close, hand freed memory back to the system. glibc keeps what a thread's
/// arena freed for reuse; after a spike of connections (or an attack's) the relay would keep
/// its peak footprint for ever. `malloc_trim` releases free pages of every arena; it runs at most
/// every 10 s and only when connections were closed since the last time.
async fn give_memory_back(metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    let mut closed = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.changed() => return,
        }
        let now = metrics.connections_closed_total();
        if now > closed {
            trim();
            tracing::debug!(closed = now - closed, "gave freed memory back");
        }
        closed = now;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// A running relay.
pub struct RelayServer {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RelayServer {
    /// Open the store, bind and start serving.
    pub async fn start(config: RelayConfig) -> Result<Self, RelayError> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| RelayError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RelayError::Bind {
            addr: config.bind,
            source,
        })?;
        let metrics = Arc::new(Metrics::default());
        let raw_db = store::open(&config.storage)
            .await
            .map_err(|e| RelayError::Store(e.to_string()))?;
        let db = Arc::new(store::Metered::new(raw_db, metrics.clone()));

        let write_policy = Arc::new(policy::FedaiWritePolicy::new(
            metrics.clone(),
            config.events_per_minute_per_pubkey,
            config.min_pow_jobs,
        ));
        let (shutdown, rx) = watch::channel(false);
        let auth = config.auth;
        if auth.is_some() && config.public_urls.is_empty() {
            tracing::warn!(
                "NIP-42 auth without --public-url: AUTH events are checked against the Host \
                 header clients send; set --public-url to the URL clients use"
            );
        }
        let map = match &config.storage {
            Storage::Lmdb { dir, map_size } => Some((dir.clone(), *map_size as u64)),
            Storage::Memory => None,
        };
        let quota = Arc::new(quota::Quota::with_map(
            config.max_store_bytes,
            config.pubkey_quota_bytes,
            map,
            metrics.clone(),
        ));
        quota.measure(db.as_ref()).await;
        let writes = (config.max_pending_writes > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(config.max_pending_writes)));
        let conn = Arc::new(connection::ConnCtx {
            db: db.clone(),
            hub: hub::Hub::new(hub::Limits::default(), metrics.clone()),
            quota: quota.clone(),
            writes: writes.clone(),
            policy: write_policy,
            metrics: metrics.clone(),
            limits: connection::Limits {
                max_event_bytes: config.max_event_bytes,
                events_per_minute: config.events_per_minute,
                queries_per_minute: config.queries_per_minute,
                // Every frame counts here; a busy worker streams partials, so keep it well
                // above the event limit.
                messages_per_minute: config
                    .events_per_minute
                    .saturating_add(config.queries_per_minute)
                    .saturating_mul(2),
                max_query_results: config.max_query_results,
            },
            auth_writes: matches!(auth, Some(config::AuthMode::Write | config::AuthMode::Both)),
            auth_reads: matches!(auth, Some(config::AuthMode::Read | config::AuthMode::Both)),
            public_urls: config.public_urls.clone(),
            shutdown: rx.clone(),
        });
        let sync_tasks = sync::spawn(conn.clone(), config.sync.clone(), rx.clone());
        let ctx = Arc::new(http::Ctx {
            conn,
            metrics: metrics.clone(),
            nip11: nip11::document(&config).to_string(),
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            per_ip: http::PerIp::new(config.max_connections_per_ip),
            http_per_ip: http::PerIp::new(config.max_connections_per_ip),
            http_connections: Arc::new(tokio::sync::Semaphore::new(http::MAX_HTTP_CONNECTIONS)),
            dashboard: config.dashboard,
            trusted_proxies: config.trusted_proxies.clone(),
        });
        let router = http::router(ctx.clone());
        let mut tasks = sync_tasks;
        let mut accept_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => { tokio::spawn(http::handle(stream, peer, ctx.clone(), router.clone())); }
                        Err(e) => {
                            // Typically EMFILE: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = accept_rx.changed() => break,
                }
            }
        }));
        tasks.push(tokio::spawn(give_memory_back(metrics.clone(), rx.clone())));
        tasks.push(tokio::spawn(recount_loop(
            db.clone(),
            quota,
            writes,
            config.max_pending_writes,
            metrics.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(store::retention_loop(
            db,
            config.retention.clone(),
            config.retention_other,
            metrics.clone(),
            Duration::from_secs(60),
            rx,
        )));
        tracing::info!(%addr, storage = ?config.storage, "fedai-relay listening");
        Ok(Self {
            addr,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://` URL of the relay.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stop accepting, close connections and wait for background tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("fedai-relay stopped");
    }
}
