//! Capability ad (NIP-89 kind 31990, addressable), published by a worker at start and
//! re-published as its heartbeat.
//!
//! Generic DVM clients read `k` and the content JSON (`name`, `about`, `encryptionSupported`,
//! `nip90Params`). fed_AI clients read the structured tags:
//! ```text
//! ["d", "<worker instance id>"]  ["k", "5050"]  ["k", "5060"]?  ["t", "fedai"]
//! ["model", "<id>", "<context length>", "<quantisation>", "<dimensions>"?]   (one per model)
//! ["price", "<model id>", "<base msat>", "<msat per 1k in>", "<msat per 1k out>"]
//! ["capacity", "<max concurrent>", "<in flight>", "<queue depth>"]
//! ["hardware", "gpu", "<name>", "<memory MiB>"] | ["hardware", "cpu", "<name>", "<cores>", "<memory MiB>"]
//! ["runner", "<llama-cpp|openai|ollama|http|mock>"]  ["health", "ok|degraded|down"]
//! ["payment", "ln-node", "<pubkey>"]  ["payment", "lud16", "<addr>"]  ["payment", "lnurl", "<url>"]
//! ["payment_mode", "before|after|free"]
//! ["feature", "<chat|json_schema|…>"]                                 (one per optional feature)
//! ["relays", "<url>", …]  ["version", "<software version>"]  ["protocol", "fedai/1"]
//! ["expiration", "<unix>"]                                              (required: dead ads vanish)
//! ```

use nostr::prelude::{Event, Keys, PublicKey, Tag, Tags, Timestamp};
use serde::{Deserialize, Serialize};

use crate::tags::{self, tag};
use crate::{kinds, ProtocolError};

/// Feature: chat inputs (`["i", json, "chat"]`) run through the model's chat template.
pub const FEATURE_CHAT: &str = "chat";
/// Feature: output constrained to a JSON Schema (`["param", "json_schema", …]`).
pub const FEATURE_JSON_SCHEMA: &str = "json_schema";
/// Feature: function calling (`["param", "tools", …]`; the answer is a
/// [`crate::job::JsonAnswer`]).
pub const FEATURE_TOOLS: &str = "tools";
/// Feature: token log probabilities (`["param", "logprobs", "true"]`; the answer is a
/// [`crate::job::JsonAnswer`]).
pub const FEATURE_LOGPROBS: &str = "logprobs";
/// The most `feature` tags read from an ad.
const MAX_FEATURES: usize = 32;

/// A model a worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model id as used in the `model` param.
    pub id: String,
    /// Context length in tokens.
    pub context_length: u32,
    /// Quantisation (e.g. `Q4_1`, `f16`), free text.
    pub quantisation: String,
    /// An embedding model's vector length, as the worker measured it (0: not an embedder, or
    /// not said). Customers size embedding jobs by it ([`crate::job::max_embed_texts`]).
    pub dimensions: u32,
}

/// Price for one model: `base + in_tokens/1000 * per_1k_input + out_tokens/1000 * per_1k_output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Model id.
    pub model: String,
    /// Fixed price per job in msat.
    pub base_msat: u64,
    /// Msat per 1000 input tokens.
    pub per_1k_input_msat: u64,
    /// Msat per 1000 output tokens.
    pub per_1k_output_msat: u64,
}

impl Price {
    /// Price of a job with these token counts, rounded up to the next msat.
    #[inline]
    pub fn cost_msat(&self, input_tokens: u64, output_tokens: u64) -> u64 {
        // The u64 path covers every realistic price; 128-bit division is a slow library call,
        // and the scheduler prices thousands of ads per decision.
        let fast = input_tokens
            .checked_mul(self.per_1k_input_msat)
            .and_then(|i| i.checked_add(output_tokens.checked_mul(self.per_1k_output_msat)?));
        if let Some(v) = fast {
            return self.base_msat.saturating_add(v.div_ceil(1000));
        }
        let var = (input_tokens as u128 * self.per_1k_input_msat as u128)
            .saturating_add(output_tokens as u128 * self.per_1k_output_msat as u128)
            .div_ceil(1000);
        (self.base_msat as u128 + var).min(u64::MAX as u128) as u64
    }
}

/// What the worker runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hardware {
    /// An accelerator.
    Gpu {
        /// Device name.
        name: String,
        /// Device memory in MiB.
        memory_mib: u64,
    },
    /// CPU only.
    Cpu {
        /// CPU model name.
        name: String,
        /// Logical cores.
        cores: u32,
        /// System memory in MiB.
        memory_mib: u64,
    },
}

/// When the worker wants to be paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentMode {
    /// Hold invoice paid before the job runs (escrow).
    Before,
    /// Invoice after delivery.
    After,
    /// No payment.
    Free,
}

impl PaymentMode {
    /// Wire form.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Before => "before",
            Self::After => "after",
            Self::Free => "free",
        }
    }
    /// From the wire form (`None` for an unknown mode).
    pub fn from_name(s: &str) -> Option<Self> {
        [Self::Before, Self::After, Self::Free]
            .into_iter()
            .find(|m| m.as_str() == s)
    }

    fn parse(s: &str) -> Result<Self, ProtocolError> {
        Self::from_name(s)
            .ok_or_else(|| ProtocolError::tag("payment_mode", format!("unknown mode `{s}`")))
    }
}

/// How to pay the worker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PaymentInfo {
    /// The LN node pubkey (hex) that signs this worker's invoices.
    pub ln_node: Option<String>,
    /// Lightning address (LUD-16).
    pub lightning_address: Option<String>,
    /// LNURL-pay endpoint.
    pub lnurl: Option<String>,
    /// Pay before, after, or not at all.
    pub mode: Option<PaymentMode>,
}

/// A worker's advertisement of what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityAd {
    /// Worker instance id (`d` tag); one key can run several instances.
    pub instance: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub about: String,
    /// Job kinds served (`k` tags).
    pub job_kinds: Vec<u16>,
    /// Models served.
    pub models: Vec<ModelInfo>,
    /// Prices per model.
    pub prices: Vec<Price>,
    /// Max concurrent jobs.
    pub max_concurrent: u32,
    /// Jobs running now.
    pub in_flight: u32,
    /// Jobs waiting.
    pub queue_depth: u32,
    /// Hardware.
    pub hardware: Hardware,
    /// Runner kind.
    pub runner: String,
    /// Runner health as last probed.
    pub healthy: bool,
    /// Payment methods.
    pub payment: PaymentInfo,
    /// Relays the worker listens on.
    pub relays: Vec<String>,
    /// Software version.
    pub version: String,
    /// Whether encrypted requests are accepted.
    pub encryption_supported: bool,
    /// Optional features the worker serves ([`FEATURE_CHAT`], [`FEATURE_JSON_SCHEMA`], …):
    /// a request that needs one goes only to workers that list it.
    pub features: Vec<String>,
    /// When the ad lapses (a heartbeat re-publishes it before).
    pub expiration: Timestamp,
}

/// An ad received from the network, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCapabilityAd {
    /// The worker's public key.
    pub worker: PublicKey,
    /// When the ad was published.
    pub created_at: Timestamp,
    /// The ad.
    pub ad: CapabilityAd,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdContent {
    name: String,
    #[serde(default)]
    about: String,
    #[serde(default)]
    encryption_supported: bool,
    #[serde(default)]
    nip90_params: serde_json::Value,
    /// The lightning address, as in a kind-0 profile: NIP-89 clients that read handler info
    /// find where to zap (the `payment lud16` tag is what fed_AI parses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lud16: Option<String>,
}

impl CapabilityAd {
    /// The ad's price for `model`.
    pub fn price_for(&self, model: &str) -> Option<&Price> {
        self.prices.iter().find(|p| p.model == model)
    }

    /// Whether the ad lists every one of `features`.
    pub fn supports(&self, features: &[&str]) -> bool {
        features
            .iter()
            .all(|f| self.features.iter().any(|x| x == f))
    }

    /// Whether the ad lists job kind `kind` (`k`): 5050 text generation, 5060 embeddings.
    pub fn takes_kind(&self, kind: u16) -> bool {
        self.job_kinds.contains(&kind)
    }

    /// Whether the ad lists `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model)
    }

    fn content_json(&self) -> String {
        let models: Vec<&str> = self.models.iter().map(|m| m.id.as_str()).collect();
        let mut nip90_params = serde_json::json!({
            "model": {"required": false, "values": models},
            "max_tokens": {"required": false, "values": []},
            "temperature": {"required": false, "values": []},
            "top_k": {"required": false, "values": []},
            "top_p": {"required": false, "values": []},
            "frequency_penalty": {"required": false, "values": []},
            "presence_penalty": {"required": false, "values": []},
            "seed": {"required": false, "values": []},
            "stream": {"required": false, "values": ["true", "false"]},
        });
        if self.supports(&[FEATURE_JSON_SCHEMA]) {
            nip90_params["json_schema"] = serde_json::json!({"required": false, "values": []});
        }
        if self.supports(&[FEATURE_TOOLS]) {
            nip90_params["tools"] = serde_json::json!({"required": false, "values": []});
            nip90_params["tool_choice"] = serde_json::json!({"required": false, "values": []});
        }
        if self.supports(&[FEATURE_LOGPROBS]) {
            nip90_params["logprobs"] =
                serde_json::json!({"required": false, "values": ["true", "false"]});
            nip90_params["top_logprobs"] = serde_json::json!({"required": false, "values": []});
        }
        let c = AdContent {
            name: self.name.clone(),
            about: self.about.clone(),
            encryption_supported: self.encryption_supported,
            lud16: self.payment.lightning_address.clone(),
            nip90_params,
        };
        serde_json::to_string(&c).expect("ad content serializes")
    }

    /// Build and sign.
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        if self.instance.is_empty() {
            return Err(ProtocolError::tag("d", "instance id is empty"));
        }
        let mut t: Vec<Tag> = vec![tag("d", [self.instance.clone()])];
        for k in &self.job_kinds {
            t.push(tag("k", [k.to_string()]));
        }
        t.push(kinds::fedai_marker());
        for m in &self.models {
            let mut v = vec![
                m.id.clone(),
                m.context_length.to_string(),
                m.quantisation.clone(),
            ];
            if m.dimensions > 0 {
                v.push(m.dimensions.to_string());
            }
            t.push(tag("model", v));
        }
        for p in &self.prices {
            t.push(tag(
                "price",
                [
                    p.model.clone(),
                    p.base_msat.to_string(),
                    p.per_1k_input_msat.to_string(),
                    p.per_1k_output_msat.to_string(),
                ],
            ));
        }
        t.push(tag(
            "capacity",
            [
                self.max_concurrent.to_string(),
                self.in_flight.to_string(),
                self.queue_depth.to_string(),
            ],
        ));
        t.push(self.hardware.to_tag());
        t.push(tag("runner", [self.runner.clone()]));
        t.push(tag("health", [if self.healthy { "ok" } else { "down" }]));
        self.payment.push_tags(&mut t);
        for f in &self.features {
            t.push(tag("feature", [f.clone()]));
        }
        if !self.relays.is_empty() {
            t.push(tag("relays", self.relays.clone()));
        }
        t.push(tag("version", [self.version.clone()]));
        t.push(tag("protocol", [crate::PROTOCOL_VERSION]));
        t.push(Tag::expiration(self.expiration));
        tags::sign(kinds::CAPABILITY_AD, self.content_json(), t, keys)
    }

    /// Verify and parse. Requires the fed_AI topic tag and an expiration.
    pub fn from_event(event: &Event) -> Result<ParsedCapabilityAd, ProtocolError> {
        Self::parse(event, true)
    }

    /// Parse; `verify = false` only for events whose id and signature the caller has
    /// already verified (the relay's hot path).
    pub(crate) fn parse(event: &Event, verify: bool) -> Result<ParsedCapabilityAd, ProtocolError> {
        tags::check(verify, event, kinds::CAPABILITY_AD)?;
        let t = &event.tags;
        if !kinds::has_fedai_marker(t) {
            return Err(ProtocolError::tag(
                "t",
                "not a fedai capability ad (no `t` = `fedai`)",
            ));
        }
        let content: AdContent = serde_json::from_str(&event.content)
            .map_err(|e| ProtocolError::InvalidContent(format!("ad content: {e}")))?;
        let instance = tags::value(t, "d")?.to_owned();
        if instance.is_empty() {
            return Err(ProtocolError::tag("d", "instance id is empty"));
        }
        let job_kinds = job_kinds(t)?;
        let models = models(t)?;
        let prices = prices(t, &models)?;
        let (max_concurrent, in_flight, queue_depth) = capacity(t)?;
        let hardware = Hardware::from_tags(t)?;
        let healthy = healthy(t)?;
        let payment = PaymentInfo::from_tags(t)?;
        let expiration = Timestamp::from_secs(tags::parse_u64(
            "expiration",
            tags::value(t, "expiration")?,
        )?);
        Ok(ParsedCapabilityAd {
            worker: event.pubkey,
            created_at: event.created_at,
            ad: CapabilityAd {
                instance,
                name: content.name,
                about: content.about,
                job_kinds,
                models,
                prices,
                max_concurrent,
                in_flight,
                queue_depth,
                hardware,
                runner: tags::value(t, "runner")?.to_owned(),
                healthy,
                payment,
                relays: tags::opt(t, "relays")?
                    .map(<[String]>::to_vec)
                    .unwrap_or_default(),
                version: tags::value(t, "version")?.to_owned(),
                encryption_supported: content.encryption_supported,
                features: features(t),
                expiration,
            },
        })
    }
}

/// `k` tags: the job kinds served (at least one).
fn job_kinds(t: &Tags) -> Result<Vec<u16>, ProtocolError> {
    let kinds = tags::all(t, "k")
        .map(|v| {
            let s = v.first().ok_or(ProtocolError::tag("k", "has no value"))?;
            let k = tags::parse_u32("k", s)?;
            u16::try_from(k).map_err(|_| ProtocolError::tag("k", "kind out of range"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if kinds.is_empty() {
        return Err(ProtocolError::MissingTag("k"));
    }
    Ok(kinds)
}

/// `feature` tags (unknown names kept: a newer worker's features pass through; at most
/// [`MAX_FEATURES`], a hostile ad cannot make a reader allocate more).
fn features(t: &Tags) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in tags::all(t, "feature") {
        if let Some(f) = v.first().filter(|f| !f.is_empty() && f.len() <= 64) {
            if out.len() < MAX_FEATURES && !out.contains(f) {
                out.push(f.clone());
            }
        }
    }
    out
}

/// `model` tags: id, context length, quantisation.
fn models(t: &Tags) -> Result<Vec<ModelInfo>, ProtocolError> {
    tags::all(t, "model")
        .map(|v| match v {
            [id, ctx, q, rest @ ..] if !id.is_empty() => Ok(ModelInfo {
                id: id.clone(),
                context_length: tags::parse_u32("model", ctx)?,
                quantisation: q.clone(),
                // Read liberally (an ad is not refused for it), and never beyond what an answer
                // may hold: a wider claim would make customers size jobs down to nothing.
                dimensions: rest
                    .first()
                    .and_then(|d| d.parse::<u32>().ok())
                    .filter(|d| *d as usize <= crate::job::MAX_EMBED_DIMENSIONS)
                    .unwrap_or(0),
            }),
            _ => Err(ProtocolError::tag(
                "model",
                "needs id, context length, quantisation",
            )),
        })
        .collect()
}

/// `price` tags, each for an advertised model.
fn prices(t: &Tags, models: &[ModelInfo]) -> Result<Vec<Price>, ProtocolError> {
    let prices = tags::all(t, "price")
        .map(|v| match v {
            [m, b, i, o, ..] => Ok(Price {
                model: m.clone(),
                base_msat: tags::parse_u64("price", b)?,
                per_1k_input_msat: tags::parse_u64("price", i)?,
                per_1k_output_msat: tags::parse_u64("price", o)?,
            }),
            _ => Err(ProtocolError::tag(
                "price",
                "needs model, base, per-1k-in, per-1k-out",
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(p) = prices
        .iter()
        .find(|p| !models.iter().any(|m| m.id == p.model))
    {
        return Err(ProtocolError::tag(
            "price",
            format!("model `{}` is not advertised", p.model),
        ));
    }
    Ok(prices)
}

/// The `capacity` tag: max concurrent, in flight, queue depth.
fn capacity(t: &Tags) -> Result<(u32, u32, u32), ProtocolError> {
    match tags::one(t, "capacity")? {
        [a, b, c, ..] => Ok((
            tags::parse_u32("capacity", a)?,
            tags::parse_u32("capacity", b)?,
            tags::parse_u32("capacity", c)?,
        )),
        _ => Err(ProtocolError::tag(
            "capacity",
            "needs max, in flight, queue depth",
        )),
    }
}

/// The `health` tag (absent: healthy).
fn healthy(t: &Tags) -> Result<bool, ProtocolError> {
    match tags::opt_value(t, "health")? {
        None | Some("ok") => Ok(true),
        Some("down") | Some("degraded") => Ok(false),
        Some(o) => Err(ProtocolError::tag(
            "health",
            format!("unknown health `{o}`"),
        )),
    }
}

impl Hardware {
    /// The `hardware` tag: `gpu NAME MIB` or `cpu NAME CORES MIB`.
    fn from_tags(t: &Tags) -> Result<Self, ProtocolError> {
        match tags::one(t, "hardware")? {
            [k, name, mem] if k == "gpu" => Ok(Hardware::Gpu {
                name: name.clone(),
                memory_mib: tags::parse_u64("hardware", mem)?,
            }),
            [k, name, cores, mem] if k == "cpu" => Ok(Hardware::Cpu {
                name: name.clone(),
                cores: tags::parse_u32("hardware", cores)?,
                memory_mib: tags::parse_u64("hardware", mem)?,
            }),
            _ => Err(ProtocolError::tag("hardware", "expected gpu or cpu layout")),
        }
    }

    fn to_tag(&self) -> Tag {
        match self {
            Hardware::Gpu { name, memory_mib } => tag(
                "hardware",
                ["gpu".to_owned(), name.clone(), memory_mib.to_string()],
            ),
            Hardware::Cpu {
                name,
                cores,
                memory_mib,
            } => tag(
                "hardware",
                [
                    "cpu".to_owned(),
                    name.clone(),
                    cores.to_string(),
                    memory_mib.to_string(),
                ],
            ),
        }
    }
}

impl PaymentInfo {
    /// `payment` tags (unknown methods are ignored, for forward compatibility) and
    /// `payment_mode`.
    fn from_tags(t: &Tags) -> Result<Self, ProtocolError> {
        let mut payment = PaymentInfo::default();
        for v in tags::all(t, "payment") {
            match v {
                [k, val, ..] if k == "ln-node" => payment.ln_node = Some(val.clone()),
                [k, val, ..] if k == "lud16" => payment.lightning_address = Some(val.clone()),
                [k, val, ..] if k == "lnurl" => payment.lnurl = Some(val.clone()),
                _ => {}
            }
        }
        payment.mode = tags::opt_value(t, "payment_mode")?
            .map(PaymentMode::parse)
            .transpose()?;
        Ok(payment)
    }

    fn push_tags(&self, t: &mut Vec<Tag>) {
        if let Some(v) = &self.ln_node {
            t.push(tag("payment", ["ln-node".to_owned(), v.clone()]));
        }
        if let Some(v) = &self.lightning_address {
            t.push(tag("payment", ["lud16".to_owned(), v.clone()]));
        }
        if let Some(v) = &self.lnurl {
            t.push(tag("payment", ["lnurl".to_owned(), v.clone()]));
        }
        if let Some(m) = self.mode {
            t.push(tag("payment_mode", [m.as_str()]));
        }
    }
}
