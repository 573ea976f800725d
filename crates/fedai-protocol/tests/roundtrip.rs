//! Property tests: every message survives build → sign → parse unchanged, and any tampering with
//! id, signature or tags is refused.

use fedai_protocol::capability::PaymentInfo;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::Usage;
use fedai_protocol::*;
// nostr's prelude has a NIP-47 `ErrorCode` too; ours is meant.
use fedai_protocol::ErrorCode;
use proptest::prelude::*;

fn keys() -> Keys {
    Keys::generate()
}

fn arb_text() -> impl Strategy<Value = String> {
    // Any unicode, including quotes, newlines and JSON-looking text.
    proptest::string::string_regex("(?s).{0,200}").unwrap()
}

fn arb_f(lo: f32, hi: f32) -> impl Strategy<Value = Option<f32>> {
    proptest::option::of((0u32..=100).prop_map(move |i| lo + (hi - lo) * i as f32 / 100.0))
}

prop_compose! {
    fn arb_params()(
        model in proptest::option::of("[a-zA-Z0-9._-]{1,40}"),
        max_tokens in proptest::option::of(1u32..100_000),
        temperature in arb_f(0.0, 2.0),
        top_k in proptest::option::of(0u32..1000),
        top_p in arb_f(0.01, 1.0),
        frequency_penalty in arb_f(-2.0, 2.0),
        stop in proptest::collection::vec(arb_text(), 0..3),
        stream in any::<bool>(),
        seed in proptest::option::of(any::<u64>()),
        presence_penalty in arb_f(-2.0, 2.0),
        json_schema in proptest::option::of(Just(r#"{"type":"object"}"#.to_owned())),
    ) -> JobParams {
        JobParams { model, max_tokens, temperature, top_k, top_p, frequency_penalty, stop, stream, seed, presence_penalty, json_schema, tools: None, tool_choice: None, parallel_tool_calls: None, logprobs: false, top_logprobs: None }
    }
}

prop_compose! {
    fn arb_input()(text in arb_text(), chat in any::<bool>(), n in 1usize..4) -> JobInput {
        if chat {
            JobInput::Chat((0..n).map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, text.clone())).collect())
        } else {
            JobInput::Text(text)
        }
    }
}

prop_compose! {
    fn arb_request(provider: Option<PublicKey>)(
        input in arb_input(),
        params in arb_params(),
        bid in proptest::option::of(0u64..u64::MAX),
        exp in proptest::option::of(1_700_000_000u64..4_000_000_000),
    ) -> JobRequest {
        JobRequest {
            input, params, output: Some("text/plain".into()), bid_msat: bid,
            relays: vec!["wss://relay.example.com".into()], provider,
            expiration: exp.map(Timestamp::from_secs),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn job_request_roundtrip_public(req in arb_request(None)) {
        let k = keys();
        let ev = req.to_event(&k, None).unwrap();
        let parsed = JobRequest::from_event(&ev, None).unwrap();
        prop_assert_eq!(&parsed.request, &req);
        prop_assert_eq!(parsed.customer, k.public_key());
        prop_assert_eq!(parsed.input_data, req.input.data());
        prop_assert!(parsed.encrypted.is_none());
    }

    #[test]
    fn job_request_roundtrip_encrypted(req in arb_request(None), nip04 in any::<bool>()) {
        let customer = keys();
        let worker = keys();
        let req = JobRequest { provider: Some(worker.public_key()), ..req };
        let scheme = if nip04 { Encryption::Nip04 } else { Encryption::Nip44 };
        let ev = req.to_event(&customer, Some(scheme)).unwrap();
        // Nothing private is visible on the wire.
        prop_assert!(ev.tags.iter().all(|t| t.kind() != "i" && t.kind() != "param"));
        let parsed = JobRequest::from_event(&ev, Some(&worker)).unwrap();
        prop_assert_eq!(&parsed.request, &req);
        prop_assert_eq!(parsed.encrypted, Some(scheme));
        // Another worker cannot read it.
        prop_assert_eq!(JobRequest::from_event(&ev, Some(&keys())).unwrap_err(), ProtocolError::NotRecipient);
        prop_assert_eq!(JobRequest::from_event(&ev, None).unwrap_err(), ProtocolError::NotRecipient);
    }

    #[test]
    fn feedback_roundtrip(text in arb_text(), seq in any::<u64>(), msat in any::<u64>(), enc in any::<bool>(), which in 0u8..6) {
        let worker = keys();
        let customer = keys();
        let rid = EventId::from_byte_array([7u8; 32]);
        let mut fb = match which {
            0 => JobFeedback::partial(rid, customer.public_key(), seq, text.clone()),
            1 => JobFeedback::error(rid, customer.public_key(), ErrorCode::PromptTooLarge, text.clone()),
            2 => JobFeedback::payment_required(rid, customer.public_key(), Amount { msat, bolt11: Some("lnbc1example".into()) }),
            3 => JobFeedback::new(rid, customer.public_key(), FeedbackStatus::Processing),
            // A quote payable by a zap only (no invoice).
            4 => JobFeedback { zap: Some("worker@example.com".into()), ..JobFeedback::payment_required(rid, customer.public_key(), Amount { msat, bolt11: None }) },
            _ => JobFeedback::new(rid, customer.public_key(), FeedbackStatus::Success),
        };
        fb.encrypted = enc.then_some(Encryption::Nip44);
        let ev = fb.to_event(&worker).unwrap();
        let back = JobFeedback::from_event(&ev, Some(&customer)).unwrap();
        prop_assert_eq!(&back, &fb);
        // Texts long enough not to turn up in random base64 by chance (a one-letter text
        // always may: that failed a run once).
        if enc && text.len() >= 12 && which <= 1 {
            prop_assert!(!ev.content.contains(&text) || ev.content.is_empty());
        }
    }

    #[test]
    fn result_and_metering_roundtrip(req in arb_request(None), out in arb_text(), i in 0u64..100_000, o in 0u64..100_000, enc in any::<bool>()) {
        let customer = keys();
        let worker = keys();
        let req = JobRequest { provider: Some(worker.public_key()), bid_msat: None, ..req };
        // An honest worker generates at most `max_tokens` (the verifier refuses more).
        let o = req.params.max_tokens.map_or(o, |m| o.min(u64::from(m)));
        let req_ev = req.to_event(&customer, enc.then_some(Encryption::Nip44)).unwrap();
        let preq = JobRequest::from_event(&req_ev, Some(&worker)).unwrap();
        let model = req.params.model.clone().unwrap_or_else(|| "default-model".into());
        let mut res = JobResult::for_request(&req_ev, &preq, out.clone(), model.clone(), Usage { input_tokens: i, output_tokens: o });
        res.amount = Some(Amount { msat: 1234, bolt11: None });
        let res_ev = res.to_event(&worker).unwrap();
        let pres = JobResult::from_event(&res_ev, Some(&customer)).unwrap();
        prop_assert_eq!(&pres.result, &res);
        prop_assert!(!pres.output_sealed);

        let rec = MeteringRecord {
            request_id: req_ev.id, result_id: res_ev.id, customer: customer.public_key(), model,
            prompt_sha256: preq.prompt_sha256(), usage: Usage { input_tokens: i, output_tokens: o },
            wall_ms: 17, bytes_in: preq.input_data.len() as u64, bytes_out: out.len() as u64,
            price_msat: 1234, payment_hash: Some("ab".repeat(32)),
        };
        let m_ev = rec.to_event(&worker).unwrap();
        let pm = MeteringRecord::from_event(&m_ev).unwrap();
        prop_assert_eq!(&pm.record, &rec);
        let check = pm.verify(&pres, &preq).unwrap();
        prop_assert!(check.prompt_checked && check.output_checked);
        // A third party sees the sealed form and can still check everything but the prompt.
        let sealed = JobResult::from_event(&res_ev, None).unwrap();
        prop_assert_eq!(sealed.output_sealed, enc);
        let c2 = pm.verify_sealed(&sealed, &req_ev).unwrap();
        prop_assert!(!c2.prompt_checked);
    }

    #[test]
    fn tampering_is_refused(req in arb_request(None), field in 0u8..4) {
        let k = keys();
        let ev = req.to_event(&k, None).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&ev.as_json()).unwrap();
        match field {
            0 => json["content"] = "tampered".into(),
            1 => json["created_at"] = (ev.created_at.as_secs() + 1).into(),
            2 => json["tags"].as_array_mut().unwrap().push(serde_json::json!(["bid", "1"])),
            _ => {
                let sig = json["sig"].as_str().unwrap();
                let flipped = format!("{}{}", if &sig[..1] == "0" { "1" } else { "0" }, &sig[1..]);
                json["sig"] = flipped.into();
            }
        }
        // Either the JSON no longer decodes as an event, or the parser refuses it.
        if let Ok(bad) = Event::from_json(json.to_string()) {
            let err = JobRequest::from_event(&bad, None).unwrap_err();
            prop_assert!(matches!(err, ProtocolError::InvalidId | ProtocolError::InvalidSignature), "{:?}", err);
        }
    }
}

fn sample_ad() -> CapabilityAd {
    CapabilityAd {
        instance: "worker-1".into(),
        name: "test worker".into(),
        about: "serves small models".into(),
        job_kinds: vec![kinds::JOB_REQUEST],
        models: vec![ModelInfo {
            id: "smollm2-135m".into(),
            context_length: 8192,
            quantisation: "Q4_1".into(),
            dimensions: 0,
        }],
        prices: vec![Price {
            model: "smollm2-135m".into(),
            base_msat: 1000,
            per_1k_input_msat: 10,
            per_1k_output_msat: 50,
        }],
        max_concurrent: 4,
        in_flight: 1,
        queue_depth: 0,
        hardware: Hardware::Cpu {
            name: "x86_64".into(),
            cores: 2,
            memory_mib: 24_000,
        },
        runner: "llama-cpp".into(),
        healthy: true,
        payment: PaymentInfo {
            ln_node: Some("02ab".into()),
            lightning_address: Some("w@example.com".into()),
            lnurl: None,
            mode: Some(PaymentMode::Before),
        },
        relays: vec!["wss://relay.example.com".into()],
        version: "fedai-worker/0.1.0".into(),
        encryption_supported: true,
        features: vec!["chat".into()],
        expiration: Timestamp::from_secs(4_000_000_000),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn capability_ad_roundtrip(max in 1u32..1000, inflight in 0u32..1000, gpu in any::<bool>(), mem in any::<u64>(), healthy in any::<bool>()) {
        let mut ad = sample_ad();
        ad.max_concurrent = max;
        ad.in_flight = inflight;
        ad.healthy = healthy;
        if gpu { ad.hardware = Hardware::Gpu { name: "NVIDIA H100".into(), memory_mib: mem }; }
        let k = keys();
        let ev = ad.to_event(&k).unwrap();
        let p = CapabilityAd::from_event(&ev).unwrap();
        prop_assert_eq!(p.ad, ad);
        prop_assert_eq!(p.worker, k.public_key());
    }

    #[test]
    fn award_and_receipt_roundtrip(msat in any::<u64>(), preimage in any::<[u8; 32]>(), with_result in any::<bool>(), zap in proptest::option::of(arb_text())) {
        let customer = keys();
        let worker = keys().public_key();
        let award = Award { request_id: EventId::from_byte_array([7u8; 32]), quote_id: EventId::from_byte_array([7u8; 32]), worker, amount_msat: msat, expiration: Some(Timestamp::from_secs(4_000_000_000)) };
        let ev = award.to_event(&customer).unwrap();
        prop_assert_eq!(Award::from_event(&ev).unwrap().award, award);

        let hex: String = preimage.iter().map(|b| format!("{b:02x}")).collect();
        let receipt = PaymentReceipt {
            request_id: EventId::from_byte_array([7u8; 32]), result_id: with_result.then(|| EventId::from_byte_array([9u8; 32])), worker,
            amount_msat: msat, bolt11: "lnbcrt1example".into(), payment_hash: sha256_hex(&preimage), preimage: hex,
            zap_request: zap,
        };
        let ev = receipt.to_event(&customer).unwrap();
        prop_assert_eq!(PaymentReceipt::from_event(&ev).unwrap().receipt, receipt);
    }
}

#[test]
fn price_cost_rounds_up_and_saturates() {
    let p = Price {
        model: "m".into(),
        base_msat: 1000,
        per_1k_input_msat: 10,
        per_1k_output_msat: 50,
    };
    assert_eq!(p.cost_msat(0, 0), 1000);
    assert_eq!(p.cost_msat(1, 0), 1001, "a fraction of a msat rounds up");
    assert_eq!(p.cost_msat(1000, 1000), 1060);
    let big = Price {
        model: "m".into(),
        base_msat: u64::MAX,
        per_1k_input_msat: u64::MAX,
        per_1k_output_msat: u64::MAX,
    };
    assert_eq!(big.cost_msat(u64::MAX, u64::MAX), u64::MAX);
}

/// One valid event of every fed_AI kind, and a parser that accepts it.
type Parser = fn(&Event) -> bool;

fn one_of_each() -> Vec<(Event, Parser)> {
    let customer = keys();
    let worker = keys();
    let req = JobRequest::text("hello").to_event(&customer, None).unwrap();
    let preq = JobRequest::from_event(&req, None).unwrap();
    let res = JobResult::for_request(
        &req,
        &preq,
        "out".into(),
        "m".into(),
        Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
    )
    .to_event(&worker)
    .unwrap();
    let fb = JobFeedback::partial(req.id, customer.public_key(), 3, "chunk".into())
        .to_event(&worker)
        .unwrap();
    let rec = MeteringRecord {
        request_id: req.id,
        result_id: res.id,
        customer: customer.public_key(),
        model: "m".into(),
        prompt_sha256: preq.prompt_sha256(),
        usage: Usage {
            input_tokens: 1,
            output_tokens: 1,
        },
        wall_ms: 1,
        bytes_in: 5,
        bytes_out: 3,
        price_msat: 0,
        payment_hash: None,
    }
    .to_event(&worker)
    .unwrap();
    let award = Award {
        request_id: req.id,
        quote_id: fb.id,
        worker: worker.public_key(),
        amount_msat: 5,
        expiration: None,
    }
    .to_event(&customer)
    .unwrap();
    let receipt = PaymentReceipt {
        request_id: req.id,
        result_id: None,
        worker: worker.public_key(),
        amount_msat: 5,
        bolt11: "lnbc1x".into(),
        payment_hash: sha256_hex(&[5; 32]),
        preimage: "05".repeat(32),
        zap_request: None,
    }
    .to_event(&customer)
    .unwrap();
    let ad = sample_ad().to_event(&worker).unwrap();
    vec![
        (req, |e| JobRequest::from_event(e, None).is_ok()),
        (res, |e| JobResult::from_event(e, None).is_ok()),
        (fb, |e| JobFeedback::from_event(e, None).is_ok()),
        (rec, |e| MeteringRecord::from_event(e).is_ok()),
        (award, |e| Award::from_event(e).is_ok()),
        (receipt, |e| PaymentReceipt::from_event(e).is_ok()),
        (ad, |e| CapabilityAd::from_event(e).is_ok()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// Changing any single tag value, or the signature, of any kind is refused by its parser.
    #[test]
    fn tampering_any_kind_is_refused(which in 0usize..7, tag_pick in any::<prop::sample::Index>(), val_pick in any::<prop::sample::Index>(), sig in any::<bool>()) {
        let (ev, parse) = one_of_each().swap_remove(which);
        prop_assert!(parse(&ev), "the untampered event parses");
        let mut json: serde_json::Value = serde_json::from_str(&ev.as_json()).unwrap();
        if sig {
            let s = json["sig"].as_str().unwrap().to_owned();
            json["sig"] = format!("{}{}", if &s[..1] == "a" { "b" } else { "a" }, &s[1..]).into();
        } else {
            let tags = json["tags"].as_array_mut().unwrap();
            let t = tag_pick.get_mut(tags).as_array_mut().unwrap();
            let i = 1 + val_pick.index(t.len().max(2) - 1);
            if i < t.len() {
                let old = t[i].as_str().unwrap().to_owned();
                t[i] = format!("{old}x").into();
            } else {
                t.push("x".into());
            }
        }
        if let Ok(bad) = Event::from_json(json.to_string()) {
            prop_assert!(!parse(&bad), "tampered event of kind {} accepted", bad.kind);
        }
    }
}

proptest! {
    /// The fast 64-bit path of `cost_msat` agrees with exact 128-bit arithmetic everywhere.
    #[test]
    fn price_cost_matches_exact_arithmetic(
        base in any::<u64>(), pi in any::<u64>(), po in any::<u64>(),
        i in prop_oneof![0u64..1_000_000, any::<u64>()], o in prop_oneof![0u64..1_000_000, any::<u64>()],
        small in any::<bool>(),
    ) {
        let (pi, po, base) = if small { (pi % 100_000, po % 100_000, base % 1_000_000) } else { (pi, po, base) };
        let p = Price { model: "m".into(), base_msat: base, per_1k_input_msat: pi, per_1k_output_msat: po };
        let exact = (base as u128 + (i as u128 * pi as u128).saturating_add(o as u128 * po as u128).div_ceil(1000))
            .min(u64::MAX as u128) as u64;
        prop_assert_eq!(p.cost_msat(i, o), exact);
    }
}
