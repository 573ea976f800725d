//! # fedai-gateway
//!
//! An OpenAI-compatible HTTP API over the fed_AI market: an app changes its `base_url` and buys
//! inference from workers on Nostr. Each request becomes a fed_AI job — the worker chosen by the
//! scheduler among live capability ads, paid over Lightning within the gateway's budget, its
//! result and signed metering verified — and is answered in OpenAI's wire format.
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /v1/models`, `GET /v1/models/{id}` | models live on the network now, with workers, prices, features |
//! | `POST /v1/chat/completions` | chat, streaming (SSE) or not; `n`; `response_format`; routing (`provider`) |
//! | `POST /v1/completions` | a prompt |
//! | `GET /health` | the gateway is up |
//! | `GET /metrics` | Prometheus: calls by endpoint and status, jobs, first token, budget |
//!
//! Modules: [`openai`] reads request bodies into jobs (pure); [`answer`] writes OpenAI's
//! answers; [`run`] runs a call's jobs and follows them (budget, cancellation); [`error`] maps
//! failures onto OpenAI's error shape and statuses; [`ledger`] is the budget on disk.
//!
//! Security: loopback binds only without API keys ([`check_bind`]); keys compared in constant
//! time; bodies, messages and concurrent jobs bounded; prompts and outputs never logged.

pub mod answer;
pub mod error;
pub mod ledger;
pub mod metrics;
pub mod openai;
pub mod run;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use fedai_client::{FedaiClient, PayContext};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use error::ApiError;
pub use ledger::Ledger;
pub use openai::Limits;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The most one request may cost, msat (all its choices together).
    pub max_price_msat: u64,
    /// Bearer keys accepted; empty: no key needed (loopback binds only).
    pub api_keys: Vec<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Per-request limits.
    pub limits: Limits,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Workers tried per request when fallbacks are allowed.
    pub max_attempts: u32,
    /// Jobs running at once through this gateway; more are answered 503 at once.
    pub max_jobs: usize,
    /// Encrypt every job to its worker (NIP-44), so that prompts and outputs are not public on
    /// the relays. On by default; off reaches workers that cannot decrypt (generic DVMs).
    pub private: bool,
    /// What this gateway learnt of workers (verified jobs, failures, speed), loaded at start and
    /// saved every 30 s and at shutdown, so a restart does not trust a failing worker afresh.
    pub reputation_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_price_msat: fedai_client::DEFAULT_MAX_PAY_MSAT,
            api_keys: Vec::new(),
            max_body_bytes: 1 << 20,
            limits: Limits::default(),
            timeout: Duration::from_secs(120),
            max_attempts: 3,
            max_jobs: 64,
            private: true,
            reputation_file: None,
        }
    }
}

/// How the gateway pays: a payer and the budget it must stay within.
#[derive(Debug)]
pub struct Wallet {
    /// The payer and its caps (`max_msat` is set per request).
    pub pay: PayContext,
    /// The budget, on disk.
    pub ledger: Ledger,
}

/// Gateway failures at start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A non-loopback address without API keys.
    #[error("{0} is not a loopback address: set API keys (--api-key-file) before listening there")]
    OpenBind(SocketAddr),
    /// The listener failed.
    #[error("listening: {0}")]
    Io(#[from] std::io::Error),
}

/// The gateway: a customer client, an optional wallet, and the settings.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: FedaiClient,
    pub(crate) wallet: Option<Wallet>,
    pub(crate) cfg: Config,
    /// Jobs in flight (a request with `n` choices holds `n`).
    pub(crate) jobs: Arc<tokio::sync::Semaphore>,
    /// Keys' SHA-256, compared in constant time.
    key_hashes: Vec<[u8; 32]>,
    pub(crate) metrics: metrics::Metrics,
    /// The market's ads, followed live once the first call needs them.
    watch: tokio::sync::OnceCell<fedai_client::WorkerWatch>,
}

impl Inner {
    /// Live workers: from the watch (no round trip), or fetched while it cannot start.
    pub(crate) async fn workers(
        &self,
    ) -> Result<Vec<fedai_protocol::capability::ParsedCapabilityAd>, fedai_client::ClientError>
    {
        match self
            .watch
            .get_or_try_init(|| self.client.watch_workers())
            .await
        {
            Ok(w) => Ok(w.workers()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow the ads live; fetching them");
                self.client.workers().await
            }
        }
    }
}

/// Refuse to listen beyond loopback without API keys.
pub fn check_bind(addr: SocketAddr, has_keys: bool) -> Result<(), GatewayError> {
    if addr.ip().is_loopback() || has_keys {
        Ok(())
    } else {
        Err(GatewayError::OpenBind(addr))
    }
}

impl Gateway {
    /// A gateway over `client`, paying from `wallet` when given (free workers only otherwise).
    pub fn new(client: FedaiClient, wallet: Option<Wallet>, cfg: Config) -> Self {
        let key_hashes = cfg
            .api_keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        Self {
            inner: Arc::new(Inner {
                client,
                wallet,
                jobs: Arc::new(tokio::sync::Semaphore::new(cfg.max_jobs.max(1))),
                cfg,
                key_hashes,
                metrics: metrics::Metrics::default(),
                watch: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/models", get(models))
            .route("/v1/models/{*id}", get(model))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                self.inner.clone(),
                authorize,
            ))
            .route("/health", get(|| async { "ok\n" }))
            .with_state(self.inner.clone())
    }

    /// Serve on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        check_bind(listener.local_addr()?, !self.inner.key_hashes.is_empty())?;
        let saver = self.keep_reputation();
        use axum::serve::ListenerExt;
        // Every SSE chunk goes out at once: with Nagle's algorithm a small chunk waits for the
        // app's delayed ACK (40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await;
        if let Some(saver) = saver {
            saver.abort();
        }
        self.save_reputation();
        served?;
        Ok(())
    }

    /// Load the reputation file and save it every 30 s (the task that saves).
    fn keep_reputation(&self) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.inner.cfg.reputation_file.clone()?;
        if let Err(e) = self.inner.client.load_reputation(&path) {
            tracing::warn!(error = %e, "starting without the reputation file");
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.tick().await;
            loop {
                tick.tick().await;
                me.save_reputation();
            }
        }))
    }

    fn save_reputation(&self) {
        if let Some(path) = &self.inner.cfg.reputation_file {
            if let Err(e) = self.inner.client.save_reputation(path) {
                tracing::warn!(error = %e, "cannot save the reputation file");
            }
        }
    }
}

/// Bearer keys, when the gateway has any; every key compared, in constant time. Without keys
/// (loopback only) the request must name a loopback host: a web page the user visits cannot
/// reach the gateway through DNS rebinding.
async fn authorize(State(g): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    if g.key_hashes.is_empty() {
        return match loopback_host(&req) {
            true => next.run(req).await,
            false => ApiError::unauthorized().into_response(),
        };
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .filter(|k| !k.is_empty());
    let Some(given) = given else {
        return ApiError::unauthorized().into_response();
    };
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut ok = subtle::Choice::from(0);
    for k in &g.key_hashes {
        ok |= k.ct_eq(&given);
    }
    if bool::from(ok) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// Whether the `Host` header names a loopback address (`localhost`, `127.x`, `[::1]`).
fn loopback_host(req: &Request) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return true; // HTTP/1.0 without Host: not a browser
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn method_not_allowed() -> Response {
    let mut e = ApiError::invalid(None, "method not allowed on this endpoint");
    e.status = 405;
    e.code = "method_not_allowed";
    e.into_response()
}

async fn not_found() -> Response {
    let mut e = ApiError::invalid(None, "unknown endpoint");
    e.status = 404;
    e.code = "not_found";
    e.into_response()
}

async fn metrics(State(g): State<Arc<Inner>>) -> Response {
    let left = g.wallet.as_ref().map_or(0, |w| w.ledger.remaining_msat());
    g.metrics
        .budget_left_msat
        .set(i64::try_from(left).unwrap_or(i64::MAX));
    let mut r = (StatusCode::OK, g.metrics.render()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn models(State(g): State<Arc<Inner>>) -> Response {
    match g.workers().await {
        Ok(ads) => json_response(StatusCode::OK, &answer::models(&ads)),
        Err(e) => ApiError::from_client(&e).into_response(),
    }
}

async fn model(State(g): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    let ads = match g.workers().await {
        Ok(ads) => ads,
        Err(e) => return ApiError::from_client(&e).into_response(),
    };
    let all = answer::models(&ads);
    let found = all["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == id.as_str()).cloned());
    match found {
        Some(m) => json_response(StatusCode::OK, &m),
        None => ApiError::unknown_model(&id).into_response(),
    }
}

async fn chat(State(g): State<Arc<Inner>>, req: Request) -> Response {
    call(g, openai::Endpoint::Chat, req).await
}

async fn completions(State(g): State<Arc<Inner>>, req: Request) -> Response {
    call(g, openai::Endpoint::Completions, req).await
}

async fn embeddings(State(g): State<Arc<Inner>>, req: Request) -> Response {
    call(g, openai::Endpoint::Embeddings, req).await
}

/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

async fn call(g: Arc<Inner>, endpoint: openai::Endpoint, req: Request) -> Response {
    // JSON only: a web page can send a form or text/plain to loopback without asking first
    // (no CORS preflight), but not application/json.
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        let mut e = ApiError::invalid(
            None,
            "the body must be JSON (Content-Type: application/json)",
        );
        e.status = 415;
        e.code = "unsupported_media_type";
        return e.into_response();
    }
    let body: Body = req.into_body();
    let bytes = match tokio::time::timeout(
        BODY_TIMEOUT,
        axum::body::to_bytes(body, g.cfg.max_body_bytes),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            let mut e = ApiError::invalid(
                None,
                format!("the body is over {} bytes or broken", g.cfg.max_body_bytes),
            );
            e.status = 413;
            return e.into_response();
        }
        Err(_) => {
            let mut e = ApiError::invalid(None, "the body did not arrive in time");
            e.status = 408;
            return e.into_response();
        }
    };
    let v: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::invalid(None, format!("the body is not JSON: {e}")).into_response()
        }
    };
    let read = match endpoint {
        openai::Endpoint::Chat => openai::chat(&v, &g.cfg.limits),
        openai::Endpoint::Completions => openai::completion(&v, &g.cfg.limits),
        openai::Endpoint::Embeddings => openai::embeddings(&v, &g.cfg.limits),
    };
    let r = match read {
        Ok(c) => run::respond(g.clone(), c).await,
        Err(e) => e.into_response(),
    };
    let name = match endpoint {
        openai::Endpoint::Chat => "chat",
        openai::Endpoint::Completions => "completions",
        openai::Endpoint::Embeddings => "embeddings",
    };
    g.metrics
        .calls
        .with_label_values(&[name, r.status().as_str()])
        .inc();
    r
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
