//! Attestations (fedai-06, NIP-32 labels): publishing this customer's word on a worker's job,
//! and weighing other customers' word into the scheduler's trust.
//!
//! Counted: the attestations of keys this customer weighs (its follows), each attester once
//! per worker for good (`delivered`) and once for bad (`failed`, `mismatch`). Strangers count
//! for nothing: anyone can sign a label, and a worker can sign a metering record for a key of
//! its own, so a stranger's "paid job" proves nothing without a payment to someone else.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fedai_protocol::attestation::{Attestation, Verdict, NAMESPACE};
use fedai_protocol::kinds;
use fedai_protocol::nostr::prelude::*;

use crate::{ClientError, FedaiClient, JobOutcome};

/// Attestations read per query at most (one query per [`AUTHORS_PER_QUERY`] follows).
const PER_QUERY: usize = 2_000;
/// Follows per query.
const AUTHORS_PER_QUERY: usize = 500;
/// Follows read from a contact list at most.
const MAX_FOLLOWS: usize = 5_000;

/// What a weighing found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Weighed {
    /// Attestations read.
    pub read: usize,
    /// Counted (after the rules and de-duplication).
    pub counted: usize,
    /// Workers whose trust they changed.
    pub workers: usize,
}

impl FedaiClient {
    /// Publish `a`, signed by this customer.
    pub async fn attest(&self, a: &Attestation) -> Result<EventId, ClientError> {
        let ev = a.to_event(self.keys())?;
        self.send(&ev).await?;
        Ok(ev.id)
    }

    /// Attest that `outcome`'s worker delivered (it needs the metering record).
    pub async fn attest_delivered(
        &self,
        outcome: &JobOutcome,
    ) -> Result<Option<EventId>, ClientError> {
        let Some((m, _)) = &outcome.metering else {
            return Ok(None);
        };
        let a = Attestation {
            worker: outcome.result.worker,
            verdict: Verdict::Delivered,
            request_id: outcome.request.id,
            result_id: Some(outcome.result.id),
            metering_id: Some(m.id),
        };
        self.attest(&a).await.map(Some)
    }

    /// The keys this customer follows (its newest NIP-02 contact list, kind 3).
    pub async fn follows(&self) -> Result<Vec<PublicKey>, ClientError> {
        self.follows_of(self.public_key()).await
    }

    /// The keys `who` follows (its newest NIP-02 contact list, kind 3): a customer can weigh
    /// the follows of its social key while running jobs under another.
    pub async fn follows_of(&self, who: PublicKey) -> Result<Vec<PublicKey>, ClientError> {
        let f = Filter::new().kind(Kind::ContactList).author(who).limit(1);
        let newest = self
            .fetch(f, Duration::from_secs(3))
            .await?
            .into_iter()
            .filter(|e| e.verify().is_ok() && e.pubkey == who)
            .max_by_key(|e| e.created_at);
        Ok(newest
            .map(|e| e.tags.public_keys().take(MAX_FOLLOWS).collect())
            .unwrap_or_default())
    }

    /// Read the attestations of `trusted` keys (usually [`Self::follows`]) and weigh them into
    /// this customer's view of workers (`vouched`, `reported` in
    /// [`fedai_scheduler::WorkerStats`]), replacing what an earlier weighing set. Each
    /// attester counts at most once per worker for good and once for bad; strangers' word
    /// counts for nothing (anyone can sign a label, and a worker can sign a metering record for
    /// a key of its own); events dated ahead are ignored.
    pub async fn weigh_attestations(&self, trusted: &[PublicKey]) -> Result<Weighed, ClientError> {
        let trusted: Vec<PublicKey> = {
            let mut t: Vec<PublicKey> = trusted.to_vec();
            t.sort();
            t.dedup();
            t.retain(|k| *k != self.public_key());
            t
        };
        let ahead = Timestamp::now() + Duration::from_secs(60);
        let mut read = 0;
        let mut seen: HashSet<(PublicKey, PublicKey, bool)> = HashSet::new();
        let mut per_worker: HashMap<PublicKey, (u32, u32)> = HashMap::new();
        let mut counted = 0;
        for chunk in trusted.chunks(AUTHORS_PER_QUERY) {
            let f = Filter::new()
                .kind(Kind::from_u16(kinds::LABEL))
                .custom_tag(
                    SingleLetterTag::from_char('L').expect("L is a tag letter"),
                    NAMESPACE,
                )
                .authors(chunk.iter().copied())
                .until(ahead)
                .limit(PER_QUERY);
            for ev in self.fetch(f, Duration::from_secs(5)).await? {
                read += 1;
                if ev.created_at > ahead || !chunk.contains(&ev.pubkey) {
                    continue;
                }
                let Ok(p) = Attestation::from_event(&ev) else {
                    continue;
                };
                let good = p.attestation.verdict == Verdict::Delivered;
                if !seen.insert((p.attester, p.attestation.worker, good)) {
                    continue;
                }
                counted += 1;
                let e = per_worker.entry(p.attestation.worker).or_default();
                if good {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        for s in stats.values_mut() {
            s.vouched = 0;
            s.reported = 0;
        }
        for (w, (good, bad)) in &per_worker {
            let s = stats.entry(*w).or_default();
            s.vouched = *good;
            s.reported = *bad;
        }
        Ok(Weighed {
            read,
            counted,
            workers: per_worker.len(),
        })
    }
}
