//! `fedai job`: a job's events and state.

use anyhow::bail;

use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;

use crate::config::Ctx;

/// Show a job's events and state.
#[derive(clap::Args)]
pub struct Job {
    /// Request event id (hex).
    id: String,
}

impl Job {
    /// Fetch and print.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        job(ctx, &self.id).await
    }
}

async fn job(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let id = EventId::parse(id).map_err(|_| anyhow::anyhow!("not an event id"))?;
    let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
    let report = client.job_report(id).await;
    client.shutdown().await;
    let report = report?;
    if report.events.is_empty() {
        bail!("no events for {id} on {}", ctx.relays.join(", "));
    }
    for (e, what) in &report.events {
        println!(
            "{}  {}  {}…  {what}",
            e.created_at.as_secs(),
            &e.pubkey.to_hex()[..12],
            &e.id.to_hex()[..12]
        );
    }
    println!("state: {}", report.state);
    Ok(())
}
