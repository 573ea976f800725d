//! `fedai gateway` driven by the official `openai` Python SDK: an OpenAI app we did not write
//! lists the live models, chats (whole and streamed), completes, gets JSON by schema, runs 16
//! requests at once, hangs up mid-stream (the worker stops), and pays over a real simnet
//! Lightning network until its budget runs out — through a real relay, worker and llama.cpp.

use std::time::{Duration, Instant};

use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::LocalModel;
use fedai_tests::openai::{check, GatewayProc};
use fedai_tests::{client, nsec, wait_for_workers, RelayProc, WorkerProc, Ws};
use serde_json::{json, Value};

fn scenario<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["scenario"] == name)
        .unwrap_or_else(|| panic!("no `{name}` line in {lines:?}"))
}

async fn event(ws: &mut Ws, id: &str) -> Value {
    let got = ws.query(&id[..12], json!({"ids": [id]})).await;
    got.into_iter()
        .next()
        .unwrap_or_else(|| panic!("event {id} is not on the relay"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_buys_from_the_market_through_the_gateway() {
    let relay = RelayProc::start(&["--memory"]);
    let smol = fedai_tests::llama(LocalModel::SmolLm2, "smol", 2).await;
    let (sk, _) = nsec();
    let worker = WorkerProc::start(
        &sk,
        &relay.url,
        &smol.url,
        &["--metrics-bind", "127.0.0.1:0", "--max-concurrent", "2"],
    );
    // An embedder: SmolLM2 mean-pooled behind llama.cpp's --embeddings, its worker serving
    // kind 5060 only.
    let embedder = fedai_runners::local::LocalLlamaServer::start_embeddings(
        LocalModel::SmolLm2,
        "smol-embed",
        1,
    )
    .await
    .expect("an embedding server");
    let (sk2, _) = nsec();
    let _embed_worker =
        WorkerProc::start(&sk2, &relay.url, &embedder.url, &["--serve", "embeddings"]);
    wait_for_workers(&client(&relay).await, 2).await;
    // The gateway's key, so that this test can read what it sent encrypted.
    let keys = Keys::generate();
    let gw = GatewayProc::start(&relay.url, &["--nsec", &keys.secret_key().to_secret_hex()]);
    let base = gw.base_url.clone();
    let lines = tokio::task::spawn_blocking(move || {
        check(
            &base,
            &[
                "models",
                "chat",
                "stream",
                "completion",
                "json_schema",
                "tools",
                "logprobs",
                "embeddings",
                "errors",
                "concurrent",
            ],
            &[],
        )
    })
    .await
    .unwrap();
    let mut ws = Ws::connect(&relay.url).await;

    // `usage` is the worker's signed metering, which anyone can fetch and check.
    let chat = scenario(&lines, "chat");
    let metering = event(&mut ws, chat["fedai"]["metering"].as_str().unwrap()).await;
    let ev = Event::from_json(metering.to_string()).unwrap();
    let m = fedai_protocol::MeteringRecord::from_event(&ev).expect("a valid metering record");
    assert_eq!(
        m.record.usage.input_tokens,
        chat["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        m.record.usage.output_tokens,
        chat["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        m.worker.to_bech32().unwrap(),
        chat["fedai"]["worker"].as_str().unwrap()
    );

    // The streamed text is exactly the worker's signed result — encrypted to the gateway, so
    // the relay (and everyone reading it) sees neither prompt nor output.
    let stream = scenario(&lines, "stream");
    let text = stream["text"].as_str().unwrap();
    let result = event(&mut ws, stream["fedai"]["result"].as_str().unwrap()).await;
    let request = event(&mut ws, stream["fedai"]["request"].as_str().unwrap()).await;
    assert!(
        request["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t[0] == "encrypted"),
        "the job went encrypted: {request}"
    );
    assert_eq!(
        request["pubkey"].as_str().unwrap(),
        keys.public_key().to_hex()
    );
    assert!(!result["content"].as_str().unwrap().contains(text));
    let ev = Event::from_json(result.to_string()).unwrap();
    let parsed = fedai_protocol::JobResult::from_event(&ev, Some(&keys)).unwrap();
    assert_eq!(parsed.result.output, text, "streamed = signed output");
    assert!(stream["chunks"].as_u64().unwrap() >= 3, "{stream}");

    // A tool call is the worker's signed answer too: the result's content, decrypted, is the
    // tool answer the SDK read.
    let tools = scenario(&lines, "tools");
    let result = event(&mut ws, tools["fedai"]["result"].as_str().unwrap()).await;
    let ev = Event::from_json(result.to_string()).unwrap();
    let parsed = fedai_protocol::JobResult::from_event(&ev, Some(&keys)).unwrap();
    let answer = fedai_protocol::JsonAnswer::parse(&parsed.result.output).unwrap();
    assert_eq!(answer.tool_calls[0].function.name, "get_weather");
    assert_eq!(
        answer.tool_calls[0].function.arguments,
        tools["call"].as_str().unwrap()
    );
    println!("tool call round trip: {tools}");

    // The vectors are the worker's signed answer: kind 6060, encrypted to the gateway.
    let embeddings = scenario(&lines, "embeddings");
    let result = event(&mut ws, embeddings["fedai"]["result"].as_str().unwrap()).await;
    assert_eq!(result["kind"], 6060);
    let ev = Event::from_json(result.to_string()).unwrap();
    let parsed = fedai_protocol::JobResult::from_event(&ev, Some(&keys)).unwrap();
    let answer = fedai_protocol::EmbedAnswer::parse(&parsed.result.output).unwrap();
    assert_eq!(answer.vectors.len(), 3);
    let head: Vec<f64> = serde_json::from_value(embeddings["head"].clone()).unwrap();
    for (a, b) in answer.vectors[0].iter().zip(&head) {
        assert_eq!(f64::from(*a), *b, "the SDK decoded the signed f32s exactly");
    }

    // The gateway's own metrics saw the calls and the streamed first tokens.
    let gw_addr = gw
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    let (_, m) = fedai_tests::http_get(&gw_addr, "/metrics", "text/plain").await;
    let value = |prefix: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {m}"))
    };
    assert!(value(r#"fedai_gateway_calls_total{endpoint="chat",status="200"}"#) >= 19.0);
    assert!(value(r#"fedai_gateway_calls_total{endpoint="chat",status="404"}"#) >= 1.0);
    assert!(value("fedai_gateway_first_token_seconds_count") >= 1.0);
    assert_eq!(value("fedai_gateway_jobs "), 0.0);

    let concurrent = scenario(&lines, "concurrent");
    assert_eq!(concurrent["answered"], 16);
    println!("16 parallel requests through the gateway: {concurrent}");

    // An app that hangs up mid-stream: the job is cancelled on Nostr and the worker stops.
    let metrics = worker.metrics_url.clone().expect("metrics url");
    let base = gw.base_url.clone();
    let lines = tokio::task::spawn_blocking(move || check(&base, &["disconnect"], &[]))
        .await
        .unwrap();
    let hung_up = Instant::now();
    let line = scenario(&lines, "disconnect");
    let request = line["request"].as_str().unwrap().to_owned();
    let closed_at = line["closed_at"].as_f64().unwrap();
    let mut cancelled = None;
    for round in 0.. {
        if hung_up.elapsed() > Duration::from_secs(10) {
            break;
        }
        let feedback = ws
            .query(
                &format!("fb{round}"),
                json!({"kinds": [7000], "#e": [request]}),
            )
            .await;
        cancelled = feedback.into_iter().find(|f| {
            let tags = f["tags"].as_array().unwrap();
            tags.iter().any(|t| t[0] == "status" && t[1] == "error")
                && tags.iter().any(|t| t[0] == "code" && t[1] == "cancelled")
        });
        if cancelled.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = cancelled.expect("the worker answered the hang-up with `cancelled`");
    // `created_at` is in whole seconds: within a second of the hang-up means at most the
    // next second.
    let at = cancelled["created_at"].as_u64().unwrap() as f64;
    println!("hung up at {closed_at:.3}; `cancelled` stamped {at}");
    assert!(at <= closed_at.floor() + 1.0, "{at} vs {closed_at}");
    let addr = metrics.trim_start_matches("http://").to_owned();
    let (_, body) = fedai_tests::http_get(&addr, "/metrics", "text/plain").await;
    assert!(
        body.lines().any(|l| l == "fedai_worker_in_flight 0"),
        "the worker runs nothing after the hang-up: {body}"
    );
}

/// A gateway with a wallet (the customer's lnd on simnet) and a small budget: it pays each
/// answer, answers 402 once the budget cannot cover the next, never spends more than the
/// budget, and remembers what it spent across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_pays_within_its_budget_across_restarts() {
    use fedai_tests::lightning::LightningNet;
    let net = tokio::task::spawn_blocking(|| LightningNet::start(2, 1_000_000))
        .await
        .unwrap();
    let (cust, work) = (&net.nodes[0], &net.nodes[1]);
    let relay = RelayProc::start(&["--memory"]);
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let (sk, _) = nsec();
    let rest = |n: &fedai_tests::lightning::LndNode| format!("https://{}", n.rest);
    let (wcert, wmac) = (
        work.cert.display().to_string(),
        work.macaroon.display().to_string(),
    );
    let _w = WorkerProc::start(
        &sk,
        &relay.url,
        &tiny.url,
        &[
            "--payment-mode",
            "before",
            "--lnd-url",
            &rest(work),
            "--lnd-cert",
            &wcert,
            "--lnd-macaroon",
            &wmac,
            "--price",
            "tiny=2000:1000:1000",
        ],
    );
    wait_for_workers(&client(&relay).await, 1).await;
    let ledger = fedai_tests::temp_dir("gateway-ledger").join("ledger.json");
    let (cert, mac) = (
        cust.cert.display().to_string(),
        cust.macaroon.display().to_string(),
    );
    let (url, ledger_s) = (rest(cust), ledger.display().to_string());
    let args = [
        "--lnd-url",
        &url,
        "--lnd-cert",
        &cert,
        "--lnd-macaroon",
        &mac,
        "--ln-network",
        "simnet",
        "--max-fee-msat",
        "10",
        "--budget-msat",
        "7000",
        "--budget-file",
        &ledger_s,
    ];
    // A wallet without a budget is refused at start.
    let e = GatewayProc::try_start(&relay.url, &args[..10])
        .err()
        .expect("refused");
    assert!(e.contains("--budget-msat"), "{e}");

    let before = cust.channel_local_msat();
    let gw = GatewayProc::start(&relay.url, &args);
    let base = gw.base_url.clone();
    let lines =
        tokio::task::spawn_blocking(move || check(&base, &["budget"], &[("FEDAI_MODEL", "tiny")]))
            .await
            .unwrap();
    let budget = scenario(&lines, "budget");
    let paid: Vec<u64> = budget["paid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    let total: u64 = paid.iter().sum();
    println!("paid {paid:?} then: {}", budget["message"]);
    assert!(paid.len() >= 2, "{paid:?}");
    assert!(total <= 7000, "never beyond the budget: {paid:?}");
    let mut spent = 0;
    for _ in 0..100 {
        spent = before - cust.channel_local_msat();
        if spent == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(spent, total, "the wallet paid exactly what the answers say");

    // Restarted on the same ledger: the budget is still spent.
    drop(gw);
    let gw = GatewayProc::start(&relay.url, &args);
    let base = gw.base_url.clone();
    tokio::task::spawn_blocking(move || check(&base, &["spent"], &[("FEDAI_MODEL", "tiny")]))
        .await
        .unwrap();
    assert_eq!(
        before - cust.channel_local_msat(),
        total,
        "nothing more paid"
    );
}

/// A raw HTTP/1.1 exchange: (status code, body).
async fn http(addr: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn post(host: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Who may use the gateway: on loopback without keys, only requests that name a loopback host
/// and send JSON (a web page cannot, without a CORS preflight we never answer); with keys, only
/// a matching Bearer key; beyond loopback, never without keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_admits_only_its_own_apps() {
    let relay = RelayProc::start(&["--memory"]);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#;
    let json = "Content-Type: application/json\r\n";

    let open = GatewayProc::start(&relay.url, &[]);
    let addr = open
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    let path = "/v1/chat/completions";
    let (code, b) = http(&addr, &post(&addr, path, json, body)).await;
    assert_eq!(code, 404, "no worker serves `m`: {b}");
    let (code, _) = http(&addr, &post("evil.example:8088", path, json, body)).await;
    assert_eq!(code, 401, "a rebound DNS name is refused");
    let (code, b) = http(
        &addr,
        &post(&addr, path, "Content-Type: text/plain\r\n", body),
    )
    .await;
    assert_eq!(code, 415, "{b}");
    let (code, b) = http(
        &addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 405);
    assert!(b.contains("method_not_allowed"), "{b}");

    let keys = fedai_tests::temp_dir("gateway-keys").join("keys");
    std::fs::write(&keys, "# keys\nsk-test-0123456789abcdef\n").unwrap();
    let keys = keys.display().to_string();
    let locked = GatewayProc::start(&relay.url, &["--api-key-file", &keys]);
    let addr = locked
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    for (auth, want) in [
        ("", 401),
        ("Authorization: Bearer wrong-key-0123456789\r\n", 401),
        ("Authorization: Bearer \r\n", 401),
        ("Authorization: bearer sk-test-0123456789abcdef\r\n", 404),
    ] {
        let (code, b) = http(&addr, &post(&addr, path, &format!("{auth}{json}"), body)).await;
        assert_eq!(code, want, "{auth:?}: {b}");
    }
    let (code, _) = http(
        &addr,
        &format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200, "health needs no key");

    let e = GatewayProc::try_start(&relay.url, &["--listen", "0.0.0.0:0"])
        .err()
        .expect("refused");
    assert!(e.contains("API keys"), "{e}");
    // The same from the config file (`fedai --config`): the gateway's keys are read there too.
    let dir = fedai_tests::temp_dir("gateway-config");
    let cfg = dir.join("fedai.toml");
    std::fs::write(&cfg, "listen = \"0.0.0.0:0\"\nbudget_msat = 5000\n").unwrap();
    let cfg = cfg.display().to_string();
    let e = GatewayProc::try_start(&relay.url, &["--config", &cfg])
        .err()
        .expect("refused");
    assert!(e.contains("API keys"), "{e}");
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:0\"\napi_key_file = \"{keys}\"\n"),
    )
    .unwrap();
    let from_file = GatewayProc::start(&relay.url, &["--config", &cfg]);
    let addr = from_file
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    let (code, _) = http(&addr, &post(&addr, path, json, body)).await;
    assert_eq!(code, 401, "the key file named in the config is in force");
}
