//! `fedai metering verify`: check a metering record against its result and request.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{JobRequest, JobResult, MeteringRecord};

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
    let t = Duration::from_secs(3);
    let metering_ev = event_arg(&client, target, "metering record").await?;
    let m = MeteringRecord::from_event(&metering_ev).context("not a valid metering record")?;
    let result_ev = client
        .fetch(Filter::new().id(m.record.result_id), t)
        .await?
        .into_iter()
        .next()
        .context("result not found")?;
    let request_ev = client
        .fetch(Filter::new().id(m.record.request_id), t)
        .await?
        .into_iter()
        .next()
        .context("request not found")?;
    let keys = ctx.keys()?;
    let result = JobResult::from_event(&result_ev, Some(&keys))
        .or_else(|_| JobResult::from_event(&result_ev, None))?;
    let check = match JobRequest::from_event(&request_ev, None) {
        Ok(req) => m.verify(&result, &req)?,
        Err(fedai_protocol::ProtocolError::NotRecipient) => {
            m.verify_sealed(&result, &request_ev)?
        }
        Err(e) => return Err(e.into()),
    };
    client.shutdown().await;
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
