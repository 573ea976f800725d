//! Simulation results: JSON (serde) and a Markdown summary.

use serde::{Deserialize, Serialize};

/// One worker's share of the market.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Index in the scenario's worker list.
    pub id: u32,
    /// Its group's name.
    pub group: String,
    /// Jobs delivered.
    pub completed: u64,
    /// Busy slot-time over slot-time alive.
    pub utilisation: f64,
    /// Paid to it, msat.
    pub revenue_msat: u64,
    /// Delivered but never paid (pay-after), msat.
    pub unpaid_msat: u64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Jobs that arrived.
    pub jobs: u64,
    /// Jobs answered.
    pub completed: u64,
    /// Jobs never answered.
    pub dropped: u64,
    /// …because no worker passed the filters.
    pub dropped_no_worker: u64,
    /// …because every attempt failed.
    pub dropped_after_failover: u64,
    /// `dropped / jobs`.
    pub drop_rate: f64,
    /// Attempts after the first.
    pub failovers: u64,
    /// Attempts refused for capacity.
    pub refusals_busy: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Attempts answered with `error`.
    pub errors: u64,
    /// Arrival to result, ms.
    pub latency_p50_ms: f64,
    /// Arrival to result, ms.
    pub latency_p95_ms: f64,
    /// Arrival to result, ms.
    pub latency_p99_ms: f64,
    /// Mean paid per answered job, msat.
    pub cost_per_request_msat: f64,
    /// Virtual time simulated, s.
    pub simulated_s: f64,
    /// Per worker.
    pub workers: Vec<WorkerReport>,
    /// Answers lost because every relay of their worker was down.
    pub lost_answers: u64,
    /// Jobs answered (and paid) by workers serving another model than advertised.
    pub cheated_jobs: u64,
    /// What customers paid them, msat.
    pub cheated_msat: u64,
    /// Spot checks run.
    pub spot_checks: u64,
    /// What the referees' answers cost, msat.
    pub spot_cost_msat: u64,
    /// (customer, cheater) pairs in the market, and how many of them were caught.
    pub cheater_pairs: u64,
    /// See `cheater_pairs`.
    pub detections: u64,
    /// A customer's answered jobs until it caught a cheater: median and 90th percentile
    /// (over the pairs caught).
    pub detection_jobs_p50: f64,
    /// See `detection_jobs_p50`.
    pub detection_jobs_p90: f64,
    /// Honest workers flagged by a spot check.
    pub false_accusations: u64,
}

impl Report {
    /// Mean utilisation over workers.
    pub fn mean_utilisation(&self) -> f64 {
        if self.workers.is_empty() {
            return 0.0;
        }
        self.workers.iter().map(|w| w.utilisation).sum::<f64>() / self.workers.len() as f64
    }

    /// Share of answered jobs taken by the busiest worker.
    pub fn top_worker_share(&self) -> f64 {
        let max = self.workers.iter().map(|w| w.completed).max().unwrap_or(0);
        if self.completed == 0 {
            0.0
        } else {
            max as f64 / self.completed as f64
        }
    }

    /// A Markdown summary.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "## {} (seed {})\n\n| metric | value |\n|---|---|\n",
            self.scenario, self.seed
        );
        let rows = [
            ("jobs", self.jobs.to_string()),
            ("completed", self.completed.to_string()),
            ("drop rate", format!("{:.2} %", self.drop_rate * 100.0)),
            ("failovers", self.failovers.to_string()),
            ("refused (busy)", self.refusals_busy.to_string()),
            ("timeouts", self.timeouts.to_string()),
            ("errors", self.errors.to_string()),
            ("latency p50", format!("{:.0} ms", self.latency_p50_ms)),
            ("latency p95", format!("{:.0} ms", self.latency_p95_ms)),
            ("latency p99", format!("{:.0} ms", self.latency_p99_ms)),
            (
                "cost per request",
                format!("{:.0} msat", self.cost_per_request_msat),
            ),
            (
                "mean utilisation",
                format!("{:.1} %", self.mean_utilisation() * 100.0),
            ),
            (
                "busiest worker's share",
                format!("{:.1} %", self.top_worker_share() * 100.0),
            ),
            ("simulated time", format!("{:.0} s", self.simulated_s)),
        ];
        for (k, v) in rows {
            s += &format!("| {k} | {v} |\n");
        }
        if self.lost_answers > 0 {
            s += &format!(
                "| answers lost with their relays | {} |\n",
                self.lost_answers
            );
        }
        if self.cheater_pairs > 0 || self.spot_checks > 0 {
            s += &format!(
                "| jobs answered by cheaters | {} ({} msat) |\n| spot checks | {} ({} msat) |\n| cheaters caught | {} of {} (customer, cheater) pairs, after {:.0} / {:.0} jobs (p50 / p90) |\n| honest workers flagged | {} |\n",
                self.cheated_jobs,
                self.cheated_msat,
                self.spot_checks,
                self.spot_cost_msat,
                self.detections,
                self.cheater_pairs,
                self.detection_jobs_p50,
                self.detection_jobs_p90,
                self.false_accusations
            );
        }
        s += "\n| worker | group | jobs | utilisation | revenue msat | unpaid msat |\n|---|---|---|---|---|---|\n";
        for w in &self.workers {
            s += &format!(
                "| {} | {} | {} | {:.1} % | {} | {} |\n",
                w.id,
                w.group,
                w.completed,
                w.utilisation * 100.0,
                w.revenue_msat,
                w.unpaid_msat
            );
        }
        s
    }
}

/// A sweep's results as one Markdown table, one row per variant.
pub fn sweep_table(rows: &[(String, Report)]) -> String {
    // Columns of the relay and cheating models, only where a row uses them.
    let relays = rows.iter().any(|(_, r)| r.lost_answers > 0);
    let cheats = rows
        .iter()
        .any(|(_, r)| r.cheater_pairs > 0 || r.spot_checks > 0);
    let mut s = String::from(
        "| variant | p50 ms | p95 ms | p99 ms | cost msat | drop % | failovers | refused | utilisation % | top share % | unpaid msat |",
    );
    let mut rule = String::from("|---|---|---|---|---|---|---|---|---|---|---|");
    if relays {
        s += " timeouts | answers lost |";
        rule += "---|---|";
    }
    if cheats {
        s += " cheated jobs | cheated msat | spot checks | spot cost msat | caught | jobs to catch p50 / p90 | honest flagged |";
        rule += "---|---|---|---|---|---|---|";
    }
    s += "\n";
    s += &rule;
    s += "\n";
    for (label, r) in rows {
        let unpaid: u64 = r.workers.iter().map(|w| w.unpaid_msat).sum();
        let mut extra = String::new();
        if relays {
            extra += &format!(" {} | {} |", r.timeouts, r.lost_answers);
        }
        if cheats {
            extra += &format!(
                " {} | {} | {} | {} | {}/{} | {:.0} / {:.0} | {} |",
                r.cheated_jobs,
                r.cheated_msat,
                r.spot_checks,
                r.spot_cost_msat,
                r.detections,
                r.cheater_pairs,
                r.detection_jobs_p50,
                r.detection_jobs_p90,
                r.false_accusations
            );
        }
        s += &format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {:.1} | {:.1} | {} |{extra}\n",
            if label.is_empty() { &r.scenario } else { label },
            r.latency_p50_ms,
            r.latency_p95_ms,
            r.latency_p99_ms,
            r.cost_per_request_msat,
            r.drop_rate * 100.0,
            r.failovers,
            r.refusals_busy,
            r.mean_utilisation() * 100.0,
            r.top_worker_share() * 100.0,
            unpaid
        );
    }
    s
}
