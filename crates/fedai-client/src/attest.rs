//! Attestations (fedai-06, NIP-32 labels): publishing this customer's word on a worker's job,
//! and weighing other customers' word into the scheduler's trust.
//!
//! Counted (each attester once per worker and verdict): every verdict from keys this customer
//! weighs (its follows), and `delivered` from anyone whose named metering record checks out —
//! signed by the worker, naming the attested request and the attester as its customer, with a
//! price above zero — so a stranger's praise costs a paid job, and a stranger's blame counts
//! for nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fedai_protocol::attestation::{Attestation, Verdict, NAMESPACE};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, MeteringRecord};

use crate::{ClientError, FedaiClient, JobOutcome};

/// Attestations read per weighing at most.
const MAX_ATTESTATIONS: usize = 5_000;
/// Metering records fetched per request.
const METERING_CHUNK: usize = 200;

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
        let f = Filter::new()
            .kind(Kind::ContactList)
            .author(self.public_key())
            .limit(1);
        let newest = self
            .fetch(f, Duration::from_secs(3))
            .await?
            .into_iter()
            .filter(|e| e.verify().is_ok())
            .max_by_key(|e| e.created_at);
        Ok(newest
            .map(|e| e.tags.public_keys().collect())
            .unwrap_or_default())
    }

    /// Read attestations and weigh them into this customer's view of workers (`vouched`,
    /// `reported` in [`fedai_scheduler::WorkerStats`]), replacing what an earlier weighing set.
    /// `trusted`: the keys whose every verdict counts (usually [`Self::follows`]).
    pub async fn weigh_attestations(&self, trusted: &[PublicKey]) -> Result<Weighed, ClientError> {
        let f = Filter::new()
            .kind(Kind::from_u16(kinds::LABEL))
            .custom_tag(
                SingleLetterTag::from_char('L').expect("L is a tag letter"),
                NAMESPACE,
            )
            .limit(MAX_ATTESTATIONS);
        let events = self.fetch(f, Duration::from_secs(5)).await?;
        let trusted: HashSet<PublicKey> = trusted.iter().copied().collect();
        let me = self.public_key();
        let mut seen: HashSet<(PublicKey, PublicKey, Verdict)> = HashSet::new();
        let mut counted: Vec<(PublicKey, Verdict)> = Vec::new();
        let mut to_check: Vec<(PublicKey, Attestation)> = Vec::new();
        let read = events.len();
        for ev in &events {
            let Ok(p) = Attestation::from_event(ev) else {
                continue;
            };
            let a = p.attestation;
            // Our own word is already in our own statistics.
            if p.attester == me || !seen.insert((p.attester, a.worker, a.verdict)) {
                continue;
            }
            if trusted.contains(&p.attester) {
                counted.push((a.worker, a.verdict));
            } else if a.verdict == Verdict::Delivered {
                to_check.push((p.attester, a));
            }
        }
        // Strangers' praise: only with a paid metering record that names them.
        let ids: Vec<EventId> = to_check.iter().filter_map(|(_, a)| a.metering_id).collect();
        let mut meterings: HashMap<EventId, fedai_protocol::metering::ParsedMetering> =
            HashMap::new();
        for chunk in ids.chunks(METERING_CHUNK) {
            let f = Filter::new()
                .kind(Kind::from_u16(kinds::METERING))
                .ids(chunk.iter().copied());
            for ev in self.fetch(f, Duration::from_secs(5)).await? {
                if let Ok(m) = MeteringRecord::from_event(&ev) {
                    meterings.insert(m.id, m);
                }
            }
        }
        for (attester, a) in to_check {
            let ok = a
                .metering_id
                .and_then(|id| meterings.get(&id))
                .is_some_and(|m| {
                    m.worker == a.worker
                        && m.record.request_id == a.request_id
                        && Some(m.record.result_id) == a.result_id
                        && m.record.customer == attester
                        && m.record.price_msat > 0
                });
            if ok {
                counted.push((a.worker, Verdict::Delivered));
            }
        }
        let mut per_worker: HashMap<PublicKey, (u32, u32)> = HashMap::new();
        for (w, v) in &counted {
            let e = per_worker.entry(*w).or_default();
            match v {
                Verdict::Delivered => e.0 += 1,
                Verdict::Failed | Verdict::Mismatch => e.1 += 1,
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
            counted: counted.len(),
            workers: per_worker.len(),
        })
    }
}
