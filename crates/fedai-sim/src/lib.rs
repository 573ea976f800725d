//! # fedai-sim
//!
//! A discrete-event simulator of a fed_AI market. It answers economic and routing questions
//! before real money moves: what latency and cost customers see, how evenly work spreads,
//! what a crash wave or a supply shortage does, what pay-before costs in latency.
//!
//! Customers choose workers with [`fedai_scheduler::select`] — the same function, same
//! policy and same statistics the real client uses — on ads that are as stale as the ad
//! interval, and fail over exactly as the client does (cooldown, exclusion, attempt limit).
//!
//! ```
//! let s = fedai_sim::Scenario { jobs: 1_000, ..Default::default() };
//! let r = fedai_sim::run(&s);
//! assert_eq!(r.completed + r.dropped, 1_000);
//! ```

mod engine;
pub mod report;
pub mod scenario;

pub use engine::run;
pub use report::{sweep_table, Report};
pub use scenario::{parse_sweep, Scenario, Sweep};

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario file is invalid.
    #[error("invalid scenario: {0}")]
    Scenario(String),
}

/// Run every variant of a scenario (its sweep, or `over`), in order.
pub fn run_all(s: &Scenario, over: Option<&Sweep>) -> Result<Vec<(String, Report)>, SimError> {
    Ok(s.variants(over)?
        .into_iter()
        .map(|(label, v)| {
            let r = run(&v);
            (label, r)
        })
        .collect())
}
