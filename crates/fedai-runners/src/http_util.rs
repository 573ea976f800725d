//! HTTP plumbing shared by the adapters: JSON calls with bounded connect retries, and streaming
//! bodies split into lines with an idle timeout.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::{HttpOptions, RunnerError};

#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    pub(crate) opts: HttpOptions,
}

fn map_err(e: reqwest::Error, opts: &HttpOptions) -> RunnerError {
    // Include the cause chain: "error sending request" alone says nothing.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if e.is_connect() {
        RunnerError::Unreachable(msg)
    } else if e.is_timeout() {
        RunnerError::Timeout(opts.idle_timeout)
    } else {
        RunnerError::Protocol(msg)
    }
}

/// A reqwest client builder. Elsewhere in a fed_AI process reqwest is built with rustls and no
/// bundled crypto provider (LNURL over https); cargo unifies that feature into this crate, and
/// such a client panics at build time unless a provider is installed — so install ring first
/// (a no-op when one is already installed).
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

impl Http {
    pub(crate) fn new(base: &str, opts: HttpOptions) -> Result<Self, RunnerError> {
        let client = client_builder()
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            // No connection reuse: a pooled connection that the server closes (llama.cpp does
            // under load) fails the next POST with "connection closed before message
            // completed", which cannot be retried safely. A fresh loopback connection costs
            // ~0.1 ms per request.
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .map_err(|e| RunnerError::Protocol(e.to_string()))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            opts,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send, retrying only when the connection could not be made (nothing reached the server).
    async fn send(
        &self,
        req: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RunnerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match req().send().await {
                Ok(resp) => return check_status(resp).await,
                Err(e) if e.is_connect() && attempt < self.opts.connect_attempts => {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => return Err(map_err(e, &self.opts)),
            }
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Result<reqwest::Response, RunnerError> {
        let url = self.url(path);
        let idle = self.opts.idle_timeout;
        self.send(|| self.client.get(&url).timeout(idle)).await
    }

    pub(crate) async fn get_json(&self, path: &str) -> Result<Value, RunnerError> {
        let resp = self.get(path).await?;
        self.json(resp).await
    }

    /// A JSON body of at most [`MAX_BODY_BYTES`]: a broken runner cannot exhaust our memory.
    async fn json(&self, resp: reqwest::Response) -> Result<Value, RunnerError> {
        self.typed(resp).await
    }

    /// [`Self::json`] read straight into `T`.
    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        resp: reqwest::Response,
    ) -> Result<T, RunnerError> {
        let body = bounded_body(resp, MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => {
                    RunnerError::Protocol(format!("answer over {MAX_BODY_BYTES} bytes"))
                }
                BodyError::Http(e) => map_err(e, &self.opts),
            })?;
        serde_json::from_slice(&body)
            .map_err(|e| RunnerError::Protocol(format!("answer is not JSON: {e}")))
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> Result<Value, RunnerError> {
        let url = self.url(path);
        let idle = self.opts.idle_timeout;
        let resp = self
            .send(|| self.client.post(&url).json(body).timeout(idle))
            .await?;
        self.json(resp).await
    }

    /// OpenAI's `POST /v1/embeddings` (llama.cpp started with `--embeddings`, vLLM): the
    /// vectors in the texts' order, and the prompt tokens. Read straight into f32s (no `Value`
    /// tree: 4 bytes a value, whatever the runner sends within the body limit).
    pub(crate) async fn openai_embed(
        &self,
        model: &str,
        texts: &[String],
    ) -> Result<crate::Embedded, RunnerError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            data: Vec<Item>,
            #[serde(default)]
            usage: Option<Tokens>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            index: Option<usize>,
            embedding: Vec<f32>,
        }
        #[derive(serde::Deserialize)]
        struct Tokens {
            prompt_tokens: Option<u64>,
        }
        let body =
            serde_json::json!({ "model": model, "input": texts, "encoding_format": "float" });
        let url = self.url("/v1/embeddings");
        let idle = self.opts.idle_timeout;
        let resp = self
            .send(|| self.client.post(&url).json(&body).timeout(idle))
            .await?;
        let answer: Answer = self.typed(resp).await?;
        let mut slots: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (n, d) in answer.data.into_iter().enumerate() {
            let i = d.index.unwrap_or(n);
            match slots.get_mut(i) {
                Some(s @ None) => *s = Some(d.embedding),
                _ => {
                    return Err(RunnerError::Protocol(format!(
                        "embedding index {i} is not one of the texts or repeats"
                    )))
                }
            }
        }
        let vectors = slots.into_iter().flatten().collect();
        Ok(crate::Embedded {
            vectors: crate::checked_vectors(vectors, texts.len())?,
            input_tokens: answer.usage.and_then(|u| u.prompt_tokens).unwrap_or(0),
        })
    }

    /// POST and return the response for streaming (no overall timeout: see [`lines`]).
    pub(crate) async fn post_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, RunnerError> {
        let url = self.url(path);
        self.send(|| self.client.post(&url).json(body)).await
    }
}

async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, RunnerError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = bounded_body(resp, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message: String = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or(v["error"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or(text)
        .chars()
        .take(300)
        .collect();
    Err(RunnerError::Status {
        status: status.as_u16(),
        message,
    })
}

/// The largest non-streamed answer read from a runner.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// The longest streamed line (one SSE event or NDJSON object).
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;

enum BodyError {
    TooLarge,
    Http(reqwest::Error),
}

/// Read a body of at most `max` bytes, stopping as soon as it is over.
async fn bounded_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Http)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body of `resp` as lines (without the newline), each awaited for at most `idle` and at
/// most [`MAX_LINE_BYTES`] long.
pub(crate) fn lines(
    resp: reqwest::Response,
    idle: Duration,
) -> impl Stream<Item = Result<String, RunnerError>> + Send {
    let body = resp.bytes_stream();
    futures_util::stream::unfold(
        (
            Box::pin(body),
            Vec::<u8>::new(),
            VecDeque::<String>::new(),
            false,
        ),
        move |(mut body, mut buf, mut ready, mut ended)| async move {
            loop {
                if let Some(line) = ready.pop_front() {
                    return Some((Ok(line), (body, buf, ready, ended)));
                }
                if ended {
                    return None;
                }
                match tokio::time::timeout(idle, body.next()).await {
                    Err(_) => {
                        ended = true;
                        return Some((Err(RunnerError::Timeout(idle)), (body, buf, ready, ended)));
                    }
                    Ok(None) => {
                        ended = true;
                        if !buf.is_empty() {
                            ready.push_back(String::from_utf8_lossy(&buf).into_owned());
                            buf.clear();
                        }
                    }
                    Ok(Some(Err(e))) => {
                        ended = true;
                        return Some((
                            Err(RunnerError::Protocol(e.to_string())),
                            (body, buf, ready, ended),
                        ));
                    }
                    Ok(Some(Ok(bytes))) => {
                        buf.extend_from_slice(&bytes);
                        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                            let mut line: Vec<u8> = buf.drain(..=pos).collect();
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                            ready.push_back(String::from_utf8_lossy(&line).into_owned());
                        }
                        if buf.len() > MAX_LINE_BYTES {
                            ended = true;
                            buf = Vec::new();
                            return Some((
                                Err(RunnerError::Protocol(format!(
                                    "the runner sent a line over {MAX_LINE_BYTES} bytes"
                                ))),
                                (body, buf, ready, ended),
                            ));
                        }
                    }
                }
            }
        },
    )
}

/// Server-sent events: the `data:` payloads of `resp`, stopping at `[DONE]`.
pub(crate) fn sse_data(
    resp: reqwest::Response,
    idle: Duration,
) -> impl Stream<Item = Result<Value, RunnerError>> + Send {
    lines(resp, idle).filter_map(|l| async move {
        match l {
            Err(e) => Some(Err(e)),
            Ok(line) => {
                let data = line.strip_prefix("data:")?.trim();
                if data == "[DONE]" {
                    return None;
                }
                Some(
                    serde_json::from_str::<Value>(data)
                        .map_err(|e| RunnerError::Protocol(format!("bad SSE payload: {e}"))),
                )
            }
        }
    })
}

/// Newline-delimited JSON.
pub(crate) fn ndjson(
    resp: reqwest::Response,
    idle: Duration,
) -> impl Stream<Item = Result<Value, RunnerError>> + Send {
    lines(resp, idle).filter_map(|l| async move {
        match l {
            Err(e) => Some(Err(e)),
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => Some(
                serde_json::from_str::<Value>(&line)
                    .map_err(|e| RunnerError::Protocol(format!("bad NDJSON line: {e}"))),
            ),
        }
    })
}

/// The JSON names of the sampling fields in one runner API.
pub(crate) struct SamplingNames {
    pub temperature: &'static str,
    pub top_k: &'static str,
    pub top_p: &'static str,
    pub frequency_penalty: &'static str,
    pub stop: &'static str,
    /// `None`: the API takes no seed.
    pub seed: Option<&'static str>,
    /// `None`: the API takes no presence penalty.
    pub presence_penalty: Option<&'static str>,
}

/// OpenAI's names, which llama.cpp and Ollama's `options` share (seed included).
pub(crate) const SNAKE_CASE: SamplingNames = SamplingNames {
    temperature: "temperature",
    top_k: "top_k",
    top_p: "top_p",
    frequency_penalty: "frequency_penalty",
    stop: "stop",
    seed: Some("seed"),
    presence_penalty: Some("presence_penalty"),
};

/// The sampling fields a job sets, under OpenAI's names.
pub(crate) fn sampling(body: &mut Value, p: &fedai_protocol::JobParams) {
    sampling_as(body, p, &SNAKE_CASE)
}

/// The sampling fields a job sets, under `names`: one place decides which parameters reach a
/// runner, whatever the API calls them.
pub(crate) fn sampling_as(body: &mut Value, p: &fedai_protocol::JobParams, names: &SamplingNames) {
    if let Some(t) = p.temperature {
        body[names.temperature] = t.into();
    }
    if let Some(k) = p.top_k {
        body[names.top_k] = k.into();
    }
    if let Some(t) = p.top_p {
        body[names.top_p] = t.into();
    }
    if let Some(f) = p.frequency_penalty {
        body[names.frequency_penalty] = f.into();
    }
    if !p.stop.is_empty() {
        body[names.stop] = p.stop.clone().into();
    }
    if let (Some(s), Some(name)) = (p.seed, names.seed) {
        body[name] = s.into();
    }
    if let (Some(v), Some(name)) = (p.presence_penalty, names.presence_penalty) {
        body[name] = v.into();
    }
}

/// The request's JSON Schema as a value (the protocol checked it is a JSON object).
pub(crate) fn json_schema(p: &fedai_protocol::JobParams) -> Option<Value> {
    p.json_schema
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

/// The models a server reported last, refreshed on a miss (models can be swapped under a
/// running server), so an unknown model is refused with a clear error before generating.
#[derive(Debug, Default)]
pub(crate) struct ModelCache(std::sync::Mutex<Vec<fedai_protocol::ModelInfo>>);

impl ModelCache {
    pub(crate) fn set(&self, models: &[fedai_protocol::ModelInfo]) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = models.to_vec();
    }

    fn has(&self, model: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|m| m.id == model)
    }

    pub(crate) async fn check<F>(&self, model: &str, refresh: F) -> Result<(), RunnerError>
    where
        F: std::future::Future<Output = Result<Vec<fedai_protocol::ModelInfo>, RunnerError>>,
    {
        if self.has(model) {
            return Ok(());
        }
        let fresh = refresh.await?;
        self.set(&fresh);
        if self.has(model) {
            Ok(())
        } else {
            Err(RunnerError::UnknownModel(model.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A broken runner: answers 200 and then `len` bytes without a newline.
    async fn endless(len: usize) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
                    .await;
                let chunk = vec![b'a'; 64 * 1024];
                let mut sent = 0;
                while sent < len {
                    if s.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
            }
        });
        url
    }

    #[tokio::test]
    async fn a_line_without_end_is_refused_at_the_bound() {
        let url = endless(4 * MAX_LINE_BYTES).await;
        let resp = client_builder()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap();
        let mut l = Box::pin(lines(resp, Duration::from_secs(5)));
        match l.next().await {
            Some(Err(RunnerError::Protocol(m))) => assert!(m.contains("line over"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(l.next().await.is_none(), "the stream ends there");
    }

    #[tokio::test]
    async fn a_body_over_the_bound_is_refused() {
        let url = endless(2 * 1024 * 1024).await;
        let resp = client_builder()
            .build()
            .unwrap()
            .get(&url)
            .send()
            .await
            .unwrap();
        assert!(matches!(
            bounded_body(resp, 1024 * 1024).await,
            Err(BodyError::TooLarge)
        ));
    }
}
