//! Scenario files (TOML): the market to simulate. Every field has a default, so a file only
//! states what it changes; unknown fields are errors (a typo must not silently do nothing).

use fedai_scheduler::Strategy;
use serde::{Deserialize, Serialize};

use crate::SimError;

/// A whole simulated market.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Name in reports.
    pub name: String,
    /// What the scenario asks (shown in the report).
    pub question: String,
    /// Seed of every random draw: same seed, same report.
    pub seed: u64,
    /// Jobs that arrive.
    pub jobs: u64,
    /// Worker groups.
    pub workers: Vec<WorkerGroup>,
    /// Job arrivals and sizes.
    pub workload: Workload,
    /// How customers choose and retry.
    pub client: ClientModel,
    /// When workers are paid.
    pub payment: Payment,
    /// Crash waves.
    pub crashes: Vec<CrashWave>,
    /// The relays the market lives on (default: one that never fails, not modelled).
    pub relays: Relays,
    /// Run the scenario once per value of one parameter (sweep mode).
    pub sweep: Option<Sweep>,
}

/// Several relays: who reads where, whether they sync, and when they fail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Relays {
    /// Relays (0 or 1: one relay, never failing).
    pub count: u32,
    /// Relays each worker reads (its ad names them; drawn at random).
    pub per_worker: u32,
    /// Relays each customer starts from (drawn at random).
    pub per_customer: u32,
    /// The relays sync (`--sync-peer`): an ad on any live relay is seen on every live relay.
    /// Without it a customer sees a worker only through a live relay they share.
    pub synced: bool,
    /// Relay outages.
    pub failures: Vec<RelayFailure>,
}

impl Default for Relays {
    fn default() -> Self {
        Self {
            count: 0,
            per_worker: 1,
            per_customer: 1,
            synced: false,
            failures: Vec::new(),
        }
    }
}

/// One relay goes down (every connection to it drops) and maybe comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFailure {
    /// Which relay (0-based).
    pub relay: u32,
    /// When, s.
    pub at_s: f64,
    /// Back after this long, s (never when absent).
    pub recover_after_s: Option<f64>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "default".into(),
            question: String::new(),
            seed: 1,
            jobs: 10_000,
            workers: vec![WorkerGroup::default()],
            workload: Workload::default(),
            client: ClientModel::default(),
            payment: Payment::default(),
            crashes: Vec::new(),
            relays: Relays::default(),
            sweep: None,
        }
    }
}

/// `count` workers alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerGroup {
    /// Label in reports.
    pub name: String,
    /// How many.
    pub count: u32,
    /// Generation speed, tokens/s (each worker draws ± `speed_spread` around it).
    pub tokens_per_s: f64,
    /// Relative spread of speed between workers of the group (0.2 = ±20 %).
    pub speed_spread: f64,
    /// Time to first token, ms.
    pub first_token_ms: f64,
    /// Price: base msat per job.
    pub base_msat: u64,
    /// Price: msat per 1k input tokens.
    pub per_1k_input_msat: u64,
    /// Price: msat per 1k output tokens.
    pub per_1k_output_msat: u64,
    /// Slots.
    pub max_concurrent: u32,
    /// Each extra busy slot slows every running job by this fraction (shared hardware).
    pub slowdown_per_slot: f64,
    /// Probability that a job ends in `error` feedback.
    pub failure_rate: f64,
    /// Probability that a job never answers (the customer times out).
    pub hang_rate: f64,
    /// Context length, tokens.
    pub context_length: u32,
    /// Joins the market at this time, s.
    pub join_at_s: f64,
    /// Leaves (gracefully: finishes running jobs, stops advertising) at this time, s.
    pub leave_at_s: Option<f64>,
    /// Serves another (smaller) model than its ad says: its answers disagree with honest
    /// workers' on a spot check (`client.spot_check`).
    pub cheats: bool,
}

impl Default for WorkerGroup {
    fn default() -> Self {
        Self {
            name: "worker".into(),
            count: 50,
            tokens_per_s: 40.0,
            speed_spread: 0.2,
            first_token_ms: 150.0,
            base_msat: 1_000,
            per_1k_input_msat: 500,
            per_1k_output_msat: 2_000,
            max_concurrent: 4,
            slowdown_per_slot: 0.15,
            failure_rate: 0.005,
            hang_rate: 0.0,
            context_length: 8_192,
            join_at_s: 0.0,
            leave_at_s: None,
            cheats: false,
        }
    }
}

/// A distribution of token counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Dist {
    /// Always this.
    Fixed {
        /// Value.
        value: u64,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Least.
        min: u64,
        /// Most.
        max: u64,
    },
    /// Log-normal: long-tailed like real prompts.
    Lognormal {
        /// Median.
        median: f64,
        /// Sigma of the underlying normal.
        sigma: f64,
        /// Cap.
        max: u64,
    },
}

/// How jobs arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum Arrivals {
    /// Poisson at `rate_per_s`.
    Poisson {
        /// Mean arrivals per second.
        rate_per_s: f64,
    },
    /// Poisson whose rate is `burst_factor ×` higher during `on_s` out of every `on_s + off_s`.
    Bursty {
        /// Base rate per second.
        rate_per_s: f64,
        /// Rate multiplier during a burst.
        burst_factor: f64,
        /// Burst length, s.
        on_s: f64,
        /// Quiet length, s.
        off_s: f64,
    },
}

/// Job arrivals and sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Arrival process.
    pub arrivals: Arrivals,
    /// Prompt tokens.
    pub input_tokens: Dist,
    /// Output tokens.
    pub output_tokens: Dist,
    /// Customers' price cap per job, msat.
    pub max_price_msat: Option<u64>,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            arrivals: Arrivals::Poisson { rate_per_s: 15.0 },
            input_tokens: Dist::Lognormal {
                median: 300.0,
                sigma: 0.8,
                max: 4_000,
            },
            output_tokens: Dist::Uniform { min: 50, max: 400 },
            max_price_msat: None,
        }
    }
}

/// Customers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientModel {
    /// Scheduler strategy.
    pub strategy: Strategy,
    /// Random pick among this many best (1 = greedy).
    pub top_n: usize,
    /// …within this much of the best score.
    pub margin: f64,
    /// Independent customers (each keeps its own worker statistics).
    pub customers: u32,
    /// Deadline of one attempt, s.
    pub timeout_s: f64,
    /// Attempts per job (1 = no failover).
    pub max_attempts: u32,
    /// Customers see worker load as of the last ad, re-published this often, s (the worker
    /// re-publishes within `--ad-refresh-ms` of a load change: 1 s by default).
    pub ad_interval_s: f64,
    /// Round trip customer → relay → worker, ms.
    pub rtt_ms: f64,
    /// A crashed worker's last ad stays visible this long (the worker's NIP-40 expiration:
    /// 3 heartbeats), s.
    pub ad_ttl_s: f64,
    /// Fraction of answered jobs a customer spot-checks (`fedai infer --spot-check`): the same
    /// request on up to two other workers, a worker disagreeing with two that agree is caught
    /// (`Failure::Mismatch`). The referees' answers are paid (counted in `spot_cost_msat`);
    /// they are modelled as instant and not holding slots.
    pub spot_check: f64,
}

impl Default for ClientModel {
    fn default() -> Self {
        Self {
            strategy: Strategy::Balanced,
            top_n: 3,
            margin: 0.15,
            customers: 50,
            timeout_s: 60.0,
            max_attempts: 3,
            ad_interval_s: 1.0,
            rtt_ms: 20.0,
            ad_ttl_s: 90.0,
            spot_check: 0.0,
        }
    }
}

/// When workers are paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayMode {
    /// Hold invoice before the job: adds a payment round trip, never charges a failed job.
    Before,
    /// Invoice after delivery: no wait, but some customers never pay.
    After,
    /// No payment.
    #[default]
    Free,
}

/// Payment model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Payment {
    /// Mode.
    pub mode: PayMode,
    /// Pay-before: quote → pay → HTLC accepted, ms.
    pub before_latency_ms: f64,
    /// Pay-after: share of delivered jobs never paid.
    pub after_default_rate: f64,
}

impl Default for Payment {
    fn default() -> Self {
        Self {
            mode: PayMode::Free,
            before_latency_ms: 400.0,
            after_default_rate: 0.03,
        }
    }
}

/// At `at_s`, a `fraction` of live workers crash (running jobs are lost; the customers time
/// out); they come back after `rejoin_after_s` if set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashWave {
    /// When, s.
    pub at_s: f64,
    /// Share of live workers.
    pub fraction: f64,
    /// Back after, s.
    pub rejoin_after_s: Option<f64>,
}

/// One parameter, several values: `param` is a dotted path into the scenario
/// (`client.top_n`, `payment.mode`, `workers.0.count`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Dotted path.
    pub param: String,
    /// Values (TOML values).
    pub values: Vec<toml::Value>,
}

impl Scenario {
    /// Parse a scenario file's text.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        let v: toml::Value = toml::from_str(text).map_err(|e| SimError::Scenario(e.to_string()))?;
        Self::from_value(v)
    }

    fn from_value(v: toml::Value) -> Result<Self, SimError> {
        let s: Self = v
            .try_into()
            .map_err(|e: toml::de::Error| SimError::Scenario(e.to_string()))?;
        s.check()?;
        Ok(s)
    }

    /// The variants of a sweep (`param = value` label, scenario); just `self` without one.
    /// `over` replaces the file's own sweep.
    pub fn variants(&self, over: Option<&Sweep>) -> Result<Vec<(String, Scenario)>, SimError> {
        let Some(sweep) = over.or(self.sweep.as_ref()) else {
            return Ok(vec![(String::new(), self.clone())]);
        };
        let base = toml::Value::try_from(self).map_err(|e| SimError::Scenario(e.to_string()))?;
        sweep
            .values
            .iter()
            .map(|value| {
                let mut v = base.clone();
                set_path(&mut v, &sweep.param, value.clone())?;
                let mut s = Self::from_value(v)?;
                s.sweep = None;
                Ok((format!("{} = {}", sweep.param, show(value)), s))
            })
            .collect()
    }

    /// Reject scenarios that cannot run.
    pub fn check(&self) -> Result<(), SimError> {
        let bad = |m: &str| Err(SimError::Scenario(m.into()));
        if self.workers.iter().all(|g| g.count == 0) {
            return bad("no workers");
        }
        for g in &self.workers {
            if !positive(g.tokens_per_s) || g.max_concurrent == 0 {
                return bad("every worker group needs tokens_per_s > 0 and max_concurrent > 0");
            }
            if !(0.0..=1.0).contains(&g.failure_rate) || !(0.0..=1.0).contains(&g.hang_rate) {
                return bad("failure_rate and hang_rate are probabilities");
            }
        }
        let rate = match self.workload.arrivals {
            Arrivals::Poisson { rate_per_s } => rate_per_s,
            Arrivals::Bursty { rate_per_s, .. } => rate_per_s,
        };
        if !positive(rate) {
            return bad("arrival rate must be > 0");
        }
        if self.client.customers == 0
            || self.client.max_attempts == 0
            || self.client.max_attempts > 8
        {
            return bad("customers ≥ 1 and 1 ≤ max_attempts ≤ 8");
        }
        if !positive(self.client.timeout_s) || !positive(self.client.ad_interval_s) {
            return bad("timeout_s and ad_interval_s must be > 0");
        }
        Ok(())
    }
}

/// Parse `param=v1,v2,…` (values in TOML syntax; bare words become strings).
pub fn parse_sweep(arg: &str) -> Result<Sweep, SimError> {
    let (param, values) = arg
        .split_once('=')
        .ok_or_else(|| SimError::Scenario(format!("sweep `{arg}`: expected param=v1,v2")))?;
    let values = values
        .split(',')
        .map(|v| {
            let v = v.trim();
            toml::from_str::<toml::Table>(&format!("x = {v}"))
                .ok()
                .and_then(|mut t| t.remove("x"))
                .unwrap_or_else(|| toml::Value::String(v.to_owned()))
        })
        .collect();
    Ok(Sweep {
        param: param.trim().to_owned(),
        values,
    })
}

fn set_path(v: &mut toml::Value, path: &str, value: toml::Value) -> Result<(), SimError> {
    let missing = || SimError::Scenario(format!("sweep parameter `{path}` does not exist"));
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        cur = match cur {
            toml::Value::Table(t) => {
                if last {
                    t.insert((*p).to_owned(), value);
                    return Ok(());
                }
                t.get_mut(*p).ok_or_else(missing)?
            }
            toml::Value::Array(a) => {
                let idx: usize = p.parse().map_err(|_| missing())?;
                let slot = a.get_mut(idx).ok_or_else(missing)?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => return Err(missing()),
        };
    }
    Err(missing())
}

/// A sweep value as a label.
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        o => format!("{o:?}"),
    }
}

/// `x > 0` and not NaN.
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}
