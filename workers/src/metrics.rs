//! Worker metrics (Prometheus text) and the `/metrics` + `/health` listener.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Histogram bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; 12],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let c = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "{name}_bucket{{le=\"+Inf\"}} {c}\n{name}_sum {}\n{name}_count {c}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

/// All worker metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<String, u64>>,
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    in_flight: AtomicI64,
    relays_connected: AtomicI64,
    runner_healthy: AtomicI64,
    live_job_relays: AtomicI64,
    subscriptions_closed: AtomicU64,
    resubscriptions: AtomicU64,
    first_token: Histogram,
    job_seconds: Histogram,
}

impl Metrics {
    /// A job ended with `outcome` (`success` or an error code).
    pub fn job(&self, outcome: &str) {
        *self
            .jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome.to_owned())
            .or_default() += 1;
    }
    /// Token counts of a finished job.
    pub fn tokens(&self, input: u64, output: u64) {
        self.tokens_in.fetch_add(input, Ordering::Relaxed);
        self.tokens_out.fetch_add(output, Ordering::Relaxed);
    }
    /// Jobs running now.
    pub fn set_in_flight(&self, n: i64) {
        self.in_flight.store(n, Ordering::Relaxed);
    }
    /// Relays connected now.
    pub fn set_relays(&self, n: i64) {
        self.relays_connected.store(n, Ordering::Relaxed);
    }
    /// Runner health as last probed.
    pub fn set_runner_healthy(&self, ok: bool) {
        self.runner_healthy.store(ok as i64, Ordering::Relaxed);
    }
    /// Relays on which the job subscription is live now.
    pub fn set_live_job_relays(&self, n: i64) {
        self.live_job_relays.store(n, Ordering::Relaxed);
    }
    /// A relay closed one of our subscriptions (CLOSED).
    pub fn subscription_closed(&self) {
        self.subscriptions_closed.fetch_add(1, Ordering::Relaxed);
    }
    /// A closed subscription was opened again.
    pub fn resubscribed(&self) {
        self.resubscriptions.fetch_add(1, Ordering::Relaxed);
    }
    /// Time to the first token.
    pub fn first_token(&self, d: Duration) {
        self.first_token.observe(d);
    }
    /// Runner time of a whole job.
    pub fn job_time(&self, d: Duration) {
        self.job_seconds.observe(d);
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP fedai_worker_jobs_total Jobs by outcome.\n# TYPE fedai_worker_jobs_total counter");
        for (k, v) in self.jobs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(o, "fedai_worker_jobs_total{{outcome=\"{k}\"}} {v}");
        }
        let _ = writeln!(o, "# HELP fedai_worker_tokens_total Tokens processed.\n# TYPE fedai_worker_tokens_total counter");
        let _ = writeln!(
            o,
            "fedai_worker_tokens_total{{direction=\"input\"}} {}",
            self.tokens_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "fedai_worker_tokens_total{{direction=\"output\"}} {}",
            self.tokens_out.load(Ordering::Relaxed)
        );
        for (name, help, v) in [
            ("fedai_worker_in_flight", "Jobs running.", &self.in_flight),
            (
                "fedai_worker_relays_connected",
                "Relays connected.",
                &self.relays_connected,
            ),
            (
                "fedai_worker_runner_healthy",
                "1 when the runner answered its last health probe.",
                &self.runner_healthy,
            ),
            (
                "fedai_worker_live_job_relays",
                "Relays on which the job subscription is open (0: the worker hears no jobs).",
                &self.live_job_relays,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "fedai_worker_subscriptions_closed_total",
                "Subscriptions a relay closed (CLOSED), e.g. after its live buffer overflowed.",
                &self.subscriptions_closed,
            ),
            (
                "fedai_worker_resubscriptions_total",
                "Closed subscriptions opened again from the last event seen.",
                &self.resubscriptions,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        self.first_token.render(
            &mut o,
            "fedai_worker_runner_first_token_seconds",
            "Runner latency to the first token.",
        );
        self.job_seconds.render(
            &mut o,
            "fedai_worker_runner_job_seconds",
            "Runner time per job.",
        );
        o
    }
}

/// Serve `/metrics` and `/health` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                "/health" => {
                    let ok = metrics.runner_healthy.load(Ordering::Relaxed) == 1
                        && metrics.relays_connected.load(Ordering::Relaxed) > 0
                        && metrics.live_job_relays.load(Ordering::Relaxed) > 0;
                    if ok {
                        ("200 OK", "application/json", "{\"status\":\"ok\"}\n".into())
                    } else {
                        (
                            "503 Service Unavailable",
                            "application/json",
                            "{\"status\":\"degraded\"}\n".into(),
                        )
                    }
                }
                _ => ("404 Not Found", "text/plain", "not found\n".into()),
            };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
