//! Job benchmark: what going through fed_AI (relay + worker) adds to an inference.
//!
//! For each model (tiny random llama, SmolLM2-135M) it runs the same prompts alternately
//! **directly** against the llama.cpp server (the worker's own runner adapter, so the HTTP path is
//! identical) and **through fed_AI** (customer SDK → relay → worker → runner → result + metering
//! verified by the customer). Everything is measured on the customer's clock only (nothing the
//! worker reports): for each pair, the time through fed_AI minus the time direct, as p50, p99
//! and max — for the whole job, and for the first token of a streamed job. Then it measures
//! jobs/s through one relay with 1, 2 and 4 workers on the tiny model, with each part's CPU
//! time per job (relay, runner, workers, customers) from `/proc/<pid>/stat`: the jobs/s one
//! core would carry for each part names the bottleneck.
//!
//! Then the streaming rate: tokens/s from the first token to the last of a long SmolLM2 answer,
//! direct and through fed_AI.
//!
//! Usage: fedai-job-bench [--jobs N] [--throughput-jobs N] [--rate-pairs N] [--only-throughput]
//! [--relay-args "--memory"]
//! Real processes: the release `fedai-relay` and `fedai-worker` binaries and a llama.cpp server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fedai_client::{FedaiClient, RunOptions};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{ChatMessage, JobInput, JobParams, JobRequest};
use fedai_runners::local::{LocalLlamaServer, LocalModel};
use fedai_runners::{build, HttpOptions, InferRequest, Piece, SandboxPolicy};
use fedai_tests::{pct, RelayProc, WorkerProc};
use futures_util::StreamExt;

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

/// Tokens per second while a long answer streams (from the first token to the last), direct
/// and through fed_AI, alternating: a raw completion that goes on, so both paths generate many
/// tokens (their counts may differ: the rate divides by each path's own count).
async fn rate(pairs: usize, max_tokens: u32, relay_args: &[&str]) {
    let llama = LocalLlamaServer::start(LocalModel::SmolLm2, "smollm2", 1)
        .await
        .unwrap();
    let relay = RelayProc::start(relay_args);
    let k = Keys::generate();
    let _w = WorkerProc::start(&k.secret_key().to_secret_hex(), &relay.url, &llama.url, &[]);
    let c = FedaiClient::connect(std::slice::from_ref(&relay.url), Keys::generate())
        .await
        .unwrap();
    fedai_tests::wait_for_workers(&c, 1).await;
    let runner = build(
        "llama-cpp",
        &llama.url,
        &SandboxPolicy::default(),
        HttpOptions::default(),
    )
    .unwrap();
    let (mut d_rates, mut f_rates) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let prompt = |v: &str| {
            format!("Chapter {i}{v}. Once upon a time, in a lighthouse by the sea, there lived an old keeper who")
        };
        let direct = async {
            let req = InferRequest {
                model: "smollm2".into(),
                input: JobInput::Text(prompt("a")),
                params: JobParams {
                    temperature: Some(0.0),
                    ..JobParams::default()
                },
                max_tokens,
            };
            let mut s = runner.infer(req).await.unwrap();
            let (mut first, mut last, mut n) = (None, Instant::now(), 0);
            while let Some(p) = s.next().await {
                match p.unwrap() {
                    Piece::Done { output_tokens, .. } => n = output_tokens,
                    Piece::Text(_) => {
                        last = Instant::now();
                        first.get_or_insert(last);
                    }
                    Piece::Logprob(_) => {}
                }
            }
            (n.saturating_sub(1)) as f64 / (last - first.unwrap()).as_secs_f64()
        };
        let via = async {
            let mut req = JobRequest::text(prompt("b"));
            req.params.model = Some("smollm2".into());
            req.params.max_tokens = Some(max_tokens);
            req.params.temperature = Some(0.0);
            req.params.stream = true;
            req.provider = Some(k.public_key());
            let (mut first, mut last) = (None, Instant::now());
            let out = c
                .submit(req, false, Duration::from_secs(120), |u| {
                    if matches!(u, fedai_client::JobUpdate::Partial(_)) {
                        last = Instant::now();
                        first.get_or_insert(last);
                    }
                })
                .await
                .unwrap();
            let n = out.result.result.usage.output_tokens;
            (n.saturating_sub(1)) as f64 / (last - first.unwrap()).as_secs_f64()
        };
        if i % 2 == 0 {
            d_rates.push(direct.await);
            f_rates.push(via.await);
        } else {
            f_rates.push(via.await);
            d_rates.push(direct.await);
        }
    }
    let (d, f) = (pct(&mut d_rates, 0.5), pct(&mut f_rates, 0.5));
    println!(
        "| smollm2 | {pairs} | {max_tokens} | {d:.1} | {f:.1} | {:.3} |",
        f / d
    );
    c.shutdown().await;
}

/// The job straight to the runner: (whole time, time to the first token).
async fn direct(url: &str, model: &str, prompt: &str, max_tokens: u32) -> (Duration, Duration) {
    let r = build(
        "llama-cpp",
        url,
        &SandboxPolicy::default(),
        HttpOptions::default(),
    )
    .unwrap();
    let req = InferRequest {
        model: model.into(),
        input: JobInput::Chat(vec![ChatMessage::new("user", prompt)]),
        params: JobParams {
            temperature: Some(0.0),
            ..JobParams::default()
        },
        max_tokens,
    };
    let t0 = Instant::now();
    let mut first = None;
    let mut s = r.infer(req).await.unwrap();
    while let Some(p) = s.next().await {
        match p.unwrap() {
            Piece::Done { .. } => break,
            _ => {
                first.get_or_insert_with(|| t0.elapsed());
            }
        }
    }
    let total = t0.elapsed();
    (total, first.unwrap_or(total))
}

/// Paired times (direct, through fed_AI), ms, on the customer's clock.
#[derive(Default)]
struct Pairs {
    direct: Vec<f64>,
    fedai: Vec<f64>,
    added: Vec<f64>,
}

impl Pairs {
    fn push(&mut self, direct: Duration, fedai: Duration) {
        let (d, f) = (direct.as_secs_f64() * 1e3, fedai.as_secs_f64() * 1e3);
        self.direct.push(d);
        self.fedai.push(f);
        self.added.push(f - d);
    }

    fn len(&self) -> usize {
        self.added.len()
    }

    /// `direct p50 | fed_AI p50 | added p50 | added p99 | added max | ratio of p50s`.
    fn row(&mut self) -> String {
        let (d, f) = (pct(&mut self.direct, 0.5), pct(&mut self.fedai, 0.5));
        format!(
            "{d:.1} | {f:.1} | {:.1} | {:.1} | {:.1} | {:.2}",
            pct(&mut self.added, 0.5),
            pct(&mut self.added, 0.99),
            pct(&mut self.added, 1.0),
            f / d
        )
    }
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
    let mut whole = Pairs::default();
    let mut first = Pairs::default();
    for (i, p) in ps.iter().enumerate() {
        // Each path gets its own variant of the prompt (same length), so neither profits from
        // llama.cpp's prompt cache filled by the other; the order alternates as well. Even
        // pairs run whole jobs, odd pairs stream and time the first token.
        let (pd, pf) = (format!("{p} (a)"), format!("{p} (b)"));
        let stream = i % 2 == 1;
        let via_fedai = || async {
            let mut req = job(alias, &pf, max_tokens, k.public_key());
            req.params.stream = stream;
            let t0 = Instant::now();
            let mut first_token = None;
            let out = c
                .submit(req, false, Duration::from_secs(60), |u| {
                    if matches!(u, fedai_client::JobUpdate::Partial(_)) {
                        first_token.get_or_insert_with(|| t0.elapsed());
                    }
                })
                .await
                .unwrap();
            assert!(out.metering.is_some(), "metering verified");
            (t0.elapsed(), first_token.unwrap_or(out.total))
        };
        let run_direct = || direct(&llama.url, alias, &pd, max_tokens);
        let ((dt, dfirst), (ft, ffirst)) = if (i / 2) % 2 == 0 {
            let d = run_direct().await;
            (d, via_fedai().await)
        } else {
            let f = via_fedai().await;
            (run_direct().await, f)
        };
        if stream {
            first.push(dfirst, ffirst);
        } else {
            whole.push(dt, ft);
        }
    }
    println!(
        "| {alias} | {} | {max_tokens} | whole job | {} |",
        whole.len(),
        whole.row()
    );
    println!(
        "| {alias} | {} | {max_tokens} | first token (streamed) | {} |",
        first.len(),
        first.row()
    );
    c.shutdown().await;
}

async fn throughput(workers: usize, jobs: usize, relay_args: &[&str]) {
    let llama = LocalLlamaServer::start(LocalModel::Tiny, "tiny", 4)
        .await
        .unwrap();
    // A durable relay gets a store of its own per run: ads of earlier runs' workers (gone, not
    // yet expired) must not be chosen.
    let mut args: Vec<String> = relay_args.iter().map(|a| a.to_string()).collect();
    if let Some(i) = args.iter().position(|a| a == "--data-dir") {
        if let Some(dir) = args.get_mut(i + 1) {
            *dir = format!("{dir}/throughput-{workers}-{}", std::process::id());
        }
    }
    // The benchmark's one customer sends far more than a person would: limits off.
    args.extend(
        [
            "--events-per-minute",
            "100000000",
            "--events-per-minute-per-pubkey",
            "100000000",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayProc::start(&args);
    let mut procs = Vec::new();
    for _ in 0..workers {
        let k = Keys::generate();
        procs.push(WorkerProc::start(
            &k.secret_key().to_secret_hex(),
            &relay.url,
            &llama.url,
            &[
                "--log",
                "warn",
                "--max-concurrent",
                "8",
                "--requests-per-minute-per-customer",
                "1000000",
            ],
        ));
    }
    let c = Arc::new(
        FedaiClient::connect(std::slice::from_ref(&relay.url), Keys::generate())
            .await
            .unwrap(),
    );
    let ads = Arc::new(fedai_tests::wait_for_workers(&c, workers).await);
    // CPU time of each part over the run: who would run out of cores first.
    let parts: Vec<(&str, u32)> = [("relay", relay.child.id()), ("runner", llama.pid())]
        .into_iter()
        .chain(procs.iter().map(|w| ("worker", w.child.id())))
        .chain([("customers", std::process::id())])
        .collect();
    let cpu0: Vec<f64> = parts.iter().map(|(_, pid)| cpu_ms(*pid)).collect();
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
    // CPU ms per job of each part (workers summed) and the jobs/s one core would give it.
    let mut per_job: Vec<(&str, f64)> = Vec::new();
    for ((name, pid), before) in parts.iter().zip(&cpu0) {
        let ms = (cpu_ms(*pid) - before) / ok.max(1) as f64;
        match per_job.iter_mut().find(|(n, _)| n == name) {
            Some((_, sum)) => *sum += ms,
            None => per_job.push((name, ms)),
        }
    }
    let cpu: Vec<String> = per_job
        .iter()
        .map(|(n, ms)| format!("{n} {ms:.2} ({:.0}/s)", 1000.0 / ms.max(1e-9)))
        .collect();
    println!(
        "| {workers} | {jobs} | {ok} | {:.1} | {} |",
        ok as f64 / secs,
        cpu.join(", ")
    );
}

/// User + system CPU time of process `pid` so far (all its threads), ms.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here; USER_HZ is 100.
    (ticks(11) + ticks(12)) * 10.0
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
    let mut rate_pairs = 10;
    let mut only_throughput = false;
    let mut relay_args = vec!["--memory".to_owned()];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--jobs" => jobs = it.next().unwrap().parse().unwrap(),
            "--throughput-jobs" => tjobs = it.next().unwrap().parse().unwrap(),
            "--rate-pairs" => rate_pairs = it.next().unwrap().parse().unwrap(),
            "--only-throughput" => only_throughput = true,
            "--relay-args" => relay_args = it.next().unwrap().split_whitespace().map(str::to_owned).collect(),
            _ => panic!("usage: fedai-job-bench [--jobs N] [--throughput-jobs N] [--rate-pairs N] [--only-throughput] [--relay-args \"--memory\"]"),
        }
    }
    let ra: Vec<&str> = relay_args.iter().map(String::as_str).collect();
    println!(
        "relay args: {ra:?}; {} cores; load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if !only_throughput {
        println!("\n| model | pairs | max tokens | measure | direct p50 ms | via fed_AI p50 ms | added p50 ms | added p99 ms | added max ms | ratio of p50s |\n|---|---|---|---|---|---|---|---|---|---|");
        overhead(LocalModel::Tiny, "tiny", jobs, 32, &ra).await;
        overhead(LocalModel::SmolLm2, "smollm2", jobs, 32, &ra).await;
        println!("\n| model | pairs | max tokens | direct tokens/s p50 | via fed_AI tokens/s p50 | ratio |\n|---|---|---|---|---|---|");
        rate(rate_pairs, 160, &ra).await;
    }
    println!("\n| workers | jobs | ok | jobs/s | CPU ms per job (jobs/s one core would carry) |\n|---|---|---|---|---|");
    for w in [1, 2, 4] {
        throughput(w, tjobs, &ra).await;
    }
}
