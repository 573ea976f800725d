//! `fedai-relay`: thin binary over the `fedai_relay` library.

use anyhow::Context;
use clap::Parser;
use fedai_relay::{Cli, RelayServer};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().resolve().context("invalid configuration")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(fedai_protocol::private_log_filter(&config.log))
                .context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    // Install handlers before announcing readiness, so a SIGTERM right after start is graceful.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let dashboard = config.dashboard;
    let server = RelayServer::start(config).await?;
    // Machine-readable line for scripts and tests that start us on port 0.
    println!("fedai-relay listening on {}", server.url());
    if dashboard {
        // Bound to every address: the loopback one works from this machine.
        let mut addr = server.local_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        println!("fedai-relay dashboard at http://{addr}/");
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown signal received");
    server.shutdown().await;
    Ok(())
}
