//! Prometheus metrics on the `prometheus` crate, rendered as text on `/metrics`.
//!
//! One registry per relay (a process may run several, as the demo and the tests do). Labels are
//! bounded: kinds are folded to the fed_AI kinds plus `ephemeral`/`other`, reasons and routes are
//! fixed sets. (The `prometheus` crate rather than `prometheus-client`: the latter appends
//! `_total` to every counter, and `fedai_relay_connections` (open) beside
//! `fedai_relay_connections_total` (accepted) would then be one name twice.)

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use fedai_protocol::kinds::FEDAI_KINDS;

/// All relay metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    connections_open: IntGauge,
    connections_total: IntCounter,
    http_requests: IntCounterVec,
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    duplicates: IntCounter,
    queries: IntCounter,
    query_events: IntCounter,
    live_events: IntCounter,
    retention_runs: IntCounter,
    subscriptions_cut: IntCounter,
    live_queued_bytes: IntGauge,
    connections_refused: IntCounter,
    store_bytes: IntGauge,
    store_limit_bytes: IntGauge,
    stored_events: IntGauge,
    pending_writes: IntGauge,
    store_disk_bytes: IntGauge,
    sync_rounds: IntCounterVec,
    sync_events: IntCounterVec,
    sync_neg_bytes: IntCounterVec,
}

/// Register a metric; names are fixed here, so a clash is a bug.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).expect("valid metric"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(r, IntGauge::new(name, help).expect("valid metric"))
}

fn by(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new();
        let m = Self {
            connections_open: gauge(&r, "fedai_relay_connections", "Open WebSocket connections."),
            connections_total: counter(
                &r,
                "fedai_relay_connections_total",
                "WebSocket connections accepted.",
            ),
            accepted: by(
                &r,
                "fedai_relay_events_accepted_total",
                "Events stored or broadcast, by kind.",
                "kind",
            ),
            sync_rounds: by(
                &r,
                "fedai_relay_sync_rounds_total",
                "Reconciliation rounds with peer relays, by result (ok, error).",
                "result",
            ),
            sync_events: by(
                &r,
                "fedai_relay_sync_events_total",
                "Events a sync stored here (in) or a peer accepted from us (out).",
                "direction",
            ),
            sync_neg_bytes: by(
                &r,
                "fedai_relay_sync_negentropy_bytes_total",
                "Bytes of NIP-77 reconciliation with peer relays, by direction (sent, received).",
                "direction",
            ),
            rejected: by(
                &r,
                "fedai_relay_events_rejected_total",
                "Events refused by the write policy, by reason.",
                "reason",
            ),
            duplicates: counter(
                &r,
                "fedai_relay_events_duplicate_total",
                "Events already stored.",
            ),
            queries: counter(
                &r,
                "fedai_relay_queries_total",
                "Stored-event queries (one per filter).",
            ),
            query_events: counter(
                &r,
                "fedai_relay_query_events_total",
                "Events returned by stored-event queries.",
            ),
            live_events: counter(
                &r,
                "fedai_relay_live_events_total",
                "Accepted events fanned out to live subscriptions.",
            ),
            retention_runs: counter(
                &r,
                "fedai_relay_retention_runs_total",
                "Retention sweeps run.",
            ),
            subscriptions_cut: counter(
                &r,
                "fedai_relay_subscriptions_cut_total",
                "Live subscriptions closed because their reader fell behind on them.",
            ),
            live_queued_bytes: gauge(
                &r,
                "fedai_relay_live_queued_bytes",
                "Bytes of live events queued for connections (bounded).",
            ),
            connections_refused: counter(
                &r,
                "fedai_relay_connections_refused_total",
                "Connections refused at the connection limit.",
            ),
            store_bytes: gauge(
                &r,
                "fedai_relay_store_bytes",
                "Bytes stored (estimate: events counted at each sweep x average size + bytes since).",
            ),
            store_disk_bytes: gauge(
                &r,
                "fedai_relay_store_disk_bytes",
                "Bytes the LMDB file takes on disk (0 in memory); past 75% of the map only market kinds are stored.",
            ),
            store_limit_bytes: gauge(
                &r,
                "fedai_relay_store_limit_bytes",
                "Storage quota (--max-store-mib; 0: none). Past 90% only market kinds are stored.",
            ),
            stored_events: gauge(
                &r,
                "fedai_relay_stored_events",
                "Events in the store, counted at each sweep.",
            ),
            pending_writes: gauge(
                &r,
                "fedai_relay_pending_writes",
                "Writes in flight to the store (bounded by --max-pending-writes).",
            ),
            http_requests: by(
                &r,
                "fedai_relay_http_requests_total",
                "HTTP requests by route.",
                "route",
            ),
            registry: r,
        };
        // Every family is exported from the start, its known series at 0: alert rules and
        // `rate()` see a series before its first event.
        for kind in FEDAI_KINDS {
            m.accepted.with_label_values(&[kind.to_string()]);
        }
        for reason in [
            "invalid",
            "rate-limited",
            "blocked",
            "pow",
            "auth-required",
            "restricted",
            "error",
        ] {
            m.rejected.with_label_values(&[reason]);
        }
        for route in [
            "index",
            "nip11",
            "health",
            "metrics",
            "options",
            "not_found",
        ] {
            m.http_requests.with_label_values(&[route]);
        }
        m
    }
}

/// Kind label: fed_AI kinds by number, ephemeral/other folded, so label cardinality stays bounded.
pub fn kind_label(kind: u16) -> String {
    if FEDAI_KINDS.contains(&kind) || matches!(kind, 0..=7) {
        kind.to_string()
    } else if (20_000..30_000).contains(&kind) {
        "ephemeral".into()
    } else {
        "other".into()
    }
}

impl Metrics {
    /// A WebSocket connection opened.
    pub fn connection_opened(&self) {
        self.connections_open.inc();
        self.connections_total.inc();
    }
    /// A WebSocket connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }
    /// WebSocket connections closed so far.
    pub fn connections_closed_total(&self) -> u64 {
        let open = self.connections_open.get().max(0) as u64;
        self.connections_total.get().saturating_sub(open)
    }
    /// An HTTP request was served on `route`.
    pub fn http(&self, route: &str) {
        self.http_requests.with_label_values(&[route]).inc();
    }
    /// An event was stored (or broadcast, if ephemeral).
    pub fn accepted(&self, kind: u16) {
        self.accepted.with_label_values(&[kind_label(kind)]).inc();
    }
    /// An event was rejected for `reason` (a NIP-01 prefix such as `invalid`).
    pub fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }
    /// An event was already stored.
    pub fn duplicate(&self) {
        self.duplicates.inc();
    }
    /// A stored-event query ran, returning `n` events.
    pub fn query(&self, n: usize) {
        self.queries.inc();
        self.query_events.inc_by(n as u64);
    }
    /// An accepted event was handed to live subscribers.
    pub fn live_event(&self) {
        self.live_events.inc();
    }
    /// A retention sweep ran.
    pub fn sync_round(&self, ok: bool) {
        self.sync_rounds
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn sync_events(&self, stored: usize, pushed: usize) {
        self.sync_events
            .with_label_values(&["in"])
            .inc_by(stored as u64);
        self.sync_events
            .with_label_values(&["out"])
            .inc_by(pushed as u64);
    }

    pub fn sync_negentropy_bytes(&self, sent: usize, received: usize) {
        self.sync_neg_bytes
            .with_label_values(&["sent"])
            .inc_by(sent as u64);
        self.sync_neg_bytes
            .with_label_values(&["received"])
            .inc_by(received as u64);
    }

    pub fn retention_run(&self) {
        self.retention_runs.inc();
    }
    /// Live subscriptions were cut because their reader fell behind.
    pub fn subscriptions_cut(&self, n: usize) {
        self.subscriptions_cut.inc_by(n as u64);
    }
    /// Bytes of live frames queued for all connections now.
    pub fn set_live_queued_bytes(&self, n: usize) {
        self.live_queued_bytes.set(n as i64);
    }
    /// A connection was refused: the relay is at its connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }
    /// Estimated bytes stored.
    pub fn set_store_bytes(&self, n: u64) {
        self.store_bytes.set(n as i64);
    }
    /// The global storage quota (0: none).
    pub fn set_store_limit_bytes(&self, n: u64) {
        self.store_limit_bytes.set(n as i64);
    }
    /// Events stored (counted at each sweep).
    pub fn set_stored_events(&self, n: u64) {
        self.stored_events.set(n as i64);
    }
    /// Bytes the LMDB file takes on disk.
    pub fn set_store_disk_bytes(&self, n: u64) {
        self.store_disk_bytes.set(n as i64);
    }
    /// Writes in flight to the store now.
    pub fn set_pending_writes(&self, n: u64) {
        self.pending_writes.set(n as i64);
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_under_its_name() {
        let m = Metrics::default();
        m.connection_opened();
        m.accepted(5050);
        m.accepted(1);
        m.rejected("invalid");
        m.http("health");
        let text = m.render();
        for line in [
            "fedai_relay_connections 1",
            "fedai_relay_connections_total 1",
            "fedai_relay_events_accepted_total{kind=\"5050\"} 1",
            "fedai_relay_events_accepted_total{kind=\"1\"} 1",
            "fedai_relay_events_rejected_total{reason=\"invalid\"} 1",
            "fedai_relay_http_requests_total{route=\"health\"} 1",
            "# TYPE fedai_relay_store_disk_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
