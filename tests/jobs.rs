//! Jobs end to end: the real `fedai-relay` and `fedai-worker` binaries, a real llama.cpp server
//! with real GGUF models, and the customer SDK over WebSockets.

use std::collections::HashSet;
use std::time::Duration;

use fedai_client::{ClientError, JobUpdate, RunOptions};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{
    kinds, CapabilityAd, ChatMessage, ErrorCode, FeedbackStatus, JobFeedback, JobInput, JobRequest,
};
use fedai_runners::local::LocalModel;
use fedai_tests::{client, nsec, tiny_job, wait_for_workers, RelayProc, WorkerProc};

const T: Duration = Duration::from_secs(60);

#[tokio::test]
async fn open_directed_streaming_and_private_jobs() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk1, pk1) = nsec();
    let (sk2, pk2) = nsec();
    let w1 = WorkerProc::start(&sk1, &relay.url, &llama.url, &["--log", "debug"]);
    let _w2 = WorkerProc::start(&sk2, &relay.url, &llama.url, &[]);
    let c = client(&relay).await;
    let ads = wait_for_workers(&c, 2).await;
    let ad = ads
        .iter()
        .find(|a| a.worker == pk1)
        .expect("worker 1 advertised");
    assert_eq!(ad.ad.models[0].id, "tiny");
    assert_eq!(ad.ad.runner, "llama-cpp");
    assert!(ad.ad.expiration.as_secs() > Timestamp::now().as_secs());

    // Open job: whoever answers first, verified with its metering.
    let secret_prompt = "SECRET-PROMPT the cat sat on the mat";
    let done = c
        .submit(tiny_job(secret_prompt, 16), false, T, |_| {})
        .await
        .unwrap();
    assert_eq!(done.result.result.usage.output_tokens, 16);
    let (m, check) = done
        .metering
        .as_ref()
        .expect("metering arrives with the result");
    assert!(check.prompt_checked && check.output_checked);
    assert_eq!(
        m.record.prompt_sha256,
        fedai_protocol::sha256_hex(secret_prompt.as_bytes())
    );

    // Directed + streamed: partials arrive in order and add up to the result.
    let mut req = tiny_job("once upon a time", 64);
    req.provider = Some(pk1);
    req.params.stream = true;
    let mut streamed = String::new();
    let mut processing_by = None;
    let done = c
        .submit(req, false, T, |u| match u {
            JobUpdate::Partial(t) => streamed.push_str(&t),
            JobUpdate::Processing(w) => processing_by = Some(w),
            _ => {}
        })
        .await
        .unwrap();
    assert_eq!(done.result.worker, pk1);
    assert_eq!(processing_by, Some(pk1));
    assert_eq!(
        streamed, done.output,
        "partials, in seq order, are the whole output"
    );
    assert_eq!(done.result.result.usage.output_tokens, 64);

    // The same through a JobHandle: the job runs in the background, its updates are a stream
    // (submitted, processing, partials in order), then the verified outcome.
    let mut req = tiny_job("once upon a time", 32);
    req.params.stream = true;
    let opts = RunOptions {
        worker: Some(pk1),
        timeout: T,
        ..RunOptions::default()
    };
    let mut job = c.start(req, opts);
    let (mut streamed, mut submitted) = (String::new(), false);
    while let Some(u) = job.update().await {
        match u {
            JobUpdate::Submitted(_) => submitted = true,
            JobUpdate::Partial(t) => {
                assert!(submitted, "submitted comes first");
                streamed.push_str(&t)
            }
            _ => {}
        }
    }
    let done = job.outcome().await.unwrap();
    assert_eq!(done.result.worker, pk1);
    assert!(!streamed.is_empty() && done.stream_matched);
    assert_eq!(streamed, done.output);

    // Private job to worker 2: it answers; worker 1 sees only ciphertext and stays silent.
    let mut req = JobRequest {
        input: JobInput::Chat(vec![ChatMessage::new(
            "user",
            "SECRET-PRIVATE what is two plus two",
        )]),
        ..tiny_job("", 8)
    };
    req.provider = Some(pk2);
    let done = c.submit(req, true, T, |_| {}).await.unwrap();
    assert_eq!(done.result.worker, pk2);
    assert!(done.result.result.encrypted.is_some());
    assert_eq!(done.result.result.usage.output_tokens, 8);
    let raw = c
        .fetch(Filter::new().event(done.request.id), Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        raw.iter().all(|e| e.pubkey == pk2),
        "worker 1 never answered a job it cannot read"
    );
    assert!(raw.iter().all(|e| !e.content.contains("SECRET-PRIVATE") && !e.as_json().contains("two plus two")), "nothing private in clear on the relay");

    // Neither prompts nor outputs are logged, even at debug level.
    let logs = w1.logs();
    assert!(logs.contains("job done"), "worker logged its jobs");
    for secret in [
        "SECRET-PROMPT",
        "once upon a time",
        "SECRET-PRIVATE",
        done.output.as_str(),
    ] {
        assert!(!logs.contains(secret), "worker log leaked `{secret}`");
    }
    c.shutdown().await;
}

#[tokio::test]
async fn refusals_carry_the_right_error_code() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    let _w = WorkerProc::start(
        &sk,
        &relay.url,
        &llama.url,
        &[
            "--max-prompt-bytes",
            "64",
            "--max-tokens",
            "100",
            "--requests-per-minute-per-customer",
            "2",
        ],
    );
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    let expect = |r: Result<fedai_client::JobOutcome, ClientError>, code: ErrorCode| match r {
        Err(ClientError::Job { code: c, reason }) => {
            assert_eq!(c, code, "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("expected {code}, got {:?}", other.map(|o| o.output)),
    };
    let mut big = tiny_job(&"x".repeat(65), 4);
    big.provider = Some(pk);
    expect(
        c.submit(big, false, T, |_| {}).await,
        ErrorCode::PromptTooLarge,
    );
    let mut unknown = tiny_job("hi", 4);
    unknown.params.model = Some("gpt-9".into());
    unknown.provider = Some(pk);
    expect(
        c.submit(unknown, false, T, |_| {}).await,
        ErrorCode::ModelUnavailable,
    );
    let mut greedy = tiny_job("hi", 101);
    greedy.provider = Some(pk);
    expect(
        c.submit(greedy, false, T, |_| {}).await,
        ErrorCode::InvalidRequest,
    );
    let mut expired = tiny_job("hi", 4);
    expired.provider = Some(pk);
    expired.expiration = Some(Timestamp::from_secs(Timestamp::now().as_secs() + 1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The relay refuses an already-expired event, so it cannot reach the worker either.
    assert!(c
        .submit(expired, false, Duration::from_secs(3), |_| {})
        .await
        .is_err());
    // Refused requests cost nothing of the customer's rate (2 a minute here); past it, a
    // request is refused as `capacity` before any work, and other customers are still served.
    for _ in 0..2 {
        let mut ok = tiny_job("hi", 4);
        ok.provider = Some(pk);
        c.submit(ok, false, T, |_| {}).await.unwrap();
    }
    let mut third = tiny_job("hi", 4);
    third.provider = Some(pk);
    match c.submit(third, false, T, |_| {}).await {
        Err(ClientError::Job { code, reason }) => {
            assert_eq!(code, ErrorCode::Capacity);
            assert!(reason.contains("too many requests"), "{reason}");
        }
        other => panic!("expected a rate refusal, got {:?}", other.map(|o| o.output)),
    }
    let other = client(&relay).await;
    let mut theirs = tiny_job("hi", 4);
    theirs.provider = Some(pk);
    other.submit(theirs, false, T, |_| {}).await.unwrap();
    other.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn two_workers_share_the_load() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk1, pk1) = nsec();
    let (sk2, pk2) = nsec();
    let _w1 = WorkerProc::start(&sk1, &relay.url, &llama.url, &[]);
    let _w2 = WorkerProc::start(&sk2, &relay.url, &llama.url, &[]);
    let c = client(&relay).await;
    let ads = wait_for_workers(&c, 2).await;
    let mut served = HashSet::new();
    for i in 0..16 {
        let mut req = tiny_job(&format!("job {i}"), 4);
        // The scheduler, with no observations yet, spreads equal workers at random.
        req.provider = Some(c.choose(&ads, &req, &RunOptions::default()).unwrap().worker);
        served.insert(c.submit(req, false, T, |_| {}).await.unwrap().result.worker);
    }
    assert_eq!(served, HashSet::from([pk1, pk2]), "both workers took jobs");
    c.shutdown().await;
}

/// Every chunk received so far, in order.
fn streamed_text(rx: &mut tokio::sync::mpsc::UnboundedReceiver<JobUpdate>) -> String {
    let mut s = String::new();
    while let Ok(u) = rx.try_recv() {
        if let JobUpdate::Partial(c) = u {
            s.push_str(&c);
        }
    }
    s
}

#[tokio::test]
async fn a_worker_killed_mid_job_answers_after_restart() {
    let llama = fedai_tests::llama(LocalModel::SmolLm2, "smol", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    let mut w = WorkerProc::start(&sk, &relay.url, &llama.url, &[]);
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    let mut req = JobRequest::chat("Write a long story about a lighthouse keeper.");
    req.params.model = Some("smol".into());
    req.params.max_tokens = Some(300);
    req.params.stream = true;
    req.provider = Some(pk);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let job = tokio::spawn(async move {
        let r = c
            .submit(req, false, Duration::from_secs(90), move |u| {
                let _ = tx.send(u);
            })
            .await;
        c.shutdown().await;
        r
    });
    // Kill the worker once it is streaming.
    let first = loop {
        match tokio::time::timeout(T, rx.recv())
            .await
            .expect("job starts")
        {
            Some(JobUpdate::Partial(c)) => break c,
            Some(_) => {}
            None => panic!("job ended before streaming"),
        }
    };
    w.kill();
    let _w = WorkerProc::start(&sk, &relay.url, &llama.url, &[]);
    let outcome = job.await.unwrap();
    match outcome {
        Ok(done) => {
            assert_eq!(done.result.worker, pk);
            assert!(done.metering.is_some());
            // The restarted worker's run is a new one: what streamed before the kill need not
            // start its output, and the client says whether it did.
            assert_eq!(
                done.stream_matched,
                done.output
                    .starts_with(&format!("{first}{}", streamed_text(&mut rx))),
            );
        }
        Err(ClientError::Job { code, .. }) => assert!(
            matches!(code, ErrorCode::Shutdown | ErrorCode::RunnerFailed),
            "explicit error: {code}"
        ),
        Err(e) => panic!("the customer got neither a result nor an explicit error: {e}"),
    }
}

#[tokio::test]
async fn runner_down_gives_error_feedback_fast_and_an_unhealthy_ad() {
    let port = fedai_tests::free_port();
    let dead = format!("http://127.0.0.1:{port}");
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    let _w = WorkerProc::start(&sk, &relay.url, &dead, &[]);
    let c = client(&relay).await;
    let filter = Filter::new()
        .kind(Kind::from_u16(kinds::CAPABILITY_AD))
        .author(pk);
    let mut ad = None;
    for _ in 0..50 {
        if let Some(ev) = c
            .fetch(filter.clone(), Duration::from_secs(1))
            .await
            .unwrap()
            .into_iter()
            .next()
        {
            ad = Some(CapabilityAd::from_event(&ev).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !ad.expect("ad published").ad.healthy,
        "ad shows the runner is down"
    );
    let mut req = tiny_job("hi", 4);
    req.provider = Some(pk);
    let t0 = std::time::Instant::now();
    match c.submit(req, false, T, |_| {}).await {
        Err(ClientError::Job {
            code: ErrorCode::RunnerFailed,
            ..
        }) => {}
        other => panic!("expected runner-failed, got {:?}", other.map(|o| o.output)),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "error within a second: {:?}",
        t0.elapsed()
    );
    // The feedback event itself is a valid error with its code.
    let fbs = c
        .fetch(
            Filter::new()
                .kind(Kind::from_u16(kinds::JOB_FEEDBACK))
                .author(pk),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(
        fbs.iter()
            .any(|e| JobFeedback::from_event(e, None)
                .is_ok_and(|f| f.status == FeedbackStatus::Error))
    );
    c.shutdown().await;
}

#[tokio::test]
async fn metrics_health_and_graceful_shutdown_finishing_the_running_job() {
    let llama = fedai_tests::llama(LocalModel::SmolLm2, "smol", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    let mut w = WorkerProc::start(
        &sk,
        &relay.url,
        &llama.url,
        &[
            "--metrics-bind",
            "127.0.0.1:0",
            "--drain-timeout-secs",
            "30",
        ],
    );
    let metrics = w.metrics_url.clone().expect("metrics address printed");
    let addr = metrics.trim_start_matches("http://").to_owned();
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    let (status, _) = fedai_tests::http_get(&addr, "/health", "*/*").await;
    assert!(status.contains("200"), "{status}");
    let mut req = JobRequest::chat("Tell a long story about the sea.");
    req.params.model = Some("smol".into());
    req.params.max_tokens = Some(200);
    req.params.stream = true;
    req.provider = Some(pk);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let job = tokio::spawn(async move {
        let r = c
            .submit(req, false, T, move |u| {
                let _ = tx.send(u);
            })
            .await;
        (r, c)
    });
    while !matches!(rx.recv().await, Some(JobUpdate::Partial(_)) | None) {}
    // SIGTERM mid-job: no new jobs, but the running one finishes and is delivered.
    let exited = tokio::task::spawn_blocking(move || {
        let ok = w.terminate(40);
        (ok, w)
    });
    let (outcome, c) = job.await.unwrap();
    let done = outcome.expect("the running job is delivered during the drain");
    assert_eq!(done.result.worker, pk);
    let (ok, w) = exited.await.unwrap();
    assert!(ok, "worker exits 0 after draining; log: {}", w.logs());
    // Its final ad says it is down.
    let ads = c
        .fetch(
            Filter::new()
                .kind(Kind::from_u16(kinds::CAPABILITY_AD))
                .author(pk),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    let newest = ads.iter().max_by_key(|e| e.created_at).expect("ad");
    assert!(
        !CapabilityAd::from_event(newest).unwrap().ad.healthy,
        "withdrawn ad is marked down"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn worker_metrics_count_jobs_and_tokens() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    let w = WorkerProc::start(
        &sk,
        &relay.url,
        &llama.url,
        &["--metrics-bind", "127.0.0.1:0"],
    );
    let addr = w
        .metrics_url
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    let mut req = tiny_job("count these tokens", 12);
    req.provider = Some(pk);
    c.submit(req, false, T, |_| {}).await.unwrap();
    let mut bad = tiny_job("hi", 4);
    bad.params.model = Some("nope".into());
    bad.provider = Some(pk);
    assert!(c.submit(bad, false, T, |_| {}).await.is_err());
    let (_, body) = fedai_tests::http_get(&addr, "/metrics", "*/*").await;
    assert!(
        body.contains("fedai_worker_jobs_total{outcome=\"success\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("fedai_worker_jobs_total{outcome=\"model-unavailable\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("fedai_worker_tokens_total{direction=\"output\"} 12"),
        "{body}"
    );
    assert!(body.contains("fedai_worker_runner_healthy 1"), "{body}");
    assert!(
        body.contains("fedai_worker_runner_job_seconds_count 1"),
        "{body}"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn cli_infer_job_metering_verify_and_keygen() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, _) = nsec();
    let _w = WorkerProc::start(&sk, &relay.url, &llama.url, &[]);
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    c.shutdown().await;
    let fedai = fedai_tests::binary("fedai");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&fedai)
            .args(["--relay", &relay.url])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fedai {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&[
        "infer",
        "the river and the stone",
        "--model",
        "tiny",
        "--max-tokens",
        "10",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["usage"]["output_tokens"], 10);
    assert_eq!(v["metering"]["verified"], true);
    let request = v["request"].as_str().unwrap();
    let metering = v["metering"]["id"].as_str().unwrap();
    let verified = run(&["metering", "verify", metering]);
    assert!(
        verified.contains("verified") && verified.contains("prompt hash checked"),
        "{verified}"
    );
    let job = run(&["job", request]);
    assert!(
        job.contains("state: done") && job.contains("metering:"),
        "{job}"
    );
    let workers = run(&["workers", "--json"]);
    assert!(workers.contains("\"tiny\""), "{workers}");
    let dir = fedai_tests::temp_dir("keygen");
    let file = dir.join("me.nsec");
    let out = run(&["keygen", "--out", file.to_str().unwrap()]);
    assert!(
        out.contains("npub1") && !out.contains("nsec1"),
        "the secret is not printed: {out}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("nsec1"));
}

/// Privacy in every binary: relay, worker and `fedai`, all at trace level (what an operator turns
/// on to debug), run a job and none of their logs holds its prompt or its output.
#[tokio::test]
async fn no_binary_logs_a_prompt_or_an_output_even_at_trace_level() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory", "--log", "trace"]);
    let (sk, _) = nsec();
    let worker = WorkerProc::start(&sk, &relay.url, &llama.url, &["--log", "trace"]);
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    c.shutdown().await;
    let marker = format!("quartzlighthouse{}", std::process::id());
    let out = std::process::Command::new(fedai_tests::binary("fedai"))
        .env("FEDAI_LOG", "trace")
        .args(["--relay", &relay.url, "infer"])
        .arg(format!("Tell a story about the {marker} at dawn"))
        .args(["--model", "tiny", "--max-tokens", "24", "--json"])
        .output()
        .unwrap();
    let cli_log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cli_log}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let output = v["output"].as_str().unwrap().trim().to_owned();
    let logs = [
        ("relay", relay.logs()),
        ("worker", worker.logs()),
        ("fedai", cli_log),
    ];
    for (who, log) in &logs {
        // Trace level really was on (else this proves nothing).
        assert!(
            log.contains("TRACE") || log.contains("DEBUG"),
            "{who} logged nothing below info:\n{log}"
        );
        assert!(!log.contains(&marker), "{who} logged the prompt");
        if output.len() >= 16 {
            assert!(!log.contains(&output), "{who} logged the output");
        }
    }
}

/// A job posted while no ad is visible yet (a worker starting, a relay slow to answer under
/// load) looks again for a few seconds instead of failing at once with "no worker".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_posted_as_the_worker_comes_up_waits_for_its_ad() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let c = client(&relay).await;
    let opts = RunOptions {
        timeout: T,
        ..RunOptions::default()
    };
    let job = c.start(tiny_job("hello", 4), opts);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sk, pk) = nsec();
    let _w = tokio::task::spawn_blocking({
        let (relay, llama) = (relay.url.clone(), llama.url.clone());
        move || WorkerProc::start(&sk, &relay, &llama, &[])
    })
    .await
    .unwrap();
    let done = job.outcome().await.unwrap();
    assert_eq!(done.result.worker, pk);
    c.shutdown().await;
}

/// What a customer learns of a worker outlives the command: two `fedai infer` runs leave two
/// verified jobs in the reputation file, and `fedai workers` shows them (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_reputation_of_workers_outlives_each_run() {
    let relay = RelayProc::start(&["--memory"]);
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let (sk, pk) = nsec();
    let _w = WorkerProc::start(&sk, &relay.url, &tiny.url, &[]);
    wait_for_workers(&client(&relay).await, 1).await;
    let rep = fedai_tests::temp_dir("reputation").join("reputation.json");
    let rep_s = rep.display().to_string();
    for prompt in ["first run", "second run"] {
        fedai_with(&relay.url, &rep_s, &infer_args(prompt));
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(saved["workers"][pk.to_hex()]["verified"], 2, "{saved}");
    let me = seen_of(&fedai_with(&relay.url, &rep_s, &["workers", "--json"]), &pk);
    assert_eq!(me["seen"]["verified"], 2, "{me}");
    assert!(me["seen"]["trust"].as_f64().unwrap() > 0.5, "{me}");

    // The default store (a directory, LMDB): two runs at the same time both count — a file
    // replaced by the last to save would keep one.
    let store = fedai_tests::temp_dir("reputation-store").join("reputation");
    let store_s = store.display().to_string();
    let run = |prompt: &'static str| {
        let (relay, store_s) = (relay.url.clone(), store_s.clone());
        std::thread::spawn(move || fedai_with(&relay, &store_s, &infer_args(prompt)))
    };
    let (x, y) = (run("concurrent one"), run("concurrent two"));
    x.join().unwrap();
    y.join().unwrap();
    assert!(store.is_dir(), "the store is a directory");
    let me = seen_of(
        &fedai_with(&relay.url, &store_s, &["workers", "--json"]),
        &pk,
    );
    assert_eq!(me["seen"]["verified"], 2, "both concurrent runs kept: {me}");
}

/// `fedai --relay RELAY --reputation-file REPUTATION ARGS…`, which must succeed; its stdout.
fn fedai_with(relay: &str, reputation: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(fedai_tests::binary("fedai"))
        .args(["--relay", relay, "--reputation-file", reputation])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A short `fedai infer` on the tiny model, as JSON.
fn infer_args(prompt: &str) -> [&str; 8] {
    [
        "infer",
        prompt,
        "--model",
        "tiny",
        "--max-tokens",
        "4",
        "--raw",
        "--json",
    ]
}

/// The row `fedai workers --json` printed for `pk`.
fn seen_of(listed: &str, pk: &PublicKey) -> serde_json::Value {
    let listed: serde_json::Value = serde_json::from_str(listed).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == pk.to_bech32().unwrap())
        .expect("the worker is listed")
        .clone()
}
