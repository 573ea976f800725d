//! Relay sync benchmark: what `fedai-relay --sync-peer` costs on the wire.
//!
//! Relay B holds N events; relay A holds the same N less D (D = 0: equal sets). A restarts with
//! `--sync-peer B` and runs one round; its log line gives the reconciliation's bytes each way,
//! its time, the slices it took (a window over a negentropy session's 50,000 items is halved),
//! and what it fetched. Events are kind 5050 from many keys, dated over the last 20 hours (the
//! sync window is 24 h), signed before anything is timed.
//!
//! Usage: `fedai-sync-bench [--events N] [--differ D]` (release build recommended).

use std::time::{Duration, Instant};

use fedai_protocol::nostr::prelude::*;
use fedai_tests::{RelayProc, Ws};

fn arg(name: &str, default: usize) -> usize {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next().and_then(|v| v.parse().ok()).unwrap_or(default);
        }
    }
    default
}

async fn publish(url: &str, events: &[Event]) {
    let mut ws = Ws::connect(url).await;
    for chunk in events.chunks(500) {
        let oks = ws.publish_many(chunk).await;
        assert!(
            oks.iter().all(|(ok, _)| *ok),
            "published: {:?}",
            oks.first()
        );
    }
}

const LIMITS: [&str; 6] = [
    "--events-per-minute",
    "100000000",
    "--events-per-minute-per-pubkey",
    "100000000",
    "--pubkey-quota-mib",
    "100000",
];

#[tokio::main]
async fn main() {
    let n = arg("--events", 20_000);
    let d = arg("--differ", 1).min(n);
    let now = Timestamp::now().as_secs();
    let keys: Vec<Keys> = (0..64).map(|_| Keys::generate()).collect();
    let t = Instant::now();
    let events: Vec<Event> = (0..n)
        .map(|i| {
            EventBuilder::new(Kind::from_u16(5050), "")
                .tag(Tag::parse(["i", &format!("sync bench {i}"), "text"]).unwrap())
                .custom_created_at(Timestamp::from_secs(
                    now - 72_000 + (i as u64 * 72_000 / n as u64),
                ))
                .finalize(&keys[i % keys.len()])
                .unwrap()
        })
        .collect();
    eprintln!("signed {n} events in {:?}", t.elapsed());
    let mut b_args = vec!["--memory"];
    b_args.extend(LIMITS);
    let b = RelayProc::start(&b_args);
    publish(&b.url, &events).await;
    let dir = fedai_tests::temp_dir("sync-bench");
    let dir_s = dir.display().to_string();
    let mut a_args = vec!["--data-dir", dir_s.as_str()];
    a_args.extend(LIMITS);
    {
        let a = RelayProc::start(&a_args);
        publish(&a.url, &events[d..]).await;
    } // killed; LMDB kept every acknowledged event
    a_args.extend([
        "--sync-peer",
        b.url.as_str(),
        "--sync-every-secs",
        "3600",
        "--sync-no-push",
        "--log",
        "info",
    ]);
    let a = RelayProc::start(&a_args);
    let end = Instant::now() + Duration::from_secs(300);
    let line = loop {
        let log = strip_ansi(&a.logs());
        if let Some(l) = log.lines().find(|l| l.contains("sync round")) {
            break l.to_owned();
        }
        if let Some(l) = log.lines().find(|l| l.contains("sync round failed")) {
            panic!("{l}");
        }
        assert!(Instant::now() < end, "no sync round within 300 s:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or("?")
            .trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned()
    };
    println!(
        "| {n} | {d} | {} | {} | {} | {} | {} | {} |",
        field("local_items"),
        field("missing_here"),
        field("stored"),
        field("neg_bytes_sent"),
        field("neg_bytes_received"),
        field("neg_ms"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The log without its colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
