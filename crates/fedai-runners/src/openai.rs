//! Any OpenAI-compatible server (vLLM, llama.cpp's `/v1`): `/v1/completions` for prompts,
//! `/v1/chat/completions` for chats, SSE streaming with `include_usage`.

use fedai_protocol::{JobInput, ModelInfo};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::http_util::{sampling, sse_data, Http, ModelCache};
use crate::{
    as_messages, BoxFuture, Estimate, HttpOptions, InferRequest, Piece, Runner, RunnerError,
    TokenStream,
};

/// Adapter for an OpenAI-compatible server.
#[derive(Debug)]
pub struct OpenAi {
    http: Http,
    models: ModelCache,
}

impl OpenAi {
    /// A runner for the server at `url` (without the `/v1` suffix).
    pub fn new(url: &str, opts: HttpOptions) -> Result<Self, RunnerError> {
        let url = url.trim_end_matches('/').trim_end_matches("/v1");
        Ok(Self {
            http: Http::new(url, opts)?,
            models: ModelCache::default(),
        })
    }

    async fn fetch_models(&self) -> Result<Vec<ModelInfo>, RunnerError> {
        let v = self.http.get_json("/v1/models").await?;
        let models: Vec<ModelInfo> = v["data"]
            .as_array()
            .ok_or_else(|| RunnerError::Protocol("/v1/models has no data".into()))?
            .iter()
            .filter_map(|m| {
                let id = m["id"].as_str()?;
                // vLLM reports max_model_len; llama.cpp reports meta.n_ctx_train.
                let ctx = m["max_model_len"]
                    .as_u64()
                    .or(m["meta"]["n_ctx_train"].as_u64())
                    .unwrap_or(0);
                Some(ModelInfo {
                    id: id.to_owned(),
                    context_length: ctx as u32,
                    quantisation: "unknown".into(),
                    dimensions: 0,
                })
            })
            .collect();
        self.models.set(&models);
        Ok(models)
    }

    async fn infer_checked(&self, req: InferRequest) -> Result<TokenStream, RunnerError> {
        let chat = matches!(req.input, JobInput::Chat(_));
        let mut body = json!({
            "model": req.model,
            "max_tokens": req.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if chat {
            body["messages"] = serde_json::to_value(as_messages(&req.input)).unwrap_or(Value::Null);
        } else if let JobInput::Text(t) = &req.input {
            body["prompt"] = t.clone().into();
        }
        sampling(&mut body, &req.params);
        if let Some(schema) = crate::http_util::json_schema(&req.params) {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": true},
            });
        }
        let path = if chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let resp = match self.http.post_stream(path, &body).await {
            Err(RunnerError::Status {
                status: 404,
                message,
            }) if message.to_lowercase().contains("model") => {
                return Err(RunnerError::UnknownModel(req.model.clone()))
            }
            r => r?,
        };
        // Servers that ignore `include_usage` end without a usage chunk: the worker then sees
        // no `Done` and fails the job rather than meter unknown token counts.
        let mut chunks = 0u64;
        let stream = sse_data(resp, self.http.opts.idle_timeout)
            .map(move |item| -> Vec<Result<Piece, RunnerError>> {
                let v = match item {
                    Err(e) => return vec![Err(e)],
                    Ok(v) => v,
                };
                let mut out = Vec::new();
                if let Some(choice) = v["choices"].get(0) {
                    let text = if chat {
                        choice["delta"]["content"].as_str()
                    } else {
                        choice["text"].as_str()
                    };
                    if let Some(t) = text.filter(|t| !t.is_empty()) {
                        chunks += 1;
                        out.push(Ok(Piece::Text(t.to_owned())));
                    }
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    out.push(Ok(Piece::Done {
                        input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                        output_tokens: u["completion_tokens"].as_u64().unwrap_or(chunks),
                    }));
                }
                out
            })
            .flat_map(futures_util::stream::iter);
        Ok(Box::pin(stream) as TokenStream)
    }
}

impl Runner for OpenAi {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn features(&self) -> &'static [&'static str] {
        crate::CHAT_SCHEMA_TOOLS
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, RunnerError>> {
        Box::pin(self.fetch_models())
    }

    fn infer(&self, req: InferRequest) -> BoxFuture<'_, Result<TokenStream, RunnerError>> {
        Box::pin(async move {
            // Single-model servers (llama.cpp) answer whatever model is named: check first.
            self.models.check(&req.model, self.fetch_models()).await?;
            self.infer_checked(req).await
        })
    }

    fn embed<'a>(
        &'a self,
        model: &'a str,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<crate::Embedded, RunnerError>> {
        Box::pin(async move {
            self.models.check(model, self.fetch_models()).await?;
            self.http.openai_embed(model, texts).await
        })
    }

    fn estimate(&self, req: &InferRequest) -> BoxFuture<'_, Result<Estimate, RunnerError>> {
        // No tokenizer endpoint in this API.
        let est = crate::byte_estimate(req);
        Box::pin(async move { Ok(est) })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), RunnerError>> {
        Box::pin(async move {
            match self.http.get("/health").await {
                Ok(_) => Ok(()),
                Err(RunnerError::Status { status: 404, .. }) => {
                    self.http.get("/v1/models").await.map(drop)
                }
                Err(e) => Err(e),
            }
        })
    }
}
