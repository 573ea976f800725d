//! The generic fed_AI runner contract over HTTP (from the original node design), for runners
//! written in any language:
//!
//! | endpoint | request | response |
//! |---|---|---|
//! | `GET /models` | — | `{"models": [{"id", "contextLength", "quantisation"}]}` |
//! | `POST /infer` | `{"model", "prompt" \| "messages", "maxTokens", "temperature"?, "topK"?, "topP"?, "frequencyPenalty"?, "stop"?}` | `{"output", "usage": {"inputTokens", "outputTokens"}}` |
//! | `POST /estimate` | same as `/infer` | `{"inputTokens", "maxOutputTokens"}` |
//! | `GET /health` | — | any 2xx |
//!
//! `/infer` is not streamed: the whole output arrives as one piece.

use fedai_protocol::{JobInput, ModelInfo};
use serde_json::{json, Value};

use crate::http_util::Http;
use crate::{
    as_messages, BoxFuture, Estimate, HttpOptions, InferRequest, Piece, Runner, RunnerError,
    TokenStream,
};

/// Adapter for a server implementing the generic contract.
#[derive(Debug)]
pub struct GenericHttp {
    http: Http,
}

impl GenericHttp {
    /// A runner for the server at `url`.
    pub fn new(url: &str, opts: HttpOptions) -> Result<Self, RunnerError> {
        Ok(Self {
            http: Http::new(url, opts)?,
        })
    }
}

/// The generic contract's names (no seed).
const CAMEL_CASE: crate::http_util::SamplingNames = crate::http_util::SamplingNames {
    temperature: "temperature",
    top_k: "topK",
    top_p: "topP",
    frequency_penalty: "frequencyPenalty",
    stop: "stop",
    seed: None,
    presence_penalty: None,
};

fn body(req: &InferRequest) -> Value {
    let p = &req.params;
    let mut b = json!({ "model": req.model, "maxTokens": req.max_tokens });
    match &req.input {
        JobInput::Text(t) => b["prompt"] = t.clone().into(),
        JobInput::Embed(t) => {
            b["prompt"] = fedai_protocol::job::join_inputs(t.iter().map(String::as_str)).into()
        }
        JobInput::Chat(_) => {
            b["messages"] = serde_json::to_value(as_messages(&req.input)).unwrap_or(Value::Null)
        }
    }
    crate::http_util::sampling_as(&mut b, p, &CAMEL_CASE);
    b
}

impl Runner for GenericHttp {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<ModelInfo>, RunnerError>> {
        Box::pin(async move {
            let v = self.http.get_json("/models").await?;
            Ok(v["models"]
                .as_array()
                .ok_or_else(|| RunnerError::Protocol("/models has no models".into()))?
                .iter()
                .filter_map(|m| {
                    Some(ModelInfo {
                        id: m["id"].as_str()?.to_owned(),
                        context_length: m["contextLength"].as_u64().unwrap_or(0) as u32,
                        quantisation: m["quantisation"].as_str().unwrap_or("unknown").to_owned(),
                        dimensions: 0,
                    })
                })
                .collect())
        })
    }

    fn infer(&self, req: InferRequest) -> BoxFuture<'_, Result<TokenStream, RunnerError>> {
        Box::pin(async move {
            let v = match self.http.post_json("/infer", &body(&req)).await {
                Err(RunnerError::Status { status: 404, .. }) => {
                    return Err(RunnerError::UnknownModel(req.model.clone()))
                }
                r => r?,
            };
            let output = v["output"]
                .as_str()
                .ok_or_else(|| RunnerError::Protocol("/infer returned no output".into()))?;
            let pieces = vec![
                Ok(Piece::Text(output.to_owned())),
                Ok(Piece::Done {
                    input_tokens: v["usage"]["inputTokens"].as_u64().unwrap_or(0),
                    output_tokens: v["usage"]["outputTokens"].as_u64().unwrap_or(0),
                }),
            ];
            Ok(Box::pin(futures_util::stream::iter(pieces)) as TokenStream)
        })
    }

    fn estimate(&self, req: &InferRequest) -> BoxFuture<'_, Result<Estimate, RunnerError>> {
        let b = body(req);
        Box::pin(async move {
            let v = self.http.post_json("/estimate", &b).await?;
            Ok(Estimate {
                input_tokens: v["inputTokens"].as_u64().unwrap_or(0),
                max_output_tokens: v["maxOutputTokens"].as_u64().unwrap_or(0),
            })
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<(), RunnerError>> {
        Box::pin(async move { self.http.get("/health").await.map(drop) })
    }
}
