//! `fedai receipt`: show and verify a payment receipt.

use std::time::Duration;

use anyhow::{bail, Context};
use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, MeteringRecord};

use super::event_arg;
use crate::config::Ctx;

/// Show and verify a payment receipt (event id on the relays, or a JSON file): the preimage
/// matches the payment hash, the invoice matches both, and the job's metering record carries
/// the same hash.
#[derive(clap::Args)]
pub struct Receipt {
    /// Event id (hex) or path to a JSON event.
    target: String,
}

impl Receipt {
    /// Fetch, verify, print.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        receipt(ctx, &self.target).await
    }
}

async fn receipt(ctx: &Ctx, target: &str) -> anyhow::Result<()> {
    use fedai_client::fedai_lightning::invoice::{check_receipt, ReceiptClaim};
    let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
    let ev = event_arg(&client, target, "receipt").await?;
    // The parser refuses a receipt whose SHA-256(preimage) is not its payment hash.
    let r = fedai_protocol::PaymentReceipt::from_event(&ev).context("not a valid receipt")?;
    let rc = &r.receipt;
    let meterings = client
        .fetch(
            Filter::new()
                .kind(Kind::from_u16(kinds::METERING))
                .event(rc.request_id),
            Duration::from_secs(3),
        )
        .await?;
    // The node the worker advertises: a receipt's invoice must be payable to it.
    let ads = client
        .fetch(
            Filter::new()
                .kind(Kind::from_u16(kinds::CAPABILITY_AD))
                .author(rc.worker),
            Duration::from_secs(3),
        )
        .await?;
    client.shutdown().await;
    let node = ads
        .iter()
        .filter_map(|e| fedai_protocol::CapabilityAd::from_event(e).ok())
        .find_map(|a| a.ad.payment.ln_node);
    let metered = meterings
        .iter()
        .filter_map(|e| MeteringRecord::from_event(e).ok())
        .find(|m| m.worker == rc.worker);
    // A receipt is bound to the worker by its advertised node (the invoice's payee) or by the
    // worker's own signed metering record naming the payment; with neither, a customer could
    // have paid an invoice of its own node.
    let by_metering = metered
        .as_ref()
        .is_some_and(|m| m.record.payment_hash.as_deref() == Some(rc.payment_hash.as_str()));
    // A zapped invoice is the LNURL service's, not the worker's node's: only the worker's own
    // metering record binds it (a customer can zap itself through a service of its own).
    if (rc.zap_request.is_some() || node.is_none()) && !by_metering {
        bail!(
            "cannot bind receipt {} to worker {}: no metering record of the payment{} on these relays",
            r.id.to_hex(),
            rc.worker.to_bech32()?,
            if rc.zap_request.is_some() { "" } else { " and no ad naming its Lightning node" }
        );
    }
    // The invoice backs the claim: amount, payment hash, payee, and a commitment to this job
    // (directly, or through the zap request it was paid for).
    let checked = check_receipt(&ReceiptClaim {
        bolt11: &rc.bolt11,
        amount_msat: rc.amount_msat,
        payment_hash_hex: &rc.payment_hash,
        request_id: rc.request_id,
        worker: rc.worker,
        zap_request: rc.zap_request.as_deref(),
        payee: node.as_deref().filter(|_| rc.zap_request.is_none()),
    })
    .context("the invoice does not back the receipt")?;
    println!(
        "receipt {} verified: {} msat paid{} by {} to {} for job {}; preimage matches the invoice",
        r.id.to_hex(),
        rc.amount_msat,
        if checked.by_zap { " by zap" } else { "" },
        r.customer.to_bech32()?,
        rc.worker.to_bech32()?,
        rc.request_id.to_hex()
    );
    match metered {
        Some(m) if m.record.payment_hash.as_deref() == Some(rc.payment_hash.as_str()) => println!(
            "the worker's metering record {} carries the same payment hash",
            m.id.to_hex()
        ),
        Some(m) => bail!(
            "the worker's metering record {} names another payment hash",
            m.id.to_hex()
        ),
        None => println!("no metering record from the worker found for the job"),
    }
    Ok(())
}
