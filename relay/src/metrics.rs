//! Prometheus metrics, rendered as text on `/metrics`.
//!
//! Counters are plain atomics; labelled counters keep a small map behind a mutex held only for an
//! increment (labels are bounded: kinds are folded to the fed_AI kinds plus `other`, reasons are
//! a fixed set).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use fedai_protocol::kinds::FEDAI_KINDS;

#[derive(Debug, Default)]
struct Labelled(Mutex<BTreeMap<String, u64>>);

impl Labelled {
    fn inc(&self, label: String) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(label).or_default() += 1;
    }
    fn render(&self, out: &mut String, name: &str, label: &str) {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in m.iter() {
            let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
        }
    }
}

/// All relay metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    http_requests: Labelled,
    accepted: Labelled,
    rejected: Labelled,
    duplicates: AtomicU64,
    queries: AtomicU64,
    query_events: AtomicU64,
    live_events: AtomicU64,
    retention_deleted_runs: AtomicU64,
    subscriptions_cut: AtomicU64,
    live_queued_bytes: AtomicU64,
    connections_refused: AtomicU64,
    store_bytes: AtomicU64,
    store_limit_bytes: AtomicU64,
    stored_events: AtomicU64,
    pending_writes: AtomicU64,
    store_disk_bytes: AtomicU64,
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
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }
    /// A WebSocket connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
    /// WebSocket connections closed so far.
    pub fn connections_closed_total(&self) -> u64 {
        let open = self.connections_open.load(Ordering::Relaxed).max(0) as u64;
        self.connections_total
            .load(Ordering::Relaxed)
            .saturating_sub(open)
    }
    /// An HTTP request was served on `route`.
    pub fn http(&self, route: &str) {
        self.http_requests.inc(route.to_owned());
    }
    /// An event was stored (or broadcast, if ephemeral).
    pub fn accepted(&self, kind: u16) {
        self.accepted.inc(kind_label(kind));
    }
    /// An event was rejected for `reason` (a NIP-01 prefix such as `invalid`).
    pub fn rejected(&self, reason: &str) {
        self.rejected.inc(reason.to_owned());
    }
    /// An event was already stored.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    /// A stored-event query ran, returning `n` events.
    pub fn query(&self, n: usize) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_events.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// An accepted event was handed to live subscribers.
    pub fn live_event(&self) {
        self.live_events.fetch_add(1, Ordering::Relaxed);
    }
    /// A retention sweep ran.
    pub fn retention_run(&self) {
        self.retention_deleted_runs.fetch_add(1, Ordering::Relaxed);
    }

    /// Live subscriptions were cut because their reader fell behind.
    pub fn subscriptions_cut(&self, n: usize) {
        self.subscriptions_cut
            .fetch_add(n as u64, Ordering::Relaxed);
    }
    /// Bytes of live frames queued for all connections now.
    pub fn set_live_queued_bytes(&self, n: usize) {
        self.live_queued_bytes.store(n as u64, Ordering::Relaxed);
    }
    /// A connection was refused: the relay is at its connection limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Estimated bytes stored.
    pub fn set_store_bytes(&self, n: u64) {
        self.store_bytes.store(n, Ordering::Relaxed);
    }
    /// The global storage quota (0: none).
    pub fn set_store_limit_bytes(&self, n: u64) {
        self.store_limit_bytes.store(n, Ordering::Relaxed);
    }
    /// Events stored (counted at each sweep).
    pub fn set_stored_events(&self, n: u64) {
        self.stored_events.store(n, Ordering::Relaxed);
    }
    /// Bytes the LMDB file takes on disk.
    pub fn set_store_disk_bytes(&self, n: u64) {
        self.store_disk_bytes.store(n, Ordering::Relaxed);
    }
    /// Writes in flight to the store now.
    pub fn set_pending_writes(&self, n: u64) {
        self.pending_writes.store(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(2048);
        let g = |o: &mut String, name: &str, help: &str, kind: &str, v: i128| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            &mut o,
            "fedai_relay_connections",
            "Open WebSocket connections.",
            "gauge",
            self.connections_open.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_connections_total",
            "WebSocket connections accepted.",
            "counter",
            self.connections_total.load(Ordering::Relaxed) as i128,
        );
        let _ = writeln!(o, "# HELP fedai_relay_events_accepted_total Events stored or broadcast, by kind.\n# TYPE fedai_relay_events_accepted_total counter");
        self.accepted
            .render(&mut o, "fedai_relay_events_accepted_total", "kind");
        let _ = writeln!(o, "# HELP fedai_relay_events_rejected_total Events refused by the write policy, by reason.\n# TYPE fedai_relay_events_rejected_total counter");
        self.rejected
            .render(&mut o, "fedai_relay_events_rejected_total", "reason");
        g(
            &mut o,
            "fedai_relay_events_duplicate_total",
            "Events already stored.",
            "counter",
            self.duplicates.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_queries_total",
            "Stored-event queries (one per filter).",
            "counter",
            self.queries.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_query_events_total",
            "Events returned by stored-event queries.",
            "counter",
            self.query_events.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_live_events_total",
            "Accepted events fanned out to live subscriptions.",
            "counter",
            self.live_events.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_retention_runs_total",
            "Retention sweeps run.",
            "counter",
            self.retention_deleted_runs.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_subscriptions_cut_total",
            "Live subscriptions closed because their reader fell behind on them.",
            "counter",
            self.subscriptions_cut.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_live_queued_bytes",
            "Bytes of live events queued for connections (bounded).",
            "gauge",
            self.live_queued_bytes.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_connections_refused_total",
            "Connections refused at the connection limit.",
            "counter",
            self.connections_refused.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_store_bytes",
            "Bytes stored (estimate: events counted at each sweep x average size + bytes since).",
            "gauge",
            self.store_bytes.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_store_disk_bytes",
            "Bytes the LMDB file takes on disk (0 in memory); past 75% of the map only market kinds are stored.",
            "gauge",
            self.store_disk_bytes.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_store_limit_bytes",
            "Storage quota (--max-store-mib; 0: none). Past 90% only market kinds are stored.",
            "gauge",
            self.store_limit_bytes.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_stored_events",
            "Events in the store, counted at each sweep.",
            "gauge",
            self.stored_events.load(Ordering::Relaxed) as i128,
        );
        g(
            &mut o,
            "fedai_relay_pending_writes",
            "Writes in flight to the store (bounded by --max-pending-writes).",
            "gauge",
            self.pending_writes.load(Ordering::Relaxed) as i128,
        );
        let _ = writeln!(o, "# HELP fedai_relay_http_requests_total HTTP requests by route.\n# TYPE fedai_relay_http_requests_total counter");
        self.http_requests
            .render(&mut o, "fedai_relay_http_requests_total", "route");
        o
    }
}
