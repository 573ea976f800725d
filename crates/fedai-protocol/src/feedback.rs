//! Job feedback (NIP-90 kind 7000).
//!
//! ```text
//! ["status", "<status>", "<human info>"?]  ["e", "<request>"]  ["p", "<customer>"]
//! ["amount", "<msat>", "<bolt11>"?]   (payment-required: the quote)
//! ["lnurl", "<pay target>"]          (payment-required: a zap of the request or of this
//!                                      feedback also pays it; fedai/1 wrote `zap`, still read)
//! ["code", "<error-code>"]            (error)
//! ["seq", "<n>"]                      (partial: chunk order, from 0)
//! ["encrypted"]                       (content encrypted to the customer, NIP-44, or NIP-04
//!                                      when the request came NIP-04-encrypted)
//! ["t", "fedai"]                      (fed_AI's marker: the relay checks this schema)
//! ```
//! Feedback without the marker (other DVMs') is read liberally: only `status`, `e` and `p`
//! are required.
//! `partial` carries a chunk of generated text in the content.

use std::fmt;
use std::str::FromStr;

use nostr::prelude::{Event, EventId, Keys, PublicKey, Tag};

use crate::crypto::{self, Encryption};
use crate::error::ErrorCode;
use crate::tags::{self, tag};
use crate::{kinds, Amount, ProtocolError};

/// Job state announced by a feedback event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedbackStatus {
    /// The worker wants payment first; carries the quote (`amount`).
    PaymentRequired,
    /// The worker has started the job.
    Processing,
    /// A chunk of streamed output.
    Partial,
    /// The job failed or was refused; carries a `code`.
    Error,
    /// The job finished (the result event follows or precedes it).
    Success,
}

impl FeedbackStatus {
    /// Wire form.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PaymentRequired => "payment-required",
            Self::Processing => "processing",
            Self::Partial => "partial",
            Self::Error => "error",
            Self::Success => "success",
        }
    }
}

impl fmt::Display for FeedbackStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FeedbackStatus {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "payment-required" => Self::PaymentRequired,
            "processing" => Self::Processing,
            "partial" => Self::Partial,
            "error" => Self::Error,
            "success" => Self::Success,
            other => {
                return Err(ProtocolError::tag(
                    "status",
                    format!("unknown status `{other}`"),
                ))
            }
        })
    }
}

/// A feedback message. `content` is plaintext here; it is encrypted on the wire when
/// `encrypted` is set (for jobs whose request was encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFeedback {
    /// The job request this is about.
    pub request_id: EventId,
    /// The customer who posted the request.
    pub customer: PublicKey,
    /// The status.
    pub status: FeedbackStatus,
    /// Human-readable detail (status tag's third value).
    pub info: Option<String>,
    /// Price quote (required for `payment-required`).
    pub amount: Option<Amount>,
    /// On `payment-required`: a zap (NIP-57) of the request to this pay target (a lightning
    /// address, a bech32 LNURL or an LNURL-pay URL) for `amount` also pays the job.
    pub zap: Option<String>,
    /// Machine-readable error (required for `error`).
    pub code: Option<ErrorCode>,
    /// Chunk sequence number (required for `partial`).
    pub seq: Option<u64>,
    /// Content: the text chunk for `partial`, otherwise usually empty.
    pub content: String,
    /// Encrypt `content` (and `info`) to the customer, with this scheme.
    pub encrypted: Option<Encryption>,
}

impl JobFeedback {
    /// A feedback with only a status.
    pub fn new(request_id: EventId, customer: PublicKey, status: FeedbackStatus) -> Self {
        Self {
            request_id,
            customer,
            status,
            info: None,
            amount: None,
            zap: None,
            code: None,
            seq: None,
            content: String::new(),
            encrypted: None,
        }
    }

    /// An `error` feedback with a code and a human reason.
    pub fn error(
        request_id: EventId,
        customer: PublicKey,
        code: ErrorCode,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            code: Some(code),
            info: Some(reason.into()),
            ..Self::new(request_id, customer, FeedbackStatus::Error)
        }
    }

    /// A `partial` feedback carrying chunk number `seq`.
    pub fn partial(request_id: EventId, customer: PublicKey, seq: u64, chunk: String) -> Self {
        Self {
            seq: Some(seq),
            content: chunk,
            ..Self::new(request_id, customer, FeedbackStatus::Partial)
        }
    }

    /// A `payment-required` feedback (a quote).
    pub fn payment_required(request_id: EventId, customer: PublicKey, amount: Amount) -> Self {
        Self {
            amount: Some(amount),
            ..Self::new(request_id, customer, FeedbackStatus::PaymentRequired)
        }
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        match self.status {
            FeedbackStatus::PaymentRequired if self.amount.is_none() => {
                Err(ProtocolError::MissingTag("amount"))
            }
            FeedbackStatus::Error if self.code.is_none() => Err(ProtocolError::MissingTag("code")),
            FeedbackStatus::Partial if self.seq.is_none() => Err(ProtocolError::MissingTag("seq")),
            _ => Ok(()),
        }
    }

    /// Build and sign.
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        self.validate()?;
        let mut status = vec![self.status.as_str().to_owned()];
        let mut content = self.content.clone();
        if let Some(scheme) = self.encrypted {
            content = crypto::encrypt(keys, &self.customer, &content, scheme)?;
        }
        if let Some(info) = &self.info {
            // Info of an encrypted job could reveal something about the prompt: keep it private too.
            status.push(match self.encrypted {
                Some(scheme) => crypto::encrypt(keys, &self.customer, info, scheme)?,
                None => info.clone(),
            });
        }
        let mut t: Vec<Tag> = vec![
            tag("status", status),
            Tag::event(self.request_id),
            Tag::public_key(self.customer),
        ];
        if let Some(a) = &self.amount {
            t.push(a.to_tag());
        }
        if let Some(z) = &self.zap {
            t.push(tag("lnurl", [z.as_str()]));
        }
        if let Some(c) = &self.code {
            t.push(tag("code", [c.as_str()]));
        }
        if let Some(s) = self.seq {
            t.push(tag("seq", [s.to_string()]));
        }
        if self.encrypted.is_some() {
            t.push(tag("encrypted", Vec::<String>::new()));
        }
        t.push(kinds::fedai_marker());
        tags::sign(kinds::JOB_FEEDBACK, content, t, keys)
    }

    /// Verify and parse. Encrypted content and info are decrypted when `keys` (the customer's or
    /// the worker's) are given; otherwise they stay as ciphertext and `encrypted` is set.
    pub fn from_event(event: &Event, keys: Option<&Keys>) -> Result<Self, ProtocolError> {
        Self::parse(event, keys, true)
    }

    /// Parse; `verify = false` only for events whose id and signature the caller has
    /// already verified (the relay's hot path).
    pub(crate) fn parse(
        event: &Event,
        keys: Option<&Keys>,
        verify: bool,
    ) -> Result<Self, ProtocolError> {
        tags::check(verify, event, kinds::JOB_FEEDBACK)?;
        let t = &event.tags;
        let st = tags::one(t, "status")?;
        let status: FeedbackStatus = st[0].parse()?;
        let request_id = tags::single_e(t)?;
        let customer = tags::single_p(t)?;
        let encrypted = tags::has_flag(t, "encrypted");
        let scheme = encrypted.then(|| {
            let sample = if event.content.is_empty() {
                st.get(1).map(String::as_str).unwrap_or("")
            } else {
                event.content.as_str()
            };
            crypto::detect(sample)
        });
        let peer = |keys: &Keys| {
            if keys.public_key() == event.pubkey {
                customer
            } else {
                event.pubkey
            }
        };
        let reveal = |s: &str| -> Result<String, ProtocolError> {
            match (encrypted, keys) {
                (true, Some(k)) => crypto::decrypt(k, &peer(k), s),
                _ => Ok(s.to_owned()),
            }
        };
        let info = st.get(1).map(|s| reveal(s)).transpose()?;
        let content = if event.content.is_empty() {
            String::new()
        } else {
            reveal(&event.content)?
        };
        let code = tags::opt_value(t, "code")?.map(|c| c.parse().expect("infallible"));
        let seq = tags::opt_value(t, "seq")?
            .map(|v| tags::parse_u64("seq", v))
            .transpose()?;
        let fb = Self {
            request_id,
            customer,
            status,
            info,
            amount: Amount::from_tags(t)?,
            zap: pay_target(t)?,
            code,
            seq,
            content,
            encrypted: scheme,
        };
        if kinds::has_fedai_marker(t) {
            fb.validate()?;
        }
        Ok(fb)
    }
}

/// The zap pay target of a `payment-required`: `["lnurl", target]`, or fedai/1's `["zap",
/// target]` — told apart from a NIP-57 Appendix G zap split (`["zap", <hex pubkey>, …]`).
fn pay_target(t: &nostr::prelude::Tags) -> Result<Option<String>, ProtocolError> {
    if let Some(v) = tags::opt_value(t, "lnurl")? {
        return Ok(Some(v.to_owned()));
    }
    Ok(tags::all(t, "zap")
        .filter_map(|v| v.first())
        .find(|v| !(v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())))
        .cloned())
}
