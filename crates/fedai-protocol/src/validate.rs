//! Schema validation of any fed_AI kind, for relays and other intermediaries that must not
//! decrypt. Encrypted requests and results are checked for their public layout only.
//!
//! fed_AI shares kinds with every NIP-90 application (5050, 6050, 7000) and NIP-89 handler
//! (31990): those are held to fed_AI's schema only when they carry fed_AI's marker
//! (`["t", "fedai"]`, [`kinds::fedai_marker`]). Other applications' events pass, so a relay that
//! hosts a public market carries them. fed_AI's own kinds (7060–7062) are always checked.

use nostr::prelude::Event;

use crate::{
    kinds, Award, CapabilityAd, JobFeedback, JobRequest, JobResult, MeteringRecord, PaymentReceipt,
    ProtocolError,
};

/// Whether `kind` is one whose schema fed_AI defines.
pub fn is_fedai_kind(kind: u16) -> bool {
    kinds::FEDAI_KINDS.contains(&kind)
}

/// Validate `event` against the schema of its kind (id and signature included). Events of other
/// kinds pass unchanged (`Ok`), so a relay can run everything through this function.
///
/// Job requests, results, feedback and NIP-89 ads without fed_AI's marker belong to other
/// applications and pass too.
pub fn validate_event(event: &Event) -> Result<(), ProtocolError> {
    if !event.verify_id() {
        return Err(ProtocolError::InvalidId);
    }
    if !event.verify_signature() {
        return Err(ProtocolError::InvalidSignature);
    }
    validate_verified(event)
}

/// [`validate_event`] for an event whose id and signature the caller has **already verified**
/// (a relay verifies every event once on arrival; verifying again would double the cost of the
/// hottest path). Never call it on an unverified event.
pub fn validate_verified(event: &Event) -> Result<(), ProtocolError> {
    let kind = event.kind.as_u16();
    if !kinds::FEDAI_OWNED_KINDS.contains(&kind) && !kinds::has_fedai_marker(&event.tags) {
        return Ok(());
    }
    match kind {
        kinds::JOB_REQUEST | kinds::EMBED_REQUEST => match JobRequest::parse(event, None, false) {
            // An encrypted request cannot be opened here; its public layout was already checked.
            Err(ProtocolError::NotRecipient) => Ok(()),
            r => r.map(drop),
        },
        kinds::JOB_RESULT | kinds::EMBED_RESULT => JobResult::parse(event, None, false).map(drop),
        kinds::JOB_FEEDBACK => JobFeedback::parse(event, None, false).map(drop),
        kinds::METERING => MeteringRecord::parse(event, false).map(drop),
        kinds::AWARD => Award::parse(event, false).map(drop),
        kinds::PAYMENT_RECEIPT => PaymentReceipt::parse(event, false).map(drop),
        kinds::CAPABILITY_AD => CapabilityAd::parse(event, false).map(drop),
        _ => Ok(()),
    }
}
