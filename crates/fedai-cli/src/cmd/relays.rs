//! `fedai relays`: the relays this customer knows — the ones it was given, the ones live
//! workers name (their ads' `relays` and their NIP-65 relay lists) and the ones relay monitors
//! announce (NIP-66) — and how each answers now: the time to open a WebSocket and the round
//! trip of one query to its end of stored events, or why it does not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;

use crate::config::Ctx;

/// At most this many relays are probed (ads can name any number).
const MAX_RELAYS: usize = 32;

/// List known relays (yours and those live workers name) with their latency.
#[derive(clap::Args)]
pub struct Relays {
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for each relay.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

impl Relays {
    /// Discover, probe and print.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(self.timeout.max(1));
        // url -> (configured?, workers naming it)
        let mut known: BTreeMap<String, (bool, usize)> = BTreeMap::new();
        for r in &ctx.relays {
            known.entry(normal(r)).or_default().0 = true;
        }
        let client = FedaiClient::connect(&ctx.relays, Keys::generate()).await?;
        let ads = client.workers().await.unwrap_or_default();
        // Where each live worker reads: its ad's `relays` and its NIP-65 relay list (kind
        // 10002), once per worker.
        let mut per_worker: BTreeMap<PublicKey, std::collections::BTreeSet<String>> =
            BTreeMap::new();
        for ad in &ads {
            let set = per_worker.entry(ad.worker).or_default();
            set.extend(ad.ad.relays.iter().take(8).map(|r| r.to_owned()));
        }
        let lists = if per_worker.is_empty() {
            Vec::new()
        } else {
            let f = Filter::new()
                .kind(Kind::RelayList)
                .authors(per_worker.keys().copied())
                .limit(per_worker.len().min(500));
            client.fetch(f, timeout).await.unwrap_or_default()
        };
        for ev in lists.iter().filter(|e| e.verify().is_ok()) {
            if let Some(set) = per_worker.get_mut(&ev.pubkey) {
                set.extend(relay_tags(ev).take(8));
            }
        }
        // Relay monitors (NIP-66, kind 30166: one event per relay, its URL in `d`): relays
        // the network knows of, probed here like the others.
        let monitored = client
            .fetch(
                Filter::new().kind(Kind::from_u16(30166)).limit(100),
                timeout,
            )
            .await
            .unwrap_or_default();
        client.shutdown().await;
        for set in per_worker.values() {
            for r in set {
                if RelayUrl::parse(r).is_ok() {
                    known.entry(normal(r)).or_default().1 += 1;
                }
            }
        }
        for ev in monitored.iter().filter(|e| e.verify().is_ok()) {
            if let Some(d) = ev.tags.identifier() {
                if RelayUrl::parse(&d).is_ok() && known.len() < MAX_RELAYS * 4 {
                    known.entry(normal(&d)).or_default();
                }
            }
        }
        // Yours first, then by how many workers read there.
        let mut list: Vec<(String, (bool, usize))> = known.into_iter().collect();
        list.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(b.1 .1.cmp(&a.1 .1)));
        list.truncate(MAX_RELAYS);
        // All at once: the slowest relay sets the time, not their sum.
        let mut set = tokio::task::JoinSet::new();
        for (i, (url, _)) in list.iter().enumerate() {
            let url = url.clone();
            set.spawn(async move { (i, probe(url, timeout).await) });
        }
        let mut probes = vec![Err("not probed".to_owned()); list.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((i, p)) = r {
                probes[i] = p;
            }
        }
        if self.json {
            let v: Vec<serde_json::Value> = list
                .iter()
                .zip(&probes)
                .map(|((url, (mine, workers)), p)| {
                    serde_json::json!({
                        "url": url,
                        "configured": mine,
                        "workers": workers,
                        "connect_ms": p.as_ref().ok().map(|p| p.0),
                        "query_ms": p.as_ref().ok().map(|p| p.1),
                        "error": p.as_ref().err(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!(
            "{:<40} {:>7} {:>10} {:>9}  from",
            "relay", "workers", "connect", "query"
        );
        for ((url, (mine, workers)), p) in list.iter().zip(&probes) {
            let from = if *mine { "yours" } else { "workers' ads" };
            match p {
                Ok((c, q)) => println!(
                    "{:<40} {:>7} {:>8.1}ms {:>7.1}ms  {from}",
                    url, workers, c, q
                ),
                Err(e) => println!("{url:<40} {workers:>7} {:>20}  {from}: {e}", "unreachable"),
            }
        }
        Ok(())
    }
}

/// One spelling per relay (`wss://x` and `wss://x/` are the same).
fn normal(url: &str) -> String {
    RelayUrl::parse(url).map_or_else(|_| url.to_owned(), |u| u.to_string())
}

/// (ms to connect, ms for one REQ to EOSE), or why the relay cannot be used.
async fn probe(url: String, timeout: Duration) -> Result<(f64, f64), String> {
    let relay = RelayUrl::parse(&url).map_err(|e| e.to_string())?;
    let nc = fedai_client::nostr_client();
    nc.add_relay(&relay).await.map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    if nc.try_connect_relay(&relay, timeout).await.is_err() {
        nc.shutdown().await;
        return Err(fedai_client::unreachable_reason(&relay).await);
    }
    let connect = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let r = nc
        .fetch_events(
            Filter::new()
                .kind(Kind::from_u16(fedai_protocol::kinds::CAPABILITY_AD))
                .limit(1),
        )
        .timeout(timeout)
        .await;
    let query = t1.elapsed().as_secs_f64() * 1e3;
    nc.shutdown().await;
    r.map(|_| (connect, query)).map_err(|e| e.to_string())
}

/// The relay URLs of a NIP-65 relay list (`r` tags).
fn relay_tags(ev: &Event) -> impl Iterator<Item = String> + '_ {
    ev.tags
        .iter()
        .filter(|t| t.as_slice().first().is_some_and(|k| k == "r"))
        .filter_map(|t| t.as_slice().get(1).cloned())
}
