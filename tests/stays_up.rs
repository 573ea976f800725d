//! Stays up and keeps serving (issue 18): bursts of other people's traffic, on real processes.

use std::time::Duration;

use fedai_client::RunOptions;
use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::LocalModel;
use fedai_tests::{client, nsec, tiny_job, wait_for_workers, RelayProc, WorkerProc, Ws};

/// `n` kind-1 notes of about 1 KB, each from a fresh key (what per-pubkey limits cannot stop).
fn noise(n: usize) -> Vec<Event> {
    let pad = "~".repeat(1000);
    (0..n)
        .map(|i| {
            EventBuilder::new(Kind::TextNote, format!("noise {i} {pad}"))
                .finalize(&Keys::generate())
                .unwrap()
        })
        .collect()
}

/// A burst of unrelated notes (24,000 from fresh keys, ~30 MB) while jobs run. The relay queues
/// for each connection only what its own filters match: a subscriber that stopped reading the
/// notes it asked for is cut (one `CLOSED "error: slow reader…"` naming its subscription), while
/// the worker and the customer, who read at a normal pace, lose nothing and are never cut.
/// (Before the relay owned its subscriptions, nostr-sdk's LocalRelay closed every connection's
/// live subscriptions on such a burst.)
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
        // Under this burst a relay on 2 cores takes seconds to store an event: silence is not
        // what this test is about.
        ack_timeout: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(30),
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
    // A subscriber that asks for the notes and then stops reading.
    let mut paused = Ws::connect(&relay.url).await;
    paused
        .query("notes", serde_json::json!({"kinds": [1], "limit": 0}))
        .await;
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
    // Precondition: the burst was big enough to overflow a reader that does not keep up
    // (otherwise this test proves nothing), and only that reader was cut.
    let mut cut = Vec::new();
    while let Some(m) = paused.recv(Duration::from_secs(2)).await {
        if m[0] == "CLOSED" {
            cut.push((m[1].to_string(), m[2].to_string()));
        }
    }
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(cut[0].0, "\"notes\"");
    assert!(cut[0].1.starts_with("\"error: slow reader"), "{cut:?}");
    let (_, metrics) = relay.http_get("/metrics", "*/*").await;
    assert!(
        metrics.contains("fedai_relay_subscriptions_cut_total 1\n"),
        "{metrics}"
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
    // After the burst, the worker still hears jobs (directed to it: no other worker can answer)
    // and says it is healthy.
    let back = async {
        loop {
            let ads = c.workers().await.unwrap();
            if ads.iter().any(|a| a.worker == pk && a.ad.healthy) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(30), back)
            .await
            .is_ok(),
        "the worker's ad did not come back healthy after the burst\n{}",
        worker.logs()
    );
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
        !worker.logs().contains("a relay closed our subscription"),
        "the worker, which keeps up, was cut\n{}",
        worker.logs()
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&data);
}

/// A worker killed while its ad still says healthy: the customer fails over once the worker has
/// not acknowledged the request within the ack window (seconds), not at the attempt's deadline
/// (two minutes), and gets one answer, from the live worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_costs_seconds_not_the_timeout() {
    use fedai_scheduler::{Policy, Strategy};
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk_dead, pk_dead) = nsec();
    let (sk_live, pk_live) = nsec();
    // The dead worker is the cheapest: a cheapest-first customer picks it first.
    let mut dead = WorkerProc::start(&sk_dead, &relay.url, &tiny.url, &["--price", "tiny=0:0:1"]);
    let _live = WorkerProc::start(
        &sk_live,
        &relay.url,
        &tiny.url,
        &["--price", "tiny=1000:1000:1000"],
    );
    let c = client(&relay).await;
    wait_for_workers(&c, 2).await;
    dead.kill();
    let mut policy = Policy::new(Strategy::Cheapest);
    policy.top_n = 1;
    let opts = RunOptions {
        policy,
        timeout: Duration::from_secs(120),
        max_attempts: 3,
        ..RunOptions::default()
    };
    let t0 = std::time::Instant::now();
    let mut failovers = Vec::new();
    let out = c
        .run(tiny_job("Once upon a time", 8), &opts, |u| {
            if let fedai_client::JobUpdate::Failover { worker, error } = u {
                failovers.push((worker, error));
            }
        })
        .await
        .expect("answered by the live worker");
    let took = t0.elapsed();
    assert_eq!(out.result.worker, pk_live);
    assert_eq!(failovers.len(), 1, "{failovers:?}");
    assert_eq!(failovers[0].0, pk_dead);
    assert!(failovers[0].1.contains("silent"), "{failovers:?}");
    assert!(
        took < Duration::from_secs(25),
        "a dead worker cost {took:?} (ack window {:?})",
        opts.ack_timeout
    );
}

/// More jobs in flight than runner slots, within what the workers can absorb (slots + queue):
/// every job is answered — queued jobs are told their place and wait — none fails as "busy",
/// and each is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_over_the_slots_but_within_capacity_never_fails_a_job() {
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let args = ["--max-concurrent", "2", "--queue", "4"];
    let (sk1, _) = nsec();
    let (sk2, _) = nsec();
    let _w1 = WorkerProc::start(&sk1, &relay.url, &tiny.url, &args);
    let _w2 = WorkerProc::start(&sk2, &relay.url, &tiny.url, &args);
    let c = std::sync::Arc::new(client(&relay).await);
    wait_for_workers(&c, 2).await;
    // 60 jobs, 12 in flight at a time: three times the 4 runner slots.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(12));
    let mut jobs = Vec::new();
    for n in 0..60 {
        let (c, permit) = (c.clone(), in_flight.clone().acquire_owned().await.unwrap());
        jobs.push(tokio::spawn(async move {
            let _permit = permit;
            let opts = RunOptions {
                timeout: Duration::from_secs(60),
                ..RunOptions::default()
            };
            c.run(
                tiny_job(&format!("Job {n}: once upon a time"), 24),
                &opts,
                |_| {},
            )
            .await
            .map(|o| o.request.id)
        }));
    }
    let mut answered = std::collections::HashSet::new();
    let mut failed = Vec::new();
    for j in jobs {
        match j.await.unwrap() {
            Ok(id) => assert!(answered.insert(id), "request {id} answered twice"),
            Err(e) => failed.push(e.to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 60 failed: {failed:?}",
        failed.len()
    );
    // Each request has exactly one result on the relay.
    let results = c
        .fetch(
            Filter::new().kind(Kind::from_u16(fedai_protocol::kinds::JOB_RESULT)),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 60, "one result per job");
    // Some jobs waited in a worker's queue, and were told their place.
    let feedback = c
        .fetch(
            Filter::new().kind(Kind::from_u16(fedai_protocol::kinds::JOB_FEEDBACK)),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    let queued = feedback
        .iter()
        .filter_map(|e| fedai_protocol::JobFeedback::from_event(e, None).ok())
        .filter(|f| f.info.as_deref().is_some_and(|i| i.starts_with("queued: ")))
        .count();
    assert!(queued > 0, "no job was queued");
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Idle connections, each holding one live subscription as a real client does, cost the relay
/// little memory (target < 64 KiB each; proxying each connection into nostr-sdk's LocalRelay
/// cost ~410 KB), the last of them still hears a new event, and the memory is given back after
/// they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_little_memory() {
    const N: usize = 2_000;
    let relay = RelayProc::start(&["--memory", "--max-connections", "2100"]);
    let pid = relay.child.id();
    // Warm up: one connection through every path, so allocator and runtime start-up costs are
    // in the baseline.
    let mut first = Ws::connect(&relay.url).await;
    first
        .query("warm", serde_json::json!({"kinds": [5050], "limit": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid);
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut ws = Ws::connect(&relay.url).await;
        ws.query(
            &format!("s{i}"),
            serde_json::json!({"kinds": [5050], "limit": 1}),
        )
        .await;
        conns.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss(pid);
    let per_conn = during.saturating_sub(before) / N as u64;
    eprintln!(
        "idle connections: rss {} KiB before, {} KiB with {N} connections: {} bytes each",
        before / 1024,
        during / 1024,
        per_conn
    );
    // Still serving: a live subscription among them hears a new event.
    let keys = Keys::generate();
    let ev = fedai_tests::job_request(&keys, "still there?");
    assert!(first.publish(&ev).await.0);
    let mut heard = false;
    while let Some(m) = conns[N - 1].recv(Duration::from_secs(5)).await {
        if m[0] == "EVENT" && m[2]["id"] == ev.id.to_hex() {
            heard = true;
            break;
        }
    }
    assert!(heard, "the last idle subscriber heard the new event");
    assert!(
        per_conn < 64 * 1024,
        "{per_conn} bytes per idle connection (target < 64 KiB)"
    );
    drop(conns);
    // The relay gives freed memory back within its 10 s trim period.
    let grew = during.saturating_sub(before);
    let mut after = rss(pid);
    for _ in 0..30 {
        if after < before + grew / 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = rss(pid);
    }
    eprintln!(
        "idle connections: rss {} KiB after closing them",
        after / 1024
    );
    assert!(
        after < before + grew / 4,
        "memory not given back: {} KiB before, {} KiB with, {} KiB after",
        before / 1024,
        during / 1024,
        after / 1024
    );
}
