//! Regenerates the example events in `nips/*.md`.
//!
//! Each example block in a spec is a line `<!-- example: NAME -->` followed by a ```json fence;
//! this program signs a fresh event for every NAME with the well-known example keys (see
//! `nips/README.md`) and rewrites the fence. `tests/nips.rs` parses every block back with this
//! crate, so the specs cannot drift from the code.
//!
//! Run: `cargo run -p fedai-protocol --example nip_examples`

use std::collections::HashMap;
use std::path::Path;

use fedai_protocol::capability::PaymentInfo;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::Usage;
use fedai_protocol::*;
// nostr's prelude has a NIP-47 `ErrorCode` too; ours is meant.
use fedai_protocol::ErrorCode;

/// Example secret keys, published in nips/README.md. Never use them for anything else.
pub const CUSTOMER_SK: &str = "7f7ff03d123792d6ac594bfa67bf6d0c0ab55b6b1fdb6249303fe861f1ccba9a";
pub const WORKER_SK: &str = "c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add";

fn main() {
    let customer = Keys::parse(CUSTOMER_SK).unwrap();
    let worker = Keys::parse(WORKER_SK).unwrap();
    let far = Timestamp::from_secs(4_102_444_800); // 2100-01-01
    let mut ex: HashMap<&str, Event> = HashMap::new();

    let mut req = JobRequest::text("Write a haiku about relays.");
    req.params = JobParams {
        model: Some("smollm2-135m-instruct-q4_1".into()),
        max_tokens: Some(64),
        temperature: Some(0.7),
        top_k: Some(40),
        top_p: Some(0.9),
        frequency_penalty: None,
        stop: vec!["\n\n".into()],
        stream: true,
        seed: Some(42),
        presence_penalty: None,
        json_schema: None,
        tools: None,
        tool_choice: None,
        parallel_tool_calls: None,
        logprobs: false,
        top_logprobs: None,
    };
    req.bid_msat = Some(50_000);
    req.relays = vec!["wss://relay.example.com".into()];
    req.expiration = Some(far);
    let req_ev = req.to_event(&customer, None).unwrap();
    let preq = JobRequest::from_event(&req_ev, None).unwrap();
    ex.insert("job-request", req_ev.clone());

    let mut chat = JobRequest {
        input: JobInput::Chat(vec![
            ChatMessage::new("system", "You are terse."),
            ChatMessage::new("user", "What is Nostr?"),
        ]),
        provider: Some(worker.public_key()),
        expiration: Some(far),
        ..JobRequest::text("")
    };
    chat.params.model = Some("smollm2-135m-instruct-q4_1".into());
    let mut schema = chat.clone();
    schema.input = JobInput::Chat(vec![ChatMessage::new("user", "Name a colour, as JSON.")]);
    schema.params.json_schema = Some(
        r#"{"type":"object","properties":{"colour":{"type":"string"}},"required":["colour"]}"#
            .into(),
    );
    schema.params.presence_penalty = Some(0.5);
    ex.insert(
        "job-request-json-schema",
        schema.to_event(&customer, None).unwrap(),
    );
    // Function calling: the offered tools, and a conversation in which the model called one and
    // the app answered it.
    let call = ToolCall {
        id: "call_7c1e0d2a9b3f4e51_0".into(),
        kind: "function".into(),
        function: FunctionCall {
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        },
    };
    let mut tools = chat.clone();
    tools.input = JobInput::Chat(vec![
        ChatMessage::new("user", "Weather in Paris?"),
        ChatMessage {
            tool_calls: vec![call.clone()],
            ..ChatMessage::new("assistant", "")
        },
        ChatMessage {
            tool_call_id: Some(call.id.clone()),
            ..ChatMessage::new("tool", "18 C, sunny")
        },
    ]);
    tools.params.tools = Some(
        r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#
            .into(),
    );
    tools.params.tool_choice = Some("auto".into());
    let tools_ev = tools.to_event(&customer, None).unwrap();
    let ptools = JobRequest::from_event(&tools_ev, None).unwrap();
    ex.insert("job-request-tools", tools_ev.clone());
    let answer = JsonAnswer {
        tool_calls: vec![ToolCall {
            id: "call_0b9d4e7f12a6c3d8_0".into(),
            ..call
        }],
        ..JsonAnswer::default()
    };
    ex.insert(
        "job-result-tools",
        JobResult::for_request(
            &tools_ev,
            &ptools,
            answer.to_output(),
            "smollm2-135m-instruct-q4_1".into(),
            Usage {
                input_tokens: 161,
                output_tokens: 17,
            },
        )
        .to_event(&worker)
        .unwrap(),
    );
    // Embeddings: two texts, each an `i` tag; the result one vector per text (4 dimensions
    // here, hundreds in practice).
    let mut em = JobRequest::embed(["The cat sat on the mat.", "Quarterly revenue grew."]);
    em.params.model = Some("nomic-embed-text-v1.5".into());
    em.expiration = Some(far);
    let em_ev = em.to_event(&customer, None).unwrap();
    let pem = JobRequest::from_event(&em_ev, None).unwrap();
    ex.insert("embed-request", em_ev.clone());
    let vectors = EmbedAnswer {
        vectors: vec![vec![0.5, -0.25, 0.125, 0.8], vec![-0.1, 0.7, 0.3, -0.6]],
    };
    ex.insert(
        "embed-result",
        JobResult::for_request(
            &em_ev,
            &pem,
            vectors.to_output(),
            "nomic-embed-text-v1.5".into(),
            Usage {
                input_tokens: 14,
                output_tokens: 0,
            },
        )
        .to_event(&worker)
        .unwrap(),
    );
    // Log probabilities: a short answer with each token's and one alternative.
    let mut lp = JobRequest::chat("Name a colour.");
    lp.params.model = Some("smollm2-135m-instruct-q4_1".into());
    lp.params.max_tokens = Some(4);
    lp.params.logprobs = true;
    lp.params.top_logprobs = Some(1);
    lp.expiration = Some(far);
    let lp_ev = lp.to_event(&customer, None).unwrap();
    let plp = JobRequest::from_event(&lp_ev, None).unwrap();
    let tok = |token: &str, logprob: f32, alt: &str, alt_p: f32| TokenLogprob {
        token: token.into(),
        logprob,
        top_logprobs: vec![TopLogprob {
            token: alt.into(),
            logprob: alt_p,
        }],
    };
    let lp_answer = JsonAnswer {
        content: "Blue.".into(),
        logprobs: vec![
            tok("Blue", -0.31, "Blue", -0.31),
            tok(".", -0.02, ".", -0.02),
        ],
        ..JsonAnswer::default()
    };
    ex.insert("job-request-logprobs", lp_ev.clone());
    ex.insert(
        "job-result-logprobs",
        JobResult::for_request(
            &lp_ev,
            &plp,
            lp_answer.to_output(),
            "smollm2-135m-instruct-q4_1".into(),
            Usage {
                input_tokens: 31,
                output_tokens: 2,
            },
        )
        .to_event(&worker)
        .unwrap(),
    );
    ex.insert(
        "job-request-chat-directed",
        chat.to_event(&customer, None).unwrap(),
    );
    let enc_ev = chat.to_event(&customer, Some(Encryption::Nip44)).unwrap();
    ex.insert("job-request-encrypted", enc_ev.clone());

    // What a generic NIP-90 client sends (no fed_AI marker): two inputs, the second the output of
    // an earlier job (chaining) with a relay hint, the `prompt` input type, no expiration.
    let tag = |v: &[&str]| Tag::parse(v.iter().copied()).unwrap();
    let generic = EventBuilder::new(Kind::from_u16(kinds::JOB_REQUEST), "")
        .tags([
            tag(&["i", "Summarise in one line:", "prompt"]),
            tag(&["i", &req_ev.id.to_hex(), "job", "wss://relay.example.com"]),
            tag(&["param", "max_tokens", "48"]),
            tag(&["param", "seed", "7"]),
            tag(&[
                "relays",
                "wss://relay.example.com",
                "wss://other.example.org",
            ]),
            tag(&["p", &worker.public_key().to_hex()]),
        ])
        .custom_created_at(Timestamp::from_secs(1_795_356_200))
        .finalize(&customer)
        .unwrap();
    ex.insert("generic-job-request", generic);
    // Another DVM's feedback: a status and nothing else fed_AI defines.
    let bare = EventBuilder::new(Kind::from_u16(kinds::JOB_FEEDBACK), "")
        .tags([
            tag(&["status", "processing", "warming up"]),
            tag(&["e", &req_ev.id.to_hex()]),
            tag(&["p", &customer.public_key().to_hex()]),
        ])
        .custom_created_at(Timestamp::from_secs(1_795_356_200))
        .finalize(&worker)
        .unwrap();
    ex.insert("generic-feedback", bare);

    ex.insert(
        "feedback-processing",
        JobFeedback::new(req_ev.id, customer.public_key(), FeedbackStatus::Processing)
            .to_event(&worker)
            .unwrap(),
    );
    ex.insert(
        "feedback-partial",
        JobFeedback::partial(req_ev.id, customer.public_key(), 0, "Signals hop".into())
            .to_event(&worker)
            .unwrap(),
    );
    ex.insert(
        "feedback-payment-required",
        JobFeedback::payment_required(
            req_ev.id,
            customer.public_key(),
            Amount {
                msat: 12_000,
                bolt11: Some("lnbcrt120n1pexample".into()),
            },
        )
        .to_event(&worker)
        .unwrap(),
    );
    ex.insert(
        "feedback-error",
        JobFeedback::error(
            req_ev.id,
            customer.public_key(),
            ErrorCode::ModelUnavailable,
            "model `gpt-9` is not served here",
        )
        .to_event(&worker)
        .unwrap(),
    );
    ex.insert(
        "feedback-success",
        JobFeedback::new(req_ev.id, customer.public_key(), FeedbackStatus::Success)
            .to_event(&worker)
            .unwrap(),
    );

    let output =
        "Signals hop through wire\nrelays hum in quiet dark\nnotes find their way home".to_string();
    let usage = Usage {
        input_tokens: 14,
        output_tokens: 21,
    };
    let mut res = JobResult::for_request(
        &req_ev,
        &preq,
        output.clone(),
        "smollm2-135m-instruct-q4_1".into(),
        usage,
    );
    res.amount = Some(Amount {
        msat: 12_000,
        bolt11: None,
    });
    let res_ev = res.to_event(&worker).unwrap();
    ex.insert("job-result", res_ev.clone());
    let penc = JobRequest::from_event(&enc_ev, Some(&worker)).unwrap();
    let enc_res = JobResult::for_request(
        &enc_ev,
        &penc,
        "A protocol for signed notes over relays.".into(),
        "smollm2-135m-instruct-q4_1".into(),
        Usage {
            input_tokens: 20,
            output_tokens: 9,
        },
    );
    ex.insert("job-result-encrypted", enc_res.to_event(&worker).unwrap());

    let rec = MeteringRecord {
        request_id: req_ev.id,
        result_id: res_ev.id,
        customer: customer.public_key(),
        model: "smollm2-135m-instruct-q4_1".into(),
        prompt_sha256: preq.prompt_sha256(),
        usage,
        wall_ms: 412,
        bytes_in: preq.input_data.len() as u64,
        bytes_out: output.len() as u64,
        price_msat: 12_000,
        payment_hash: Some(sha256_hex(&[0x42; 32])),
    };
    ex.insert("metering", rec.to_event(&worker).unwrap());
    let metering_id = ex["metering"].id;
    ex.insert(
        "attestation",
        Attestation {
            worker: worker.public_key(),
            verdict: AttestationVerdict::Delivered,
            request_id: req_ev.id,
            result_id: Some(res_ev.id),
            metering_id: Some(metering_id),
        }
        .to_event(&customer)
        .unwrap(),
    );

    let quote = JobFeedback::payment_required(
        req_ev.id,
        customer.public_key(),
        Amount {
            msat: 12_000,
            bolt11: Some("lnbcrt120n1pexample".into()),
        },
    )
    .to_event(&worker)
    .unwrap();
    ex.insert(
        "award",
        Award {
            request_id: req_ev.id,
            quote_id: quote.id,
            worker: worker.public_key(),
            amount_msat: 12_000,
            expiration: Some(far),
        }
        .to_event(&customer)
        .unwrap(),
    );
    ex.insert(
        "payment-receipt",
        PaymentReceipt {
            request_id: req_ev.id,
            result_id: Some(res_ev.id),
            worker: worker.public_key(),
            amount_msat: 12_000,
            bolt11: "lnbcrt120n1pexample".into(),
            payment_hash: sha256_hex(&[0x42; 32]),
            preimage: "42".repeat(32),
            zap_request: None,
        }
        .to_event(&customer)
        .unwrap(),
    );
    // Paying by zap (fedai-04): the worker offers a zap target, the customer zaps the request.
    ex.insert(
        "feedback-payment-required-zap",
        JobFeedback {
            zap: Some("worker@example.com".into()),
            ..JobFeedback::payment_required(
                req_ev.id,
                customer.public_key(),
                Amount {
                    msat: 12_000,
                    bolt11: None,
                },
            )
        }
        .to_event(&worker)
        .unwrap(),
    );
    let zap_request = EventBuilder::new(Kind::ZapRequest, "")
        .tags([
            Tag::parse(["relays", "wss://relay.example.com"]).unwrap(),
            Tag::parse(["amount", "12000"]).unwrap(),
            Tag::public_key(worker.public_key()),
            Tag::event(req_ev.id),
        ])
        .custom_created_at(Timestamp::from_secs(1_795_356_200))
        .finalize(&customer)
        .unwrap();
    ex.insert("zap-request", zap_request.clone());
    ex.insert(
        "payment-receipt-zap",
        PaymentReceipt {
            request_id: req_ev.id,
            result_id: Some(res_ev.id),
            worker: worker.public_key(),
            amount_msat: 12_000,
            bolt11: "lnbcrt120n1pexample".into(),
            payment_hash: sha256_hex(&[0x43; 32]),
            preimage: "43".repeat(32),
            zap_request: Some(zap_request.as_json()),
        }
        .to_event(&customer)
        .unwrap(),
    );

    let ad = CapabilityAd {
        instance: "cpu-box-1".into(),
        name: "fedai worker on a small CPU box".into(),
        about: "SmolLM2 135M on llama.cpp".into(),
        job_kinds: vec![kinds::JOB_REQUEST],
        models: vec![ModelInfo {
            id: "smollm2-135m-instruct-q4_1".into(),
            context_length: 8192,
            quantisation: "Q4_1".into(),
            dimensions: 0,
        }],
        prices: vec![Price {
            model: "smollm2-135m-instruct-q4_1".into(),
            base_msat: 1_000,
            per_1k_input_msat: 100,
            per_1k_output_msat: 500,
        }],
        max_concurrent: 4,
        in_flight: 1,
        queue_depth: 0,
        hardware: Hardware::Cpu {
            name: "AMD EPYC".into(),
            cores: 2,
            memory_mib: 24_576,
        },
        runner: "llama-cpp".into(),
        healthy: true,
        payment: PaymentInfo {
            ln_node: Some("02".to_owned() + &"ab".repeat(32)),
            lightning_address: Some("worker@example.com".into()),
            lnurl: None,
            mode: Some(PaymentMode::Before),
        },
        relays: vec!["wss://relay.example.com".into()],
        version: "fedai-worker/0.1.0".into(),
        encryption_supported: true,
        features: vec!["chat".into(), "json_schema".into()],
        expiration: far,
    };
    ex.insert("capability-ad", ad.to_event(&worker).unwrap());

    let nips = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nips");
    let mut used = 0;
    for entry in std::fs::read_dir(&nips).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut out = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            out.push_str(line);
            out.push('\n');
            if let Some(name) = line
                .strip_prefix("<!-- example: ")
                .and_then(|l| l.strip_suffix(" -->"))
            {
                let ev = ex
                    .get(name)
                    .unwrap_or_else(|| panic!("{}: unknown example {name}", path.display()));
                // Skip the old fence.
                if lines.peek() == Some(&"```json") {
                    for l in lines.by_ref() {
                        if l == "```" {
                            break;
                        }
                    }
                }
                let pretty = serde_json::to_string_pretty(
                    &serde_json::from_str::<serde_json::Value>(&ev.as_json()).unwrap(),
                )
                .unwrap();
                out.push_str("```json\n");
                out.push_str(&pretty);
                out.push_str("\n```\n");
                used += 1;
            }
        }
        std::fs::write(&path, out).unwrap();
    }
    println!("wrote {used} examples");
}
