//! `fedai metering verify`: check a metering record against its result and request.

use clap::Subcommand;
use fedai_client::verify::VerifiedMetering;
use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;

use super::event_arg;
use crate::config::Ctx;

/// Metering records.
#[derive(clap::Args)]
pub struct Metering {
    #[command(subcommand)]
    cmd: MeteringCmd,
}

#[derive(Subcommand)]
pub enum MeteringCmd {
    /// Verify a metering record (event id on the relays, or a JSON file) against its result and request.
    Verify {
        /// Event id (hex) or path to a JSON event.
        target: String,
    },
}

impl Metering {
    /// Run the subcommand.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        match &self.cmd {
            MeteringCmd::Verify { target } => metering_verify(ctx, target).await,
        }
    }
}

async fn metering_verify(ctx: &Ctx, target: &str) -> anyhow::Result<()> {
    let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
    let ev = event_arg(&client, target, "metering record").await;
    let verified = match ev {
        Ok(ev) => client.verify_metering(&ev).await.map_err(Into::into),
        Err(e) => Err(e),
    };
    client.shutdown().await;
    let VerifiedMetering { metering: m, check } = verified?;
    println!(
        "metering {} verified: worker {}, {} in / {} out tokens, {} msat, prompt hash {}",
        m.id.to_hex(),
        m.worker.to_bech32()?,
        m.record.usage.input_tokens,
        m.record.usage.output_tokens,
        m.record.price_msat,
        if check.prompt_checked {
            "checked"
        } else {
            "not checked (private job)"
        }
    );
    Ok(())
}
