//! `fedai workers`: the live workers, from their ads.

use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;

use crate::config::Ctx;

/// List live workers (models, prices, load, age) and what you learnt of each (verified jobs,
/// failures, trust), from your reputation file.
#[derive(clap::Args)]
pub struct Workers {
    /// JSON output.
    #[arg(long)]
    json: bool,
}

impl Workers {
    /// Fetch and print.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        workers(ctx, self.json).await
    }
}

async fn workers(ctx: &Ctx, json: bool) -> anyhow::Result<()> {
    let client = FedaiClient::connect(&ctx.relays, Keys::generate()).await?;
    ctx.load_reputation(&client);
    let ads = client.workers().await?;
    // What this customer learnt of each worker, from earlier runs.
    let known: std::collections::HashMap<PublicKey, fedai_scheduler::WorkerStats> = ads
        .iter()
        .filter_map(|a| Some((a.worker, client.worker_stats(&a.worker)?)))
        .collect();
    client.shutdown().await;
    let seen = |w: &PublicKey| known.get(w).cloned().unwrap_or_default();
    let now = Timestamp::now().as_secs();
    if json {
        let v: Vec<serde_json::Value> = ads.iter().map(|a| serde_json::json!({
            "worker": a.worker.to_bech32().unwrap_or_default(), "instance": a.ad.instance,
            "models": a.ad.models.iter().map(|m| &m.id).collect::<Vec<_>>(),
            "prices": a.ad.prices.iter().map(|p| serde_json::json!({"model": p.model, "base_msat": p.base_msat, "per_1k_in_msat": p.per_1k_input_msat, "per_1k_out_msat": p.per_1k_output_msat})).collect::<Vec<_>>(),
            "in_flight": a.ad.in_flight, "max_concurrent": a.ad.max_concurrent, "runner": a.ad.runner,
            "age_secs": now.saturating_sub(a.created_at.as_secs()),
            "features": a.ad.features,
            "job_kinds": a.ad.job_kinds,
            "seen": {"verified": seen(&a.worker).verified, "penalty": seen(&a.worker).penalty, "spot_failed": seen(&a.worker).spot_failed, "trust": seen(&a.worker).trust(), "first_token_ms": seen(&a.worker).first_token_ms},
        })).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if ads.is_empty() {
        println!("no live workers on {}", ctx.relays.join(", "));
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<34} {:<22} {:>6} {:>5} {:>12}",
        "worker", "runner", "models", "price msat (base/in/out)", "load", "age", "ok/bad trust"
    );
    for a in &ads {
        let npub = a.worker.to_bech32().unwrap_or_default();
        let mut models: Vec<&str> = a.ad.models.iter().map(|m| m.id.as_str()).collect();
        // An embedder says so by its models.
        if a.ad.job_kinds == [fedai_protocol::kinds::EMBED_REQUEST] {
            models.push("(embeddings)");
        }
        let price =
            a.ad.prices
                .first()
                .map(|p| {
                    format!(
                        "{}/{}/{}",
                        p.base_msat, p.per_1k_input_msat, p.per_1k_output_msat
                    )
                })
                .unwrap_or_else(|| "-".into());
        let s = seen(&a.worker);
        println!(
            "{:<20} {:<10} {:<34} {:<22} {:>6} {:>4}s {:>12}",
            format!("{}…", &npub[..16]),
            a.ad.runner,
            models.join(","),
            price,
            format!("{}/{}", a.ad.in_flight, a.ad.max_concurrent),
            now.saturating_sub(a.created_at.as_secs()),
            format!(
                "{}/{} {:.2}{}",
                s.verified,
                s.penalty,
                s.trust(),
                if s.spot_failed > 0 { " ⚠spot" } else { "" }
            )
        );
    }
    Ok(())
}
