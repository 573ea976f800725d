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

/// Three relays, no one on all of them: worker 1 reads R1 and R2, worker 2 only R1, the
/// customer knows only R3, which syncs with R1 and R2. The customer finds both workers through
/// R3, posts each job where its worker reads (and names those relays in the request), and gets
/// verified answers. Then R2 dies in the middle of a streamed job of worker 1: the job
/// completes over R1 with one result, and no failover.
#[tokio::test]
async fn a_market_over_three_relays_survives_one_dying() {
    use fedai_client::{JobUpdate, RunOptions};
    use std::sync::{Arc, Mutex};
    let llama = fedai_tests::llama(fedai_runners::local::LocalModel::Tiny, "tiny", 2).await;
    let r1 = RelayProc::start(&["--memory"]);
    let r2 = RelayProc::start(&["--memory"]);
    let peers = format!("{},{}", r1.url, r2.url);
    let r3 = RelayProc::start(&["--memory", "--sync-peer", &peers, "--sync-every-secs", "1"]);
    let (sk1, pk1) = fedai_tests::nsec();
    let (sk2, pk2) = fedai_tests::nsec();
    let _w1 = fedai_tests::WorkerProc::start(&sk1, &r1.url, &llama.url, &["--relay", &r2.url]);
    let _w2 = fedai_tests::WorkerProc::start(&sk2, &r1.url, &llama.url, &[]);
    // By default a worker's relays at private addresses are not reached (an ad must not open
    // connections into the customer's network): the job still gets through, by sync alone.
    let guarded = fedai_tests::client(&r3).await;
    let ads = fedai_tests::wait_for_workers(&guarded, 2).await;
    assert!(
        ads.iter().any(|a| a.worker == pk2),
        "worker 2's ad reached R3 by sync"
    );
    let pinned = RunOptions {
        worker: Some(pk2),
        timeout: Duration::from_secs(30),
        ..RunOptions::default()
    };
    let out = guarded
        .run(
            fedai_tests::tiny_job("through sync only", 4),
            &pinned,
            |_| {},
        )
        .await
        .expect("answered through the synced relays");
    assert!(
        out.request.request.relays.is_empty(),
        "no loopback relay named without allow_private_relays"
    );
    guarded.shutdown().await;
    // A local market: this customer allows them.
    let c = fedai_client::FedaiClient::builder()
        .relay(r3.url.clone())
        .allow_private_relays(true)
        .connect()
        .await
        .unwrap();
    fedai_tests::wait_for_workers(&c, 2).await;

    // Worker 2 reads only R1: the customer posts there too.
    let opts = RunOptions {
        worker: Some(pk2),
        timeout: Duration::from_secs(30),
        ..RunOptions::default()
    };
    let out = c
        .run(fedai_tests::tiny_job("over three relays", 8), &opts, |_| {})
        .await
        .expect("worker 2 answers");
    assert_eq!(out.result.worker, pk2);
    let on_r1 = {
        let mut ws = Ws::connect(&r1.url).await;
        ws.query("req", json!({"ids": [out.request.id.to_hex()]}))
            .await
    };
    assert_eq!(
        on_r1.len(),
        1,
        "the request was posted on the worker's relay"
    );
    let named: Vec<&str> = on_r1[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t[0] == "relays")
        .expect("a relays tag")
        .as_array()
        .unwrap()[1..]
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let norm = |u: &str| u.trim_end_matches('/').to_owned();
    let named: Vec<String> = named.into_iter().map(norm).collect();
    assert!(
        named.contains(&norm(&r1.url)) && named.contains(&norm(&r3.url)),
        "{named:?}"
    );

    // Worker 1, streaming; R2 is killed at the first token.
    let r2 = Arc::new(Mutex::new(Some(r2)));
    let mut req = fedai_tests::tiny_job("a long answer while a relay dies", 400);
    req.params.stream = true;
    let opts = RunOptions {
        worker: Some(pk1),
        timeout: Duration::from_secs(60),
        ..RunOptions::default()
    };
    let (mut partials, mut failovers) = (0, 0);
    let killer = r2.clone();
    let out = c
        .run(req, &opts, |u| match u {
            JobUpdate::Partial(_) => {
                partials += 1;
                if let Some(r) = killer.lock().unwrap().take() {
                    drop(r); // SIGKILL
                }
            }
            JobUpdate::Failover { .. } => failovers += 1,
            _ => {}
        })
        .await
        .expect("the job completes over the relays left");
    assert!(r2.lock().unwrap().is_none(), "R2 was killed mid-job");
    assert_eq!(out.result.worker, pk1);
    assert_eq!(failovers, 0);
    assert!(
        partials > 1,
        "streamed over R1 after R2 died ({partials} chunks)"
    );
    let usage = out.result.result.usage.output_tokens;
    assert!(usage > 16, "the whole answer arrived: {usage} tokens");
    let meter = out.metering.as_ref().expect("metering arrived").0.clone();
    assert_eq!(meter.record.usage.output_tokens, usage);
    c.shutdown().await;
}

/// What this relay refuses from a peer (here: job requests without the proof of work it asks
/// for) is refused once and not fetched again every round.
#[tokio::test]
async fn events_refused_from_a_peer_are_not_fetched_again() {
    let b = RelayProc::start(&["--memory"]);
    publish_jobs(&b, 5, "no pow").await;
    let a = RelayProc::start(&[
        "--memory",
        "--min-pow-jobs",
        "8",
        "--sync-peer",
        &b.url,
        "--sync-every-secs",
        "1",
        "--sync-no-push",
    ]);
    wait_until("three rounds", Duration::from_secs(20), || async {
        metric(&a, "fedai_relay_sync_rounds_total{result=\"ok\"}").await >= 3.0
    })
    .await;
    assert_eq!(
        metric(&a, "fedai_relay_events_rejected_total{reason=\"pow\"}").await,
        5.0,
        "each refused once"
    );
    assert!(ids(&a, &[5050]).await.is_empty());
}
