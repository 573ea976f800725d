//! What a customer has observed of each worker: speed, failures, trust and cooldown.
//!
//! Time is passed in as milliseconds on any monotonic clock the caller chooses (the client
//! uses wall time, the simulator its virtual clock), so everything here stays pure.

use serde::{Deserialize, Serialize};

/// How a job with a worker ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Refused for capacity: a short cooldown, no loss of trust (busy is not dishonest).
    Busy,
    /// `error` feedback (runner failed, model gone, shutdown…).
    Error,
    /// No result before the deadline.
    Timeout,
    /// A result that failed verification (signature, metering mismatch, wrong request).
    Invalid,
    /// A spot check caught it: its answer disagreed with those of other workers serving the
    /// same model, which agreed among themselves (see [`crate::spot`]).
    Mismatch,
}

impl Failure {
    /// Weight against trust: an invalid result costs much more than an honest error.
    fn penalty(self) -> u32 {
        match self {
            Self::Busy => 0,
            Self::Error => 1,
            Self::Timeout => 2,
            Self::Invalid | Self::Mismatch => 4,
        }
    }
}

/// Cooldown after failures: `base × 2^(consecutive failures − 1)`, capped at `max`; an invalid
/// result goes straight to `max`; a capacity refusal waits a fixed `busy` (about one ad refresh:
/// a full worker is not a failing one, and backing off from it for minutes starves the
/// customer — the simulator showed drops from exactly that).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cooldown {
    /// First cooldown, ms.
    pub base_ms: u64,
    /// Longest cooldown, ms.
    pub max_ms: u64,
    /// After a capacity refusal, ms.
    pub busy_ms: u64,
}

impl Default for Cooldown {
    fn default() -> Self {
        Self {
            base_ms: 5_000,
            max_ms: 600_000,
            busy_ms: 2_000,
        }
    }
}

/// Per-worker observations. `Default` is a worker never seen: trust 0.5, no cooldown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Jobs delivered with a verified result and metering record.
    pub verified: u32,
    /// Sum of failure penalties ([`Failure`]).
    pub penalty: u32,
    /// Failures in a row (reset by a success).
    pub consecutive_failures: u32,
    /// When the last failure happened, ms.
    pub last_failure_ms: Option<u64>,
    /// Not chosen before this time, ms.
    pub cooldown_until_ms: u64,
    /// Said it was full (a `capacity` refusal) until about this time, ms: a cost while every
    /// worker is full, an exclusion otherwise — never a loss of trust.
    #[serde(default)]
    pub busy_until_ms: u64,
    /// Smoothed time from request to first token (or to the result), ms.
    pub first_token_ms: Option<f64>,
    /// Smoothed generation speed, output tokens per second.
    pub tokens_per_s: Option<f64>,
    /// Spot checks it failed ([`Failure::Mismatch`]).
    #[serde(default)]
    pub spot_failed: u32,
    /// Other customers this one weighs (its follows, or checked paying customers) who attest
    /// the worker delivered (NIP-32 attestations, fedai-06). Each counts half a job seen here.
    #[serde(default)]
    pub vouched: u32,
    /// …who attest it failed or was caught by a spot check (follows only). Each costs half an
    /// invalid result seen here.
    #[serde(default)]
    pub reported: u32,
}

/// Weight of a new observation in the moving averages.
const EWMA: f64 = 0.3;

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    if !new.is_finite() || new <= 0.0 {
        return old;
    }
    Some(old.map_or(new, |o| o + EWMA * (new - o)))
}

impl WorkerStats {
    /// Trust in `(0, 1)`: the mean of a Beta(1 + verified, 1 + penalty) belief. An unknown
    /// worker starts at 0.5; verified jobs raise it toward 1; failures lower it, an invalid
    /// result four times as much as an error. Attestations of customers this one weighs count
    /// at half weight (`vouched`, `reported`).
    pub fn trust(&self) -> f64 {
        let good = self.verified as f64 + self.vouched as f64 / 2.0;
        let bad = self.penalty as f64 + self.reported as f64 * 2.0;
        (1.0 + good) / (2.0 + good + bad)
    }

    /// Whether the worker is cooling down at `now_ms`.
    pub fn cooling(&self, now_ms: u64) -> bool {
        now_ms < self.cooldown_until_ms
    }

    /// A verified job: `first_token_ms` from request to first token, `tokens` generated in
    /// `generation_ms`.
    pub fn record_success(&mut self, first_token_ms: f64, tokens: u64, generation_ms: f64) {
        self.verified = self.verified.saturating_add(1);
        self.consecutive_failures = 0;
        self.first_token_ms = ewma(self.first_token_ms, first_token_ms);
        if tokens > 0 && generation_ms > 0.0 {
            self.tokens_per_s = ewma(self.tokens_per_s, tokens as f64 * 1000.0 / generation_ms);
        }
    }

    /// A failed job at `now_ms`; sets the cooldown.
    pub fn record_failure(&mut self, failure: Failure, now_ms: u64, cooldown: &Cooldown) {
        if failure == Failure::Busy {
            self.busy_until_ms = self
                .busy_until_ms
                .max(now_ms.saturating_add(cooldown.busy_ms));
            return;
        }
        self.penalty = self.penalty.saturating_add(failure.penalty());
        if failure == Failure::Mismatch {
            self.spot_failed = self.spot_failed.saturating_add(1);
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_failure_ms = Some(now_ms);
        let wait = match failure {
            Failure::Invalid | Failure::Mismatch => cooldown.max_ms,
            _ => {
                let doublings = self.consecutive_failures.saturating_sub(1).min(32);
                cooldown
                    .base_ms
                    .saturating_mul(1u64 << doublings)
                    .min(cooldown.max_ms)
            }
        };
        self.cooldown_until_ms = self.cooldown_until_ms.max(now_ms.saturating_add(wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_rises_with_verified_jobs_and_falls_with_failures() {
        let mut s = WorkerStats::default();
        assert_eq!(s.trust(), 0.5);
        s.record_success(100.0, 50, 1000.0);
        let after_ok = s.trust();
        assert!(after_ok > 0.5);
        let mut e = s.clone();
        e.record_failure(Failure::Error, 0, &Cooldown::default());
        let mut i = s.clone();
        i.record_failure(Failure::Invalid, 0, &Cooldown::default());
        assert!(e.trust() < after_ok && i.trust() < e.trust());
        let mut b = s.clone();
        b.record_failure(Failure::Busy, 0, &Cooldown::default());
        assert_eq!(b.trust(), after_ok, "busy costs no trust");
    }

    #[test]
    fn cooldown_backs_off_and_expires_and_success_resets_it() {
        let c = Cooldown {
            base_ms: 1000,
            max_ms: 5000,
            busy_ms: 300,
        };
        let mut s = WorkerStats::default();
        s.record_failure(Failure::Error, 10_000, &c);
        assert!(s.cooling(10_999) && !s.cooling(11_000));
        s.record_failure(Failure::Timeout, 11_000, &c);
        assert_eq!(s.cooldown_until_ms, 13_000);
        s.record_failure(Failure::Error, 13_000, &c);
        assert_eq!(s.cooldown_until_ms, 17_000);
        s.record_failure(Failure::Error, 17_000, &c);
        assert_eq!(s.cooldown_until_ms, 22_000, "capped at max");
        s.record_success(10.0, 1, 1.0);
        s.record_failure(Failure::Error, 30_000, &c);
        assert_eq!(s.cooldown_until_ms, 31_000, "a success resets the backoff");
        s.record_failure(Failure::Invalid, 40_000, &c);
        assert_eq!(s.cooldown_until_ms, 45_000, "invalid goes straight to max");
        let mut b = WorkerStats::default();
        for t in [0, 1_000, 2_000] {
            b.record_failure(Failure::Busy, t, &c);
            assert_eq!(b.busy_until_ms, t + 300, "busy: fixed, no backoff");
            assert_eq!(b.cooldown_until_ms, 0, "busy is not a failure");
        }
        assert_eq!(b.consecutive_failures, 0);
    }

    #[test]
    fn speed_is_smoothed_and_ignores_nonsense() {
        let mut s = WorkerStats::default();
        s.record_success(100.0, 100, 1000.0);
        assert_eq!(s.tokens_per_s, Some(100.0));
        s.record_success(200.0, 200, 1000.0);
        assert!((s.tokens_per_s.unwrap() - 130.0).abs() < 1e-9);
        assert!((s.first_token_ms.unwrap() - 130.0).abs() < 1e-9);
        s.record_success(f64::NAN, 0, 0.0);
        assert!((s.first_token_ms.unwrap() - 130.0).abs() < 1e-9);
    }
}
