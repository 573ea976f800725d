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
            let oks = ws.publish_many(&events).await;
            // The relay's bound on writes in flight may refuse part of a flood, as busy.
            let other: Vec<_> = oks
                .iter()
                .filter(|(ok, m)| !ok && !m.starts_with("rate-limited: relay busy"))
                .collect();
            assert!(other.is_empty(), "{other:?}");
            oks.iter().filter(|(ok, _)| *ok).count()
        }));
    }
    let t0 = std::time::Instant::now();
    let mut stored = 0;
    for f in floods {
        stored += f.await.unwrap();
    }
    eprintln!("burst: {stored} stored in {:?}", t0.elapsed());
    assert!(stored > 8_000, "the relay took the burst ({stored} stored)");
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
    // FEDAI_IDLE_CONNECTIONS=10000 for the figure in docs/benchmarks.md (needs `ulimit -n` above
    // it, in this process and the relay's).
    let n: usize = std::env::var("FEDAI_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let max = (n + 100).to_string();
    let relay = RelayProc::start(&[
        "--memory",
        "--max-connections",
        &max,
        "--max-connections-per-ip",
        &max,
    ]);
    let pid = relay.child.id();
    // Warm up: one connection through every path, so allocator and runtime start-up costs are
    // in the baseline.
    let mut first = Ws::connect(&relay.url).await;
    first
        .query("warm", serde_json::json!({"kinds": [5050], "limit": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss(pid);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
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
    let per_conn = during.saturating_sub(before) / n as u64;
    eprintln!(
        "idle connections: rss {} KiB before, {} KiB with {n} connections: {} bytes each",
        before / 1024,
        during / 1024,
        per_conn
    );
    // Still serving: a live subscription among them hears a new event.
    let keys = Keys::generate();
    let ev = fedai_tests::job_request(&keys, "still there?");
    assert!(first.publish(&ev).await.0);
    let mut heard = false;
    while let Some(m) = conns[n - 1].recv(Duration::from_secs(5)).await {
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

/// `n` kind-1 notes of about `bytes` bytes from fresh keys.
fn notes(n: usize, bytes: usize) -> Vec<Event> {
    let pad = "~".repeat(bytes);
    (0..n)
        .map(|i| {
            EventBuilder::new(Kind::TextNote, format!("{i} {pad}"))
                .finalize(&Keys::generate())
                .unwrap()
        })
        .collect()
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

/// A writer that fills the store (fresh keys, so no per-pubkey limit applies) is refused with
/// `error: storage full` once the quota is reached; the last 10% stays open to the market's
/// kinds, so job requests still get through; every event acknowledged is stored; the LMDB map
/// never fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_only_the_writes_that_do_not_fit() {
    let data = fedai_tests::temp_dir("full");
    let relay = RelayProc::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--max-store-mib",
        "2",
        "--map-size-mib",
        "64",
    ]);
    let mut ws = Ws::connect(&relay.url).await;
    // 3 MB of notes at a 2 MiB quota.
    let flood = tokio::task::spawn_blocking(|| notes(3_000, 1_000))
        .await
        .unwrap();
    let mut accepted = Vec::new();
    let mut refusals = std::collections::HashSet::new();
    for chunk in flood.chunks(200) {
        for (ev, (ok, msg)) in chunk.iter().zip(ws.publish_many(chunk).await) {
            if ok {
                accepted.push(ev.id);
            } else {
                refusals.insert(msg);
            }
        }
    }
    eprintln!(
        "full store: {} of 3000 notes accepted; refusals {refusals:?}",
        accepted.len()
    );
    // About 1.33 KB per event: the open 90% of 2 MiB holds ~1,420.
    assert!(
        (1_300..1_600).contains(&accepted.len()),
        "{} accepted",
        accepted.len()
    );
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(
        refusals
            .iter()
            .all(|m| m.starts_with("error: storage full")),
        "{refusals:?}"
    );
    // The market's kinds still fit.
    let keys = Keys::generate();
    let job = fedai_tests::job_request(&keys, "still open for business?");
    assert_eq!(ws.publish(&job).await, (true, String::new()));
    accepted.push(job.id);
    // Everything acknowledged is stored.
    let ids: Vec<String> = accepted.iter().map(|id| id.to_hex()).collect();
    let mut found = 0;
    for (i, chunk) in ids.chunks(500).enumerate() {
        // One id per lookup: a lookup that finds all its ids is closed after its EOSE.
        found += ws
            .query(&format!("check{i}"), serde_json::json!({"ids": chunk}))
            .await
            .len();
    }
    assert_eq!(found, accepted.len(), "an acknowledged event was lost");
    let (_, metrics) = relay.http_get("/metrics", "*/*").await;
    let used = metric(&metrics, "fedai_relay_store_bytes");
    let limit = metric(&metrics, "fedai_relay_store_limit_bytes");
    assert_eq!(limit, 2.0 * 1024.0 * 1024.0);
    assert!(used > 0.8 * limit && used <= limit, "{used} of {limit}");
    assert!(
        metrics.contains("fedai_relay_events_rejected_total{reason=\"storage-full\"}"),
        "{metrics}"
    );
    let on_disk = std::fs::metadata(data.join("data.mdb"))
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(0);
    eprintln!(
        "full store: estimate {used} bytes, data.mdb {on_disk} bytes on disk ({:.2}x)",
        on_disk as f64 / used
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&data);
}

/// One key may store only its daily quota; other keys are unaffected.
#[tokio::test]
async fn one_pubkey_stores_only_its_daily_quota() {
    let relay = RelayProc::start(&["--memory", "--pubkey-quota-mib", "1"]);
    let keys = Keys::generate();
    let pad = "~".repeat(10_000);
    let mine: Vec<Event> = (0..150)
        .map(|i| {
            EventBuilder::new(Kind::TextNote, format!("{i} {pad}"))
                .finalize(&keys)
                .unwrap()
        })
        .collect();
    let mut ws = Ws::connect(&relay.url).await;
    let results = ws.publish_many(&mine).await;
    let ok = results.iter().filter(|r| r.0).count();
    assert!((90..=105).contains(&ok), "{ok} of 150 × 10 KB under 1 MiB");
    let refused = results.iter().find(|r| !r.0).unwrap();
    assert!(
        refused.1.starts_with("rate-limited: storage quota"),
        "{refused:?}"
    );
    let other = EventBuilder::new(Kind::TextNote, pad)
        .finalize(&Keys::generate())
        .unwrap();
    assert!(ws.publish(&other).await.0, "another key is unaffected");
}

/// Writes in flight are bounded for all connections together, so a flood from fresh keys over
/// many connections is refused cheaply (`rate-limited: relay busy`) instead of queueing in
/// front of everyone; a connection that publishes a little (a worker, a customer) still gets
/// every event through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_key_flood_cannot_crowd_out_a_quiet_publisher() {
    let data = fedai_tests::temp_dir("flood");
    let relay = RelayProc::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--max-pending-writes",
        "32",
    ]);
    let mut floods = Vec::new();
    for _ in 0..8 {
        let url = relay.url.clone();
        floods.push(tokio::spawn(async move {
            let events = tokio::task::spawn_blocking(|| notes(2_000, 200))
                .await
                .unwrap();
            let mut ws = Ws::connect(&url).await;
            let mut busy = 0;
            for chunk in events.chunks(250) {
                busy += ws
                    .publish_many(chunk)
                    .await
                    .iter()
                    .filter(|(ok, m)| !ok && m.starts_with("rate-limited: relay busy"))
                    .count();
            }
            busy
        }));
    }
    let keys = Keys::generate();
    let mut quiet = Ws::connect(&relay.url).await;
    let mut refused = Vec::new();
    for i in 0..40 {
        let ev = fedai_tests::job_request(&keys, &format!("quiet {i}"));
        let (ok, msg) = quiet.publish(&ev).await;
        if !ok {
            refused.push(msg);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut busy = 0;
    for f in floods {
        busy += f.await.unwrap();
    }
    eprintln!("flood: {busy} of 16000 flood events refused as busy");
    assert!(busy > 0, "the bound never engaged: the test proves nothing");
    assert!(
        refused.is_empty(),
        "the quiet publisher was refused: {refused:?}"
    );
    drop(relay);
    let _ = std::fs::remove_dir_all(&data);
}

/// A relay that closes subscriptions (as public relays do, for their own reasons — here a test
/// proxy, a fake, closes every one the moment a job is published): the worker subscribes again
/// and still gets the request from the store, the customer re-opens its job's subscription and
/// gets the answer; the job succeeds with no failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_subscriptions_are_opened_again_by_worker_and_customer() {
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let proxy = fedai_tests::closing::ClosingProxy::start(&relay.url).await;
    let (sk, pk) = nsec();
    let worker = WorkerProc::start(&sk, &proxy.url, &tiny.url, &[]);
    let c = fedai_client::FedaiClient::connect(std::slice::from_ref(&proxy.url), Keys::generate())
        .await
        .unwrap();
    wait_for_workers(&c, 1).await;
    let opts = RunOptions {
        worker: Some(pk),
        max_attempts: 1,
        timeout: Duration::from_secs(30),
        ..RunOptions::default()
    };
    for round in 0..2 {
        let mut failovers = 0;
        let out = c
            .run(
                tiny_job(&format!("Round {round}: once upon a time"), 8),
                &opts,
                |u| match u {
                    fedai_client::JobUpdate::Submitted(_) => proxy.close_all(),
                    fedai_client::JobUpdate::Failover { .. } => failovers += 1,
                    _ => {}
                },
            )
            .await;
        assert!(out.is_ok(), "round {round}: {out:?}\n{}", worker.logs());
        assert_eq!(failovers, 0);
    }
    let closed = proxy.closed();
    assert!(closed.iter().any(|id| id == "fedai-jobs"), "{closed:?}");
    assert!(
        worker
            .logs()
            .contains("a relay closed our subscription; subscribing again"),
        "{}",
        worker.logs()
    );
}

/// Small, tag-heavy events take many times their JSON in LMDB (indexes): with no JSON quota at
/// all, the relay still refuses with `storage full` before its map fills — never a database
/// error, never a lost acknowledged event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lmdb_map_never_fills() {
    let data = fedai_tests::temp_dir("map");
    let relay = RelayProc::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--map-size-mib",
        "16",
        "--max-store-mib",
        "0",
        "--pubkey-quota-mib",
        "0",
    ]);
    let mut ws = Ws::connect(&relay.url).await;
    let keys = Keys::generate();
    let mut accepted = Vec::new();
    let mut refusals = std::collections::HashSet::new();
    for round in 0..40 {
        let jobs: Vec<Event> = (0..500)
            .map(|i| fedai_tests::job_request(&keys, &format!("round {round} job {i}")))
            .collect();
        for (ev, (ok, msg)) in jobs.iter().zip(ws.publish_many(&jobs).await) {
            if ok {
                accepted.push(ev.id);
            } else {
                refusals.insert(msg);
            }
        }
        if !refusals.is_empty() {
            break;
        }
    }
    eprintln!("map: {} accepted; refusals {refusals:?}", accepted.len());
    assert!(
        !refusals.is_empty(),
        "the map never came close: the test proves nothing"
    );
    assert!(
        refusals
            .iter()
            .all(|m| m.starts_with("error: storage full")),
        "{refusals:?}"
    );
    // Deletions still go through, and everything acknowledged is there.
    let deletion = EventBuilder::new(Kind::EventDeletion, "")
        .tag(Tag::event(accepted[0]))
        .finalize(&keys)
        .unwrap();
    assert!(ws.publish(&deletion).await.0);
    let mut found = 0;
    for (i, chunk) in accepted[1..].chunks(500).enumerate() {
        let ids: Vec<String> = chunk.iter().map(|id| id.to_hex()).collect();
        found += ws
            .query(&format!("c{i}"), serde_json::json!({"ids": ids}))
            .await
            .len();
    }
    assert_eq!(found, accepted.len() - 1, "an acknowledged event was lost");
    let (_, metrics) = relay.http_get("/metrics", "*/*").await;
    let disk = metric(&metrics, "fedai_relay_store_disk_bytes");
    eprintln!(
        "map: data.mdb {disk} bytes of a 16 MiB map; JSON {} bytes",
        metric(&metrics, "fedai_relay_store_bytes")
    );
    assert!(disk < 16.0 * 1024.0 * 1024.0);
    drop(relay);
    let _ = std::fs::remove_dir_all(&data);
}
