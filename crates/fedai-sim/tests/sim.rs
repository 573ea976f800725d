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
        "cheating-worker.toml",
        "relay-failure.toml",
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
fn spot_checks_catch_cheaters_and_cut_what_they_take() {
    let s = scenario("cheating-worker.toml", 30_000);
    let rows = run_all(
        &s,
        Some(&parse_sweep("client.spot_check=0,0.05,0.2").unwrap()),
    )
    .unwrap();
    let (none, some, more) = (&rows[0].1, &rows[1].1, &rows[2].1);
    assert!(none.cheated_jobs > 0 && none.detections == 0 && none.spot_checks == 0);
    assert!(some.detections > 0 && more.detections > some.detections);
    assert!(some.detection_jobs_p50 > 0.0);
    assert!(
        some.cheated_jobs * 3 < none.cheated_jobs * 2 && more.cheated_jobs < some.cheated_jobs,
        "{} {} {}",
        none.cheated_jobs,
        some.cheated_jobs,
        more.cheated_jobs
    );
    assert!(more.spot_cost_msat > some.spot_cost_msat);
}

#[test]
fn a_worker_on_two_relays_outlives_one_of_them() {
    let s = scenario("relay-failure.toml", 20_000);
    let rows = run_all(&s, Some(&parse_sweep("relays.per_worker=1,2").unwrap())).unwrap();
    let (one, two) = (&rows[0].1, &rows[1].1);
    assert!(one.lost_answers > 0, "answers in flight die with the relay");
    assert!(one.drop_rate > 0.0);
    assert_eq!((two.lost_answers, two.dropped), (0, 0));
    // A customer on one relay only is cut off with it.
    let rows = run_all(&s, Some(&parse_sweep("relays.per_customer=1,2").unwrap())).unwrap();
    assert!(rows[0].1.dropped_no_worker > rows[1].1.dropped_no_worker);
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
