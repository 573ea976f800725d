//! The customer's side of one job's payment, as a state machine without I/O.
//!
//! ```text
//!         quote ≤ cap, ≤ ad          invoice checked,          preimage hashes
//!   Open ──────────────────▶ Approved ───────────────▶ Paying ──────────────▶ Paid
//!     │ quote > confirm_above    ▲     same amount          │ payer failed
//!     ▼                          │ yes                      ▼
//!   Confirming ──────────────────┘                       Failed
//!     │ no / over cap / over ad / a second quote
//!     ▼
//!   Refused
//! ```
//!
//! The client feeds it the worker's quote, the person's answer, the checked invoice and the
//! payer's preimage; it never pays above the cap or the worker's own ad, never twice for a
//! job, and never keeps a preimage that does not open the invoice. Pay-after charges are
//! checked with [`fair_charge`] against the ad's price applied to the signed usage.

use crate::{PaymentHash, Preimage};

/// The customer's limits for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Never pay more for this job, msat. Always set: a payer without a cap is a bug.
    pub cap_msat: u64,
    /// What the worker's own ad prices this job at, at most: a quote above it is a
    /// bait-and-switch.
    pub ad_bound_msat: Option<u64>,
    /// Ask the person before paying more than this, msat; `None` never asks.
    pub confirm_above_msat: Option<u64>,
}

/// Where the payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing asked yet.
    Open,
    /// A quote within the limits waits for the person's answer.
    Confirming {
        /// Asked, msat.
        amount_msat: u64,
    },
    /// A quote within the limits (and approved): the invoice may be checked and paid.
    Approved {
        /// Asked, msat.
        amount_msat: u64,
    },
    /// The payer is paying this invoice.
    Paying {
        /// Paid, msat.
        amount_msat: u64,
        /// The invoice's payment hash.
        hash: PaymentHash,
    },
    /// Paid, with the preimage as proof.
    Paid {
        /// Paid, msat.
        amount_msat: u64,
        /// The invoice's payment hash.
        hash: PaymentHash,
        /// Its preimage: SHA-256(preimage) = hash.
        preimage: Preimage,
    },
    /// The payer failed (nothing was paid, or a hold was refunded).
    Failed,
    /// Not paid, by the customer's rules.
    Refused,
}

/// Why the customer does not pay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Above the customer's cap.
    #[error("the worker asks {asked} msat, over the cap of {cap} msat")]
    OverCap {
        /// Asked.
        asked: u64,
        /// The cap.
        cap: u64,
    },
    /// Above what the worker's own ad prices the job at.
    #[error("the worker asks {asked} msat, over the {bound} msat its own ad prices this job at")]
    OverAd {
        /// Asked.
        asked: u64,
        /// The ad's price for the job.
        bound: u64,
    },
    /// The person said no.
    #[error("the payment of {0} msat was declined")]
    Declined(u64),
    /// A quote after one was already taken: a job is paid once.
    #[error("this job is already being paid")]
    AlreadyPaying,
    /// The invoice asks another amount than the approved quote.
    #[error("the invoice asks {invoice} msat; the approved quote was {approved} msat")]
    AmountMismatch {
        /// In the invoice.
        invoice: u64,
        /// Approved.
        approved: u64,
    },
    /// The payer's preimage does not open the invoice.
    #[error("the preimage does not match the invoice")]
    BadPreimage,
    /// A pay-after charge above the ad's price of the signed usage.
    #[error("the worker charges {charged} msat; its ad prices this usage at {fair} msat")]
    Overcharge {
        /// Charged.
        charged: u64,
        /// The ad's price of the usage.
        fair: u64,
    },
    /// A step in the wrong state (a client bug).
    #[error("payment step out of order in state {0:?}")]
    OutOfOrder(State),
}

/// The next step after a quote that passed the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Ask the person (then [`Spend::confirm`]).
    Confirm(u64),
    /// Go on: check the invoice, then pay.
    Pay(u64),
}

/// One job's payment, on the customer's side.
#[derive(Debug, Clone)]
pub struct Spend {
    limits: Limits,
    state: State,
}

impl Spend {
    /// A payment under these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Open,
        }
    }

    /// Where it stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn refuse(&mut self, r: Refusal) -> Refusal {
        self.state = State::Refused;
        r
    }

    /// The worker asks `amount_msat`: within the cap, within the ad, and asked of the person
    /// above the threshold. A job is paid once: a second quote is refused (and the first
    /// payment goes on).
    pub fn quote(&mut self, amount_msat: u64) -> Result<Next, Refusal> {
        if self.state != State::Open {
            return Err(Refusal::AlreadyPaying);
        }
        let cap = self.limits.cap_msat;
        if amount_msat > cap {
            return Err(self.refuse(Refusal::OverCap {
                asked: amount_msat,
                cap,
            }));
        }
        if let Some(bound) = self.limits.ad_bound_msat.filter(|b| amount_msat > *b) {
            return Err(self.refuse(Refusal::OverAd {
                asked: amount_msat,
                bound,
            }));
        }
        if self
            .limits
            .confirm_above_msat
            .is_some_and(|t| amount_msat > t)
        {
            self.state = State::Confirming { amount_msat };
            return Ok(Next::Confirm(amount_msat));
        }
        self.state = State::Approved { amount_msat };
        Ok(Next::Pay(amount_msat))
    }

    /// The person's answer.
    pub fn confirm(&mut self, yes: bool) -> Result<u64, Refusal> {
        let State::Confirming { amount_msat } = self.state else {
            return Err(Refusal::OutOfOrder(self.state));
        };
        if !yes {
            return Err(self.refuse(Refusal::Declined(amount_msat)));
        }
        self.state = State::Approved { amount_msat };
        Ok(amount_msat)
    }

    /// The invoice to pay, already checked (signature, network, payee, commitment to the job):
    /// it must ask the approved amount.
    pub fn invoice(&mut self, invoice_msat: u64, hash: PaymentHash) -> Result<(), Refusal> {
        let State::Approved { amount_msat } = self.state else {
            return Err(Refusal::OutOfOrder(self.state));
        };
        if invoice_msat != amount_msat {
            return Err(self.refuse(Refusal::AmountMismatch {
                invoice: invoice_msat,
                approved: amount_msat,
            }));
        }
        self.state = State::Paying { amount_msat, hash };
        Ok(())
    }

    /// The payer's answer: a preimage that opens the invoice, or a failure.
    pub fn paid(&mut self, preimage: Result<Preimage, ()>) -> Result<State, Refusal> {
        let State::Paying { amount_msat, hash } = self.state else {
            return Err(Refusal::OutOfOrder(self.state));
        };
        match preimage {
            Ok(p) if crate::payment_hash(&p) == hash => {
                self.state = State::Paid {
                    amount_msat,
                    hash,
                    preimage: p,
                };
                Ok(self.state)
            }
            Ok(_) => {
                self.state = State::Failed;
                Err(Refusal::BadPreimage)
            }
            Err(()) => {
                self.state = State::Failed;
                Ok(self.state)
            }
        }
    }
}

/// A pay-after charge must not exceed the ad's price applied to the signed usage.
pub fn fair_charge(charged_msat: u64, fair_msat: u64) -> Result<(), Refusal> {
    if charged_msat > fair_msat {
        return Err(Refusal::Overcharge {
            charged: charged_msat,
            fair: fair_msat,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            cap_msat: 10_000,
            ad_bound_msat: Some(5_000),
            confirm_above_msat: Some(2_000),
        }
    }

    #[test]
    fn a_quote_within_the_limits_is_paid_once_and_proved() {
        let mut s = Spend::new(limits());
        assert_eq!(s.quote(1_000), Ok(Next::Pay(1_000)));
        assert_eq!(s.quote(1_000), Err(Refusal::AlreadyPaying));
        let preimage = [7u8; 32];
        let hash = crate::payment_hash(&preimage);
        s.invoice(1_000, hash).unwrap();
        // A second invoice for the same job is not paid.
        assert!(s.invoice(1_000, hash).is_err());
        let st = s.paid(Ok(preimage)).unwrap();
        assert_eq!(
            st,
            State::Paid {
                amount_msat: 1_000,
                hash,
                preimage
            }
        );
    }

    #[test]
    fn over_the_cap_or_the_ad_is_refused() {
        let mut s = Spend::new(limits());
        assert_eq!(
            s.quote(10_001),
            Err(Refusal::OverCap {
                asked: 10_001,
                cap: 10_000
            })
        );
        assert_eq!(s.state(), State::Refused);
        let mut s = Spend::new(limits());
        assert_eq!(
            s.quote(5_001),
            Err(Refusal::OverAd {
                asked: 5_001,
                bound: 5_000
            })
        );
        // Refused stays refused: a lower second quote does not reopen it.
        assert_eq!(s.quote(1), Err(Refusal::AlreadyPaying));
    }

    #[test]
    fn above_the_threshold_asks_the_person() {
        let mut s = Spend::new(limits());
        assert_eq!(s.quote(3_000), Ok(Next::Confirm(3_000)));
        // No invoice is paid before the answer.
        assert!(s.invoice(3_000, [0; 32]).is_err());
        assert_eq!(s.confirm(true), Ok(3_000));
        assert!(s.invoice(3_000, [0; 32]).is_ok());

        let mut s = Spend::new(limits());
        s.quote(3_000).unwrap();
        assert_eq!(s.confirm(false), Err(Refusal::Declined(3_000)));
        assert_eq!(s.state(), State::Refused);
    }

    #[test]
    fn an_invoice_for_another_amount_is_refused() {
        let mut s = Spend::new(limits());
        s.quote(1_000).unwrap();
        assert_eq!(
            s.invoice(1_001, [0; 32]),
            Err(Refusal::AmountMismatch {
                invoice: 1_001,
                approved: 1_000
            })
        );
    }

    #[test]
    fn a_preimage_that_does_not_open_the_invoice_is_no_proof() {
        let mut s = Spend::new(limits());
        s.quote(1_000).unwrap();
        s.invoice(1_000, crate::payment_hash(&[7; 32])).unwrap();
        assert_eq!(s.paid(Ok([8; 32])), Err(Refusal::BadPreimage));
        assert_eq!(s.state(), State::Failed);
    }

    #[test]
    fn a_failed_payer_ends_in_failed() {
        let mut s = Spend::new(limits());
        s.quote(1_000).unwrap();
        s.invoice(1_000, [0; 32]).unwrap();
        assert_eq!(s.paid(Err(())), Ok(State::Failed));
    }

    #[test]
    fn no_confirmation_threshold_never_asks() {
        let mut s = Spend::new(Limits {
            confirm_above_msat: None,
            ..limits()
        });
        assert_eq!(s.quote(5_000), Ok(Next::Pay(5_000)));
    }

    #[test]
    fn pay_after_charges_are_bounded_by_the_ad() {
        assert!(fair_charge(100, 100).is_ok());
        assert_eq!(
            fair_charge(101, 100),
            Err(Refusal::Overcharge {
                charged: 101,
                fair: 100
            })
        );
    }
}
