//! `cargo bench -p fedai-scheduler`: time of one selection among N ads (~79 % filtered out by
//! price or capacity, half with observations), median and p99 over many runs: explained (every
//! rejection listed), quiet into a fresh decision, and quiet into a reused one.

use std::time::Instant;

use fedai_protocol::Price;
use fedai_scheduler::{
    select, select_into, Candidate, Decision, JobSpec, Policy, Rng, Strategy, WorkerStats,
};

fn main() {
    // What one selection reads: every candidate, its price and (for half) its statistics.
    let (c, p, w) = (
        std::mem::size_of::<Candidate>(),
        std::mem::size_of::<Price>(),
        std::mem::size_of::<WorkerStats>(),
    );
    println!(
        "bytes per ad read: candidate {c} + price {p} + stats {w} (half of them) ≈ {} per 10k ads",
        (c + p + w / 2) * 10_000
    );
    for n in [100usize, 1_000, 10_000] {
        let mut rng = Rng::new(1);
        let prices: Vec<Price> = (0..n)
            .map(|_| Price {
                model: "m".into(),
                base_msat: rng.below(5_000) as u64,
                per_1k_input_msat: rng.below(2_000) as u64,
                per_1k_output_msat: rng.below(4_000) as u64,
            })
            .collect();
        let stats: Vec<WorkerStats> = (0..n)
            .map(|_| WorkerStats {
                verified: rng.below(50) as u32,
                penalty: rng.below(5) as u32,
                first_token_ms: Some(50.0 + rng.next_f64() * 1_000.0),
                tokens_per_s: Some(5.0 + rng.next_f64() * 200.0),
                ..Default::default()
            })
            .collect();
        let cands: Vec<Candidate> = (0..n)
            .map(|i| {
                let mut c = Candidate::new(Some(&prices[i]), 8192, 4, rng.below(5) as u32);
                if i % 2 == 0 {
                    c.stats = Some(&stats[i]);
                }
                c
            })
            .collect();
        let job = JobSpec {
            input_tokens: 300,
            output_tokens: 200,
            max_price_msat: Some(2_000),
            needs_encryption: false,
        };
        for strategy in [Strategy::Balanced, Strategy::Cheapest] {
            let policy = Policy::new(strategy);
            let runs = (20_000_000 / n).clamp(2_000, 20_000);
            // `select` allocates its Decision and lists every rejection (`--explain`); a fresh
            // quiet Decision is what a client's job pays; `select_into` reuses one (the
            // simulator's loop). Interleaved, so drifts in the machine's load hit all three.
            let (mut explained, mut fresh, mut reused) = (
                Vec::with_capacity(runs),
                Vec::with_capacity(runs),
                Vec::with_capacity(runs),
            );
            let mut d = Decision::default();
            for _ in 0..runs {
                let t = Instant::now();
                let x = select(&cands, &job, &policy, 0, &mut rng);
                explained.push(t.elapsed().as_nanos() as f64 / 1_000.0);
                std::hint::black_box(x);
                let t = Instant::now();
                let mut x = Decision::default();
                select_into(&mut x, &cands, &job, &policy, 0, &mut rng);
                fresh.push(t.elapsed().as_nanos() as f64 / 1_000.0);
                std::hint::black_box(x);
                let t = Instant::now();
                select_into(&mut d, &cands, &job, &policy, 0, &mut rng);
                reused.push(t.elapsed().as_nanos() as f64 / 1_000.0);
                std::hint::black_box(&d);
            }
            let pct = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                format!("{:>6.1} / {:>6.1}", v[runs / 2], v[runs * 99 / 100])
            };
            println!(
                "select among {n:>6} ads, {:>5} eligible ({strategy:?}), p50 / p99 µs: explained {} | fresh {} | reused {}  ({runs} runs)",
                d.ranked.len(),
                pct(&mut explained),
                pct(&mut fresh),
                pct(&mut reused),
            );
        }
    }
}
