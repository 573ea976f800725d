//! Simulator behaviour: reproducible, conserves jobs, and answers its scenarios' questions in
//! the direction the mechanisms imply.

use fedai_sim::{parse_sweep, run, run_all, Scenario};

fn scenario(file: &str, jobs: u64) -> Scenario {
    let path = format!("{}/scenarios/{file}", env!("CARGO_MANIFEST_DIR"));
    let mut s = Scenario::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap();
    s.jobs = jobs;
    s
}

#[test]
fn same_seed_same_report_and_another_seed_another() {
    let s = Scenario {
        jobs: 3_000,
        ..Default::default()
    };
    let a = serde_json::to_string(&run(&s)).unwrap();
    let b = serde_json::to_string(&run(&s)).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&run(&Scenario { seed: 2, ..s })).unwrap();
    assert_ne!(a, c);
}

#[test]
fn every_job_is_answered_or_dropped_exactly_once() {
    for file in [
        "crash-wave.toml",
        "supply-shortage.toml",
        "payment-modes.toml",
    ] {
        for (label, r) in run_all(&scenario(file, 3_000), None).unwrap() {
            assert_eq!(r.jobs, 3_000, "{file} {label}");
            assert_eq!(r.completed + r.dropped, r.jobs, "{file} {label}");
            let by_worker: u64 = r.workers.iter().map(|w| w.completed).sum();
            assert_eq!(by_worker, r.completed, "{file} {label}");
            assert!(r
                .workers
                .iter()
                .all(|w| (0.0..=1.0).contains(&w.utilisation)));
            assert!(r.latency_p50_ms <= r.latency_p95_ms && r.latency_p95_ms <= r.latency_p99_ms);
        }
    }
}

#[test]
fn shipped_scenarios_parse_and_run_every_variant() {
    let dir = format!("{}/scenarios", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        let s = scenario(&name, 500);
        assert!(!s.question.is_empty(), "{name} states its question");
        let rows = run_all(&s, None).unwrap();
        assert!(rows.iter().all(|(_, r)| r.completed > 0), "{name}");
        n += 1;
    }
    assert!(n >= 5);
}

#[test]
fn failover_saves_jobs_in_a_crash_wave() {
    let s = scenario("crash-wave.toml", 20_000);
    let rows = run_all(&s, Some(&parse_sweep("client.max_attempts=1,3").unwrap())).unwrap();
    let (one, three) = (&rows[0].1, &rows[1].1);
    assert!(one.timeouts > 0, "crashed workers' jobs time out");
    // (Failovers also count moves off a full worker, which both variants make alike: the
    // saved jobs are the measure.)
    assert!(three.completed > one.completed);
    assert!(
        three.drop_rate < one.drop_rate / 2.0,
        "{} vs {}",
        three.drop_rate,
        one.drop_rate
    );
}

#[test]
fn pay_before_costs_latency_and_pay_after_costs_workers() {
    let rows = run_all(&scenario("payment-modes.toml", 5_000), None).unwrap();
    let get = |m: &str| &rows.iter().find(|(l, _)| l.ends_with(m)).unwrap().1;
    let (before, after, free) = (get("before"), get("after"), get("free"));
    assert!(before.latency_p50_ms > after.latency_p50_ms + 200.0);
    assert!(before.workers.iter().all(|w| w.unpaid_msat == 0));
    assert!(after.workers.iter().map(|w| w.unpaid_msat).sum::<u64>() > 0);
    assert_eq!(free.cost_per_request_msat, 0.0);
    assert!(before.cost_per_request_msat > 0.0);
}

#[test]
fn cheapest_pays_less_and_fastest_waits_less() {
    let rows = run_all(&scenario("price-sensitivity.toml", 5_000), None).unwrap();
    let (cheap, fast) = (&rows[0].1, &rows[2].1);
    assert!(cheap.cost_per_request_msat < fast.cost_per_request_msat);
    assert!(fast.latency_p50_ms < cheap.latency_p50_ms);
}

#[test]
fn bad_scenarios_are_refused_with_a_reason() {
    let e = Scenario::from_toml("jobs = 10\nwokers = []").unwrap_err();
    assert!(e.to_string().contains("wokers"), "{e}");
    let e = Scenario::from_toml("[[workers]]\ncount = 0").unwrap_err();
    assert!(e.to_string().contains("no workers"), "{e}");
    let s = Scenario::default();
    let e = s
        .variants(Some(&parse_sweep("client.nope.x=1,2").unwrap()))
        .unwrap_err();
    assert!(e.to_string().contains("client.nope.x"), "{e}");
    let e = s
        .variants(Some(&parse_sweep("client.top_n=\"x\"").unwrap()))
        .unwrap_err();
    assert!(e.to_string().contains("invalid"), "{e}");
}
