//! Errors returned by the protocol parsers, and the machine-readable job error codes.

use std::fmt;
use std::str::FromStr;

/// Why an event is not a valid fed_AI message. Each variant is precise enough to be shown to the
/// sender (the relay prefixes it with `invalid:`; a worker puts it in an `error` feedback).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The event's id is not the hash of its serialisation.
    #[error("event id does not match its content")]
    InvalidId,
    /// The Schnorr signature does not verify against the event's pubkey.
    #[error("event signature is invalid")]
    InvalidSignature,
    /// The event has another kind than the parser expects.
    #[error("expected kind {expected}, found kind {found}")]
    WrongKind {
        /// Kind the parser handles.
        expected: u16,
        /// Kind of the event.
        found: u16,
    },
    /// A required tag is absent.
    #[error("missing tag `{0}`")]
    MissingTag(&'static str),
    /// A tag that may appear once appears several times.
    #[error("tag `{0}` must appear once")]
    DuplicateTag(&'static str),
    /// A tag is present but its values are malformed.
    #[error("tag `{tag}`: {reason}")]
    InvalidTag {
        /// Tag name.
        tag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The content does not have the expected form.
    #[error("content: {0}")]
    InvalidContent(String),
    /// The event carries a NIP-40 expiration in the past.
    #[error("event expired at {0}")]
    Expired(u64),
    /// The event claims a creation time too far in the future.
    #[error("created_at {created_at} is more than {skew}s ahead of now")]
    FromFuture {
        /// The event's `created_at`.
        created_at: u64,
        /// The tolerated clock skew in seconds.
        skew: u64,
    },
    /// The event is older than the receiver accepts for this kind.
    #[error("event is older than {max_age}s")]
    TooOld {
        /// Maximum age in seconds.
        max_age: u64,
    },
    /// The event (by id) has been seen before.
    #[error("event {0} was already processed (replay)")]
    Replayed(String),
    /// The payload is encrypted and no key was given, or the key is not the recipient's.
    #[error("encrypted payload is addressed to another key")]
    NotRecipient,
    /// Encrypted payload could not be decrypted.
    #[error("decryption failed: {0}")]
    Decryption(String),
    /// Payload could not be encrypted.
    #[error("encryption failed: {0}")]
    Encryption(String),
    /// Signing failed (builder side).
    #[error("signing failed: {0}")]
    Signing(String),
    /// A metering record does not match the result or request it claims.
    #[error("metering mismatch: {0}")]
    MeteringMismatch(String),
    /// A payment receipt's preimage does not hash to its payment hash.
    #[error("preimage does not match payment hash")]
    PreimageMismatch,
}

impl ProtocolError {
    pub(crate) fn tag(tag: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidTag {
            tag,
            reason: reason.into(),
        }
    }
}

/// Machine-readable reason carried by an `error` feedback (`["code", "<code>"]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The prompt is larger than the worker accepts.
    PromptTooLarge,
    /// The requested model is not served by this worker.
    ModelUnavailable,
    /// The worker is at capacity.
    Capacity,
    /// The inference runner failed or is unreachable.
    RunnerFailed,
    /// The job did not finish within its deadline.
    Timeout,
    /// The request is malformed (bad tag, bad parameter, cannot decrypt).
    InvalidRequest,
    /// The request expired before it could run.
    Expired,
    /// Payment was not made, or failed.
    PaymentFailed,
    /// The job was cancelled by the customer (kind-5 deletion).
    Cancelled,
    /// The worker stopped before finishing (shutdown or restart).
    Shutdown,
    /// A code this version does not know; kept verbatim.
    Other(String),
}

impl ErrorCode {
    /// Wire form (kebab-case).
    pub fn as_str(&self) -> &str {
        match self {
            Self::PromptTooLarge => "prompt-too-large",
            Self::ModelUnavailable => "model-unavailable",
            Self::Capacity => "capacity",
            Self::RunnerFailed => "runner-failed",
            Self::Timeout => "timeout",
            Self::InvalidRequest => "invalid-request",
            Self::Expired => "expired",
            Self::PaymentFailed => "payment-failed",
            Self::Cancelled => "cancelled",
            Self::Shutdown => "shutdown",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "prompt-too-large" => Self::PromptTooLarge,
            "model-unavailable" => Self::ModelUnavailable,
            "capacity" => Self::Capacity,
            "runner-failed" => Self::RunnerFailed,
            "timeout" => Self::Timeout,
            "invalid-request" => Self::InvalidRequest,
            "expired" => Self::Expired,
            "payment-failed" => Self::PaymentFailed,
            "cancelled" => Self::Cancelled,
            "shutdown" => Self::Shutdown,
            other => Self::Other(other.to_owned()),
        })
    }
}
