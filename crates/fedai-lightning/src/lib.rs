//! # fedai-lightning
//!
//! Lightning for fed_AI, without custody: the worker's own node issues (hold) invoices and
//! settles or cancels them; the customer's node pays and keeps the preimage as its proof.
//!
//! - [`InvoiceBackend`]: the worker side — plain and hold invoices, their state, settle, cancel;
//! - [`Payer`]: the customer side — pay a BOLT11 invoice, get the preimage;
//! - [`lnd::Lnd`]: both, over LND's REST API (TLS certificate pinned, macaroon);
//! - [`bolt11`]: BOLT11 decoding and signature checks on the `secp256k1` nostr uses;
//! - [`invoice::check`]: a BOLT11 invoice checked against the quote before paying (signature,
//!   amount, expiry, network, payee, and a description that commits to the job request);
//! - [`lnurl`]: LNURL-pay and lightning addresses (LUD-06, LUD-16), where zaps are paid;
//! - [`zap`]: NIP-57 zaps of a job request as its payment — the zap request, the receipt an
//!   LNURL service publishes, and the worker's checks of that receipt;
//! - [`payment`]: the worker's escrow and the customer's spend as sans-IO state machines;
//! - [`preimage_for`]: a hold invoice's preimage derived from the worker's secret and the request
//!   id, so a stateless worker can settle after a restart.

pub mod bolt11;
pub mod invoice;
#[cfg(feature = "lnd")]
pub mod lnd;
#[cfg(feature = "lnurl")]
pub mod lnurl;
#[cfg(feature = "http")]
pub mod netguard;
#[cfg(feature = "nwc")]
pub mod nwc;
pub mod payment;
pub mod zap;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

/// Lightning failures.
#[derive(Debug, thiserror::Error)]
pub enum LnError {
    /// Cannot reach or authenticate to the node.
    #[error("lightning node unreachable: {0}")]
    Connect(String),
    /// The node refused an RPC.
    #[error("lightning node error: {0}")]
    Rpc(String),
    /// A payment failed (no route, timeout, …).
    #[error("payment failed: {0}")]
    PaymentFailed(String),
    /// An invoice failed a check.
    #[error("invoice refused: {0}")]
    Invoice(String),
    /// An LNURL-pay endpoint could not be used.
    #[error("LNURL: {0}")]
    Lnurl(String),
    /// A zap request or receipt failed a check.
    #[error("zap refused: {0}")]
    Zap(String),
}

/// A 32-byte payment hash.
pub type PaymentHash = [u8; 32];
/// A 32-byte preimage.
pub type Preimage = [u8; 32];

/// An invoice the node issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    /// BOLT11.
    pub bolt11: String,
    /// Its payment hash.
    pub payment_hash: PaymentHash,
}

/// Where an invoice stands on the issuing node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceState {
    /// Not paid.
    Open,
    /// A hold invoice whose HTLC arrived and is held: the money is locked, not yet ours.
    Accepted,
    /// Paid (for a hold invoice: settled with the preimage).
    Settled,
    /// Cancelled: the payer's HTLC was failed back; nothing was charged.
    Canceled,
}

/// The worker's side: issue invoices and act on them.
pub trait InvoiceBackend: Send + Sync {
    /// A plain invoice for `amount_msat`.
    fn add_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> BoxFuture<'_, Result<Invoice, LnError>>;
    /// A hold invoice for `payment_hash`: the payment stays locked until [`Self::settle`] or
    /// [`Self::cancel`].
    fn add_hold_invoice(
        &self,
        payment_hash: PaymentHash,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> BoxFuture<'_, Result<Invoice, LnError>>;
    /// The invoice's state.
    fn invoice_state(
        &self,
        payment_hash: PaymentHash,
    ) -> BoxFuture<'_, Result<InvoiceState, LnError>>;
    /// Claim a held payment.
    fn settle(&self, preimage: Preimage) -> BoxFuture<'_, Result<(), LnError>>;
    /// Fail a held payment back to the payer (or close an unpaid invoice).
    fn cancel(&self, payment_hash: PaymentHash) -> BoxFuture<'_, Result<(), LnError>>;
    /// The node's public key (hex), as advertised in the worker's ad.
    fn node_pubkey(&self) -> BoxFuture<'_, Result<String, LnError>>;
    /// Wait until the invoice leaves `Open` (held, settled or cancelled), for at most
    /// `timeout`; `Ok(None)` when it is still open then. The default asks every 100 ms;
    /// backends that can push state changes (LND's invoice subscription) override it.
    fn wait_past_open(
        &self,
        payment_hash: PaymentHash,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<Option<InvoiceState>, LnError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let s = self.invoice_state(payment_hash).await?;
                if s != InvoiceState::Open {
                    return Ok(Some(s));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    }
}

/// The customer's side: pay.
pub trait Payer: Send + Sync {
    /// Pay `bolt11` (at most `max_fee_msat` in fees) and return the preimage. For a hold
    /// invoice this returns only once the payee settles.
    fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout_secs: u32,
    ) -> BoxFuture<'_, Result<Preimage, LnError>>;
}

/// Install ring as the process's rustls crypto provider (no-op when one is installed): LND's
/// REST client and the LNURL HTTP client both build their TLS from it.
#[cfg(feature = "http")]
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// SHA-256 of a preimage: its payment hash.
pub fn payment_hash(preimage: &Preimage) -> PaymentHash {
    Sha256::digest(preimage).into()
}

/// The preimage of a job's hold invoice: HMAC-SHA256(worker secret, "fedai-preimage" ‖ request
/// id). Deterministic, so a worker that restarts between the customer's payment and delivery can
/// still settle; unpredictable to anyone without the worker's secret.
pub fn preimage_for(worker_secret: &[u8; 32], request_id: &[u8; 32]) -> Preimage {
    hmac_sha256(worker_secret, &[b"fedai-preimage", request_id])
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`, for keys up to 64 bytes: written out,
/// one dependency fewer.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    assert!(
        key.len() <= 64,
        "longer keys are hashed first; not needed here"
    );
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let (mut ipad, mut opad) = ([0x36u8; 64], [0x5cu8; 64]);
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let mut inner = Sha256::new().chain_update(ipad);
    for p in parts {
        inner.update(p);
    }
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner.finalize())
        .finalize()
        .into()
}

/// The invoice description that commits an invoice to a job request.
pub fn job_memo(request_id_hex: &str) -> String {
    format!("fedai job {request_id_hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preimage_is_deterministic_per_request_and_secret() {
        let (s1, s2) = ([1u8; 32], [2u8; 32]);
        let (r1, r2) = ([7u8; 32], [8u8; 32]);
        assert_eq!(preimage_for(&s1, &r1), preimage_for(&s1, &r1));
        assert_ne!(preimage_for(&s1, &r1), preimage_for(&s1, &r2));
        assert_ne!(preimage_for(&s1, &r1), preimage_for(&s2, &r1));
        let p = preimage_for(&s1, &r1);
        assert_eq!(payment_hash(&p), <[u8; 32]>::from(Sha256::digest(p)));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 1 and 2.
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], &[b"Hi ", b"There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", &[b"what do ya want for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
