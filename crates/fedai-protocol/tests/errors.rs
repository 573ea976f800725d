//! Every error path of the parsers, with the precise error it must produce.

use fedai_protocol::nostr::prelude::*;
use fedai_protocol::result::Usage;
use fedai_protocol::*;
// nostr's prelude has a NIP-47 `ErrorCode` too; ours is meant.
use fedai_protocol::ErrorCode;

fn raw(kind: u16, content: &str, tags: &[&[&str]]) -> Event {
    raw_by(&Keys::generate(), kind, content, tags)
}

/// An event as fed_AI software writes it: the NIP-90 kinds fed_AI shares carry its marker, so
/// the full schema applies.
fn raw_by(keys: &Keys, kind: u16, content: &str, tags: &[&[&str]]) -> Event {
    let mut tags: Vec<&[&str]> = tags.to_vec();
    if [5050, 6050, 7000].contains(&kind) {
        tags.push(&["t", "fedai"]);
    }
    generic_by(keys, kind, content, &tags)
}

/// An event as another NIP-90 application writes it: no fed_AI marker.
fn generic_by(keys: &Keys, kind: u16, content: &str, tags: &[&[&str]]) -> Event {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|t| Tag::parse(t.iter().copied()).unwrap())
        .collect();
    EventBuilder::new(Kind::from_u16(kind), content)
        .tags(tags)
        .finalize(keys)
        .unwrap()
}

fn req_err(tags: &[&[&str]]) -> ProtocolError {
    JobRequest::from_event(&raw(5050, "", tags), None).unwrap_err()
}

#[test]
fn job_request_errors() {
    let e = JobRequest::from_event(&raw(1, "", &[&["i", "hi", "text"]]), None).unwrap_err();
    assert_eq!(
        e,
        ProtocolError::WrongKind {
            expected: 5050,
            found: 1
        }
    );
    assert_eq!(req_err(&[]), ProtocolError::MissingTag("i"));
    assert!(matches!(
        req_err(&[&["i", "a", "audio"]]),
        ProtocolError::InvalidTag { tag: "i", .. }
    ));
    assert!(matches!(
        req_err(&[&["i", "[]", "chat"], &["i", "b", "text"]]),
        ProtocolError::InvalidTag { tag: "i", .. }
    ));
    let many: Vec<[&str; 3]> = (0..=fedai_protocol::job::MAX_INPUTS)
        .map(|_| ["i", "x", "text"])
        .collect();
    let many: Vec<&[&str]> = many.iter().map(|t| &t[..]).collect();
    assert!(matches!(
        req_err(&many),
        ProtocolError::InvalidTag { tag: "i", .. }
    ));
    assert!(matches!(
        req_err(&[&["i", "not json", "chat"]]),
        ProtocolError::InvalidTag { tag: "i", .. }
    ));
    assert!(matches!(
        req_err(&[&["i", "[]", "chat"]]),
        ProtocolError::InvalidTag { tag: "i", .. }
    ));
    for bad in [
        &["param", "max_tokens", "-1"][..],
        &["param", "max_tokens", "0"],
        &["param", "max_tokens", "99999999999"],
        &["param", "temperature", "9"],
        &["param", "temperature", "NaN"],
        &["param", "top_p", "0"],
        &["param", "frequency_penalty", "-3"],
        &["param", "stream", "maybe"],
        &["param", "model", ""],
        &["param", "model"],
    ] {
        let e = req_err(&[&["i", "a", "text"], bad]);
        assert!(
            matches!(e, ProtocolError::InvalidTag { tag: "param", .. }),
            "{bad:?}: {e:?}"
        );
    }
    let e = req_err(&[
        &["i", "a", "text"],
        &["param", "top_k", "1"],
        &["param", "top-k", "2"],
    ]);
    assert!(
        matches!(e, ProtocolError::InvalidTag { tag: "param", .. }),
        "same param twice: {e:?}"
    );
    assert!(matches!(
        req_err(&[&["i", "a", "text"], &["bid", "ten"]]),
        ProtocolError::InvalidTag { tag: "bid", .. }
    ));
    assert_eq!(
        req_err(&[&["i", "a", "text"], &["bid", "1"], &["bid", "2"]]),
        ProtocolError::DuplicateTag("bid")
    );
    assert!(matches!(
        req_err(&[&["i", "a", "text"], &["p", "zz"]]),
        ProtocolError::InvalidTag { tag: "p", .. }
    ));
    // Hyphenated spellings and unknown params are accepted.
    let ok = JobRequest::from_event(
        &raw(
            5050,
            "",
            &[
                &["i", "a", "text"],
                &["param", "top-p", "0.5"],
                &["param", "seed", "1"],
            ],
        ),
        None,
    )
    .unwrap();
    assert_eq!(ok.request.params.top_p, Some(0.5));
}

#[test]
fn encrypted_request_errors() {
    let customer = Keys::generate();
    let worker = Keys::generate();
    let wpk = worker.public_key().to_hex();
    // `encrypted` without `p`.
    let e = JobRequest::from_event(
        &raw_by(&customer, 5050, "x", &[&["encrypted"]]),
        Some(&worker),
    )
    .unwrap_err();
    assert_eq!(e, ProtocolError::MissingTag("p"));
    // Public `i` next to `encrypted` would leak the prompt.
    let e = JobRequest::from_event(
        &raw_by(
            &customer,
            5050,
            "x",
            &[&["encrypted"], &["p", &wpk], &["i", "a", "text"]],
        ),
        Some(&worker),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        ProtocolError::InvalidTag {
            tag: "encrypted",
            ..
        }
    ));
    // Garbage ciphertext.
    let e = JobRequest::from_event(
        &raw_by(
            &customer,
            5050,
            "bm90IGNpcGhlcnRleHQ=",
            &[&["encrypted"], &["p", &wpk]],
        ),
        Some(&worker),
    )
    .unwrap_err();
    assert!(matches!(e, ProtocolError::Decryption(_)), "{e:?}");
    // Valid ciphertext that is not a tag array.
    let ct = fedai_protocol::crypto::encrypt(
        &customer,
        &worker.public_key(),
        "{\"i\":1}",
        Encryption::Nip44,
    )
    .unwrap();
    let e = JobRequest::from_event(
        &raw_by(&customer, 5050, &ct, &[&["encrypted"], &["p", &wpk]]),
        Some(&worker),
    )
    .unwrap_err();
    assert!(matches!(e, ProtocolError::InvalidContent(_)), "{e:?}");
    // Encryption requires a provider.
    let e = JobRequest::text("hi")
        .to_event(&customer, Some(Encryption::Nip44))
        .unwrap_err();
    assert_eq!(e, ProtocolError::MissingTag("p"));
}

#[test]
fn feedback_errors() {
    let rid = EventId::from_byte_array([1; 32]).to_hex();
    let pk = Keys::generate().public_key().to_hex();
    let fb = |tags: &[&[&str]]| JobFeedback::from_event(&raw(7000, "", tags), None).unwrap_err();
    assert_eq!(
        fb(&[&["e", &rid], &["p", &pk]]),
        ProtocolError::MissingTag("status")
    );
    assert!(matches!(
        fb(&[&["status", "done"], &["e", &rid], &["p", &pk]]),
        ProtocolError::InvalidTag { tag: "status", .. }
    ));
    assert_eq!(
        fb(&[&["status", "partial"], &["e", &rid], &["p", &pk]]),
        ProtocolError::MissingTag("seq")
    );
    assert_eq!(
        fb(&[&["status", "error"], &["e", &rid], &["p", &pk]]),
        ProtocolError::MissingTag("code")
    );
    assert_eq!(
        fb(&[&["status", "payment-required"], &["e", &rid], &["p", &pk]]),
        ProtocolError::MissingTag("amount")
    );
    assert!(matches!(
        fb(&[
            &["status", "payment-required"],
            &["e", &rid],
            &["p", &pk],
            &["amount", "10", "notaninvoice"]
        ]),
        ProtocolError::InvalidTag { tag: "amount", .. }
    ));
    assert_eq!(
        fb(&[&["status", "success"], &["p", &pk]]),
        ProtocolError::MissingTag("e")
    );
    assert!(matches!(
        fb(&[&["status", "success"], &["e", "xyz"], &["p", &pk]]),
        ProtocolError::InvalidTag { tag: "e", .. }
    ));
    assert!(matches!(
        fb(&[
            &["status", "partial"],
            &["seq", "-1"],
            &["e", &rid],
            &["p", &pk]
        ]),
        ProtocolError::InvalidTag { tag: "seq", .. }
    ));
    // Unknown error codes are kept verbatim.
    let ok = JobFeedback::from_event(
        &raw(
            7000,
            "",
            &[
                &["status", "error", "why"],
                &["code", "gpu-on-fire"],
                &["e", &rid],
                &["p", &pk],
            ],
        ),
        None,
    )
    .unwrap();
    assert_eq!(ok.code, Some(ErrorCode::Other("gpu-on-fire".into())));
}

fn job(customer: &Keys, worker: &Keys, bid: Option<u64>) -> (Event, ParsedJobRequest) {
    let mut r = JobRequest::text("What is Nostr?");
    r.params.model = Some("m1".into());
    r.bid_msat = bid;
    r.provider = Some(worker.public_key());
    let ev = r.to_event(customer, None).unwrap();
    let p = JobRequest::from_event(&ev, None).unwrap();
    (ev, p)
}

#[test]
fn result_errors() {
    let customer = Keys::generate();
    let worker = Keys::generate();
    let (req_ev, _) = job(&customer, &worker, None);
    let rj = req_ev.as_json();
    let cpk = customer.public_key().to_hex();
    let rid = req_ev.id.to_hex();
    let res = |tags: &[&[&str]]| {
        JobResult::from_event(&raw_by(&worker, 6050, "out", tags), None).unwrap_err()
    };
    assert_eq!(
        res(&[
            &["e", &rid],
            &["p", &cpk],
            &["usage", "1", "2"],
            &["model", "m1"]
        ]),
        ProtocolError::MissingTag("request")
    );
    assert!(matches!(
        res(&[
            &["request", "{}"],
            &["e", &rid],
            &["p", &cpk],
            &["usage", "1", "2"],
            &["model", "m1"]
        ]),
        ProtocolError::InvalidTag { tag: "request", .. }
    ));
    let other = EventId::from_byte_array([2; 32]).to_hex();
    assert!(matches!(
        res(&[
            &["request", &rj],
            &["e", &other],
            &["p", &cpk],
            &["usage", "1", "2"],
            &["model", "m1"]
        ]),
        ProtocolError::InvalidTag { tag: "e", .. }
    ));
    let wpk = worker.public_key().to_hex();
    assert!(matches!(
        res(&[
            &["request", &rj],
            &["e", &rid],
            &["p", &wpk],
            &["usage", "1", "2"],
            &["model", "m1"]
        ]),
        ProtocolError::InvalidTag { tag: "p", .. }
    ));
    assert!(matches!(
        res(&[
            &["request", &rj],
            &["e", &rid],
            &["p", &cpk],
            &["usage", "1"],
            &["model", "m1"]
        ]),
        ProtocolError::InvalidTag { tag: "usage", .. }
    ));
    assert_eq!(
        res(&[
            &["request", &rj],
            &["e", &rid],
            &["p", &cpk],
            &["usage", "1", "2"]
        ]),
        ProtocolError::MissingTag("model")
    );
    assert!(matches!(
        res(&[
            &["request", &rj],
            &["e", &rid],
            &["p", &cpk],
            &["usage", "1", "2"],
            &["model", "m1"],
            &["encrypted"],
            &["i", "leak", "text"]
        ]),
        ProtocolError::InvalidTag { tag: "i", .. }
    ));
    // An embedded request whose signature was tampered with.
    let mut v: serde_json::Value = serde_json::from_str(&rj).unwrap();
    v["content"] = "x".into();
    assert!(matches!(
        res(&[
            &["request", &v.to_string()],
            &["e", &rid],
            &["p", &cpk],
            &["usage", "1", "2"],
            &["model", "m1"]
        ]),
        ProtocolError::InvalidTag { tag: "request", .. }
    ));
}

#[test]
fn metering_mismatches_are_detected() {
    let customer = Keys::generate();
    let worker = Keys::generate();
    let (req_ev, preq) = job(&customer, &worker, Some(5000));
    let mut res = JobResult::for_request(
        &req_ev,
        &preq,
        "An answer".into(),
        "m1".into(),
        Usage {
            input_tokens: 5,
            output_tokens: 3,
        },
    );
    res.amount = Some(Amount {
        msat: 1200,
        bolt11: None,
    });
    let res_ev = res.to_event(&worker).unwrap();
    let pres = JobResult::from_event(&res_ev, None).unwrap();
    let good = MeteringRecord {
        request_id: req_ev.id,
        result_id: res_ev.id,
        customer: customer.public_key(),
        model: "m1".into(),
        prompt_sha256: preq.prompt_sha256(),
        usage: Usage {
            input_tokens: 5,
            output_tokens: 3,
        },
        wall_ms: 10,
        bytes_in: preq.input_data.len() as u64,
        bytes_out: "An answer".len() as u64,
        price_msat: 1200,
        payment_hash: None,
    };
    let check = |rec: &MeteringRecord, signer: &Keys| {
        let ev = rec.to_event(signer).unwrap();
        MeteringRecord::from_event(&ev)
            .unwrap()
            .verify(&pres, &preq)
    };
    assert!(check(&good, &worker).is_ok());
    let mismatch = |e: Result<MeteringCheck, ProtocolError>| {
        matches!(e, Err(ProtocolError::MeteringMismatch(_)))
    };
    assert!(
        mismatch(check(&good, &Keys::generate())),
        "signed by someone else"
    );
    assert!(mismatch(check(
        &MeteringRecord {
            model: "m2".into(),
            ..good.clone()
        },
        &worker
    )));
    assert!(mismatch(check(
        &MeteringRecord {
            usage: Usage {
                input_tokens: 5,
                output_tokens: 4
            },
            ..good.clone()
        },
        &worker
    )));
    assert!(mismatch(check(
        &MeteringRecord {
            price_msat: 1201,
            ..good.clone()
        },
        &worker
    )));
    assert!(mismatch(check(
        &MeteringRecord {
            prompt_sha256: sha256_hex(b"other"),
            ..good.clone()
        },
        &worker
    )));
    assert!(mismatch(check(
        &MeteringRecord {
            bytes_out: 1,
            ..good.clone()
        },
        &worker
    )));
    assert!(mismatch(check(
        &MeteringRecord {
            customer: worker.public_key(),
            ..good.clone()
        },
        &worker
    )));
    assert!(mismatch(check(
        &MeteringRecord {
            result_id: req_ev.id,
            ..good.clone()
        },
        &worker
    )));
    // A price above the bid is refused even when the result claims the same amount.
    let (req2, preq2) = job(&customer, &worker, Some(1000));
    let r2 = JobResult {
        amount: Some(Amount {
            msat: 1200,
            bolt11: None,
        }),
        ..JobResult::for_request(&req2, &preq2, "x".into(), "m1".into(), Usage::default())
    };
    let r2e = r2.to_event(&worker).unwrap();
    let pr2 = JobResult::from_event(&r2e, None).unwrap();
    let rec2 = MeteringRecord {
        request_id: req2.id,
        result_id: r2e.id,
        prompt_sha256: preq2.prompt_sha256(),
        bytes_out: 1,
        usage: Usage::default(),
        ..good.clone()
    };
    let e = MeteringRecord::from_event(&rec2.to_event(&worker).unwrap())
        .unwrap()
        .verify(&pr2, &preq2)
        .unwrap_err();
    assert!(e.to_string().contains("exceeds the bid"), "{e}");
    // Malformed records.
    let e = MeteringRecord::from_event(&raw(7060, "", &[&["tokens", "1"]])).unwrap_err();
    assert!(matches!(e, ProtocolError::InvalidTag { tag: "tokens", .. }));
    let e = MeteringRecord {
        prompt_sha256: "short".into(),
        ..good
    }
    .to_event(&worker)
    .unwrap_err();
    assert!(matches!(
        e,
        ProtocolError::InvalidTag {
            tag: "prompt_sha256",
            ..
        }
    ));
}

#[test]
fn receipt_and_award_errors() {
    let customer = Keys::generate();
    let worker = Keys::generate().public_key();
    let r = PaymentReceipt {
        request_id: EventId::from_byte_array([1; 32]),
        result_id: None,
        worker,
        amount_msat: 1000,
        bolt11: "lnbcrt1x".into(),
        payment_hash: sha256_hex(&[1u8; 32]),
        preimage: "02".repeat(32),
        zap_request: None,
    };
    assert_eq!(
        r.to_event(&customer).unwrap_err(),
        ProtocolError::PreimageMismatch
    );
    let e = PaymentReceipt {
        preimage: "zz".into(),
        ..r.clone()
    }
    .to_event(&customer)
    .unwrap_err();
    assert!(matches!(
        e,
        ProtocolError::InvalidTag {
            tag: "preimage",
            ..
        }
    ));
    // A forged receipt built by hand is refused by the parser.
    let rid = EventId::from_byte_array([1; 32]).to_hex();
    let forged = raw(
        7062,
        "",
        &[
            &["e", &rid, "", "request"],
            &["p", &worker.to_hex()],
            &["amount", "1000"],
            &["bolt11", "lnbc1"],
            &["payment_hash", &r.payment_hash],
            &["preimage", &"03".repeat(32)],
        ],
    );
    assert_eq!(
        PaymentReceipt::from_event(&forged).unwrap_err(),
        ProtocolError::PreimageMismatch
    );
    let e = Award::from_event(&raw(
        7061,
        "",
        &[
            &["e", &rid, "", "request"],
            &["p", &worker.to_hex()],
            &["amount", "1"],
        ],
    ))
    .unwrap_err();
    assert!(
        matches!(e, ProtocolError::InvalidTag { tag: "e", .. }),
        "missing quote marker: {e:?}"
    );
}

#[test]
fn capability_ad_errors() {
    let ad = |content: &str, tags: &[&[&str]]| {
        CapabilityAd::from_event(&raw(31990, content, tags)).unwrap_err()
    };
    let base: Vec<&[&str]> = vec![
        &["d", "w1"],
        &["k", "5050"],
        &["t", "fedai"],
        &["model", "m", "2048", "Q4"],
        &["capacity", "1", "0", "0"],
        &["hardware", "cpu", "x86", "2", "1024"],
        &["runner", "mock"],
        &["version", "v"],
        &["expiration", "4000000000"],
    ];
    let ok = CapabilityAd::from_event(&raw(31990, "{\"name\":\"w\"}", &base)).unwrap();
    assert_eq!(ok.ad.models[0].id, "m");
    let without = |name: &str| {
        base.iter()
            .copied()
            .filter(|t| t[0] != name)
            .collect::<Vec<_>>()
    };
    assert!(matches!(
        ad("{\"name\":\"w\"}", &without("t")),
        ProtocolError::InvalidTag { tag: "t", .. }
    ));
    assert!(matches!(
        ad("not json", &base),
        ProtocolError::InvalidContent(_)
    ));
    assert_eq!(
        ad("{\"name\":\"w\"}", &without("expiration")),
        ProtocolError::MissingTag("expiration")
    );
    assert_eq!(
        ad("{\"name\":\"w\"}", &without("k")),
        ProtocolError::MissingTag("k")
    );
    assert_eq!(
        ad("{\"name\":\"w\"}", &without("capacity")),
        ProtocolError::MissingTag("capacity")
    );
    let mut with_price = base.clone();
    with_price.push(&["price", "other-model", "1", "1", "1"]);
    assert!(matches!(
        ad("{\"name\":\"w\"}", &with_price),
        ProtocolError::InvalidTag { tag: "price", .. }
    ));
    let mut bad_hw = without("hardware");
    bad_hw.push(&["hardware", "tpu", "x"]);
    assert!(matches!(
        ad("{\"name\":\"w\"}", &bad_hw),
        ProtocolError::InvalidTag {
            tag: "hardware",
            ..
        }
    ));
}

#[test]
fn freshness_and_replay() {
    let now = Timestamp::from_secs(1_800_000_000);
    let keys = Keys::generate();
    let at = |secs: u64, exp: Option<u64>| {
        let mut b = EventBuilder::new(Kind::from_u16(5050), "")
            .custom_created_at(Timestamp::from_secs(secs));
        if let Some(e) = exp {
            b = b.tag(Tag::expiration(Timestamp::from_secs(e)));
        }
        b.finalize(&keys).unwrap()
    };
    let f = Freshness::for_requests(600);
    assert!(f.check(&at(now.as_secs() - 10, None), now).is_ok());
    assert_eq!(
        f.check(&at(now.as_secs() - 10, Some(now.as_secs() - 1)), now)
            .unwrap_err(),
        ProtocolError::Expired(now.as_secs() - 1)
    );
    assert!(matches!(
        f.check(&at(now.as_secs() + 3600, None), now),
        Err(ProtocolError::FromFuture { .. })
    ));
    assert_eq!(
        f.check(&at(now.as_secs() - 601, None), now).unwrap_err(),
        ProtocolError::TooOld { max_age: 600 }
    );

    let mut g = ReplayGuard::new(600, 3);
    let ids: Vec<EventId> = (0..5u8)
        .map(|i| EventId::from_byte_array([i; 32]))
        .collect();
    g.check_and_insert(ids[0], now).unwrap();
    assert!(matches!(
        g.check_and_insert(ids[0], now),
        Err(ProtocolError::Replayed(_))
    ));
    // Forgotten after the window.
    g.check_and_insert(ids[0], Timestamp::from_secs(now.as_secs() + 601))
        .unwrap();
    // Bounded.
    for id in &ids[1..] {
        g.check_and_insert(*id, Timestamp::from_secs(now.as_secs() + 602))
            .unwrap();
    }
    assert!(g.len() <= 3, "capacity respected: {}", g.len());
}

#[test]
fn validate_event_covers_every_fedai_kind_and_passes_others() {
    use fedai_protocol::validate::validate_event;
    for k in fedai_protocol::kinds::FEDAI_KINDS {
        let ev = raw(*k, "", &[&["t", "fedai"]]);
        assert!(
            validate_event(&ev).is_err(),
            "kind {k} with no schema must fail"
        );
    }
    assert!(validate_event(&raw(1, "hello", &[])).is_ok());
    assert!(
        validate_event(&raw(31990, "{}", &[&["d", "other-app"]])).is_ok(),
        "foreign NIP-89 ads pass"
    );
    // An encrypted request passes on its public layout.
    let w = Keys::generate();
    let mut r = JobRequest::text("secret");
    r.provider = Some(w.public_key());
    let ev = r
        .to_event(&Keys::generate(), Some(Encryption::Nip44))
        .unwrap();
    assert!(validate_event(&ev).is_ok());
}

/// What other NIP-90 software sends is read liberally (fedai-01, "What fed_AI accepts").
#[test]
fn generic_nip90_events_are_read_liberally() {
    let customer = Keys::generate();
    let worker = Keys::generate();
    let other = Keys::generate();
    let wpk = worker.public_key().to_hex();
    let opk = other.public_key().to_hex();
    let job_id = EventId::from_byte_array([9; 32]).to_hex();
    // Several inputs of several types, the `prompt` type, several `p`, no `expiration`.
    let req = generic_by(
        &customer,
        5050,
        "",
        &[
            &["i", "Summarise:", "prompt"],
            &["i", &job_id, "job", "wss://relay.example.com"],
            &["i", "https://example.com/a.txt", "url"],
            &["param", "seed", "7"],
            &["p", &opk],
            &["p", &wpk],
        ],
    );
    assert!(validate::validate_event(&req).is_ok());
    let p = JobRequest::from_event(&req, Some(&worker)).unwrap();
    assert!(!p.fedai);
    assert!(p.needs_inputs());
    assert_eq!(p.inputs.len(), 3);
    assert_eq!(p.inputs[1].kind, InputType::Job);
    assert_eq!(
        p.inputs[1].relay.as_deref(),
        Some("wss://relay.example.com")
    );
    assert_eq!(p.providers.len(), 2);
    assert_eq!(
        p.request.provider,
        Some(worker.public_key()),
        "the reader's own key"
    );
    assert_eq!(p.request.params.seed, Some(7));
    assert_eq!(p.request.expiration, None);
    // Two text inputs are one prompt, in order.
    let two = generic_by(
        &customer,
        5050,
        "",
        &[&["i", "first", "text"], &["i", "second", "prompt"]],
    );
    let p = JobRequest::from_event(&two, None).unwrap();
    assert_eq!(p.request.input, JobInput::Text("first\n\nsecond".into()));
    assert_eq!(p.input_data, r#"[["first","text"],["second","prompt"]]"#);

    // Feedback with only a status: no `code`, no `amount` needed.
    let rid = req.id.to_hex();
    let cpk = customer.public_key().to_hex();
    for status in ["error", "payment-required", "partial"] {
        let fb = generic_by(
            &other,
            7000,
            "",
            &[&["status", status], &["e", &rid], &["p", &cpk]],
        );
        assert!(validate::validate_event(&fb).is_ok());
        assert!(JobFeedback::from_event(&fb, None).is_ok(), "{status}");
    }
    // The same with fed_AI's marker is held to the schema.
    let fb = raw_by(
        &worker,
        7000,
        "",
        &[&["status", "error"], &["e", &rid], &["p", &cpk]],
    );
    assert_eq!(
        validate::validate_event(&fb),
        Err(ProtocolError::MissingTag("code"))
    );
    // A fedai/1 `zap` pay target is still read; an Appendix G zap split is not a pay target.
    let legacy = generic_by(
        &worker,
        7000,
        "",
        &[
            &["status", "payment-required"],
            &["e", &rid],
            &["p", &cpk],
            &["amount", "5"],
            &["zap", "w@example.com"],
        ],
    );
    assert_eq!(
        JobFeedback::from_event(&legacy, None)
            .unwrap()
            .zap
            .as_deref(),
        Some("w@example.com")
    );
    let split = generic_by(
        &worker,
        7000,
        "",
        &[
            &["status", "payment-required"],
            &["e", &rid],
            &["p", &cpk],
            &["amount", "5"],
            &["zap", &wpk, "wss://r", "1"],
        ],
    );
    assert_eq!(JobFeedback::from_event(&split, None).unwrap().zap, None);

    // Another DVM's result without fed_AI's usage and model tags.
    let rj = req.as_json();
    let res = generic_by(
        &other,
        6050,
        "a summary",
        &[&["request", &rj], &["e", &rid], &["p", &cpk]],
    );
    assert!(validate::validate_event(&res).is_ok());
    let r = JobResult::from_event(&res, None).unwrap();
    assert_eq!(r.result.output, "a summary");
    assert_eq!(r.result.usage, Usage::default());
    assert_eq!(r.result.model, "");
    // Marked, the same result must carry them.
    let res = raw_by(
        &other,
        6050,
        "a summary",
        &[&["request", &rj], &["e", &rid], &["p", &cpk]],
    );
    assert_eq!(
        validate::validate_event(&res),
        Err(ProtocolError::MissingTag("usage"))
    );

    // Events of other DVMs' kinds and shapes pass the relay's validation untouched.
    for (kind, tags) in [
        (
            5100u16,
            vec![
                vec!["i", "a red fox", "text"],
                vec!["param", "size", "1024x1024"],
            ],
        ),
        (5001, vec![vec!["i", "https://example.com/post", "url"]]),
        (
            5050,
            vec![
                vec!["i", "garbage", "nonsense-type"],
                vec!["param", "max_tokens", "many"],
            ],
        ),
        (7000, vec![vec!["status", "processing"]]),
    ] {
        let tags: Vec<&[&str]> = tags.iter().map(Vec::as_slice).collect();
        let ev = generic_by(&other, kind, "", &tags);
        assert!(validate::validate_event(&ev).is_ok(), "{kind}");
    }
    // fed_AI's own kinds are always checked, marker or not.
    let m = generic_by(&other, 7060, "{}", &[]);
    assert!(validate::validate_event(&m).is_err());
}

/// A worker's signed usage may not claim more output than the customer allowed.
#[test]
fn metering_over_max_tokens_is_refused() {
    let customer = Keys::generate();
    let worker = Keys::generate();
    let mut r = JobRequest::text("What is Nostr?");
    r.params.max_tokens = Some(3);
    r.provider = Some(worker.public_key());
    let req_ev = r.to_event(&customer, None).unwrap();
    let preq = JobRequest::from_event(&req_ev, None).unwrap();
    let usage = Usage {
        input_tokens: 5,
        output_tokens: 4,
    };
    let res = JobResult::for_request(&req_ev, &preq, "four".into(), "m1".into(), usage);
    let res_ev = res.to_event(&worker).unwrap();
    let pres = JobResult::from_event(&res_ev, None).unwrap();
    let rec = MeteringRecord {
        request_id: req_ev.id,
        result_id: res_ev.id,
        customer: customer.public_key(),
        model: "m1".into(),
        prompt_sha256: preq.prompt_sha256(),
        usage,
        wall_ms: 1,
        bytes_in: preq.input_data.len() as u64,
        bytes_out: 4,
        price_msat: 0,
        payment_hash: None,
    };
    let m = MeteringRecord::from_event(&rec.to_event(&worker).unwrap()).unwrap();
    match m.verify(&pres, &preq) {
        Err(ProtocolError::MeteringMismatch(e)) => assert!(e.contains("max_tokens"), "{e}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
}
