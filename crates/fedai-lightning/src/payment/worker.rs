//! The worker's side of one pay-before job: an escrow, as a state machine without I/O.
//!
//! ```text
//!            HoldAccepted                    Delivered            SettleDone(true)
//!   Quoted ─────────────────▶ Held ─────────────────▶ Settling ───────────────▶ Settled
//!     │  Zap (≥ price)          │ JobFailed | Stopped      │ SettleDone(false)
//!     ├──────────▶ Zapped ─┐    ▼                          ▼
//!     │            │       │  Cancelled(Refunded)       Unsettled (metering names no payment)
//!     │  JobFailed │       │ Delivered
//!     │            ▼       └──────────▶ Settled (a zap is ours already)
//!     │          Kept (a zap is final: not refunded)
//!     │ Tick ≥ deadline | Stopped | HoldCancelled (no zap offered) | HoldSettled
//!     └──────────▶ Cancelled
//! ```
//!
//! The driver (the worker) feeds it what its node, the relays and the job report, and does
//! what it answers: cancel or settle the hold invoice, run the job, or fail it. Every input is
//! legal in every state — one that makes no sense there (a zap after the HTLC is held, a
//! second `HoldAccepted`) changes nothing — except the job's own inputs (`Delivered`,
//! `JobFailed`, `SettleDone`) before the job could run, which are driver bugs and return
//! [`OutOfOrder`].

use std::time::Instant;

use crate::{PaymentHash, Preimage};

/// Where one job's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The offer is out (a hold invoice, a zap target or both); nothing is paid.
    Quoted,
    /// Our node holds the customer's HTLC: the money is locked, not ours. Settled on delivery,
    /// cancelled (refunded) on failure.
    Held,
    /// Paid by a zap to our lightning address: final, with no escrow.
    Zapped {
        /// What was zapped (at least the price).
        amount_msat: u64,
        /// The zap invoice's payment hash.
        hash: PaymentHash,
    },
    /// Delivered; the hold invoice is being settled.
    Settling,
    /// Delivered and paid: the money is ours.
    Settled {
        /// What we were paid.
        amount_msat: u64,
        /// The invoice paid.
        hash: PaymentHash,
    },
    /// Delivered, but settling failed: the hold expires on its own, and the metering record
    /// names no payment.
    Unsettled,
    /// Ended without charging the customer.
    Cancelled(Cancelled),
    /// The job failed after a zap: a zap is final, so it is kept, and the customer is told.
    Kept {
        /// What was zapped.
        amount_msat: u64,
    },
}

/// Why a payment ended without a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// Neither a hold invoice nor a zap could be offered.
    NoWayToPay,
    /// Not paid before the deadline.
    NotPaid,
    /// The hold invoice was cancelled (and no zap was offered).
    InvoiceCancelled,
    /// The hold invoice was already settled: this job was paid for and run before.
    AlreadySettled,
    /// The customer cancelled, or the worker stopped.
    Stopped,
    /// The job failed after the HTLC was held: it went back to the customer.
    Refunded,
}

/// What the driver observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Our node holds the customer's HTLC for the hold invoice.
    HoldAccepted,
    /// The hold invoice is settled (by a previous run of this worker).
    HoldSettled,
    /// The hold invoice is cancelled.
    HoldCancelled,
    /// A zap receipt for this job, already verified (NIP-57 and, for our own node's invoice,
    /// settled there).
    Zap {
        /// Zapped, msat.
        amount_msat: u64,
        /// Its invoice's payment hash.
        hash: PaymentHash,
    },
    /// The clock.
    Tick(Instant),
    /// The customer cancelled the job, or the worker is stopping.
    Stopped,
    /// The job's answer is ready to publish.
    Delivered,
    /// The job failed (or found no slot) after it was paid.
    JobFailed,
    /// How settling the hold invoice went.
    SettleDone(bool),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Cancel the hold invoice: the customer's HTLC goes back (or the offer is withdrawn).
    CancelHold(PaymentHash),
    /// Paid: take a slot and run the job.
    Run,
    /// Claim the held payment with the preimage.
    Settle(Preimage),
    /// The payment failed; end the job with this reason.
    Fail(String),
}

/// A job input (`Delivered`, `JobFailed`, `SettleDone`) arrived where the job cannot be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payment input {input:?} out of order in state {state:?}")]
pub struct OutOfOrder {
    /// The input.
    pub input: Input,
    /// The state it arrived in.
    pub state: State,
}

/// One pay-before job's escrow.
#[derive(Debug, Clone)]
pub struct Escrow {
    price_msat: u64,
    hold: Option<(PaymentHash, Preimage)>,
    /// Whether the hold invoice can still pay (not cancelled while a zap is still possible).
    hold_open: bool,
    zap: bool,
    /// How long the offer stays open (for the reason given when it lapses).
    open_for: std::time::Duration,
    deadline: Instant,
    state: State,
}

impl Escrow {
    /// An offer of `price_msat`, by a hold invoice on our node (its hash and preimage), by a
    /// zap, or both, made at `now` and open for `open_for`. The actions say what to do first:
    /// nothing (wait for payment), or fail when there is no way to pay.
    pub fn offer(
        price_msat: u64,
        hold: Option<(PaymentHash, Preimage)>,
        zap: bool,
        now: Instant,
        open_for: std::time::Duration,
    ) -> (Self, Vec<Action>) {
        let mut e = Self {
            price_msat,
            hold,
            hold_open: hold.is_some(),
            zap,
            open_for,
            deadline: now + open_for,
            state: State::Quoted,
        };
        if hold.is_none() && !zap {
            e.state = State::Cancelled(Cancelled::NoWayToPay);
            return (
                e,
                vec![Action::Fail(
                    "this worker cannot take a payment for this job now".into(),
                )],
            );
        }
        (e, Vec::new())
    }

    /// Where the payment stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The price quoted, msat.
    pub fn price_msat(&self) -> u64 {
        self.price_msat
    }

    /// When an unpaid offer lapses.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The hold invoice whose state the driver should watch: while quoted and still payable.
    pub fn watch_hold(&self) -> Option<PaymentHash> {
        match (self.state, self.hold) {
            (State::Quoted, Some((h, _))) if self.hold_open => Some(h),
            _ => None,
        }
    }

    /// Whether a zap can still pay this job.
    pub fn takes_zap(&self) -> bool {
        self.zap && self.state == State::Quoted
    }

    /// Paid (held or zapped), so the job may run.
    pub fn is_paid(&self) -> bool {
        matches!(self.state, State::Held | State::Zapped { .. })
    }

    /// What the job is charged: what was zapped, or the quoted price.
    pub fn amount_msat(&self) -> u64 {
        match self.state {
            State::Zapped { amount_msat, .. }
            | State::Settled { amount_msat, .. }
            | State::Kept { amount_msat } => amount_msat,
            _ => self.price_msat,
        }
    }

    /// What the metering record says was paid: the amount, and the payment hash only once the
    /// money is really ours. `None` before delivery.
    pub fn metered(&self) -> Option<(u64, Option<PaymentHash>)> {
        match self.state {
            State::Settled { amount_msat, hash } => Some((amount_msat, Some(hash))),
            State::Unsettled => Some((self.price_msat, None)),
            _ => None,
        }
    }

    fn cancel_hold(&self) -> Vec<Action> {
        self.hold
            .filter(|_| self.hold_open)
            .map(|(h, _)| Action::CancelHold(h))
            .into_iter()
            .collect()
    }

    fn end(&mut self, why: Cancelled, fail: Option<String>) -> Vec<Action> {
        let mut actions = self.cancel_hold();
        self.state = State::Cancelled(why);
        self.hold_open = false;
        actions.extend(fail.map(Action::Fail));
        actions
    }

    /// Feed one observation; returns what to do.
    pub fn on(&mut self, input: Input) -> Result<Vec<Action>, OutOfOrder> {
        let out_of_order = OutOfOrder {
            input,
            state: self.state,
        };
        let actions = match (self.state, input) {
            (State::Quoted, Input::HoldAccepted) if self.hold_open => {
                self.state = State::Held;
                vec![Action::Run]
            }
            (State::Quoted, Input::HoldSettled) => self.end(
                Cancelled::AlreadySettled,
                Some("this job's invoice was already settled".into()),
            ),
            (State::Quoted, Input::HoldCancelled) if self.zap => {
                // Only a zap can pay now.
                self.hold_open = false;
                Vec::new()
            }
            (State::Quoted, Input::HoldCancelled) => {
                self.hold_open = false;
                self.end(
                    Cancelled::InvoiceCancelled,
                    Some("the invoice was cancelled".into()),
                )
            }
            (State::Quoted, Input::Zap { amount_msat, hash })
                if self.zap && amount_msat >= self.price_msat =>
            {
                // A hold invoice offered alongside is withdrawn, so nobody pays twice.
                let mut actions = self.cancel_hold();
                self.hold_open = false;
                self.state = State::Zapped { amount_msat, hash };
                actions.push(Action::Run);
                actions
            }
            (State::Quoted, Input::Tick(now)) if now >= self.deadline => {
                let secs = self.open_for.as_secs();
                self.end(Cancelled::NotPaid, Some(format!("not paid within {secs}s")))
            }
            (State::Quoted, Input::Stopped) => self.end(Cancelled::Stopped, None),
            (State::Held, Input::JobFailed | Input::Stopped) => self.end(Cancelled::Refunded, None),
            (State::Held, Input::Delivered) => {
                self.state = State::Settling;
                let (_, preimage) = self.hold.expect("held implies a hold invoice");
                vec![Action::Settle(preimage)]
            }
            (State::Settling, Input::SettleDone(true)) => {
                let (hash, _) = self.hold.expect("settling implies a hold invoice");
                self.state = State::Settled {
                    amount_msat: self.price_msat,
                    hash,
                };
                Vec::new()
            }
            (State::Settling, Input::SettleDone(false)) => {
                self.state = State::Unsettled;
                Vec::new()
            }
            (State::Zapped { amount_msat, hash }, Input::Delivered) => {
                self.state = State::Settled { amount_msat, hash };
                Vec::new()
            }
            (State::Zapped { amount_msat, .. }, Input::JobFailed | Input::Stopped) => {
                self.state = State::Kept { amount_msat };
                Vec::new()
            }
            (_, Input::Delivered | Input::JobFailed | Input::SettleDone(_)) => {
                return Err(out_of_order)
            }
            // Anything else is news that changes nothing here.
            _ => Vec::new(),
        };
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const H: PaymentHash = [1; 32];
    const P: Preimage = [2; 32];
    const Z: PaymentHash = [3; 32];

    fn hold_only() -> Escrow {
        Escrow::offer(
            1_000,
            Some((H, P)),
            false,
            Instant::now(),
            Duration::from_secs(60),
        )
        .0
    }

    fn both() -> Escrow {
        Escrow::offer(
            1_000,
            Some((H, P)),
            true,
            Instant::now(),
            Duration::from_secs(60),
        )
        .0
    }

    #[test]
    fn no_way_to_pay_fails_at_once() {
        let (e, a) = Escrow::offer(1, None, false, Instant::now(), Duration::ZERO);
        assert_eq!(e.state(), State::Cancelled(Cancelled::NoWayToPay));
        assert!(matches!(a.as_slice(), [Action::Fail(_)]));
    }

    #[test]
    fn held_then_delivered_settles_and_meters_the_hash() {
        let mut e = hold_only();
        assert_eq!(e.watch_hold(), Some(H));
        assert_eq!(e.metered(), None);
        assert_eq!(e.on(Input::HoldAccepted).unwrap(), vec![Action::Run]);
        assert!(e.is_paid());
        assert_eq!(e.watch_hold(), None);
        // A second notice of the same HTLC changes nothing.
        assert!(e.on(Input::HoldAccepted).unwrap().is_empty());
        assert_eq!(e.on(Input::Delivered).unwrap(), vec![Action::Settle(P)]);
        assert_eq!(e.state(), State::Settling);
        assert_eq!(e.metered(), None);
        assert!(e.on(Input::SettleDone(true)).unwrap().is_empty());
        assert_eq!(e.metered(), Some((1_000, Some(H))));
    }

    #[test]
    fn a_failed_settle_names_no_payment() {
        let mut e = hold_only();
        e.on(Input::HoldAccepted).unwrap();
        e.on(Input::Delivered).unwrap();
        e.on(Input::SettleDone(false)).unwrap();
        assert_eq!(e.state(), State::Unsettled);
        assert_eq!(e.metered(), Some((1_000, None)));
    }

    #[test]
    fn a_failed_or_stopped_job_refunds_the_hold() {
        for input in [Input::JobFailed, Input::Stopped] {
            let mut e = hold_only();
            e.on(Input::HoldAccepted).unwrap();
            assert_eq!(e.on(input).unwrap(), vec![Action::CancelHold(H)]);
            assert_eq!(e.state(), State::Cancelled(Cancelled::Refunded));
            assert_eq!(e.metered(), None);
            // Nothing more happens to a refunded job.
            assert!(e.on(Input::HoldAccepted).unwrap().is_empty());
            assert!(e.on(Input::Delivered).is_err());
        }
    }

    #[test]
    fn unpaid_past_the_deadline_withdraws_the_offer() {
        let mut e = hold_only();
        let before = e.deadline() - Duration::from_secs(1);
        assert!(e.on(Input::Tick(before)).unwrap().is_empty());
        assert_eq!(e.state(), State::Quoted);
        let a = e.on(Input::Tick(e.deadline())).unwrap();
        assert_eq!(a[0], Action::CancelHold(H));
        assert!(matches!(a[1], Action::Fail(_)));
        assert_eq!(e.state(), State::Cancelled(Cancelled::NotPaid));
        // An HTLC that arrives after the deadline does not make the job run.
        assert!(e.on(Input::HoldAccepted).unwrap().is_empty());
        assert!(!e.is_paid());
    }

    #[test]
    fn stopped_before_payment_cancels_without_failing() {
        let mut e = hold_only();
        assert_eq!(e.on(Input::Stopped).unwrap(), vec![Action::CancelHold(H)]);
        assert_eq!(e.state(), State::Cancelled(Cancelled::Stopped));
    }

    #[test]
    fn a_cancelled_invoice_fails_unless_a_zap_can_still_pay() {
        let mut e = hold_only();
        let a = e.on(Input::HoldCancelled).unwrap();
        // Cancelled already: no second cancel.
        assert!(matches!(a.as_slice(), [Action::Fail(_)]));
        assert_eq!(e.state(), State::Cancelled(Cancelled::InvoiceCancelled));

        let mut e = both();
        assert!(e.on(Input::HoldCancelled).unwrap().is_empty());
        assert_eq!(e.state(), State::Quoted);
        assert_eq!(e.watch_hold(), None);
        assert!(e.takes_zap());
        // The cancelled invoice is not cancelled again when the zap pays.
        assert_eq!(
            e.on(Input::Zap {
                amount_msat: 1_000,
                hash: Z
            })
            .unwrap(),
            vec![Action::Run]
        );
    }

    #[test]
    fn an_already_settled_invoice_is_not_run_again() {
        let mut e = hold_only();
        let a = e.on(Input::HoldSettled).unwrap();
        assert!(matches!(a.last(), Some(Action::Fail(_))));
        assert!(!e.is_paid());
    }

    #[test]
    fn a_zap_pays_withdraws_the_hold_and_meters_what_was_zapped() {
        let mut e = both();
        let a = e
            .on(Input::Zap {
                amount_msat: 1_500,
                hash: Z,
            })
            .unwrap();
        assert_eq!(a, vec![Action::CancelHold(H), Action::Run]);
        assert!(e.is_paid());
        // The hold invoice's HTLC arriving late does not pay twice.
        assert!(e.on(Input::HoldAccepted).unwrap().is_empty());
        assert_eq!(e.amount_msat(), 1_500);
        assert!(e.on(Input::Delivered).unwrap().is_empty());
        assert_eq!(e.metered(), Some((1_500, Some(Z))));
    }

    #[test]
    fn a_short_zap_or_one_not_offered_pays_nothing() {
        let mut e = both();
        let short = Input::Zap {
            amount_msat: 999,
            hash: Z,
        };
        assert!(e.on(short).unwrap().is_empty());
        assert_eq!(e.state(), State::Quoted);
        let mut e = hold_only();
        let full = Input::Zap {
            amount_msat: 1_000,
            hash: Z,
        };
        assert!(e.on(full).unwrap().is_empty());
        assert!(!e.is_paid());
    }

    #[test]
    fn a_zapped_job_that_fails_keeps_the_zap() {
        let mut e = Escrow::offer(1_000, None, true, Instant::now(), Duration::from_secs(60)).0;
        e.on(Input::Zap {
            amount_msat: 1_000,
            hash: Z,
        })
        .unwrap();
        assert!(e.on(Input::JobFailed).unwrap().is_empty());
        assert_eq!(e.state(), State::Kept { amount_msat: 1_000 });
    }

    #[test]
    fn job_inputs_before_payment_are_driver_bugs() {
        for input in [Input::Delivered, Input::JobFailed, Input::SettleDone(true)] {
            let mut e = hold_only();
            assert!(e.on(input).is_err());
            assert_eq!(e.state(), State::Quoted);
        }
    }
}
