//! Storage quotas: how many bytes the store may hold, and how fast one pubkey may fill it.
//!
//! - **Global.** The store's size is tracked as (events stored, counted exactly by the store at
//!   every retention sweep) × (average stored event size) + the bytes of every event accepted
//!   since. Past 90 % of `--max-store-mib` the relay keeps the rest for the market: only fed_AI's
//!   kinds and deletions are stored, other kinds are refused; at 100 % only deletions are. The
//!   refusal is `OK false "error: storage full: …"` for the write that does not fit — every
//!   other write is unaffected, and nothing already accepted is lost (the LMDB map, sized above
//!   the quota, never fills, so a group commit never fails for an innocent event batched with
//!   an offender's).
//! - **The LMDB map.** The store's file holds more than the events' JSON: its indexes (one entry
//!   per tag value, author, kind, …) took 2.15× the JSON for 1.3 KB notes and 9× for small
//!   tag-heavy job requests. The relay learns that ratio from the file as it grows and refuses
//!   writes the same way (market kinds only past 75% of the map, only deletions past 85%), so
//!   the map never fills — whatever `--max-store-mib` says.
//! - **Per pubkey.** Each key may store `--pubkey-quota-mib` per day (a byte bucket refilled
//!   continuously); past it, `OK false "rate-limited: storage quota: …"`. Keys are free, so this
//!   bounds one identity; the global quota and the global write bound bound everyone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fedai_protocol::kinds::FEDAI_KINDS;
use nostr_database::prelude::NostrDatabase;
use nostr_sdk::prelude::{Event, Filter, Kind, MachineReadablePrefix, PublicKey};

use crate::metrics::Metrics;
use fedai_limit::KeyedLimiter;

/// Share of the global quota open to every kind; the rest is kept for the market's kinds.
const OPEN_SHARE: f64 = 0.9;
/// Average event size assumed before any is measured.
const DEFAULT_AVG: u64 = 1024;
/// File bytes per JSON byte assumed until measured (×1000).
const DEFAULT_RATIO: u64 = 10_000;
/// The ratio is measured once the events' JSON is this large (below it LMDB's fixed overhead
/// dominates).
const RATIO_FROM: u64 = 1 << 20;
/// Share of the map open to every kind, and the share past which only deletions are stored.
/// (LMDB copies the pages a commit touches: the rest is its room to work.)
const MAP_OPEN: f64 = 0.75;
const MAP_FULL: f64 = 0.85;

/// Why a write does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// NIP-01 prefix.
    pub prefix: MachineReadablePrefix,
    /// Reason for the client.
    pub message: String,
    /// Metric label.
    pub reason: &'static str,
}

/// The quotas.
pub struct Quota {
    max_store: u64,
    base: AtomicU64,
    added: AtomicU64,
    /// Bytes of writes admitted and not yet committed: a client that pipelines writes cannot
    /// get a whole pipeline past a quota that only its committed writes would count against.
    pending: AtomicU64,
    avg: AtomicU64,
    per_key: Option<KeyedLimiter<PublicKey>>,
    per_key_bytes: u64,
    map: Option<Map>,
    metrics: Arc<Metrics>,
}

/// The LMDB file and map the store lives in.
struct Map {
    file: std::path::PathBuf,
    size: u64,
    /// File bytes per JSON byte, ×1000.
    ratio: AtomicU64,
    /// The file's size when the ratio was last measured.
    disk: AtomicU64,
    stores: AtomicU64,
}

/// Bytes the file takes on disk (allocated blocks: LMDB's file is sparse).
fn allocated(file: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).ok().map(|m| m.blocks() * 512)
}

/// Kinds stored past the open share: what the market needs to keep working.
fn is_market(kind: Kind) -> bool {
    FEDAI_KINDS.contains(&kind.as_u16()) || kind == Kind::EventDeletion
}

impl Quota {
    /// `max_store` bytes in all (0: unbounded); `per_key_per_day` bytes per pubkey per day (0:
    /// unbounded).
    pub fn new(max_store: u64, per_key_per_day: u64, metrics: Arc<Metrics>) -> Self {
        Self::with_map(max_store, per_key_per_day, None, metrics)
    }

    /// As [`Quota::new`], also keeping the LMDB map in `dir` (of `map_size` bytes) from filling.
    pub fn with_map(
        max_store: u64,
        per_key_per_day: u64,
        map: Option<(std::path::PathBuf, u64)>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let per_key = (per_key_per_day > 0).then(|| {
            KeyedLimiter::with_rate(per_key_per_day as f64, per_key_per_day as f64 / 86_400.0)
        });
        metrics.set_store_limit_bytes(max_store);
        Self {
            max_store,
            base: AtomicU64::new(0),
            added: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            avg: AtomicU64::new(DEFAULT_AVG),
            per_key,
            per_key_bytes: per_key_per_day,
            map: map.map(|(dir, size)| Map {
                file: dir.join("data.mdb"),
                size,
                ratio: AtomicU64::new(DEFAULT_RATIO),
                disk: AtomicU64::new(0),
                stores: AtomicU64::new(0),
            }),
            metrics,
        }
    }

    /// Map bytes the store would take with `extra` more JSON bytes (writes in flight counted).
    fn map_use(&self, map: &Map, extra: u64) -> f64 {
        (self.used() + self.pending.load(Ordering::Relaxed) + extra) as f64
            * map.ratio.load(Ordering::Relaxed) as f64
            / 1000.0
    }

    /// Learn the file-to-JSON ratio from the file, when it has grown: LMDB grows its file only
    /// once no freed page is left to reuse, so then the file is what the events take. (After a
    /// sweep deletes events the file keeps its size and its free pages are reused: the ratio
    /// measured before stays.)
    fn measure_map(&self, map: &Map) {
        let Some(disk) = allocated(&map.file) else {
            return;
        };
        self.metrics.set_store_disk_bytes(disk);
        let json = self.used();
        if disk > map.disk.load(Ordering::Relaxed) && json >= RATIO_FROM {
            let ratio = disk.saturating_mul(1000) / json;
            map.ratio.store(ratio.max(1000), Ordering::Relaxed);
            map.disk.store(disk, Ordering::Relaxed);
        }
    }

    /// Bytes stored now (estimate).
    pub fn used(&self) -> u64 {
        self.base.load(Ordering::Relaxed) + self.added.load(Ordering::Relaxed)
    }

    /// Whether an event of `size` bytes (its JSON) may be stored now. Charges its author's
    /// daily quota and reserves its bytes when it may: the caller then says how the write
    /// ended ([`stored`](Self::stored) or [`released`](Self::released)).
    pub fn check(&self, event: &Event, size: usize) -> Result<(), Refusal> {
        self.fits(event, size)?;
        self.pending.fetch_add(size as u64, Ordering::Relaxed);
        Ok(())
    }

    /// A write reserved by [`check`](Self::check) was not stored (a duplicate, a deleted event,
    /// a failed commit).
    pub fn released(&self, size: usize) {
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(size as u64))
            });
    }

    fn fits(&self, event: &Event, size: usize) -> Result<(), Refusal> {
        let size = size as u64;
        if self.max_store > 0 && event.kind != Kind::EventDeletion {
            let used = self.used() + self.pending.load(Ordering::Relaxed) + size;
            let open = (self.max_store as f64 * OPEN_SHARE) as u64;
            if used > self.max_store || (used > open && !is_market(event.kind)) {
                let message = if used > self.max_store {
                    "storage full: this relay stores no more events until old ones expire"
                        .to_owned()
                } else {
                    format!(
                        "storage full: this relay keeps its last {}% for fed_AI market events",
                        ((1.0 - OPEN_SHARE) * 100.0).round()
                    )
                };
                return Err(Refusal {
                    prefix: MachineReadablePrefix::Error,
                    message,
                    reason: "storage-full",
                });
            }
        }
        if let (Some(map), true) = (&self.map, event.kind != Kind::EventDeletion) {
            let using = self.map_use(map, size);
            let full = using > map.size as f64 * MAP_FULL;
            if full || (using > map.size as f64 * MAP_OPEN && !is_market(event.kind)) {
                return Err(Refusal {
                    prefix: MachineReadablePrefix::Error,
                    message: "storage full: the store's file is near its map size".into(),
                    reason: "storage-full",
                });
            }
        }
        if let Some(l) = &self.per_key {
            if !l.allow_n(&event.pubkey, size) {
                return Err(Refusal {
                    prefix: MachineReadablePrefix::RateLimited,
                    message: format!(
                        "storage quota: this pubkey stored {} MiB in the last day",
                        self.per_key_bytes / (1024 * 1024)
                    ),
                    reason: "storage-quota",
                });
            }
        }
        Ok(())
    }

    /// An event of `size` bytes (its JSON) was stored.
    pub fn stored(&self, size: usize) {
        self.released(size);
        let size = size as u64;
        self.added.fetch_add(size, Ordering::Relaxed);
        // Moving average over the last ~100 events.
        let avg = self.avg.load(Ordering::Relaxed) as i64;
        let next = avg + (size as i64 - avg) / 64;
        self.avg.store(next.max(1) as u64, Ordering::Relaxed);
        self.metrics.set_store_bytes(self.used());
        if let Some(map) = &self.map {
            // A stat every 64 stores: the ratio follows the file while a burst grows it.
            if map.stores.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
                self.measure_map(map);
            }
        }
    }

    /// Re-base on the store's exact event count (after a sweep deleted some).
    pub fn recount(&self, events: usize) {
        self.base.store(
            events as u64 * self.avg.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.added.store(0, Ordering::Relaxed);
        self.metrics.set_store_bytes(self.used());
        self.metrics.set_stored_events(events as u64);
        if let Some(map) = &self.map {
            self.measure_map(map);
        }
    }

    /// Measure the average size on the newest stored events and count them all.
    pub async fn measure(&self, db: &dyn NostrDatabase) {
        if let Ok(sample) = db.query(Filter::new().limit(1000)).await {
            if !sample.is_empty() {
                let total: usize = sample.iter().map(|e| e.as_json().len()).sum();
                self.avg
                    .store((total / sample.len()).max(1) as u64, Ordering::Relaxed);
            }
        }
        match db.count(Filter::new()).await {
            Ok(n) => self.recount(n),
            Err(e) => tracing::warn!(error = %e, "cannot count stored events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::*;

    fn ev(kind: u16, keys: &Keys) -> Event {
        EventBuilder::new(Kind::from_u16(kind), "x")
            .finalize(keys)
            .unwrap()
    }

    #[test]
    fn past_the_open_share_only_market_kinds_and_deletions_are_stored() {
        let q = Quota::new(100_000, 0, Arc::new(Metrics::default()));
        let k = Keys::generate();
        q.recount(0);
        q.stored(89_000);
        assert!(q.check(&ev(1, &k), 500).is_ok(), "below 90 %");
        q.stored(1_500);
        let r = q.check(&ev(1, &k), 500).unwrap_err();
        assert_eq!(r.prefix, MachineReadablePrefix::Error);
        assert!(r.message.starts_with("storage full"), "{r:?}");
        assert!(q.check(&ev(5050, &k), 500).is_ok(), "market kinds go on");
        q.stored(9_600);
        assert!(q.check(&ev(5050, &k), 500).is_err(), "full is full");
        assert!(q.check(&ev(5, &k), 500).is_ok(), "deletions free space");
        // A sweep deleted most events: writes are open again.
        q.recount(10);
        assert!(q.check(&ev(1, &k), 500).is_ok());
    }

    /// Writes admitted but not yet committed count: a client pipelining a burst of writes
    /// cannot get the whole burst past the quota (the store overshot by a pipeline before).
    #[test]
    fn writes_in_flight_count_against_the_quota() {
        let q = Quota::new(10_000, 0, Arc::new(Metrics::default()));
        let k = Keys::generate();
        q.recount(0);
        let admitted = (0..20)
            .filter(|_| q.check(&ev(1, &k), 1_000).is_ok())
            .count();
        assert_eq!(admitted, 9, "90% of 10,000 bytes, none committed yet");
        // A duplicate (or a failed commit) gives its bytes back; a stored event keeps them.
        q.released(1_000);
        assert!(q.check(&ev(1, &k), 1_000).is_ok());
        for _ in 0..9 {
            q.stored(1_000);
        }
        assert!(q.check(&ev(1, &k), 1_000).is_err());
    }

    /// The map guard learns how much file each JSON byte takes and keeps the last 20% of the
    /// map for market kinds and deletions, whatever the JSON quota says.
    #[test]
    fn the_map_never_fills_whatever_the_json_quota() {
        let dir = std::env::temp_dir().join(format!("fedai-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A 10 MB file for ~1 MB of JSON: ratio 10 (the default, before measuring).
        std::fs::write(dir.join("data.mdb"), vec![1u8; 10 << 20]).unwrap();
        let q = Quota::with_map(
            0,
            0,
            Some((dir.clone(), 40 << 20)),
            Arc::new(Metrics::default()),
        );
        let k = Keys::generate();
        q.recount(0);
        q.stored(2 << 20); // 2 MiB of JSON: ratio measured 5 (10 MB / 2 MiB).
        assert!(q.check(&ev(1, &k), 1_000).is_ok(), "10 MB of a 40 MB map");
        q.stored(4 << 20); // 6.x MiB of JSON × 5 = 31 MiB: past 75% of 40.
        let r = q.check(&ev(1, &k), 1_000).unwrap_err();
        assert!(r.message.contains("map size"), "{r:?}");
        assert!(q.check(&ev(5050, &k), 1_000).is_ok(), "market kinds go on");
        q.stored(1 << 20); // 7.x MiB × 5 = 36 MiB: past 85%.
        assert!(q.check(&ev(5050, &k), 1_000).is_err());
        assert!(q.check(&ev(5, &k), 1_000).is_ok(), "deletions still");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_pubkey_cannot_take_more_than_its_daily_bytes() {
        let q = Quota::new(0, 10_000, Arc::new(Metrics::default()));
        let (a, b) = (Keys::generate(), Keys::generate());
        for _ in 0..10 {
            assert!(q.check(&ev(1, &a), 1_000).is_ok());
        }
        let r = q.check(&ev(1, &a), 1_000).unwrap_err();
        assert_eq!(r.prefix, MachineReadablePrefix::RateLimited);
        assert!(r.message.starts_with("storage quota"), "{r:?}");
        assert!(q.check(&ev(1, &b), 1_000).is_ok(), "other keys unaffected");
    }
}
