//! Built without the `lightning` feature: jobs that ask for payment end with
//! [`ClientError::Payment`] naming the feature; free jobs run as usual.

use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::ParsedJobResult;
use fedai_protocol::JobRequest;

use crate::{ClientError, FedaiClient, JobUpdate, PaymentProof, RunOptions};

fn unpaid(amount_msat: u64) -> ClientError {
    ClientError::Payment(format!(
        "the worker asks {amount_msat} msat and this program was built without fedai-client's \
         `lightning` feature"
    ))
}

/// No payer: every payment is refused.
pub(crate) struct Payments;

/// Nothing is ever spent.
#[derive(Debug, Clone)]
pub(crate) struct Budget;

impl Budget {
    pub(crate) fn new() -> Self {
        Self
    }
}

impl Payments {
    pub(crate) fn none() -> Self {
        Self
    }

    pub(crate) fn for_worker(
        _: &RunOptions,
        _: &ParsedCapabilityAd,
        _: &JobRequest,
        _: &Budget,
    ) -> Self {
        Self
    }

    pub(crate) fn pay_invoice(
        &mut self,
        _: EventId,
        amount_msat: u64,
        _: String,
    ) -> Result<(), ClientError> {
        Err(unpaid(amount_msat))
    }

    pub(crate) async fn pay_zap(
        &mut self,
        _: &FedaiClient,
        _: EventId,
        _: PublicKey,
        amount_msat: u64,
        _: String,
    ) -> Result<(), ClientError> {
        Err(unpaid(amount_msat))
    }

    pub(crate) async fn ended(&mut self) -> Result<(), ClientError> {
        std::future::pending().await
    }

    pub(crate) fn abandon(&mut self) {}

    pub(crate) async fn settle(
        &mut self,
        _: &FedaiClient,
        _: &ParsedJobResult,
        _: &mut impl FnMut(JobUpdate),
    ) -> Result<Option<PaymentProof>, ClientError> {
        Ok(None)
    }
}
