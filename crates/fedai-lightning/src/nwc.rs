//! Paying through Nostr Wallet Connect (NIP-47): the customer's ordinary Nostr-connected wallet
//! pays; we send a `pay_invoice` request (kind 23194, NIP-44) and wait for the wallet's answer
//! (kind 23195) carrying the preimage.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use nostr::nips::nip47::{
    Method, Nip47Ciphers, NostrWalletConnectUri, PayInvoiceRequest, Request, Response,
    ResponseResult,
};
use nostr::prelude::*;
use nostr_sdk::prelude::{Client, ClientNotification};

use crate::{LnError, Payer, Preimage};

/// A NIP-47 wallet reached over its relays.
pub struct Nwc {
    uri: NostrWalletConnectUri,
    client: Client,
}

impl Nwc {
    /// Parse `nostr+walletconnect://…` and connect to its relays.
    pub async fn connect(uri: &str) -> Result<Self, LnError> {
        let uri = NostrWalletConnectUri::parse(uri)
            .map_err(|e| LnError::Connect(format!("not a wallet-connect URI: {e}")))?;
        let client = Client::default();
        for r in &uri.relays {
            client
                .add_relay(r.as_str())
                .await
                .map_err(|e| LnError::Connect(e.to_string()))?;
        }
        client.connect().and_wait(Duration::from_secs(5)).await;
        Ok(Self { uri, client })
    }

    async fn pay_inner(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout: Duration,
    ) -> Result<Preimage, LnError> {
        let req = Request::pay_invoice(PayInvoiceRequest::new(bolt11));
        let event = req
            .to_event(&self.uri, Nip47Ciphers::NIP44V2)
            .map_err(|e| LnError::Rpc(e.to_string()))?;
        let app = Keys::new(self.uri.secret.clone()).public_key();
        // Listen before sending: the answer can be fast.
        let mut notes = self.client.notifications();
        self.client
            .subscribe(
                Filter::new()
                    .kind(Kind::WalletConnectResponse)
                    .author(self.uri.public_key)
                    .pubkey(app)
                    .event(event.id),
            )
            .await
            .map_err(|e| LnError::Rpc(e.to_string()))?;
        let sent = self
            .client
            .send_event(&event)
            .await
            .map_err(|e| LnError::Rpc(e.to_string()))?;
        if sent.success.is_empty() {
            return Err(LnError::Connect(
                "no wallet relay accepted the request".into(),
            ));
        }
        let answer = tokio::time::timeout(timeout, async {
            while let Some(n) = notes.next().await {
                let ClientNotification::Event { event: ev, .. } = n else {
                    continue;
                };
                if ev.kind != Kind::WalletConnectResponse
                    || ev.pubkey != self.uri.public_key
                    || !ev.tags.event_ids().any(|id| id == event.id)
                    || ev.verify().is_err()
                {
                    continue;
                }
                return Some(
                    Response::from_event(
                        &self.uri,
                        &ev,
                        Nip47Ciphers::NIP44V2.add(Nip47Ciphers::NIP04),
                    )
                    .map_err(|e| LnError::Rpc(e.to_string())),
                );
            }
            None
        })
        .await
        .map_err(|_| LnError::PaymentFailed("the wallet did not answer in time".into()))?
        .ok_or_else(|| LnError::Connect("wallet relay connection closed".into()))??;
        if let Some(e) = answer.error {
            return Err(LnError::PaymentFailed(format!(
                "{:?}: {}",
                e.code, e.message
            )));
        }
        match answer.result {
            Some(ResponseResult::PayInvoice(p)) if answer.result_type == Method::PayInvoice => {
                // NIP-47 cannot ask for a fee limit; the most we can do is say when the wallet
                // reports paying more than ours.
                if let Some(fees) = p.fees_paid.filter(|f| *f > max_fee_msat) {
                    tracing::warn!(
                        fees_paid_msat = fees,
                        cap_msat = max_fee_msat,
                        "the NWC wallet paid more routing fees than the cap"
                    );
                }
                let bytes = hex::decode(&p.preimage)
                    .map_err(|_| LnError::Rpc("preimage is not hex".into()))?;
                bytes
                    .try_into()
                    .map_err(|_| LnError::Rpc("preimage is not 32 bytes".into()))
            }
            _ => Err(LnError::Rpc("the wallet answered another method".into())),
        }
    }
}

impl Payer for Nwc {
    fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout_secs: u32,
    ) -> BoxFuture<'_, Result<Preimage, LnError>> {
        let bolt11 = bolt11.to_owned();
        async move {
            self.pay_inner(
                &bolt11,
                max_fee_msat,
                Duration::from_secs(timeout_secs.max(1) as u64),
            )
            .await
        }
        .boxed()
    }
}
