//! # fedai-relay
//!
//! The relay that fed_AI operators host: a general Nostr relay (any kind) built on nostr-sdk's
//! `LocalRelay`, with what a job market needs on top:
//! - durable LMDB storage with group commit ([`store`]); `--memory` for tests;
//! - validation of every fed_AI kind with the protocol crate ([`policy`]), per-pubkey rate
//!   limits, optional PoW for job requests, optional NIP-42 auth;
//! - retention per kind ([`store::retention_loop`]);
//! - one port for WebSocket, NIP-11, `/health` and `/metrics` ([`http`]), with `TCP_NODELAY`.
//!
//! Start one in-process with [`RelayServer::start`]; the `fedai-relay` binary is a thin wrapper.

pub mod config;
pub mod connection;
pub mod http;
pub mod metrics;
pub mod nip11;
pub mod policy;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nostr_sdk::prelude::{LocalRelay, LocalRelayBuilderNip42, RateLimit};
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

/// A running relay.
pub struct RelayServer {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    relay: LocalRelay,
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
        let mut builder = LocalRelay::builder()
            // The relay's own URL (used by NIP-42) must be the address clients dial.
            .addr(addr.ip())
            .port(addr.port())
            .database(db.clone())
            .rate_limit(RateLimit {
                max_reqs: 500,
                notes_per_minute: config.events_per_minute,
            })
            .queries_per_minute(config.queries_per_minute)
            // Every frame counts here; a busy worker streams partials, so keep it well above
            // the event limit (the LocalRelay drops the connection when it is exceeded).
            .messages_per_minute(
                config
                    .events_per_minute
                    .saturating_add(config.queries_per_minute)
                    .saturating_mul(2),
            )
            .max_connections(config.max_connections)
            .max_event_size(config.max_event_bytes)
            .max_websocket_message_size(config.max_event_bytes + 1024)
            .max_query_results(config.max_query_results)
            .max_filter_limit(config.max_query_results)
            .write_policy(policy::SharedWritePolicy(write_policy.clone()))
            .query_policy(policy::CountingQueryPolicy);
        if let Some(mode) = config.auth {
            builder = builder.nip42(match mode {
                config::AuthMode::Write => LocalRelayBuilderNip42::write(),
                config::AuthMode::Read => LocalRelayBuilderNip42::read(),
                config::AuthMode::Both => LocalRelayBuilderNip42::read_and_write(),
            });
        }
        let relay = builder.build();

        let conn = Arc::new(connection::ConnCtx {
            relay: relay.clone(),
            db: db.clone(),
            policy: write_policy,
            metrics: metrics.clone(),
            max_event_bytes: config.max_event_bytes,
            events_per_minute: config.events_per_minute,
            // NIP-42 state lives in the LocalRelay's session: in auth mode every EVENT goes there.
            pipeline: config.auth.is_none(),
        });
        let ctx = Arc::new(http::Ctx {
            conn,
            metrics: metrics.clone(),
            nip11: nip11::document(&config).to_string(),
        });
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut accept_rx = rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => { tokio::spawn(http::handle(stream, peer, ctx.clone())); }
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
            relay,
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
        self.relay.shutdown();
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("fedai-relay stopped");
    }
}
