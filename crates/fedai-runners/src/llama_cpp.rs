//! llama.cpp's `llama-server`: `/completion` with SSE streaming.

use fedai_protocol::{JobInput, ModelInfo};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::http_util::{sampling, sse_data, Http, ModelCache};
use crate::{
    BoxFuture, Estimate, HttpOptions, InferRequest, Piece, Runner, RunnerError, TokenStream,
};

/// Adapter for a llama.cpp server.
#[derive(Debug)]
pub struct LlamaCpp {
    http: Http,
    models: ModelCache,
}

impl LlamaCpp {
    /// A runner for the server at `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str, opts: HttpOptions) -> Result<Self, RunnerError> {
        Ok(Self {
            http: Http::new(url, opts)?,
            models: ModelCache::default(),
        })
    }

    async fn fetch_models(&self) -> Result<Vec<ModelInfo>, RunnerError> {
        let v = self.http.get_json("/v1/models").await?;
        let props = self.http.get_json("/props").await.unwrap_or(Value::Null);
        let ctx = props["default_generation_settings"]["n_ctx"]
            .as_u64()
            .unwrap_or(0) as u32;
        let quant = props["model_ftype"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        let models: Vec<ModelInfo> = v["data"]
            .as_array()
            .ok_or_else(|| RunnerError::Protocol("/v1/models has no data".into()))?
            .iter()
            .filter_map(|m| m["id"].as_str())
            .map(|id| ModelInfo {
                id: id.to_owned(),
                context_length: ctx,
                quantisation: quant.clone(),
                dimensions: 0,
            })
            .collect();
        self.models.set(&models);
        Ok(models)
    }

    async fn prompt(&self, input: &JobInput) -> Result<String, RunnerError> {
        match input {
            JobInput::Text(t) => Ok(t.clone()),
            // Read for an estimate only: the texts as one.
            JobInput::Embed(t) => Ok(fedai_protocol::job::join_inputs(
                t.iter().map(String::as_str),
            )),
            JobInput::Chat(messages) => {
                // The server applies the model's own chat template.
                let v = self
                    .http
                    .post_json("/apply-template", &json!({ "messages": messages }))
                    .await?;
                v["prompt"].as_str().map(str::to_owned).ok_or_else(|| {
                    RunnerError::Protocol("/apply-template returned no prompt".into())
                })
            }
        }
    }
}

/// One of llama.cpp's `completion_probabilities` entries, with `top` alternatives.
fn logprob(p: &Value, top: usize) -> Result<Piece, RunnerError> {
    // llama.cpp reports a probability of 0 as f32's lowest value; OpenAI says -9999.
    let entry = |v: &Value| -> Option<(String, f32)> {
        let p = v["logprob"].as_f64()?.max(-9999.0) as f32;
        Some((v["token"].as_str()?.to_owned(), p))
    };
    let (token, logprob) = entry(p).ok_or_else(|| {
        RunnerError::Protocol("a token probability without token or logprob".into())
    })?;
    let top_logprobs = p["top_logprobs"]
        .as_array()
        .into_iter()
        .flatten()
        .take(top)
        .filter_map(entry)
        .map(|(token, logprob)| fedai_protocol::TopLogprob { token, logprob })
        .collect();
    Ok(Piece::Logprob(fedai_protocol::TokenLogprob {
        token,
        logprob,
        top_logprobs,
    }))
}

impl Runner for LlamaCpp {
    fn kind(&self) -> &'static str {
        "llama-cpp"
    }

    fn features(&self) -> &'static [&'static str] {
        crate::LLAMA_CPP_FEATURES
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, RunnerError>> {
        Box::pin(self.fetch_models())
    }

    fn infer(&self, req: InferRequest) -> BoxFuture<'_, Result<TokenStream, RunnerError>> {
        Box::pin(async move {
            self.models.check(&req.model, self.fetch_models()).await?;
            let prompt = self.prompt(&req.input).await?;
            let mut body = json!({
                "prompt": prompt,
                "n_predict": req.max_tokens,
                "stream": true,
                "cache_prompt": true,
            });
            sampling(&mut body, &req.params);
            if let Some(schema) = crate::http_util::json_schema(&req.params) {
                body["json_schema"] = schema;
            }
            let top = usize::from(req.params.top_logprobs.unwrap_or(0));
            if req.params.logprobs {
                // The chosen token's log probability comes with its alternatives; at least one.
                body["n_probs"] = top.max(1).into();
            }
            let logprobs = req.params.logprobs;
            let resp = self.http.post_stream("/completion", &body).await?;
            let stream = sse_data(resp, self.http.opts.idle_timeout).flat_map(move |item| {
                let out: Vec<Result<Piece, RunnerError>> = match item {
                    Err(e) => vec![Err(e)],
                    Ok(v) => {
                        let mut out = Vec::new();
                        if let Some(t) = v["content"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Ok(Piece::Text(t.to_owned())));
                        }
                        if logprobs {
                            let probs = v["completion_probabilities"].as_array();
                            out.extend(probs.into_iter().flatten().map(|p| logprob(p, top)));
                        }
                        if v["stop"].as_bool() == Some(true) {
                            out.push(Ok(Piece::Done {
                                input_tokens: v["tokens_evaluated"].as_u64().unwrap_or(0),
                                output_tokens: v["tokens_predicted"].as_u64().unwrap_or(0),
                            }));
                        }
                        out
                    }
                };
                futures_util::stream::iter(out)
            });
            Ok(Box::pin(stream) as TokenStream)
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
        let req = req.clone();
        Box::pin(async move {
            let prompt = self.prompt(&req.input).await?;
            let v = self
                .http
                .post_json("/tokenize", &json!({ "content": prompt }))
                .await?;
            let n = v["tokens"].as_array().map(Vec::len).unwrap_or(0) as u64;
            Ok(Estimate {
                input_tokens: n,
                max_output_tokens: u64::from(req.max_tokens),
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), RunnerError>> {
        Box::pin(async move { self.http.get("/health").await.map(drop) })
    }
}
