//! What this customer has seen of workers, kept across runs: the scheduler's trust input
//! (verified jobs, failure penalties) and its latency and speed estimates, in a file.
//!
//! A process starts with what earlier runs learnt ([`FedaiClient::load_reputation`]) and
//! writes back what it added ([`FedaiClient::save_reputation`]) — to the embedded store shared
//! by concurrent processes (feature `store`, [`crate::ReputationStore`]) or a JSON file: a worker that failed
//! yesterday is not trusted afresh today. Cooldowns and "busy" marks are moments in one
//! process's clock and are not kept. The file holds at most [`MAX_REMEMBERED`] workers (the most
//! observed first), is replaced atomically, and a file that does not parse is refused, not
//! overwritten.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use fedai_protocol::nostr::prelude::PublicKey;
use fedai_scheduler::WorkerStats;

use crate::{ClientError, FedaiClient};

/// Workers remembered at most.
pub const MAX_REMEMBERED: usize = 10_000;

/// The file's layout: `{"version": 1, "workers": {"<hex pubkey>": WorkerStats}}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    version: u32,
    workers: BTreeMap<String, WorkerStats>,
}

fn storage(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Storage(format!("{}: {e}", path.display()))
}

/// The customer's data directory: `$XDG_DATA_HOME/fedai`, or `~/.local/share/fedai` (empty
/// variables count as unset), or `./fedai` without either. The reputation file lives here,
/// and so does `fedai gateway`'s budget ledger.
pub fn data_dir() -> PathBuf {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_DATA_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("fedai")
}

/// Where a customer's reputation lives by default: the store `reputation/` in [`data_dir`]
/// (feature `store`), or the file `reputation.json` there.
pub fn default_reputation_path() -> PathBuf {
    if cfg!(feature = "store") {
        data_dir().join("reputation")
    } else {
        data_dir().join("reputation.json")
    }
}

/// Whether `path` names the embedded store (a directory) rather than a JSON file.
#[cfg(feature = "store")]
fn is_store(path: &Path) -> bool {
    path.extension().is_none_or(|e| e != "json")
}

/// A process-independent copy of `s`: its clock-bound fields cleared.
pub(crate) fn portable(s: &WorkerStats) -> WorkerStats {
    WorkerStats {
        last_failure_ms: None,
        cooldown_until_ms: 0,
        busy_until_ms: 0,
        // Others' word is fetched again each run, never kept as our own.
        vouched: 0,
        reported: 0,
        ..s.clone()
    }
}

impl FedaiClient {
    /// Add the observations saved at `path` to this client's (a missing file is an empty
    /// one); how many workers it named. Observations this process already made win.
    ///
    /// With the feature `store`, a path without `.json` is the embedded store
    /// ([`crate::ReputationStore`]); an empty store first takes in the `reputation.json` beside
    /// it, once (the file of earlier versions).
    pub fn load_reputation(&self, path: &Path) -> Result<usize, ClientError> {
        #[cfg(feature = "store")]
        if is_store(path) {
            let store = crate::ReputationStore::open(path)?;
            let legacy = path.with_file_name("reputation.json");
            if legacy.exists() && store.is_empty()? {
                self.load_json(&legacy)?;
                store.save(self)?;
            }
            return store.load(self);
        }
        self.load_json(path)
    }

    fn load_json(&self, path: &Path) -> Result<usize, ClientError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(storage(path, e)),
        };
        let file: File = serde_json::from_str(&text).map_err(|e| storage(path, e))?;
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        for (key, s) in file.workers.into_iter().take(MAX_REMEMBERED) {
            if let Ok(pk) = PublicKey::from_hex(&key) {
                stats.entry(pk).or_insert_with(|| portable(&s));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Write this client's observations to `path` (a temporary file renamed over it), or,
    /// for the store, add what it observed since it loaded or last saved.
    pub fn save_reputation(&self, path: &Path) -> Result<(), ClientError> {
        #[cfg(feature = "store")]
        if is_store(path) {
            return crate::ReputationStore::open(path)?.save(self).map(drop);
        }
        let mut ranked: Vec<(PublicKey, WorkerStats)> = {
            let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            stats
                .iter()
                .map(|(k, s)| (*k, portable(s)))
                // Nothing observed (a worker only others spoke of): nothing to keep.
                .filter(|(_, s)| *s != WorkerStats::default())
                .collect()
        };
        // The most observed first: those are what the bound keeps.
        ranked.sort_by_key(|(_, s)| std::cmp::Reverse(s.verified.saturating_add(s.penalty)));
        ranked.truncate(MAX_REMEMBERED);
        let file = File {
            version: 1,
            workers: ranked.into_iter().map(|(k, s)| (k.to_hex(), s)).collect(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| storage(path, e))?;
        }
        // One temporary file per process: two `fedai` runs saving at once must not write into
        // each other's.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let body = serde_json::to_vec(&file).map_err(|e| storage(path, e))?;
        let mut f = std::fs::File::create(&tmp).map_err(|e| storage(path, e))?;
        f.write_all(&body).map_err(|e| storage(path, e))?;
        f.sync_all().map_err(|e| storage(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| storage(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::Keys;

    async fn client() -> FedaiClient {
        // No relay is reached: the reputation never touches the network.
        FedaiClient::offline(Keys::generate())
    }

    #[tokio::test]
    async fn what_a_run_learnt_is_there_in_the_next_and_clocks_are_not_kept() {
        let dir = std::env::temp_dir().join(format!("fedai-rep-{}", std::process::id()));
        let path = dir.join("reputation.json");
        let (good, bad) = (Keys::generate().public_key(), Keys::generate().public_key());
        let first = client().await;
        {
            let mut s = first.stats.lock().unwrap();
            let g = s.entry(good).or_default();
            g.record_success(120.0, 40, 400.0);
            g.record_success(100.0, 40, 400.0);
            let b = s.entry(bad).or_default();
            b.penalty = 4;
            b.consecutive_failures = 1;
            b.cooldown_until_ms = 99_999;
            b.last_failure_ms = Some(5);
        }
        first.save_reputation(&path).unwrap();

        let next = client().await;
        assert_eq!(next.load_reputation(&path).unwrap(), 2);
        let g = next.worker_stats(&good).unwrap();
        assert_eq!(g.verified, 2);
        assert!(g.first_token_ms.is_some() && g.tokens_per_s.is_some());
        let b = next.worker_stats(&bad).unwrap();
        assert_eq!((b.penalty, b.consecutive_failures), (4, 1));
        assert_eq!((b.cooldown_until_ms, b.last_failure_ms), (0, None));
        assert!(b.trust() < g.trust());

        // A file that is not a reputation is refused, and left alone.
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            next.load_reputation(&path),
            Err(ClientError::Storage(_))
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{not json");
        // A missing file is an empty one.
        assert_eq!(next.load_reputation(&dir.join("none.json")).unwrap(), 0);
    }
}
