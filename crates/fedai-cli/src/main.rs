//! `fedai`: the customer's command line. Thin over `fedai-client`: one module per command in
//! [`cmd`] (its arguments and its `run`), the settings every command shares in [`config`], the
//! payment flags in [`pay`]. `demo` embeds a relay, a worker and a real llama.cpp server.

mod cmd;
mod config;
mod pay;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use config::{init_logs, Ctx, Settings};

#[derive(Parser)]
#[command(
    name = "fedai",
    version,
    about = "fed_AI: pay-as-you-go AI inference on Nostr"
)]
struct Cli {
    /// TOML configuration file (keys as the long flags with `_`: relays, nsec_file, lnd_url,
    /// lnd_cert, lnd_macaroon, nwc, ln_network, max_price, max_fee_msat, auto_pay, no_zaps,
    /// log, reputation_file; for the gateway listen, budget_msat, budget_file, api_key_file); flags and environment win over it.
    #[arg(long, global = true, env = "FEDAI_CONFIG")]
    config: Option<PathBuf>,
    /// Relay URL (repeatable; default ws://127.0.0.1:7777).
    #[arg(
        long = "relay",
        global = true,
        env = "FEDAI_RELAYS",
        value_delimiter = ','
    )]
    relays: Vec<String>,
    /// Show the logs of fed_AI and its libraries (info level; prompts and outputs never).
    #[arg(long, short = 'v', global = true)]
    verbose: bool,
    /// Customer secret key (nsec or hex); a fresh key is used when absent.
    #[arg(long, global = true, env = "FEDAI_NSEC", hide_env_values = true)]
    nsec: Option<String>,
    /// File holding the customer secret key.
    #[arg(long, global = true, env = "FEDAI_NSEC_FILE")]
    nsec_file: Option<PathBuf>,
    /// What you learnt of workers (verified jobs, failures, speed), kept across runs and shared
    /// by concurrent runs: an embedded database in this directory (default:
    /// $XDG_DATA_HOME/fedai/reputation), or a JSON file when the path ends in `.json`.
    #[arg(long, global = true, env = "FEDAI_REPUTATION_FILE")]
    reputation_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the largest command's flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Generate a key pair.
    Keygen(cmd::keygen::Keygen),
    /// List live workers (models, prices, load, age).
    Workers(cmd::workers::Workers),
    /// List the relays you use and those live workers read, with each one's latency.
    Relays(cmd::relays::Relays),
    /// Run a prompt through a worker, streaming the answer.
    Infer(cmd::infer::Infer),
    /// Embed texts (kind 5060): one vector per text, as JSON.
    Embed(cmd::embed::Embed),
    /// Collect quotes for a prompt from live workers without running it.
    Quote(cmd::quote::Quote),
    /// Show a job's events and state.
    Job(cmd::job::Job),
    /// Metering records.
    Metering(cmd::metering::Metering),
    /// Show and verify a payment receipt (event id on the relays, or a JSON file): the preimage
    /// matches the payment hash, the invoice matches both, and the job's metering record carries
    /// the same hash.
    Receipt(cmd::receipt::Receipt),
    /// Serve the OpenAI API from the market: point any OpenAI app's base URL here.
    Gateway(cmd::gateway::GatewayCmd),
    /// Simulate a market scenario with the real scheduler (no network).
    Sim(cmd::sim::Sim),
    /// Start a relay, a worker and a real llama.cpp model in this process, and run one job.
    Demo(cmd::demo::Demo),
}

impl Cmd {
    /// The settings this command's own flags give (the rest come from the global flags).
    fn settings(&self) -> Settings {
        match self {
            Cmd::Infer(c) => c.settings(),
            Cmd::Gateway(c) => c.settings(),
            _ => Settings::default(),
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One clear line for a person, not a backtrace (even with RUST_BACKTRACE set).
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let flags = Settings {
        relays: (!cli.relays.is_empty()).then(|| cli.relays.clone()),
        nsec_file: cli.nsec_file.clone(),
        reputation_file: cli.reputation_file.clone(),
        ..cli.cmd.settings()
    };
    let settings = Settings::layered(&flags, cli.config.as_deref())?;
    init_logs(cli.verbose, settings.log.as_deref());
    let ctx = Ctx {
        relays: settings
            .relays
            .clone()
            .unwrap_or_else(|| vec!["ws://127.0.0.1:7777".into()]),
        // A key given on the command line wins over a key file named anywhere.
        nsec_file: settings.nsec_file.clone().filter(|_| cli.nsec.is_none()),
        nsec: cli.nsec,
        reputation: settings
            .reputation_file
            .clone()
            .unwrap_or_else(fedai_client::default_reputation_path),
        settings,
    };
    match cli.cmd {
        Cmd::Keygen(c) => c.run(),
        Cmd::Workers(c) => c.run(&ctx).await,
        Cmd::Relays(c) => c.run(&ctx).await,
        Cmd::Infer(c) => c.run(&ctx).await,
        Cmd::Embed(c) => c.run(&ctx).await,
        Cmd::Quote(c) => c.run(&ctx).await,
        Cmd::Job(c) => c.run(&ctx).await,
        Cmd::Metering(c) => c.run(&ctx).await,
        Cmd::Receipt(c) => c.run(&ctx).await,
        Cmd::Gateway(c) => c.run(&ctx).await,
        Cmd::Sim(c) => c.run(),
        Cmd::Demo(c) => c.run().await,
    }
}
