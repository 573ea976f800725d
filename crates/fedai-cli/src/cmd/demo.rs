//! `fedai demo`: everything in one process tree — an embedded relay (memory), a worker, and a
//! real llama.cpp server with SmolLM2-135M (installed and cached by `workers/runner/setup.sh`) —
//! then one job through them.

use std::sync::Arc;
use std::time::Duration;

use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;
use fedai_relay::{RelayConfig, RelayServer};
use fedai_runners::local::{LocalLlamaServer, LocalModel};
use fedai_worker::{metrics::Metrics, Cli as WorkerCli, Worker};

/// Model id the demo serves.
pub const DEMO_MODEL: &str = "smollm2-135m-instruct";

/// Start a relay, a worker and a real llama.cpp model in this process, and run one job.
#[derive(clap::Args)]
pub struct Demo {
    /// Prompt to run.
    #[arg(long, default_value = "In one sentence, what is a relay?")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// After the answer, keep the relay, worker and model running (until Ctrl-C) to watch the
    /// market in the dashboard and send more jobs (`fedai --relay <url> infer …`).
    #[arg(long)]
    keep: bool,
}

impl Demo {
    /// Bring everything up and run the job.
    pub async fn run(&self) -> anyhow::Result<()> {
        run(&self.prompt, self.max_tokens, self.keep).await
    }
}

async fn run(prompt: &str, max_tokens: u32, keep: bool) -> anyhow::Result<()> {
    eprintln!("• installing/checking llama.cpp server and SmolLM2-135M (cached in .cache/runner)…");
    let mut llama = LocalLlamaServer::start(LocalModel::SmolLm2, DEMO_MODEL, 1).await?;
    eprintln!("• llama.cpp server at {}", llama.url);
    let relay = RelayServer::start(RelayConfig {
        bind: "127.0.0.1:0".parse()?,
        ..RelayConfig::default()
    })
    .await?;
    eprintln!("• relay at {}", relay.url());
    eprintln!(
        "• market dashboard at http://{}/{}",
        relay.local_addr(),
        if keep {
            ""
        } else {
            " (live while the demo runs: add --keep)"
        }
    );
    let worker_keys = Keys::generate();
    let cfg = WorkerCli {
        nsec: Some(worker_keys.secret_key().to_secret_hex()),
        relays: vec![relay.url()],
        runner: Some("llama-cpp".into()),
        runner_url: Some(llama.url.clone()),
        heartbeat_secs: Some(5),
        name: Some("demo worker".into()),
        ..WorkerCli::default()
    }
    .resolve()?;
    let worker = Worker::connect(cfg, Arc::new(Metrics::default())).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.clone().run(async move {
        let _ = stop_rx.await;
    }));
    eprintln!(
        "• worker {} serving {DEMO_MODEL}",
        worker.public_key().to_bech32()?
    );

    let client = FedaiClient::connect(&[relay.url()], Keys::generate()).await?;
    // The first heartbeat is published as the worker starts; wait until the ad is visible.
    for _ in 0..50 {
        if !client.workers().await?.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut req = fedai_protocol::JobRequest::chat(prompt);
    req.params.model = Some(DEMO_MODEL.into());
    req.params.max_tokens = Some(max_tokens);
    req.params.temperature = Some(0.2);
    eprintln!("• prompt: {prompt}\n");
    let opts = fedai_client::RunOptions {
        timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let result = super::infer::infer(&client, req, &opts, false, false).await;
    client.shutdown().await;
    if keep && result.is_ok() {
        eprintln!(
            "\n• still running: dashboard http://{}/ · relay {} · Ctrl-C stops",
            relay.local_addr(),
            relay.url()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    let _ = worker_task.await;
    relay.shutdown().await;
    llama.stop();
    result.map(drop)
}
