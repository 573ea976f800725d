//! Job result (NIP-90 kind 6050; 6060 for an embedding job, its content an
//! [`crate::EmbedAnswer`]).
//!
//! ```text
//! content: the generated text (encrypted to the customer when the request was encrypted)
//! ["request", "<request event JSON>"]  ["e", "<request id>", "<relay>"?]  ["p", "<customer>"]
//! ["i", "<data>", "<type>"]   (only for public requests: never leak a private prompt)
//! ["amount", "<msat>", "<bolt11>"?]  ["usage", "<input tokens>", "<output tokens>"]
//! ["model", "<model id>"]  ["encrypted"]?  ["t", "fedai"]
//! ```
//! The content is encrypted with the scheme the request used (NIP-44, or NIP-04 for a
//! NIP-04-encrypted request). `usage` and `model` are fed_AI's: required when the result carries
//! fed_AI's marker, optional (zero / empty) in other DVMs' results.

use nostr::prelude::{Event, EventId, Keys, PublicKey, Tag, Timestamp};

use crate::crypto::{self, Encryption};
use crate::tags::{self, tag};
use crate::{kinds, Amount, ParsedJobRequest, ProtocolError};

/// Token counts as reported by the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// A job result. `output` is plaintext here.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    /// The original request event (embedded as NIP-90 requires).
    pub request: Event,
    /// Generated text.
    pub output: String,
    /// Model that produced it.
    pub model: String,
    /// Token counts.
    pub usage: Usage,
    /// Price charged (and invoice for pay-after).
    pub amount: Option<Amount>,
    /// Whether (and how) the output is encrypted to the customer on the wire.
    pub encrypted: Option<Encryption>,
}

/// A result received from the network, verified.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedJobResult {
    /// Result event id.
    pub id: EventId,
    /// The worker that signed it.
    pub worker: PublicKey,
    /// When it was published.
    pub created_at: Timestamp,
    /// The typed result. Its `output` is ciphertext when encrypted and no key was given.
    pub result: JobResult,
    /// Whether `result.output` is still ciphertext.
    pub output_sealed: bool,
}

impl ParsedJobResult {
    /// The request's id.
    pub fn request_id(&self) -> EventId {
        self.result.request.id
    }
    /// The customer (request author).
    pub fn customer(&self) -> PublicKey {
        self.result.request.pubkey
    }
}

impl JobResult {
    /// Result of `request` with `output`. Encrypted iff the request was.
    pub fn for_request(
        request_event: &Event,
        parsed: &ParsedJobRequest,
        output: String,
        model: String,
        usage: Usage,
    ) -> Self {
        Self {
            request: request_event.clone(),
            output,
            model,
            usage,
            amount: None,
            encrypted: parsed.encrypted,
        }
    }

    /// Build and sign.
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        let customer = self.request.pubkey;
        let content = match self.encrypted {
            Some(scheme) => crypto::encrypt(keys, &customer, &self.output, scheme)?,
            None => self.output.clone(),
        };
        let mut t: Vec<Tag> = vec![
            tag("request", [self.request.as_json()]),
            Tag::event(self.request.id),
            Tag::public_key(customer),
        ];
        if self.encrypted.is_none() {
            for i in tags::all(&self.request.tags, "i") {
                t.push(tag("i", i.to_vec()));
            }
        }
        if let Some(a) = &self.amount {
            t.push(a.to_tag());
        }
        t.push(tag(
            "usage",
            [
                self.usage.input_tokens.to_string(),
                self.usage.output_tokens.to_string(),
            ],
        ));
        t.push(tag("model", [self.model.clone()]));
        if self.encrypted.is_some() {
            t.push(tag("encrypted", Vec::<String>::new()));
        }
        t.push(kinds::fedai_marker());
        tags::sign(
            kinds::result_of(self.request.kind.as_u16()),
            content,
            t,
            keys,
        )
    }

    /// Verify and parse. The embedded request must itself verify and match the `e` and `p` tags.
    /// An encrypted output is decrypted when the customer's (or worker's) `keys` are given.
    pub fn from_event(
        event: &Event,
        keys: Option<&Keys>,
    ) -> Result<ParsedJobResult, ProtocolError> {
        Self::parse(event, keys, true)
    }

    /// Parse; `verify = false` only for events whose id and signature the caller has
    /// already verified (the relay's hot path).
    pub(crate) fn parse(
        event: &Event,
        keys: Option<&Keys>,
        verify: bool,
    ) -> Result<ParsedJobResult, ProtocolError> {
        let kind = event.kind.as_u16();
        if kind != kinds::JOB_RESULT && kind != kinds::EMBED_RESULT {
            return Err(ProtocolError::WrongKind {
                expected: kinds::JOB_RESULT,
                found: kind,
            });
        }
        tags::check(verify, event, kind)?;
        let t = &event.tags;
        let request = Event::from_json(tags::value(t, "request")?)
            .map_err(|e| ProtocolError::tag("request", format!("not an event: {e}")))?;
        if kinds::result_of(request.kind.as_u16()) != kind {
            return Err(ProtocolError::tag(
                "request",
                "embedded event is not a job request",
            ));
        }
        request
            .verify()
            .map_err(|_| ProtocolError::tag("request", "embedded request does not verify"))?;
        if tags::single_e(t)? != request.id {
            return Err(ProtocolError::tag(
                "e",
                "does not reference the embedded request",
            ));
        }
        if tags::single_p(t)? != request.pubkey {
            return Err(ProtocolError::tag("p", "is not the request's author"));
        }
        let fedai = kinds::has_fedai_marker(t);
        let usage = match tags::opt(t, "usage")? {
            Some([i, o, ..]) => Usage {
                input_tokens: tags::parse_u64("usage", i)?,
                output_tokens: tags::parse_u64("usage", o)?,
            },
            Some(_) => {
                return Err(ProtocolError::tag(
                    "usage",
                    "needs input and output token counts",
                ))
            }
            None if fedai => return Err(ProtocolError::MissingTag("usage")),
            None => Usage::default(),
        };
        let model = match tags::opt_value(t, "model")? {
            Some(m) => m.to_owned(),
            None if fedai => return Err(ProtocolError::MissingTag("model")),
            None => String::new(),
        };
        let encrypted = tags::has_flag(t, "encrypted");
        if encrypted && tags::all(t, "i").next().is_some() {
            return Err(ProtocolError::tag(
                "i",
                "encrypted result must not reveal the input",
            ));
        }
        let (output, sealed) = match (encrypted, keys) {
            (true, Some(k)) => {
                let peer = if k.public_key() == event.pubkey {
                    request.pubkey
                } else {
                    event.pubkey
                };
                (crypto::decrypt(k, &peer, &event.content)?, false)
            }
            (true, None) => (event.content.clone(), true),
            (false, _) => (event.content.clone(), false),
        };
        Ok(ParsedJobResult {
            id: event.id,
            worker: event.pubkey,
            created_at: event.created_at,
            output_sealed: sealed,
            result: JobResult {
                request,
                output,
                model,
                usage,
                amount: Amount::from_tags(t)?,
                encrypted: encrypted.then(|| crypto::detect(&event.content)),
            },
        })
    }
}
