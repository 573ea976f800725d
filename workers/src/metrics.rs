//! Worker metrics on the `prometheus` crate, and the `/metrics` + `/health` listener on axum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpListener;

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All worker metrics, in one registry per worker.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    jobs: IntCounterVec,
    tokens: IntCounterVec,
    in_flight: IntGauge,
    relays_connected: IntGauge,
    runner_healthy: IntGauge,
    live_job_relays: IntGauge,
    subscriptions_closed: IntCounter,
    resubscriptions: IntCounter,
    first_token: Histogram,
    job_seconds: Histogram,
}

/// Register a metric; names are fixed here, so a clash is a bug.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(r, IntGauge::new(name, help).expect("valid metric"))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).expect("valid metric"))
}

fn seconds(r: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    reg(r, Histogram::with_opts(opts).expect("valid metric"))
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let by = |name: &str, help: &str, label: &str| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let tokens = by(
            "fedai_worker_tokens_total",
            "Tokens processed.",
            "direction",
        );
        // Both directions are shown from the start, at 0.
        for d in ["input", "output"] {
            tokens.with_label_values(&[d]);
        }
        let jobs = by("fedai_worker_jobs_total", "Jobs by outcome.", "outcome");
        jobs.with_label_values(&["success"]);
        Self {
            jobs,
            tokens,
            in_flight: gauge(&r, "fedai_worker_in_flight", "Jobs running."),
            relays_connected: gauge(&r, "fedai_worker_relays_connected", "Relays connected."),
            runner_healthy: gauge(
                &r,
                "fedai_worker_runner_healthy",
                "1 when the runner answered its last health probe.",
            ),
            live_job_relays: gauge(
                &r,
                "fedai_worker_live_job_relays",
                "Relays on which the job subscription is open (0: the worker hears no jobs).",
            ),
            subscriptions_closed: counter(
                &r,
                "fedai_worker_subscriptions_closed_total",
                "Subscriptions a relay closed (CLOSED), e.g. after its live buffer overflowed.",
            ),
            resubscriptions: counter(
                &r,
                "fedai_worker_resubscriptions_total",
                "Closed subscriptions opened again from the last event seen.",
            ),
            first_token: seconds(
                &r,
                "fedai_worker_runner_first_token_seconds",
                "Runner latency to the first token.",
            ),
            job_seconds: seconds(
                &r,
                "fedai_worker_runner_job_seconds",
                "Runner time per job.",
            ),
            registry: r,
        }
    }
}

impl Metrics {
    /// A job ended with `outcome` (`success` or an error code).
    pub fn job(&self, outcome: &str) {
        self.jobs.with_label_values(&[outcome]).inc();
    }
    /// Token counts of a finished job.
    pub fn tokens(&self, input: u64, output: u64) {
        self.tokens.with_label_values(&["input"]).inc_by(input);
        self.tokens.with_label_values(&["output"]).inc_by(output);
    }
    /// Jobs running now.
    pub fn set_in_flight(&self, n: i64) {
        self.in_flight.set(n);
    }
    /// Relays connected now.
    pub fn set_relays(&self, n: i64) {
        self.relays_connected.set(n);
    }
    /// Runner health as last probed.
    pub fn set_runner_healthy(&self, ok: bool) {
        self.runner_healthy.set(ok as i64);
    }
    /// Relays on which the job subscription is live now.
    pub fn set_live_job_relays(&self, n: i64) {
        self.live_job_relays.set(n);
    }
    /// A relay closed one of our subscriptions (CLOSED).
    pub fn subscription_closed(&self) {
        self.subscriptions_closed.inc();
    }
    /// A closed subscription was opened again.
    pub fn resubscribed(&self) {
        self.resubscriptions.inc();
    }
    /// Time to the first token.
    pub fn first_token(&self, d: Duration) {
        self.first_token.observe(d.as_secs_f64());
    }
    /// Runner time of a whole job.
    pub fn job_time(&self, d: Duration) {
        self.job_seconds.observe(d.as_secs_f64());
    }

    /// Healthy: the runner answers, and some relay connected carries the job subscription.
    pub fn healthy(&self) -> bool {
        self.runner_healthy.get() == 1
            && self.relays_connected.get() > 0
            && self.live_job_relays.get() > 0
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

/// `/metrics` and `/health`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    m.render(),
                )
            }),
        )
        .route(
            "/health",
            get(|State(m): State<Arc<Metrics>>| async move {
                let (status, body) = match m.healthy() {
                    true => (StatusCode::OK, "{\"status\":\"ok\"}\n"),
                    false => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "{\"status\":\"degraded\"}\n",
                    ),
                };
                (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
            }),
        )
        .with_state(metrics)
}

/// Serve `/metrics` and `/health` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Err(e) = axum::serve(listener, router(metrics)).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_under_its_name() {
        let m = Metrics::default();
        m.job("success");
        m.tokens(12, 3);
        m.set_runner_healthy(true);
        m.first_token(Duration::from_millis(20));
        let text = m.render();
        for line in [
            "fedai_worker_jobs_total{outcome=\"success\"} 1",
            "fedai_worker_tokens_total{direction=\"input\"} 12",
            "fedai_worker_tokens_total{direction=\"output\"} 3",
            "fedai_worker_runner_healthy 1",
            "fedai_worker_runner_first_token_seconds_bucket{le=\"0.025\"} 1",
            "fedai_worker_runner_first_token_seconds_count 1",
            "# TYPE fedai_worker_runner_job_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!m.healthy(), "no relay yet");
    }
}
