//! `fedai-relay`: thin binary over the `fedai_relay` library.

use anyhow::Context;
use clap::Parser;
use fedai_relay::{Cli, RelayServer};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().resolve().context("invalid configuration")?;
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log).context("invalid --log filter")?)
        .with_writer(std::io::stderr)
        .init();
    let server = RelayServer::start(config).await?;
    // Machine-readable line for scripts and tests that start us on port 0.
    println!("fedai-relay listening on {}", server.url());
    wait_for_signal().await?;
    tracing::info!("shutdown signal received");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
