//! The market end to end: the scheduler's choice on live ads, failover when a worker dies
//! mid-job or answers with an invalid result, and auctions (quotes → award). Real relay,
//! real workers, a real llama.cpp server; the one forger is a test-process worker that signs
//! well-formed events with a false metering record, which is the point of the test.

use std::time::Duration;

use fedai_client::{ClientError, JobUpdate, RunOptions};
use fedai_protocol::capability::PaymentInfo;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, JobRequest, JobResult, MeteringRecord, Price, Usage};
use fedai_runners::local::LocalModel;
use fedai_scheduler::{Policy, Strategy};
use fedai_tests::{client, nsec, tiny_job, wait_for_workers, RelayProc, WorkerProc};

fn cheapest(timeout: Duration) -> RunOptions {
    RunOptions {
        policy: Policy::new(Strategy::Cheapest),
        timeout,
        ..RunOptions::default()
    }
}

/// Results on the relay for a request, by worker.
async fn results_for(c: &fedai_client::FedaiClient, request: EventId) -> Vec<PublicKey> {
    c.fetch(
        Filter::new()
            .kind(Kind::from_u16(kinds::JOB_RESULT))
            .event(request),
        Duration::from_secs(2),
    )
    .await
    .unwrap()
    .iter()
    .map(|e| e.pubkey)
    .collect()
}

#[tokio::test]
async fn a_worker_killed_mid_job_fails_over_to_the_next_and_the_customer_gets_one_answer() {
    let llama = fedai_tests::llama(LocalModel::SmolLm2, "smol", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk1, pk1) = nsec();
    let (sk2, pk2) = nsec();
    // The free worker is the cheapest choice; it will die.
    let mut w1 = WorkerProc::start(&sk1, &relay.url, &llama.url, &[]);
    let _w2 = WorkerProc::start(
        &sk2,
        &relay.url,
        &llama.url,
        &["--price", "smol=1000:1000:1000"],
    );
    let c = client(&relay).await;
    wait_for_workers(&c, 2).await;
    let mut req = JobRequest::chat("Count from one to twenty in words.");
    req.params.model = Some("smol".into());
    req.params.max_tokens = Some(48);
    req.params.stream = true;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = cheapest(Duration::from_secs(8));
    let job = tokio::spawn(async move {
        let r = c.run(req, &opts, move |u| {
            let _ = tx.send(u);
        });
        let r = r.await;
        (r, c)
    });
    let mut submitted = Vec::new();
    let mut failovers = Vec::new();
    let mut killed = false;
    while let Some(u) = rx.recv().await {
        match u {
            JobUpdate::Submitted(id) => submitted.push(id),
            JobUpdate::Partial(_) if !killed => {
                w1.kill();
                killed = true;
            }
            JobUpdate::Failover { worker, .. } => failovers.push(worker),
            _ => {}
        }
    }
    let (outcome, c) = job.await.unwrap();
    assert!(killed, "the first worker streamed before it was killed");
    let done = outcome.expect("the job completes on the second worker");
    assert_eq!(done.result.worker, pk2);
    assert_eq!(failovers, vec![pk1]);
    assert_eq!(submitted.len(), 2, "one request per attempt");
    assert!(done.metering.is_some(), "metering verified");
    // The dead worker is cooling down in this customer's statistics.
    let s = c.worker_stats(&pk1).unwrap();
    assert!(s.cooldown_until_ms > 0 && s.penalty > 0, "{s:?}");
    // One answer: the first attempt has no result anywhere, the second exactly one.
    assert!(results_for(&c, submitted[0]).await.is_empty());
    assert_eq!(results_for(&c, submitted[1]).await, vec![pk2]);
    c.shutdown().await;
}

/// A worker that advertises the lowest price and answers every job directed to it with a
/// well-formed, validly signed result whose metering record lies about the prompt.
async fn forger(relay: &str, keys: Keys) -> tokio::task::JoinHandle<()> {
    let free = Price {
        model: "tiny".into(),
        base_msat: 0,
        per_1k_input_msat: 0,
        per_1k_output_msat: 0,
    };
    let ad = fedai_tests::scripted_ad("forger", relay, free, PaymentInfo::default());
    fedai_tests::scripted_worker(relay, keys, ad, |event, p, keys| {
        let usage = Usage {
            input_tokens: 3,
            output_tokens: 2,
        };
        let result = JobResult::for_request(event, p, "forged".into(), "tiny".into(), usage)
            .to_event(keys)
            .unwrap();
        let metering = MeteringRecord {
            request_id: event.id,
            result_id: result.id,
            customer: event.pubkey,
            model: "tiny".into(),
            prompt_sha256: "00".repeat(32),
            usage,
            wall_ms: 1,
            bytes_in: p.input_data.len() as u64,
            bytes_out: 6,
            price_msat: 0,
            payment_hash: None,
        }
        .to_event(keys)
        .unwrap();
        vec![result, metering]
    })
    .await
}

#[tokio::test]
async fn an_invalid_result_is_refused_and_the_job_moves_to_an_honest_worker() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let forger_keys = Keys::generate();
    let _f = forger(&relay.url, forger_keys.clone()).await;
    let (sk, pk) = nsec();
    let _w = WorkerProc::start(&sk, &relay.url, &llama.url, &["--price", "tiny=10:10:10"]);
    let c = client(&relay).await;
    let ads = wait_for_workers(&c, 2).await;
    let req = tiny_job("the quick brown fox", 8);
    let first = c.choose(&ads, &req, &cheapest(Duration::from_secs(10)));
    assert_eq!(
        first.unwrap().worker,
        forger_keys.public_key(),
        "cheapest first"
    );
    let mut failovers = Vec::new();
    let done = c
        .run(req, &cheapest(Duration::from_secs(20)), |u| {
            if let JobUpdate::Failover { worker, error } = u {
                failovers.push((worker, error));
            }
        })
        .await
        .expect("the honest worker answers");
    assert_eq!(done.result.worker, pk);
    assert_ne!(done.output, "forged");
    assert_eq!(failovers.len(), 1);
    assert_eq!(failovers[0].0, forger_keys.public_key());
    assert!(
        failovers[0].1.contains("invalid result"),
        "{}",
        failovers[0].1
    );
    // An invalid result costs the forger the most: straight to the longest cooldown.
    let s = c.worker_stats(&forger_keys.public_key()).unwrap();
    assert!(s.cooldown_until_ms >= 600_000, "{s:?}");
    // The next job does not go near it.
    let again = c
        .run(
            tiny_job("jumps over", 4),
            &cheapest(Duration::from_secs(20)),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(again.result.worker, pk);
    c.shutdown().await;
}

#[tokio::test]
async fn an_auction_awards_the_cheapest_quote_and_only_the_winner_runs() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk1, pk1) = nsec();
    let (sk2, pk2) = nsec();
    let _w1 = WorkerProc::start(
        &sk1,
        &relay.url,
        &llama.url,
        &["--price", "tiny=5000:1000:1000"],
    );
    let _w2 = WorkerProc::start(
        &sk2,
        &relay.url,
        &llama.url,
        &["--price", "tiny=100:1000:1000"],
    );
    let c = client(&relay).await;
    wait_for_workers(&c, 2).await;

    // Quotes only: both workers quote their advertised price for this job; nobody runs it.
    let quotes = c
        .quotes(
            tiny_job("once upon a time", 16),
            1_000_000,
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
    assert_eq!(quotes.len(), 2, "{quotes:?}");
    assert_eq!(quotes[0].worker, pk2);
    assert_eq!(quotes[1].worker, pk1);
    assert_eq!(quotes[1].amount_msat - quotes[0].amount_msat, 4_900);
    // A bid under a worker's price gets no quote from it.
    let low = c
        .quotes(
            tiny_job("once upon a time", 16),
            1_000,
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
    assert_eq!(low.iter().map(|q| q.worker).collect::<Vec<_>>(), vec![pk2]);

    // The auction: the cheaper quote wins under `cheapest`, and only the winner runs.
    let mut submitted = None;
    let opts = RunOptions {
        auction: Some(Duration::from_millis(1500)),
        ..cheapest(Duration::from_secs(20))
    };
    let done = c
        .run(tiny_job("once upon a time", 16), &opts, |u| {
            if let JobUpdate::Submitted(id) = u {
                submitted = Some(id);
            }
        })
        .await
        .unwrap();
    assert_eq!(done.result.worker, pk2);
    let id = submitted.unwrap();
    assert_eq!(done.request.id, id);
    let awards = c
        .fetch(
            Filter::new().kind(Kind::from_u16(kinds::AWARD)).event(id),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(awards.len(), 1);
    assert!(awards[0].tags.public_keys().any(|p| p == pk2));
    assert_eq!(results_for(&c, id).await, vec![pk2], "the loser never ran");
    // A bid below every quote: no worker, a clear error.
    let opts = RunOptions {
        max_price_msat: Some(10),
        ..opts
    };
    let err = c
        .run(tiny_job("once upon a time", 16), &opts, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoWorker), "{err}");
    c.shutdown().await;
}

#[tokio::test]
async fn the_ad_follows_the_load_between_heartbeats() {
    let llama = fedai_tests::llama(LocalModel::SmolLm2, "smol", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    // Heartbeats far apart: only the load-driven refresh can show the change.
    let _w = WorkerProc::start(&sk, &relay.url, &llama.url, &["--heartbeat-secs", "300"]);
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    let mut req = JobRequest::chat("Tell a story about a lighthouse keeper.");
    req.params.model = Some("smol".into());
    req.params.max_tokens = Some(120);
    req.provider = Some(pk);
    let c = std::sync::Arc::new(c);
    let job = {
        let c = c.clone();
        tokio::spawn(async move { c.submit(req, false, Duration::from_secs(60), |_| {}).await })
    };
    let in_flight = |c: std::sync::Arc<fedai_client::FedaiClient>| async move {
        c.workers().await.unwrap().first().map(|a| a.ad.in_flight)
    };
    let mut seen_busy = false;
    for _ in 0..50 {
        if in_flight(c.clone()).await == Some(1) {
            seen_busy = true;
            break;
        }
        if job.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_busy, "the ad showed the running job");
    job.await.unwrap().unwrap();
    let mut idle = false;
    for _ in 0..40 {
        if in_flight(c.clone()).await == Some(0) {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle, "the ad showed the worker idle again");
}

/// A worker that lies about its model (it advertises the tiny model and serves SmolLM2 under
/// its name) is caught by spot checks: its answers to a seeded request disagree with those of
/// two honest workers, which agree. It loses trust, is not chosen again in this run, and what
/// was learnt survives the customer's restart (the reputation file). Honest workers are never
/// flagged. Prints how many jobs it took.
#[tokio::test]
async fn spot_checks_catch_a_worker_that_serves_another_model() {
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let other = fedai_tests::llama(LocalModel::SmolLm2, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk1, h1) = nsec();
    let (sk2, h2) = nsec();
    let (skl, liar) = nsec();
    let _w1 = WorkerProc::start(&sk1, &relay.url, &tiny.url, &[]);
    let _w2 = WorkerProc::start(&sk2, &relay.url, &tiny.url, &[]);
    let _wl = WorkerProc::start(&skl, &relay.url, &other.url, &[]);
    let c = client(&relay).await;
    wait_for_workers(&c, 3).await;
    let opts = RunOptions {
        timeout: Duration::from_secs(60),
        spot_check: 1.0,
        ..RunOptions::default()
    };
    let mut caught_after = None;
    // The scheduler prefers the faster honest workers (SmolLM2 is slower than the tiny model,
    // more so on a loaded machine), so the liar answers or referees only some jobs: up to 30.
    for i in 1..=30 {
        let req = tiny_job(&format!("spot check prompt number {i}"), 12);
        let out = c.run(req, &opts, |_| {}).await.expect("a job");
        let spot = out.spot_check.expect("every job is checked at rate 1");
        assert!(spot.workers.len() >= 2, "{spot:?}");
        match spot.verdict {
            fedai_client::SpotVerdict::Caught(w) => {
                assert_eq!(w, liar, "only the liar is ever caught");
                caught_after = Some(i);
                break;
            }
            fedai_client::SpotVerdict::Agree => {
                assert!(
                    !spot.workers.contains(&liar),
                    "the liar never agrees: {spot:?}"
                );
            }
            v => panic!("with two honest workers a check concludes: {v:?}"),
        }
    }
    let n = caught_after.expect("caught within 30 jobs");
    eprintln!("the liar was caught after {n} job(s)");
    let s = c.worker_stats(&liar).unwrap();
    assert_eq!(s.spot_failed, 1);
    for h in [h1, h2] {
        assert_eq!(c.worker_stats(&h).map_or(0, |s| s.spot_failed), 0);
    }
    // Caught: not chosen again (longest cooldown), checks or not.
    let plain = RunOptions {
        timeout: Duration::from_secs(60),
        ..RunOptions::default()
    };
    for i in 0..4 {
        let out = c
            .run(tiny_job(&format!("after the catch {i}"), 4), &plain, |_| {})
            .await
            .unwrap();
        assert_ne!(out.result.worker, liar);
    }
    // Kept across runs.
    let file = fedai_tests::temp_dir("spot").join("reputation.json");
    c.save_reputation(&file).unwrap();
    c.shutdown().await;
    let again = client(&relay).await;
    again.load_reputation(&file).unwrap();
    let kept = again.worker_stats(&liar).unwrap();
    assert_eq!((kept.spot_failed, kept.penalty), (s.spot_failed, s.penalty));
    assert!(kept.trust() < again.worker_stats(&h1).map_or(0.5, |s| s.trust()));
    again.shutdown().await;
}

/// Attestations (fedai-06): customer A attests what it saw; customer B, who follows A, weighs
/// that into its choice — A's praise of worker 1 and blame of worker 2 count — while a
/// stranger's praise of worker 2 (after a real job) and blame of worker 1 count for nothing.
#[tokio::test]
async fn attestations_from_follows_count_and_strangers_do_not() {
    use fedai_protocol::{Attestation, AttestationVerdict};
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk1, w1) = nsec();
    let (sk2, w2) = nsec();
    let _a = WorkerProc::start(&sk1, &relay.url, &tiny.url, &[]);
    let _b = WorkerProc::start(&sk2, &relay.url, &tiny.url, &[]);
    let (ka, kb, ks) = (Keys::generate(), Keys::generate(), Keys::generate());
    let connect = |k: Keys| {
        let url = relay.url.clone();
        async move { fedai_client::FedaiClient::connect(&[url], k).await.unwrap() }
    };
    let (a, b, s) = (
        connect(ka.clone()).await,
        connect(kb.clone()).await,
        connect(ks).await,
    );
    wait_for_workers(&a, 2).await;
    let on = |w: PublicKey| RunOptions {
        worker: Some(w),
        timeout: Duration::from_secs(60),
        attest: true,
        ..RunOptions::default()
    };
    // A: worker 1 delivered (attested by the run); worker 2 failed (said by hand).
    let done = a
        .run(tiny_job("attested job", 4), &on(w1), |_| {})
        .await
        .unwrap();
    a.attest(&Attestation {
        worker: w2,
        verdict: AttestationVerdict::Failed,
        request_id: done.request.id,
        result_id: None,
        metering_id: None,
    })
    .await
    .unwrap();
    // The stranger: a free job on worker 2, attested, and blame for worker 1.
    let theirs = s
        .run(tiny_job("stranger's job", 4), &on(w2), |_| {})
        .await
        .unwrap();
    assert_eq!(theirs.result.worker, w2);
    s.attest(&Attestation {
        worker: w1,
        verdict: AttestationVerdict::Mismatch,
        request_id: theirs.request.id,
        result_id: None,
        metering_id: None,
    })
    .await
    .unwrap();
    // B follows A (NIP-02).
    let contacts = EventBuilder::new(Kind::ContactList, "")
        .tag(Tag::public_key(ka.public_key()))
        .finalize(&kb)
        .unwrap();
    assert!(
        fedai_tests::Ws::connect(&relay.url)
            .await
            .publish(&contacts)
            .await
            .0
    );
    let follows = b.follows().await.unwrap();
    assert_eq!(follows, vec![ka.public_key()]);
    let w = b.weigh_attestations(&follows).await.unwrap();
    assert_eq!(
        (w.read, w.counted),
        (2, 2),
        "A's two are read and count; the stranger's are not even read: {w:?}"
    );
    let (s1, s2) = (b.worker_stats(&w1).unwrap(), b.worker_stats(&w2).unwrap());
    assert_eq!((s1.vouched, s1.reported), (1, 0));
    assert_eq!((s2.vouched, s2.reported), (0, 1));
    assert!(
        s1.trust() > 0.5 && s2.trust() < 0.5,
        "{} {}",
        s1.trust(),
        s2.trust()
    );
    // Without follows, nobody's word counts here (all jobs were free).
    let w = b.weigh_attestations(&[]).await.unwrap();
    assert_eq!(w.counted, 0);
    assert_eq!(
        b.worker_stats(&w1).unwrap().vouched,
        0,
        "an earlier weighing is replaced"
    );
    for c in [a, b, s] {
        c.shutdown().await;
    }
}
