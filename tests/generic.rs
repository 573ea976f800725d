//! fed_AI as a NIP-90 service provider for clients that know nothing of it: every job here is
//! posted and read by an independent client on nostr-tools (`tests/generic-client`), not ours.

use std::time::Duration;

use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::LocalModel;
use fedai_tests::generic::{first, run, GenericRun};
use fedai_tests::{client, nsec, wait_for_workers, RelayProc, WorkerProc};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn has_tag(v: &Value, want: &[&str]) -> bool {
    v["tags"].as_array().is_some_and(|tags| {
        tags.iter().any(|t| {
            t.as_array().is_some_and(|t| {
                t.len() >= want.len() && want.iter().zip(t).all(|(w, x)| x.as_str() == Some(*w))
            })
        })
    })
}

/// The raw event `id` as the relay serves it.
async fn raw(relay: &str, sk: &str, id: &str) -> Value {
    let (code, lines) = run(
        &[relay],
        sk,
        &["fetch", "--id", id],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(code, 0, "event {id} on {relay}: {lines:?}");
    first(&lines, "event").expect("event line")["event"].clone()
}

/// A one-route HTTP server on loopback serving `body`; counts requests.
async fn text_server(body: &'static str) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/doc.txt",
        l.local_addr().unwrap().port()
    );
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_client_gets_plain_encrypted_chained_url_and_cancelled_jobs() {
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let smol = fedai_tests::llama(LocalModel::SmolLm2, "smol", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let reply_relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    let (sk_strict, pk_strict) = nsec();
    let (sk_smol, pk_smol) = nsec();
    // This market runs on loopback: the worker may fetch loopback inputs and reply there.
    let _w = WorkerProc::start(&sk, &relay.url, &tiny.url, &["--allow-private-addresses"]);
    // A worker with the default policy: public addresses only.
    let _strict = WorkerProc::start(&sk_strict, &relay.url, &tiny.url, &[]);
    let _s = WorkerProc::start(&sk_smol, &relay.url, &smol.url, &[]);
    let c = client(&relay).await;
    wait_for_workers(&c, 3).await;
    let customer = Keys::generate();
    let csk = customer.secret_key().to_secret_hex();
    let cpk = customer.public_key().to_hex();
    let (pk, pk_strict, pk_smol) = (pk.to_hex(), pk_strict.to_hex(), pk_smol.to_hex());

    // 1. A plain request as DVM clients write it: `prompt` input, no expiration, directed with
    //    two `p` tags (one of them ours), replies asked on a second relay too.
    let other = Keys::generate().public_key().to_hex();
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            "Hello there",
            "--input-type",
            "prompt",
            "--param",
            "model=tiny",
            "--param",
            "max_tokens=8",
            "--param",
            "seed=3",
            "--p",
            &other,
            "--p",
            &pk,
            "--relays",
            &reply_relay.url,
        ],
        T,
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    let req_id = first(&lines, "request").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = first(&lines, "result").expect("a result");
    assert_eq!(res["pubkey"], pk.as_str());
    assert!(!res["content"].as_str().unwrap().is_empty());
    // NIP-90's result layout: the request, `e`, `p`, the inputs.
    for want in [
        &["e", req_id.as_str()][..],
        &["p", &cpk],
        &["i", "Hello there", "prompt"],
    ] {
        assert!(has_tag(res, want), "result lacks {want:?}: {res}");
    }
    assert!(res["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t[0] == "request"));
    // Feedback and result also went to the relay the customer named.
    let res_id = res["id"].as_str().unwrap();
    assert_eq!(raw(&reply_relay.url, &csk, res_id).await["id"], res_id);

    // 2. Encrypted requests: the answer comes back in the request's own scheme.
    for (scheme, nip04) in [("nip04", true), ("nip44", false)] {
        let (code, lines) = run(
            &[&relay.url],
            &csk,
            &[
                "job",
                "--input",
                "a private question",
                "--param",
                "model=tiny",
                "--param",
                "max_tokens=8",
                "--p",
                &pk,
                "--encrypt",
                scheme,
            ],
            T,
        )
        .await;
        assert_eq!(code, 0, "{scheme}: {lines:?}");
        let res = first(&lines, "result").unwrap();
        assert_eq!(res["encrypted"], true, "{scheme}");
        assert!(res.get("decrypt_error").is_none(), "{scheme}: {res}");
        assert!(!res["content"].as_str().unwrap().is_empty());
        assert!(
            !has_tag(res, &["i"]),
            "an encrypted result never reveals the input"
        );
        let wire = raw(&relay.url, &csk, res["id"].as_str().unwrap()).await;
        assert_eq!(
            wire["content"].as_str().unwrap().contains("?iv="),
            nip04,
            "{scheme}: the result is encrypted as the request was"
        );
        for fb in lines.iter().filter(|v| v["type"] == "feedback") {
            assert_eq!(fb["encrypted"], true, "{scheme} feedback: {fb}");
        }
    }

    // 2b. Someone else's private request or result never becomes another customer's input:
    //     the worker could decrypt it (it is a party), but the asker is not.
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            "my secret plan",
            "--param",
            "model=tiny",
            "--param",
            "max_tokens=8",
            "--p",
            &pk,
            "--encrypt",
            "nip44",
        ],
        T,
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    let secret_req = first(&lines, "request").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let thief = Keys::generate().secret_key().to_secret_hex();
    for ty in ["event", "job"] {
        let (code, lines) = run(
            &[&relay.url],
            &thief,
            &[
                "job",
                "--input",
                &secret_req,
                "--input-type",
                ty,
                "--p",
                &pk,
            ],
            T,
        )
        .await;
        assert_eq!(code, 3, "{ty}: {lines:?}");
        let err = first(&lines, "feedback").unwrap();
        assert!(
            err["info"]
                .as_str()
                .unwrap()
                .contains("encrypted to someone else"),
            "{ty}: {err}"
        );
    }

    // 3. Job chaining: the output of job 1 is the input of job 2.
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            "Continue this:",
            "--input",
            &req_id,
            "--input-type",
            "job",
            "--input-relay",
            &relay.url,
            "--param",
            "model=tiny",
            "--param",
            "max_tokens=8",
            "--p",
            &pk,
        ],
        T,
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(first(&lines, "result").is_some());
    // A chain to a job that has no result is refused with the reason.
    let missing = EventId::from_byte_array([7; 32]).to_hex();
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            &missing,
            "--input-type",
            "job",
            "--p",
            &pk,
        ],
        T,
    )
    .await;
    assert_eq!(code, 3, "{lines:?}");
    let err = first(&lines, "feedback").unwrap();
    assert!(
        err["info"]
            .as_str()
            .unwrap()
            .contains("no result of that job"),
        "{err}"
    );

    // 4. A `url` input is fetched (bounded) by a worker allowed to reach it…
    let (url, hits) = text_server("Nostr is a protocol of signed notes and relays.").await;
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            "Summarise:",
            "--input",
            &url,
            "--input-type",
            "url",
            "--param",
            "model=tiny",
            "--param",
            "max_tokens=8",
            "--p",
            &pk,
        ],
        T,
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // …and refused by one on the default policy: a request cannot make it probe loopback.
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            &url,
            "--input-type",
            "url",
            "--p",
            &pk_strict,
        ],
        T,
    )
    .await;
    assert_eq!(code, 3, "{lines:?}");
    let err = first(&lines, "feedback").unwrap();
    assert!(
        err["info"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{err}"
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never fetched"
    );

    // 5. Cancellation by a NIP-09 deletion without a `k` tag stops a running job.
    let mut long = GenericRun::start(
        &[&relay.url],
        &csk,
        &[
            // A raw completion that goes on (greedy, so the same on every run): the job is
            // still running when the deletion comes (an instruction as raw text sometimes
            // drew an end-of-text at once).
            "job",
            "--input",
            "Once upon a time, in a lighthouse by the sea, there lived an old keeper who",
            "--param",
            "model=smol",
            "--param",
            "max_tokens=1500",
            "--param",
            "temperature=0",
            "--p",
            &pk_smol,
        ],
    );
    long.until("feedback", Some("processing"), T).await;
    let id = long.request_id().unwrap();
    let t0 = std::time::Instant::now();
    let (code, lines) = run(&[&relay.url], &csk, &["delete", "--id", &id], T).await;
    assert_eq!(code, 0, "{lines:?}");
    let err = long.until("feedback", Some("error"), T).await;
    assert!(
        has_tag(&err, &["code", "cancelled"]),
        "the job stopped as cancelled: {err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "stopped promptly");
    assert_eq!(long.finish(Duration::from_secs(5)).await, 3);
}

/// An open request (no `p`) from a generic client reaches every worker: the one that serves the
/// model answers, the others stay silent (no N refusals for one request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_requests_are_answered_once_and_declined_in_silence() {
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk1, pk1) = nsec();
    let (sk2, _) = nsec();
    let (sk3, _) = nsec();
    let _w1 = WorkerProc::start(&sk1, &relay.url, &tiny.url, &["--price", "tiny=0:0:0"]);
    // Two workers that cannot take it: prompts over 4 bytes, and at most 2 tokens.
    let _w2 = WorkerProc::start(&sk2, &relay.url, &tiny.url, &["--max-prompt-bytes", "4"]);
    let _w3 = WorkerProc::start(
        &sk3,
        &relay.url,
        &tiny.url,
        &["--payment-mode", "free", "--max-tokens", "2"],
    );
    let c = client(&relay).await;
    wait_for_workers(&c, 3).await;
    let csk = Keys::generate().secret_key().to_secret_hex();
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            "An open question for anyone",
            "--param",
            "max_tokens=8",
            "--param",
            "model=tiny",
        ],
        T,
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    // Wait a moment for any stray answer, then count who answered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let req_id = first(&lines, "request").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let evs = c
        .fetch(
            Filter::new()
                .kinds([Kind::from_u16(7000), Kind::from_u16(6050)])
                .event(EventId::from_hex(&req_id).unwrap()),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    let authors: std::collections::HashSet<PublicKey> = evs.iter().map(|e| e.pubkey).collect();
    assert_eq!(authors.len(), 1, "only the worker that ran it answered");
    assert!(authors.contains(&pk1));
    assert!(
        !evs.iter().any(|e| e
            .tags
            .iter()
            .any(|t| t.as_slice().get(1).map(String::as_str) == Some("error"))),
        "no error feedback to an open request"
    );
}
