//! LND over gRPC (`fedimint-tonic-lnd`): TLS pinned to the node's own certificate, admin (or
//! invoice/payment-scoped) macaroon.

use std::path::PathBuf;

use fedimint_tonic_lnd::{invoicesrpc, lnrpc, routerrpc, Client};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::{Invoice, InvoiceBackend, InvoiceState, LnError, Payer, PaymentHash, Preimage};

/// How to reach an LND node.
#[derive(Debug, Clone)]
pub struct LndConfig {
    /// `https://host:port` of its gRPC.
    pub url: String,
    /// Its `tls.cert` (pinned: no other certificate is accepted).
    pub cert: PathBuf,
    /// A macaroon with the rights the role needs.
    pub macaroon: PathBuf,
}

/// An LND node: an [`InvoiceBackend`] for workers and a [`Payer`] for customers.
#[derive(Clone)]
pub struct Lnd {
    client: Client,
}

fn rpc(e: tonic_status::Status) -> LnError {
    LnError::Rpc(format!("{}: {}", e.code(), e.message()))
}

mod tonic_status {
    pub use fedimint_tonic_lnd::tonic::Status;
}

impl Lnd {
    /// Connect (the TLS handshake and macaroon are checked on the first call).
    pub async fn connect(cfg: &LndConfig) -> Result<Self, LnError> {
        crate::install_crypto_provider();
        let url = if cfg.url.starts_with("https://") {
            cfg.url.clone()
        } else {
            format!("https://{}", cfg.url)
        };
        let client = fedimint_tonic_lnd::connect(url, cfg.cert.clone(), cfg.macaroon.clone())
            .await
            .map_err(|e| LnError::Connect(e.to_string()))?;
        Ok(Self { client })
    }

    /// A plain invoice whose description hash is `description_hash` — what an LNURL-pay
    /// service issues (LUD-06: SHA-256 of its metadata; NIP-57: of the zap request).
    pub async fn add_invoice_hashed(
        &self,
        amount_msat: u64,
        description_hash: [u8; 32],
        expiry_secs: u64,
    ) -> Result<Invoice, LnError> {
        self.add(lnrpc::Invoice {
            description_hash: description_hash.to_vec(),
            value_msat: amount_msat as i64,
            expiry: expiry_secs as i64,
            ..Default::default()
        })
        .await
    }

    /// A settled invoice's preimage (`None` while it is not settled).
    pub async fn settled_preimage(
        &self,
        payment_hash: PaymentHash,
    ) -> Result<Option<Preimage>, LnError> {
        let inv = self.lookup(payment_hash).await?;
        if inv.state != lnrpc::invoice::InvoiceState::Settled as i32 {
            return Ok(None);
        }
        hash32(&inv.r_preimage, "preimage").map(Some)
    }

    async fn add(&self, req: lnrpc::Invoice) -> Result<Invoice, LnError> {
        let r = self
            .client
            .clone()
            .lightning()
            .add_invoice(req)
            .await
            .map_err(rpc)?
            .into_inner();
        Ok(Invoice {
            bolt11: r.payment_request,
            payment_hash: hash32(&r.r_hash, "r_hash")?,
        })
    }

    async fn lookup(&self, payment_hash: PaymentHash) -> Result<lnrpc::Invoice, LnError> {
        Ok(self
            .client
            .clone()
            .lightning()
            .lookup_invoice(lnrpc::PaymentHash {
                r_hash: payment_hash.to_vec(),
                ..Default::default()
            })
            .await
            .map_err(rpc)?
            .into_inner())
    }
}

fn hash32(v: &[u8], what: &str) -> Result<[u8; 32], LnError> {
    v.try_into()
        .map_err(|_| LnError::Rpc(format!("{what} is not 32 bytes")))
}

impl InvoiceBackend for Lnd {
    fn add_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> BoxFuture<'_, Result<Invoice, LnError>> {
        let req = lnrpc::Invoice {
            memo: memo.to_owned(),
            value_msat: amount_msat as i64,
            expiry: expiry_secs as i64,
            ..Default::default()
        };
        self.add(req).boxed()
    }

    fn add_hold_invoice(
        &self,
        payment_hash: PaymentHash,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> BoxFuture<'_, Result<Invoice, LnError>> {
        let mut c = self.client.clone();
        let req = invoicesrpc::AddHoldInvoiceRequest {
            memo: memo.to_owned(),
            hash: payment_hash.to_vec(),
            value_msat: amount_msat as i64,
            expiry: expiry_secs as i64,
            ..Default::default()
        };
        async move {
            let r = c
                .invoices()
                .add_hold_invoice(req)
                .await
                .map_err(rpc)?
                .into_inner();
            Ok(Invoice {
                bolt11: r.payment_request,
                payment_hash,
            })
        }
        .boxed()
    }

    fn invoice_state(
        &self,
        payment_hash: PaymentHash,
    ) -> BoxFuture<'_, Result<InvoiceState, LnError>> {
        async move {
            let inv = self.lookup(payment_hash).await?;
            use lnrpc::invoice::InvoiceState as S;
            Ok(match S::try_from(inv.state) {
                Ok(S::Open) => InvoiceState::Open,
                Ok(S::Accepted) => InvoiceState::Accepted,
                Ok(S::Settled) => InvoiceState::Settled,
                Ok(S::Canceled) => InvoiceState::Canceled,
                Err(_) => return Err(LnError::Rpc(format!("unknown invoice state {}", inv.state))),
            })
        }
        .boxed()
    }

    fn settle(&self, preimage: Preimage) -> BoxFuture<'_, Result<(), LnError>> {
        let mut c = self.client.clone();
        async move {
            c.invoices()
                .settle_invoice(invoicesrpc::SettleInvoiceMsg {
                    preimage: preimage.to_vec(),
                })
                .await
                .map_err(rpc)?;
            Ok(())
        }
        .boxed()
    }

    fn cancel(&self, payment_hash: PaymentHash) -> BoxFuture<'_, Result<(), LnError>> {
        let mut c = self.client.clone();
        async move {
            c.invoices()
                .cancel_invoice(invoicesrpc::CancelInvoiceMsg {
                    payment_hash: payment_hash.to_vec(),
                })
                .await
                .map_err(rpc)?;
            Ok(())
        }
        .boxed()
    }

    fn node_pubkey(&self) -> BoxFuture<'_, Result<String, LnError>> {
        let mut c = self.client.clone();
        async move {
            Ok(c.lightning()
                .get_info(lnrpc::GetInfoRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .identity_pubkey)
        }
        .boxed()
    }
}

impl Payer for Lnd {
    fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout_secs: u32,
    ) -> BoxFuture<'_, Result<Preimage, LnError>> {
        let mut c = self.client.clone();
        let req = routerrpc::SendPaymentRequest {
            payment_request: bolt11.to_owned(),
            timeout_seconds: timeout_secs.max(1) as i32,
            fee_limit_msat: max_fee_msat as i64,
            no_inflight_updates: true,
            ..Default::default()
        };
        async move {
            let mut stream = c
                .router()
                .send_payment_v2(req)
                .await
                .map_err(rpc)?
                .into_inner();
            use lnrpc::payment::PaymentStatus as S;
            while let Some(p) = stream.message().await.map_err(rpc)? {
                match S::try_from(p.status) {
                    Ok(S::Succeeded) => {
                        let pre = hex::decode(&p.payment_preimage)
                            .map_err(|_| LnError::Rpc("preimage is not hex".into()))?;
                        return hash32(&pre, "preimage");
                    }
                    Ok(S::Failed) => {
                        return Err(LnError::PaymentFailed(format!(
                            "{:?}",
                            lnrpc::PaymentFailureReason::try_from(p.failure_reason)
                                .unwrap_or(lnrpc::PaymentFailureReason::FailureReasonNone)
                        )))
                    }
                    _ => {}
                }
            }
            Err(LnError::PaymentFailed("the payment stream ended".into()))
        }
        .boxed()
    }
}
