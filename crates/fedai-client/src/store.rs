//! The reputation store (feature `store`): this customer's per-worker observations in an
//! embedded database (LMDB, through heed) under its data directory, kept across runs and shared
//! by every `fedai` process of the user.
//!
//! Why a database and not a file: two processes (a `fedai gateway` and a `fedai infer`, or two
//! runs) learn about workers at the same time. A file replaced by whoever saves last loses the
//! other's observations; here each save is one transaction that adds what this process
//! observed *since it loaded or last saved* to what is stored now, worker by worker (counts are
//! added; speed estimates are the newest). A crash mid-save leaves the previous state (LMDB's
//! copy-on-write commit). Bounded: at most [`crate::MAX_REMEMBERED`] workers; cooldowns and
//! others' attestations are never stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use fedai_protocol::nostr::prelude::PublicKey;
use fedai_scheduler::WorkerStats;
use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};

use crate::reputation::portable;
use crate::{ClientError, FedaiClient, MAX_REMEMBERED};

/// Map size: ~1 KB a worker, room to spare.
const MAP_SIZE: usize = 64 << 20;

/// An opened reputation store. Cheap to clone; one per directory per process.
#[derive(Clone)]
pub struct ReputationStore {
    env: Env,
    db: Database<Bytes, Bytes>,
    dir: PathBuf,
}

fn err(dir: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Storage(format!("{}: {e}", dir.display()))
}

/// Stores opened by this process, by directory: LMDB allows one environment per file per
/// process.
fn opened() -> &'static Mutex<HashMap<PathBuf, ReputationStore>> {
    static OPENED: OnceLock<Mutex<HashMap<PathBuf, ReputationStore>>> = OnceLock::new();
    OPENED.get_or_init(Default::default)
}

impl ReputationStore {
    /// Open (creating it) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ClientError> {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        let key = dir.canonicalize().map_err(|e| err(dir, e))?;
        let mut map = opened().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(&key) {
            return Ok(s.clone());
        }
        // Safety: heed's contract — the environment is opened once per process (the map above)
        // and the file is not truncated or mapped otherwise while open.
        let env = unsafe {
            EnvOpenOptions::new()
                .max_dbs(1)
                .map_size(MAP_SIZE)
                .open(&key)
                .map_err(|e| err(dir, e))?
        };
        let mut txn = env.write_txn().map_err(|e| err(dir, e))?;
        let db = env
            .database_options()
            .types::<Bytes, Bytes>()
            .name("workers")
            .create(&mut txn)
            .map_err(|e| err(dir, e))?;
        txn.commit().map_err(|e| err(dir, e))?;
        let s = ReputationStore {
            env,
            db,
            dir: key.clone(),
        };
        map.insert(key, s.clone());
        Ok(s)
    }

    /// Where it lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether nothing is stored yet.
    pub fn is_empty(&self) -> Result<bool, ClientError> {
        let txn = self.env.read_txn().map_err(|e| err(&self.dir, e))?;
        self.db.is_empty(&txn).map_err(|e| err(&self.dir, e))
    }

    /// Every worker stored.
    pub fn read_all(&self) -> Result<Vec<(PublicKey, WorkerStats)>, ClientError> {
        let txn = self.env.read_txn().map_err(|e| err(&self.dir, e))?;
        let mut out = Vec::new();
        for item in self.db.iter(&txn).map_err(|e| err(&self.dir, e))? {
            let (k, v) = item.map_err(|e| err(&self.dir, e))?;
            let (Ok(pk), Ok(s)) = (
                PublicKey::from_slice(k),
                serde_json::from_slice::<WorkerStats>(v),
            ) else {
                // A record this version cannot read is skipped, not fatal.
                continue;
            };
            out.push((pk, portable(&s)));
        }
        Ok(out)
    }

    /// Add the stored observations to `client`'s (those it already made win); how many.
    pub fn load(&self, client: &FedaiClient) -> Result<usize, ClientError> {
        let all = self.read_all()?;
        let n = all.len();
        let mut stats = client.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut base = client.baseline.lock().unwrap_or_else(|e| e.into_inner());
        for (pk, s) in all {
            if let std::collections::hash_map::Entry::Vacant(v) = stats.entry(pk) {
                base.insert(pk, s.clone());
                v.insert(s);
            }
        }
        Ok(n)
    }

    /// Add what `client` observed since it loaded (or last saved) to what is stored now, in one
    /// transaction; how many workers were written.
    pub fn save(&self, client: &FedaiClient) -> Result<usize, ClientError> {
        let mine: Vec<(PublicKey, WorkerStats)> = client
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, s)| (*k, portable(s)))
            .collect();
        let mut base = client.baseline.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = self.env.write_txn().map_err(|e| err(&self.dir, e))?;
        let mut stored = self.db.len(&txn).map_err(|e| err(&self.dir, e))? as usize;
        let mut written = 0;
        for (pk, now) in &mine {
            let was = base.get(pk).cloned().unwrap_or_default();
            if *now == was {
                continue; // nothing new from this process
            }
            let key = pk.to_bytes();
            let current: Option<WorkerStats> = self
                .db
                .get(&txn, &key)
                .map_err(|e| err(&self.dir, e))?
                .and_then(|v| serde_json::from_slice(v).ok());
            let new = current.is_none();
            if new && stored >= MAX_REMEMBERED {
                continue;
            }
            let merged = merge(current.unwrap_or_default(), &was, now);
            let value = serde_json::to_vec(&merged).map_err(|e| err(&self.dir, e))?;
            self.db
                .put(&mut txn, &key, &value)
                .map_err(|e| err(&self.dir, e))?;
            if new {
                stored += 1;
            }
            written += 1;
        }
        txn.commit().map_err(|e| err(&self.dir, e))?;
        for (pk, now) in mine {
            base.insert(pk, now);
        }
        Ok(written)
    }
}

/// `current` (stored now, perhaps with other processes' additions) plus what this process
/// added since `was`, to reach `now`.
fn merge(current: WorkerStats, was: &WorkerStats, now: &WorkerStats) -> WorkerStats {
    let add = |c: u32, w: u32, n: u32| c.saturating_add(n.saturating_sub(w));
    WorkerStats {
        verified: add(current.verified, was.verified, now.verified),
        penalty: add(current.penalty, was.penalty, now.penalty),
        spot_failed: add(current.spot_failed, was.spot_failed, now.spot_failed),
        consecutive_failures: now.consecutive_failures,
        first_token_ms: now.first_token_ms.or(current.first_token_ms),
        tokens_per_s: now.tokens_per_s.or(current.tokens_per_s),
        ..portable(now)
    }
}

impl FedaiClient {
    /// Open the reputation store in `dir` and load it into this client ([`ReputationStore`]).
    pub fn open_reputation_store(&self, dir: &Path) -> Result<ReputationStore, ClientError> {
        let s = ReputationStore::open(dir)?;
        s.load(self)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedai_protocol::Keys;

    /// Two processes (here: two clients) that loaded the same store and each learnt something
    /// both keep what the other saved; a third sees the sum.
    #[tokio::test]
    async fn concurrent_customers_merge_and_nothing_is_lost() {
        let dir = std::env::temp_dir().join(format!("fedai-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let w = Keys::generate().public_key();
        let (a, b) = (
            FedaiClient::offline(Keys::generate()),
            FedaiClient::offline(Keys::generate()),
        );
        let sa = a.open_reputation_store(&dir).unwrap();
        let sb = b.open_reputation_store(&dir).unwrap();
        let success = |c: &FedaiClient| {
            c.stats
                .lock()
                .unwrap()
                .entry(w)
                .or_default()
                .record_success(100.0, 10, 100.0)
        };
        for _ in 0..3 {
            success(&a);
        }
        b.stats
            .lock()
            .unwrap()
            .entry(w)
            .or_default()
            .record_failure(
                fedai_scheduler::Failure::Timeout,
                1_000,
                &Default::default(),
            );
        sa.save(&a).unwrap();
        sb.save(&b).unwrap();
        // Saving again adds nothing twice.
        sa.save(&a).unwrap();
        let c = FedaiClient::offline(Keys::generate());
        c.open_reputation_store(&dir).unwrap();
        let s = c.worker_stats(&w).unwrap();
        assert_eq!((s.verified, s.penalty), (3, 2), "{s:?}");
        assert_eq!(s.cooldown_until_ms, 0, "clocks are not kept");
        assert!(s.tokens_per_s.is_some());
        // More from a: only the new part is added.
        success(&a);
        sa.save(&a).unwrap();
        let d = FedaiClient::offline(Keys::generate());
        d.open_reputation_store(&dir).unwrap();
        assert_eq!(d.worker_stats(&w).unwrap().verified, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
