//! One home for payments: the two sides of a job's payment as explicit state machines, free of
//! I/O and unit-tested on every transition. Thin async drivers (the worker over its
//! [`InvoiceBackend`](crate::InvoiceBackend) and zap receipts; the customer's SDK over a
//! [`Payer`](crate::Payer)) feed them what happened and do what they answer.
//!
//! - [`worker::Escrow`]: quoted → held → settled, or cancelled (refunded), with a deadline;
//!   a zap is final (zapped → settled, or kept when the job fails).
//! - [`customer::Spend`]: a quote checked against the cap and the worker's ad (and the person,
//!   above a threshold) → paid once → a preimage that opens the invoice, the receipt's proof.

pub mod customer;
pub mod worker;
