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
            max_jobs: 256,
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
            .map(|k| Sha256::digest(k.trim().as_bytes()).into())
            .collect();
        Self {
            inner: Arc::new(Inner {
                client,
                wallet,
                jobs: Arc::new(tokio::sync::Semaphore::new(cfg.max_jobs.max(1))),
                cfg,
                key_hashes,
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
            .fallback(not_found)
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
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// Bearer keys, when the gateway has any; every key compared, in constant time.
async fn authorize(State(g): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    if g.key_hashes.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let given: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
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

async fn not_found() -> Response {
    let mut e = ApiError::invalid(None, "unknown endpoint");
    e.status = 404;
    e.code = "not_found";
    e.into_response()
}

async fn models(State(g): State<Arc<Inner>>) -> Response {
    match g.client.workers().await {
        Ok(ads) => json_response(StatusCode::OK, &answer::models(&ads)),
        Err(e) => ApiError::from_client(&e).into_response(),
    }
}

async fn model(State(g): State<Arc<Inner>>, Path(id): Path<String>) -> Response {
    let ads = match g.client.workers().await {
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

async fn chat(State(g): State<Arc<Inner>>, body: Body) -> Response {
    call(g, openai::Endpoint::Chat, body).await
}

async fn completions(State(g): State<Arc<Inner>>, body: Body) -> Response {
    call(g, openai::Endpoint::Completions, body).await
}

async fn call(g: Arc<Inner>, endpoint: openai::Endpoint, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, g.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            let mut e = ApiError::invalid(
                None,
                format!("the body is over {} bytes", g.cfg.max_body_bytes),
            );
            e.status = 413;
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
    };
    match read {
        Ok(c) => run::respond(g, c).await,
        Err(e) => e.into_response(),
    }
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
