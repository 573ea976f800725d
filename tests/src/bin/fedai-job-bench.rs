//! Job benchmark: what going through fed_AI (relay + worker) adds to an inference.
//!
//! For each model (tiny random llama, SmolLM2-135M) it runs the same prompts alternately
//! **directly** against the llama.cpp server (the worker's own runner adapter, so the HTTP path is
//! identical) and **through fed_AI** (customer SDK → relay → worker → runner → result + metering
//! verified by the customer), and reports the per-job overhead — the customer's total time minus
//! the runner time the worker measured for that job (its metering `wall_ms`) — as median and p99,
//! and the ratio of the median times of the two paths. Then it measures jobs/s through one relay with 1, 2 and 4 workers on the tiny model.
//!
//! Usage: fedai-job-bench [--jobs N] [--throughput-jobs N] [--relay-args "--memory"]
//! Real processes: the release `fedai-relay` and `fedai-worker` binaries and a llama.cpp server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fedai_client::{FedaiClient, RunOptions};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{ChatMessage, JobInput, JobParams, JobRequest};
use fedai_runners::local::{LocalLlamaServer, LocalModel};
use fedai_runners::{build, HttpOptions, InferRequest, Piece, SandboxPolicy};
use fedai_tests::{RelayProc, WorkerProc};
use futures_util::StreamExt;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "Question {i}: name one thing that is {} and explain briefly.",
                ["red", "fast", "small", "old", "cold"][i % 5]
            )
        })
        .collect()
}

async fn direct(url: &str, model: &str, prompt: &str, max_tokens: u32) -> Duration {
    let r = build(
        "llama-cpp",
        url,
        &SandboxPolicy::default(),
        HttpOptions::default(),
    )
    .unwrap();
    let req = InferRequest {
        model: model.into(),
        input: JobInput::Chat(vec![ChatMessage {
            role: "user".into(),
            content: prompt.into(),
        }]),
        params: JobParams {
            temperature: Some(0.0),
            ..JobParams::default()
        },
        max_tokens,
    };
    let t0 = Instant::now();
    let mut s = r.infer(req).await.unwrap();
    while let Some(p) = s.next().await {
        if matches!(p.unwrap(), Piece::Done { .. }) {
            break;
        }
    }
    t0.elapsed()
}

fn job(model: &str, prompt: &str, max_tokens: u32, worker: PublicKey) -> JobRequest {
    let mut r = JobRequest::chat(prompt);
    r.params.model = Some(model.into());
    r.params.max_tokens = Some(max_tokens);
    r.params.temperature = Some(0.0);
    r.provider = Some(worker);
    r
}

async fn overhead(
    model: LocalModel,
    alias: &str,
    jobs: usize,
    max_tokens: u32,
    relay_args: &[&str],
) {
    let llama = LocalLlamaServer::start(model, alias, 1).await.unwrap();
    let relay = RelayProc::start(relay_args);
    let k = Keys::generate();
    let _w = WorkerProc::start(
        &k.secret_key().to_secret_hex(),
        &relay.url,
        &llama.url,
        &["--log", "info"],
    );
    let c = FedaiClient::connect(std::slice::from_ref(&relay.url), Keys::generate())
        .await
        .unwrap();
    fedai_tests::wait_for_workers(&c, 1).await;
    let ps = prompts(jobs);
    // Warm-up (connections, caches). Its prompt differs from the measured ones: a request
    // identical to an earlier one within the same second is the same event (same id).
    direct(&llama.url, alias, "warm up", max_tokens).await;
    c.submit(
        job(alias, "warm up", max_tokens, k.public_key()),
        false,
        Duration::from_secs(60),
        |_| {},
    )
    .await
    .unwrap();
    let (mut d, mut f, mut over) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in ps.iter().enumerate() {
        // Each path gets its own variant of the prompt (same length), so neither profits from
        // llama.cpp's prompt cache filled by the other; the order alternates as well.
        let (pd, pf) = (format!("{p} (a)"), format!("{p} (b)"));
        let via_fedai = || async {
            let t0 = Instant::now();
            let out = c
                .submit(
                    job(alias, &pf, max_tokens, k.public_key()),
                    false,
                    Duration::from_secs(60),
                    |_| {},
                )
                .await
                .unwrap();
            let total = t0.elapsed().as_secs_f64() * 1e3;
            let (m, _) = out.metering.expect("metering verified");
            // The worker's own measure of the runner's time for this very job.
            (total, m.record.wall_ms as f64)
        };
        let (td, (tf, runner_ms)) = if i % 2 == 0 {
            let td = direct(&llama.url, alias, &pd, max_tokens)
                .await
                .as_secs_f64()
                * 1e3;
            (td, via_fedai().await)
        } else {
            let tf = via_fedai().await;
            (
                direct(&llama.url, alias, &pd, max_tokens)
                    .await
                    .as_secs_f64()
                    * 1e3,
                tf,
            )
        };
        d.push(td);
        f.push(tf);
        // Overhead of fed_AI for this job: what the customer waited minus the runner's time.
        over.push(tf - runner_ms);
    }
    let (dm, fm) = (pct(&mut d, 0.5), pct(&mut f, 0.5));
    println!(
        "| {alias} | {jobs} | {max_tokens} | {dm:.1} | {fm:.1} | {:.1} | {:.1} | {:.2} |",
        pct(&mut over, 0.5),
        pct(&mut over, 0.99),
        fm / dm
    );
    c.shutdown().await;
}

async fn throughput(workers: usize, jobs: usize, relay_args: &[&str]) {
    let llama = LocalLlamaServer::start(LocalModel::Tiny, "tiny", 4)
        .await
        .unwrap();
    let relay = RelayProc::start(relay_args);
    let mut procs = Vec::new();
    for _ in 0..workers {
        let k = Keys::generate();
        procs.push(WorkerProc::start(
            &k.secret_key().to_secret_hex(),
            &relay.url,
            &llama.url,
            &["--log", "warn", "--max-concurrent", "8"],
        ));
    }
    let c = Arc::new(
        FedaiClient::connect(std::slice::from_ref(&relay.url), Keys::generate())
            .await
            .unwrap(),
    );
    let ads = Arc::new(fedai_tests::wait_for_workers(&c, workers).await);
    let t0 = Instant::now();
    let concurrency = 8;
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (c, ads) = (c.clone(), ads.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in (t..jobs).step_by(concurrency) {
                let probe = job("tiny", "", 4, ads[0].worker);
                let w = c
                    .choose(&ads, &probe, &RunOptions::default())
                    .unwrap()
                    .worker;
                match c
                    .submit(
                        job("tiny", &format!("job {i}"), 4, w),
                        false,
                        Duration::from_secs(60),
                        |_| {},
                    )
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(e) => eprintln!("job {i} failed: {e}"),
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!("| {workers} | {jobs} | {ok} | {:.1} |", ok as f64 / secs);
}

#[tokio::main]
async fn main() {
    if let Ok(f) = std::env::var("FEDAI_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_writer(std::io::stderr)
            .init();
    }
    let mut jobs = 30;
    let mut tjobs = 200;
    let mut relay_args = vec!["--memory".to_owned()];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jobs" => jobs = it.next().unwrap().parse().unwrap(),
            "--throughput-jobs" => tjobs = it.next().unwrap().parse().unwrap(),
            "--relay-args" => relay_args = it.next().unwrap().split_whitespace().map(str::to_owned).collect(),
            _ => panic!("usage: fedai-job-bench [--jobs N] [--throughput-jobs N] [--relay-args \"--memory\"]"),
        }
    }
    let ra: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    println!(
        "relay args: {ra:?}; load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("\n| model | jobs | max tokens | direct p50 ms | via fed_AI p50 ms | overhead p50 ms | overhead p99 ms | ratio of p50s |\n|---|---|---|---|---|---|---|---|");
    overhead(LocalModel::Tiny, "tiny", jobs, 32, &ra).await;
    overhead(LocalModel::SmolLm2, "smollm2", jobs, 32, &ra).await;
    println!("\n| workers | jobs | ok | jobs/s |\n|---|---|---|---|");
    for w in [1, 2, 4] {
        throughput(w, tjobs, &ra).await;
    }
}
