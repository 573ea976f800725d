//! The real `fedai-relay` binary over real WebSockets and HTTP.

use std::collections::HashSet;
use std::num::NonZeroU8;
use std::time::Duration;

use fedai_protocol::nostr::nips::nip13::SingleThreadPow;
use fedai_protocol::nostr::prelude::*;
use fedai_tests::{job_request, temp_dir, RelayProc, Ws};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn publish_and_query_fedai_and_normal_kinds() {
    let relay = RelayProc::start(&["--memory"]);
    let mut ws = Ws::connect(&relay.url).await;
    let keys = Keys::generate();
    let job = job_request(&keys, "What is the capital of France?");
    assert_eq!(ws.publish(&job).await, (true, String::new()));
    let note = EventBuilder::new(Kind::TextNote, "plain note")
        .finalize(&keys)
        .unwrap();
    assert!(
        ws.publish(&note).await.0,
        "a general relay accepts normal kinds"
    );
    // Duplicate is acknowledged without storing twice.
    let (ok, msg) = ws.publish(&job).await;
    assert!(ok && msg.starts_with("duplicate:"), "{msg}");

    let got = ws
        .query(
            "q1",
            json!({"kinds": [5050], "authors": [keys.public_key().to_hex()]}),
        )
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], job.id.to_hex());
    let parsed = Event::from_json(got[0].to_string()).unwrap();
    assert!(
        fedai_protocol::JobRequest::from_event(&parsed, None).is_ok(),
        "stored event still verifies and parses"
    );
    let notes = ws.query("q2", json!({"kinds": [1]})).await;
    assert_eq!(notes.len(), 1);

    // Live delivery to a second connection.
    let mut sub = Ws::connect(&relay.url).await;
    sub.query(
        "live",
        json!({"kinds": [5050], "since": Timestamp::now().as_secs() - 5}),
    )
    .await;
    let job2 = job_request(&keys, "second");
    assert!(ws.publish(&job2).await.0);
    let m = sub.recv(T).await.unwrap();
    assert_eq!(
        (m[0].as_str(), m[2]["id"].as_str()),
        (Some("EVENT"), Some(job2.id.to_hex().as_str()))
    );
}

/// A relay that hosts a public market carries other applications' NIP-90 events: fed_AI's schema
/// applies only to events with fed_AI's marker (fedai-05).
#[tokio::test]
async fn other_dvms_events_are_stored_and_served() {
    use fedai_protocol::nostr::nips::{nip04, nip44};
    let relay = RelayProc::start(&["--memory"]);
    let mut ws = Ws::connect(&relay.url).await;
    let client = Keys::generate();
    let dvm = Keys::generate();
    let t = |v: &[&str]| Tag::parse(v.iter().copied()).unwrap();
    let build = |keys: &Keys, kind: u16, content: &str, tags: Vec<Tag>| {
        EventBuilder::new(Kind::from_u16(kind), content)
            .tags(tags)
            .finalize(keys)
            .unwrap()
    };
    // A text-to-image request, as image DVM clients send it.
    let image = build(
        &client,
        5100,
        "",
        vec![
            t(&["i", "a red fox in the snow", "text"]),
            t(&["param", "size", "1024x1024"]),
            t(&["bid", "10000"]),
        ],
    );
    // A summarisation request with a `url` input and no expiration.
    let summary = build(
        &client,
        5001,
        "",
        vec![
            t(&["i", "https://example.com/article", "url"]),
            t(&["output", "text/plain"]),
        ],
    );
    // A 5050 from a generic client: `prompt` input, several `p`, no expiration, no marker.
    let generic = build(
        &client,
        5050,
        "",
        vec![
            t(&["i", "hello", "prompt"]),
            t(&["i", &summary.id.to_hex(), "job"]),
            t(&["p", &dvm.public_key().to_hex()]),
            t(&["p", &Keys::generate().public_key().to_hex()]),
        ],
    );
    // NIP-04- and NIP-44-encrypted requests, as older and newer DVM clients write them.
    let private = r#"[["i","a secret","text"]]"#;
    let nip04_req = build(
        &client,
        5050,
        &nip04::encrypt(client.secret_key(), &dvm.public_key(), private).unwrap(),
        vec![t(&["p", &dvm.public_key().to_hex()]), t(&["encrypted"])],
    );
    let nip44_req = build(
        &client,
        5050,
        &nip44::encrypt(
            client.secret_key(),
            &dvm.public_key(),
            private,
            nip44::Version::V2,
        )
        .unwrap(),
        vec![t(&["p", &dvm.public_key().to_hex()]), t(&["encrypted"])],
    );
    // Bare feedback and a result without fed_AI's usage tags.
    let bare = build(
        &dvm,
        7000,
        "",
        vec![t(&["status", "processing"]), t(&["e", &image.id.to_hex()])],
    );
    let result = build(
        &dvm,
        6050,
        "hi there",
        vec![
            t(&["request", &generic.as_json()]),
            t(&["e", &generic.id.to_hex()]),
            t(&["p", &client.public_key().to_hex()]),
        ],
    );
    let all = [
        &image, &summary, &generic, &nip04_req, &nip44_req, &bare, &result,
    ];
    for ev in all {
        let (ok, msg) = ws.publish(ev).await;
        assert!(ok, "kind {} refused: {msg}", ev.kind);
    }
    let got = ws
        .query(
            "theirs",
            json!({"kinds": [5100, 5001, 5050, 7000, 6050], "limit": 50}),
        )
        .await;
    let ids: std::collections::HashSet<String> = got
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    for ev in all {
        assert!(ids.contains(&ev.id.to_hex()), "kind {} served", ev.kind);
    }
    // The same shapes claiming to be fed_AI's are held to the schema.
    let claimed = build(
        &client,
        5050,
        "",
        vec![t(&["i", "x", "nonsense"]), t(&["t", "fedai"])],
    );
    let (ok, msg) = ws.publish(&claimed).await;
    assert!(!ok && msg.starts_with("invalid: "), "{msg}");
}

/// A request head without a newline is cut off at the head limit (16 KiB), not buffered until
/// a newline or the 10 s head timeout: one connection cannot make the relay hold a huge line.
#[tokio::test]
async fn an_endless_request_head_is_cut_at_the_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = RelayProc::start(&["--memory"]);
    let addr = relay.url.trim_start_matches("ws://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // 64 KiB of one header line, no newline.
    let line = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(64 * 1024));
    let _ = s.write_all(line.as_bytes()).await;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the relay dropped the connection at the limit"
    );
    // And keeps serving others.
    let mut ws = Ws::connect(&relay.url).await;
    assert!(
        ws.publish(&job_request(&Keys::generate(), "still here"))
            .await
            .0
    );
}

/// Plain TCP connections that never send a request (or never upgrade) count under the
/// per-address bound too: past it the relay closes a new one at once instead of holding its
/// socket for the head timeout; once they go, the address connects again.
#[tokio::test]
async fn idle_sockets_count_under_the_address_bound() {
    use tokio::io::AsyncReadExt;
    let relay = RelayProc::start(&["--memory", "--max-connections-per-ip", "3"]);
    let addr = relay.url.trim_start_matches("ws://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Let the relay take them (accepted sockets are served in whatever order tasks run).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed at once: {closed:?}"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = Ws::connect(&relay.url).await;
    assert!(ws.publish(&job_request(&Keys::generate(), "back")).await.0);
}

#[tokio::test]
async fn restart_keeps_every_acknowledged_event() {
    let dir = temp_dir("relay-lmdb");
    let dir_s = dir.to_str().unwrap();
    let mut relay = RelayProc::start(&["--data-dir", dir_s, "--map-size-mib", "64"]);
    let keys = Keys::generate();
    let events: Vec<Event> = (0..200)
        .map(|i| job_request(&keys, &format!("prompt {i}")))
        .collect();
    let ids: HashSet<String> = events.iter().map(|e| e.id.to_hex()).collect();
    {
        let mut ws = Ws::connect(&relay.url).await;
        assert!(ws.publish_many(&events).await.iter().all(|r| r.0));
    }
    // SIGKILL right after the last OK: acknowledged means durable.
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
    let relay2 = RelayProc::start(&["--data-dir", dir_s, "--map-size-mib", "64"]);
    let mut ws = Ws::connect(&relay2.url).await;
    let got: HashSet<String> = ws
        .query("all", json!({"kinds": [5050], "limit": 1000}))
        .await
        .into_iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        got, ids,
        "every acknowledged event survives a kill -9 and restart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tampered_and_malformed_events_are_rejected_with_prefixes() {
    let relay = RelayProc::start(&["--memory", "--log", "debug"]);
    let mut ws = Ws::connect(&relay.url).await;
    let keys = Keys::generate();

    // Content changed after signing: the id no longer matches.
    let ev = job_request(&keys, "original");
    let mut v: serde_json::Value = serde_json::from_str(&ev.as_json()).unwrap();
    v["content"] = "SECRET-TAMPERED-CONTENT".into();
    ws.send(json!(["EVENT", v])).await;
    let (ok, msg) = ws.ok_for(&ev.id.to_hex()).await;
    assert!(!ok && msg.starts_with("invalid:"), "{msg}");

    // Signature from another key.
    let mut v: serde_json::Value = serde_json::from_str(&ev.as_json()).unwrap();
    let other = job_request(&Keys::generate(), "original");
    v["sig"] = other.sig.to_string().into();
    ws.send(json!(["EVENT", v])).await;
    let (ok, msg) = ws.ok_for(&ev.id.to_hex()).await;
    assert!(!ok && msg.starts_with("invalid:"), "{msg}");

    // Correctly signed but malformed fedai events.
    let cases: Vec<(Event, &str)> = vec![
        (
            EventBuilder::new(Kind::from_u16(5050), "")
                .tag(Tag::custom("i", ["SECRET-PROMPT-IN-BAD-EVENT", "text"]))
                .tag(Tag::custom("param", ["max_tokens", "lots"]))
                .tag(Tag::hashtag("fedai"))
                .finalize(&keys)
                .unwrap(),
            "param",
        ),
        (
            EventBuilder::new(Kind::from_u16(5050), "")
                .tag(Tag::hashtag("fedai"))
                .finalize(&keys)
                .unwrap(),
            "missing tag `i`",
        ),
        (
            EventBuilder::new(Kind::from_u16(7000), "")
                .tag(Tag::custom("status", ["partial"]))
                .tag(Tag::hashtag("fedai"))
                .finalize(&keys)
                .unwrap(),
            "`e`",
        ),
        (
            EventBuilder::new(Kind::from_u16(7060), "")
                .finalize(&keys)
                .unwrap(),
            "missing tag",
        ),
        (
            EventBuilder::new(Kind::from_u16(31990), "{}")
                .tag(Tag::custom("t", ["fedai"]))
                .tag(Tag::custom("d", ["x"]))
                .finalize(&keys)
                .unwrap(),
            "",
        ),
    ];
    for (ev, needle) in cases {
        let (ok, msg) = ws.publish(&ev).await;
        assert!(!ok, "kind {} accepted", ev.kind);
        assert!(
            msg.starts_with("invalid: ") && msg.contains(needle),
            "kind {}: {msg}",
            ev.kind
        );
    }
    // Garbage frames get a NOTICE, never a crash; the connection keeps working.
    ws.send_raw("not json at all".into()).await;
    ws.send_raw("[\"EVENT\", {\"id\": 5}]".into()).await;
    let good = job_request(&keys, "still alive");
    assert!(ws.publish(&good).await.0);
    assert!(
        ws.query("none", json!({"kinds": [7000, 7060, 31990]}))
            .await
            .is_empty(),
        "nothing rejected was stored"
    );

    // Logs never carry event content.
    let logs = relay.logs();
    assert!(
        logs.contains("rejected malformed fedai event"),
        "debug logging is on: {logs}"
    );
    for secret in [
        "SECRET-PROMPT-IN-BAD-EVENT",
        "SECRET-TAMPERED-CONTENT",
        "still alive",
        "original",
    ] {
        assert!(!logs.contains(secret), "log leaked `{secret}`");
    }
}

#[tokio::test]
async fn nip11_health_and_metrics_share_the_port() {
    let relay = RelayProc::start(&["--memory", "--name", "test-relay"]);
    let (status, body) = relay.http_get("/", "application/nostr+json").await;
    assert!(status.contains("200"), "{status}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["name"], "test-relay");
    let nips: Vec<u64> = doc["supported_nips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for n in [1, 11, 40, 42, 90] {
        assert!(nips.contains(&n), "NIP-{n} listed");
    }
    assert_eq!(doc["fedai"]["kinds"]["job_request"], 5050);
    assert_eq!(doc["fedai"]["kinds"]["metering"], 7060);
    assert!(doc["limitation"]["max_content_length"].as_u64().unwrap() >= 256 * 1024);

    let (status, body) = relay.http_get("/health", "*/*").await;
    assert!(status.contains("200") && body.contains("ok"));

    let mut ws = Ws::connect(&relay.url).await;
    let keys = Keys::generate();
    assert!(ws.publish(&job_request(&keys, "count me")).await.0);
    let bad = EventBuilder::new(Kind::from_u16(5050), "")
        .tag(Tag::hashtag("fedai"))
        .finalize(&keys)
        .unwrap();
    assert!(!ws.publish(&bad).await.0);
    ws.query("q", json!({"kinds": [5050]})).await;

    let (status, metrics) = relay.http_get("/metrics", "*/*").await;
    assert!(status.contains("200"));
    assert!(
        metrics.contains("fedai_relay_events_accepted_total{kind=\"5050\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fedai_relay_events_rejected_total{reason=\"invalid\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("fedai_relay_connections 1"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fedai_relay_queries_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let (status, _) = relay.http_get("/nope", "*/*").await;
    assert!(status.contains("404"));
}

#[tokio::test]
async fn paused_subscriber_gets_every_event_or_a_closed_to_recover() {
    const N: usize = 8_000;
    let relay = RelayProc::start(&["--memory", "--max-query-results", "10000"]);
    let keys = Keys::generate();
    let since = Timestamp::now().as_secs() - 1;
    let mut sub = Ws::connect(&relay.url).await;
    sub.query("live", json!({"kinds": [5050], "since": since}))
        .await;

    // Publish the burst from another connection while `sub` is not read at all.
    let mut publisher = Ws::connect(&relay.url).await;
    let mut sent = HashSet::new();
    let events: Vec<Event> = (0..N)
        .map(|i| job_request(&keys, &format!("burst {i}")))
        .collect();
    for chunk in events.chunks(256) {
        assert!(publisher.publish_many(chunk).await.iter().all(|r| r.0));
        sent.extend(chunk.iter().map(|e| e.id.to_hex()));
    }

    // Now drain the paused subscriber.
    let mut got = HashSet::new();
    let mut closed = false;
    while let Some(m) = sub.recv(Duration::from_secs(2)).await {
        match m[0].as_str() {
            Some("EVENT") => {
                got.insert(m[2]["id"].as_str().unwrap().to_owned());
            }
            Some("CLOSED") => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    if closed {
        // Told explicitly: re-subscribe with `since` and catch up from storage.
        let mut again = Ws::connect(&relay.url).await;
        for e in again
            .query(
                "catchup",
                json!({"kinds": [5050], "since": since, "limit": 10000}),
            )
            .await
        {
            got.insert(e["id"].as_str().unwrap().to_owned());
        }
    }
    let missing = sent.difference(&got).count();
    assert_eq!(
        missing, 0,
        "{missing} of {N} events neither delivered nor recoverable (closed={closed})"
    );
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut relay = RelayProc::start(&["--memory"]);
    let _ws = Ws::connect(&relay.url).await;
    assert!(relay.terminate(), "exit 0 within 5 s of SIGTERM");
    assert!(relay.logs().contains("fedai-relay stopped"));
}

#[tokio::test]
async fn job_request_pow_and_per_pubkey_rate_limit() {
    let relay = RelayProc::start(&[
        "--memory",
        "--min-pow-jobs",
        "8",
        "--events-per-minute-per-pubkey",
        "5",
    ]);
    let mut ws = Ws::connect(&relay.url).await;
    let keys = Keys::generate();
    let (ok, msg) = ws.publish(&job_request(&keys, "no work done")).await;
    assert!(!ok && msg.starts_with("pow:"), "{msg}");
    let unsigned = fedai_protocol::JobRequest::text("mined")
        .to_event(&keys, None)
        .map(|e| EventBuilder::new(e.kind, e.content).tags(e.tags.to_vec()))
        .unwrap()
        .finalize_unsigned(keys.public_key())
        .mine(&SingleThreadPow, NonZeroU8::new(8).unwrap())
        .unwrap();
    let mined = keys.sign_event(unsigned).unwrap();
    let (ok, msg) = ws.publish(&mined).await;
    assert!(ok, "{msg}");
    // Other kinds need no work; the per-pubkey limit counts all of them (2 used so far).
    let mut results = Vec::new();
    for i in 0..5 {
        let note = EventBuilder::new(Kind::TextNote, format!("n{i}"))
            .finalize(&keys)
            .unwrap();
        results.push(ws.publish(&note).await);
    }
    assert!(results[..3].iter().all(|r| r.0));
    assert!(
        results[3..]
            .iter()
            .all(|(ok, m)| !ok && m.starts_with("rate-limited:")),
        "{results:?}"
    );
    // A different key from the same connection is not limited.
    let other = EventBuilder::new(Kind::TextNote, "x")
        .finalize(&Keys::generate())
        .unwrap();
    assert!(ws.publish(&other).await.0);
}

#[tokio::test]
async fn nip42_auth_required_for_writes() {
    let relay = RelayProc::start(&["--memory", "--auth", "write"]);
    let mut ws = Ws::connect(&relay.url).await;
    let keys = Keys::generate();
    let ev = job_request(&keys, "auth me");
    ws.send_raw(format!("[\"EVENT\",{}]", ev.as_json())).await;
    let mut challenge = None;
    let mut refused = None;
    while challenge.is_none() || refused.is_none() {
        let m = ws.recv(T).await.unwrap();
        match m[0].as_str() {
            Some("AUTH") => challenge = m[1].as_str().map(str::to_owned),
            Some("OK") => refused = Some(m[3].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
    assert!(refused.unwrap().starts_with("auth-required:"));
    let url = RelayUrl::parse(&relay.url).unwrap();
    let auth =
        fedai_protocol::nostr::nips::nip42::ClientAuthentication::new(challenge.unwrap(), url)
            .finalize(&keys)
            .unwrap();
    ws.send_raw(format!("[\"AUTH\",{}]", auth.as_json())).await;
    assert!(ws.ok_for(&auth.id.to_hex()).await.0, "AUTH accepted");
    assert!(ws.publish(&ev).await.0, "write accepted after AUTH");
}

#[tokio::test]
async fn ephemeral_events_are_broadcast_not_stored() {
    let relay = RelayProc::start(&["--memory"]);
    let keys = Keys::generate();
    let mut sub = Ws::connect(&relay.url).await;
    sub.query("eph", json!({"kinds": [20001]})).await;
    let mut ws = Ws::connect(&relay.url).await;
    let ev = EventBuilder::new(Kind::from_u16(20001), "typing")
        .finalize(&keys)
        .unwrap();
    assert!(ws.publish(&ev).await.0);
    let m = sub.recv(T).await.unwrap();
    assert_eq!(m[2]["id"], ev.id.to_hex());
    assert!(ws
        .query("later", json!({"kinds": [20001]}))
        .await
        .is_empty());
}

/// NIP-77: a nostr-sdk client reconciles its set with the relay's by negentropy and each side
/// gets exactly what it lacked.
#[tokio::test]
async fn negentropy_sync_moves_only_the_difference() {
    use nostr_sdk::prelude::{Client, SyncDirection, SyncOptions};
    let relay = RelayProc::start(&["--memory"]);
    let keys = Keys::generate();
    let notes: Vec<Event> = (0..60)
        .map(|i| {
            EventBuilder::new(Kind::TextNote, format!("note {i}"))
                .finalize(&keys)
                .unwrap()
        })
        .collect();
    // The relay holds notes 0..40; the client 20..60.
    let mut ws = Ws::connect(&relay.url).await;
    assert!(ws.publish_many(&notes[..40]).await.iter().all(|r| r.0));
    let client = Client::builder()
        .database(nostr_memory::MemoryDatabase::unbounded())
        .build();
    client.add_relay(relay.url.as_str()).await.unwrap();
    client.connect().await;
    for e in &notes[20..] {
        client.database().save_event(e).await.unwrap();
    }
    let filter = Filter::new().author(keys.public_key()).kind(Kind::TextNote);
    let out = client
        .sync(filter.clone())
        .opts(SyncOptions::default().direction(SyncDirection::Both))
        .await
        .unwrap();
    let ids = |r: std::ops::Range<usize>| notes[r].iter().map(|e| e.id).collect::<HashSet<_>>();
    let keys_of =
        |m: &std::collections::HashMap<EventId, _>| m.keys().copied().collect::<HashSet<_>>();
    assert_eq!(
        keys_of(&out.value.remote),
        ids(0..20),
        "what only the relay had"
    );
    assert_eq!(out.value.local, ids(40..60), "what only the client had");
    assert_eq!(keys_of(&out.value.received), ids(0..20));
    assert_eq!(keys_of(&out.value.sent), ids(40..60));
    // Both sides now hold all 60.
    let on_relay = ws
        .query(
            "all",
            json!({"authors": [keys.public_key().to_hex()], "limit": 100}),
        )
        .await;
    assert_eq!(on_relay.len(), 60);
    assert_eq!(client.database().count(filter).await.unwrap(), 60);
    // A malformed negentropy message ends that session with NEG-ERR, not the connection.
    ws.send_raw(r#"["NEG-OPEN","bad",{"kinds":[1]},"zz"]"#.to_owned())
        .await;
    let m = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m[0], "NEG-ERR");
    assert!(m[2].as_str().unwrap().starts_with("invalid:"), "{m}");
    assert_eq!(ws.query("still", json!({"limit": 1})).await.len(), 1);
}

/// Limits a client can run into: connections per address (refused at the upgrade with 429),
/// filters the relay does not serve or that are too large (CLOSED with a prefix, connection
/// kept), and a refused REQ ends the subscription it would have replaced.
#[tokio::test]
async fn per_address_and_per_filter_limits_refuse_clearly() {
    let relay = RelayProc::start(&["--memory", "--max-connections-per-ip", "2"]);
    let mut a = Ws::connect(&relay.url).await;
    let mut b = Ws::connect(&relay.url).await;
    let third = tokio_tungstenite::connect_async(relay.url.as_str()).await;
    let Err(err) = third else {
        panic!("a third connection from the address is refused")
    };
    assert!(err.to_string().contains("429"), "{err}");
    let (_, metrics) = relay.http_get("/metrics", "*/*").await;
    assert!(
        metrics.contains("fedai_relay_connections_refused_total 1"),
        "{metrics}"
    );

    a.send(json!(["REQ", "s", {"kinds": [1], "search": "hello"}]))
        .await;
    let m = a.recv(T).await.unwrap();
    assert_eq!(m[0], "CLOSED");
    assert!(m[2].as_str().unwrap().starts_with("unsupported:"), "{m}");
    let kinds: Vec<u32> = (0..10_001).collect();
    a.send(json!(["REQ", "s", {"kinds": kinds}])).await;
    let m = a.recv(T).await.unwrap();
    assert_eq!(m[0], "CLOSED");
    assert!(m[2].as_str().unwrap().starts_with("invalid:"), "{m}");

    // A live subscription, replaced by a refused REQ of the same id, is over.
    a.query("live", json!({"kinds": [1]})).await;
    a.send(json!(["REQ", "live", {"search": "x"}])).await;
    assert_eq!(a.recv(T).await.unwrap()[0], "CLOSED");
    let note = EventBuilder::new(Kind::TextNote, "after")
        .finalize(&Keys::generate())
        .unwrap();
    assert!(b.publish(&note).await.0);
    assert!(
        a.recv(Duration::from_millis(500)).await.is_none(),
        "a closed subscription still delivered"
    );
}

/// The shipped Prometheus alert rules name only metrics this relay exports.
#[tokio::test]
async fn alert_rules_name_only_exported_metrics() {
    let rules = std::fs::read_to_string(
        fedai_tests::workspace_root().join("deploy/prometheus/fedai-relay-alerts.yml"),
    )
    .unwrap();
    let relay = RelayProc::start(&["--memory"]);
    let (_, metrics) = relay.http_get("/metrics", "*/*").await;
    let exported: HashSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("fedai_relay_") {
            named += 1;
            assert!(
                exported.contains(word),
                "{word} is not exported:\n{metrics}"
            );
        }
    }
    assert!(named >= 5, "{named} metrics named");
}

/// Behind a TLS proxy (`--trusted-proxy`), the per-address limit counts the clients the proxy
/// names in `X-Forwarded-For`; anyone else's header is ignored.
#[tokio::test]
async fn per_address_limits_see_through_trusted_proxies_only() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let relay = RelayProc::start(&[
        "--memory",
        "--max-connections-per-ip",
        "1",
        "--trusted-proxy",
        "127.0.0.1",
    ]);
    let addr: std::net::SocketAddr = relay.addr.parse().unwrap();
    // A WebSocket from `from` (a loopback address) saying it forwards for `xff`.
    let connect = |from: &'static str, xff: &'static str| {
        let url = relay.url.clone();
        async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
            let stream = sock.connect(addr).await.unwrap();
            let mut req = url.as_str().into_client_request().unwrap();
            req.headers_mut()
                .insert("x-forwarded-for", xff.parse().unwrap());
            tokio_tungstenite::client_async(req, stream).await
        }
    };
    // Through the proxy: two clients, one connection each.
    let _a = connect("127.0.0.1", "198.51.100.1")
        .await
        .expect("client a");
    let _b = connect("127.0.0.1", "198.51.100.2")
        .await
        .expect("client b");
    let err = connect("127.0.0.1", "198.51.100.1").await.unwrap_err();
    assert!(err.to_string().contains("429"), "client a's second: {err}");
    // Not from the proxy: the header means nothing, the address counts.
    let _c = connect("127.0.0.2", "198.51.100.3").await.expect("direct");
    let err = connect("127.0.0.2", "198.51.100.4").await.unwrap_err();
    assert!(err.to_string().contains("429"), "a forged header: {err}");
}
