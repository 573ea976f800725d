//! # fedai-scheduler
//!
//! Which worker should run this job? Pure functions, no I/O and no clock: the client runs them
//! on live capability ads from the relays, and the simulator (`fedai-sim`) runs the very same
//! code on synthetic workers.
//!
//! [`select`] applies hard filters (model served, price under the cap, a free slot, healthy,
//! not cooling down, trust above the floor, context large enough, encryption when needed),
//! scores the survivors on expected latency, price, load and trust under a [`Policy`], and
//! picks at random among the few best (`top_n` within `margin` of the best score) so that
//! many customers reading the same ads do not stampede one worker. The random pick is
//! deterministic given the [`Rng`]'s seed. Every [`Decision`] explains itself: each survivor's
//! score parts and each rejected candidate's reason.
//!
//! ```
//! use fedai_scheduler::{select, Candidate, JobSpec, Policy, Rng, Strategy};
//! use fedai_protocol::Price;
//! let cheap = Price { model: "m".into(), base_msat: 0, per_1k_input_msat: 100, per_1k_output_msat: 100 };
//! let dear = Price { base_msat: 5_000, ..cheap.clone() };
//! let workers = [Candidate::new(Some(&dear), 4096, 4, 0), Candidate::new(Some(&cheap), 4096, 4, 3)];
//! let job = JobSpec { input_tokens: 200, output_tokens: 100, ..JobSpec::default() };
//! let d = select(&workers, &job, &Policy::new(Strategy::Cheapest), 0, &mut Rng::new(1));
//! assert_eq!(d.chosen_index(), Some(1));
//! ```

pub mod rng;
pub mod spot;
pub mod stats;

use fedai_protocol::Price;
use serde::{Deserialize, Serialize};

pub use rng::Rng;
pub use stats::{Cooldown, Failure, WorkerStats};

/// What to optimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Lowest price for this job; latency, load and trust only break near-ties.
    Cheapest,
    /// Lowest expected latency; price only breaks near-ties.
    Fastest,
    /// Latency and price weigh the same.
    #[default]
    Balanced,
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cheapest" => Ok(Self::Cheapest),
            "fastest" => Ok(Self::Fastest),
            "balanced" => Ok(Self::Balanced),
            o => Err(format!(
                "unknown strategy `{o}` (cheapest, fastest, balanced)"
            )),
        }
    }
}

/// Weights of the score parts (each part is ≥ 0, 0 for the best candidate on that axis).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    /// `ln(expected latency / best expected latency)`.
    pub latency: f64,
    /// `ln((price + 1) / (best price + 1))`.
    pub price: f64,
    /// `in_flight / max_concurrent`.
    pub load: f64,
    /// `1 − trust`.
    pub trust: f64,
}

impl Weights {
    /// The weights of a strategy.
    pub fn of(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Cheapest => Self {
                latency: 0.05,
                price: 1.0,
                load: 0.1,
                trust: 0.2,
            },
            Strategy::Fastest => Self {
                latency: 1.0,
                price: 0.05,
                load: 0.5,
                trust: 0.3,
            },
            Strategy::Balanced => Self {
                latency: 1.0,
                price: 1.0,
                load: 0.5,
                trust: 0.5,
            },
        }
    }
}

/// How to choose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Score weights.
    pub weights: Weights,
    /// Pick at random among at most this many of the best (1 = always the best: greedy).
    pub top_n: usize,
    /// …that are within this much of the best score.
    pub margin: f64,
    /// Workers with a lower trust are never chosen.
    pub min_trust: f64,
    /// Cooldown after failures.
    pub cooldown: Cooldown,
    /// Assumed time to first token for a worker never measured, ms.
    pub prior_first_token_ms: f64,
    /// Assumed speed for a worker never measured and without a hint, tokens/s.
    pub prior_tokens_per_s: f64,
}

impl Policy {
    /// Defaults with the weights of `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            weights: Weights::of(strategy),
            top_n: 3,
            margin: 0.15,
            min_trust: 0.15,
            cooldown: Cooldown::default(),
            prior_first_token_ms: 500.0,
            prior_tokens_per_s: 20.0,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new(Strategy::Balanced)
    }
}

/// The job to place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Prompt tokens (estimated).
    pub input_tokens: u64,
    /// Output tokens expected (usually `max_tokens`).
    pub output_tokens: u64,
    /// Never pay more than this, msat.
    pub max_price_msat: Option<u64>,
    /// The request is encrypted: the worker must support it.
    pub needs_encryption: bool,
}

/// One worker as the scheduler sees it for one job. The caller resolves the job's model
/// (`price` is `None` when the worker does not serve it) and attaches its observations.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The worker's price for the job's model; `None`: model not served.
    pub price: Option<&'a Price>,
    /// A firm quote for this job (auctions), msat; overrides `price`.
    pub quote_msat: Option<u64>,
    /// The model's context length, tokens (0: unknown, not checked).
    pub context_length: u32,
    /// Slots.
    pub max_concurrent: u32,
    /// Busy slots as last advertised.
    pub in_flight: u32,
    /// The ad says healthy.
    pub healthy: bool,
    /// The worker reads encrypted requests.
    pub encryption: bool,
    /// The caller rules it out (e.g. already tried for this job).
    pub excluded: bool,
    /// What we observed of it; `None`: never seen.
    pub stats: Option<&'a WorkerStats>,
    /// Speed to assume before it is measured (e.g. from its hardware), tokens/s.
    pub speed_hint_tps: Option<f64>,
}

impl<'a> Candidate<'a> {
    /// A healthy worker with encryption support and no observations.
    pub fn new(
        price: Option<&'a Price>,
        context_length: u32,
        max_concurrent: u32,
        in_flight: u32,
    ) -> Self {
        Self {
            price,
            quote_msat: None,
            context_length,
            max_concurrent,
            in_flight,
            healthy: true,
            encryption: true,
            excluded: false,
            stats: None,
            speed_hint_tps: None,
        }
    }
}

/// Why a candidate was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum Rejection {
    /// Does not serve the model.
    ModelNotServed,
    /// Its ad says it is not healthy.
    Unhealthy,
    /// Excluded by the caller.
    Excluded,
    /// Every slot busy.
    NoCapacity {
        /// Busy slots.
        in_flight: u32,
        /// Slots.
        max_concurrent: u32,
    },
    /// It refused a job for capacity moments ago.
    Busy {
        /// Until it is assumed free again, ms.
        remaining_ms: u64,
    },
    /// Price over the cap.
    OverPrice {
        /// This job's price there, msat.
        price_msat: u64,
        /// The cap, msat.
        max_msat: u64,
    },
    /// Cooling down after failures.
    CoolingDown {
        /// Time left, ms.
        remaining_ms: u64,
    },
    /// Trust under the floor.
    LowTrust {
        /// Its trust.
        trust: f64,
        /// The floor.
        min: f64,
    },
    /// Context too small for prompt + output.
    ContextTooSmall {
        /// Tokens needed.
        needed: u64,
        /// Its context length.
        context: u32,
    },
    /// Cannot read encrypted requests.
    NoEncryption,
    /// Spot checks caught it serving another model [`spot::EXCLUDE_AFTER`] times: never
    /// chosen again by this customer.
    CaughtBySpotCheck,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ModelNotServed => write!(f, "model not served"),
            Self::Unhealthy => write!(f, "unhealthy"),
            Self::Excluded => write!(f, "excluded (already tried, pinned elsewhere or no quote)"),
            Self::NoCapacity {
                in_flight,
                max_concurrent,
            } => write!(f, "no free slot ({in_flight}/{max_concurrent})"),
            Self::Busy { remaining_ms } => write!(
                f,
                "refused a job as full {:.1}s ago",
                *remaining_ms as f64 / 1000.0
            ),
            Self::OverPrice {
                price_msat,
                max_msat,
            } => write!(f, "price {price_msat} msat over the cap {max_msat}"),
            Self::CoolingDown { remaining_ms } => {
                write!(f, "cooling down for {:.1}s", *remaining_ms as f64 / 1000.0)
            }
            Self::LowTrust { trust, min } => write!(f, "trust {trust:.2} under {min:.2}"),
            Self::ContextTooSmall { needed, context } => {
                write!(f, "context {context} < {needed} tokens needed")
            }
            Self::NoEncryption => write!(f, "no encryption support"),
            Self::CaughtBySpotCheck => write!(f, "caught by a spot check (serves another model)"),
        }
    }
}

/// A candidate that passed the filters, with its score (lower is better) and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Index into the candidate slice.
    pub index: usize,
    /// Weighted sum of the parts.
    pub score: f64,
    /// Expected time to the result, ms.
    pub expected_ms: f64,
    /// This job's price, msat.
    pub price_msat: u64,
    /// `in_flight / max_concurrent`.
    pub load: f64,
    /// Trust.
    pub trust: f64,
    /// Unweighted parts: latency, price, load, distrust.
    pub parts: [f64; 4],
}

/// The outcome of [`select`], explainable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Survivors of the filters, in candidate order.
    pub ranked: Vec<Scored>,
    /// Indices into `ranked` of the best [`SHORTLIST`] (or `top_n`, if larger) survivors,
    /// best first (sorting thousands of losers would cost more than the whole choice).
    pub shortlist: Vec<usize>,
    /// Index into `ranked` of the pick.
    pub chosen: Option<usize>,
    /// Filtered-out candidates and why, in candidate order — when [`Self::explain`] is set
    /// ([`select`] sets it); empty otherwise.
    pub rejected: Vec<(usize, Rejection)>,
    /// How many candidates the filters ruled out (listed in `rejected` or not).
    pub rejected_count: usize,
    /// List every rejection with its reason in `rejected`. Off, a selection writes nothing per
    /// losing candidate: over 10k ads that is 250 KB a selection, and most of an allocating
    /// selection's time (page faults on the fresh list).
    #[serde(skip)]
    pub explain: bool,
}

impl Decision {
    /// The chosen candidate's index in the candidate slice.
    pub fn chosen_index(&self) -> Option<usize> {
        self.chosen.map(|c| self.ranked[c].index)
    }

    /// The chosen candidate's score.
    pub fn chosen(&self) -> Option<&Scored> {
        self.chosen.map(|c| &self.ranked[c])
    }

    /// The shortlist, best first.
    pub fn best(&self) -> impl Iterator<Item = &Scored> {
        self.shortlist.iter().map(|i| &self.ranked[*i])
    }
}

/// How many of the best survivors a [`Decision`] lists in order (more when `top_n` is larger).
pub const SHORTLIST: usize = 8;

/// This job's price at a candidate, msat (`None`: model not served).
pub fn job_price(c: &Candidate<'_>, job: &JobSpec) -> Option<u64> {
    match (c.quote_msat, c.price) {
        (Some(q), _) => Some(q),
        (None, Some(p)) => Some(p.cost_msat(job.input_tokens, job.output_tokens)),
        (None, None) => None,
    }
}

/// Expected time to the whole result at a candidate, ms; `None` when it was never measured
/// and has no speed hint.
pub fn expected_ms(c: &Candidate<'_>, job: &JobSpec, policy: &Policy) -> Option<f64> {
    let stats = c.stats;
    let measured = stats.and_then(|s| s.tokens_per_s);
    let tps = measured.or(c.speed_hint_tps).filter(|t| *t > 0.0)?;
    let first = stats
        .and_then(|s| s.first_token_ms)
        .unwrap_or(policy.prior_first_token_ms);
    Some(first + job.output_tokens as f64 * 1000.0 / tps)
}

fn filter(
    c: &Candidate<'_>,
    job: &JobSpec,
    policy: &Policy,
    now_ms: u64,
    full_ok: bool,
) -> Result<(u64, f64), Rejection> {
    if c.excluded {
        return Err(Rejection::Excluded);
    }
    // The model check without pricing: rejections before the price check (unhealthy, full)
    // then cost no arithmetic.
    if c.quote_msat.is_none() && c.price.is_none() {
        return Err(Rejection::ModelNotServed);
    }
    if !c.healthy {
        return Err(Rejection::Unhealthy);
    }
    if job.needs_encryption && !c.encryption {
        return Err(Rejection::NoEncryption);
    }
    let needed = job.input_tokens.saturating_add(job.output_tokens);
    if c.context_length > 0 && needed > c.context_length as u64 {
        return Err(Rejection::ContextTooSmall {
            needed,
            context: c.context_length,
        });
    }
    if c.in_flight >= c.max_concurrent && !full_ok {
        return Err(Rejection::NoCapacity {
            in_flight: c.in_flight,
            max_concurrent: c.max_concurrent,
        });
    }
    let price = job_price(c, job).ok_or(Rejection::ModelNotServed)?;
    if let Some(max) = job.max_price_msat.filter(|m| price > *m) {
        return Err(Rejection::OverPrice {
            price_msat: price,
            max_msat: max,
        });
    }
    let trust = match c.stats {
        Some(s) => {
            if s.spot_failed >= spot::EXCLUDE_AFTER {
                return Err(Rejection::CaughtBySpotCheck);
            }
            if s.busy_until_ms > now_ms && !full_ok {
                return Err(Rejection::Busy {
                    remaining_ms: s.busy_until_ms - now_ms,
                });
            }
            if s.cooling(now_ms) {
                return Err(Rejection::CoolingDown {
                    remaining_ms: s.cooldown_until_ms - now_ms,
                });
            }
            s.trust()
        }
        None => 0.5,
    };
    if trust < policy.min_trust {
        return Err(Rejection::LowTrust {
            trust,
            min: policy.min_trust,
        });
    }
    Ok((price, trust))
}

/// Natural log of `x ≥ 1` in plain arithmetic (exponent bits + an odd series in
/// `t = (m − 1)/(m + 1)`, |error| < 1e-5): the same bits on every platform, unlike libm, so a
/// seed reproduces a decision everywhere; and three times cheaper, which the simulator feels.
#[inline]
pub fn ln(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return if x == f64::INFINITY {
            f64::INFINITY
        } else {
            0.0
        };
    }
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    // Mantissa in [1, 2); subnormals do not occur for the values scored here (x ≥ 1).
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    // The mantissa's top bits pick c, the start of its interval: ln(m) = ln(c) + ln(m/c), with
    // m/c = 1 + r, 0 ≤ r < 1/128, so a short series is exact to 1e-11 — and no division
    // (ln 1 is exactly 0).
    let (inv_c, ln_c) = LN_TABLE[((bits >> (52 - LN_BITS)) & (LN_STEPS as u64 - 1)) as usize];
    let r = m * inv_c - 1.0;
    let ln_1r = r - r * r * (0.5 - r * (1.0 / 3.0 - r * 0.25));
    e as f64 * std::f64::consts::LN_2 + ln_c + ln_1r
}

/// Mantissa bits that index [`LN_TABLE`].
const LN_BITS: u32 = 7;
const LN_STEPS: usize = 1 << LN_BITS;

/// `(1/c, ln c)` for `c` the start of each of the mantissa's `LN_STEPS` intervals, computed at
/// compile time with the same arithmetic everywhere (the atanh series to u^15, u ≤ 1/3: ~1e-9).
static LN_TABLE: [(f64, f64); LN_STEPS] = ln_table();

const fn ln_table() -> [(f64, f64); LN_STEPS] {
    let mut t = [(0.0, 0.0); LN_STEPS];
    let mut i = 0;
    while i < LN_STEPS {
        let c = 1.0 + i as f64 / LN_STEPS as f64;
        // ln c = 2 atanh((c − 1)/(c + 1)), the series to t^15 (t ≤ 1/3).
        let u = (c - 1.0) / (c + 1.0);
        let u2 = u * u;
        let mut sum = 0.0;
        let mut k = 15;
        while k >= 1 {
            sum = sum * u2 + 2.0 / k as f64;
            k -= 2;
        }
        t[i] = (1.0 / c, u * sum);
        i += 1;
    }
    t
}

/// Choose a worker for `job` among `candidates` at time `now_ms` (the clock the stats'
/// cooldowns use). Deterministic given `rng`'s state.
pub fn select(
    candidates: &[Candidate<'_>],
    job: &JobSpec,
    policy: &Policy,
    now_ms: u64,
    rng: &mut Rng,
) -> Decision {
    let mut d = Decision {
        explain: true,
        ..Decision::default()
    };
    select_into(&mut d, candidates, job, policy, now_ms, rng);
    d
}

/// The best of each axis over the candidates that passed, and the measured speeds' sum.
struct Axes {
    best_ms: f64,
    best_price: u64,
    known_sum: f64,
    known: u32,
    /// A candidate was ruled out only for being full (or recently busy).
    saw_full: bool,
}

/// Pass 1 of [`select_into`] over every candidate: the filters (`full_ok`: fullness is not a
/// rejection), raw measures, and the best of each axis.
fn scan(
    d: &mut Decision,
    candidates: &[Candidate<'_>],
    job: &JobSpec,
    policy: &Policy,
    now_ms: u64,
    full_ok: bool,
    a: &mut Axes,
) {
    for (index, c) in candidates.iter().enumerate() {
        match filter(c, job, policy, now_ms, full_ok) {
            Err(r) => {
                d.rejected_count += 1;
                a.saw_full |= matches!(r, Rejection::NoCapacity { .. } | Rejection::Busy { .. });
                if d.explain {
                    d.rejected.push((index, r));
                }
            }
            Ok((price_msat, trust)) => {
                // Unmeasured: NaN for now, filled in below.
                let expected_ms = expected_ms(c, job, policy).unwrap_or(f64::NAN);
                if !expected_ms.is_nan() {
                    a.best_ms = a.best_ms.min(expected_ms);
                    a.known_sum += expected_ms;
                    a.known += 1;
                }
                a.best_price = a.best_price.min(price_msat);
                d.ranked.push(Scored {
                    index,
                    score: 0.0,
                    expected_ms,
                    price_msat,
                    load: c.in_flight as f64 / c.max_concurrent.max(1) as f64,
                    trust,
                    parts: [0.0; 4],
                });
            }
        }
    }
}

/// [`select`] into a reused [`Decision`]: a hot loop (the simulator) then allocates nothing.
pub fn select_into(
    d: &mut Decision,
    candidates: &[Candidate<'_>],
    job: &JobSpec,
    policy: &Policy,
    now_ms: u64,
    rng: &mut Rng,
) {
    d.ranked.clear();
    d.rejected.clear();
    d.rejected_count = 0;
    d.shortlist.clear();
    d.chosen = None;
    // Pass 1: filters, raw measures and the best of each axis. When every worker that could
    // run the job is only full (an ad up to a heartbeat old), fullness becomes a cost instead:
    // the load part of the score still prefers the least loaded, and a worker's own queue
    // absorbs a momentary burst — failing the job would not.
    let mut a = Axes {
        best_ms: f64::INFINITY,
        best_price: u64::MAX,
        known_sum: 0.0,
        known: 0,
        saw_full: false,
    };
    scan(d, candidates, job, policy, now_ms, false, &mut a);
    let only_full = d.ranked.is_empty() && a.saw_full;
    if only_full {
        d.rejected.clear();
        d.rejected_count = 0;
        scan(d, candidates, job, policy, now_ms, true, &mut a);
    }
    let Axes {
        mut best_ms,
        best_price,
        known_sum,
        known,
        ..
    } = a;
    if d.ranked.is_empty() {
        return;
    }
    // A worker never measured is assumed as fast as the measured average (optimism under
    // uncertainty): a pessimistic prior would never try newcomers, so the first worker to
    // answer would take every job.
    let assumed = if known > 0 {
        known_sum / known as f64
    } else {
        policy.prior_first_token_ms + job.output_tokens as f64 * 1000.0 / policy.prior_tokens_per_s
    };
    if (known as usize) < d.ranked.len() {
        best_ms = best_ms.min(assumed);
        for s in d.ranked.iter_mut().filter(|s| s.expected_ms.is_nan()) {
            s.expected_ms = assumed;
        }
    }
    score_and_shortlist(d, policy, best_ms, best_price);
    // Pass 3: random among the few best.
    let best = d.ranked[d.shortlist[0]].score;
    let pool = d
        .shortlist
        .iter()
        .take(policy.top_n.max(1))
        .take_while(|k| d.ranked[**k].score <= best + policy.margin)
        .count();
    d.chosen = Some(d.shortlist[rng.below(pool.max(1))]);
}

/// Pass 2 of [`select_into`]: scale-free parts (log ratios to the best), weighted; the best few
/// kept in order (ties by candidate order, for determinism) by insertion into a short sorted
/// list.
fn score_and_shortlist(d: &mut Decision, policy: &Policy, best_ms: f64, best_price: u64) {
    let w = &policy.weights;
    let (ln_best_ms, ln_best_price) = (ln(best_ms.max(1.0)), ln(best_price as f64 + 1.0));
    let keep = SHORTLIST.max(policy.top_n);
    for i in 0..d.ranked.len() {
        let s = &mut d.ranked[i];
        s.parts = [
            ln(s.expected_ms.max(1.0)) - ln_best_ms,
            ln(s.price_msat as f64 + 1.0) - ln_best_price,
            s.load,
            1.0 - s.trust,
        ];
        s.score = w.latency * s.parts[0]
            + w.price * s.parts[1]
            + w.load * s.parts[2]
            + w.trust * s.parts[3];
        let score = s.score;
        let ranked = &d.ranked;
        // Candidate order is ascending, so an equal score goes after the ones already kept.
        if d.shortlist.len() == keep && score >= ranked[d.shortlist[keep - 1]].score {
            continue;
        }
        let at = d.shortlist.partition_point(|k| ranked[*k].score <= score);
        if d.shortlist.len() == keep {
            d.shortlist.pop();
        }
        d.shortlist.insert(at, i);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ln_is_close_to_libm() {
        let mut x = 1.0f64;
        while x < 1e18 {
            assert!((super::ln(x) - x.ln()).abs() < 1e-5, "{x}");
            x *= 1.37;
        }
        assert_eq!(super::ln(1.0), 0.0);
    }
}
