//! `fedai quote`: collect quotes without running the job.

use std::time::Duration;

use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::JobRequest;

use crate::config::Ctx;

/// Collect quotes for a prompt from live workers without running it.
#[derive(clap::Args)]
pub struct Quote {
    /// The prompt.
    prompt: String,
    /// Model id.
    #[arg(long)]
    model: Option<String>,
    /// Maximum tokens to generate (quotes cover this many).
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// The most you would pay, msat (workers above it do not quote).
    #[arg(long, default_value_t = 1_000_000_000)]
    bid: u64,
    /// Seconds to collect quotes.
    #[arg(long, default_value_t = 2.0)]
    window: f64,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl Quote {
    /// Ask and print.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        quote(
            ctx,
            &self.prompt,
            self.model.clone(),
            self.max_tokens,
            self.bid,
            self.window,
            self.json,
        )
        .await
    }
}

async fn quote(
    ctx: &Ctx,
    prompt: &str,
    model: Option<String>,
    max_tokens: u32,
    bid: u64,
    window: f64,
    json: bool,
) -> anyhow::Result<()> {
    let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
    let mut req = JobRequest::chat(prompt.to_owned());
    req.params.model = model;
    req.params.max_tokens = Some(max_tokens);
    let quotes = client
        .quotes(req, bid, Duration::from_secs_f64(window.clamp(0.1, 60.0)))
        .await;
    client.shutdown().await;
    let quotes = quotes?;
    if json {
        let v: Vec<serde_json::Value> = quotes
            .iter()
            .map(|q| serde_json::json!({"worker": q.worker.to_bech32().unwrap_or_default(), "amount_msat": q.amount_msat, "quote": q.feedback_id.to_hex(), "bolt11": q.bolt11}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if quotes.is_empty() {
        println!("no quotes within {window} s");
    }
    for q in &quotes {
        println!(
            "{} {:>12} msat",
            q.worker.to_bech32().unwrap_or_default(),
            q.amount_msat
        );
    }
    Ok(())
}
