//! `cargo bench -p fedai-sim`: wall time of one million simulated jobs (default market:
//! 50 workers, Poisson arrivals at 15/s, balanced top-3 policy, failover on).

use std::time::Instant;

fn main() {
    for workers in [50u32, 200] {
        let mut s = fedai_sim::Scenario {
            jobs: 1_000_000,
            ..Default::default()
        };
        s.workers[0].count = workers;
        if let fedai_sim::scenario::Arrivals::Poisson { rate_per_s } = &mut s.workload.arrivals {
            *rate_per_s = 15.0 * workers as f64 / 50.0;
        }
        let t = Instant::now();
        let r = fedai_sim::run(&s);
        let wall = t.elapsed().as_secs_f64();
        println!(
            "{} jobs, {workers} workers: {wall:.2} s wall, {:.0} jobs/s simulated per wall second ({:.0} s of market time; p50 {:.0} ms, drop {:.2} %, utilisation {:.1} %)",
            r.jobs,
            r.jobs as f64 / wall,
            r.simulated_s,
            r.latency_p50_ms,
            r.drop_rate * 100.0,
            r.mean_utilisation() * 100.0
        );
    }
}
