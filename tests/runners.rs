//! Runner adapters against a real llama.cpp server (the `xllamacpp` wheel) with real GGUF models.
//! The Ollama adapter is tested against `workers/runner/ollama_shim.py`, a **format shim** that
//! puts Ollama's API in front of the same llama.cpp server: it is not Ollama (which cannot be
//! installed here).

use std::process::{Command, Stdio};
use std::time::Duration;

use fedai_protocol::{ChatMessage, JobInput, JobParams};
use fedai_runners::local::{install, runner_dir, LocalModel};
use fedai_runners::{build, HttpOptions, InferRequest, Piece, Runner, RunnerError, SandboxPolicy};
use futures_util::StreamExt;

async fn collect(r: &dyn Runner, req: InferRequest) -> (String, u64, u64) {
    let mut s = r.infer(req).await.expect("infer starts");
    let mut text = String::new();
    while let Some(p) = s.next().await {
        match p.expect("piece") {
            Piece::Text(t) => text.push_str(&t),
            Piece::Logprob(_) => {}
            Piece::Done {
                input_tokens,
                output_tokens,
            } => return (text, input_tokens, output_tokens),
        }
    }
    panic!("stream ended without Done");
}

/// Whether `r` answers its health check within 5 s.
async fn up(r: &dyn Runner) -> bool {
    for _ in 0..50 {
        if r.health().await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn req(model: &str, input: JobInput, max_tokens: u32) -> InferRequest {
    InferRequest {
        model: model.into(),
        input,
        params: JobParams {
            temperature: Some(0.0),
            ..JobParams::default()
        },
        max_tokens,
    }
}

#[tokio::test]
async fn llama_cpp_and_openai_adapters_on_a_real_server() {
    let server = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let policy = SandboxPolicy::default();
    for kind in ["llama-cpp", "openai"] {
        let r = build(kind, &server.url, &policy, HttpOptions::default()).unwrap();
        r.health().await.unwrap();
        let models = r.list_models().await.unwrap();
        assert_eq!(models[0].id, "tiny", "{kind}");
        // The tiny model never emits EOS: exactly max_tokens come out.
        let (text, input, output) = collect(
            r.as_ref(),
            req("tiny", JobInput::Text("the cat and the dog".into()), 24),
        )
        .await;
        assert_eq!(output, 24, "{kind}: exact token count");
        assert!(input >= 4, "{kind}: prompt tokens counted ({input})");
        assert!(!text.is_empty());
        let chat = JobInput::Chat(vec![ChatMessage::new("user", "hello there")]);
        let (_, cin, cout) = collect(r.as_ref(), req("tiny", chat, 8)).await;
        assert_eq!(cout, 8, "{kind}: chat");
        assert!(
            cin > input.min(4),
            "{kind}: chat template adds tokens ({cin})"
        );
        let err = r
            .infer(req("no-such-model", JobInput::Text("x".into()), 4))
            .await
            .err()
            .expect("unknown model fails");
        assert!(
            matches!(
                err,
                RunnerError::UnknownModel(_) | RunnerError::Status { .. }
            ),
            "{kind}: {err:?}"
        );
        let est = r
            .estimate(&req(
                "tiny",
                JobInput::Text("the cat and the dog".into()),
                10,
            ))
            .await
            .unwrap();
        assert!(est.input_tokens > 0 && est.max_output_tokens == 10);
    }
    // Cancellation: dropping a stream mid-generation stops it; the server keeps serving.
    let r = build("llama-cpp", &server.url, &policy, HttpOptions::default()).unwrap();
    let mut s = r
        .infer(req("tiny", JobInput::Text("go".into()), 100_000))
        .await
        .unwrap();
    assert!(matches!(s.next().await, Some(Ok(Piece::Text(_)))));
    drop(s);
    let (_, _, out) = tokio::time::timeout(
        Duration::from_secs(20),
        collect(r.as_ref(), req("tiny", JobInput::Text("again".into()), 5)),
    )
    .await
    .expect("server free again after a cancelled stream");
    assert_eq!(out, 5);
}

#[tokio::test]
async fn runner_down_fails_fast_with_a_clear_error() {
    let port = fedai_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let opts = HttpOptions {
        connect_attempts: 3,
        ..HttpOptions::default()
    };
    let r = build("llama-cpp", &url, &SandboxPolicy::default(), opts).unwrap();
    let t0 = std::time::Instant::now();
    let e = r.health().await.unwrap_err();
    assert!(matches!(e, RunnerError::Unreachable(_)), "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "bounded retries: {:?}",
        t0.elapsed()
    );
    assert!(
        build(
            "llama-cpp",
            "http://192.0.2.1:80",
            &SandboxPolicy::default(),
            opts
        )
        .is_err(),
        "sandbox refuses non-loopback"
    );
}

#[tokio::test]
async fn ollama_adapter_through_the_format_shim() {
    let server = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let inst = install().unwrap();
    let port = fedai_tests::free_port();
    let mut shim = Command::new(&inst.python)
        .arg(runner_dir().join("ollama_shim.py"))
        .args(["--upstream", &server.url, "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let r = build(
        "ollama",
        &url,
        &SandboxPolicy::default(),
        HttpOptions::default(),
    )
    .unwrap();
    assert!(up(r.as_ref()).await, "shim up");
    let model = r.list_models().await.unwrap()[0].id.clone();
    let (text, _, out) = collect(
        r.as_ref(),
        req(&model, JobInput::Text("the sky".into()), 12),
    )
    .await;
    assert_eq!(out, 12);
    assert!(!text.is_empty());
    let chat = JobInput::Chat(vec![ChatMessage::new("user", "hi")]);
    let (_, _, out) = collect(r.as_ref(), req(&model, chat, 6)).await;
    assert_eq!(out, 6);
    let _ = shim.kill();
    let _ = shim.wait();
}

/// A server speaking the generic fed_AI runner contract (`/models`, `/infer`, `/estimate`,
/// `/health`) in front of the real llama.cpp server, through the llama-cpp adapter. It is a
/// contract front written for this test (like a third-party runner would be), generating with
/// the real model.
async fn contract_server(upstream: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let runner: std::sync::Arc<dyn Runner> = build(
        "llama-cpp",
        &upstream,
        &SandboxPolicy::default(),
        HttpOptions::default(),
    )
    .unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let runner = runner.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body: serde_json::Value =
                    serde_json::from_slice(&buf[head_end..]).unwrap_or_default();
                let req = || InferRequest {
                    model: body["model"].as_str().unwrap_or("").into(),
                    input: JobInput::Text(body["prompt"].as_str().unwrap_or("").into()),
                    params: JobParams::default(),
                    max_tokens: body["maxTokens"].as_u64().unwrap_or(16) as u32,
                };
                let (status, out) = match path.as_str() {
                    "/health" => ("200 OK", serde_json::json!({"ok": true})),
                    "/models" => {
                        let m = runner.list_models().await.unwrap();
                        (
                            "200 OK",
                            serde_json::json!({"models": m.iter().map(|m| serde_json::json!({"id": m.id, "contextLength": m.context_length, "quantisation": m.quantisation})).collect::<Vec<_>>()}),
                        )
                    }
                    "/estimate" => {
                        let e = runner.estimate(&req()).await.unwrap();
                        (
                            "200 OK",
                            serde_json::json!({"inputTokens": e.input_tokens, "maxOutputTokens": e.max_output_tokens}),
                        )
                    }
                    "/infer" => match runner.infer(req()).await {
                        Err(RunnerError::UnknownModel(_)) => (
                            "404 Not Found",
                            serde_json::json!({"error": "unknown model"}),
                        ),
                        Err(e) => (
                            "500 Internal Server Error",
                            serde_json::json!({"error": e.to_string()}),
                        ),
                        Ok(mut st) => {
                            let (mut output, mut usage) = (String::new(), (0, 0));
                            while let Some(p) = st.next().await {
                                match p.unwrap() {
                                    Piece::Text(t) => output.push_str(&t),
                                    Piece::Logprob(_) => {}
                                    Piece::Done {
                                        input_tokens,
                                        output_tokens,
                                    } => usage = (input_tokens, output_tokens),
                                }
                            }
                            (
                                "200 OK",
                                serde_json::json!({"output": output, "usage": {"inputTokens": usage.0, "outputTokens": usage.1}}),
                            )
                        }
                    },
                    _ => ("404 Not Found", serde_json::json!({})),
                };
                let b = out.to_string();
                let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len());
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn generic_http_adapter_speaks_the_runner_contract() {
    let server = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let url = contract_server(server.url.clone()).await;
    let r = build(
        "http",
        &url,
        &SandboxPolicy::default(),
        HttpOptions::default(),
    )
    .unwrap();
    r.health().await.unwrap();
    assert_eq!(r.list_models().await.unwrap()[0].id, "tiny");
    let (text, input, output) =
        collect(r.as_ref(), req("tiny", JobInput::Text("a river".into()), 9)).await;
    assert_eq!(output, 9);
    assert!(input > 0 && !text.is_empty());
    let est = r
        .estimate(&req("tiny", JobInput::Text("a river".into()), 9))
        .await
        .unwrap();
    assert_eq!(est.max_output_tokens, 9);
    let err = r
        .infer(req("nope", JobInput::Text("x".into()), 2))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RunnerError::UnknownModel(_)), "{err:?}");
}

/// Function calling on a real chat model whose own template has no tool section (SmolLM2):
/// the tools job runs as a schema-constrained chat on both HTTP adapters and reads back as a
/// call of the offered function with arguments matching its schema.
#[tokio::test]
async fn tools_run_on_json_schema_with_a_real_chat_model() {
    use fedai_runners::tools;
    let server = fedai_tests::llama(LocalModel::SmolLm2, "smol", 1).await;
    let policy = SandboxPolicy::default();
    let weather = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string","maxLength":20}},"required":["city"],"additionalProperties":false}}}]"#;
    for kind in ["llama-cpp", "openai"] {
        let r = build(kind, &server.url, &policy, HttpOptions::default()).unwrap();
        assert!(r.features().contains(&"tools"), "{kind} advertises tools");
        let mut job = req(
            "smol",
            JobInput::Chat(vec![ChatMessage::new(
                "user",
                "What is the weather in Paris?",
            )]),
            400,
        );
        job.params.tools = Some(weather.into());
        job.params.tool_choice = Some("required".into());
        let plan = tools::prepare(&mut job).unwrap().expect("a tools job");
        let (out, _, n) = collect(r.as_ref(), job).await;
        let answer = tools::answer(plan, "", &out).unwrap_or_else(|e| panic!("{kind}: {e}: {out}"));
        let call = &answer.tool_calls[0];
        assert_eq!(call.function.name, "get_weather", "{kind}");
        let args: serde_json::Value = serde_json::from_str(&call.function.arguments).unwrap();
        assert!(args["city"].is_string(), "{kind}: {args}");
        assert!(
            n > 0 && n < 400,
            "{kind}: the constrained answer ends by itself ({n} tokens)"
        );
    }
}

/// Token log probabilities from llama.cpp's own API: one per generated token, with the asked
/// number of alternatives, making the text.
#[tokio::test]
async fn llama_cpp_gives_each_tokens_log_probability() {
    let server = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let r = build(
        "llama-cpp",
        &server.url,
        &SandboxPolicy::default(),
        HttpOptions::default(),
    )
    .unwrap();
    assert!(r.features().contains(&"logprobs"));
    let mut job = req("tiny", JobInput::Text("the cat and the dog".into()), 8);
    job.params.logprobs = true;
    job.params.top_logprobs = Some(2);
    let mut s = r.infer(job).await.unwrap();
    let (mut text, mut logprobs, mut done) = (String::new(), Vec::new(), None);
    while let Some(p) = s.next().await {
        match p.unwrap() {
            Piece::Text(t) => text.push_str(&t),
            Piece::Logprob(l) => logprobs.push(l),
            Piece::Done { output_tokens, .. } => done = Some(output_tokens),
        }
    }
    assert_eq!(done, Some(8));
    assert_eq!(logprobs.len(), 8, "one per token");
    let joined: String = logprobs.iter().map(|l| l.token.as_str()).collect();
    assert_eq!(joined, text, "the tokens make the text");
    assert!(logprobs
        .iter()
        .all(|l| l.logprob <= 0.0 && l.top_logprobs.len() == 2));
}

/// Embeddings from a real llama.cpp server (`--embeddings`, SmolLM2 mean-pooled) through each
/// adapter that embeds: the same vectors whichever way they come, one per text, of the model's
/// width, with the server's token count; a server that does not embed is an error, not a result.
#[tokio::test]
async fn embeddings_come_from_a_real_llama_cpp_server_through_every_adapter() {
    let server = fedai_runners::local::LocalLlamaServer::start_embeddings(
        LocalModel::SmolLm2,
        "smol-embed",
        1,
    )
    .await
    .expect("start an embedding server (workers/runner/setup.sh)");
    let inst = install().unwrap();
    let port = fedai_tests::free_port();
    let mut shim = Command::new(&inst.python)
        .arg(runner_dir().join("ollama_shim.py"))
        .args([
            "--upstream",
            &server.url,
            "--port",
            &port.to_string(),
            "--model",
            "smol-embed",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let texts: Vec<String> = [
        "The cat sat on the mat.",
        "A kitten sat on a rug.",
        "Quarterly revenue grew five percent.",
    ]
    .map(String::from)
    .to_vec();
    let policy = SandboxPolicy::default();
    let mut seen: Vec<Vec<Vec<f32>>> = Vec::new();
    for (kind, url) in [
        ("llama-cpp", server.url.clone()),
        ("openai", server.url.clone()),
        ("ollama", format!("http://127.0.0.1:{port}")),
    ] {
        let r = build(kind, &url, &policy, HttpOptions::default()).unwrap();
        assert!(up(r.as_ref()).await, "{kind} up");
        let e = r
            .embed("smol-embed", &texts)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(e.vectors.len(), 3, "{kind}");
        assert!(
            e.vectors.iter().all(|v| v.len() == 576),
            "{kind}: SmolLM2's width"
        );
        assert!(
            e.input_tokens >= 12,
            "{kind}: the server's count ({})",
            e.input_tokens
        );
        if kind != "ollama" {
            // (Ollama itself refuses a model it lacks; the shim in front of one server does not.)
            let unknown = r.embed("nope", &texts[..1]).await;
            assert!(unknown.is_err(), "{kind}: an unknown model");
        }
        seen.push(e.vectors);
    }
    for other in &seen[1..] {
        for (a, b) in seen[0].iter().zip(other) {
            assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6));
        }
    }
    // Different texts, different vectors.
    assert_ne!(seen[0][0], seen[0][2]);
    let _ = shim.kill();
    let _ = shim.wait();
    // A server started without --embeddings answers no vectors.
    let plain = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let r = build("llama-cpp", &plain.url, &policy, HttpOptions::default()).unwrap();
    assert!(r.embed("tiny", &texts[..1]).await.is_err());
}
