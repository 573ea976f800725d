//! `cargo bench -p fedai-relay --bench hub`: the cost of fanning one event out while the relay
//! holds many live subscriptions that do not want it (other kinds, other authors), with the
//! filter index, side by side with matching every filter (what the hub did before the index).

use std::sync::Arc;
use std::time::Instant;

use fedai_relay::hub::{Hub, Limits};
use fedai_relay::metrics::Metrics;
use nostr_sdk::prelude::*;

fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn main() {
    let keys = Keys::generate();
    let event = EventBuilder::new(Kind::from_u16(5050), "job")
        .tag(Tag::public_key(Keys::generate().public_key()))
        .tag(Tag::hashtag("fedai"))
        .finalize(&keys)
        .unwrap();
    println!("| live filters (none match) | indexed publish p50 / p99 µs | matching every filter p50 / p99 µs |");
    println!("|---|---|---|");
    for n in [0usize, 1_000, 10_000, 50_000] {
        let limits = Limits {
            total_filters: n + 10,
            ..Limits::default()
        };
        let hub = Hub::new(limits, Arc::new(Metrics::default()));
        let mut regs = Vec::new();
        let mut filters = Vec::new();
        for i in 0..n {
            // Half by kind, half by author: the two shapes clients use most.
            let f = if i % 2 == 0 {
                Filter::new().kind(Kind::from_u16(9_000 + (i % 500) as u16))
            } else {
                Filter::new().author(Keys::generate().public_key())
            };
            if i % 100 == 0 {
                regs.push(hub.register());
            }
            regs.last()
                .unwrap()
                .subscribe(SubscriptionId::new(format!("s{i}")), vec![f.clone()], 0)
                .unwrap();
            filters.push(f);
        }
        let runs = 2_000;
        let mut indexed = Vec::with_capacity(runs);
        let mut scan = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            hub.publish(&event);
            indexed.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let hits = filters
                .iter()
                .filter(|f| f.match_event(&event, MatchEventOptions::new()))
                .count();
            scan.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(hits);
        }
        let (i50, i99) = p50_p99(indexed);
        let (s50, s99) = p50_p99(scan);
        println!("| {n} | {i50:.2} / {i99:.2} | {s50:.1} / {s99:.1} |");
    }
}
