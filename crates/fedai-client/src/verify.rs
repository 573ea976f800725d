//! What anyone can check after the fact, from the relays alone: a job's events and state, a
//! metering record against its result and request, a payment receipt against its invoice, the
//! worker's ad and its metering.

use std::time::Duration;

use fedai_protocol::metering::ParsedMetering;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{
    kinds, FeedbackStatus, JobFeedback, JobRequest, JobResult, MeteringCheck, MeteringRecord,
};

use crate::{ClientError, FedaiClient};

/// How long each fetch of a check waits for the relays.
const FETCH: Duration = Duration::from_secs(3);

/// Where a job stands, from the events that exist (furthest stage wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobState {
    /// Only the request.
    Submitted,
    /// A worker quoted or asked for payment.
    Quoted,
    /// A worker started it.
    Processing,
    /// A worker reported an error.
    Failed,
    /// A result exists.
    Done,
    /// The customer cancelled it.
    Cancelled,
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Submitted => "submitted",
            JobState::Quoted => "quoted",
            JobState::Processing => "processing",
            JobState::Failed => "failed",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
        })
    }
}

/// A job's events, oldest first, each with what it says; and the job's state.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// The events and a line describing each (never a prompt or an output).
    pub events: Vec<(Event, String)>,
    /// Where the job stands.
    pub state: JobState,
}

/// A job's state and a description of each of its events. Events of one second have no order
/// among themselves: the state is derived from which events exist, not their order.
pub fn job_report(mut events: Vec<Event>) -> JobReport {
    events.sort_by_key(|e| (e.created_at, e.kind.as_u16()));
    let mut state = JobState::Submitted;
    let mut lines = Vec::with_capacity(events.len());
    for e in events {
        let (what, stage) = describe(&e);
        state = state.max(stage);
        lines.push((e, what));
    }
    JobReport {
        events: lines,
        state,
    }
}

fn describe(e: &Event) -> (String, JobState) {
    match e.kind.as_u16() {
        kinds::JOB_REQUEST | kinds::EMBED_REQUEST => ("request".into(), JobState::Submitted),
        kinds::JOB_FEEDBACK => match JobFeedback::from_event(e, None) {
            Ok(f) => {
                let stage = match f.status {
                    FeedbackStatus::PaymentRequired => JobState::Quoted,
                    FeedbackStatus::Processing | FeedbackStatus::Partial => JobState::Processing,
                    FeedbackStatus::Error => JobState::Failed,
                    FeedbackStatus::Success => JobState::Done,
                };
                let what = match (&f.code, f.seq) {
                    (Some(c), _) => format!(
                        "feedback {} ({c}: {})",
                        f.status,
                        if f.encrypted.is_some() {
                            "<encrypted>"
                        } else {
                            f.info.as_deref().unwrap_or("")
                        }
                    ),
                    (_, Some(s)) => format!("feedback partial #{s}"),
                    _ => format!("feedback {}", f.status),
                };
                (what, stage)
            }
            Err(err) => (format!("invalid feedback ({err})"), JobState::Submitted),
        },
        kinds::JOB_RESULT | kinds::EMBED_RESULT => match JobResult::from_event(e, None) {
            Ok(r) => (
                format!(
                    "result: {} in / {} out tokens, model {}",
                    r.result.usage.input_tokens, r.result.usage.output_tokens, r.result.model
                ),
                JobState::Done,
            ),
            Err(err) => (format!("invalid result ({err})"), JobState::Submitted),
        },
        kinds::METERING => match MeteringRecord::from_event(e) {
            Ok(m) => (
                format!(
                    "metering: {} msat, {} ms",
                    m.record.price_msat, m.record.wall_ms
                ),
                JobState::Submitted,
            ),
            Err(err) => (format!("invalid metering ({err})"), JobState::Submitted),
        },
        kinds::DELETION => ("cancellation".into(), JobState::Cancelled),
        k => (format!("kind {k}"), JobState::Submitted),
    }
}

/// A verified metering record.
#[derive(Debug, Clone)]
pub struct VerifiedMetering {
    /// The record.
    pub metering: ParsedMetering,
    /// What the verification covered.
    pub check: MeteringCheck,
}

impl FedaiClient {
    /// One event by id, from any relay.
    pub async fn event(&self, id: EventId) -> Result<Option<Event>, ClientError> {
        Ok(self
            .fetch(Filter::new().id(id), FETCH)
            .await?
            .into_iter()
            .next())
    }

    /// The request `id` and every answer to it, with the job's state.
    pub async fn job_report(&self, id: EventId) -> Result<JobReport, ClientError> {
        let answers = [
            kinds::JOB_FEEDBACK,
            kinds::JOB_RESULT,
            kinds::EMBED_RESULT,
            kinds::METERING,
            kinds::AWARD,
            kinds::PAYMENT_RECEIPT,
            kinds::DELETION,
        ];
        let answers = Filter::new().event(id).kinds(answers.map(Kind::from_u16));
        let (request, answers) = tokio::join!(
            self.fetch(Filter::new().id(id), FETCH),
            self.fetch(answers, FETCH)
        );
        let mut events = request?;
        events.extend(answers?);
        Ok(job_report(events))
    }

    /// Check a metering record against its result and request, fetched from the relays: the
    /// signed usage, price, and the prompt's hash (unless the request was encrypted to someone
    /// else, when only the sealed request's id is checked).
    pub async fn verify_metering(&self, ev: &Event) -> Result<VerifiedMetering, ClientError> {
        let bad = |e: fedai_protocol::ProtocolError| ClientError::Unverified(e.to_string());
        let m = MeteringRecord::from_event(ev).map_err(bad)?;
        let missing = |what: &str| ClientError::Unverified(format!("{what} not found"));
        let (result_ev, request_ev) = tokio::join!(
            self.event(m.record.result_id),
            self.event(m.record.request_id)
        );
        let result_ev = result_ev?.ok_or_else(|| missing("result"))?;
        let request_ev = request_ev?.ok_or_else(|| missing("request"))?;
        let result = JobResult::from_event(&result_ev, Some(self.keys()))
            .or_else(|_| JobResult::from_event(&result_ev, None))
            .map_err(bad)?;
        let check = match JobRequest::from_event(&request_ev, None) {
            Ok(req) => m.verify(&result, &req),
            Err(fedai_protocol::ProtocolError::NotRecipient) => {
                m.verify_sealed(&result, &request_ev)
            }
            Err(e) => return Err(bad(e)),
        }
        .map_err(bad)?;
        Ok(VerifiedMetering { metering: m, check })
    }
}

#[cfg(feature = "lightning")]
mod receipt {
    use super::*;
    use fedai_lightning::invoice::{check_receipt, ReceiptClaim};

    /// A receipt whose invoice backs its claim.
    #[derive(Debug, Clone)]
    pub struct VerifiedReceipt {
        /// The receipt.
        pub receipt: fedai_protocol::receipt::ParsedReceipt,
        /// Paid by zap (through an LNURL service) rather than to the worker's node.
        pub by_zap: bool,
        /// The worker's metering record of the job, when one is on the relays: it carries the
        /// same payment hash (else verification fails).
        pub metering: Option<EventId>,
    }

    impl FedaiClient {
        /// Check a payment receipt: the preimage opens the payment hash, the invoice backs the
        /// amount and commits to the job, and the receipt is bound to the worker — by its
        /// advertised node (the invoice's payee) or by the worker's own metering record naming
        /// the payment. A metering record of the job naming another payment fails it.
        pub async fn verify_receipt(&self, ev: &Event) -> Result<VerifiedReceipt, ClientError> {
            let no = ClientError::Unverified;
            // The parser refuses a receipt whose SHA-256(preimage) is not its payment hash.
            let r = fedai_protocol::PaymentReceipt::from_event(ev)
                .map_err(|e| no(format!("not a valid receipt: {e}")))?;
            let rc = &r.receipt;
            // The job's metering records, and the node the worker advertises (a receipt's
            // invoice must be payable to it): fetched together.
            let metering_filter = Filter::new()
                .kind(Kind::from_u16(kinds::METERING))
                .event(rc.request_id);
            let ad_filter = Filter::new()
                .kind(Kind::from_u16(kinds::CAPABILITY_AD))
                .author(rc.worker);
            let (meterings, ads) = tokio::join!(
                self.fetch(metering_filter, FETCH),
                self.fetch(ad_filter, FETCH)
            );
            let (meterings, ads) = (meterings?, ads?);
            let node = ads
                .iter()
                .filter_map(|e| fedai_protocol::CapabilityAd::from_event(e).ok())
                .find_map(|a| a.ad.payment.ln_node);
            let metered = meterings
                .iter()
                .filter_map(|e| MeteringRecord::from_event(e).ok())
                .find(|m| m.worker == rc.worker);
            let by_metering = metered.as_ref().is_some_and(|m| {
                m.record.payment_hash.as_deref() == Some(rc.payment_hash.as_str())
            });
            // With neither a node nor a metering record, a customer could have paid an invoice
            // of its own node. A zapped invoice is the LNURL service's, not the worker's node's:
            // only the worker's own metering record binds it.
            if (rc.zap_request.is_some() || node.is_none()) && !by_metering {
                return Err(no(format!(
                    "cannot bind receipt {} to worker {}: no metering record of the payment{} on these relays",
                    r.id.to_hex(),
                    rc.worker.to_hex(),
                    if rc.zap_request.is_some() { "" } else { " and no ad naming its Lightning node" }
                )));
            }
            let checked = check_receipt(&ReceiptClaim {
                bolt11: &rc.bolt11,
                amount_msat: rc.amount_msat,
                payment_hash_hex: &rc.payment_hash,
                request_id: rc.request_id,
                worker: rc.worker,
                zap_request: rc.zap_request.as_deref(),
                payee: node.as_deref().filter(|_| rc.zap_request.is_none()),
            })
            .map_err(|e| no(format!("the invoice does not back the receipt: {e}")))?;
            let metering = match metered {
                Some(m) if by_metering => Some(m.id),
                Some(m) => {
                    return Err(no(format!(
                        "the worker's metering record {} names another payment hash",
                        m.id.to_hex()
                    )))
                }
                None => None,
            };
            Ok(VerifiedReceipt {
                by_zap: checked.by_zap,
                receipt: r,
                metering,
            })
        }
    }
}

#[cfg(feature = "lightning")]
pub use receipt::VerifiedReceipt;

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::{JobFeedback, JobRequest};

    #[test]
    fn state_is_the_furthest_stage_whatever_the_order() {
        let (customer, worker) = (Keys::generate(), Keys::generate());
        let req = JobRequest::chat("hi").to_event(&customer, None).unwrap();
        let processing =
            JobFeedback::new(req.id, customer.public_key(), FeedbackStatus::Processing)
                .to_event(&worker)
                .unwrap();
        let r = job_report(vec![processing.clone(), req.clone()]);
        assert_eq!(r.state, JobState::Processing);
        assert_eq!(r.events.len(), 2);
        let cancel = fedai_protocol::cancellation(req.id, &customer).unwrap();
        assert_eq!(
            job_report(vec![cancel, processing, req]).state,
            JobState::Cancelled
        );
    }
}
