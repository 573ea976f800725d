//! Embedding jobs (kind 5060 → 6060): built, signed, parsed and held to their rules.

use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::Usage;
use fedai_protocol::*;

fn result_for(
    req_ev: &Event,
    preq: &ParsedJobRequest,
    output: String,
    worker: &Keys,
) -> (Event, JobResult) {
    let usage = Usage {
        input_tokens: 7,
        output_tokens: 0,
    };
    let res = JobResult::for_request(req_ev, preq, output, "embedder".into(), usage);
    (res.to_event(worker).unwrap(), res)
}

#[test]
fn an_embedding_job_goes_as_5060_and_comes_back_as_6060_plain_and_encrypted() {
    let (customer, worker) = (Keys::generate(), Keys::generate());
    for texts in [
        vec!["one text"],
        vec!["first", "second, \"quoted\"", "third"],
    ] {
        for enc in [None, Some(Encryption::Nip44)] {
            let mut req = JobRequest::embed(texts.clone());
            req.params.model = Some("embedder".into());
            req.provider = Some(worker.public_key());
            assert_eq!(req.kind(), kinds::EMBED_REQUEST);
            let ev = req.to_event(&customer, enc).unwrap();
            assert_eq!(ev.kind.as_u16(), 5060);
            let parsed = JobRequest::from_event(&ev, Some(&worker)).unwrap();
            assert_eq!(parsed.request.input, req.input);
            // The author's view hashes the same input data as the worker's.
            let own = ParsedJobRequest::from_own(&ev, &req, enc);
            assert_eq!(own.input_data, parsed.input_data);
            assert_eq!(own.inputs, parsed.inputs);

            let answer = EmbedAnswer {
                vectors: texts.iter().map(|_| vec![0.5, -0.25, 1e-7]).collect(),
            };
            let (res_ev, res) = result_for(&ev, &parsed, answer.to_output(), &worker);
            assert_eq!(res_ev.kind.as_u16(), 6060);
            let pres = JobResult::from_event(&res_ev, Some(&customer)).unwrap();
            assert_eq!(pres.result, res);
            let back = EmbedAnswer::for_request(&pres.result.output, &req.input).unwrap();
            assert_eq!(back, answer, "base64 f32 is exact");

            let rec = MeteringRecord {
                request_id: ev.id,
                result_id: res_ev.id,
                customer: customer.public_key(),
                model: "embedder".into(),
                prompt_sha256: parsed.prompt_sha256(),
                usage: res.usage,
                wall_ms: 3,
                bytes_in: parsed.input_data.len() as u64,
                bytes_out: res.output.len() as u64,
                price_msat: 0,
                payment_hash: None,
            };
            let m = MeteringRecord::from_event(&rec.to_event_for(5060, &worker).unwrap()).unwrap();
            assert_eq!(m.request_kind, 5060);
            m.verify(&pres, &parsed).unwrap();
            // A record naming text generation does not meter an embedding job.
            let wrong = MeteringRecord::from_event(&rec.to_event(&worker).unwrap()).unwrap();
            assert!(matches!(
                wrong.verify(&pres, &parsed),
                Err(ProtocolError::MeteringMismatch(_))
            ));
            // Relays validate both kinds.
            validate::validate_event(&ev).unwrap();
            validate::validate_event(&res_ev).unwrap();
        }
    }
}

#[test]
fn a_result_of_the_wrong_kind_for_its_request_is_refused() {
    let (customer, worker) = (Keys::generate(), Keys::generate());
    let ev = JobRequest::embed(["a"]).to_event(&customer, None).unwrap();
    let parsed = JobRequest::from_event(&ev, None).unwrap();
    let (res_ev, _) = result_for(&ev, &parsed, "{}".into(), &worker);
    // Re-signed as a 6050 around the 5060 request.
    let forged = EventBuilder::new(Kind::from_u16(6050), res_ev.content.clone())
        .tags(res_ev.tags.clone().to_vec())
        .finalize(&worker)
        .unwrap();
    assert!(JobResult::from_event(&forged, None).is_err());
    // And a 6060 around a text-generation request.
    let text = JobRequest::text("hi").to_event(&customer, None).unwrap();
    let ptext = JobRequest::from_event(&text, None).unwrap();
    let (res6050, _) = result_for(&text, &ptext, "out".into(), &worker);
    let forged = EventBuilder::new(Kind::from_u16(6060), "out")
        .tags(res6050.tags.clone().to_vec())
        .finalize(&worker)
        .unwrap();
    assert!(JobResult::from_event(&forged, None).is_err());
}

#[test]
fn embedding_requests_are_held_to_their_rules() {
    let k = Keys::generate();
    let err = |r: JobRequest| r.to_event(&k, None).unwrap_err().to_string();
    assert!(err(JobRequest::embed(Vec::<String>::new())).contains("1 to 64"));
    assert!(err(JobRequest::embed(vec!["x"; 65])).contains("1 to 64"));
    assert!(err(JobRequest::embed([""])).contains("empty"));
    let mut sampled = JobRequest::embed(["x"]);
    sampled.params.temperature = Some(0.5);
    assert!(err(sampled).contains("no param but model"));
    let mut streamed = JobRequest::embed(["x"]);
    streamed.params.stream = true;
    assert!(err(streamed).contains("no param but model"));

    // From the wire: a reference input, and params, are refused with the reason.
    let sign = |tags: Vec<Tag>| {
        EventBuilder::new(Kind::from_u16(5060), "")
            .tags(tags)
            .finalize(&k)
            .unwrap()
    };
    let i = |d: &str, t: &str| Tag::parse(["i", d, t]).unwrap();
    let url = sign(vec![i("https://example.com/doc", "url")]);
    let e = JobRequest::from_event(&url, None).unwrap_err().to_string();
    assert!(e.contains("must be text"), "{e}");
    let param = sign(vec![
        i("x", "text"),
        Tag::parse(["param", "max_tokens", "5"]).unwrap(),
    ]);
    assert!(JobRequest::from_event(&param, None).is_err());
    // Several texts, each one input (not joined as a text-generation prompt is).
    let two = sign(vec![i("a", "text"), i("b", "prompt")]);
    let p = JobRequest::from_event(&two, None).unwrap();
    assert_eq!(
        p.request.input,
        JobInput::Embed(vec!["a".into(), "b".into()])
    );
}

#[test]
fn an_embedding_answer_is_checked_before_it_is_taken() {
    let input = JobInput::Embed(vec!["a".into(), "b".into()]);
    let ok = EmbedAnswer {
        vectors: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
    };
    assert!(EmbedAnswer::for_request(&ok.to_output(), &input).is_ok());
    let one = EmbedAnswer {
        vectors: vec![vec![1.0, 0.0]],
    };
    assert!(EmbedAnswer::for_request(&one.to_output(), &input).is_err());
    let ragged = EmbedAnswer {
        vectors: vec![vec![1.0, 0.0], vec![0.0]],
    };
    assert!(EmbedAnswer::parse(&ragged.to_output()).is_err());
    let nan = EmbedAnswer {
        vectors: vec![vec![f32::NAN, 0.0], vec![0.0, 1.0]],
    };
    assert!(EmbedAnswer::parse(&nan.to_output()).is_err());
    assert!(
        EmbedAnswer::parse(r#"{"embeddings":["AAA"]}"#).is_err(),
        "not whole f32s"
    );
    assert!(EmbedAnswer::parse(r#"{"embeddings":["!!"]}"#).is_err());
    assert!(
        EmbedAnswer::parse(r#"{"embeddings":[""]}"#).is_err(),
        "no dimensions"
    );
    let huge = EmbedAnswer {
        vectors: vec![vec![0.0; job::MAX_EMBED_DIMENSIONS + 1]],
    };
    assert!(EmbedAnswer::parse(&huge.to_output()).is_err());
    // OpenAI's base64: f32 little-endian.
    assert_eq!(vector_base64(&[1.0]), "AACAPw==");
}

/// The largest answer a job may ask for fits the event a worker publishes (448 KiB), however
/// it is packed: encrypted (NIP-44 padding, base64 twice), the request embedded with 64 KiB of
/// texts (a worker's default prompt limit).
#[test]
fn the_largest_embedding_answer_fits_one_event() {
    let (customer, worker) = (Keys::generate(), Keys::generate());
    for dims in [512u32, 768, 1024, 1536, 3072, 4096, 16384] {
        let n = job::max_embed_texts(dims);
        assert!(n * dims as usize <= job::MAX_EMBED_VALUES || n == 1);
        // Texts of JSON-escaped characters, 64 KiB in all.
        let texts: Vec<String> = (0..n).map(|_| "\"é\n".repeat(65_536 / 5 / n)).collect();
        let mut req = JobRequest::embed(texts);
        req.provider = Some(worker.public_key());
        let ev = req.to_event(&customer, Some(Encryption::Nip44)).unwrap();
        let parsed = JobRequest::from_event(&ev, Some(&worker)).unwrap();
        let answer = EmbedAnswer {
            vectors: vec![vec![-0.123_456_79; dims as usize]; n],
        };
        let (res, _) = result_for(&ev, &parsed, answer.to_output(), &worker);
        let size = res.as_json().len();
        assert!(size <= 448 * 1024, "{n} × {dims}: {size} bytes");
    }
    assert_eq!(job::max_embed_texts(512), 64);
    assert_eq!(job::max_embed_texts(1024), 32);
    assert_eq!(job::max_embed_texts(4096), 8);
    assert_eq!(job::max_embed_texts(0), 2, "unknown: sized for the widest");
    // A worker's answer over the bound is refused.
    let over = EmbedAnswer {
        vectors: vec![vec![0.0; 1024]; 33],
    };
    assert!(EmbedAnswer::parse(&over.to_output()).is_err());
}

#[test]
fn an_embedding_request_refuses_params_it_would_ignore() {
    let k = Keys::generate();
    let ev = EventBuilder::new(Kind::from_u16(5060), "")
        .tags([
            Tag::parse(["i", "x", "text"]).unwrap(),
            Tag::parse(["param", "dimensions", "256"]).unwrap(),
        ])
        .finalize(&k)
        .unwrap();
    let e = JobRequest::from_event(&ev, None).unwrap_err().to_string();
    assert!(e.contains("dimensions"), "{e}");
}

#[test]
fn an_ad_says_each_embedding_models_dimensions() {
    let k = Keys::generate();
    let ad = CapabilityAd {
        instance: "e".into(),
        name: "embedder".into(),
        about: String::new(),
        job_kinds: vec![kinds::EMBED_REQUEST],
        models: vec![ModelInfo {
            id: "nomic".into(),
            context_length: 2048,
            quantisation: "f16".into(),
            dimensions: 768,
        }],
        prices: vec![Price {
            model: "nomic".into(),
            base_msat: 0,
            per_1k_input_msat: 10,
            per_1k_output_msat: 0,
        }],
        max_concurrent: 1,
        in_flight: 0,
        queue_depth: 0,
        hardware: Hardware::Cpu {
            name: "cpu".into(),
            cores: 2,
            memory_mib: 1024,
        },
        runner: "llama-cpp".into(),
        healthy: true,
        payment: fedai_protocol::capability::PaymentInfo::default(),
        relays: Vec::new(),
        version: "0".into(),
        encryption_supported: true,
        features: Vec::new(),
        expiration: Timestamp::from_secs(Timestamp::now().as_secs() + 60),
    };
    let ev = ad.to_event(&k).unwrap();
    let back = CapabilityAd::from_event(&ev).unwrap();
    assert_eq!(back.ad.models[0].dimensions, 768);
    assert!(back.ad.takes_kind(5060) && !back.ad.takes_kind(5050));
}
