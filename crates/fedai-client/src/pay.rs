//! Paying workers over Lightning (the `lightning` feature): one job's payments, within caps.
//!
//! [`PayContext`] is how a customer pays (a [`fedai_lightning::Payer`], caps, a confirmation);
//! [`Payments`] is one job's payment against one worker: the quote approved by
//! [`fedai_lightning::payment::customer::Spend`] (the cap, the worker's own ad, the person above
//! a threshold, once per job), the invoice checked before any money moves, the payment run in
//! the background, and its preimage checked and published as a receipt.

use std::sync::Arc;
use std::time::Duration;

use fedai_lightning::payment::customer::{Limits, Next, Refusal, Spend, State};
use fedai_protocol::capability::ParsedCapabilityAd;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::ParsedJobResult;
use fedai_protocol::JobRequest;

use crate::{ClientError, FedaiClient, JobUpdate, PaymentProof, RunOptions};

/// How this customer pays, when a worker asks.
#[derive(Clone)]
pub struct PayContext {
    /// The customer's Lightning payer.
    pub payer: Arc<dyn fedai_lightning::Payer>,
    /// The chain invoices must be on.
    pub currency: fedai_lightning::invoice::Currency,
    /// Never pay more per job, msat; [`DEFAULT_MAX_PAY_MSAT`] when unset — a payer always has
    /// a cap.
    pub max_msat: Option<u64>,
    /// Routing fee cap, msat.
    pub max_fee_msat: u64,
    /// Pay by zap (NIP-57) when a worker offers no invoice, only a zap target. A zap is final:
    /// unlike a hold invoice there is no escrow, so a failed job is not refunded. Needs the
    /// `zaps` feature.
    pub zaps: bool,
    /// Asked before paying more than `confirm_above_msat`, with the amount and the worker;
    /// `false` declines the payment. `None` pays without asking (within the caps).
    pub confirm: Option<Confirm>,
    /// The amount above which `confirm` is asked, msat.
    pub confirm_above_msat: u64,
    /// Let a worker's LNURL pay target be on loopback or a private network (tests, private
    /// markets); off, the zap path reaches public addresses only.
    pub allow_private_lnurl: bool,
}

impl PayContext {
    /// Pay with `payer` on `currency`, with the default caps: at most
    /// [`DEFAULT_MAX_PAY_MSAT`] a job, 10 sat of routing fees, zaps allowed, no confirmation,
    /// public LNURL services only.
    pub fn new(
        payer: Arc<dyn fedai_lightning::Payer>,
        currency: fedai_lightning::invoice::Currency,
    ) -> Self {
        Self {
            payer,
            currency,
            max_msat: None,
            max_fee_msat: 10_000,
            zaps: true,
            confirm: None,
            confirm_above_msat: 0,
            allow_private_lnurl: false,
        }
    }
}

/// A person's approval of a payment: `(amount_msat, worker) -> pay?`.
pub type Confirm = Arc<dyn Fn(u64, PublicKey) -> bool + Send + Sync>;

/// The cap on one job's payment when the customer set none, msat (100 sat).
pub const DEFAULT_MAX_PAY_MSAT: u64 = 100_000;

impl std::fmt::Debug for PayContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayContext")
            .field("currency", &self.currency)
            .field("max_msat", &self.max_msat)
            .field("max_fee_msat", &self.max_fee_msat)
            .field("zaps", &self.zaps)
            .field("confirm_above_msat", &self.confirm_above_msat)
            .finish_non_exhaustive()
    }
}

/// How to pay one worker for one job: the customer's payer, and what the worker's ad promises.
#[derive(Debug)]
struct Plan {
    ctx: PayContext,
    /// This job's payment: quote → approved → paying → paid (the cap and the ad's bound, enforced).
    spend: Spend,
    /// The worker's advertised LN node: the payee to expect.
    payee: Option<String>,
    /// The ad's price for the job's model: what the signed usage may cost.
    ad_price: Option<fedai_protocol::Price>,
    /// The worker.
    worker: PublicKey,
}

/// A payment started for the current request: running, then its outcome.
struct Pending {
    amount_msat: u64,
    /// The payment; its error is why it failed.
    task: Option<tokio::task::JoinHandle<Result<Paid, String>>>,
    done: Option<Result<Paid, String>>,
}

/// A completed Lightning payment, not yet checked against its invoice.
struct Paid {
    bolt11: String,
    hash: [u8; 32],
    preimage: [u8; 32],
    /// Paid by zap: the zap request the invoice commits to.
    zap_request: Option<String>,
}

/// What one job may still spend, across all its attempts: a payment in flight, settled, or
/// abandoned when its attempt failed (a held HTLC the worker may still settle) counts as spent
/// until it fails back. A worker that takes the money and stalls cannot make the job pay the
/// next worker beyond the cap.
#[derive(Debug, Default, Clone)]
pub(crate) struct Budget(Arc<std::sync::Mutex<BudgetState>>);

#[derive(Debug, Default)]
struct BudgetState {
    cap_msat: Option<u64>,
    committed_msat: u64,
    /// Payments approved for this job, whatever became of them: each may cost routing fees
    /// up to the fee cap, so their number is bounded too.
    payments: u32,
}

impl Budget {
    /// A job's budget, its cap set by its first payment plan.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cap left for this job (the whole cap, the first time it is set).
    fn remaining(&self, cap_msat: u64) -> u64 {
        let mut b = self.lock();
        let cap = *b.cap_msat.get_or_insert(cap_msat);
        cap.saturating_sub(b.committed_msat)
    }

    /// Whether this job may start another payment (it has started fewer than `limit` that
    /// did not fail).
    fn payment_left(&self, limit: u32) -> bool {
        self.lock().payments < limit
    }

    /// A payment starts.
    fn take_payment(&self) {
        let mut b = self.lock();
        b.payments = b.payments.saturating_add(1);
    }

    /// A payment failed: it moved no money and cost no fee.
    fn give_back_payment(&self) {
        let mut b = self.lock();
        b.payments = b.payments.saturating_sub(1);
    }

    fn commit(&self, amount_msat: u64) {
        let mut b = self.lock();
        b.committed_msat = b.committed_msat.saturating_add(amount_msat);
    }

    fn release(&self, amount_msat: u64) {
        let mut b = self.lock();
        b.committed_msat = b.committed_msat.saturating_sub(amount_msat);
    }
}

/// One job's payment to one worker (none when the customer has no payer).
#[derive(Default)]
pub(crate) struct Payments {
    plan: Option<Plan>,
    pending: Option<Pending>,
    budget: Budget,
    /// Payments one job may make across its attempts (its `max_attempts`): a worker that asks
    /// to be paid and then answers `capacity`, again and again, cannot make the job pay routing
    /// fees without bound.
    max_payments: u32,
}

fn refused(r: Refusal) -> ClientError {
    ClientError::Payment(r.to_string())
}

impl Payments {
    /// No payer: a job that asks for payment fails.
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// The payer for a job at `ad`'s worker: the cap defaults to the run's price cap, the payee
    /// to the node the worker advertises, and the quote is bounded by the ad's own price.
    /// `budget` is the job's, shared by all its attempts: the cap is what is left of it.
    pub(crate) fn for_worker(
        opts: &RunOptions,
        ad: &ParsedCapabilityAd,
        request: &JobRequest,
        budget: &Budget,
    ) -> Self {
        let ctx = opts.pay.clone().map(|mut ctx| {
            ctx.max_msat = ctx.max_msat.or(opts.max_price_msat);
            ctx
        });
        let ad_price = crate::market::ad_price(ad, request).cloned();
        let ad_bound = crate::market::ad_bound_msat(ad, request);
        let payee = ad.ad.payment.ln_node.clone();
        let mut p = Self::with(ctx, ad_bound, payee, ad_price, ad.worker, budget);
        p.max_payments = opts.max_attempts.max(1);
        p
    }

    /// Pay `worker` with `ctx` (none: refuse), within what is left of `budget` and the ad's
    /// bound for the job.
    fn with(
        ctx: Option<PayContext>,
        ad_bound_msat: Option<u64>,
        payee: Option<String>,
        ad_price: Option<fedai_protocol::Price>,
        worker: PublicKey,
        budget: &Budget,
    ) -> Self {
        let plan = ctx.map(|ctx| {
            let spend = Spend::new(Limits {
                cap_msat: budget.remaining(ctx.max_msat.unwrap_or(DEFAULT_MAX_PAY_MSAT)),
                // The most the worker's ad prices this job at: a quote above it is a
                // bait-and-switch.
                ad_bound_msat,
                confirm_above_msat: ctx.confirm.as_ref().map(|_| ctx.confirm_above_msat),
            });
            Plan {
                ctx,
                spend,
                payee,
                ad_price,
                worker,
            }
        });
        Self {
            plan,
            pending: None,
            budget: budget.clone(),
            max_payments: 1,
        }
    }

    /// Whether to pay `amount_msat` at all: a payer exists, and the job's [`Spend`] approves
    /// the quote — within the customer's cap (always one), within what the worker's own ad
    /// promises for the job, asked of the person above the confirmation threshold, and only
    /// once per job.
    fn approve(&mut self, amount_msat: u64) -> Result<&mut Plan, ClientError> {
        let Some(plan) = &mut self.plan else {
            return Err(ClientError::Payment(format!(
                "the worker asks {amount_msat} msat and no payer is configured"
            )));
        };
        if !self.budget.payment_left(self.max_payments) {
            return Err(ClientError::Payment(format!(
                "this job has made its {} payment(s); no more",
                self.max_payments
            )));
        }
        if let Next::Confirm(amount) = plan.spend.quote(amount_msat).map_err(refused)? {
            let yes = plan
                .ctx
                .confirm
                .as_ref()
                .is_some_and(|confirm| confirm(amount, plan.worker));
            plan.spend.confirm(yes).map_err(refused)?;
        }
        Ok(plan)
    }

    /// Check an invoice against the request and the worker's ad, then start paying it.
    pub(crate) fn pay_invoice(
        &mut self,
        request_id: EventId,
        amount_msat: u64,
        bolt11: String,
    ) -> Result<(), ClientError> {
        let plan = self.approve(amount_msat)?;
        let checked = fedai_lightning::invoice::check(
            &bolt11,
            &fedai_lightning::invoice::Expected {
                amount_msat,
                payee: plan.payee.as_deref(),
                currency: plan.ctx.currency,
                commits_to: fedai_lightning::invoice::Commitment::Job(&request_id.to_hex()),
                now_unix: Timestamp::now().as_secs(),
            },
        )
        .map_err(|e| ClientError::Payment(e.to_string()))?;
        plan.spend
            .invoice(amount_msat, checked.payment_hash)
            .map_err(refused)?;
        let (payer, fee, hash) = (
            plan.ctx.payer.clone(),
            plan.ctx.max_fee_msat,
            checked.payment_hash,
        );
        self.start(amount_msat, async move {
            let preimage = payer
                .pay(&bolt11, fee, 120)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Paid {
                bolt11,
                hash,
                preimage,
                zap_request: None,
            })
        });
        Ok(())
    }

    fn start(
        &mut self,
        amount_msat: u64,
        pay: impl std::future::Future<Output = Result<Paid, String>> + Send + 'static,
    ) {
        self.budget.commit(amount_msat);
        self.budget.take_payment();
        self.pending = Some(Pending {
            amount_msat,
            task: Some(tokio::spawn(pay)),
            done: None,
        });
    }

    /// Pay by zap (NIP-57): the worker's pay terms, a zap request for this job signed by us,
    /// the callback's invoice checked to commit to it, then the payment — all in the background,
    /// as the worker waits for the zap receipt before it starts.
    #[cfg(feature = "zaps")]
    pub(crate) async fn pay_zap(
        &mut self,
        client: &FedaiClient,
        request_id: EventId,
        worker: PublicKey,
        amount_msat: u64,
        target: String,
    ) -> Result<(), ClientError> {
        let ctx = self.approve(amount_msat)?.ctx.clone();
        if !ctx.zaps {
            return Err(ClientError::Payment(
                "the worker takes only zaps (no escrow), and paying by zap is off".into(),
            ));
        }
        let relays = client.relay_urls().await;
        let keys = client.keys().clone();
        let zap = async move {
            use fedai_lightning::{invoice, lnurl, zap};
            let pay = |e: fedai_lightning::LnError| e.to_string();
            let ln = lnurl::LnurlClient::build(ctx.allow_private_lnurl).map_err(pay)?;
            let params = ln.pay_params(&target).await.map_err(pay)?;
            if params.nostr_pubkey.is_none() {
                return Err(format!(
                    "the worker's pay target {target} does not take zaps"
                ));
            }
            let request = zap::request(
                &keys,
                &zap::ZapFor {
                    worker,
                    request_id,
                    amount_msat,
                    relays,
                    lnurl: lnurl::encode(&params.endpoint),
                },
            )
            .map_err(pay)?
            .as_json();
            let bolt11 = ln
                .invoice(&params, amount_msat, Some(&request))
                .await
                .map_err(pay)?;
            let checked = invoice::check(
                &bolt11,
                &invoice::Expected {
                    amount_msat,
                    // The LNURL service's node, which the worker's ad does not name.
                    payee: None,
                    currency: ctx.currency,
                    commits_to: invoice::Commitment::DescriptionHash(zap::description_hash(
                        &request,
                    )),
                    now_unix: Timestamp::now().as_secs(),
                },
            )
            .map_err(pay)?;
            let preimage = ctx
                .payer
                .pay(&bolt11, ctx.max_fee_msat, 120)
                .await
                .map_err(pay)?;
            Ok(Paid {
                bolt11,
                hash: checked.payment_hash,
                preimage,
                zap_request: Some(request),
            })
        };
        self.start(amount_msat, zap);
        Ok(())
    }

    /// Without the `zaps` feature a zap-only worker cannot be paid.
    #[cfg(not(feature = "zaps"))]
    pub(crate) async fn pay_zap(
        &mut self,
        _client: &FedaiClient,
        _request_id: EventId,
        _worker: PublicKey,
        amount_msat: u64,
        _target: String,
    ) -> Result<(), ClientError> {
        self.approve(amount_msat)?;
        Err(ClientError::Payment(
            "the worker takes only zaps; this program was built without fedai-client's `zaps` feature"
                .into(),
        ))
    }

    /// Resolves when a running payment ends (never, when none runs): `Err` when it failed.
    pub(crate) async fn ended(&mut self) -> Result<(), ClientError> {
        let Some(task) = self.pending.as_mut().and_then(|p| p.task.as_mut()) else {
            return std::future::pending().await;
        };
        let r = task.await.unwrap_or_else(|e| Err(e.to_string()));
        let failed = r
            .as_ref()
            .err()
            .map(|why| ClientError::Payment(why.clone()));
        if let Some(p) = self.pending.as_mut() {
            p.task = None;
            p.done = Some(r);
            // A payment that failed moved no money: the job may spend it elsewhere.
            if failed.is_some() {
                self.budget.release(p.amount_msat);
                self.budget.give_back_payment();
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The job failed: a payment in flight is left to fail back (the worker's node cancels its
    /// hold invoice), nothing to wait for. Its amount stays spent in the job's budget: the
    /// worker may still settle it.
    pub(crate) fn abandon(&mut self) {
        self.pending = None;
    }

    /// The verified result is in: check its charge against the ad, pay an invoice that came
    /// with it (pay-after), wait for the payment, check the preimage, publish the receipt.
    pub(crate) async fn settle(
        &mut self,
        client: &FedaiClient,
        result: &ParsedJobResult,
        on_update: &mut impl FnMut(JobUpdate),
    ) -> Result<Option<PaymentProof>, ClientError> {
        let usage = result.result.usage;
        let price = self.plan.as_ref().and_then(|p| p.ad_price.as_ref());
        if let (Some(price), Some(a)) = (price, result.result.amount.as_ref()) {
            // A charge must be the ad's price applied to the signed usage.
            let fair = price.cost_msat(usage.input_tokens, usage.output_tokens);
            if a.bolt11.is_some() {
                fedai_lightning::payment::customer::fair_charge(a.msat, fair)
                    .map_err(|e| ClientError::InvalidResult(e.to_string()))?;
            }
        }
        // Pay-after: the invoice came with the result.
        if self.pending.is_none() && self.plan.is_some() {
            if let Some(a) = result.result.amount.clone() {
                if let Some(bolt11) = a.bolt11 {
                    self.pay_invoice(result.request_id(), a.msat, bolt11)?;
                    on_update(JobUpdate::Paying(a.msat));
                }
            }
        }
        // A payment still running (a hold invoice completes once the worker settles, which it
        // does before publishing the result) is waited for here, on this job's payments, so a
        // failure gives its amount back to the job's budget.
        if let Some(amount_msat) = self
            .pending
            .as_ref()
            .filter(|p| p.done.is_none())
            .map(|p| p.amount_msat)
        {
            if tokio::time::timeout(Duration::from_secs(60), self.ended())
                .await
                .is_err()
            {
                return Err(ClientError::Payment(format!(
                    "the payment of {amount_msat} msat did not complete"
                )));
            }
        }
        match (self.pending.take(), self.plan.as_mut()) {
            (Some(p), Some(plan)) => Ok(Some(
                finish_payment(client, p, &mut plan.spend, result).await?,
            )),
            _ => Ok(None),
        }
    }
}

/// A payment that ended: check its preimage, publish the receipt.
async fn finish_payment(
    client: &FedaiClient,
    p: Pending,
    spend: &mut Spend,
    result: &ParsedJobResult,
) -> Result<PaymentProof, ClientError> {
    let amount_msat = p.amount_msat;
    let paid = p
        .done
        .unwrap_or_else(|| Err("the payment did not complete".into()))
        .map_err(ClientError::Payment)?;
    // The preimage must open the invoice: only then is it proof of payment. A zap's invoice
    // was fetched and checked in the background.
    if let State::Approved { .. } = spend.state() {
        spend.invoice(amount_msat, paid.hash).map_err(refused)?;
    }
    spend.paid(Ok(paid.preimage)).map_err(refused)?;
    let receipt = fedai_protocol::PaymentReceipt {
        request_id: result.request_id(),
        result_id: Some(result.id),
        worker: result.worker,
        amount_msat,
        bolt11: paid.bolt11.clone(),
        payment_hash: hex::encode(paid.hash),
        preimage: hex::encode(paid.preimage),
        zap_request: paid.zap_request,
    };
    let receipt_id = match receipt.to_event(client.keys()) {
        Ok(ev) => client.send(&ev).await.ok().map(|()| ev.id),
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the payment receipt");
            None
        }
    };
    Ok(PaymentProof {
        amount_msat,
        bolt11: paid.bolt11,
        payment_hash: receipt.payment_hash,
        preimage: receipt.preimage,
        receipt: receipt_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payer whose payments never complete: a worker that holds the HTLC and stalls.
    struct Stalls;

    impl fedai_lightning::Payer for Stalls {
        fn pay(
            &self,
            _: &str,
            _: u64,
            _: u32,
        ) -> futures_util::future::BoxFuture<
            '_,
            Result<fedai_lightning::Preimage, fedai_lightning::LnError>,
        > {
            Box::pin(std::future::pending())
        }
    }

    fn attempt(budget: &Budget) -> Payments {
        let ctx = PayContext {
            max_msat: Some(10_000),
            ..PayContext::new(Arc::new(Stalls), fedai_lightning::invoice::Currency::Simnet)
        };
        let mut p = Payments::with(
            Some(ctx),
            None,
            None,
            None,
            Keys::generate().public_key(),
            budget,
        );
        p.max_payments = 8;
        p
    }

    /// Each payment may cost routing fees up to the fee cap: a worker that asks for 1 msat and
    /// then answers `capacity`, again and again, gets at most `max_attempts` payments per job.
    /// A quote refused or a payment that failed (no money, no fee) does not count.
    #[tokio::test]
    async fn a_job_makes_at_most_its_attempts_in_payments() {
        let budget = Budget::default();
        let mut failed = attempt(&budget);
        failed.max_payments = 3;
        failed.approve(1).unwrap();
        failed.start(1, async { Err::<Paid, _>("no route".to_owned()) });
        assert!(failed.ended().await.is_err());
        for _ in 0..3 {
            let mut p = attempt(&budget);
            p.max_payments = 3;
            assert!(p.approve(1).is_ok());
            p.start(1, std::future::pending());
        }
        let mut p = attempt(&budget);
        p.max_payments = 3;
        let Err(e) = p.approve(1) else {
            panic!("a fourth payment is refused")
        };
        assert!(e.to_string().contains("3 payment"), "{e}");
    }

    /// Attempt 1's payment is in flight (or held by a worker that then failed): the next
    /// attempt may pay only what is left of the job's cap; once it fails back, all of it.
    #[tokio::test]
    async fn a_job_pays_at_most_its_cap_over_all_its_attempts() {
        let budget = Budget::default();
        let mut first = attempt(&budget);
        first.approve(6_000).unwrap();
        first.start(6_000, async { Err::<Paid, _>("stalled".to_owned()) });
        let mut second = attempt(&budget);
        assert!(
            second.approve(5_000).is_err(),
            "6000 of 10000 are spent or held: 5000 more would pass the job's cap"
        );
        assert!(
            attempt(&budget).approve(4_000).is_ok(),
            "what is left may be paid"
        );
        // The first payment fails back: its amount is the job's again.
        assert!(first.ended().await.is_err());
        assert!(attempt(&budget).approve(9_000).is_ok());
    }

    #[tokio::test]
    async fn an_abandoned_payment_stays_spent() {
        let budget = Budget::default();
        let mut first = attempt(&budget);
        first.start(10_000, std::future::pending());
        first.abandon();
        assert!(
            attempt(&budget).approve(1).is_err(),
            "the worker may still settle the abandoned payment"
        );
    }
}
