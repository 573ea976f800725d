//! Ollama: `/api/generate` and `/api/chat` with NDJSON streaming, `/api/tags`.

use fedai_protocol::{JobInput, ModelInfo};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::http_util::{ndjson, Http};
use crate::{
    as_messages, BoxFuture, Estimate, HttpOptions, InferRequest, Piece, Runner, RunnerError,
    TokenStream,
};

/// Adapter for an Ollama server.
#[derive(Debug)]
pub struct Ollama {
    http: Http,
}

impl Ollama {
    /// A runner for the server at `url` (e.g. `http://127.0.0.1:11434`).
    pub fn new(url: &str, opts: HttpOptions) -> Result<Self, RunnerError> {
        Ok(Self {
            http: Http::new(url, opts)?,
        })
    }
}

impl Runner for Ollama {
    fn kind(&self) -> &'static str {
        "ollama"
    }

    fn features(&self) -> &'static [&'static str] {
        crate::CHAT_SCHEMA_TOOLS
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, RunnerError>> {
        Box::pin(async move {
            let v = self.http.get_json("/api/tags").await?;
            Ok(v["models"]
                .as_array()
                .ok_or_else(|| RunnerError::Protocol("/api/tags has no models".into()))?
                .iter()
                .filter_map(|m| {
                    let id = m["name"].as_str().or(m["model"].as_str())?;
                    let quant = m["details"]["quantization_level"]
                        .as_str()
                        .unwrap_or("unknown");
                    Some(ModelInfo {
                        id: id.to_owned(),
                        context_length: 0,
                        quantisation: quant.to_owned(),
                        dimensions: 0,
                    })
                })
                .collect())
        })
    }

    fn infer(&self, req: InferRequest) -> BoxFuture<'_, Result<TokenStream, RunnerError>> {
        Box::pin(async move {
            let p = &req.params;
            // Ollama takes the same sampling names (seed included) under `options`.
            let mut options = json!({ "num_predict": req.max_tokens });
            crate::http_util::sampling(&mut options, p);
            let chat = matches!(req.input, JobInput::Chat(_));
            let mut body = json!({ "model": req.model, "stream": true, "options": options });
            if chat {
                body["messages"] =
                    serde_json::to_value(as_messages(&req.input)).unwrap_or(Value::Null);
            } else if let JobInput::Text(t) = &req.input {
                body["prompt"] = t.clone().into();
            }
            if let Some(schema) = crate::http_util::json_schema(p) {
                body["format"] = schema;
            }
            let path = if chat { "/api/chat" } else { "/api/generate" };
            let resp = match self.http.post_stream(path, &body).await {
                Err(RunnerError::Status { status: 404, .. }) => {
                    return Err(RunnerError::UnknownModel(req.model.clone()))
                }
                r => r?,
            };
            let stream = ndjson(resp, self.http.opts.idle_timeout)
                .map(move |item| -> Vec<Result<Piece, RunnerError>> {
                    let v = match item {
                        Err(e) => return vec![Err(e)],
                        Ok(v) => v,
                    };
                    if let Some(err) = v["error"].as_str() {
                        return vec![Err(RunnerError::Protocol(err.chars().take(300).collect()))];
                    }
                    let mut out = Vec::new();
                    let text = if chat {
                        v["message"]["content"].as_str()
                    } else {
                        v["response"].as_str()
                    };
                    if let Some(t) = text.filter(|t| !t.is_empty()) {
                        out.push(Ok(Piece::Text(t.to_owned())));
                    }
                    if v["done"].as_bool() == Some(true) {
                        out.push(Ok(Piece::Done {
                            input_tokens: v["prompt_eval_count"].as_u64().unwrap_or(0),
                            output_tokens: v["eval_count"].as_u64().unwrap_or(0),
                        }));
                    }
                    out
                })
                .flat_map(futures_util::stream::iter);
            Ok(Box::pin(stream) as TokenStream)
        })
    }

    /// Ollama's `POST /api/embed`: `{"embeddings": [[…]], "prompt_eval_count": n}`.
    fn embed<'a>(
        &'a self,
        model: &'a str,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<crate::Embedded, RunnerError>> {
        Box::pin(async move {
            let v = self
                .http
                .post_json("/api/embed", &json!({ "model": model, "input": texts }))
                .await?;
            let vectors = v["embeddings"]
                .as_array()
                .ok_or_else(|| RunnerError::Protocol("/api/embed has no embeddings".into()))?
                .iter()
                .map(|e| {
                    e.as_array()?
                        .iter()
                        .map(|x| x.as_f64().map(|x| x as f32))
                        .collect::<Option<Vec<f32>>>()
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    RunnerError::Protocol("an embedding is not an array of numbers".into())
                })?;
            Ok(crate::Embedded {
                vectors: crate::checked_vectors(vectors, texts.len())?,
                input_tokens: v["prompt_eval_count"].as_u64().unwrap_or(0),
            })
        })
    }

    fn estimate(&self, req: &InferRequest) -> BoxFuture<'_, Result<Estimate, RunnerError>> {
        // No tokenizer endpoint in this API.
        let est = crate::byte_estimate(req);
        Box::pin(async move { Ok(est) })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), RunnerError>> {
        Box::pin(async move { self.http.get("/api/tags").await.map(drop) })
    }
}
