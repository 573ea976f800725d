//! A market over several relays (issue 17): real `fedai-relay` processes that converge with
//! `--sync-peer` (NIP-77 negentropy rounds and a live tail).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fedai_protocol::nostr::prelude::*;
use fedai_tests::{http_get, job_request, RelayProc, Ws};
use serde_json::json;

/// The ids of the fed_AI job requests and notes a relay holds.
async fn ids(relay: &RelayProc, kinds: &[u16]) -> BTreeSet<String> {
    let mut ws = Ws::connect(&relay.url).await;
    ws.query("ids", json!({"kinds": kinds, "limit": 5000}))
        .await
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A counter from the relay's `/metrics` (0 when absent).
async fn metric(relay: &RelayProc, line_start: &str) -> f64 {
    let addr = relay.url.trim_start_matches("ws://");
    let (_, body) = http_get(addr, "/metrics", "text/plain").await;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn publish_jobs(relay: &RelayProc, n: usize, tag: &str) -> BTreeSet<String> {
    let mut ws = Ws::connect(&relay.url).await;
    let mut out = BTreeSet::new();
    for i in 0..n {
        // Fresh keys: no per-pubkey rate limit is near.
        let ev = job_request(&Keys::generate(), &format!("{tag} job {i}"));
        assert!(ws.publish(&ev).await.0);
        out.insert(ev.id.to_hex());
    }
    out
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two relays that hold different events (and some in common) end with identical fed_AI event
/// sets; kinds outside the sync stay where they were published; once equal, further rounds
/// fetch nothing and cost well under 1 KB of reconciliation each way.
#[tokio::test]
async fn two_relays_converge_by_negentropy_and_refetch_nothing() {
    let b = RelayProc::start(&["--memory"]);
    let only_b = publish_jobs(&b, 40, "b").await;
    let a = RelayProc::start(&["--memory", "--sync-peer", &b.url, "--sync-every-secs", "1"]);
    let only_a = publish_jobs(&a, 30, "a").await;
    // In both from the start: must not be fetched by either side.
    let both_events: Vec<Event> = (0..10)
        .map(|i| job_request(&Keys::generate(), &format!("common job {i}")))
        .collect();
    for r in [&a, &b] {
        let mut ws = Ws::connect(&r.url).await;
        for e in &both_events {
            assert!(ws.publish(e).await.0);
        }
    }
    // A kind the sync does not carry, published on A only.
    let note = EventBuilder::new(Kind::TextNote, "not a market event")
        .finalize(&Keys::generate())
        .unwrap();
    assert!(Ws::connect(&a.url).await.publish(&note).await.0);

    let expected: BTreeSet<String> = only_a
        .iter()
        .chain(&only_b)
        .cloned()
        .chain(both_events.iter().map(|e| e.id.to_hex()))
        .collect();
    assert_eq!(expected.len(), 80);
    wait_until(
        "both relays to hold all 80 jobs",
        Duration::from_secs(30),
        || async { ids(&a, &[5050]).await == expected && ids(&b, &[5050]).await == expected },
    )
    .await;
    assert!(ids(&b, &[1]).await.is_empty(), "kind 1 is not synced");
    assert_eq!(ids(&a, &[1]).await.len(), 1);

    // A fetched B's 40 (and pushed its own 30); the 10 in common were never transferred.
    let fetched = metric(&a, "fedai_relay_sync_events_total{direction=\"in\"}").await;
    let pushed = metric(&a, "fedai_relay_sync_events_total{direction=\"out\"}").await;
    assert_eq!((fetched, pushed), (40.0, 30.0));

    // Equal sets: more rounds transfer nothing, and reconciliation stays small.
    let rounds0 = metric(&a, "fedai_relay_sync_rounds_total{result=\"ok\"}").await;
    let sent0 = metric(
        &a,
        "fedai_relay_sync_negentropy_bytes_total{direction=\"sent\"}",
    )
    .await;
    let recv0 = metric(
        &a,
        "fedai_relay_sync_negentropy_bytes_total{direction=\"received\"}",
    )
    .await;
    wait_until("two more rounds", Duration::from_secs(15), || async {
        metric(&a, "fedai_relay_sync_rounds_total{result=\"ok\"}").await >= rounds0 + 2.0
    })
    .await;
    let rounds = metric(&a, "fedai_relay_sync_rounds_total{result=\"ok\"}").await - rounds0;
    let sent = metric(
        &a,
        "fedai_relay_sync_negentropy_bytes_total{direction=\"sent\"}",
    )
    .await
        - sent0;
    let recv = metric(
        &a,
        "fedai_relay_sync_negentropy_bytes_total{direction=\"received\"}",
    )
    .await
        - recv0;
    assert_eq!(
        metric(&a, "fedai_relay_sync_events_total{direction=\"in\"}").await,
        40.0,
        "nothing fetched again"
    );
    eprintln!(
        "equal sets of 80: {:.0} B sent, {:.0} B received per round",
        sent / rounds,
        recv / rounds
    );
    assert!(sent / rounds < 1024.0 && recv / rounds < 1024.0);
}

/// Between rounds the live tail brings the peer's new events at once, through the relay's own
/// checks: a forged event the peer never stored cannot come this way, and an event a client
/// subscribed here hears arrives live.
#[tokio::test]
async fn live_tail_brings_new_events_between_rounds() {
    let b = RelayProc::start(&["--memory"]);
    let a = RelayProc::start(&[
        "--memory",
        "--sync-peer",
        &b.url,
        "--sync-every-secs",
        "3600",
    ]);
    wait_until("the first round", Duration::from_secs(15), || async {
        metric(&a, "fedai_relay_sync_rounds_total{result=\"ok\"}").await >= 1.0
    })
    .await;
    // A customer of relay A waits for job requests.
    let mut sub = Ws::connect(&a.url).await;
    sub.send(json!(["REQ", "live", {"kinds": [5050], "limit": 0}]))
        .await;
    let ev = job_request(&Keys::generate(), "published on B after the round");
    let t = Instant::now();
    assert!(Ws::connect(&b.url).await.publish(&ev).await.0);
    loop {
        let m = sub
            .recv(Duration::from_secs(10))
            .await
            .expect("the event arrives live");
        if m[0] == "EVENT" && m[2]["id"] == ev.id.to_hex() {
            break;
        }
    }
    eprintln!("B → A live: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(ids(&a, &[5050]).await.len(), 1);
}
