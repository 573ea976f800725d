//! What one worker publishes: on an idle relay (per hour, from a run of some heartbeats), per 100
//! open requests it declines (a model it does not serve), and per 100 open requests it serves.
//! Every event the worker signs is counted on the relay, by kind, with its bytes.
//!
//! Usage: fedai-publish-count [--idle-secs 180] [--requests 100]
//! Real processes: the release `fedai-relay` and `fedai-worker` binaries, a llama.cpp server
//! with the tiny model, the worker on its default ad cadence (heartbeat 60 s, load bands).

use std::collections::BTreeMap;
use std::time::Duration;

use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::{LocalLlamaServer, LocalModel};
use fedai_tests::{RelayProc, WorkerProc};

fn arg(name: &str, default: u64) -> u64 {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every event the worker publishes, as it arrives on a live subscription (ads are addressable:
/// the relay stores only the newest, so stored events would undercount them).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(u16, u64)>>>;

async fn watch(relay: &str, worker: PublicKey) -> Seen {
    let seen: Seen = Default::default();
    let c = fedai_client::nostr_client();
    c.add_relay(relay).await.unwrap();
    c.connect().and_wait(Duration::from_secs(3)).await;
    let mut notes = c.notifications();
    c.subscribe(Filter::new().author(worker)).await.unwrap();
    let s = seen.clone();
    tokio::spawn(async move {
        let _keep = c;
        let mut ids = std::collections::HashSet::new();
        while let Some(n) = futures_util::StreamExt::next(&mut notes).await {
            if let nostr_sdk::prelude::ClientNotification::Event { event, .. } = n {
                if ids.insert(event.id) {
                    s.lock()
                        .unwrap()
                        .push((event.kind.as_u16(), event.as_json().len() as u64));
                }
            }
        }
    });
    seen
}

/// What arrived since mark `from` (an index into the log): count and bytes by kind.
fn tally(seen: &Seen, from: usize) -> (BTreeMap<u16, (u64, u64)>, usize) {
    let log = seen.lock().unwrap();
    let mut out = BTreeMap::new();
    for (k, b) in &log[from..] {
        let t = out.entry(*k).or_insert((0, 0));
        t.0 += 1;
        t.1 += b;
    }
    (out, log.len())
}

fn show(label: &str, t: &BTreeMap<u16, (u64, u64)>) {
    let (n, b): (u64, u64) = t.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    let kinds: Vec<String> = t.iter().map(|(k, (n, _))| format!("{k}×{n}")).collect();
    println!("| {label} | {n} | {b} | {} |", kinds.join(", "));
}

#[tokio::main]
async fn main() {
    let idle = arg("--idle-secs", 180);
    let requests = arg("--requests", 100);
    let llama = LocalLlamaServer::start_with_threads(LocalModel::Tiny, "tiny", 4, 1)
        .await
        .expect("llama.cpp (workers/runner/setup.sh)");
    let relay = RelayProc::start(&["--memory"]);
    let keys = Keys::generate();
    let sk = keys.secret_key().to_secret_hex();
    let seen = watch(&relay.url, keys.public_key()).await;
    let _w = WorkerProc::start(&sk, &relay.url, &llama.url, &["--heartbeat-secs", "60"]);
    let sender = fedai_client::nostr_client();
    sender.add_relay(relay.url.as_str()).await.unwrap();
    sender.connect().and_wait(Duration::from_secs(3)).await;
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!("| phase | events | bytes | by kind |");
    println!("|---|---|---|---|");

    // Idle: the worker's start-up ad, then heartbeats only.
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let (t, mark) = tally(&seen, 0);
    show(&format!("idle, {idle} s (start-up ad included)"), &t);
    let n: u64 = t.values().map(|v| v.0).sum();
    println!(
        "| idle, per hour (×{:.1}) | {:.0} | | |",
        3600.0 / idle as f64,
        n as f64 * 3600.0 / idle as f64
    );

    // Open requests from generic clients for a model the worker does not serve: declined.
    let publish_open = |model: &'static str| {
        let sender = &sender;
        async move {
            for i in 0..requests {
                let k = Keys::generate();
                let ev = EventBuilder::new(Kind::from_u16(5050), "")
                    .tags([
                        Tag::parse(["i", &format!("open question {i}"), "text"]).unwrap(),
                        Tag::parse(["param", "model", model]).unwrap(),
                        Tag::parse(["param", "max_tokens", "8"]).unwrap(),
                    ])
                    .finalize(&k)
                    .unwrap();
                sender.send_event(&ev).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    publish_open("not-served-here").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (t, mark) = tally(&seen, mark);
    show(&format!("{requests} open requests, declined"), &t);

    // Open requests it serves (free worker): each is run and answered.
    tokio::time::sleep(Duration::from_secs(1)).await;
    publish_open("tiny").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (t, _) = tally(&seen, mark);
    show(&format!("{requests} open requests, served"), &t);
}
