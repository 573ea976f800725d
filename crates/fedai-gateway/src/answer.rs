//! OpenAI's answers, written from verified fed_AI outcomes (pure functions).
//!
//! Besides OpenAI's fields every answer carries a `fedai` object (and, when not streamed,
//! `x-fedai-*` headers): the job request, the worker, the result and metering events, what the
//! metering says the job cost and what was paid — so anyone can check it on the relays.

use std::collections::BTreeMap;

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::{EventId, PublicKey, ToBech32};
use fedai_protocol::{TokenLogprob, ToolCall};
use serde_json::{json, Value};

use crate::openai::Endpoint;

/// A finished, verified choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The signed output (a tools job: its text part).
    pub output: String,
    /// The functions the model called (a tools job).
    pub tool_calls: Vec<ToolCall>,
    /// Each token's log probability (a `logprobs` job).
    pub logprobs: Vec<TokenLogprob>,
    /// Prompt tokens, from the worker's signed metering.
    pub input_tokens: u64,
    /// Generated tokens, from the worker's signed metering.
    pub output_tokens: u64,
    /// The price the metering record states, msat.
    pub cost_msat: u64,
    /// Paid for this choice, msat.
    pub paid_msat: u64,
    /// The job request (its last attempt).
    pub request_id: EventId,
    /// The worker.
    pub worker: PublicKey,
    /// The result event.
    pub result_id: EventId,
    /// The metering event.
    pub metering_id: EventId,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
}

impl Finished {
    /// The `fedai` object: where to check this answer.
    pub fn fedai(&self) -> Value {
        json!({
            "request": self.request_id.to_hex(),
            "worker": self.worker.to_bech32().unwrap_or_default(),
            "result": self.result_id.to_hex(),
            "metering": self.metering_id.to_hex(),
            "cost_msat": self.cost_msat,
            "paid_msat": self.paid_msat,
        })
    }
}

/// What every answer of one call shares.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `chatcmpl-…` / `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as the app named it.
    pub model: String,
    /// Chat or completions.
    pub endpoint: Endpoint,
}

impl Meta {
    /// A new call's id and time.
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
            Endpoint::Embeddings => "embd",
        };
        Self {
            id: format!(
                "{prefix}-{:x}{:04x}",
                now.as_nanos(),
                NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff
            ),
            created: now.as_secs(),
            model: model.to_owned(),
            endpoint,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Embeddings, _) => "list",
        }
    }
}

/// OpenAI's `usage`, summed over choices, with the metered cost.
pub fn usage(done: &[Finished]) -> Value {
    let (i, o, c): (u64, u64, u64) = done.iter().fold((0, 0, 0), |(i, o, c), f| {
        (i + f.input_tokens, o + f.output_tokens, c + f.cost_msat)
    });
    json!({"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o, "cost_msat": c})
}

/// A whole (non-streamed) answer.
pub fn completion(meta: &Meta, done: &[Finished]) -> Value {
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(index, f)| match meta.endpoint {
            Endpoint::Chat => {
                let mut message =
                    json!({"role": "assistant", "content": f.output, "refusal": null});
                if !f.tool_calls.is_empty() {
                    // OpenAI's shape: no text is `null` beside tool calls.
                    if f.output.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = json!(f.tool_calls);
                }
                json!({
                    "index": index,
                    "message": message,
                    "logprobs": logprobs(&f.logprobs),
                    "finish_reason": f.finish_reason,
                })
            }
            Endpoint::Completions | Endpoint::Embeddings => json!({
                "index": index,
                "text": f.output,
                "logprobs": null,
                "finish_reason": f.finish_reason,
            }),
        })
        .collect();
    let fedai: Vec<Value> = done.iter().map(Finished::fedai).collect();
    json!({
        "id": meta.id,
        "object": meta.object(false),
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(done),
        "system_fingerprint": null,
        "fedai": if fedai.len() == 1 { fedai[0].clone() } else { Value::Array(fedai) },
    })
}

/// An embedding call's answer (the body, serialized here: each f32 written as the shortest
/// decimal that reads back as it, not widened to f64): each batch's vectors in order, as numbers
/// or (`base64`) as OpenAI's base64 of little-endian f32; `usage` summed from the signed
/// metering records.
pub fn embeddings(meta: &Meta, done: &[Finished], base64: bool) -> Result<String, String> {
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Vector {
        Floats(Vec<f32>),
        Base64(String),
    }
    #[derive(serde::Serialize)]
    struct Item {
        object: &'static str,
        index: usize,
        embedding: Vector,
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        object: &'static str,
        data: Vec<Item>,
        model: &'a str,
        usage: Value,
        fedai: Value,
    }
    let mut data = Vec::new();
    let mut dims = None;
    for f in done {
        let a = fedai_protocol::EmbedAnswer::parse(&f.output).map_err(|e| e.to_string())?;
        if *dims.get_or_insert(a.dimensions()) != a.dimensions() {
            return Err("two workers' vectors differ in length".into());
        }
        for v in a.vectors {
            let embedding = match base64 {
                true => Vector::Base64(fedai_protocol::vector_base64(&v)),
                false => Vector::Floats(v),
            };
            data.push(Item {
                object: "embedding",
                index: data.len(),
                embedding,
            });
        }
    }
    let (i, c) = done
        .iter()
        .fold((0, 0), |(i, c), f| (i + f.input_tokens, c + f.cost_msat));
    let fedai: Vec<Value> = done.iter().map(Finished::fedai).collect();
    let body = Body {
        object: "list",
        data,
        model: &meta.model,
        usage: json!({"prompt_tokens": i, "total_tokens": i, "cost_msat": c}),
        fedai: if fedai.len() == 1 {
            fedai[0].clone()
        } else {
            Value::Array(fedai)
        },
    };
    serde_json::to_string(&body).map_err(|e| e.to_string())
}

/// One streamed chunk: text (`delta`), the opening role, or the end (`finish`, with the
/// `fedai` object).
pub fn chunk(meta: &Meta, text: &str, first: bool, finish: Option<&Finished>) -> Value {
    let finish_reason = finish.map(|f| f.finish_reason);
    let choice = match meta.endpoint {
        Endpoint::Chat => {
            let mut delta = json!({});
            if first {
                delta["role"] = "assistant".into();
            }
            if !text.is_empty() || first {
                delta["content"] = text.into();
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason})
        }
        Endpoint::Completions | Endpoint::Embeddings => {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason})
        }
    };
    let mut v = json!({
        "id": meta.id,
        "object": meta.object(true),
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "system_fingerprint": null,
    });
    if let Some(f) = finish {
        v["fedai"] = f.fedai();
    }
    v
}

/// The tool calls of a streamed answer, whole, as one delta (sent once the result verified).
pub fn tool_calls_chunk(meta: &Meta, calls: &[ToolCall]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(index, c)| {
            json!({"index": index, "id": c.id, "type": c.kind,
                   "function": {"name": c.function.name, "arguments": c.function.arguments}})
        })
        .collect();
    json!({
        "id": meta.id,
        "object": meta.object(true),
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": {"tool_calls": calls}, "logprobs": null, "finish_reason": null}],
        "system_fingerprint": null,
    })
}

/// OpenAI's `logprobs` of a chat choice (`null` when none were asked for): each token with its
/// UTF-8 bytes and alternatives.
pub fn logprobs(l: &[TokenLogprob]) -> Value {
    if l.is_empty() {
        return Value::Null;
    }
    let entry = |token: &str, logprob: f32| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
    let content: Vec<Value> = l
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, t.logprob);
            e["top_logprobs"] = t
                .top_logprobs
                .iter()
                .map(|a| entry(&a.token, a.logprob))
                .collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// A stream's log probabilities, all in one chunk before its end (sent once the result
/// verified).
pub fn logprobs_chunk(meta: &Meta, l: &[TokenLogprob]) -> Value {
    json!({
        "id": meta.id,
        "object": meta.object(true),
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": {}, "logprobs": logprobs(l), "finish_reason": null}],
        "system_fingerprint": null,
    })
}

/// The usage chunk that ends a stream with `stream_options.include_usage` (no choices).
pub fn usage_chunk(meta: &Meta, f: &Finished) -> Value {
    json!({
        "id": meta.id,
        "object": meta.object(true),
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage(std::slice::from_ref(f)),
    })
}

/// `GET /v1/models`: one entry per model live on the network, with its workers, price range,
/// largest context and the features some worker serves it with.
pub fn models(ads: &[ParsedCapabilityAd]) -> Value {
    #[derive(Default)]
    struct M {
        created: u64,
        workers: Vec<PublicKey>,
        context: u32,
        features: Vec<String>,
        kinds: Vec<u16>,
        prices: Vec<[u64; 3]>,
    }
    let mut by_model: BTreeMap<&str, M> = BTreeMap::new();
    for a in ads {
        for info in &a.ad.models {
            let m = by_model.entry(info.id.as_str()).or_default();
            let t = a.created_at.as_secs();
            m.created = if m.created == 0 { t } else { m.created.min(t) };
            if !m.workers.contains(&a.worker) {
                m.workers.push(a.worker);
            }
            m.context = m.context.max(info.context_length);
            for k in &a.ad.job_kinds {
                if !m.kinds.contains(k) {
                    m.kinds.push(*k);
                }
            }
            for f in &a.ad.features {
                if !m.features.contains(f) {
                    m.features.push(f.clone());
                }
            }
            let p = a.ad.price_for(&info.id);
            m.prices.push(p.map_or([0; 3], |p| {
                [p.base_msat, p.per_1k_input_msat, p.per_1k_output_msat]
            }));
        }
    }
    let data: Vec<Value> = by_model
        .into_iter()
        .map(|(id, mut m)| {
            m.features.sort();
            m.kinds.sort();
            let range = |i: usize| {
                let it = m.prices.iter().map(|p| p[i]);
                json!([it.clone().min().unwrap_or(0), it.max().unwrap_or(0)])
            };
            json!({
                "id": id,
                "object": "model",
                "created": m.created,
                "owned_by": "fedai",
                "fedai": {
                    "workers": m.workers.len(),
                    "context_length": m.context,
                    "features": m.features,
                    "job_kinds": m.kinds,
                    "price_msat": {
                        "base": range(0),
                        "per_1k_input": range(1),
                        "per_1k_output": range(2),
                    },
                },
            })
        })
        .collect();
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::Keys;

    #[test]
    fn embeddings_answer_in_order_with_f32s_as_written() {
        let meta = Meta::new(Endpoint::Embeddings, "e");
        let a =
            |v: Vec<Vec<f32>>| finished(&fedai_protocol::EmbedAnswer { vectors: v }.to_output());
        let done = [
            a(vec![vec![0.1, -2.5]]),
            a(vec![vec![1.0, 0.0], vec![0.5, 0.25]]),
        ];
        let body = embeddings(&meta, &done, false).unwrap();
        assert!(body.contains("[0.1,-2.5]"), "shortest f32 form: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let idx: Vec<u64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["index"].as_u64().unwrap())
            .collect();
        assert_eq!(idx, vec![0, 1, 2]);
        assert_eq!(v["data"][2]["embedding"], json!([0.5, 0.25]));
        assert_eq!(v["usage"]["prompt_tokens"], 20);
        assert_eq!(v["fedai"].as_array().unwrap().len(), 2);
        let b64: Value = serde_json::from_str(&embeddings(&meta, &done, true).unwrap()).unwrap();
        assert_eq!(
            b64["data"][1]["embedding"],
            fedai_protocol::vector_base64(&[1.0, 0.0])
        );
        // Vectors of two lengths from two workers are not one answer.
        let odd = [a(vec![vec![0.1, 0.2]]), a(vec![vec![0.1]])];
        assert!(embeddings(&meta, &odd, false).is_err());
    }

    fn finished(out: &str) -> Finished {
        Finished {
            output: out.into(),
            tool_calls: Vec::new(),
            logprobs: Vec::new(),
            input_tokens: 10,
            output_tokens: 4,
            cost_msat: 7,
            paid_msat: 7,
            request_id: EventId::from_byte_array([0; 32]),
            worker: Keys::generate().public_key(),
            result_id: EventId::from_byte_array([0; 32]),
            metering_id: EventId::from_byte_array([0; 32]),
            finish_reason: "stop",
        }
    }

    #[test]
    fn a_chat_completion_has_openai_fields_and_metered_usage() {
        let meta = Meta::new(Endpoint::Chat, "m");
        let v = completion(&meta, &[finished("Hi"), finished("Yo")]);
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][0]["message"]["content"], "Hi");
        assert_eq!(v["usage"]["total_tokens"], 28);
        assert_eq!(v["usage"]["cost_msat"], 14);
        assert_eq!(v["fedai"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn stream_chunks_open_with_the_role_and_end_with_the_reason() {
        let meta = Meta::new(Endpoint::Chat, "m");
        let first = chunk(&meta, "", true, None);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let mid = chunk(&meta, "x", false, None);
        assert_eq!(mid["choices"][0]["delta"], json!({"content": "x"}));
        assert!(mid["choices"][0]["finish_reason"].is_null());
        let f = finished("x");
        let end = chunk(&meta, "", false, Some(&f));
        assert_eq!(end["choices"][0]["finish_reason"], "stop");
        assert_eq!(end["choices"][0]["delta"], json!({}));
        assert_eq!(usage_chunk(&meta, &f)["choices"], json!([]));
    }

    #[test]
    fn tool_calls_are_openai_messages_and_deltas() {
        let meta = Meta::new(Endpoint::Chat, "m");
        let mut f = finished("");
        f.finish_reason = "tool_calls";
        f.tool_calls = vec![ToolCall {
            id: "call_a_0".into(),
            kind: "function".into(),
            function: fedai_protocol::FunctionCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            },
        }];
        let v = completion(&meta, std::slice::from_ref(&f));
        let m = &v["choices"][0]["message"];
        assert!(m["content"].is_null());
        assert_eq!(m["tool_calls"][0]["id"], "call_a_0");
        assert_eq!(m["tool_calls"][0]["type"], "function");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let d = &tool_calls_chunk(&meta, &f.tool_calls)["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(d["index"], 0);
        assert_eq!(d["function"]["name"], "get_weather");
    }
}
