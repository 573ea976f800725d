//! OpenAI's request bodies read into fed_AI jobs (pure functions, no I/O).
//!
//! Every parameter an app sends either reaches the job, is checked to be a no-op (`n: 1`,
//! `logprobs: false`, `tool_choice: "none"`, …), or is refused with a 400 that names it: a
//! parameter is never dropped silently. Fields that only label the call (`user`, `metadata`,
//! `store`, `service_tier`) change nothing a worker computes and are accepted.

use fedai_protocol::nostr::prelude::{FromBech32, PublicKey};
use fedai_protocol::{ChatMessage, JobInput, JobRequest, ToolCall};
use fedai_scheduler::Strategy;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Limits on what one request may ask.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages in one conversation.
    pub max_messages: usize,
    /// Completions fanned out for `n`.
    pub max_n: u32,
    /// Stop sequences (OpenAI takes at most 4).
    pub max_stop: usize,
    /// Texts in one `/v1/embeddings` call (OpenAI takes 2048), sent as jobs of at most
    /// [`fedai_protocol::job::MAX_EMBED_INPUTS`] texts and [`EMBED_JOB_BYTES`] each.
    pub max_embed_inputs: usize,
}

/// The most text bytes one embedding job carries (a worker takes 64 KiB of prompt by default);
/// a longer text goes alone.
pub const EMBED_JOB_BYTES: usize = 32 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_messages: 256,
            max_n: 8,
            max_stop: 4,
            max_embed_inputs: 2048,
        }
    }
}

/// How the app wants its worker chosen (OpenRouter's `provider` object, in msat and keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// The most this request may cost, msat (under the gateway's own cap).
    pub max_price_msat: Option<u64>,
    /// OpenRouter's `sort` as a scheduler strategy: `price` → cheapest, `latency` and
    /// `throughput` → fastest (none: balanced).
    pub sort: Option<Strategy>,
    /// Only these workers.
    pub only: Vec<PublicKey>,
    /// Never these workers.
    pub ignore: Vec<PublicKey>,
    /// Move to another worker when one fails (default true).
    pub allow_fallbacks: bool,
}

/// Which endpoint a call came in on (the answer's shape follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
}

/// One OpenAI call, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// The model asked for, as the app named it.
    pub model: String,
    /// The job (one per choice when `n > 1`; an embedding call's first batch).
    pub job: JobRequest,
    /// Choices asked for (an embedding call: its batches, once sized by [`embed_batches`]).
    pub n: u32,
    /// An embedding call's jobs, one per batch of texts, in order (empty for the others, and
    /// until the models' vector lengths are known).
    pub batches: Vec<JobRequest>,
    /// An embedding call's texts, in order.
    pub texts: Vec<String>,
    /// Embeddings answered as base64 (`encoding_format: base64`), not arrays of numbers.
    pub base64: bool,
    /// Server-sent events.
    pub stream: bool,
    /// A usage chunk at the end of a stream.
    pub include_usage: bool,
    /// Worker choice.
    pub routing: Routing,
}

/// Keys that only label a call for the app's own records; they change nothing a worker does.
const LABELS: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
];

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param), message)
}

/// Read a `/v1/chat/completions` body.
pub fn chat(body: &Value, limits: &Limits) -> Result<Call, ApiError> {
    let obj = object(body)?;
    let messages = obj
        .get("messages")
        .ok_or_else(|| bad("messages", "`messages` is required"))?;
    let input = JobInput::Chat(messages_of(messages, limits)?);
    call(obj, Endpoint::Chat, input, limits, &["messages"])
}

/// Read a `/v1/completions` body.
pub fn completion(body: &Value, limits: &Limits) -> Result<Call, ApiError> {
    let obj = object(body)?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_owned()
        }
        Some(Value::Array(_)) => {
            return Err(bad(
                "prompt",
                "only one prompt per request (send one request per prompt)",
            ))
        }
        _ => return Err(bad("prompt", "`prompt` must be a string")),
    };
    for (key, neutral) in [("echo", Value::Bool(false)), ("best_of", Value::from(1))] {
        if obj.get(key).is_some_and(|v| !v.is_null() && *v != neutral) {
            return Err(bad(key, format!("`{key}` is not supported")));
        }
    }
    if obj.get("suffix").is_some_and(|v| !v.is_null()) {
        return Err(bad(
            "suffix",
            "`suffix` (fill in the middle) is not supported",
        ));
    }
    call(
        obj,
        Endpoint::Completions,
        JobInput::Text(prompt),
        limits,
        &["prompt", "echo", "best_of", "suffix"],
    )
}

/// Read a `/v1/embeddings` body: `input` (a string or strings; token arrays are refused),
/// `model`, `encoding_format`; `dimensions` is refused (no worker shortens vectors yet).
pub fn embeddings(body: &Value, limits: &Limits) -> Result<Call, ApiError> {
    let obj = object(body)?;
    let model = model_of(obj)?;
    let texts: Vec<String> = match obj.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .map(|s| s.as_str().unwrap_or_default().to_owned())
            .collect(),
        Some(Value::Array(a)) if a.iter().any(|v| v.is_number() || v.is_array()) => {
            return Err(bad(
                "input",
                "token arrays are not supported (tokenizers differ from worker to worker): send text",
            ))
        }
        _ => {
            return Err(bad(
                "input",
                "`input` must be a string or a non-empty array of strings",
            ))
        }
    };
    if texts.len() > limits.max_embed_inputs {
        return Err(bad(
            "input",
            format!("at most {} texts per request", limits.max_embed_inputs),
        ));
    }
    if texts.iter().any(String::is_empty) {
        return Err(bad("input", "an empty string cannot be embedded"));
    }
    let mut base64 = false;
    let mut routing = Routing {
        allow_fallbacks: true,
        ..Routing::default()
    };
    for (key, v) in obj {
        if v.is_null()
            || matches!(key.as_str(), "model" | "input")
            || LABELS.contains(&key.as_str())
        {
            continue;
        }
        match key.as_str() {
            "encoding_format" => {
                base64 = match v.as_str() {
                    Some("float") => false,
                    Some("base64") => true,
                    _ => return Err(bad(key, "`encoding_format` is `float` or `base64`")),
                }
            }
            "provider" => routing = provider(v)?,
            "dimensions" => return Err(ApiError::unsupported(key)),
            _ => return Err(bad(key, format!("unrecognized request argument `{key}`"))),
        }
    }
    // Checked as one job would be (each batch is checked again when built).
    let mut job = JobRequest::embed([texts[0].clone()]);
    job.params.model = Some(model.clone());
    job.validate()
        .map_err(|e| ApiError::invalid(Some("input"), e.to_string()))?;
    Ok(Call {
        endpoint: Endpoint::Embeddings,
        model,
        job,
        n: 1,
        batches: Vec::new(),
        texts,
        base64,
        stream: false,
        include_usage: false,
        routing,
    })
}

/// An embedding call's texts as jobs for `model`, in order: as few as hold them with at most
/// `per_job` texts and about [`EMBED_JOB_BYTES`] each, evened out (65 texts go as 33 + 32, not
/// 64 + 1, so each job's share of the call's price cap fits its size).
pub fn embed_batches(texts: &[String], model: &str, per_job: usize) -> Vec<JobRequest> {
    // A text's place in the request: itself, escaped, and its tag around it.
    let size = |t: &String| t.len() + t.len() / 8 + 16;
    let per_job = per_job.clamp(1, fedai_protocol::job::MAX_EMBED_INPUTS);
    let total: usize = texts.iter().map(size).sum();
    let jobs = texts
        .len()
        .div_ceil(per_job)
        .max(total.div_ceil(EMBED_JOB_BYTES))
        .max(1);
    let count = texts.len().div_ceil(jobs);
    let mut out: Vec<Vec<String>> = Vec::new();
    let (mut batch, mut used) = (Vec::new(), 0usize);
    for t in texts {
        let n = size(t);
        if !batch.is_empty() && (batch.len() == count || used + n > EMBED_JOB_BYTES) {
            out.push(std::mem::take(&mut batch));
            used = 0;
        }
        used += n;
        batch.push(t.clone());
    }
    out.push(batch);
    out.into_iter()
        .map(|b| {
            let mut job = JobRequest::embed(b);
            job.params.model = Some(model.to_owned());
            job
        })
        .collect()
}

/// The `model` every endpoint requires.
fn model_of(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        _ => Err(bad("model", "`model` is required (see GET /v1/models)")),
    }
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid(None, "the request body must be a JSON object"))
}

/// The parameters both endpoints share.
fn call(
    obj: &Map<String, Value>,
    endpoint: Endpoint,
    input: JobInput,
    limits: &Limits,
    read: &[&str],
) -> Result<Call, ApiError> {
    let model = model_of(obj)?;
    let mut job = JobRequest::text("");
    job.input = input;
    job.params.model = Some(model.clone());
    let mut n = 1;
    let mut stream = false;
    let mut include_usage = false;
    let mut routing = Routing {
        allow_fallbacks: true,
        ..Routing::default()
    };
    for (key, v) in obj {
        if v.is_null() || read.contains(&key.as_str()) || LABELS.contains(&key.as_str()) {
            continue;
        }
        let p = &mut job.params;
        match key.as_str() {
            "model" => {}
            "max_tokens" | "max_completion_tokens" => {
                let t = uint(key, v)?;
                let t = u32::try_from(t).map_err(|_| bad(key, "too large"))?;
                // Both given: the smaller binds.
                p.max_tokens = Some(p.max_tokens.map_or(t, |o| o.min(t)));
            }
            "temperature" => p.temperature = Some(float(key, v)?),
            "top_p" => p.top_p = Some(float(key, v)?),
            "top_k" => p.top_k = Some(u32::try_from(uint(key, v)?).unwrap_or(u32::MAX)),
            "frequency_penalty" => p.frequency_penalty = Some(float(key, v)?),
            "presence_penalty" => p.presence_penalty = Some(float(key, v)?),
            "seed" => {
                p.seed = Some(match v.as_i64() {
                    Some(s) => s as u64,
                    None => uint(key, v)?,
                })
            }
            "stop" => p.stop = stops(v, limits)?,
            "stream" => stream = v.as_bool().ok_or_else(|| bad(key, "must be a boolean"))?,
            "stream_options" => {
                include_usage = v
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            }
            "n" => {
                let k = uint(key, v)?;
                if k == 0 || k > u64::from(limits.max_n) {
                    return Err(bad(key, format!("`n` must be 1..={}", limits.max_n)));
                }
                n = k as u32;
            }
            "response_format" => p.json_schema = response_format(v)?,
            "provider" => routing = provider(v)?,
            "tools" if endpoint == Endpoint::Chat => p.tools = tools(v)?,
            "parallel_tool_calls" => {
                p.parallel_tool_calls =
                    Some(v.as_bool().ok_or_else(|| bad(key, "must be a boolean"))?)
            }
            "tool_choice" if endpoint == Endpoint::Chat => {
                p.tool_choice = Some(match v {
                    Value::String(c) => c.clone(),
                    Value::Object(_) => v.to_string(),
                    _ => return Err(bad(key, "`tool_choice` is a string or an object")),
                })
            }
            "logprobs" if endpoint == Endpoint::Chat => {
                p.logprobs = v.as_bool().ok_or_else(|| bad(key, "must be a boolean"))?
            }
            "top_logprobs" if endpoint == Endpoint::Chat => {
                let n = uint(key, v)?;
                if n > u64::from(fedai_protocol::job::MAX_TOP_LOGPROBS) {
                    return Err(bad(key, "`top_logprobs` is 0 to 20"));
                }
                p.top_logprobs = Some(n as u8);
            }
            "logprobs" if v == false => {}
            "top_logprobs" if v == 0 => {}
            "logit_bias" if v.as_object().is_some_and(Map::is_empty) => {}
            "functions" if v.as_array().is_some_and(Vec::is_empty) => {}
            "function_call" if v == "none" || v == "auto" => {}
            "logprobs" | "top_logprobs" | "logit_bias" | "tools" | "functions" | "tool_choice"
            | "function_call" | "audio" | "modalities" | "prediction" | "web_search_options"
            | "reasoning_effort" => {
                return Err(ApiError::unsupported(key));
            }
            _ => return Err(bad(key, format!("unrecognized request argument `{key}`"))),
        }
    }
    // Without tools, `auto` and `none` ask nothing of a worker; any other choice needs tools.
    if job.params.tools.is_none()
        && matches!(job.params.tool_choice.as_deref(), Some("auto" | "none"))
    {
        job.params.tool_choice = None;
    }
    if job.params.tools.is_none() {
        // Without tools it asks nothing of a worker.
        job.params.parallel_tool_calls = None;
    }
    if !job.params.logprobs {
        if job.params.top_logprobs.is_some_and(|n| n > 0) {
            return Err(bad("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
        }
        job.params.top_logprobs = None;
    } else if job.params.max_tokens.is_none() {
        // Every token's entry must fit in the signed answer: a bound apps need not know.
        let per_token = 1 + u64::from(job.params.top_logprobs.unwrap_or(0));
        let most = fedai_protocol::job::MAX_LOGPROB_ENTRIES / per_token;
        job.params.max_tokens = Some(most.min(1024) as u32);
    }
    if job.params.tool_choice.is_some() && job.params.tools.is_none() {
        return Err(bad("tool_choice", "`tool_choice` needs `tools`"));
    }
    // A last turn after tool calls, sent without `tools` (apps do, to get the final text):
    // the functions named in the conversation, none to be called.
    if job.params.tools.is_none() && job.input.has_tool_turns() {
        let mut names: Vec<&str> = Vec::new();
        if let JobInput::Chat(m) = &job.input {
            for c in m.iter().flat_map(|m| &m.tool_calls) {
                if !names.contains(&c.function.name.as_str()) {
                    names.push(&c.function.name);
                }
            }
        }
        let tools: Vec<Value> = names
            .iter()
            .map(|n| serde_json::json!({"type": "function", "function": {"name": n}}))
            .collect();
        job.params.tools = Some(Value::Array(tools).to_string());
        job.params.tool_choice = Some("none".into());
    }
    if n > 1 && stream {
        return Err(bad(
            "n",
            "`n` > 1 with `stream` is not supported; send n requests",
        ));
    }
    job.params.stream = stream;
    job.validate().map_err(|e| {
        let param = if job.params.tools.is_some() {
            Some("tools")
        } else if job.params.logprobs {
            Some("logprobs")
        } else {
            None
        };
        ApiError::invalid(param, e.to_string())
    })?;
    Ok(Call {
        endpoint,
        model,
        job,
        n,
        batches: Vec::new(),
        texts: Vec::new(),
        base64: false,
        stream,
        include_usage,
        routing,
    })
}

fn uint(key: &str, v: &Value) -> Result<u64, ApiError> {
    v.as_u64()
        .ok_or_else(|| bad(key, format!("`{key}` must be a non-negative integer")))
}

fn float(key: &str, v: &Value) -> Result<f32, ApiError> {
    v.as_f64()
        .map(|f| f as f32)
        .filter(|f| f.is_finite())
        .ok_or_else(|| bad(key, format!("`{key}` must be a number")))
}

fn stops(v: &Value, limits: &Limits) -> Result<Vec<String>, ApiError> {
    let out: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("stop", "`stop` must be a string or an array of strings"))?,
        _ => {
            return Err(bad(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    if out.len() > limits.max_stop {
        return Err(bad(
            "stop",
            format!("at most {} stop sequences", limits.max_stop),
        ));
    }
    Ok(out)
}

/// `tools`: OpenAI function tools, kept as compact JSON (the protocol checks names, count and
/// size); an empty list is no tools.
fn tools(v: &Value) -> Result<Option<String>, ApiError> {
    let list = v
        .as_array()
        .ok_or_else(|| bad("tools", "`tools` must be an array"))?;
    if list.is_empty() {
        return Ok(None);
    }
    for t in list {
        if t["type"] != "function" {
            return Err(ApiError::unsupported("tools"));
        }
    }
    Ok(Some(v.to_string()))
}

/// `response_format`: `text`, `json_object` (any JSON object), or `json_schema`.
fn response_format(v: &Value) -> Result<Option<String>, ApiError> {
    let param = "response_format";
    match v["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(r#"{"type":"object"}"#.into())),
        Some("json_schema") => {
            let schema = &v["json_schema"]["schema"];
            if !schema.is_object() {
                return Err(bad(param, "`json_schema.schema` must be a JSON object"));
            }
            let s = schema.to_string();
            if s.len() > fedai_protocol::job::MAX_JSON_SCHEMA_BYTES {
                return Err(bad(param, "the JSON schema is too large"));
            }
            Ok(Some(s))
        }
        _ => Err(bad(
            param,
            "`response_format.type` must be text, json_object or json_schema",
        )),
    }
}

/// OpenRouter's `provider` object: `only`, `ignore` (npub or hex keys), `sort`,
/// `allow_fallbacks`, and `max_price` — here a number of msat for the whole request (or
/// `{"request": msat}`), since fed_AI prices in msat.
fn provider(v: &Value) -> Result<Routing, ApiError> {
    let param = "provider";
    let obj = v
        .as_object()
        .ok_or_else(|| bad(param, "`provider` must be an object"))?;
    let mut r = Routing {
        allow_fallbacks: true,
        ..Routing::default()
    };
    for (key, v) in obj {
        match key.as_str() {
            "only" | "order" => r.only = keys(v)?,
            "ignore" => r.ignore = keys(v)?,
            "allow_fallbacks" => {
                r.allow_fallbacks = v
                    .as_bool()
                    .ok_or_else(|| bad(param, "`allow_fallbacks` must be a boolean"))?
            }
            "require_parameters" | "data_collection" => {}
            "sort" => {
                r.sort = Some(match v.as_str() {
                    Some("price") => Strategy::Cheapest,
                    Some("latency" | "throughput") => Strategy::Fastest,
                    _ => return Err(bad(param, "`sort` is price, latency or throughput")),
                })
            }
            "max_price" | "max_price_msat" => {
                let msat = v
                    .as_u64()
                    .or_else(|| v["request"].as_u64())
                    .ok_or_else(|| bad(param, "`max_price` is msat for the request (a number)"))?;
                r.max_price_msat = Some(msat);
            }
            other => {
                return Err(bad(
                    param,
                    format!("unrecognized provider preference `{other}`"),
                ))
            }
        }
    }
    Ok(r)
}

fn keys(v: &Value) -> Result<Vec<PublicKey>, ApiError> {
    let list = v
        .as_array()
        .ok_or_else(|| bad("provider", "worker lists are arrays of npub or hex keys"))?;
    if list.len() > 64 {
        return Err(bad("provider", "at most 64 workers in a list"));
    }
    list.iter()
        .map(|k| {
            let s = k.as_str().unwrap_or_default();
            PublicKey::from_bech32(s)
                .or_else(|_| PublicKey::from_hex(s))
                .map_err(|_| bad("provider", format!("`{s}` is not a worker key")))
        })
        .collect()
}

/// Messages: `system`/`developer`, `user`, `assistant`; text content as a string or as
/// `text` parts. Tool messages and non-text parts are refused by name.
fn messages_of(v: &Value, limits: &Limits) -> Result<Vec<ChatMessage>, ApiError> {
    let list = v
        .as_array()
        .ok_or_else(|| bad("messages", "`messages` must be an array"))?;
    if list.is_empty() {
        return Err(bad("messages", "`messages` is empty"));
    }
    if list.len() > limits.max_messages {
        return Err(bad(
            "messages",
            format!("at most {} messages", limits.max_messages),
        ));
    }
    let messages: Vec<ChatMessage> = list.iter().map(message).collect::<Result<_, _>>()?;
    // A tool output answers a call made earlier in the conversation.
    for (i, m) in messages.iter().enumerate() {
        if let Some(id) = &m.tool_call_id {
            let asked = messages[..i]
                .iter()
                .flat_map(|a| &a.tool_calls)
                .any(|c| &c.id == id);
            if !asked {
                return Err(bad(
                    "messages",
                    format!("tool message `{id}` answers no earlier tool call"),
                ));
            }
        }
    }
    Ok(messages)
}

fn message(m: &Value) -> Result<ChatMessage, ApiError> {
    let role = match m["role"].as_str() {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("tool") => "tool",
        Some("function") => return Err(ApiError::unsupported("functions")),
        _ => {
            return Err(bad(
                "messages",
                "each message's `role` is system, developer, user or assistant",
            ))
        }
    };
    let tool_calls: Vec<ToolCall> = match m.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(calls) if role == "assistant" => serde_json::from_value(calls.clone())
            .ok()
            .filter(|c: &Vec<ToolCall>| {
                c.len() <= fedai_protocol::job::MAX_TOOL_CALLS
                    && c.iter().all(ToolCall::well_formed)
            })
            .ok_or_else(|| {
                bad(
                    "messages",
                    "`tool_calls` must be a list of {id, type: function, function: {name, arguments: a JSON object as text}}",
                )
            })?,
        Some(_) => return Err(bad("messages", "only assistant messages carry `tool_calls`")),
    };
    let tool_call_id = match (role, &m["tool_call_id"]) {
        ("tool", Value::String(id)) => Some(id.clone()),
        ("tool", _) => return Err(bad("messages", "a `tool` message needs its `tool_call_id`")),
        _ => None,
    };
    let content = match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Null if role == "assistant" => String::new(),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some(other), _) => {
                        return Err(bad(
                            "messages",
                            format!(
                                "content parts of type `{other}` are not supported (text only)"
                            ),
                        ))
                    }
                    _ => return Err(bad("messages", "a content part has no type")),
                }
            }
            text
        }
        _ => return Err(bad("messages", "a message's `content` must be text")),
    };
    Ok(ChatMessage {
        role: role.into(),
        content,
        tool_calls,
        tool_call_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embeddings_bodies_are_read_or_refused_by_name() {
        let read = |v: Value| embeddings(&v, &Limits::default());
        let c = read(json!({"model": "e", "input": "one", "encoding_format": "base64"})).unwrap();
        assert_eq!(
            (c.endpoint, c.texts.len(), c.base64),
            (Endpoint::Embeddings, 1, true)
        );
        assert_eq!(c.job.kind(), fedai_protocol::kinds::EMBED_REQUEST);
        let c = read(json!({"model": "e", "input": ["a", "b"], "user": "u"})).unwrap();
        assert_eq!((c.texts.len(), c.base64), (2, false));
        let param = |v: Value| read(v).unwrap_err().param;
        assert_eq!(
            param(json!({"model": "e", "input": [[1, 2]]})).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(json!({"model": "e", "input": [1, 2]})).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(json!({"model": "e", "input": ["a", ""]})).as_deref(),
            Some("input")
        );
        assert_eq!(
            param(json!({"model": "e", "input": []})).as_deref(),
            Some("input")
        );
        assert_eq!(param(json!({"input": "a"})).as_deref(), Some("model"));
        assert_eq!(
            param(json!({"model": "e", "input": "a", "dimensions": 8})).as_deref(),
            Some("dimensions")
        );
        assert_eq!(
            param(json!({"model": "e", "input": "a", "encoding_format": "hex"})).as_deref(),
            Some("encoding_format")
        );
        assert_eq!(
            param(json!({"model": "e", "input": "a", "temperature": 1})).as_deref(),
            Some("temperature")
        );
        let many: Vec<String> = (0..2049).map(|i| i.to_string()).collect();
        assert_eq!(
            param(json!({"model": "e", "input": many})).as_deref(),
            Some("input")
        );
    }

    #[test]
    fn embedding_batches_keep_order_and_even_out() {
        let texts = |n: usize, len: usize| -> Vec<String> {
            (0..n).map(|i| format!("{i:0>len$}")).collect()
        };
        let sizes = |b: &[JobRequest]| -> Vec<usize> {
            b.iter().map(|j| j.input.embed_texts().len()).collect()
        };
        let t = texts(65, 4);
        let b = embed_batches(&t, "e", 64);
        assert_eq!(sizes(&b), vec![33, 32], "65 texts: 33 + 32, not 64 + 1");
        let back: Vec<String> = b
            .iter()
            .flat_map(|j| j.input.embed_texts().to_vec())
            .collect();
        assert_eq!(back, t, "in order");
        assert!(b
            .iter()
            .all(|j| j.params.model.as_deref() == Some("e") && j.validate().is_ok()));
        assert_eq!(
            sizes(&embed_batches(&texts(150, 4), "e", 64)),
            vec![50, 50, 50]
        );
        assert_eq!(sizes(&embed_batches(&texts(20, 4), "e", 8)), vec![7, 7, 6]);
        // By bytes: three 20 KB texts do not share a job.
        assert_eq!(
            sizes(&embed_batches(&texts(3, 20_000), "e", 64)),
            vec![1, 1, 1]
        );
        assert_eq!(sizes(&embed_batches(&texts(1, 4), "e", 64)), vec![1]);
    }

    fn read(v: Value) -> Result<Call, ApiError> {
        chat(&v, &Limits::default())
    }

    #[test]
    fn a_chat_body_becomes_a_job_with_every_parameter() {
        let c = read(json!({
            "model": "smol",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again"}
            ],
            "max_completion_tokens": 20, "max_tokens": 30, "temperature": 0.5, "top_p": 0.9,
            "stop": ["\n"], "seed": 7, "stream": true, "stream_options": {"include_usage": true},
            "presence_penalty": 0.1, "user": "someone", "logprobs": false, "tool_choice": "none",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        }))
        .unwrap();
        assert_eq!(c.model, "smol");
        assert!(c.stream && c.include_usage);
        let p = &c.job.params;
        assert_eq!(p.max_tokens, Some(20));
        assert_eq!(p.temperature, Some(0.5));
        assert_eq!(p.stop, vec!["\n".to_string()]);
        assert_eq!(p.seed, Some(7));
        assert!(p.stream);
        assert_eq!(p.json_schema.as_deref(), Some(r#"{"type":"object"}"#));
        let JobInput::Chat(m) = &c.job.input else {
            panic!("chat input")
        };
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(m[1].content, "Hi");
    }

    #[test]
    fn parameters_that_would_be_dropped_are_refused_by_name() {
        for (key, v) in [
            (
                "tools",
                json!([{"type": "custom", "custom": {"name": "f"}}]),
            ),
            ("functions", json!([{"name": "f"}])),
            ("logit_bias", json!({"1": 2})),
            ("audio", json!({})),
            ("frobnicate", json!(1)),
        ] {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body[key] = v;
            let e = read(body).unwrap_err();
            assert_eq!(e.status, 400, "{key}");
            assert_eq!(e.param.as_deref(), Some(key), "{key}");
        }
        let e = read(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(
            e.param.as_deref(),
            Some("messages"),
            "a tool message without its call id"
        );
    }

    #[test]
    fn logprobs_reach_the_job_within_what_a_result_can_hold() {
        let body = |extra: Value| {
            let mut b = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        let c = read(body(json!({"logprobs": true, "top_logprobs": 2}))).unwrap();
        assert!(c.job.params.logprobs);
        assert_eq!(c.job.params.top_logprobs, Some(2));
        assert_eq!(c.job.params.features(), ["logprobs"]);
        assert_eq!(
            c.job.params.max_tokens,
            Some(2048 / 3),
            "the most that fits when the app sets none"
        );
        // An app's own max_tokens too large for every entry to fit: a 400, not a cut answer.
        let e = read(body(
            json!({"logprobs": true, "top_logprobs": 20, "max_tokens": 4000}),
        ))
        .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("logprobs")));
        let e = read(body(json!({"top_logprobs": 3}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let e = read(body(json!({"logprobs": true, "top_logprobs": 21}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        // The legacy completions API's integer `logprobs` is not served.
        let e = completion(
            &json!({"model": "m", "prompt": "x", "logprobs": 2}),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
    }

    #[test]
    fn tools_and_tool_turns_reach_the_job() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let c = read(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            ],
            "tools": tools,
            "tool_choice": "required",
            "parallel_tool_calls": false,
        }))
        .unwrap();
        let p = &c.job.params;
        assert_eq!(p.tools.as_deref(), Some(tools.to_string().as_str()));
        assert_eq!(p.tool_choice.as_deref(), Some("required"));
        assert_eq!(
            p.features(),
            ["tools"],
            "only workers serving tools are chosen"
        );
        let JobInput::Chat(m) = &c.job.input else {
            panic!("a chat")
        };
        assert_eq!(m[1].tool_calls[0].function.name, "get_weather");
        assert_eq!(m[1].content, "");
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_1"));
        // The wire form reads back the same.
        let keys = fedai_protocol::Keys::generate();
        let ev = c.job.to_event(&keys, None).unwrap();
        let back = JobRequest::from_event(&ev, None).unwrap();
        assert_eq!(back.request.input, c.job.input);
        assert_eq!(back.request.params.tools, c.job.params.tools);

        assert_eq!(p.parallel_tool_calls, Some(false));

        // The last turn sent without `tools`: a text answer, with the functions named.
        let mut follow = json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ]});
        let f = read(follow.clone()).unwrap();
        assert_eq!(f.job.params.tool_choice.as_deref(), Some("none"));
        assert!(f.job.params.tools.unwrap().contains("get_weather"));
        // A tool output for a call never made, arguments that are not a JSON object.
        follow["messages"][2]["tool_call_id"] = json!("call_9");
        assert_eq!(
            read(follow.clone()).unwrap_err().param.as_deref(),
            Some("messages")
        );
        follow["messages"][2]["tool_call_id"] = json!("call_1");
        follow["messages"][1]["tool_calls"][0]["function"]["arguments"] = json!("Paris");
        assert_eq!(read(follow).unwrap_err().param.as_deref(), Some("messages"));

        // `auto`/`none` without tools ask nothing; anything else without tools is a 400.
        let plain = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let mut b = plain.clone();
        b["tool_choice"] = json!("none");
        assert_eq!(read(b).unwrap().job.params.tool_choice, None);
        let mut b = plain.clone();
        b["tool_choice"] = json!("required");
        assert_eq!(read(b).unwrap_err().param.as_deref(), Some("tool_choice"));
        // A choice naming a function the request does not offer, duplicate names, a bad name.
        for (tools, choice) in [
            (
                tools.clone(),
                json!({"type": "function", "function": {"name": "other"}}),
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}},
                    {"type": "function", "function": {"name": "f"}}]),
                json!("auto"),
            ),
            (
                json!([{"type": "function", "function": {"name": "no spaces"}}]),
                json!("auto"),
            ),
        ] {
            let mut b = plain.clone();
            b["tools"] = tools;
            b["tool_choice"] = choice;
            let e = read(b.clone()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some("tools")), "{b}");
        }
        // Tools are for chats; completions refuse them by name.
        let e = completion(
            &json!({"model": "m", "prompt": "x", "tools": tools}),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
    }

    #[test]
    fn bad_values_are_400_with_the_parameter() {
        for (body, param) in [
            (
                json!({"messages": [{"role": "user", "content": "x"}]}),
                Some("model"),
            ),
            (json!({"model": "m"}), Some("messages")),
            (json!({"model": "m", "messages": []}), Some("messages")),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}),
                Some("n"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2, "stream": true}),
                Some("n"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}),
                Some("stop"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 5}),
                None,
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                Some("messages"),
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "provider": {"only": ["nope"]}}),
                Some("provider"),
            ),
            (json!([1, 2]), None),
        ] {
            let e = read(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}");
        }
        let many: Vec<Value> = (0..257)
            .map(|_| json!({"role": "user", "content": "x"}))
            .collect();
        assert_eq!(
            read(json!({"model": "m", "messages": many}))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn provider_preferences_map_to_routing() {
        let k = fedai_protocol::Keys::generate().public_key();
        let c = read(json!({
            "model": "m", "messages": [{"role": "user", "content": "x"}],
            "provider": {"only": [k.to_hex()], "sort": "price", "allow_fallbacks": false, "max_price": 5000}
        }))
        .unwrap();
        assert_eq!(c.routing.only, vec![k]);
        assert_eq!(c.routing.max_price_msat, Some(5000));
        assert!(!c.routing.allow_fallbacks);
        assert_eq!(c.routing.sort, Some(Strategy::Cheapest));
    }

    #[test]
    fn a_completion_body_is_a_text_job() {
        let c = completion(
            &json!({"model": "m", "prompt": ["Once"], "max_tokens": 5}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(c.job.input, JobInput::Text("Once".into()));
        assert_eq!(c.endpoint, Endpoint::Completions);
        let e = completion(
            &json!({"model": "m", "prompt": "x", "echo": true}),
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("echo"));
    }
}
