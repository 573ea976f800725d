//! `fedai-worker`: thin binary over the `fedai_worker` library.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use fedai_worker::{metrics, Cli, Worker};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Cli::parse().resolve().context("invalid configuration")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(fedai_protocol::private_log_filter(&cfg.log))
                .context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let m = Arc::new(metrics::Metrics::default());
    if let Some(addr) = cfg.metrics_bind {
        let listener = metrics::bind(addr)
            .await
            .with_context(|| format!("cannot bind metrics on {addr}"))?;
        println!("fedai-worker metrics on http://{}", listener.local_addr()?);
        tokio::spawn(metrics::serve(listener, m.clone()));
    }
    let worker = Worker::connect(cfg, m).await?;
    println!("fedai-worker {} ready", worker.public_key().to_hex());
    worker
        .run(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await
}
