//! Scheduler properties: filters are hard, strategies order as documented, cooldowns expire,
//! and the pick is deterministic given the seed.

use fedai_protocol::Price;
use fedai_scheduler::{
    select, Candidate, Cooldown, Failure, JobSpec, Policy, Rejection, Rng, Strategy, WorkerStats,
};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

fn price(base: u64, per_1k: u64) -> Price {
    Price {
        model: "m".into(),
        base_msat: base,
        per_1k_input_msat: per_1k,
        per_1k_output_msat: per_1k,
    }
}

fn job() -> JobSpec {
    JobSpec {
        input_tokens: 100,
        output_tokens: 100,
        ..JobSpec::default()
    }
}

#[derive(Debug, Clone)]
struct Gen {
    served: bool,
    base: u64,
    per_1k: u64,
    ctx: u32,
    max: u32,
    busy: u32,
    healthy: bool,
    enc: bool,
    excluded: bool,
    stats: Option<WorkerStats>,
    tps: Option<f64>,
}

fn gen() -> impl proptest::strategy::Strategy<Value = Gen> {
    (
        (any::<bool>(), 0u64..10_000, 0u64..10_000, 0u32..500),
        (
            1u32..8,
            0u32..9,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        proptest::option::of((
            0u32..20,
            0u32..20,
            0u64..2_000,
            1.0f64..5_000.0,
            1.0f64..500.0,
        )),
        proptest::option::of(1.0f64..500.0),
    )
        .prop_map(
            |((served, base, per_1k, ctx), (max, busy, healthy, enc, excluded), stats, tps)| Gen {
                served,
                base,
                per_1k,
                ctx,
                max,
                busy,
                healthy,
                enc,
                excluded,
                stats: stats.map(|(verified, penalty, cool, ft, t)| WorkerStats {
                    verified,
                    penalty,
                    cooldown_until_ms: cool,
                    first_token_ms: Some(ft),
                    tokens_per_s: Some(t),
                    ..WorkerStats::default()
                }),
                tps,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A filtered worker is never chosen (a full one only when all are full); every candidate is either ranked or rejected (once);
    /// the pick satisfies every hard constraint; the same seed gives the same decision.
    #[test]
    fn filtered_workers_are_never_chosen(
        gens in proptest::collection::vec(gen(), 0..40),
        cap in proptest::option::of(0u64..20_000),
        enc in any::<bool>(),
        now in 0u64..2_000,
        seed in any::<u64>(),
        strategy in prop_oneof![Just(Strategy::Cheapest), Just(Strategy::Fastest), Just(Strategy::Balanced)],
    ) {
        let prices: Vec<Price> = gens.iter().map(|g| price(g.base, g.per_1k)).collect();
        let cands: Vec<Candidate> = gens.iter().zip(&prices).map(|(g, p)| Candidate {
            price: g.served.then_some(p),
            quote_msat: None,
            context_length: g.ctx,
            max_concurrent: g.max,
            in_flight: g.busy,
            healthy: g.healthy,
            encryption: g.enc,
            excluded: g.excluded,
            stats: g.stats.as_ref(),
            speed_hint_tps: g.tps,
        }).collect();
        let spec = JobSpec { max_price_msat: cap, needs_encryption: enc, ..job() };
        let policy = Policy::new(strategy);
        let d = select(&cands, &spec, &policy, now, &mut Rng::new(seed));
        let d2 = select(&cands, &spec, &policy, now, &mut Rng::new(seed));
        prop_assert_eq!(&d, &d2);
        // Without the explanation list (the hot path), the same decision and the same count.
        let mut quiet = fedai_scheduler::Decision::default();
        fedai_scheduler::select_into(&mut quiet, &cands, &spec, &policy, now, &mut Rng::new(seed));
        prop_assert!(quiet.rejected.is_empty());
        prop_assert_eq!(quiet.rejected_count, d.rejected.len());
        prop_assert_eq!(d.rejected_count, d.rejected.len());
        prop_assert_eq!((&quiet.ranked, &quiet.shortlist, quiet.chosen), (&d.ranked, &d.shortlist, d.chosen));
        let mut seen = vec![0u8; cands.len()];
        for s in &d.ranked { seen[s.index] += 1; }
        for (i, _) in &d.rejected { seen[*i] += 1; }
        prop_assert!(seen.iter().all(|n| *n == 1));
        let best: Vec<_> = d.best().collect();
        prop_assert!(best.windows(2).all(|w| w[0].score <= w[1].score));
        prop_assert_eq!(best.len(), d.ranked.len().min(8));
        // Nothing outside the shortlist beats its worst.
        if let Some(worst) = best.last() {
            prop_assert!(d.ranked.iter().all(|s| d.shortlist.iter().any(|k| d.ranked[*k].index == s.index) || s.score >= worst.score));
        }
        prop_assert!(d.ranked.windows(2).all(|w| w[0].index < w[1].index));
        match d.chosen_index() {
            None => prop_assert!(d.ranked.is_empty()),
            Some(i) => {
                let c = &cands[i];
                prop_assert!(!d.rejected.iter().any(|(r, _)| *r == i));
                prop_assert!(c.price.is_some() && c.healthy && !c.excluded);
                // A full worker is chosen only when every worker that passes the other
                // filters is full too (fullness is then a cost, not an exclusion).
                let full = |k: usize| cands[k].in_flight >= cands[k].max_concurrent;
                prop_assert!(!full(i) || d.ranked.iter().all(|s| full(s.index)));
                prop_assert!(!enc || c.encryption);
                prop_assert!(c.context_length == 0 || c.context_length as u64 >= 200);
                let p = c.price.unwrap().cost_msat(100, 100);
                prop_assert!(cap.is_none_or(|m| p <= m));
                prop_assert!(c.stats.is_none_or(|s| !s.cooling(now) && s.trust() >= policy.min_trust));
                prop_assert!(d.chosen().unwrap().score <= best[0].score + policy.margin);
                let rank = d.shortlist.iter().position(|k| Some(*k) == d.chosen).unwrap();
                prop_assert!(rank < policy.top_n);
            }
        }
    }

    /// Under `cheapest`, of two workers equal in all but price the cheaper always wins.
    #[test]
    fn a_cheaper_equal_worker_wins_under_cheapest(
        base in 0u64..100_000, extra in 1u64..100_000, first in any::<bool>(), seed in any::<u64>(),
    ) {
        // A real difference: at least the margin in log-price terms.
        let (cheap, dear) = (price(base, 10), price(base + extra.max(base / 5 + 1), 10));
        let mut c = vec![Candidate::new(Some(&cheap), 0, 4, 1), Candidate::new(Some(&dear), 0, 4, 1)];
        if !first { c.reverse(); }
        let d = select(&c, &job(), &Policy::new(Strategy::Cheapest), 0, &mut Rng::new(seed));
        prop_assert_eq!(d.chosen_index(), Some(if first { 0 } else { 1 }));
    }
}

#[test]
fn fastest_prefers_the_measured_fast_worker_and_balanced_weighs_price() {
    let (cheap, dear) = (price(0, 100), price(0, 1_000));
    let slow = WorkerStats {
        verified: 5,
        first_token_ms: Some(2_000.0),
        tokens_per_s: Some(5.0),
        ..Default::default()
    };
    let fast = WorkerStats {
        verified: 5,
        first_token_ms: Some(100.0),
        tokens_per_s: Some(100.0),
        ..Default::default()
    };
    let mut a = Candidate::new(Some(&cheap), 0, 4, 0);
    a.stats = Some(&slow);
    let mut b = Candidate::new(Some(&dear), 0, 4, 0);
    b.stats = Some(&fast);
    let c = [a, b];
    let pick = |s| select(&c, &job(), &Policy::new(s), 0, &mut Rng::new(3)).chosen_index();
    assert_eq!(pick(Strategy::Fastest), Some(1));
    assert_eq!(pick(Strategy::Cheapest), Some(0));
    // Balanced: 10× price vs ~10× latency; latency ratio ln(22000/1100) ≈ 3.0 > ln(10) ≈ 2.3.
    assert_eq!(pick(Strategy::Balanced), Some(1));
}

#[test]
fn cooldown_expires_and_the_worker_comes_back() {
    let p = price(0, 10);
    let policy = Policy::new(Strategy::Balanced);
    let mut s = WorkerStats::default();
    s.record_failure(Failure::Error, 1_000, &policy.cooldown);
    let until = s.cooldown_until_ms;
    let mut c = Candidate::new(Some(&p), 0, 1, 0);
    c.stats = Some(&s);
    let d = select(&[c], &job(), &policy, until - 1, &mut Rng::new(0));
    assert_eq!(d.chosen, None);
    assert_eq!(
        d.rejected,
        vec![(0, Rejection::CoolingDown { remaining_ms: 1 })]
    );
    let d = select(&[c], &job(), &policy, until, &mut Rng::new(0));
    assert_eq!(d.chosen_index(), Some(0));
}

#[test]
fn repeated_failures_push_trust_under_the_floor() {
    let p = price(0, 10);
    let policy = Policy::new(Strategy::Balanced);
    let mut s = WorkerStats::default();
    for _ in 0..2 {
        s.record_failure(Failure::Invalid, 0, &Cooldown::default());
    }
    let mut c = Candidate::new(Some(&p), 0, 1, 0);
    c.stats = Some(&s);
    let d = select(&[c], &job(), &policy, u64::MAX / 2, &mut Rng::new(0));
    assert!(
        matches!(d.rejected[0].1, Rejection::LowTrust { .. }),
        "{d:?}"
    );
}

#[test]
fn top_n_spreads_equal_workers_and_greedy_does_not() {
    let p = price(100, 10);
    let c: Vec<_> = (0..10).map(|_| Candidate::new(Some(&p), 0, 4, 0)).collect();
    let mut rng = Rng::new(42);
    let mut spread = Policy::new(Strategy::Balanced);
    spread.top_n = 5;
    let mut hits = [0u32; 10];
    for _ in 0..1_000 {
        hits[select(&c, &job(), &spread, 0, &mut rng)
            .chosen_index()
            .unwrap()] += 1;
    }
    assert_eq!(hits.iter().filter(|h| **h > 100).count(), 5, "{hits:?}");
    let mut greedy = spread.clone();
    greedy.top_n = 1;
    for _ in 0..100 {
        assert_eq!(
            select(&c, &job(), &greedy, 0, &mut rng).chosen_index(),
            Some(0)
        );
    }
}

#[test]
fn a_quote_overrides_the_advertised_price_and_the_cap_applies_to_it() {
    let p = price(0, 10);
    let mut a = Candidate::new(Some(&p), 0, 1, 0);
    a.quote_msat = Some(50_000);
    let b = Candidate::new(Some(&p), 0, 1, 0);
    let spec = JobSpec {
        max_price_msat: Some(10_000),
        ..job()
    };
    let d = select(
        &[a, b],
        &spec,
        &Policy::new(Strategy::Cheapest),
        0,
        &mut Rng::new(0),
    );
    assert_eq!(d.chosen_index(), Some(1));
    assert_eq!(
        d.rejected,
        vec![(
            0,
            Rejection::OverPrice {
                price_msat: 50_000,
                max_msat: 10_000
            }
        )]
    );
}

#[test]
fn thousands_of_candidates_give_the_true_best_in_order() {
    let prices: Vec<Price> = (0..5_000).map(|i| price(i * 7 % 1_000, 10)).collect();
    let c: Vec<_> = prices
        .iter()
        .map(|p| Candidate::new(Some(p), 0, 4, 0))
        .collect();
    let mut d = fedai_scheduler::Decision::default();
    for seed in 0..3 {
        fedai_scheduler::select_into(
            &mut d,
            &c,
            &job(),
            &Policy::new(Strategy::Cheapest),
            0,
            &mut Rng::new(seed),
        );
        assert_eq!(d.ranked.len(), 5_000);
        let mut all: Vec<_> = d.ranked.iter().map(|s| (s.price_msat, s.index)).collect();
        all.sort();
        let best: Vec<_> = d.best().map(|s| (s.price_msat, s.index)).collect();
        assert_eq!(best, all[..8].to_vec());
        assert_eq!(
            d.chosen().unwrap().price_msat,
            prices[0].cost_msat(100, 100)
        );
    }
}

#[test]
fn a_newcomer_is_assumed_as_fast_as_the_measured_average_so_it_gets_tried() {
    let p = price(100, 10);
    let known = WorkerStats {
        verified: 1,
        first_token_ms: Some(50.0),
        tokens_per_s: Some(200.0),
        ..Default::default()
    };
    let mut a = Candidate::new(Some(&p), 0, 4, 0);
    a.stats = Some(&known);
    let b = Candidate::new(Some(&p), 0, 4, 0);
    let d = select(
        &[a, b],
        &job(),
        &Policy::new(Strategy::Fastest),
        0,
        &mut Rng::new(1),
    );
    let (sa, sb) = (d.ranked[0], d.ranked[1]);
    assert_eq!(
        sa.expected_ms, sb.expected_ms,
        "unmeasured takes the measured mean"
    );
    let mut rng = Rng::new(5);
    let picks: std::collections::HashSet<_> = (0..50)
        .map(|_| {
            select(
                &[a, b],
                &job(),
                &Policy::new(Strategy::Fastest),
                0,
                &mut rng,
            )
            .chosen_index()
            .unwrap()
        })
        .collect();
    assert_eq!(picks.len(), 2, "both get jobs");
}

/// Everyone full (ads a heartbeat old during a burst): the job still goes somewhere — the
/// least loaded — rather than failing with "no worker"; a free worker, when there is one, wins.
#[test]
fn when_everyone_is_full_fullness_is_a_cost_not_an_exclusion() {
    let p = price(0, 0);
    let cand = |in_flight: u32| Candidate {
        price: Some(&p),
        quote_msat: None,
        context_length: 0,
        max_concurrent: 4,
        in_flight,
        healthy: true,
        encryption: true,
        excluded: false,
        stats: None,
        speed_hint_tps: None,
    };
    let mut policy = Policy::new(Strategy::Balanced);
    policy.top_n = 1;
    let all_full = [cand(6), cand(4), cand(5)];
    let d = select(&all_full, &job(), &policy, 0, &mut Rng::new(1));
    assert_eq!(d.chosen_index(), Some(1), "{d:?}");
    assert!(d.rejected.is_empty());
    let one_free = [cand(6), cand(3), cand(4)];
    let d = select(&one_free, &job(), &policy, 0, &mut Rng::new(1));
    assert_eq!(d.chosen_index(), Some(1));
    assert_eq!(d.rejected.len(), 2);
    assert!(d
        .rejected
        .iter()
        .all(|(_, r)| matches!(r, Rejection::NoCapacity { .. })));
}
