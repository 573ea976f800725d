//! Gateway benchmark: what `fedai gateway` (gateway → relay → worker → llama.cpp, result and
//! metering verified) adds to an OpenAI streaming chat call, against the same call sent straight
//! to llama.cpp's own OpenAI endpoint (`/v1/chat/completions`), alternating, in the same run.
//! Measured on the app's clock only: time to the first content chunk and to `[DONE]`, p50 / p99 /
//! max of the difference per pair.
//!
//! With `--embeddings N`: the same for `POST /v1/embeddings` of N short texts (gateway → relay
//! → a worker serving kind 5060 → llama.cpp started with `--embeddings`, SmolLM2 mean-pooled),
//! whole call only.
//!
//! Usage: fedai-gateway-bench [--pairs N] [--max-tokens N] [--embeddings N]
//! Real processes: the release `fedai-relay`, `fedai-worker` and `fedai` binaries, llama.cpp.

use std::time::{Duration, Instant};

use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::{LocalLlamaServer, LocalModel};
use fedai_tests::openai::GatewayProc;
use fedai_tests::{pct, RelayProc, WorkerProc};
use futures_util::StreamExt;
use serde_json::json;

/// One streamed chat call: (time to the first content chunk, time to `[DONE]`).
async fn call(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    prompt: &str,
    max_tokens: u32,
) -> (Duration, Duration) {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
    });
    let t0 = Instant::now();
    let resp = http
        .post(format!("{base}/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut stream = resp.bytes_stream();
    let (mut buf, mut first) = (Vec::new(), None);
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let line = String::from_utf8_lossy(&event);
            let Some(data) = line.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                return (first.unwrap_or_else(|| t0.elapsed()), t0.elapsed());
            }
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            let text = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
            if !text.is_empty() {
                first.get_or_insert_with(|| t0.elapsed());
            }
        }
    }
    panic!("the stream ended without [DONE]");
}

#[derive(Default)]
struct Pairs {
    direct: Vec<f64>,
    gateway: Vec<f64>,
    added: Vec<f64>,
}

impl Pairs {
    fn push(&mut self, d: Duration, g: Duration) {
        let (d, g) = (d.as_secs_f64() * 1e3, g.as_secs_f64() * 1e3);
        self.direct.push(d);
        self.gateway.push(g);
        self.added.push(g - d);
    }

    fn row(&mut self) -> String {
        let (d, g) = (pct(&mut self.direct, 0.5), pct(&mut self.gateway, 0.5));
        format!(
            "{d:.1} | {g:.1} | {:.1} | {:.1} | {:.1}",
            pct(&mut self.added, 0.5),
            pct(&mut self.added, 0.99),
            pct(&mut self.added, 1.0)
        )
    }
}

async fn bench(model: LocalModel, alias: &str, pairs: usize, max_tokens: u32) {
    let llama = LocalLlamaServer::start(model, alias, 1).await.unwrap();
    let relay = RelayProc::start(&["--memory"]);
    let k = Keys::generate();
    let _w = WorkerProc::start(&k.secret_key().to_secret_hex(), &relay.url, &llama.url, &[]);
    let c = fedai_client::FedaiClient::connect(std::slice::from_ref(&relay.url), Keys::generate())
        .await
        .unwrap();
    fedai_tests::wait_for_workers(&c, 1).await;
    let gw = GatewayProc::start(&relay.url, &[]);
    let http = reqwest::Client::new();
    let direct_base = format!("{}/v1", llama.url);
    call(&http, &direct_base, alias, "warm up (a)", max_tokens).await;
    call(&http, &gw.base_url, alias, "warm up (b)", max_tokens).await;
    let (mut first, mut whole) = (Pairs::default(), Pairs::default());
    for i in 0..pairs {
        // Each path its own prompt variant (no shared prompt cache); the order alternates.
        let p = format!(
            "Question {i}: name one thing that is {} and say why.",
            ["red", "fast", "small", "old", "cold"][i % 5]
        );
        let (pd, pg) = (format!("{p} (a)"), format!("{p} (b)"));
        let (d, g) = if i % 2 == 0 {
            let d = call(&http, &direct_base, alias, &pd, max_tokens).await;
            (d, call(&http, &gw.base_url, alias, &pg, max_tokens).await)
        } else {
            let g = call(&http, &gw.base_url, alias, &pg, max_tokens).await;
            (call(&http, &direct_base, alias, &pd, max_tokens).await, g)
        };
        first.push(d.0, g.0);
        whole.push(d.1, g.1);
    }
    println!(
        "| {alias} | {pairs} | {max_tokens} | first token | {} |",
        first.row()
    );
    println!(
        "| {alias} | {pairs} | {max_tokens} | whole call | {} |",
        whole.row()
    );
    c.shutdown().await;
}

/// One embeddings call of `texts` (the SDK's default, base64), timed to its last byte.
async fn embed_call(http: &reqwest::Client, base: &str, model: &str, texts: &[String]) -> Duration {
    let body = json!({"model": model, "input": texts, "encoding_format": "base64"});
    let t0 = Instant::now();
    let resp = http
        .post(format!("{base}/embeddings"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(texts.len()));
    t0.elapsed()
}

async fn bench_embeddings(pairs: usize, n: usize) {
    let alias = "smollm2-embed";
    let llama = LocalLlamaServer::start_embeddings(LocalModel::SmolLm2, alias, 1)
        .await
        .unwrap();
    let relay = RelayProc::start(&["--memory"]);
    let k = Keys::generate();
    let _w = WorkerProc::start(
        &k.secret_key().to_secret_hex(),
        &relay.url,
        &llama.url,
        &["--serve", "embeddings"],
    );
    let c = fedai_client::FedaiClient::connect(std::slice::from_ref(&relay.url), Keys::generate())
        .await
        .unwrap();
    fedai_tests::wait_for_workers(&c, 1).await;
    let gw = GatewayProc::start(&relay.url, &[]);
    let http = reqwest::Client::new();
    let direct_base = format!("{}/v1", llama.url);
    let texts = |i: usize, path: &str| -> Vec<String> {
        (0..n)
            .map(|t| format!("Note {i}.{t} ({path}): the relay kept the market's events."))
            .collect()
    };
    embed_call(&http, &direct_base, alias, &texts(0, "warm a")).await;
    embed_call(&http, &gw.base_url, alias, &texts(0, "warm b")).await;
    let mut whole = Pairs::default();
    for i in 0..pairs {
        let (td, tg) = (texts(i, "a"), texts(i, "b"));
        let (d, g) = if i % 2 == 0 {
            let d = embed_call(&http, &direct_base, alias, &td).await;
            (d, embed_call(&http, &gw.base_url, alias, &tg).await)
        } else {
            let g = embed_call(&http, &gw.base_url, alias, &tg).await;
            (embed_call(&http, &direct_base, alias, &td).await, g)
        };
        whole.push(d, g);
    }
    println!(
        "| {alias} | {pairs} | {n} texts | embeddings, whole call | {} |",
        whole.row()
    );
    c.shutdown().await;
}

#[tokio::main]
async fn main() {
    let (mut pairs, mut max_tokens) = (30, 32);
    let mut embeddings = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pairs" => pairs = it.next().unwrap().parse().unwrap(),
            "--max-tokens" => max_tokens = it.next().unwrap().parse().unwrap(),
            "--embeddings" => embeddings = Some(it.next().unwrap().parse().unwrap()),
            _ => panic!("usage: fedai-gateway-bench [--pairs N] [--max-tokens N] [--embeddings N]"),
        }
    }
    println!(
        "{} cores; load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("\n| model | pairs | max tokens | measure | direct p50 ms | via gateway p50 ms | added p50 ms | added p99 ms | added max ms |\n|---|---|---|---|---|---|---|---|---|");
    if let Some(n) = embeddings {
        bench_embeddings(pairs, n).await;
        return;
    }
    bench(LocalModel::Tiny, "tiny", pairs, max_tokens).await;
    bench(LocalModel::SmolLm2, "smollm2", pairs, max_tokens).await;
}
