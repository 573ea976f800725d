//! # fedai-protocol
//!
//! The one place where fed_AI's protocol types exist. Every service (relay, worker, CLI, SDK,
//! simulator) builds and parses its Nostr events through this crate, so the wire format is defined
//! exactly once and the specs in `nips/` are checked against it by tests.
//!
//! The crate is sans-IO: no sockets, no async runtime. Builders turn typed messages into signed
//! [`nostr::Event`]s; parsers take an [`Event`], **verify its id and signature**, check its kind and
//! tag layout, and return the typed message or a precise [`ProtocolError`].
//!
//! | message | kind | module |
//! |---|---|---|
//! | capability ad (NIP-89 handler info) | 31990 | [`capability`] |
//! | job request (NIP-90 text generation) | 5050 | [`job`] |
//! | job result | 6050 | [`result`] |
//! | job feedback | 7000 | [`feedback`] |
//! | metering record | 7060 | [`metering`] |
//! | award (auction winner) | 7061 | [`award`] |
//! | payment receipt | 7062 | [`receipt`] |
//!
//! Supporting modules: [`freshness`] (expiry, clock skew and replay refusal for events from the
//! network), [`crypto`] (NIP-44 / NIP-04 payload encryption), [`validate`] (schema validation of any
//! fedai kind, used by the relay's write policy).

pub mod attestation;
pub mod award;
pub mod capability;
pub mod crypto;
pub mod error;
pub mod feedback;
pub mod freshness;
pub mod job;
pub mod kinds;
pub mod metering;
pub mod receipt;
pub mod result;
mod tags;
pub mod validate;

pub use nostr;
pub use nostr::prelude::{Event, EventId, Keys, Kind, PublicKey, Timestamp};

pub use attestation::{Attestation, ParsedAttestation, Verdict as AttestationVerdict};
pub use award::Award;
pub use capability::{CapabilityAd, Hardware, ModelInfo, PaymentMode, Price};
pub use crypto::Encryption;
pub use error::{ErrorCode, ProtocolError};
pub use feedback::{FeedbackStatus, JobFeedback};
pub use freshness::{Freshness, ReplayGuard};
pub use job::{
    cancellation, cancellation_of, vector_base64, ChatMessage, EmbedAnswer, FunctionCall, InputTag,
    InputType, JobInput, JobParams, JobRequest, JsonAnswer, ParsedJobRequest, TokenLogprob,
    ToolCall, TopLogprob,
};
pub use metering::{MeteringCheck, MeteringRecord};
pub use receipt::PaymentReceipt;
pub use result::{JobResult, Usage};

/// Protocol version carried in capability ads and used by the relay's NIP-11 document.
pub const PROTOCOL_VERSION: &str = "fedai/1";

/// Hex-encoded SHA-256 of `data`. Metering commits to prompts with this, never to the prompt itself.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// An `["amount", "<msat>", "<bolt11>"?]` tag: a price, optionally with an invoice to pay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    /// Millisatoshi.
    pub msat: u64,
    /// BOLT11 invoice for this amount, when payment is requested.
    pub bolt11: Option<String>,
}

impl Amount {
    pub(crate) fn to_tag(&self) -> nostr::prelude::Tag {
        let mut v = vec![self.msat.to_string()];
        if let Some(b) = &self.bolt11 {
            v.push(b.clone());
        }
        tags::tag("amount", v)
    }

    pub(crate) fn from_tags(t: &nostr::prelude::Tags) -> Result<Option<Self>, ProtocolError> {
        let Some(v) = tags::opt(t, "amount")? else {
            return Ok(None);
        };
        let msat = tags::parse_u64(
            "amount",
            v.first()
                .ok_or(ProtocolError::tag("amount", "has no value"))?,
        )?;
        let bolt11 = v.get(1).filter(|s| !s.is_empty()).cloned();
        if let Some(b) = &bolt11 {
            let lower = b.to_ascii_lowercase();
            if !lower.starts_with("ln") {
                return Err(ProtocolError::tag(
                    "amount",
                    "invoice is not a BOLT11 string",
                ));
            }
        }
        Ok(Some(Self { msat, bolt11 }))
    }
}

/// Dependencies that log whole messages (event JSON, HTTP bodies) at debug or trace level.
/// Every fed_AI binary caps them at `info` whatever log filter the operator sets, because prompts
/// and outputs must never reach a log (see docs/data-handling.md).
pub const PAYLOAD_LOGGING_CRATES: &[&str] = &[
    "nostr_sdk",
    "nostr_relay_pool",
    "nostr_database",
    "nostr_lmdb",
    "async_wsocket",
    "tungstenite",
    "tokio_tungstenite",
    "reqwest",
    "hyper",
    "hyper_util",
];

/// The operator's log filter with [`PAYLOAD_LOGGING_CRATES`] capped at `info`, as a
/// `tracing_subscriber::EnvFilter` string. Filters that enable nothing above `info` are returned
/// unchanged (so `warn` stays `warn` for those crates too).
pub fn private_log_filter(filter: &str) -> String {
    let mut f = filter.trim().to_owned();
    let lower = f.to_ascii_lowercase();
    if !lower.contains("debug") && !lower.contains("trace") {
        return f;
    }
    for c in PAYLOAD_LOGGING_CRATES {
        if !f.is_empty() {
            f.push(',');
        }
        f.push_str(c);
        f.push_str("=info");
    }
    f
}
