//! Event kinds used by fed_AI.
//!
//! Job kinds follow NIP-90 (request 5000–5999, result = request + 1000, feedback 7000) and the
//! capability ad is NIP-89's handler information (31990), so generic DVM clients can read them.
//! fed_AI's own kinds (metering, award, receipt) sit at 7060–7062: **regular** kinds (stored for
//! ever, never replaced) because each is an audit fact that must stay verifiable; outside the
//! 5000–6999 band that generic DVM software interprets as requests/results; next to the NIP-90
//! feedback kind so relay operators can reason about the job-market band 5000–7099 as one unit.

use nostr::prelude::Kind;

/// NIP-90 text-generation job request.
pub const JOB_REQUEST: u16 = 5050;
/// NIP-90 text-generation job result (request kind + 1000).
pub const JOB_RESULT: u16 = 6050;
/// fed_AI text-embedding job request: each `i` text is embedded (fedai-01 "Embeddings"). No
/// NIP-90 registry kind embeds text; this one sits next to text generation.
pub const EMBED_REQUEST: u16 = 5060;
/// fed_AI text-embedding job result (request kind + 1000): the vectors.
pub const EMBED_RESULT: u16 = 6060;
/// The job request kinds fed_AI serves.
pub const REQUEST_KINDS: &[u16] = &[JOB_REQUEST, EMBED_REQUEST];
/// NIP-90 job feedback.
pub const JOB_FEEDBACK: u16 = 7000;
/// fed_AI metering record, signed by the worker.
pub const METERING: u16 = 7060;
/// fed_AI award: the customer picks one quote of an auction.
pub const AWARD: u16 = 7061;
/// fed_AI payment receipt: the customer's proof of payment (preimage).
pub const PAYMENT_RECEIPT: u16 = 7062;
/// NIP-89 handler information, used as the worker's capability ad.
pub const CAPABILITY_AD: u16 = 31990;
/// NIP-32 label: fed_AI attestations (namespace `fedai/attest`, [`crate::attestation`]).
pub const LABEL: u16 = 1985;
/// NIP-09 deletion, used by customers to cancel a job request.
pub const DELETION: u16 = 5;

/// All kinds whose schema this crate defines (validated by the relay).
pub const FEDAI_KINDS: &[u16] = &[
    JOB_REQUEST,
    JOB_RESULT,
    EMBED_REQUEST,
    EMBED_RESULT,
    JOB_FEEDBACK,
    METERING,
    AWARD,
    PAYMENT_RECEIPT,
    CAPABILITY_AD,
];

/// `Kind` from a number.
pub fn kind(k: u16) -> Kind {
    Kind::from_u16(k)
}

/// The marker tag that every fed_AI capability ad carries (`["t", "fedai"]`), so that a relay
/// query can tell fed_AI workers from other NIP-89 handlers.
pub const FEDAI_TOPIC: &str = "fedai";

/// fed_AI's marker on the NIP-90 kinds it shares with other applications (5050, 6050, 7000):
/// `["t", "fedai"]`. Relays apply fed_AI's schema only to events that carry it; events of other
/// DVMs and generic clients get NIP-01 checks only.
pub fn fedai_marker() -> nostr::prelude::Tag {
    nostr::prelude::Tag::hashtag(FEDAI_TOPIC)
}

/// Whether `tags` carry [`fedai_marker`].
pub fn has_fedai_marker(tags: &nostr::prelude::Tags) -> bool {
    tags.iter().any(|t| {
        let s = t.as_slice();
        s.len() >= 2 && s[0] == "t" && s[1] == FEDAI_TOPIC
    })
}

/// Kinds that only fed_AI defines (metering, award, receipt): always validated.
pub const FEDAI_OWNED_KINDS: &[u16] = &[METERING, AWARD, PAYMENT_RECEIPT];

/// Whether `k` is a job request kind fed_AI serves.
pub fn is_request(k: u16) -> bool {
    REQUEST_KINDS.contains(&k)
}

/// The result kind of a request kind (NIP-90: request + 1000).
pub fn result_of(request: u16) -> u16 {
    request.saturating_add(1000)
}
