//! Schema validation of any fed_AI kind, for relays and other intermediaries that must not
//! decrypt. Encrypted requests and results are checked for their public layout only.

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
/// NIP-89 ads (31990) without the fed_AI topic tag belong to other applications and pass too.
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
    match event.kind.as_u16() {
        kinds::JOB_REQUEST => match JobRequest::parse(event, None, false) {
            // An encrypted request cannot be opened here; its public layout was already checked.
            Err(ProtocolError::NotRecipient) => Ok(()),
            r => r.map(drop),
        },
        kinds::JOB_RESULT => JobResult::parse(event, None, false).map(drop),
        kinds::JOB_FEEDBACK => JobFeedback::parse(event, None, false).map(drop),
        kinds::METERING => MeteringRecord::parse(event, false).map(drop),
        kinds::AWARD => Award::parse(event, false).map(drop),
        kinds::PAYMENT_RECEIPT => PaymentReceipt::parse(event, false).map(drop),
        kinds::CAPABILITY_AD => {
            let fedai = event.tags.iter().any(|t| {
                let s = t.as_slice();
                s.len() >= 2 && s[0] == "t" && s[1] == kinds::FEDAI_TOPIC
            });
            if fedai {
                CapabilityAd::parse(event, false).map(drop)
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}
