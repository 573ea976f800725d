//! `fedai embed`: vectors for texts from a worker that embeds (kind 5060).

use std::time::Duration;

use anyhow::bail;
use fedai_client::{FedaiClient, RunOptions};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{EmbedAnswer, JobRequest};
use fedai_scheduler::Policy;

use crate::config::Ctx;
use crate::pay::PayArgs;

/// Embed texts: one vector per text, printed as JSON with the job's signed facts.
#[derive(clap::Args)]
pub struct Embed {
    /// The texts (1 to 64; each one vector).
    #[arg(required = true)]
    texts: Vec<String>,
    /// Embedding model id (see `fedai workers`); default: the chosen worker's first.
    #[arg(long)]
    model: Option<String>,
    /// Worker (npub or hex); default: picked among live ads that list kind 5060.
    #[arg(long)]
    worker: Option<String>,
    /// Encrypt the job to the worker (NIP-44).
    #[arg(long = "encrypt")]
    private: bool,
    /// Never pay more than this, msat.
    #[arg(long)]
    max_price: Option<u64>,
    /// Seconds to wait for the result.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Attempts in all (failover on error, timeout or an invalid result).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    #[command(flatten)]
    pay: PayArgs,
}

impl Embed {
    /// Run the job and print `{"model", "dimensions", "embeddings", "usage", …}`.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut req = JobRequest::embed(self.texts.clone());
        req.params.model = self.model.clone();
        req.validate()?;
        let worker = super::worker_arg(self.worker.as_deref())?;
        let timeout = Duration::from_secs(self.timeout.max(1));
        req.expiration = Some(Timestamp::from_secs(
            Timestamp::now().as_secs() + timeout.as_secs() * u64::from(self.attempts.max(1)),
        ));
        let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
        ctx.load_reputation(&client);
        let opts = RunOptions {
            policy: Policy::default(),
            max_price_msat: self.max_price.or(ctx.settings.max_price),
            private: self.private,
            timeout,
            max_attempts: self.attempts.max(1),
            worker,
            pay: self.pay.context(&ctx.settings).await?,
            ..RunOptions::default()
        };
        let outcome = client.run(req.clone(), &opts, |_| {}).await;
        ctx.save_reputation(&client);
        client.shutdown().await;
        let done = match outcome {
            Err(fedai_client::ClientError::NoWorker) => bail!(
                "no live worker embeds with model {} (see `fedai workers`: kind 5060)",
                self.model.as_deref().unwrap_or("any")
            ),
            o => o?,
        };
        // The SDK checked it before paying; read it for printing.
        let answer = EmbedAnswer::for_request(&done.output, &req.input)?;
        let m = done.metering.as_ref();
        println!(
            "{}",
            serde_json::json!({
                "model": done.result.result.model,
                "dimensions": answer.dimensions(),
                "embeddings": answer.vectors,
                "usage": {"input_tokens": done.result.result.usage.input_tokens},
                "request": done.request.id.to_hex(),
                "result": done.result.id.to_hex(),
                "worker": done.result.worker.to_bech32().unwrap_or_default(),
                "price_msat": m.map(|(m, _)| m.record.price_msat),
                "metering": m.map(|(m, _)| m.id.to_hex()),
            })
        );
        Ok(())
    }
}
