//! Stays up and keeps serving (issue 18): bursts of other people's traffic, on real processes.

use std::time::Duration;

use fedai_client::RunOptions;
use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::LocalModel;
use fedai_tests::{client, nsec, tiny_job, wait_for_workers, RelayProc, WorkerProc, Ws};

/// `n` kind-1 notes, each from a fresh key (what per-pubkey limits cannot stop).
fn noise(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            EventBuilder::new(Kind::TextNote, format!("noise {i}"))
                .finalize(&Keys::generate())
                .unwrap()
        })
        .collect()
}

/// A burst of unrelated notes overflows the relay's live buffer, which closes the live
/// subscriptions of every connection (nostr-sdk's LocalRelay: `CLOSED "error: live event buffer
/// overflow"`). The worker subscribes again from its last event and still hears jobs; the
/// customer's own subscription to its job's answers is re-opened too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unrelated_events_never_silences_a_worker_or_a_customer() {
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let data = fedai_tests::temp_dir("burst");
    let relay = RelayProc::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--events-per-minute",
        "10000000",
        "--events-per-minute-per-pubkey",
        "1000",
    ]);
    let (sk, pk) = nsec();
    let worker = WorkerProc::start(&sk, &relay.url, &tiny.url, &[]);
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    let opts = RunOptions {
        worker: Some(pk),
        max_attempts: 1,
        timeout: Duration::from_secs(30),
        ..RunOptions::default()
    };
    // Jobs back to back while the burst runs: their answers arrive while the relay is cutting
    // live subscriptions, the customer's included.
    let bursting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let during = {
        let (relay_url, bursting) = (relay.url.clone(), bursting.clone());
        tokio::spawn(async move {
            let c = fedai_client::FedaiClient::connect(&[relay_url], Keys::generate())
                .await
                .unwrap();
            let mut outcomes = Vec::new();
            while bursting.load(std::sync::atomic::Ordering::SeqCst) {
                // A prompt of its own: the same request twice in one second is one event.
                let prompt = format!("Job {}: count slowly from one to forty:", outcomes.len());
                let job = tiny_job(&prompt, 48);
                outcomes.push(c.run(job, &opts, |_| {}).await.map(|_| ()));
            }
            outcomes
        })
    };
    // The burst: 4 connections, 6,000 notes each, pipelined.
    let mut floods = Vec::new();
    for _ in 0..4 {
        let url = relay.url.clone();
        floods.push(tokio::spawn(async move {
            let events = tokio::task::spawn_blocking(|| noise(6_000)).await.unwrap();
            let mut ws = Ws::connect(&url).await;
            ws.publish_many(&events)
                .await
                .iter()
                .filter(|(ok, _)| *ok)
                .count()
        }));
    }
    let t0 = std::time::Instant::now();
    let mut stored = 0;
    for f in floods {
        stored += f.await.unwrap();
    }
    eprintln!("burst: {stored} stored in {:?}", t0.elapsed());
    assert!(
        stored > 20_000,
        "the relay took the burst ({stored} stored)"
    );
    // Precondition: the burst did cut live subscriptions (otherwise this test proves nothing).
    assert!(
        relay
            .logs()
            .contains("Closing live subscriptions after broadcast overflow"),
        "the burst did not overflow the relay's live buffer"
    );
    bursting.store(false, std::sync::atomic::Ordering::SeqCst);
    let during = during.await.unwrap();
    let failed: Vec<_> = during.iter().filter(|o| o.is_err()).collect();
    eprintln!(
        "burst: {} jobs during the burst, {} failed",
        during.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "jobs failed during the burst: {failed:?}\n{}",
        worker.logs()
    );
    assert!(
        during.len() >= 3,
        "{} jobs ran during the burst",
        during.len()
    );
    // After the burst, the worker still hears jobs (directed to it: no other worker can answer).
    let opts = RunOptions {
        worker: Some(pk),
        max_attempts: 1,
        timeout: Duration::from_secs(20),
        ..RunOptions::default()
    };
    let after = c.run(tiny_job("After the storm,", 4), &opts, |_| {}).await;
    assert!(
        after.is_ok(),
        "the worker went deaf after the burst: {after:?}\n{}",
        worker.logs()
    );
    assert!(
        worker
            .logs()
            .contains("a relay closed our subscription; subscribing again"),
        "{}",
        worker.logs()
    );
}
