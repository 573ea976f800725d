//! Relay benchmark over loopback WebSockets, for any NIP-01 relay (fedai-relay, nostr-rs-relay …).
//!
//! Measures, against `--url`:
//! - **publish throughput**: kind-5050 events accepted per second (`OK true`) with 1 and 32
//!   events in flight on one connection, and 32 in flight on each of 4 connections;
//! - **fan-out latency**: time from sending an EVENT to its arrival at each of 50 live
//!   subscribers (p50 / p99 over every delivery);
//! - **query latency**: a REQ returning 500 stored events, to EOSE (p50 / p99).
//!
//! With `--flood CONNS` it measures instead what a flood does to everyone else: `CONNS`
//! connections pipeline kind-1 notes from fresh keys for `--flood-secs`, while one quiet
//! connection publishes an event every 20 ms and times each `OK` (p50 / p99 / max), against the
//! same quiet publisher on the idle relay just before.
//!
//! Events are signed before timing starts, by many keys (so per-pubkey limits are not what is
//! measured). Output: a Markdown table row per measure and one JSON line (`--json`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fedai_protocol::nostr::prelude::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Args {
    url: String,
    label: String,
    events: usize,
    subscribers: usize,
    fanout_events: usize,
    flood: usize,
    flood_secs: u64,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        url: "ws://127.0.0.1:7777".into(),
        label: "relay".into(),
        events: 5000,
        subscribers: 50,
        fanout_events: 200,
        flood: 0,
        flood_secs: 10,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--url" => a.url = v(),
            "--label" => a.label = v(),
            "--events" => a.events = v().parse().expect("--events N"),
            "--subscribers" => a.subscribers = v().parse().expect("--subscribers N"),
            "--fanout-events" => a.fanout_events = v().parse().expect("--fanout-events N"),
            "--flood" => a.flood = v().parse().expect("--flood CONNS"),
            "--flood-secs" => a.flood_secs = v().parse().expect("--flood-secs S"),
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("fedai-relay-bench --url ws://HOST:PORT [--label NAME] [--events N] [--subscribers N] [--fanout-events N] [--flood CONNS [--flood-secs S]] [--json]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

async fn connect(url: &str) -> Ws {
    // Nagle off on the client too, so the client side adds no 40 ms floors of its own.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("connect");
    ws
}

fn sign_events(n: usize, tag: &str) -> Vec<Event> {
    let keys: Vec<Keys> = (0..(n / 50).max(1)).map(|_| Keys::generate()).collect();
    (0..n)
        .map(|i| {
            fedai_protocol::JobRequest::text(format!(
                "{tag} benchmark prompt number {i}: say something short"
            ))
            .to_event(&keys[i % keys.len()], None)
            .expect("sign")
        })
        .collect()
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(t.as_str()).expect("json")
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("connection failed or timed out: {other:?}"),
        }
    }
}

/// Publish `events` on one connection keeping `window` in flight; returns accepted count.
async fn publish_windowed(url: &str, events: &[Event], window: usize) -> usize {
    let mut ws = connect(url).await;
    let mut next = 0;
    let mut in_flight = 0;
    let mut accepted = 0;
    let mut done = 0;
    while done < events.len() {
        while in_flight < window && next < events.len() {
            ws.send(Message::text(format!(
                "[\"EVENT\",{}]",
                events[next].as_json()
            )))
            .await
            .unwrap();
            next += 1;
            in_flight += 1;
        }
        let m = next_json(&mut ws).await;
        if m[0] == "OK" {
            in_flight -= 1;
            done += 1;
            if m[2] == true {
                accepted += 1;
            }
        }
    }
    accepted
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn throughput(url: &str, n: usize, window: usize, conns: usize, tag: &str) -> (f64, usize) {
    let per = n / conns;
    let batches: Vec<Vec<Event>> = (0..conns)
        .map(|c| sign_events(per, &format!("{tag}-{c}")))
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = batches
        .into_iter()
        .map(|b| {
            let url = url.to_owned();
            tokio::spawn(async move { publish_windowed(&url, &b, window).await })
        })
        .collect();
    let mut accepted = 0;
    for h in handles {
        accepted += h.await.unwrap();
    }
    (accepted as f64 / start.elapsed().as_secs_f64(), accepted)
}

async fn fanout(url: &str, subscribers: usize, n: usize) -> (f64, f64, usize) {
    let marker = format!("fanout-{}", Timestamp::now().as_secs());
    let keys = Keys::generate();
    let events: Vec<Event> = (0..n)
        .map(|i| {
            EventBuilder::new(Kind::from_u16(5050), "")
                .tag(Tag::custom("i", [format!("fan-out {i}"), "text".into()]))
                .tag(Tag::custom("t", [marker.clone()]))
                .finalize(&keys)
                .unwrap()
        })
        .collect();
    let mut subs = Vec::new();
    for s in 0..subscribers {
        let mut ws = connect(url).await;
        let sid = format!("s{s}");
        ws.send(Message::text(
            json!(["REQ", sid, {"kinds": [5050], "#t": [marker]}]).to_string(),
        ))
        .await
        .unwrap();
        loop {
            let m = next_json(&mut ws).await;
            if m[0] == "EOSE" {
                break;
            }
        }
        subs.push(ws);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut readers = Vec::new();
    for mut ws in subs {
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < n {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let at = Instant::now();
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v[0] == "EVENT" {
                            got += 1;
                            let _ = tx.send((v[2]["id"].as_str().unwrap().to_owned(), at));
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
        }));
    }
    drop(tx);
    let mut publisher = connect(url).await;
    let mut sent_at = HashMap::new();
    for ev in &events {
        sent_at.insert(ev.id.to_hex(), Instant::now());
        publisher
            .send(Message::text(format!("[\"EVENT\",{}]", ev.as_json())))
            .await
            .unwrap();
        loop {
            let m = next_json(&mut publisher).await;
            if m[0] == "OK" {
                break;
            }
        }
        // Space the events so each measures an idle relay's fan-out, not a queue.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in readers {
        let _ = r.await;
    }
    let mut lat = Vec::new();
    while let Ok((id, at)) = rx.try_recv() {
        if let Some(t0) = sent_at.get(&id) {
            lat.push(at.duration_since(*t0).as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (pct(&lat, 0.5), pct(&lat, 0.99), lat.len())
}

async fn query_latency(url: &str, rounds: usize) -> (f64, f64, usize) {
    let mut ws = connect(url).await;
    let mut lat = Vec::new();
    let mut count = 0;
    for r in 0..rounds {
        let sid = format!("q{r}");
        let t0 = Instant::now();
        ws.send(Message::text(
            json!(["REQ", sid, {"kinds": [5050], "limit": 500}]).to_string(),
        ))
        .await
        .unwrap();
        count = 0;
        loop {
            let m = next_json(&mut ws).await;
            if m[0] == "EVENT" {
                count += 1;
            } else if m[0] == "EOSE" {
                break;
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        ws.send(Message::text(json!(["CLOSE", sid]).to_string()))
            .await
            .unwrap();
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (pct(&lat, 0.5), pct(&lat, 0.99), count)
}

/// One quiet publisher: an event every 20 ms for `secs`, each timed to its `OK`. Returns the
/// sorted latencies (ms) and how many were refused.
async fn quiet_publisher(url: &str, secs: f64) -> (Vec<f64>, usize) {
    let keys = Keys::generate();
    let mut ws = connect(url).await;
    let mut lat = Vec::new();
    let mut refused = 0;
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed().as_secs_f64() < secs {
        let ev =
            fedai_protocol::JobRequest::text(format!("quiet {i} {}", start.elapsed().as_nanos()))
                .to_event(&keys, None)
                .expect("sign");
        i += 1;
        let t0 = Instant::now();
        ws.send(Message::text(format!("[\"EVENT\",{}]", ev.as_json())))
            .await
            .unwrap();
        loop {
            let m = next_json(&mut ws).await;
            if m[0] == "OK" && m[1] == ev.id.to_hex() {
                if m[2] != true {
                    refused += 1;
                }
                break;
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (lat, refused)
}

/// A flood connection: fresh-key notes, 256 in flight, until `until`. Returns (accepted, refused).
async fn flooder(url: String, events: Vec<Event>, until: Instant) -> (usize, usize) {
    let mut ws = connect(&url).await;
    let (mut next, mut in_flight, mut ok, mut refused) = (0, 0, 0, 0);
    while Instant::now() < until || in_flight > 0 {
        while in_flight < 256 && next < events.len() && Instant::now() < until {
            let frame = format!("[\"EVENT\",{}]", events[next].as_json());
            if ws.send(Message::text(frame)).await.is_err() {
                return (ok, refused);
            }
            next += 1;
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        let m = next_json(&mut ws).await;
        if m[0] == "OK" {
            in_flight -= 1;
            if m[2] == true {
                ok += 1;
            } else {
                refused += 1;
            }
        }
    }
    (ok, refused)
}

async fn flood(a: &Args) {
    let per = 40_000 / a.flood.max(1);
    let pools: Vec<Vec<Event>> = (0..a.flood)
        .map(|c| {
            (0..per)
                .map(|i| {
                    EventBuilder::new(Kind::TextNote, format!("flood {c} {i}"))
                        .finalize(&Keys::generate())
                        .unwrap()
                })
                .collect()
        })
        .collect();
    let (idle, _) = quiet_publisher(&a.url, 3.0).await;
    let until = Instant::now() + Duration::from_secs(a.flood_secs);
    let floods: Vec<_> = pools
        .into_iter()
        .map(|p| tokio::spawn(flooder(a.url.clone(), p, until)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (busy, quiet_refused) = quiet_publisher(&a.url, a.flood_secs as f64 - 1.0).await;
    let (mut ok, mut refused) = (0, 0);
    for f in floods {
        let (o, r) = f.await.unwrap();
        ok += o;
        refused += r;
    }
    let max = busy.last().copied().unwrap_or(f64::NAN);
    println!(
        "| {} | {:.2} / {:.2} | {:.2} / {:.2} / {:.1} ({} events) | {quiet_refused} | {:.0} | {refused} |",
        a.label,
        pct(&idle, 0.5),
        pct(&idle, 0.99),
        pct(&busy, 0.5),
        pct(&busy, 0.99),
        max,
        busy.len(),
        ok as f64 / a.flood_secs as f64,
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    if a.flood > 0 {
        flood(&a).await;
        return;
    }
    let n = a.events;
    let (t1, a1) = throughput(&a.url, n.min(2000), 1, 1, "w1").await;
    let (t32, a32) = throughput(&a.url, n, 32, 1, "w32").await;
    let (t4x32, a4x32) = throughput(&a.url, n, 32, 4, "w4x32").await;
    let (f50, f99, fcount) = fanout(&a.url, a.subscribers, a.fanout_events).await;
    let (q50, q99, qcount) = query_latency(&a.url, 30).await;
    println!("| {} | {:.0} ({a1}) | {:.0} ({a32}) | {:.0} ({a4x32}) | {:.2} / {:.2} ({fcount}) | {:.1} / {:.1} ({qcount}) |",
        a.label, t1, t32, t4x32, f50, f99, q50, q99);
    if a.json {
        println!(
            "{}",
            json!({
                "label": a.label, "publish_eps_w1": t1, "publish_eps_w32": t32, "publish_eps_4x32": t4x32,
                "accepted": [a1, a32, a4x32], "fanout_ms_p50": f50, "fanout_ms_p99": f99, "fanout_deliveries": fcount,
                "query500_ms_p50": q50, "query500_ms_p99": q99, "query_events": qcount,
            })
        );
    }
}
