//! Job request (NIP-90 kind 5050, text generation).
//!
//! Public layout:
//! ```text
//! ["i", "<prompt>", "text"]                      or ["i", "<json [{role, content}]>", "chat"]
//! ["param", "model", "<id>"]  ["param", "max_tokens", "<n>"]  ["param", "temperature", "<f>"]
//! ["param", "top_k", "<n>"]   ["param", "top_p", "<f>"]       ["param", "frequency_penalty", "<f>"]
//! ["param", "stop", "<s>"] (repeatable)          ["param", "stream", "true|false"]
//! ["param", "seed", "<n>"]    ["param", "presence_penalty", "<f>"]
//! ["param", "json_schema", "<JSON Schema>"]      (the output must be JSON matching it)
//! ["param", "tools", "<JSON array of OpenAI function tools>"]  ["param", "tool_choice", "<…>"]
//!                                                (the result's content is then a JSON
//!                                                 [`JsonAnswer`]: text and/or tool calls)
//! ["output", "text/plain"]  ["bid", "<msat>"]  ["relays", "wss://…", …]  ["p", "<worker>"]
//! ["expiration", "<unix>"]  ["t", "fedai"]
//! ```
//! Encrypted requests move every `i` and `param` tag, as a JSON array of tags, into the content,
//! encrypted to the worker named in `p`, and add `["encrypted"]`.
//!
//! The parser is liberal in what it accepts from generic NIP-90 clients (fedai-01, "What fed_AI
//! accepts"): several `i` tags (joined in order), the `prompt` input type, `url`, `event` and
//! `job` inputs that the worker resolves before running ([`ParsedJobRequest::inputs`]), several
//! `p` tags, and no `expiration`. Requests fed_AI builds carry `["t", "fedai"]`.

use nostr::prelude::{
    Event, EventBuilder, EventId, FinalizeEvent, Keys, PublicKey, Tag, Tags, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::crypto::{self, Encryption};
use crate::kinds;
use crate::tags::{self, tag};
use crate::ProtocolError;

/// One chat message of a chat-style input (OpenAI's message shape, text only).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or `tool` (the answer to a tool call).
    pub role: String,
    /// Message text (`null` is read as empty: an assistant message that only calls tools).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// The tools an `assistant` message called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A plain message.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Option::<String>::deserialize(d).map(Option::unwrap_or_default)
}

/// A function call an assistant made (an entry of OpenAI's `tool_calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id: the `tool` message with its output names it.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function and its arguments.
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".into()
}

/// Which function, with which arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// The function's name, one of the request's `tools`.
    pub name: String,
    /// The arguments as JSON text (an object), as OpenAI carries them.
    pub arguments: String,
}

/// The answer of a job that carried `tools` or asked for `logprobs`: the result's content is
/// this object as JSON, `{"content": "…", "tool_calls": [{"id", "type": "function",
/// "function": {"name", "arguments"}}], "logprobs": [{"token", "logprob", "top_logprobs"}]}`,
/// the assistant message OpenAI's API returns (and its choice's `logprobs.content`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JsonAnswer {
    /// Text for the user (empty when the answer only calls tools).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// The calls the model made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Each generated token with its log probability (a `logprobs` job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
}

/// A generated token and its log probability, with the likeliest alternatives.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural log probability (≤ 0; a runner's f32, so short on the wire).
    pub logprob: f32,
    /// The likeliest tokens at this position (`top_logprobs` of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative token at a position.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural log probability (≤ 0).
    pub logprob: f32,
}

/// The most `top_logprobs` a job may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u8 = 20;
/// The most log-probability entries (tokens and their alternatives) one answer may carry:
/// `max_tokens × (1 + top_logprobs)` must stay within it, so the result fits in a relay's
/// event, encrypted and padded (NIP-44 adds up to a quarter, base64 a third), with room for
/// long tokens and the embedded request.
pub const MAX_LOGPROB_ENTRIES: u64 = 2048;

/// The most tool calls one answer may carry.
pub const MAX_TOOL_CALLS: usize = 64;

impl JsonAnswer {
    /// The result content for this answer.
    pub fn to_output(&self) -> String {
        serde_json::to_string(self).expect("a tool answer serializes")
    }

    /// Read a tools job's result content as its answer, held to the request: only functions
    /// it offered, distinct call ids, none with `tool_choice: none`, at least one when a call
    /// was required, at most one when `parallel_tool_calls` was false. What a customer checks
    /// before it pays or shows an answer.
    pub fn for_request(output: &str, params: &JobParams) -> Result<Self, ProtocolError> {
        let bad = |m: String| ProtocolError::InvalidContent(format!("answer: {m}"));
        let a = Self::parse(output)?;
        let offered = params.tool_list();
        let named = |n: &str| offered.iter().any(|t| t["function"]["name"] == n);
        if let Some(c) = a.tool_calls.iter().find(|c| !named(&c.function.name)) {
            return Err(bad(format!(
                "calls `{}`, which was not offered",
                c.function.name
            )));
        }
        let mut ids = std::collections::HashSet::new();
        if !a.tool_calls.iter().all(|c| ids.insert(c.id.as_str())) {
            return Err(bad("two calls share an id".into()));
        }
        let choice = params.tool_choice.as_deref().unwrap_or("auto");
        if choice == "none" && !a.tool_calls.is_empty() {
            return Err(bad("calls a tool though tool_choice was none".into()));
        }
        if choice != "auto" && choice != "none" && a.tool_calls.is_empty() {
            return Err(bad("calls no tool though one was required".into()));
        }
        if params.logprobs {
            let joined: String = a.logprobs.iter().map(|l| l.token.as_str()).collect();
            let top = usize::from(params.top_logprobs.unwrap_or(0));
            if a.tool_calls.is_empty() && joined != a.content {
                return Err(bad("its logprobs' tokens do not make its text".into()));
            }
            let p_ok = |p: f32| p.is_finite() && p <= 0.0;
            let bounded = a.logprobs.iter().all(|l| {
                p_ok(l.logprob)
                    && l.top_logprobs.len() <= top
                    && l.top_logprobs.iter().all(|t| p_ok(t.logprob))
                    && l.top_logprobs
                        .windows(2)
                        .all(|w| w[0].logprob >= w[1].logprob)
            });
            // One entry per generated piece of text: never more than the tokens asked for.
            let most = params.max_tokens.map_or(0, |n| n as usize);
            if !bounded || a.logprobs.len() > most {
                return Err(bad("its logprobs are out of bounds".into()));
            }
        } else if !a.logprobs.is_empty() {
            return Err(bad("carries logprobs that were not asked for".into()));
        }
        if params.parallel_tool_calls == Some(false) && a.tool_calls.len() > 1 {
            return Err(bad(
                "calls several tools though parallel_tool_calls was false".into(),
            ));
        }
        Ok(a)
    }

    /// Read a result's content as a tool answer (bounded, every call a function with JSON
    /// object arguments and a non-empty id).
    pub fn parse(output: &str) -> Result<Self, ProtocolError> {
        let bad = |m: String| ProtocolError::InvalidContent(format!("tool answer: {m}"));
        let a: Self = serde_json::from_str(output).map_err(|e| bad(e.to_string()))?;
        if a.tool_calls.len() > MAX_TOOL_CALLS {
            return Err(bad(format!("more than {MAX_TOOL_CALLS} tool calls")));
        }
        for c in &a.tool_calls {
            if !tool_name_ok(&c.function.name) || !c.well_formed() {
                return Err(bad(
                    "a tool call is not a named function with a JSON object as arguments".into(),
                ));
            }
        }
        Ok(a)
    }
}

impl ToolCall {
    /// A function call with an id and a JSON object as arguments (whoever sent it: a worker's
    /// answer, an app's earlier turn).
    pub fn well_formed(&self) -> bool {
        self.kind == "function"
            && !self.id.is_empty()
            && matches!(
                serde_json::from_str::<serde_json::Value>(&self.function.arguments),
                Ok(serde_json::Value::Object(_))
            )
    }
}

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobInput {
    /// A plain prompt (`["i", text, "text"]`).
    Text(String),
    /// A chat conversation (`["i", json, "chat"]`), a fed_AI extension of NIP-90 input types.
    Chat(Vec<ChatMessage>),
    /// Texts to embed, one `["i", text, "text"]` tag each: an embedding job (kind 5060), whose
    /// answer is an [`EmbedAnswer`] with one vector per text, in order.
    Embed(Vec<String>),
}

impl JobInput {
    /// The `i` tag's data field, exactly as it goes on the wire. Metering hashes this string.
    pub fn data(&self) -> String {
        match self {
            Self::Text(t) => t.clone(),
            Self::Chat(m) => serde_json::to_string(m).expect("chat messages serialize"),
            // As a request with several `i` tags: the JSON array of their values.
            Self::Embed(texts) => match texts.as_slice() {
                [one] => one.clone(),
                many => {
                    let raw: Vec<[&str; 2]> = many.iter().map(|t| [t.as_str(), "text"]).collect();
                    serde_json::to_string(&raw).expect("strings serialize")
                }
            },
        }
    }

    /// The texts of an embedding job (none for other jobs).
    pub fn embed_texts(&self) -> &[String] {
        match self {
            Self::Embed(t) => t,
            _ => &[],
        }
    }

    /// Whether a chat carries tool calls or tool outputs (which only a tools job may).
    pub fn has_tool_turns(&self) -> bool {
        match self {
            Self::Text(_) | Self::Embed(_) => false,
            Self::Chat(m) => m
                .iter()
                .any(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some() || m.role == "tool"),
        }
    }

    /// How many `tool` messages a chat carries.
    pub fn tool_turns(&self) -> usize {
        match self {
            Self::Text(_) | Self::Embed(_) => 0,
            Self::Chat(m) => m.iter().filter(|m| m.role == "tool").count(),
        }
    }

    fn input_type(&self) -> &'static str {
        match self {
            Self::Text(_) | Self::Embed(_) => "text",
            Self::Chat(_) => "chat",
        }
    }
}

/// The type of an `i` tag (NIP-90 input types, plus fed_AI's `chat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    /// Text given inline (`text`; `prompt`, as the NIP-89 registry's example names it).
    Text,
    /// A JSON array of `{role, content}` messages (fed_AI's extension).
    Chat,
    /// A URL whose body is the input (fetched by the worker, bounded).
    Url,
    /// A Nostr event whose content is the input (fetched from the relay hint or the worker's).
    Event,
    /// The output of another job (its result event), NIP-90 job chaining.
    Job,
}

impl InputType {
    /// Wire form.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Chat => "chat",
            Self::Url => "url",
            Self::Event => "event",
            Self::Job => "job",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" | "prompt" => Self::Text,
            "chat" => Self::Chat,
            "url" => Self::Url,
            "event" => Self::Event,
            "job" => Self::Job,
            _ => return None,
        })
    }
}

/// One `["i", data, type, relay?, marker?]` tag as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTag {
    /// The data: text, a URL, or an event id.
    pub data: String,
    /// How to read `data`.
    pub kind: InputType,
    /// Where to find the event (`event`/`job` inputs), when given.
    pub relay: Option<String>,
}

impl InputTag {
    /// Whether the worker must fetch something before it can run the job.
    pub fn is_reference(&self) -> bool {
        matches!(
            self.kind,
            InputType::Url | InputType::Event | InputType::Job
        )
    }
}

/// Inference parameters (`param` tags). Absent values mean "worker default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobParams {
    /// Model id; absent lets the worker choose.
    pub model: Option<String>,
    /// Maximum tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0..=2.
    pub temperature: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<u32>,
    /// Nucleus sampling, (0, 1].
    pub top_p: Option<f32>,
    /// Frequency penalty, -2..=2.
    pub frequency_penalty: Option<f32>,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Whether the customer wants `partial` feedback with token chunks.
    pub stream: bool,
    /// Sampling seed, for reproducible outputs where the runner supports it.
    pub seed: Option<u64>,
    /// Presence penalty, -2..=2.
    pub presence_penalty: Option<f32>,
    /// A JSON Schema (as compact JSON text) the output must match: constrained decoding. Only
    /// workers whose ad lists the `json_schema` feature run it; others refuse it rather than
    /// answer unconstrained.
    pub json_schema: Option<String>,
    /// Functions the model may call (compact JSON text: an array of OpenAI function tools,
    /// `{"type": "function", "function": {"name", "description"?, "parameters"?}}`). Only
    /// workers whose ad lists the `tools` feature run it; the answer is a [`JsonAnswer`].
    pub tools: Option<String>,
    /// `auto` (the default), `none`, `required`, or `{"type": "function", "function":
    /// {"name": …}}` (compact JSON) to force one function.
    pub tool_choice: Option<String>,
    /// `false`: at most one call per answer (OpenAI's `parallel_tool_calls`).
    pub parallel_tool_calls: Option<bool>,
    /// Return each token's log probability: only workers whose ad lists the `logprobs` feature
    /// run it; the answer is a [`JsonAnswer`]. Needs `max_tokens`.
    pub logprobs: bool,
    /// With `logprobs`, the likeliest alternatives at each position (0..=20).
    pub top_logprobs: Option<u8>,
}

/// Bytes a worker's instructions around a tools job's function list may add to the prompt
/// (`fedai_runners::tools` holds its text to this).
pub const TOOLS_GUIDE_BYTES: usize = 512;
/// Bytes that writing one `tool` message as the model reads it may add (the JSON around its
/// content, the function's name).
pub const TOOL_TURN_BYTES: usize = 128;

/// The most bytes of a `json_schema` parameter.
pub const MAX_JSON_SCHEMA_BYTES: usize = 16 * 1024;
/// The most bytes of a `tools` parameter.
pub const MAX_TOOLS_BYTES: usize = 32 * 1024;
/// The most functions in a `tools` parameter.
pub const MAX_TOOLS: usize = 64;

impl JobParams {
    /// The optional features (capability ad `feature` tags) this request needs from a worker.
    pub fn features(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.json_schema.is_some() {
            out.push(crate::capability::FEATURE_JSON_SCHEMA);
        }
        if self.tools.is_some() {
            out.push(crate::capability::FEATURE_TOOLS);
        }
        if self.logprobs {
            out.push(crate::capability::FEATURE_LOGPROBS);
        }
        out
    }

    /// Whether the answer is a [`JsonAnswer`] (tools or logprobs) rather than plain text.
    pub fn json_answer(&self) -> bool {
        self.tools.is_some() || self.logprobs
    }

    /// The functions of the `tools` parameter (validated when the request was).
    pub fn tool_list(&self) -> Vec<serde_json::Value> {
        self.tools
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_default()
    }
}

/// A text-generation job as the customer states it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// Prompt or chat.
    pub input: JobInput,
    /// Inference parameters.
    pub params: JobParams,
    /// Desired output MIME type (`output` tag), e.g. `text/plain`.
    pub output: Option<String>,
    /// Maximum the customer will pay, in millisatoshi (`bid` tag).
    pub bid_msat: Option<u64>,
    /// Relays where the worker should publish responses.
    pub relays: Vec<String>,
    /// Directed job: only this worker should take it. Required when encrypted.
    pub provider: Option<PublicKey>,
    /// NIP-40 expiration: workers refuse the job after this time.
    pub expiration: Option<Timestamp>,
}

/// A job request received from the network, verified and (if needed) decrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedJobRequest {
    /// Event id of the request.
    pub id: EventId,
    /// The customer (event author).
    pub customer: PublicKey,
    /// When the request was created.
    pub created_at: Timestamp,
    /// Whether the `i`/`param` tags came encrypted.
    pub encrypted: Option<Encryption>,
    /// The `i` tag data exactly as received (metering hashes it): the data of the one `i` tag,
    /// or, with several, the JSON array of their `[data, type, …]` values.
    pub input_data: String,
    /// Every `i` tag, in order. When one is a reference (`url`, `event`, `job`), the worker
    /// resolves them all into [`JobRequest::input`] before running.
    pub inputs: Vec<InputTag>,
    /// Every `p` tag: the providers the customer asks (empty: an open request).
    pub providers: Vec<PublicKey>,
    /// Whether the request carries fed_AI's marker (`["t", "fedai"]`): built by fed_AI software.
    pub fedai: bool,
    /// The typed request.
    pub request: JobRequest,
}

impl ParsedJobRequest {
    /// Hex SHA-256 of the prompt as sent (the `i` data), used by metering.
    pub fn prompt_sha256(&self) -> String {
        crate::sha256_hex(self.input_data.as_bytes())
    }

    /// The author's view of a request it built from `request` (it knows the plaintext even
    /// when the event is encrypted).
    pub fn from_own(event: &Event, request: &JobRequest, encrypted: Option<Encryption>) -> Self {
        let tag = |data: String, kind| InputTag {
            data,
            kind,
            relay: None,
        };
        let inputs = match &request.input {
            JobInput::Text(t) => vec![tag(t.clone(), InputType::Text)],
            JobInput::Chat(_) => vec![tag(request.input.data(), InputType::Chat)],
            JobInput::Embed(t) => t.iter().map(|t| tag(t.clone(), InputType::Text)).collect(),
        };
        Self {
            id: event.id,
            customer: event.pubkey,
            created_at: event.created_at,
            encrypted,
            input_data: request.input.data(),
            inputs,
            providers: request.provider.into_iter().collect(),
            fedai: true,
            request: request.clone(),
        }
    }

    /// Whether some input must be fetched before the job can run.
    pub fn needs_inputs(&self) -> bool {
        self.inputs.iter().any(InputTag::is_reference)
    }

    /// Whether `worker` is one of the providers the request names.
    pub fn names(&self, worker: &PublicKey) -> bool {
        self.providers.contains(worker)
    }
}

fn fmt_f32(v: f32) -> String {
    // Shortest representation that round-trips.
    format!("{v}")
}

/// The customer's cancellation of a text-generation request: a NIP-09 deletion (kind 5)
/// naming the request and its kind (`k` = 5050). Workers also honour deletions without `k`
/// (generic clients).
pub fn cancellation(request_id: EventId, keys: &Keys) -> Result<Event, ProtocolError> {
    cancellation_of(request_id, kinds::JOB_REQUEST, keys)
}

/// [`cancellation`] of a request of kind `kind` (`k`).
pub fn cancellation_of(
    request_id: EventId,
    kind: u16,
    keys: &Keys,
) -> Result<Event, ProtocolError> {
    EventBuilder::new(kinds::kind(kinds::DELETION), "")
        .tags([Tag::event(request_id), tag("k", [kind.to_string()])])
        .finalize(keys)
        .map_err(|e| ProtocolError::Signing(e.to_string()))
}

impl JobRequest {
    /// A plain-text prompt with default parameters.
    pub fn text(prompt: impl Into<String>) -> Self {
        Self {
            input: JobInput::Text(prompt.into()),
            params: JobParams::default(),
            output: Some("text/plain".into()),
            bid_msat: None,
            relays: Vec::new(),
            provider: None,
            expiration: None,
        }
    }

    /// A one-turn chat (`user` message) with default parameters: instruct models answer it
    /// through their chat template.
    pub fn chat(prompt: impl Into<String>) -> Self {
        Self {
            input: JobInput::Chat(vec![ChatMessage::new("user", prompt)]),
            ..Self::text("")
        }
    }

    /// Texts to embed (kind 5060) with default parameters; the answer is an [`EmbedAnswer`].
    pub fn embed<S: Into<String>>(texts: impl IntoIterator<Item = S>) -> Self {
        Self {
            input: JobInput::Embed(texts.into_iter().map(Into::into).collect()),
            output: Some("application/json".into()),
            ..Self::text("")
        }
    }

    /// The request's event kind: [`kinds::EMBED_REQUEST`] for texts to embed, else
    /// [`kinds::JOB_REQUEST`].
    pub fn kind(&self) -> u16 {
        match self.input {
            JobInput::Embed(_) => kinds::EMBED_REQUEST,
            _ => kinds::JOB_REQUEST,
        }
    }

    /// The private tags (`i` and `param`), which are encrypted for private jobs.
    fn private_tags(&self) -> Vec<Tag> {
        let mut out: Vec<Tag> = match &self.input {
            JobInput::Embed(texts) => texts
                .iter()
                .map(|t| tag("i", [t.clone(), "text".to_owned()]))
                .collect(),
            input => vec![tag("i", [input.data(), input.input_type().to_owned()])],
        };
        let p = &self.params;
        let mut param = |k: &str, v: String| out.push(tag("param", [k.to_owned(), v]));
        if let Some(m) = &p.model {
            param("model", m.clone());
        }
        if let Some(v) = p.max_tokens {
            param("max_tokens", v.to_string());
        }
        if let Some(v) = p.temperature {
            param("temperature", fmt_f32(v));
        }
        if let Some(v) = p.top_k {
            param("top_k", v.to_string());
        }
        if let Some(v) = p.top_p {
            param("top_p", fmt_f32(v));
        }
        if let Some(v) = p.frequency_penalty {
            param("frequency_penalty", fmt_f32(v));
        }
        for s in &p.stop {
            param("stop", s.clone());
        }
        if p.stream {
            param("stream", "true".into());
        }
        if let Some(v) = p.seed {
            param("seed", v.to_string());
        }
        if let Some(v) = p.presence_penalty {
            param("presence_penalty", fmt_f32(v));
        }
        if let Some(v) = &p.json_schema {
            param("json_schema", v.clone());
        }
        if let Some(v) = &p.tools {
            param("tools", v.clone());
        }
        if let Some(v) = &p.tool_choice {
            param("tool_choice", v.clone());
        }
        if let Some(v) = p.parallel_tool_calls {
            param("parallel_tool_calls", v.to_string());
        }
        if p.logprobs {
            param("logprobs", "true".into());
        }
        if let Some(v) = p.top_logprobs {
            param("top_logprobs", v.to_string());
        }
        out
    }

    fn public_tags(&self) -> Vec<Tag> {
        let mut out = Vec::new();
        if let Some(o) = &self.output {
            out.push(tag("output", [o.clone()]));
        }
        if let Some(b) = self.bid_msat {
            out.push(tag("bid", [b.to_string()]));
        }
        if !self.relays.is_empty() {
            out.push(tag("relays", self.relays.clone()));
        }
        if let Some(p) = &self.provider {
            out.push(Tag::public_key(*p));
        }
        if let Some(exp) = self.expiration {
            out.push(Tag::expiration(exp));
        }
        out.push(kinds::fedai_marker());
        out
    }

    /// Validate the typed request (the same rules the parser applies).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match &self.input {
            JobInput::Text(_) => {}
            JobInput::Chat(m) if m.is_empty() => {
                return Err(ProtocolError::tag("i", "chat input has no messages"))
            }
            JobInput::Chat(_) => {}
            JobInput::Embed(t) => return check_embed(t, &self.params),
        }
        let p = &self.params;
        if p.max_tokens == Some(0) {
            return Err(ProtocolError::tag("param", "max_tokens must be > 0"));
        }
        check_range("temperature", p.temperature, 0.0, 2.0)?;
        check_range("top_p", p.top_p, f32::MIN_POSITIVE, 1.0)?;
        check_range("frequency_penalty", p.frequency_penalty, -2.0, 2.0)?;
        check_range("presence_penalty", p.presence_penalty, -2.0, 2.0)?;
        if let Some(s) = &p.json_schema {
            parse_schema(s)?;
        }
        check_tools(p)?;
        check_logprobs(p)?;
        if p.tools.is_none() && self.input.has_tool_turns() {
            return Err(ProtocolError::tag(
                "i",
                "tool calls and tool messages need the tools param",
            ));
        }
        if p.model.as_deref() == Some("") {
            return Err(ProtocolError::tag("param", "model is empty"));
        }
        Ok(())
    }

    /// Build and sign the request. With `encrypt`, the `i` and `param` tags are encrypted to
    /// [`JobRequest::provider`], which must be set.
    pub fn to_event(
        &self,
        keys: &Keys,
        encrypt: Option<Encryption>,
    ) -> Result<Event, ProtocolError> {
        self.validate()?;
        let mut tags = self.public_tags();
        let content = match encrypt {
            None => {
                tags.splice(0..0, self.private_tags());
                String::new()
            }
            Some(scheme) => {
                let to = self.provider.ok_or(ProtocolError::MissingTag("p"))?;
                let private: Vec<Vec<String>> =
                    self.private_tags().into_iter().map(Tag::to_vec).collect();
                let json = serde_json::to_string(&private).expect("tags serialize");
                tags.push(tag("encrypted", Vec::<String>::new()));
                crypto::encrypt(keys, &to, &json, scheme)?
            }
        };
        tags::sign(self.kind(), content, tags, keys)
    }

    /// Verify and parse a job request. Encrypted requests need the worker's `keys` (the `p`
    /// recipient); without them, or with another key, the result is [`ProtocolError::NotRecipient`].
    pub fn from_event(
        event: &Event,
        keys: Option<&Keys>,
    ) -> Result<ParsedJobRequest, ProtocolError> {
        Self::parse(event, keys, true)
    }

    /// Parse; `verify = false` only for events whose id and signature the caller has
    /// already verified (the relay's hot path).
    pub(crate) fn parse(
        event: &Event,
        keys: Option<&Keys>,
        verify: bool,
    ) -> Result<ParsedJobRequest, ProtocolError> {
        let kind = event.kind.as_u16();
        if !kinds::is_request(kind) {
            return Err(ProtocolError::WrongKind {
                expected: kinds::JOB_REQUEST,
                found: kind,
            });
        }
        tags::check(verify, event, kind)?;
        let t = &event.tags;
        let providers = tags::all(t, "p")
            .map(|v| match v.first() {
                Some(v) => tags::parse_pubkey("p", v),
                None => Err(ProtocolError::tag("p", "has no value")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The provider this reader is: our key when the request names it, else the first named.
        let provider = keys
            .map(Keys::public_key)
            .filter(|k| providers.contains(k))
            .or_else(|| providers.first().copied());
        let encrypted = tags::has_flag(t, "encrypted");
        let (private, scheme): (Tags, Option<Encryption>) = if encrypted {
            let to = provider.ok_or(ProtocolError::MissingTag("p"))?;
            if tags::all(t, "i").next().is_some() || tags::all(t, "param").next().is_some() {
                return Err(ProtocolError::tag(
                    "encrypted",
                    "encrypted request must not carry public `i` or `param` tags",
                ));
            }
            let keys = keys.ok_or(ProtocolError::NotRecipient)?;
            if keys.public_key() != to {
                return Err(ProtocolError::NotRecipient);
            }
            let scheme = crypto::detect(&event.content);
            let plain = crypto::decrypt(keys, &event.pubkey, &event.content)?;
            let raw: Vec<Vec<String>> = serde_json::from_str(&plain).map_err(|e| {
                ProtocolError::InvalidContent(format!("decrypted payload is not a tag array: {e}"))
            })?;
            let mut list = Vec::with_capacity(raw.len());
            for r in raw {
                list.push(Tag::parse(r).map_err(|_| {
                    ProtocolError::InvalidContent("decrypted payload has an empty tag".into())
                })?);
            }
            (Tags::from_list(list), Some(scheme))
        } else {
            (t.clone(), None)
        };

        let embed = kind == kinds::EMBED_REQUEST;
        let (inputs, input, input_data) = parse_inputs(&private, embed)?;
        // An embedder takes `model` only: any other param (`dimensions`, `normalize`, …) is
        // refused rather than ignored, so a vector never silently lacks what was asked.
        if let Some(p) = tags::all(&private, "param")
            .filter_map(|v| v.first())
            .find(|n| embed && n.as_str() != "model")
        {
            return Err(ProtocolError::tag(
                "param",
                format!("an embedding request takes no param but model (got `{p}`)"),
            ));
        }
        let params = parse_params(&private)?;
        let output = tags::opt_value(t, "output")?.map(str::to_owned);
        let bid_msat = tags::opt_value(t, "bid")?
            .map(|v| tags::parse_u64("bid", v))
            .transpose()?;
        let relays = tags::opt(t, "relays")?
            .map(<[String]>::to_vec)
            .unwrap_or_default();
        let expiration = tags::opt_value(t, "expiration")?
            .map(|v| tags::parse_u64("expiration", v).map(Timestamp::from_secs))
            .transpose()?;
        let request = JobRequest {
            input,
            params,
            output,
            bid_msat,
            relays,
            provider,
            expiration,
        };
        request.validate()?;
        Ok(ParsedJobRequest {
            id: event.id,
            customer: event.pubkey,
            created_at: event.created_at,
            encrypted: scheme,
            input_data,
            inputs,
            providers,
            fedai: kinds::has_fedai_marker(t),
            request,
        })
    }
}

fn check_range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ProtocolError> {
    match v {
        Some(x) if !(x.is_finite() && x >= lo && x <= hi) => Err(ProtocolError::tag(
            "param",
            format!("{name} must be within {lo}..={hi}"),
        )),
        _ => Ok(()),
    }
}

/// Every `i` tag, the input they make, and the data metering hashes.
///
/// One `i` tag: its data as the input. Several: text inputs joined in order by a blank line;
/// a chat input must be the only one. References (`url`, `event`, `job`) stand as empty text
/// until the worker resolves them.
///
/// An embedding request's inputs are texts, each one a text to embed.
fn parse_inputs(t: &Tags, embed: bool) -> Result<(Vec<InputTag>, JobInput, String), ProtocolError> {
    let mut inputs = Vec::new();
    for i in tags::all(t, "i") {
        let Some(data) = i.first() else {
            return Err(ProtocolError::tag("i", "has no value"));
        };
        let ty = i.get(1).map(String::as_str).unwrap_or("text");
        let kind = InputType::parse(ty).ok_or_else(|| {
            ProtocolError::tag(
                "i",
                format!("input type `{ty}` is not supported (text, prompt, chat, url, event, job)"),
            )
        })?;
        let relay = i.get(2).filter(|r| !r.is_empty()).cloned();
        inputs.push(InputTag {
            data: data.clone(),
            kind,
            relay,
        });
    }
    let max = if embed { MAX_EMBED_INPUTS } else { MAX_INPUTS };
    if inputs.len() > max {
        return Err(ProtocolError::tag(
            "i",
            format!("at most {max} inputs are taken"),
        ));
    }
    let [first, rest @ ..] = inputs.as_slice() else {
        return Err(ProtocolError::MissingTag("i"));
    };
    let input = match first.kind {
        _ if embed => {
            if inputs.iter().any(|i| i.kind != InputType::Text) {
                return Err(ProtocolError::tag(
                    "i",
                    "an embedding request's inputs must be text",
                ));
            }
            JobInput::Embed(inputs.iter().map(|i| i.data.clone()).collect())
        }
        InputType::Chat if rest.is_empty() => {
            JobInput::Chat(serde_json::from_str(&first.data).map_err(|e| {
                ProtocolError::tag("i", format!("chat input is not a message array: {e}"))
            })?)
        }
        InputType::Text if rest.is_empty() => JobInput::Text(first.data.clone()),
        _ if inputs.iter().any(|i| i.kind == InputType::Chat) => {
            return Err(ProtocolError::tag(
                "i",
                "a chat input must be the request's only input",
            ))
        }
        _ => JobInput::Text(join_inputs(inputs.iter().map(|i| match i.kind {
            InputType::Text => i.data.as_str(),
            _ => "",
        }))),
    };
    let data = if rest.is_empty() {
        first.data.clone()
    } else {
        let raw: Vec<&[String]> = tags::all(t, "i").collect();
        serde_json::to_string(&raw).expect("strings serialize")
    };
    Ok((inputs, input, data))
}

/// The most `i` tags one request may carry.
pub const MAX_INPUTS: usize = 16;
/// The most texts one embedding request may carry (a larger batch is several jobs).
pub const MAX_EMBED_INPUTS: usize = 64;
/// The most dimensions of an embedding vector taken from a worker.
pub const MAX_EMBED_DIMENSIONS: usize = 16384;
/// The most values (texts × dimensions) in one embedding answer: 128 KiB of f32, which with the
/// request embedded, NIP-44 padding and base64 twice keeps the result under what relays take.
pub const MAX_EMBED_VALUES: usize = 32768;

/// The most texts one embedding job may carry for a model of `dimensions` (0: unknown, sized
/// for the widest vectors): [`MAX_EMBED_VALUES`] / `dimensions`, 1 to [`MAX_EMBED_INPUTS`].
pub fn max_embed_texts(dimensions: u32) -> usize {
    let d = match dimensions {
        0 => MAX_EMBED_DIMENSIONS,
        d => d as usize,
    };
    (MAX_EMBED_VALUES / d).clamp(1, MAX_EMBED_INPUTS)
}

/// An embedding request's own rules: 1..=[`MAX_EMBED_INPUTS`] non-empty texts, and no
/// parameter but `model` (sampling, schemas, tools and streaming mean nothing to an embedder:
/// refused, not ignored).
fn check_embed(texts: &[String], p: &JobParams) -> Result<(), ProtocolError> {
    if texts.is_empty() || texts.len() > MAX_EMBED_INPUTS {
        return Err(ProtocolError::tag(
            "i",
            format!("an embedding request takes 1 to {MAX_EMBED_INPUTS} texts"),
        ));
    }
    if texts.iter().any(String::is_empty) {
        return Err(ProtocolError::tag("i", "an empty text cannot be embedded"));
    }
    if p.model.as_deref() == Some("") {
        return Err(ProtocolError::tag("param", "model is empty"));
    }
    let only_model = JobParams {
        model: p.model.clone(),
        ..JobParams::default()
    };
    if *p != only_model {
        return Err(ProtocolError::tag(
            "param",
            "an embedding request takes no param but model",
        ));
    }
    Ok(())
}

/// An embedding job's answer (the content of its kind-6060 result): one vector per text, in
/// the request's order. On the wire `{"embeddings": ["<base64>", …]}`, each vector its f32
/// values little-endian, base64 (OpenAI's `encoding_format: base64`): a third of the bytes of
/// decimal JSON, and exact.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedAnswer {
    /// The vectors.
    pub vectors: Vec<Vec<f32>>,
}

#[derive(Serialize, Deserialize)]
struct EmbedWire {
    embeddings: Vec<String>,
}

impl EmbedAnswer {
    /// The result content.
    pub fn to_output(&self) -> String {
        let embeddings = self.vectors.iter().map(|v| vector_base64(v)).collect();
        serde_json::to_string(&EmbedWire { embeddings }).expect("strings serialize")
    }

    /// Read a result content: vectors of one length, 1..=[`MAX_EMBED_DIMENSIONS`], finite.
    pub fn parse(output: &str) -> Result<Self, ProtocolError> {
        use base64::Engine as _;
        let bad = |m: &str| ProtocolError::InvalidContent(format!("embedding answer: {m}"));
        let wire: EmbedWire =
            serde_json::from_str(output).map_err(|e| bad(&format!("not the JSON object: {e}")))?;
        let mut vectors = Vec::with_capacity(wire.embeddings.len().min(MAX_EMBED_INPUTS));
        for b in &wire.embeddings {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|_| bad("a vector is not base64"))?;
            if bytes.len() % 4 != 0 || bytes.is_empty() || bytes.len() / 4 > MAX_EMBED_DIMENSIONS {
                return Err(bad(&format!(
                    "a vector is not 1 to {MAX_EMBED_DIMENSIONS} f32 values"
                )));
            }
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad("a vector has a value that is not a finite number"));
            }
            if vectors
                .first()
                .is_some_and(|f: &Vec<f32>| f.len() != v.len())
            {
                return Err(bad("the vectors differ in length"));
            }
            // One vector of up to MAX_EMBED_DIMENSIONS always; more only within the total.
            if !vectors.is_empty() && (vectors.len() + 1) * v.len() > MAX_EMBED_VALUES {
                return Err(bad(&format!(
                    "over {MAX_EMBED_VALUES} values (texts × dimensions)"
                )));
            }
            vectors.push(v);
        }
        Ok(Self { vectors })
    }

    /// [`EmbedAnswer::parse`], held to `input`: one vector per text.
    pub fn for_request(output: &str, input: &JobInput) -> Result<Self, ProtocolError> {
        let a = Self::parse(output)?;
        let want = input.embed_texts().len();
        if a.vectors.len() != want {
            return Err(ProtocolError::InvalidContent(format!(
                "embedding answer: {} vectors for {want} texts",
                a.vectors.len()
            )));
        }
        Ok(a)
    }

    /// The vectors' length (0 when there are none).
    pub fn dimensions(&self) -> usize {
        self.vectors.first().map_or(0, Vec::len)
    }
}

/// A vector as OpenAI's `encoding_format: base64` has it: f32 little-endian, base64.
pub fn vector_base64(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Several inputs' texts as one prompt: in order, separated by a blank line, empty ones skipped.
pub fn join_inputs<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for p in parts.into_iter().filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(p);
    }
    out
}

fn parse_f32(name: &str, v: &str) -> Result<f32, ProtocolError> {
    v.parse::<f32>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| ProtocolError::tag("param", format!("{name} `{v}` is not a number")))
}

/// A `json_schema` value: a JSON object within [`MAX_JSON_SCHEMA_BYTES`], kept as sent.
fn parse_schema(v: &str) -> Result<String, ProtocolError> {
    if v.len() > MAX_JSON_SCHEMA_BYTES {
        return Err(ProtocolError::tag(
            "param",
            format!("json_schema is over {MAX_JSON_SCHEMA_BYTES} bytes"),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(schema @ serde_json::Value::Object(_)) => {
            schema_cost(&schema)
                .map_err(|m| ProtocolError::tag("param", format!("json_schema {m}")))?;
            Ok(v.to_owned())
        }
        _ => Err(ProtocolError::tag(
            "param",
            "json_schema must be a JSON object",
        )),
    }
}

/// The most JSON values in a schema (`json_schema`, or all of `tools`).
pub const MAX_SCHEMA_NODES: usize = 4096;
/// The deepest nesting of a schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// The largest repetition bound a schema may set (`maxLength`, `maxItems`, …): runners turn
/// each into grammar rules, so a huge bound costs a worker memory and time before a token.
pub const MAX_SCHEMA_REPEAT: u64 = 8192;

/// What constraining output to `schema` may cost a runner, bounded: values, depth and
/// repetition counts.
fn schema_cost(schema: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let mut stack = vec![(schema, 1usize)];
    let mut nodes = 0usize;
    while let Some((v, depth)) = stack.pop() {
        nodes += 1;
        if nodes > MAX_SCHEMA_NODES {
            return Err(format!("has more than {MAX_SCHEMA_NODES} values"));
        }
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!("nests deeper than {MAX_SCHEMA_DEPTH}"));
        }
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    let bound = matches!(
                        k.as_str(),
                        "maxLength"
                            | "minLength"
                            | "maxItems"
                            | "minItems"
                            | "maxProperties"
                            | "minProperties"
                    );
                    if bound && x.as_f64().is_some_and(|n| n > MAX_SCHEMA_REPEAT as f64) {
                        return Err(format!("sets {k} above {MAX_SCHEMA_REPEAT}"));
                    }
                    stack.push((x, depth + 1));
                }
            }
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, depth + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// `tools`: a JSON array of 1..=[`MAX_TOOLS`] function tools with distinct names, within
/// [`MAX_TOOLS_BYTES`]; `tool_choice` only with tools, naming one of them when it names one.
fn check_tools(p: &JobParams) -> Result<(), ProtocolError> {
    let bad = |m: &str| Err(ProtocolError::tag("param", m.to_owned()));
    let Some(tools) = &p.tools else {
        return match (&p.tool_choice, p.parallel_tool_calls) {
            (None, None) => Ok(()),
            _ => bad("tool_choice and parallel_tool_calls need tools"),
        };
    };
    if p.json_schema.is_some() {
        return bad("tools and json_schema cannot be combined");
    }
    if tools.len() > MAX_TOOLS_BYTES {
        return bad("tools is over 32768 bytes");
    }
    let Ok(all @ serde_json::Value::Array(_)) = serde_json::from_str(tools) else {
        return bad("tools must be a JSON array");
    };
    if let Err(m) = schema_cost(&all) {
        return bad(&format!("tools {m}"));
    }
    let serde_json::Value::Array(list) = all else {
        return bad("tools must be a JSON array");
    };
    if list.is_empty() || list.len() > MAX_TOOLS {
        return bad("tools must list 1 to 64 functions");
    }
    let mut names = std::collections::HashSet::new();
    for t in &list {
        let name = t["function"]["name"].as_str().unwrap_or_default();
        let params = &t["function"]["parameters"];
        if t["type"] != "function" || !tool_name_ok(name) || !names.insert(name) {
            return bad(
                "each tool is a function with a distinct name of 1-64 letters, digits, _ or -",
            );
        }
        if !(params.is_null() || params.is_object()) {
            return bad("a tool's parameters must be a JSON Schema object");
        }
    }
    match p.tool_choice.as_deref() {
        None | Some("auto" | "none" | "required") => Ok(()),
        Some(c) => match serde_json::from_str::<serde_json::Value>(c) {
            Ok(v)
                if v["type"] == "function"
                    && v["function"]["name"]
                        .as_str()
                        .is_some_and(|n| names.contains(n)) =>
            {
                Ok(())
            }
            _ => bad("tool_choice is auto, none, required or a function of tools"),
        },
    }
}

/// `logprobs` with `max_tokens` small enough that every entry fits ([`MAX_LOGPROB_ENTRIES`]);
/// `top_logprobs` only with `logprobs`; not with tools.
fn check_logprobs(p: &JobParams) -> Result<(), ProtocolError> {
    let bad = |m: String| Err(ProtocolError::tag("param", m));
    if !p.logprobs {
        return match p.top_logprobs {
            Some(_) => bad("top_logprobs needs logprobs".into()),
            None => Ok(()),
        };
    }
    if p.tools.is_some() {
        return bad("logprobs and tools cannot be combined".into());
    }
    let per_token = 1 + u64::from(p.top_logprobs.unwrap_or(0));
    let most = MAX_LOGPROB_ENTRIES / per_token;
    match p.max_tokens {
        Some(n) if u64::from(n) <= most => Ok(()),
        _ => bad(format!(
            "logprobs needs max_tokens of at most {most} with top_logprobs {}",
            per_token - 1
        )),
    }
}

fn tool_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_params(t: &Tags) -> Result<JobParams, ProtocolError> {
    let mut p = JobParams::default();
    let mut seen = std::collections::HashSet::new();
    for v in tags::all(t, "param") {
        let [name, value, ..] = v else {
            return Err(ProtocolError::tag("param", "needs a name and a value"));
        };
        // Accept the hyphenated spellings some NIP-90 clients use.
        let name = match name.as_str() {
            "top-k" => "top_k",
            "top-p" => "top_p",
            "max-tokens" => "max_tokens",
            "frequency-penalty" => "frequency_penalty",
            "presence-penalty" => "presence_penalty",
            n => n,
        };
        if name != "stop" && !seen.insert(name.to_owned()) {
            return Err(ProtocolError::tag("param", format!("{name} given twice")));
        }
        match name {
            "model" => p.model = Some(value.clone()),
            "max_tokens" => p.max_tokens = Some(tags::parse_u32("param", value)?),
            "temperature" => p.temperature = Some(parse_f32(name, value)?),
            "top_k" => p.top_k = Some(tags::parse_u32("param", value)?),
            "top_p" => p.top_p = Some(parse_f32(name, value)?),
            "frequency_penalty" => p.frequency_penalty = Some(parse_f32(name, value)?),
            "stop" => p.stop.push(value.clone()),
            "seed" => p.seed = Some(tags::parse_u64("param", value)?),
            "presence_penalty" => p.presence_penalty = Some(parse_f32(name, value)?),
            "json_schema" => p.json_schema = Some(parse_schema(value)?),
            "tools" => p.tools = Some(value.clone()),
            "tool_choice" => p.tool_choice = Some(value.clone()),
            "logprobs" => {
                p.logprobs = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ProtocolError::tag(
                            "param",
                            "logprobs must be true or false",
                        ))
                    }
                }
            }
            "top_logprobs" => {
                p.top_logprobs = Some(
                    value
                        .parse::<u8>()
                        .ok()
                        .filter(|n| *n <= MAX_TOP_LOGPROBS)
                        .ok_or_else(|| {
                            ProtocolError::tag("param", "top_logprobs must be 0 to 20")
                        })?,
                )
            }
            "parallel_tool_calls" => {
                p.parallel_tool_calls = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ProtocolError::tag(
                            "param",
                            "parallel_tool_calls must be true or false",
                        ))
                    }
                })
            }
            "stream" => {
                p.stream = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ProtocolError::tag("param", "stream must be true or false")),
                }
            }
            // Unknown parameters are ignored for forward compatibility.
            _ => {}
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probabilities_must_make_the_text_and_be_asked_for() {
        let p = JobParams {
            logprobs: true,
            top_logprobs: Some(1),
            max_tokens: Some(8),
            ..JobParams::default()
        };
        let tok = |t: &str, top: usize| TokenLogprob {
            token: t.into(),
            logprob: -0.25,
            top_logprobs: vec![
                TopLogprob {
                    token: "x".into(),
                    logprob: -1.0
                };
                top
            ],
        };
        let answer = |content: &str, l: Vec<TokenLogprob>| {
            JsonAnswer {
                content: content.into(),
                logprobs: l,
                ..JsonAnswer::default()
            }
            .to_output()
        };
        let good = answer("Hi there", vec![tok("Hi", 1), tok(" there", 1)]);
        assert!(JsonAnswer::for_request(&good, &p).is_ok());
        for bad in [
            answer("Hi there", vec![tok("Hi", 1)]),
            answer("Hi there", vec![tok("Hi", 1), tok(" where", 1)]),
            answer("Hi there", vec![tok("Hi", 2), tok(" there", 1)]),
        ] {
            assert!(JsonAnswer::for_request(&bad, &p).is_err(), "{bad}");
        }
        let plain = JobParams::default();
        assert!(
            JsonAnswer::for_request(&good, &plain).is_err(),
            "not asked for"
        );
        // What fits in one event is checked before the job runs.
        let mut big = p.clone();
        big.max_tokens = Some(4000);
        assert!(check_logprobs(&big).is_err());
        big.logprobs = false;
        assert!(check_logprobs(&big).is_err(), "top_logprobs alone");
    }

    #[test]
    fn schemas_that_would_cost_a_runner_too_much_are_refused() {
        let ok = r#"{"type":"object","properties":{"a":{"type":"string","maxLength":200}}}"#;
        assert!(parse_schema(ok).is_ok());
        let long = r#"{"type":"string","maxLength":1000000}"#;
        assert!(parse_schema(long).is_err(), "a million-long repetition");
        let deep = format!("{}{{}}{}", r#"{"items":"#.repeat(40), "}".repeat(40));
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_ok());
        assert!(parse_schema(&deep).is_err(), "40 levels");
        let wide = format!(
            r#"{{"enum":[{}]}}"#,
            vec!["1"; MAX_SCHEMA_NODES + 1].join(",")
        );
        assert!(parse_schema(&wide).is_err(), "too many values");
        let mut p = JobParams {
            tools: Some(
                r#"[{"type":"function","function":{"name":"f","parameters":{"type":"array","maxItems":100000}}}]"#
                    .into(),
            ),
            ..JobParams::default()
        };
        assert!(
            check_tools(&p).is_err(),
            "a tool's schema is held to the same bounds"
        );
        p.tools = Some(r#"[{"type":"function","function":{"name":"f","parameters":{"type":"array","maxItems":10}}}]"#.into());
        assert!(check_tools(&p).is_ok());
    }
}
