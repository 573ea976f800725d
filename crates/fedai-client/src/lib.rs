//! # fedai-client
//!
//! The customer side of fed_AI, used by the `fedai` CLI (and later the gateway):
//! - [`FedaiClient::builder`] / [`FedaiClient::connect`]: relays and the customer's keys;
//! - [`FedaiClient::workers`]: live capability ads from every relay, expired ones dropped;
//!   [`FedaiClient::watch_workers`] keeps them current with one subscription ([`WorkerWatch`]);
//! - [`FedaiClient::run`]: choose a worker with `fedai-scheduler` (or run an auction), submit,
//!   stream partial tokens in order, verify result and metering, and fail over to the next
//!   worker on error, timeout or an invalid result — one answer or one error, never two;
//!   [`FedaiClient::start`] does the same in the background and returns a [`JobHandle`], a
//!   stream of updates;
//! - [`FedaiClient::quotes`]: collect quotes without running;
//! - [`FedaiClient::submit`]: one attempt with a request the caller addressed itself;
//! - [`verify`]: a job's state, a metering record or a payment receipt checked by anyone;
//! - [`FedaiClient::load_reputation`] / [`FedaiClient::save_reputation`]: what this customer
//!   learnt of workers, kept across runs.
//!
//! Modules: [`job`] is one job's life as a sans-IO state machine ([`job::JobTracker`]);
//! `follow` drives it over the relays; [`market`] chooses workers and fails over; `pay` (the
//! `lightning` feature) pays within caps. Without features the SDK depends on nostr-sdk,
//! fedai-protocol, fedai-scheduler and fedai-transport only; `lightning` adds invoice checks and
//! the spend state machine (bring a [`fedai_lightning::Payer`]), `lnd`, `nwc` and `zaps` add
//! the payers and the zap path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fedai_client::ClientError> {
//! use fedai_client::{FedaiClient, JobUpdate, RunOptions};
//! use fedai_protocol::{JobRequest, Keys};
//! use futures_util::StreamExt;
//! let client = FedaiClient::builder()
//!     .relay("ws://127.0.0.1:7777")
//!     .keys(Keys::generate())
//!     .connect()
//!     .await?;
//! let mut req = JobRequest::chat("Say hello");
//! req.params.stream = true;
//! let mut job = client.start(req, RunOptions::default());
//! while let Some(update) = job.next().await {
//!     if let JobUpdate::Partial(text) = update { print!("{text}") }
//! }
//! println!("\n{}", job.outcome().await?.output);
//! # Ok(()) }
//! ```

pub mod attest;
mod client;
mod follow;
pub mod job;
pub mod market;
#[cfg(feature = "lightning")]
mod pay;
#[cfg(not(feature = "lightning"))]
#[path = "no_pay.rs"]
mod pay;
mod reputation;
#[cfg(feature = "store")]
mod store;
pub mod verify;
mod watch;

pub use attest::Weighed;
pub use client::{Builder, FedaiClient};
#[cfg(feature = "lightning")]
pub use fedai_lightning;
pub use fedai_transport::{backoff, nostr_client, unreachable_reason};
pub use follow::JobHandle;
pub use market::{Quote, RunOptions};
#[cfg(feature = "lightning")]
pub use pay::{Confirm, PayContext, DEFAULT_MAX_PAY_MSAT};
pub use reputation::{data_dir, default_reputation_path, MAX_REMEMBERED};
#[cfg(feature = "store")]
pub use store::ReputationStore;
pub use watch::{WorkerWatch, MAX_WATCHED_ADS};

use std::time::Duration;

use fedai_protocol::metering::ParsedMetering;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::ParsedJobResult;
use fedai_protocol::{ErrorCode, MeteringCheck, ParsedJobRequest};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Relay connection or subscription failed.
    #[error("relay error: {0}")]
    Relay(String),
    /// Building or parsing a protocol message failed.
    #[error(transparent)]
    Protocol(#[from] fedai_protocol::ProtocolError),
    /// The worker refused or failed the job.
    #[error("worker error `{code}`: {reason}")]
    Job {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human reason.
        reason: String,
    },
    /// No result before the deadline.
    #[error("no result within {0:?}")]
    Timeout(Duration),
    /// No worker fits.
    #[error("no live worker serves this job")]
    NoWorker,
    /// The chosen worker answered with a result that fails verification.
    #[error("invalid result from the worker: {0}")]
    InvalidResult(String),
    /// Payment was asked and could not be made (no payer configured, an invoice that fails the
    /// checks, a quote over the cap, or a failed Lightning payment).
    #[error("payment: {0}")]
    Payment(String),
    /// The chosen worker went silent: no acknowledgement (`processing`, a quote) soon after the
    /// request, or no sign of progress for the stall window while the job ran — a dead or
    /// deaf worker, noticed in seconds rather than at the deadline.
    #[error("the worker went silent: {0}")]
    Silent(String),
    /// An event checked after the fact ([`verify`]) does not hold up.
    #[error("verification failed: {0}")]
    Unverified(String),
    /// The reputation file could not be read or written.
    #[error("reputation file {0}")]
    Storage(String),
    /// Every attempt failed; the last error.
    #[error("{attempts} attempt(s) failed; last: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
}

/// Progress of a job, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum JobUpdate {
    /// The request was published.
    Submitted(EventId),
    /// A worker started it.
    Processing(PublicKey),
    /// The next chunk of streamed output (delivered in `seq` order, without gaps).
    Partial(String),
    /// The worker asked for payment and the invoice passed the checks: paying this many msat.
    Paying(u64),
    /// The attempt with this worker failed and the job moves to another: discard the partial
    /// output shown so far.
    Failover {
        /// The worker that failed.
        worker: PublicKey,
        /// Why.
        error: String,
    },
}

/// A finished, verified job.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The request as parsed back.
    pub request: ParsedJobRequest,
    /// The result (verified; decrypted if it was encrypted).
    pub result: ParsedJobResult,
    /// Output text.
    pub output: String,
    /// The metering record and what its verification covered, if it arrived in time.
    pub metering: Option<(ParsedMetering, MeteringCheck)>,
    /// From publishing the request to the first streamed token (or to the result).
    pub first_token: Duration,
    /// From publishing the request to the verified result.
    pub total: Duration,
    /// What was paid for it, with the proof.
    pub payment: Option<PaymentProof>,
    /// Whether the text streamed through [`JobUpdate::Partial`] is the start of the verified
    /// output (trivially true when nothing was streamed). False when a worker restarted mid-job
    /// or misbehaved: the shown text is then not what was signed, and only `output` is.
    pub stream_matched: bool,
    /// The spot check of this job, when it was picked for one ([`market::RunOptions::spot_check`]).
    pub spot_check: Option<SpotCheck>,
}

/// A spot check: the same request, with the same seed, answered by other workers serving the
/// same model ([`fedai_scheduler::spot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotCheck {
    /// The workers that answered, the job's own first.
    pub workers: Vec<PublicKey>,
    /// What their answers say.
    pub verdict: SpotVerdict,
    /// What the referees' answers cost, msat.
    pub cost_msat: u64,
}

/// What a spot check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpotVerdict {
    /// Every answer agreed.
    Agree,
    /// This worker's answer disagreed with the others', which agreed: it is recorded as a
    /// [`fedai_scheduler::Failure::Mismatch`] (trust lost, the longest cooldown; after
    /// [`fedai_scheduler::spot::EXCLUDE_AFTER`] such verdicts, never chosen again).
    Caught(PublicKey),
    /// The answers differ without a majority.
    Undecided,
    /// No other worker serving the model answered.
    NoReferee,
}

/// A payment made for a job: the preimage is the proof (its SHA-256 is the payment hash the
/// metering record carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentProof {
    /// Paid, msat.
    pub amount_msat: u64,
    /// The invoice.
    pub bolt11: String,
    /// Hex.
    pub payment_hash: String,
    /// Hex.
    pub preimage: String,
    /// The receipt event published (kind 7062).
    pub receipt: Option<EventId>,
}
