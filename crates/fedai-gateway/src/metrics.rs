//! The gateway's Prometheus metrics (`GET /metrics`): calls by endpoint and status, jobs in
//! flight, time to the first token, what the ledger charged and what is left of the budget.

use prometheus::{
    register_histogram_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_with_registry, Histogram, IntCounter,
    IntCounterVec, IntGauge, Registry, TextEncoder,
};

/// All gateway metrics, in one registry per gateway.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Calls answered, by endpoint and HTTP status.
    pub calls: IntCounterVec,
    /// Jobs running.
    pub jobs: IntGauge,
    /// From the call to its first streamed token, seconds.
    pub first_token: Histogram,
    /// Charged to the budget ledger (payments and their fee caps), msat.
    pub charged_msat: IntCounter,
    /// Left of the budget, msat (set at each scrape).
    pub budget_left_msat: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        // The names are fixed here: a clash is a bug.
        let calls = register_int_counter_vec_with_registry!(
            "fedai_gateway_calls_total",
            "OpenAI calls answered, by endpoint and HTTP status.",
            &["endpoint", "status"],
            r
        )
        .expect("valid metric");
        let jobs = register_int_gauge_with_registry!("fedai_gateway_jobs", "Jobs running.", r)
            .expect("valid metric");
        let first_token = register_histogram_with_registry!(
            "fedai_gateway_first_token_seconds",
            "From a call to its first streamed token.",
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            r
        )
        .expect("valid metric");
        let charged_msat = register_int_counter_with_registry!(
            "fedai_gateway_charged_msat_total",
            "Charged to the budget ledger: payments and their routing-fee caps, msat.",
            r
        )
        .expect("valid metric");
        let budget_left_msat = register_int_gauge_with_registry!(
            "fedai_gateway_budget_left_msat",
            "What is left of the budget, msat (0 without a wallet).",
            r
        )
        .expect("valid metric");
        Self {
            registry: r,
            calls,
            jobs,
            first_token,
            charged_msat,
            budget_left_msat,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
