//! `fedai receipt`: show and verify a payment receipt.

use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;

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
    let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
    let ev = event_arg(&client, target, "receipt").await;
    let verified = match ev {
        Ok(ev) => client.verify_receipt(&ev).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    client.shutdown().await;
    let v = verified?;
    let (r, rc) = (&v.receipt, &v.receipt.receipt);
    println!(
        "receipt {} verified: {} msat paid{} by {} to {} for job {}; preimage matches the invoice",
        r.id.to_hex(),
        rc.amount_msat,
        if v.by_zap { " by zap" } else { "" },
        r.customer.to_bech32()?,
        rc.worker.to_bech32()?,
        rc.request_id.to_hex()
    );
    match v.metering {
        Some(id) => println!(
            "the worker's metering record {} carries the same payment hash",
            id.to_hex()
        ),
        None => println!("no metering record from the worker found for the job"),
    }
    Ok(())
}
