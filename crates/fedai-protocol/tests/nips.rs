//! The example events in `nips/*.md` are real signed events that this crate parses: the specs
//! cannot drift from the code.

use std::collections::HashMap;
use std::path::Path;

use fedai_protocol::nostr::prelude::*;
use fedai_protocol::*;

const CUSTOMER_SK: &str = "7f7ff03d123792d6ac594bfa67bf6d0c0ab55b6b1fdb6249303fe861f1ccba9a";
const WORKER_SK: &str = "c15d739894c81a2fcfd3a2df85a0d2c0dbc47a280d092799f144d73d7ae78add";

/// Every `<!-- example: NAME -->` block of every spec, by name.
fn examples() -> HashMap<String, Event> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nips");
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(&dir).expect("nips/ exists") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let Some(name) = line
                .strip_prefix("<!-- example: ")
                .and_then(|l| l.strip_suffix(" -->"))
            else {
                continue;
            };
            assert_eq!(
                lines.next(),
                Some("```json"),
                "{}: {name} has no json block",
                path.display()
            );
            let json: String = lines
                .by_ref()
                .take_while(|l| *l != "```")
                .collect::<Vec<_>>()
                .join("\n");
            let ev = Event::from_json(&json)
                .unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
            assert!(
                out.insert(name.to_owned(), ev).is_none(),
                "example {name} defined twice"
            );
        }
    }
    out
}

#[test]
fn every_example_parses_with_the_protocol_crate() {
    let ex = examples();
    assert!(ex.len() >= 14, "expected all examples, found {}", ex.len());
    let customer = Keys::parse(CUSTOMER_SK).unwrap();
    let worker = Keys::parse(WORKER_SK).unwrap();
    for (name, ev) in &ex {
        assert!(
            validate::validate_event(ev).is_ok(),
            "{name}: {:?}",
            validate::validate_event(ev)
        );
        let ok = match ev.kind.as_u16() {
            kinds::JOB_REQUEST | kinds::EMBED_REQUEST => {
                JobRequest::from_event(ev, Some(&worker)).is_ok()
            }
            kinds::EMBED_RESULT => JobResult::from_event(ev, Some(&customer)).is_ok_and(|r| {
                EmbedAnswer::for_request(
                    &r.result.output,
                    &JobRequest::from_event(&r.result.request, None)
                        .unwrap()
                        .request
                        .input,
                )
                .is_ok()
            }),
            kinds::JOB_FEEDBACK => JobFeedback::from_event(ev, Some(&customer)).is_ok(),
            kinds::JOB_RESULT => JobResult::from_event(ev, Some(&customer)).is_ok(),
            kinds::METERING => MeteringRecord::from_event(ev).is_ok(),
            kinds::AWARD => Award::from_event(ev).is_ok(),
            kinds::PAYMENT_RECEIPT => PaymentReceipt::from_event(ev).is_ok(),
            kinds::CAPABILITY_AD => CapabilityAd::from_event(ev).is_ok(),
            kinds::LABEL => Attestation::from_event(ev).is_ok(),
            // NIP-57's zap request: only its signature is ours to check here.
            9734 => ev.verify().is_ok(),
            k => panic!("{name}: unexpected kind {k}"),
        };
        assert!(ok, "{name} does not parse");
        assert!(
            ev.pubkey == customer.public_key() || ev.pubkey == worker.public_key(),
            "{name}: signed by the example keys"
        );
    }
}

#[test]
fn examples_tell_a_consistent_story() {
    let ex = examples();
    let customer = Keys::parse(CUSTOMER_SK).unwrap();
    let worker = Keys::parse(WORKER_SK).unwrap();
    let req = JobRequest::from_event(&ex["job-request"], None).unwrap();
    let res = JobResult::from_event(&ex["job-result"], None).unwrap();
    let rec = MeteringRecord::from_event(&ex["metering"]).unwrap();
    let check = rec
        .verify(&res, &req)
        .expect("the metering example matches the request and result examples");
    assert!(check.prompt_checked && check.output_checked);

    // The encrypted request is readable by the worker only, and its result by the customer.
    let enc = &ex["job-request-encrypted"];
    assert_eq!(
        JobRequest::from_event(enc, None).unwrap_err(),
        ProtocolError::NotRecipient
    );
    let p = JobRequest::from_event(enc, Some(&worker)).unwrap();
    assert!(matches!(p.request.input, JobInput::Chat(_)));
    let r = JobResult::from_event(&ex["job-result-encrypted"], Some(&customer)).unwrap();
    assert!(!r.output_sealed && r.result.output.contains("relays"));
    assert!(ex["job-result-encrypted"]
        .tags
        .iter()
        .all(|t| t.kind() != "i"));

    // Function calling: the request offers tools and carries the earlier call and its output;
    // the result's content is the tool answer.
    let t = JobRequest::from_event(&ex["job-request-tools"], None).unwrap();
    assert_eq!(t.request.params.features(), ["tools"]);
    let JobInput::Chat(turns) = &t.request.input else {
        panic!("a chat")
    };
    assert_eq!(turns[1].tool_calls[0].function.name, "get_weather");
    assert_eq!(
        turns[2].tool_call_id.as_deref(),
        Some(turns[1].tool_calls[0].id.as_str())
    );
    let r = JobResult::from_event(&ex["job-result-tools"], None).unwrap();
    assert_eq!(r.request_id(), t.id);
    let answer = JsonAnswer::parse(&r.result.output).unwrap();
    assert_eq!(
        answer.tool_calls[0].function.arguments,
        r#"{"city":"Paris"}"#
    );

    // Log probabilities: asked for, and an answer whose tokens make its text.
    let l = JobRequest::from_event(&ex["job-request-logprobs"], None).unwrap();
    assert_eq!(l.request.params.features(), ["logprobs"]);
    let r = JobResult::from_event(&ex["job-result-logprobs"], None).unwrap();
    assert_eq!(r.request_id(), l.id);
    let answer = JsonAnswer::for_request(&r.result.output, &l.request.params).unwrap();
    assert_eq!(answer.logprobs.len(), 2);

    let receipt = PaymentReceipt::from_event(&ex["payment-receipt"]).unwrap();
    assert_eq!(Some(receipt.receipt.payment_hash), rec.record.payment_hash);
    // The attestation is the customer's word on that same job, with the evidence named.
    let att = Attestation::from_event(&ex["attestation"]).unwrap();
    assert_eq!(att.attester, req.customer);
    assert_eq!(att.attestation.worker, res.worker);
    assert_eq!(
        (
            att.attestation.request_id,
            att.attestation.result_id,
            att.attestation.metering_id
        ),
        (req.id, Some(res.id), Some(rec.id))
    );
    let award = Award::from_event(&ex["award"]).unwrap();
    assert_eq!(award.award.request_id, req.id);

    // The ad's content carries the lightning address kind-0 style, for NIP-89 clients.
    let ad = ex
        .values()
        .find(|e| e.kind.as_u16() == kinds::CAPABILITY_AD)
        .expect("an ad example");
    let parsed = CapabilityAd::from_event(ad).unwrap();
    let content: serde_json::Value = serde_json::from_str(&ad.content).unwrap();
    assert_eq!(
        content["lud16"].as_str(),
        parsed.ad.payment.lightning_address.as_deref()
    );

    // Paying by zap: the quote names a zap target; the receipt embeds the zap request, which
    // names the job and the worker.
    let q = JobFeedback::from_event(&ex["feedback-payment-required-zap"], None).unwrap();
    assert!(q.zap.is_some() && q.amount.is_some_and(|a| a.bolt11.is_none()));
    let zr = PaymentReceipt::from_event(&ex["payment-receipt-zap"])
        .unwrap()
        .receipt
        .zap_request
        .expect("a zap receipt embeds its zap request");
    assert_eq!(zr, ex["zap-request"].as_json());
    assert!(ex["zap-request"].tags.event_ids().any(|id| id == req.id));
    assert!(ex["zap-request"]
        .tags
        .public_keys()
        .any(|p| p == worker.public_key()));
}
