//! Metering record (fed_AI kind 7060), signed by the worker.
//!
//! A metering record is the worker's signed statement of what a job consumed and cost. It commits
//! to the prompt by its SHA-256 only, never the prompt itself, so it can be public. Anyone holding
//! the request, result and record can check with [`MeteringRecord::verify`] that the three agree;
//! the customer (who knows the prompt) can also check the prompt hash of an encrypted job.
//!
//! ```text
//! ["e", "<request id>", "", "request"]  ["e", "<result id>", "", "result"]  ["p", "<customer>"]
//! ["k", "5050|5060"]  ["model", "<id>"]  ["prompt_sha256", "<hex>"]  ["tokens", "<in>", "<out>"]
//! ["wall_ms", "<ms>"]  ["bytes", "<in>", "<out>"]  ["price", "<msat>"]  ["payment_hash", "<hex>"]?
//! ```

use nostr::prelude::{Event, EventId, Keys, PublicKey, Tag, Timestamp};

use crate::result::ParsedJobResult;
use crate::tags::{self, tag};
use crate::{kinds, ParsedJobRequest, ProtocolError, Usage};

/// What a job consumed and cost, as signed by the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeteringRecord {
    /// The job request.
    pub request_id: EventId,
    /// The result event.
    pub result_id: EventId,
    /// The customer.
    pub customer: PublicKey,
    /// Model that ran.
    pub model: String,
    /// Hex SHA-256 of the request's `i` data (the prompt as sent).
    pub prompt_sha256: String,
    /// Token counts.
    pub usage: Usage,
    /// Wall time from start of inference to result, in milliseconds.
    pub wall_ms: u64,
    /// Prompt bytes (the `i` data).
    pub bytes_in: u64,
    /// Output bytes (plaintext).
    pub bytes_out: u64,
    /// Price charged in millisatoshi (0 for free jobs).
    pub price_msat: u64,
    /// Payment hash of the invoice that paid the job, when paid.
    pub payment_hash: Option<String>,
}

/// A metering record received from the network, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMetering {
    /// Record event id.
    pub id: EventId,
    /// Worker that signed it.
    pub worker: PublicKey,
    /// When it was published.
    pub created_at: Timestamp,
    /// The kind of the metered request (`k`; 5050 when absent).
    pub request_kind: u16,
    /// The record.
    pub record: MeteringRecord,
}

/// What [`MeteringRecord::verify`] could check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeteringCheck {
    /// The prompt hash and byte counts were checked against the plaintext prompt.
    pub prompt_checked: bool,
    /// The output byte count was checked against the plaintext output.
    pub output_checked: bool,
}

fn is_hex32(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl MeteringRecord {
    /// Build and sign (by the worker) the record of a text-generation job.
    pub fn to_event(&self, keys: &Keys) -> Result<Event, ProtocolError> {
        self.to_event_for(kinds::JOB_REQUEST, keys)
    }

    /// Build and sign the record of a job whose request is of kind `request_kind` (`k`).
    pub fn to_event_for(&self, request_kind: u16, keys: &Keys) -> Result<Event, ProtocolError> {
        let mut t: Vec<Tag> = vec![
            tags::marked_e_tag(&self.request_id, "request"),
            tags::marked_e_tag(&self.result_id, "result"),
            Tag::public_key(self.customer),
            tag("k", [request_kind.to_string()]),
            tag("model", [self.model.clone()]),
            tag("prompt_sha256", [self.prompt_sha256.clone()]),
            tag(
                "tokens",
                [
                    self.usage.input_tokens.to_string(),
                    self.usage.output_tokens.to_string(),
                ],
            ),
            tag("wall_ms", [self.wall_ms.to_string()]),
            tag(
                "bytes",
                [self.bytes_in.to_string(), self.bytes_out.to_string()],
            ),
            tag("price", [self.price_msat.to_string()]),
        ];
        if let Some(h) = &self.payment_hash {
            t.push(tag("payment_hash", [h.clone()]));
        }
        if !is_hex32(&self.prompt_sha256) {
            return Err(ProtocolError::tag(
                "prompt_sha256",
                "not a lowercase hex sha256",
            ));
        }
        tags::sign(kinds::METERING, "", t, keys)
    }

    /// Verify and parse.
    pub fn from_event(event: &Event) -> Result<ParsedMetering, ProtocolError> {
        Self::parse(event, true)
    }

    /// Parse; `verify = false` only for events whose id and signature the caller has
    /// already verified (the relay's hot path).
    pub(crate) fn parse(event: &Event, verify: bool) -> Result<ParsedMetering, ProtocolError> {
        tags::check(verify, event, kinds::METERING)?;
        let t = &event.tags;
        let pair = |name: &'static str| -> Result<(u64, u64), ProtocolError> {
            match tags::one(t, name)? {
                [a, b, ..] => Ok((tags::parse_u64(name, a)?, tags::parse_u64(name, b)?)),
                _ => Err(ProtocolError::tag(name, "needs two values")),
            }
        };
        let (input_tokens, output_tokens) = pair("tokens")?;
        let (bytes_in, bytes_out) = pair("bytes")?;
        let prompt_sha256 = tags::value(t, "prompt_sha256")?.to_owned();
        if !is_hex32(&prompt_sha256) {
            return Err(ProtocolError::tag(
                "prompt_sha256",
                "not a lowercase hex sha256",
            ));
        }
        let request_kind = match tags::opt_value(t, "k")? {
            None => kinds::JOB_REQUEST,
            Some(k) => tags::parse_u32("k", k)?
                .try_into()
                .ok()
                .filter(|k| kinds::is_request(*k))
                .ok_or_else(|| ProtocolError::tag("k", "is not a fed_AI job request kind"))?,
        };
        let payment_hash = tags::opt_value(t, "payment_hash")?.map(str::to_owned);
        if let Some(h) = &payment_hash {
            if !is_hex32(h) {
                return Err(ProtocolError::tag(
                    "payment_hash",
                    "not a lowercase hex sha256",
                ));
            }
        }
        Ok(ParsedMetering {
            id: event.id,
            worker: event.pubkey,
            created_at: event.created_at,
            request_kind,
            record: MeteringRecord {
                request_id: tags::marked_e(t, "request")?,
                result_id: tags::marked_e(t, "result")?,
                customer: tags::single_p(t)?,
                model: tags::value(t, "model")?.to_owned(),
                prompt_sha256,
                usage: Usage {
                    input_tokens,
                    output_tokens,
                },
                wall_ms: tags::parse_u64("wall_ms", tags::value(t, "wall_ms")?)?,
                bytes_in,
                bytes_out,
                price_msat: tags::parse_u64("price", tags::value(t, "price")?)?,
                payment_hash,
            },
        })
    }
}

impl ParsedMetering {
    /// Check that this record matches the `result` and `request` it claims: same worker as the
    /// result, same request and customer, same model and token counts, price equal to the
    /// result's amount and within the request's bid, and the prompt hash and byte counts equal
    /// to the request's plaintext input. When the result output is plaintext, the output byte
    /// count is checked too.
    pub fn verify(
        &self,
        result: &ParsedJobResult,
        request: &ParsedJobRequest,
    ) -> Result<MeteringCheck, ProtocolError> {
        self.check(
            result,
            &JobView {
                id: request.id,
                customer: request.customer,
                model: request.request.params.model.as_deref(),
                bid: request.request.bid_msat,
                prompt: Some(&request.input_data),
                max_tokens: request.request.params.max_tokens,
            },
        )
    }

    /// Check as a third party that cannot decrypt the request: everything [`Self::verify`]
    /// checks except what needs the plaintext prompt (hash, input bytes, requested model).
    pub fn verify_sealed(
        &self,
        result: &ParsedJobResult,
        request: &Event,
    ) -> Result<MeteringCheck, ProtocolError> {
        if !kinds::is_request(request.kind.as_u16()) {
            return Err(ProtocolError::WrongKind {
                expected: kinds::JOB_REQUEST,
                found: request.kind.as_u16(),
            });
        }
        tags::verified(request, request.kind.as_u16())?;
        let bid = tags::opt_value(&request.tags, "bid")?
            .map(|v| tags::parse_u64("bid", v))
            .transpose()?;
        self.check(
            result,
            &JobView {
                id: request.id,
                customer: request.pubkey,
                model: None,
                bid,
                prompt: None,
                max_tokens: None,
            },
        )
    }

    fn check(
        &self,
        result: &ParsedJobResult,
        job: &JobView<'_>,
    ) -> Result<MeteringCheck, ProtocolError> {
        let JobView {
            id: request_id,
            customer,
            model: requested_model,
            bid,
            prompt,
            max_tokens,
        } = *job;
        let r = &self.record;
        let fail = |m: String| Err(ProtocolError::MeteringMismatch(m));
        if self.worker != result.worker {
            return fail("record is not signed by the worker that signed the result".into());
        }
        if r.result_id != result.id {
            return fail("record references another result".into());
        }
        if r.request_id != request_id || result.request_id() != request_id {
            return fail("record, result and request do not reference the same job".into());
        }
        if self.request_kind != result.result.request.kind.as_u16() {
            return fail(format!("record names request kind {}", self.request_kind));
        }
        if r.customer != customer {
            return fail("record names another customer".into());
        }
        if r.model != result.result.model {
            return fail(format!("model `{}` differs from the result's", r.model));
        }
        if let Some(m) = requested_model {
            if m != r.model {
                return fail(format!("model `{}` is not the requested `{m}`", r.model));
            }
        }
        if r.usage != result.result.usage {
            return fail("token counts differ from the result's usage".into());
        }
        if let Some(max) = max_tokens {
            if r.usage.output_tokens > u64::from(max) {
                return fail(format!(
                    "{} output tokens, over the request's max_tokens {max}",
                    r.usage.output_tokens
                ));
            }
        }
        if let Some(a) = &result.result.amount {
            if a.msat != r.price_msat {
                return fail("price differs from the result's amount".into());
            }
        }
        if let Some(bid) = bid {
            if r.price_msat > bid {
                return fail(format!("price {} msat exceeds the bid {bid}", r.price_msat));
            }
        }
        if let Some(p) = prompt {
            if crate::sha256_hex(p.as_bytes()) != r.prompt_sha256 {
                return fail("prompt hash does not match the request".into());
            }
            if p.len() as u64 != r.bytes_in {
                return fail("input byte count does not match the request".into());
            }
        }
        let output_checked = !result.output_sealed;
        if output_checked && result.result.output.len() as u64 != r.bytes_out {
            return fail("output byte count does not match the result".into());
        }
        Ok(MeteringCheck {
            prompt_checked: prompt.is_some(),
            output_checked,
        })
    }
}

/// What a checker knows of the job a record meters (less when it cannot decrypt the request).
#[derive(Clone, Copy)]
struct JobView<'a> {
    id: EventId,
    customer: PublicKey,
    model: Option<&'a str>,
    bid: Option<u64>,
    prompt: Option<&'a str>,
    max_tokens: Option<u32>,
}
