//! # fedai-runners
//!
//! One [`Runner`] trait over the inference servers a worker can front. Every adapter talks to a
//! separate process over HTTP — no inference runs inside fed_AI processes — so runners are
//! hot-swappable and never need protocol changes.
//!
//! | kind | server | endpoints |
//! |---|---|---|
//! | `llama-cpp` | llama.cpp `llama-server` | `/completion` (SSE), `/apply-template`, `/health`, `/v1/models`, `/props` |
//! | `openai` | any OpenAI-compatible server (vLLM, llama.cpp `/v1`) | `/v1/completions`, `/v1/chat/completions` (SSE), `/v1/models` |
//! | `ollama` | Ollama | `/api/generate`, `/api/chat` (NDJSON), `/api/tags` |
//! | `http` | the generic fed_AI runner contract | `/models`, `/infer`, `/estimate`, `/health` |
//! | `mock` | none: deterministic, **for unit tests only** | — |
//!
//! Streams are cancel-safe: dropping a [`TokenStream`] drops the HTTP response, which closes the
//! connection and stops generation upstream. Connection errors (and only those) are retried a
//! bounded number of times before the first byte.

pub mod generic;
mod http_util;
pub mod llama_cpp;
pub mod local;
pub mod mock;
pub mod ollama;
pub mod openai;
pub mod sandbox;
pub mod tools;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fedai_protocol::capability::{
    FEATURE_CHAT, FEATURE_JSON_SCHEMA, FEATURE_LOGPROBS, FEATURE_TOOLS,
};
use fedai_protocol::{JobInput, JobParams, ModelInfo};
use futures_util::Stream;

pub use sandbox::SandboxPolicy;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The tokens of one inference, ending with [`Piece::Done`].
pub type TokenStream = Pin<Box<dyn Stream<Item = Result<Piece, RunnerError>> + Send>>;

/// What a runner is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// Model id (resolved by the worker: never empty).
    pub model: String,
    /// Prompt or chat.
    pub input: JobInput,
    /// Sampling parameters (the model field is ignored; see `model`).
    pub params: JobParams,
    /// Tokens to generate at most (resolved by the worker).
    pub max_tokens: u32,
}

/// One item of a token stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Generated text.
    Text(String),
    /// The log probability of a token just generated (a `logprobs` job), after its text.
    Logprob(fedai_protocol::TokenLogprob),
    /// End of generation, with the token counts the runner reported.
    Done {
        /// Prompt tokens.
        input_tokens: u64,
        /// Generated tokens.
        output_tokens: u64,
    },
}

/// An embedding run's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One vector per text, in order, all of one length.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, as the runner counted them.
    pub input_tokens: u64,
}

/// A cost estimate before running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Upper bound of generated tokens.
    pub max_output_tokens: u64,
}

/// Runner failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    /// The server could not be reached (after retries).
    #[error("runner unreachable: {0}")]
    Unreachable(String),
    /// The model is not served.
    #[error("model `{0}` is not available on this runner")]
    UnknownModel(String),
    /// The server answered with an error status.
    #[error("runner returned HTTP {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Server message (never contains the prompt: servers echo errors, not inputs).
        message: String,
    },
    /// The server's answer could not be understood.
    #[error("runner protocol error: {0}")]
    Protocol(String),
    /// No progress within the deadline.
    #[error("runner timed out after {0:?}")]
    Timeout(Duration),
    /// The request is not allowed (sandbox) or not supported by this runner.
    #[error("refused: {0}")]
    Refused(String),
}

/// An inference server.
pub trait Runner: Send + Sync {
    /// Runner kind (`llama-cpp`, `openai`, …) as advertised.
    fn kind(&self) -> &'static str;
    /// The optional features it serves, as the capability ad lists them
    /// ([`fedai_protocol::capability::FEATURE_CHAT`], …). A request needing one it lacks is
    /// refused, never run without it.
    fn features(&self) -> &'static [&'static str] {
        &[FEATURE_CHAT]
    }
    /// Models the server serves.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, RunnerError>>;
    /// Start an inference; the stream yields text pieces then `Done`.
    fn infer(&self, req: InferRequest) -> BoxFuture<'_, Result<TokenStream, RunnerError>>;
    /// Embed `texts` with `model` (an embedding job, kind 5060): one vector per text, in order.
    /// Runners without an embedding endpoint refuse.
    fn embed<'a>(
        &'a self,
        model: &'a str,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Embedded, RunnerError>> {
        let _ = (model, texts);
        Box::pin(async move {
            Err(RunnerError::Refused(format!(
                "the {} runner does not embed",
                self.kind()
            )))
        })
    }
    /// Estimate token counts without generating.
    fn estimate(&self, req: &InferRequest) -> BoxFuture<'_, Result<Estimate, RunnerError>>;
    /// Whether the server is up and ready.
    fn health(&self) -> BoxFuture<'_, Result<(), RunnerError>>;
}

/// Timeouts and retries shared by the HTTP adapters.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next piece of a stream (and for non-streaming answers).
    pub idle_timeout: Duration,
    /// Connect attempts before giving up (connection errors only).
    pub connect_attempts: u32,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
            connect_attempts: 3,
        }
    }
}

/// Build a runner of `kind` for `url`, after checking the sandbox policy.
pub fn build(
    kind: &str,
    url: &str,
    policy: &SandboxPolicy,
    opts: HttpOptions,
) -> Result<Arc<dyn Runner>, RunnerError> {
    policy.check(kind, url)?;
    Ok(match kind {
        "llama-cpp" => Arc::new(llama_cpp::LlamaCpp::new(url, opts)?),
        "openai" => Arc::new(openai::OpenAi::new(url, opts)?),
        "ollama" => Arc::new(ollama::Ollama::new(url, opts)?),
        "http" => Arc::new(generic::GenericHttp::new(url, opts)?),
        "mock" => Arc::new(mock::MockRunner::default()),
        other => {
            return Err(RunnerError::Refused(format!(
                "unknown runner kind `{other}`"
            )))
        }
    })
}

/// Chat, JSON Schema constrained output, and so function calling ([`tools`] runs it on the
/// schema): what the HTTP adapters that pass a schema serve.
pub(crate) const CHAT_SCHEMA_TOOLS: &[&str] = &[FEATURE_CHAT, FEATURE_JSON_SCHEMA, FEATURE_TOOLS];
/// What llama.cpp's own API serves: the above and token log probabilities.
pub(crate) const LLAMA_CPP_FEATURES: &[&str] = &[
    FEATURE_CHAT,
    FEATURE_JSON_SCHEMA,
    FEATURE_TOOLS,
    FEATURE_LOGPROBS,
];

/// The first feature `req` needs that `runner` lacks.
pub fn missing_feature(runner: &dyn Runner, req: &InferRequest) -> Option<&'static str> {
    req.params
        .features()
        .into_iter()
        .find(|f| !runner.features().contains(f))
}

/// A tokenizer-free estimate (about 4 bytes per token), for servers without a tokenize endpoint.
pub(crate) fn byte_estimate(req: &InferRequest) -> Estimate {
    let bytes: usize = as_messages(&req.input)
        .iter()
        .map(|m| m.content.len())
        .sum();
    Estimate {
        input_tokens: (bytes as u64).div_ceil(4),
        max_output_tokens: u64::from(req.max_tokens),
    }
}

/// Chat messages of an input (a text prompt is one user message).
pub(crate) fn as_messages(input: &JobInput) -> Vec<fedai_protocol::ChatMessage> {
    match input {
        JobInput::Text(t) => vec![fedai_protocol::ChatMessage::new("user", t.clone())],
        JobInput::Chat(m) => m.clone(),
        JobInput::Embed(t) => t
            .iter()
            .map(|t| fedai_protocol::ChatMessage::new("user", t.clone()))
            .collect(),
    }
}

/// Vectors as a runner gave them, checked: one per text, of one length within
/// [`fedai_protocol::job::MAX_EMBED_DIMENSIONS`], finite. A runner's mistake is an error here,
/// not a result the customer rejects after the worker claimed its pay.
pub(crate) fn checked_vectors(
    vectors: Vec<Vec<f32>>,
    texts: usize,
) -> Result<Vec<Vec<f32>>, RunnerError> {
    let bad = |m: String| Err(RunnerError::Protocol(format!("embeddings: {m}")));
    if vectors.len() != texts {
        return bad(format!("{} vectors for {texts} texts", vectors.len()));
    }
    let dims = vectors.first().map_or(0, Vec::len);
    if dims == 0 || dims > fedai_protocol::job::MAX_EMBED_DIMENSIONS {
        return bad(format!("{dims} dimensions"));
    }
    if vectors.iter().any(|v| v.len() != dims) {
        return bad("the vectors differ in length".into());
    }
    if texts > 1 && texts * dims > fedai_protocol::job::MAX_EMBED_VALUES {
        return bad(format!(
            "{texts} × {dims} values, over the {} one answer holds",
            fedai_protocol::job::MAX_EMBED_VALUES
        ));
    }
    if vectors.iter().flatten().any(|x| !x.is_finite()) {
        return bad("a value is not a finite number".into());
    }
    Ok(vectors)
}
