//! The gateway's spending budget, kept in a file so that it holds across restarts.
//!
//! Before a paid job runs, the most it may cost (its price cap plus routing fees for every
//! payment it may make) is *reserved*: added to the committed total and written to disk before
//! any money can move. When the job ends, what it did not spend is released. A crash between
//! the two leaves the reservation counted as spent: the gateway may under-spend after a crash,
//! never over-spend. Concurrent requests reserve under one lock, so together they stay within
//! the budget too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Ledger failures.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file could not be read or written.
    #[error("budget ledger {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a ledger.
    #[error("budget ledger {0}: not a ledger file (expected {{\"committed_msat\": N}})")]
    Corrupt(PathBuf),
}

/// A persistent budget.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    budget_msat: u64,
    committed: Mutex<u64>,
}

/// A reservation: the most one job may spend.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Reserved, msat.
    pub msat: u64,
}

impl Ledger {
    /// Open (or create) the ledger at `path` with a total budget of `budget_msat`.
    pub fn open(path: &Path, budget_msat: u64) -> Result<Self, LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        let committed = match std::fs::read_to_string(path) {
            Ok(s) => serde_json::from_str::<serde_json::Value>(&s)
                .ok()
                .and_then(|v| v["committed_msat"].as_u64())
                .ok_or_else(|| LedgerError::Corrupt(path.to_owned()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                0
            }
            Err(e) => return Err(io(e)),
        };
        let ledger = Self {
            path: path.to_owned(),
            budget_msat,
            committed: Mutex::new(committed),
        };
        ledger.write(committed)?;
        Ok(ledger)
    }

    /// Spent or reserved so far, msat.
    pub fn committed_msat(&self) -> u64 {
        *self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is left of the budget, msat.
    pub fn remaining_msat(&self) -> u64 {
        self.budget_msat.saturating_sub(self.committed_msat())
    }

    /// Reserve up to `want` msat, at least `min`; `None` when not even `min` is left. The
    /// reservation is on disk before this returns.
    pub fn reserve(&self, want: u64, min: u64) -> Result<Option<Reservation>, LedgerError> {
        let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let left = self.budget_msat.saturating_sub(*c);
        if left < min.max(1) {
            return Ok(None);
        }
        let msat = want.min(left);
        self.write(*c + msat)?;
        *c += msat;
        Ok(Some(Reservation { msat }))
    }

    /// The job is over, having spent `spent` msat of `r`: give back the rest. Spending more
    /// than reserved should not happen (the SDK caps every job); if it does, the ledger records
    /// the truth.
    pub fn settle(&self, r: Reservation, spent: u64) -> Result<(), LedgerError> {
        let mut c = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let next = if spent > r.msat {
            tracing::error!(
                reserved = r.msat,
                spent,
                "a job spent more than its reservation"
            );
            c.saturating_add(spent - r.msat)
        } else {
            c.saturating_sub(r.msat - spent)
        };
        self.write(next)?;
        *c = next;
        Ok(())
    }

    /// Write `committed` durably: a temporary file, fsync'd, renamed over the ledger.
    fn write(&self, committed: u64) -> Result<(), LedgerError> {
        let io = |source| LedgerError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let body = serde_json::json!({
            "committed_msat": committed,
            "budget_msat": self.budget_msat,
        });
        f.write_all(body.to_string().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        // The rename itself must be durable: a crash must not bring back an older total.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

/// Where the ledger lives when no path is given: `gateway-ledger.json` in the customer's data
/// directory ([`fedai_client::data_dir`]).
pub fn default_path() -> PathBuf {
    fedai_client::data_dir().join("gateway-ledger.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fedai-ledger-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        dir.join("ledger.json")
    }

    #[test]
    fn reservations_never_exceed_the_budget_and_survive_a_restart() {
        let p = path("restart");
        let l = Ledger::open(&p, 10_000).unwrap();
        let a = l.reserve(6_000, 100).unwrap().unwrap();
        let b = l.reserve(6_000, 100).unwrap().unwrap();
        assert_eq!(
            (a.msat, b.msat),
            (6_000, 4_000),
            "the second gets what is left"
        );
        assert_eq!(l.reserve(1, 1).unwrap(), None, "nothing left");
        l.settle(a, 1_500).unwrap();
        assert_eq!(l.committed_msat(), 5_500);
        // Spent beyond a reservation: recorded as spent, not lost.
        let c = Reservation { msat: 0 };
        l.settle(c, 7).unwrap();
        assert_eq!(l.committed_msat(), 5_507);
        // A crash with `b` still reserved: on restart it counts as spent.
        drop(l);
        let l = Ledger::open(&p, 10_000).unwrap();
        assert_eq!(l.committed_msat(), 5_507);
        assert_eq!(l.remaining_msat(), 4_493);
        assert_eq!(l.reserve(5_000, 4_600).unwrap(), None, "below the minimum");
    }

    #[test]
    fn a_file_that_is_not_a_ledger_is_refused() {
        let p = path("corrupt");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "{}").unwrap();
        assert!(matches!(Ledger::open(&p, 1), Err(LedgerError::Corrupt(_))));
    }
}
