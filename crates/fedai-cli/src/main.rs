//! `fedai`: the customer's command line. Thin over `fedai-client`; `demo` embeds a relay, a
//! worker and a real llama.cpp server.

mod demo;
mod sim;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fedai_client::{FedaiClient, JobOutcome, JobUpdate, RunOptions};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, FeedbackStatus, JobFeedback, JobRequest, JobResult, MeteringRecord};
use fedai_scheduler::Policy;

#[derive(Parser)]
#[command(
    name = "fedai",
    version,
    about = "fed_AI: pay-as-you-go AI inference on Nostr"
)]
struct Cli {
    /// TOML configuration file (keys as the long flags with `_`: relays, nsec_file, lnd_url,
    /// lnd_cert, lnd_macaroon, nwc, ln_network, max_price, max_fee_msat, auto_pay, no_zaps,
    /// log); flags and environment win over it.
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
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the largest command's flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Generate a key pair.
    Keygen {
        /// Write the nsec to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List live workers (models, prices, load, age).
    Workers {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Run a prompt through a worker, streaming the answer.
    Infer {
        /// The prompt.
        prompt: String,
        /// Model id.
        #[arg(long)]
        model: Option<String>,
        /// Worker (npub or hex); default: picked among live ads.
        #[arg(long)]
        worker: Option<String>,
        /// Maximum tokens to generate.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Sampling temperature.
        #[arg(long)]
        temperature: Option<f32>,
        /// Encrypt the job to the worker (NIP-44).
        #[arg(long = "encrypt")]
        private: bool,
        /// Print one JSON object instead of streaming text.
        #[arg(long)]
        json: bool,
        /// Seconds to wait for the result.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Send the prompt as raw text to complete, instead of a chat turn (the default, which
        /// applies the model's chat template).
        #[arg(long)]
        raw: bool,
        /// Never pay more than this per job, msat (workers above it are never chosen).
        #[arg(long)]
        max_price: Option<u64>,
        /// How to choose the worker.
        #[arg(long, default_value = "balanced", value_parser = ["cheapest", "fastest", "balanced"])]
        strategy: String,
        /// Run an auction: collect quotes for this many seconds, then award the best.
        #[arg(long, num_args = 0..=1, default_missing_value = "2")]
        auction: Option<f64>,
        /// Print the scheduler's scores and filter reasons before running.
        #[arg(long)]
        explain: bool,
        /// Attempts in all: on error, timeout or an invalid result, fail over to the next worker.
        #[arg(long, default_value_t = 3)]
        attempts: u32,
        /// Fail over when the worker has not acknowledged the request within this many seconds
        /// (a dead worker costs this, not --timeout).
        #[arg(long, default_value_t = 15, env = "FEDAI_ACK_TIMEOUT")]
        ack_timeout: u64,
        /// Fail over when a working worker shows no sign of progress for this many seconds
        /// (workers repeat `processing` every 10 s).
        #[arg(long, default_value_t = 30, env = "FEDAI_STALL_TIMEOUT")]
        stall_timeout: u64,
        #[command(flatten)]
        pay: PayArgs,
    },
    /// Collect quotes for a prompt from live workers without running it.
    Quote {
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
    },
    /// Show a job's events and state.
    Job {
        /// Request event id (hex).
        id: String,
    },
    /// Metering records.
    Metering {
        #[command(subcommand)]
        cmd: MeteringCmd,
    },
    /// Show and verify a payment receipt (event id on the relays, or a JSON file): the preimage
    /// matches the payment hash, the invoice matches both, and the job's metering record carries
    /// the same hash.
    Receipt {
        /// Event id (hex) or path to a JSON event.
        target: String,
    },
    /// Simulate a market scenario with the real scheduler (no network).
    Sim(SimArgs),
    /// Start a relay, a worker and a real llama.cpp model in this process, and run one job.
    Demo {
        /// Prompt to run.
        #[arg(long, default_value = "In one sentence, what is a relay?")]
        prompt: String,
        /// Tokens to generate.
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
    },
}

/// Paying workers over Lightning from your own LND node.
#[derive(clap::Args)]
struct PayArgs {
    /// Pay invoices that workers send (checked against the quote, the ad and the request first).
    #[arg(long, env = "FEDAI_AUTO_PAY")]
    auto_pay: bool,
    /// LND REST address (`https://host:port`, lnd's `restlisten`, 8080 by default).
    #[arg(long, env = "FEDAI_LND_URL")]
    lnd_url: Option<String>,
    /// LND's tls.cert (pinned).
    #[arg(long, env = "FEDAI_LND_CERT")]
    lnd_cert: Option<PathBuf>,
    /// A macaroon allowed to pay.
    #[arg(long, env = "FEDAI_LND_MACAROON")]
    lnd_macaroon: Option<PathBuf>,
    /// Pay through a Nostr Wallet Connect wallet (NIP-47) instead of an LND node.
    #[arg(long, env = "FEDAI_NWC", hide_env_values = true)]
    nwc: Option<String>,
    /// The chain invoices must be on (default bitcoin).
    #[arg(long, env = "FEDAI_LN_NETWORK", value_parser = ["bitcoin", "testnet", "signet", "regtest", "simnet"])]
    ln_network: Option<String>,
    /// Routing fee cap per payment, msat (default 10000).
    #[arg(long, env = "FEDAI_MAX_FEE_MSAT")]
    max_fee_msat: Option<u64>,
    /// Never pay by zap. A worker that takes only zaps (NIP-57, to its lightning address) gets
    /// no escrow: a zapped job that fails is not refunded.
    #[arg(long, env = "FEDAI_NO_ZAPS")]
    no_zaps: bool,
    /// Ask before paying more than this per job, msat (default 10000): the CLI says what it
    /// will pay and waits for a yes on the terminal.
    #[arg(long, env = "FEDAI_CONFIRM_ABOVE_MSAT")]
    confirm_above_msat: Option<u64>,
    /// Pay above the confirmation threshold without asking (still within --max-price, whose
    /// default is 100000 msat, and within the worker's own advertised price).
    #[arg(long)]
    yes: bool,
    /// Let a worker's LNURL pay target be on loopback or a private network (tests, private
    /// markets). Off, zaps reach public https services only.
    #[arg(long, hide = true, env = "FEDAI_ALLOW_PRIVATE_LNURL")]
    allow_private_lnurl: bool,
}

impl PayArgs {
    async fn context(&self, file: &FileConfig) -> anyhow::Result<Option<fedai_client::PayContext>> {
        use fedai_client::fedai_lightning::invoice;
        use fedai_client::fedai_lightning::lnd;
        if !(self.auto_pay || file.auto_pay.unwrap_or(false)) {
            return Ok(None);
        }
        let nwc = self.nwc.clone().or_else(|| file.nwc.clone());
        let lnd_url = self.lnd_url.clone().or_else(|| file.lnd_url.clone());
        let lnd_cert = self.lnd_cert.clone().or_else(|| file.lnd_cert.clone());
        let lnd_macaroon = self
            .lnd_macaroon
            .clone()
            .or_else(|| file.lnd_macaroon.clone());
        let ln_network = self
            .ln_network
            .clone()
            .or_else(|| file.ln_network.clone())
            .unwrap_or_else(|| "bitcoin".into());
        let Some(currency) = invoice::network(&ln_network) else {
            bail!("unknown Lightning network `{ln_network}` (bitcoin, testnet, signet, regtest, simnet)");
        };
        let payer: std::sync::Arc<dyn fedai_client::fedai_lightning::Payer> =
            match (&nwc, &lnd_url, &lnd_cert, &lnd_macaroon) {
                (Some(uri), ..) => std::sync::Arc::new(
                    fedai_client::fedai_lightning::nwc::Nwc::connect(uri).await?,
                ),
                (None, Some(url), Some(cert), Some(macaroon)) => std::sync::Arc::new(
                    lnd::Lnd::connect(&lnd::LndConfig {
                        url: url.clone(),
                        cert: cert.clone(),
                        macaroon: macaroon.clone(),
                    })
                    .await?,
                ),
                _ => bail!("--auto-pay needs --nwc, or --lnd-url, --lnd-cert and --lnd-macaroon"),
            };
        Ok(Some(fedai_client::PayContext {
            payer,
            currency,
            max_msat: None,
            max_fee_msat: self.max_fee_msat.or(file.max_fee_msat).unwrap_or(10_000),
            zaps: !(self.no_zaps || file.no_zaps.unwrap_or(false)),
            confirm: Some(confirm_payment(self.yes)),
            confirm_above_msat: self.confirm_above_msat.unwrap_or(10_000),
            allow_private_lnurl: self.allow_private_lnurl,
        }))
    }
}

#[derive(clap::Args)]
struct SimArgs {
    /// Scenario file (TOML; see crates/fedai-sim/scenarios/).
    scenario: PathBuf,
    /// Sweep one parameter: `param=v1,v2,…` (dotted path, e.g. `client.top_n=1,3,5`).
    #[arg(long)]
    sweep: Option<String>,
    /// Override the number of jobs.
    #[arg(long)]
    jobs: Option<u64>,
    /// Override the seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Write the reports as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the full Markdown report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

#[derive(Subcommand)]
enum MeteringCmd {
    /// Verify a metering record (event id on the relays, or a JSON file) against its result and request.
    Verify {
        /// Event id (hex) or path to a JSON event.
        target: String,
    },
}

/// Asks a person on the terminal before a payment above the threshold; without a terminal,
/// pays only with `--yes`.
fn confirm_payment(yes: bool) -> fedai_client::Confirm {
    std::sync::Arc::new(move |msat, worker| {
        let who = worker.to_bech32().unwrap_or_default();
        if yes {
            eprintln!("⚡ paying {msat} msat to {who} (--yes)");
            return true;
        }
        let Ok(tty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        else {
            eprintln!(
                "⚡ {who} asks {msat} msat: above the confirmation threshold and no terminal to ask; pass --yes or raise --confirm-above-msat"
            );
            return false;
        };
        tokio::task::block_in_place(|| {
            use std::io::BufRead;
            let mut out = &tty;
            let _ = write!(out, "⚡ {who} asks {msat} msat for this job. Pay? [y/N] ");
            let _ = out.flush();
            let mut line = String::new();
            let _ = std::io::BufReader::new(&tty).read_line(&mut line);
            matches!(line.trim(), "y" | "Y" | "yes")
        })
    })
}

/// `fedai --config FILE`: the settings a user would otherwise repeat on every command.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    relays: Option<Vec<String>>,
    nsec_file: Option<PathBuf>,
    auto_pay: Option<bool>,
    lnd_url: Option<String>,
    lnd_cert: Option<PathBuf>,
    lnd_macaroon: Option<PathBuf>,
    nwc: Option<String>,
    ln_network: Option<String>,
    max_price: Option<u64>,
    max_fee_msat: Option<u64>,
    no_zaps: Option<bool>,
    log: Option<String>,
}

impl FileConfig {
    fn load(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
    }
}

/// Logs for a person at a terminal: by default only fed_AI's own warnings (no dependency's
/// noise); `--verbose` or `FEDAI_LOG` for more. Payload-logging dependencies are capped so that
/// no prompt or output reaches a log, and colour is used only on a terminal.
fn init_logs(verbose: bool, file_log: Option<&str>) {
    let filter = std::env::var("FEDAI_LOG")
        .ok()
        .or_else(|| file_log.map(str::to_owned))
        .unwrap_or_else(|| {
            if verbose {
                "info".into()
            } else {
                "off,fedai=warn,fedai_client=warn,fedai_lightning=warn".into()
            }
        });
    let filter = fedai_protocol::private_log_filter(&filter);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn keys(cli: &Cli) -> anyhow::Result<Keys> {
    let secret = match (&cli.nsec, &cli.nsec_file) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read {}", p.display()))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(Keys::generate()),
    };
    Ok(Keys::new(SecretKey::parse(&secret).map_err(|_| {
        anyhow::anyhow!("the secret key is not a valid nsec or hex key")
    })?))
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
    let mut cli = Cli::parse();
    let file = FileConfig::load(cli.config.as_deref())?;
    init_logs(cli.verbose, file.log.as_deref());
    if cli.relays.is_empty() {
        cli.relays = file
            .relays
            .clone()
            .unwrap_or_else(|| vec!["ws://127.0.0.1:7777".into()]);
    }
    if cli.nsec.is_none() && cli.nsec_file.is_none() {
        cli.nsec_file = file.nsec_file.clone();
    }
    match &cli.cmd {
        Cmd::Keygen { out } => keygen(out.as_ref()),
        Cmd::Workers { json } => workers(&cli, *json).await,
        Cmd::Infer {
            prompt,
            model,
            worker,
            max_tokens,
            temperature,
            private,
            json,
            timeout,
            raw,
            max_price,
            strategy,
            auction,
            explain,
            attempts,
            ack_timeout,
            stall_timeout,
            pay,
        } => {
            let client = FedaiClient::connect(&cli.relays, keys(&cli)?).await?;
            let mut req = if *raw {
                JobRequest::text(prompt.clone())
            } else {
                JobRequest::chat(prompt.clone())
            };
            req.params.model = model.clone();
            req.params.max_tokens = *max_tokens;
            req.params.temperature = *temperature;
            let worker = worker
                .as_deref()
                .map(|w| {
                    PublicKey::parse(w)
                        .map_err(|_| anyhow::anyhow!("--worker is not an npub or hex public key"))
                })
                .transpose()?;
            if *private && auction.is_some() {
                bail!("--encrypt needs a chosen worker; it cannot be combined with --auction");
            }
            let opts = RunOptions {
                policy: Policy::new(strategy.parse().map_err(|e: String| anyhow::anyhow!(e))?),
                max_price_msat: max_price.or(file.max_price),
                private: *private,
                timeout: Duration::from_secs(*timeout),
                max_attempts: (*attempts).max(1),
                worker,
                auction: auction.map(|s| Duration::from_secs_f64(s.clamp(0.1, 60.0))),
                pay: pay.context(&file).await?,
                ack_timeout: Duration::from_secs((*ack_timeout).max(1)),
                stall_timeout: Duration::from_secs((*stall_timeout).max(1)),
            };
            let r = infer(&client, req, &opts, *json, *explain).await;
            client.shutdown().await;
            r.map(drop)
        }
        Cmd::Quote {
            prompt,
            model,
            max_tokens,
            bid,
            window,
            json,
        } => {
            quote(
                &cli,
                prompt,
                model.clone(),
                *max_tokens,
                *bid,
                *window,
                *json,
            )
            .await
        }
        Cmd::Job { id } => job(&cli, id).await,
        Cmd::Receipt { target } => receipt(&cli, target).await,
        Cmd::Metering {
            cmd: MeteringCmd::Verify { target },
        } => metering_verify(&cli, target).await,
        Cmd::Demo { prompt, max_tokens } => demo::run(prompt, *max_tokens).await,
        Cmd::Sim(a) => sim::run(
            &a.scenario,
            a.sweep.as_deref(),
            a.jobs,
            a.seed,
            a.json.as_ref(),
            a.markdown.as_ref(),
        ),
    }
}

fn keygen(out: Option<&PathBuf>) -> anyhow::Result<()> {
    let k = Keys::generate();
    let nsec = k.secret_key().to_bech32()?;
    println!("npub: {}", k.public_key().to_bech32()?);
    match out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
            writeln!(f, "{nsec}")?;
            println!("nsec written to {} (mode 0600)", path.display());
        }
        None => println!("nsec: {nsec}"),
    }
    Ok(())
}

async fn workers(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let client = FedaiClient::connect(&cli.relays, Keys::generate()).await?;
    let ads = client.workers().await?;
    client.shutdown().await;
    let now = Timestamp::now().as_secs();
    if json {
        let v: Vec<serde_json::Value> = ads.iter().map(|a| serde_json::json!({
            "worker": a.worker.to_bech32().unwrap_or_default(), "instance": a.ad.instance,
            "models": a.ad.models.iter().map(|m| &m.id).collect::<Vec<_>>(),
            "prices": a.ad.prices.iter().map(|p| serde_json::json!({"model": p.model, "base_msat": p.base_msat, "per_1k_in_msat": p.per_1k_input_msat, "per_1k_out_msat": p.per_1k_output_msat})).collect::<Vec<_>>(),
            "in_flight": a.ad.in_flight, "max_concurrent": a.ad.max_concurrent, "runner": a.ad.runner,
            "age_secs": now.saturating_sub(a.created_at.as_secs()),
        })).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if ads.is_empty() {
        println!("no live workers on {}", cli.relays.join(", "));
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<34} {:<22} {:>6} {:>5}",
        "worker", "runner", "models", "price msat (base/in/out)", "load", "age"
    );
    for a in &ads {
        let npub = a.worker.to_bech32().unwrap_or_default();
        let models: Vec<&str> = a.ad.models.iter().map(|m| m.id.as_str()).collect();
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
        println!(
            "{:<20} {:<10} {:<34} {:<22} {:>6} {:>4}s",
            format!("{}…", &npub[..16]),
            a.ad.runner,
            models.join(","),
            price,
            format!("{}/{}", a.ad.in_flight, a.ad.max_concurrent),
            now.saturating_sub(a.created_at.as_secs())
        );
    }
    Ok(())
}

/// Choose a worker, run the job with failover, print as it streams. Shared by `infer` and
/// `demo`.
pub(crate) async fn infer(
    client: &FedaiClient,
    mut req: JobRequest,
    opts: &RunOptions,
    json: bool,
    explain: bool,
) -> anyhow::Result<JobOutcome> {
    let timeout = opts.timeout;
    req.params.stream = !json;
    req.expiration = Some(Timestamp::from_secs(
        Timestamp::now().as_secs() + timeout.as_secs() * opts.max_attempts.max(1) as u64,
    ));
    if explain {
        let ads = client.workers().await?;
        print_explanation(&client.explain(&ads, &req, opts));
    }
    let tty = std::io::stderr().is_terminal() && !json;
    let mut spinner = tty.then(|| {
        tokio::spawn(async {
            let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            for i in 0.. {
                eprint!("\r{} waiting for the worker…", frames[i % frames.len()]);
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        })
    });
    let stop_spinner = |spinner: &mut Option<tokio::task::JoinHandle<()>>| {
        if let Some(s) = spinner.take() {
            s.abort();
            eprint!("\r\x1b[2K");
        }
    };
    let mut streamed = false;
    let model = req.params.model.clone();
    let outcome = client
        .run(req, opts, |u| match u {
            JobUpdate::Partial(text) => {
                stop_spinner(&mut spinner);
                streamed = true;
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            JobUpdate::Paying(msat) => {
                stop_spinner(&mut spinner);
                eprintln!("⚡ paying {msat} msat (hold invoice checked against the quote)");
            }
            JobUpdate::Failover { worker, error } => {
                stop_spinner(&mut spinner);
                if streamed {
                    println!();
                    streamed = false;
                }
                let w = worker.to_bech32().unwrap_or_default();
                eprintln!(
                    "⚠ worker {}… failed ({error}); trying another",
                    &w[..16.min(w.len())]
                );
            }
            _ => {}
        })
        .await;
    stop_spinner(&mut spinner);
    let done = match outcome {
        Err(fedai_client::ClientError::NoWorker) => bail!(
            "no live worker fits this job (model {}, try `fedai workers` or `--explain`)",
            model.as_deref().unwrap_or("any")
        ),
        o => o?,
    };
    if json {
        let m = done.metering.as_ref();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "request": done.request.id.to_hex(), "result": done.result.id.to_hex(),
                "worker": done.result.worker.to_bech32().unwrap_or_default(), "model": done.result.result.model,
                "output": done.output,
                "usage": {"input_tokens": done.result.result.usage.input_tokens, "output_tokens": done.result.result.usage.output_tokens},
                "price_msat": m.map(|(m, _)| m.record.price_msat),
                "payment": done.payment.as_ref().map(|p| serde_json::json!({"amount_msat": p.amount_msat, "payment_hash": p.payment_hash, "preimage": p.preimage, "receipt": p.receipt.map(|r| r.to_hex())})),
                "metering": m.map(|(m, c)| serde_json::json!({"id": m.id.to_hex(), "verified": true, "prompt_checked": c.prompt_checked, "wall_ms": m.record.wall_ms})),
            }))?
        );
    } else {
        if !streamed {
            print!("{}", done.output);
        } else if !done.stream_matched {
            // What was shown is not what the worker signed: never call it verified.
            println!();
            eprintln!("— the streamed text differs from the signed result (a restarted or misbehaving worker); the verified output is:");
            print!("{}", done.output);
        }
        println!();
        let u = done.result.result.usage;
        if let Some(p) = &done.payment {
            eprintln!(
                "⚡ paid {} msat · preimage verified · receipt {}",
                p.amount_msat,
                p.receipt
                    .map(|r| r.to_hex())
                    .unwrap_or_else(|| "not published".into())
            );
        }
        match &done.metering {
            Some((m, _)) => eprintln!(
                "— {} · {} in / {} out tokens · {} ms · {} msat · result and metering verified",
                done.result.result.model,
                u.input_tokens,
                u.output_tokens,
                m.record.wall_ms,
                m.record.price_msat
            ),
            None => eprintln!(
                "— {} · {} in / {} out tokens · result verified; no metering record arrived",
                done.result.result.model, u.input_tokens, u.output_tokens
            ),
        }
    }
    Ok(done)
}

fn print_explanation(rows: &[fedai_client::market::Explained]) {
    eprintln!(
        "{:<3} {:<20} {:>7} {:>9} {:>10} {:>6} {:>6}  reason",
        "", "worker", "score", "expect ms", "price msat", "load", "trust"
    );
    for r in rows {
        let npub = r.worker.to_bech32().unwrap_or_default();
        let w = format!("{}…", &npub[..16.min(npub.len())]);
        match (&r.scored, &r.rejected) {
            (Some(s), _) => eprintln!(
                "{:<3} {:<20} {:>7.3} {:>9.0} {:>10} {:>6.2} {:>6.2}  latency {:.2} · price {:.2} · load {:.2} · distrust {:.2}",
                if r.chosen { "→" } else { "" },
                w,
                s.score,
                s.expected_ms,
                s.price_msat,
                s.load,
                s.trust,
                s.parts[0],
                s.parts[1],
                s.parts[2],
                s.parts[3]
            ),
            (None, Some(why)) => eprintln!(
                "{:<3} {:<20} {:>7} {:>9} {:>10} {:>6} {:>6}  filtered: {why}",
                "", w, "-", "-", "-", "-", "-"
            ),
            _ => {}
        }
    }
}

async fn quote(
    cli: &Cli,
    prompt: &str,
    model: Option<String>,
    max_tokens: u32,
    bid: u64,
    window: f64,
    json: bool,
) -> anyhow::Result<()> {
    let client = FedaiClient::connect(&cli.relays, keys(cli)?).await?;
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

async fn job(cli: &Cli, id: &str) -> anyhow::Result<()> {
    let id = EventId::parse(id).map_err(|_| anyhow::anyhow!("not an event id"))?;
    let client = FedaiClient::connect(&cli.relays, keys(cli)?).await?;
    let t = Duration::from_secs(3);
    let mut events = client.fetch(Filter::new().id(id), t).await?;
    events.extend(
        client
            .fetch(
                Filter::new().event(id).kinds(
                    [
                        kinds::JOB_FEEDBACK,
                        kinds::JOB_RESULT,
                        kinds::METERING,
                        kinds::AWARD,
                        kinds::PAYMENT_RECEIPT,
                        kinds::DELETION,
                    ]
                    .map(Kind::from_u16),
                ),
                t,
            )
            .await?,
    );
    client.shutdown().await;
    if events.is_empty() {
        bail!("no events for {id} on {}", cli.relays.join(", "));
    }
    // Events of one second have no order among themselves: the state is derived from which
    // events exist (furthest stage wins), not from the order they are listed in.
    events.sort_by_key(|e| (e.created_at, e.kind.as_u16()));
    let mut stage = 0u8;
    let mut raise = |s: u8| stage = stage.max(s);
    for e in &events {
        let what = match e.kind.as_u16() {
            kinds::JOB_REQUEST => "request".to_owned(),
            kinds::JOB_FEEDBACK => match JobFeedback::from_event(e, None) {
                Ok(f) => {
                    raise(match f.status {
                        FeedbackStatus::PaymentRequired => 1,
                        FeedbackStatus::Processing | FeedbackStatus::Partial => 2,
                        FeedbackStatus::Error => 3,
                        FeedbackStatus::Success => 4,
                    });
                    match (&f.code, f.seq) {
                        (Some(c), _) => format!(
                            "feedback {} ({c}: {})",
                            f.status,
                            if f.encrypted.is_some() {
                                "<encrypted>"
                            } else {
                                f.info.as_deref().unwrap_or("")
                            }
                        ),
                        (_, Some(s)) => format!("feedback partial #{s}"),
                        _ => format!("feedback {}", f.status),
                    }
                }
                Err(err) => format!("invalid feedback ({err})"),
            },
            kinds::JOB_RESULT => match JobResult::from_event(e, None) {
                Ok(r) => {
                    raise(4);
                    format!(
                        "result: {} in / {} out tokens, model {}",
                        r.result.usage.input_tokens, r.result.usage.output_tokens, r.result.model
                    )
                }
                Err(err) => format!("invalid result ({err})"),
            },
            kinds::METERING => match MeteringRecord::from_event(e) {
                Ok(m) => format!(
                    "metering: {} msat, {} ms",
                    m.record.price_msat, m.record.wall_ms
                ),
                Err(err) => format!("invalid metering ({err})"),
            },
            kinds::DELETION => {
                raise(5);
                "cancellation".into()
            }
            k => format!("kind {k}"),
        };
        println!(
            "{}  {}  {}…  {what}",
            e.created_at.as_secs(),
            &e.pubkey.to_hex()[..12],
            &e.id.to_hex()[..12]
        );
    }
    let state = [
        "submitted",
        "quoted",
        "processing",
        "failed",
        "done",
        "cancelled",
    ][stage as usize];
    println!("state: {state}");
    Ok(())
}

/// An event from a JSON file, or by id from the relays.
async fn event_arg(client: &FedaiClient, target: &str, what: &str) -> anyhow::Result<Event> {
    if std::path::Path::new(target).exists() {
        return Event::from_json(std::fs::read_to_string(target)?)
            .context("file is not a Nostr event");
    }
    let id = EventId::parse(target).map_err(|_| anyhow::anyhow!("not an event id or a file"))?;
    client
        .fetch(Filter::new().id(id), Duration::from_secs(3))
        .await?
        .into_iter()
        .next()
        .with_context(|| format!("{what} not found on the relays"))
}

async fn receipt(cli: &Cli, target: &str) -> anyhow::Result<()> {
    use fedai_client::fedai_lightning::invoice::{check_receipt, ReceiptClaim};
    let client = FedaiClient::connect(&cli.relays, keys(cli)?).await?;
    let ev = event_arg(&client, target, "receipt").await?;
    // The parser refuses a receipt whose SHA-256(preimage) is not its payment hash.
    let r = fedai_protocol::PaymentReceipt::from_event(&ev).context("not a valid receipt")?;
    let rc = &r.receipt;
    let meterings = client
        .fetch(
            Filter::new()
                .kind(Kind::from_u16(kinds::METERING))
                .event(rc.request_id),
            Duration::from_secs(3),
        )
        .await?;
    // The node the worker advertises: a receipt's invoice must be payable to it.
    let ads = client
        .fetch(
            Filter::new()
                .kind(Kind::from_u16(kinds::CAPABILITY_AD))
                .author(rc.worker),
            Duration::from_secs(3),
        )
        .await?;
    client.shutdown().await;
    let node = ads
        .iter()
        .filter_map(|e| fedai_protocol::CapabilityAd::from_event(e).ok())
        .find_map(|a| a.ad.payment.ln_node);
    let metered = meterings
        .iter()
        .filter_map(|e| MeteringRecord::from_event(e).ok())
        .find(|m| m.worker == rc.worker);
    // A receipt is bound to the worker by its advertised node (the invoice's payee) or by the
    // worker's own signed metering record naming the payment; with neither, a customer could
    // have paid an invoice of its own node.
    let by_metering = metered
        .as_ref()
        .is_some_and(|m| m.record.payment_hash.as_deref() == Some(rc.payment_hash.as_str()));
    // A zapped invoice is the LNURL service's, not the worker's node's: only the worker's own
    // metering record binds it (a customer can zap itself through a service of its own).
    if (rc.zap_request.is_some() || node.is_none()) && !by_metering {
        bail!(
            "cannot bind receipt {} to worker {}: no metering record of the payment{} on these relays",
            r.id.to_hex(),
            rc.worker.to_bech32()?,
            if rc.zap_request.is_some() { "" } else { " and no ad naming its Lightning node" }
        );
    }
    // The invoice backs the claim: amount, payment hash, payee, and a commitment to this job
    // (directly, or through the zap request it was paid for).
    let checked = check_receipt(&ReceiptClaim {
        bolt11: &rc.bolt11,
        amount_msat: rc.amount_msat,
        payment_hash_hex: &rc.payment_hash,
        request_id: rc.request_id,
        worker: rc.worker,
        zap_request: rc.zap_request.as_deref(),
        payee: node.as_deref().filter(|_| rc.zap_request.is_none()),
    })
    .context("the invoice does not back the receipt")?;
    println!(
        "receipt {} verified: {} msat paid{} by {} to {} for job {}; preimage matches the invoice",
        r.id.to_hex(),
        rc.amount_msat,
        if checked.by_zap { " by zap" } else { "" },
        r.customer.to_bech32()?,
        rc.worker.to_bech32()?,
        rc.request_id.to_hex()
    );
    match metered {
        Some(m) if m.record.payment_hash.as_deref() == Some(rc.payment_hash.as_str()) => println!(
            "the worker's metering record {} carries the same payment hash",
            m.id.to_hex()
        ),
        Some(m) => bail!(
            "the worker's metering record {} names another payment hash",
            m.id.to_hex()
        ),
        None => println!("no metering record from the worker found for the job"),
    }
    Ok(())
}

async fn metering_verify(cli: &Cli, target: &str) -> anyhow::Result<()> {
    let client = FedaiClient::connect(&cli.relays, keys(cli)?).await?;
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
    let keys = keys(cli)?;
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
