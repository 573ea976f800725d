//! `fedai infer`: run a prompt through the market, streaming the answer.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;
use fedai_client::{FedaiClient, JobOutcome, JobUpdate, RunOptions};
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::JobRequest;
use fedai_scheduler::Policy;

use crate::config::Ctx;
use crate::pay::PayArgs;

/// Run a prompt through a worker, streaming the answer.
#[derive(clap::Args)]
pub struct Infer {
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
    /// Spot-check this fraction of jobs (0–1; needs --model): every job then runs seeded and
    /// encrypted; a picked one is asked again of up to two other workers serving the model, and
    /// a worker whose answer disagrees with two that agree loses trust (kept in the reputation
    /// file; after two such verdicts it is never chosen again). Each check is one or two more
    /// jobs. Exits with an error when the worker that answered is the one caught.
    #[arg(long, default_value_t = 0.0, env = "FEDAI_SPOT_CHECK")]
    spot_check: f64,
    /// Publish attestations (NIP-32, fedai-06) of what happened: the worker delivered, failed,
    /// or was caught by a spot check. Public: they say which workers this key used.
    #[arg(long, env = "FEDAI_ATTEST")]
    attest: bool,
    /// Weigh the attestations of the keys this customer follows (its NIP-02 contact list)
    /// into the choice of worker; strangers' never count.
    #[arg(long, env = "FEDAI_TRUST_FOLLOWS")]
    trust_follows: bool,
    /// …the follows of this key instead (npub or hex): weigh your social key's follows while
    /// running jobs under another key.
    #[arg(long, env = "FEDAI_TRUST_FOLLOWS_OF")]
    trust_follows_of: Option<String>,
    #[command(flatten)]
    pay: PayArgs,
}

impl Infer {
    /// What its flags set of the settings a config file may also hold.
    pub fn settings(&self) -> crate::config::Settings {
        crate::config::Settings {
            max_price: self.max_price,
            ..self.pay.settings()
        }
    }

    /// Choose, run, print.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
        ctx.load_reputation(&client);
        if self.trust_follows || self.trust_follows_of.is_some() {
            let follows = match &self.trust_follows_of {
                Some(k) => {
                    let who = PublicKey::parse(k).map_err(|_| {
                        anyhow::anyhow!("--trust-follows-of: not an npub or hex public key")
                    })?;
                    client.follows_of(who).await?
                }
                None => client.follows().await?,
            };
            let w = client.weigh_attestations(&follows).await?;
            if !self.json {
                eprintln!(
                    "— {} attestations read, {} counted (you follow {} keys), about {} workers",
                    w.read,
                    w.counted,
                    follows.len(),
                    w.workers
                );
            }
        }
        let mut req = if self.raw {
            JobRequest::text(self.prompt.clone())
        } else {
            JobRequest::chat(self.prompt.clone())
        };
        req.params.model = self.model.clone();
        req.params.max_tokens = self.max_tokens;
        req.params.temperature = self.temperature;
        let worker = super::worker_arg(self.worker.as_deref())?;
        if self.private && self.auction.is_some() {
            bail!("--encrypt needs a chosen worker; it cannot be combined with --auction");
        }
        let opts = RunOptions {
            policy: Policy::new(
                self.strategy
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!(e))?,
            ),
            max_price_msat: ctx.settings.max_price,
            private: self.private,
            timeout: Duration::from_secs(self.timeout),
            max_attempts: (self.attempts).max(1),
            worker,
            auction: self
                .auction
                .map(|s| Duration::from_secs_f64(s.clamp(0.1, 60.0))),
            pay: self.pay.context(&ctx.settings).await?,
            ack_timeout: Duration::from_secs((self.ack_timeout).max(1)),
            stall_timeout: Duration::from_secs((self.stall_timeout).max(1)),
            spot_check: self.spot_check.clamp(0.0, 1.0),
            attest: self.attest,
            ..RunOptions::default()
        };
        let r = infer(&client, req, &opts, self.json, self.explain).await;
        ctx.save_reputation(&client);
        client.shutdown().await;
        r.map(drop)
    }
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
    let mut spinner = Spinner::start(std::io::stderr().is_terminal() && !json);
    let mut streamed = false;
    let model = req.params.model.clone();
    let outcome = client
        .run(req, opts, |u| match u {
            JobUpdate::Partial(text) => {
                spinner.stop();
                streamed = true;
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            JobUpdate::Paying(msat) => {
                spinner.stop();
                eprintln!("⚡ paying {msat} msat (hold invoice checked against the quote)");
            }
            JobUpdate::Failover { worker, error } => {
                spinner.stop();
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
    spinner.stop();
    let done = match outcome {
        Err(fedai_client::ClientError::NoWorker) => bail!(
            "no live worker fits this job (model {}, try `fedai workers` or `--explain`)",
            model.as_deref().unwrap_or("any")
        ),
        o => o?,
    };
    if json {
        print_json(&done)?;
    } else {
        print_text(&done, streamed);
    }
    // The answer came from a worker its own spot check caught: said, and not a success.
    if let Some(fedai_client::SpotVerdict::Caught(w)) = done.spot_check.as_ref().map(|s| s.verdict)
    {
        if w == done.result.worker {
            anyhow::bail!(
                "a spot check caught the worker that answered ({}): two other workers serving the model agree with each other, not with it — do not trust this answer",
                w.to_bech32().unwrap_or_default()
            );
        }
    }
    Ok(done)
}

/// "waiting for the worker…" on a terminal until the first token (or anything else) arrives.
struct Spinner(Option<tokio::task::JoinHandle<()>>);

impl Spinner {
    fn start(on: bool) -> Self {
        Self(on.then(|| {
            tokio::spawn(async {
                let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
                for i in 0.. {
                    eprint!("\r{} waiting for the worker…", frames[i % frames.len()]);
                    tokio::time::sleep(Duration::from_millis(80)).await;
                }
            })
        }))
    }

    fn stop(&mut self) {
        if let Some(s) = self.0.take() {
            s.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

/// `--json`: the outcome as one object.
fn print_json(done: &JobOutcome) -> anyhow::Result<()> {
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
            "spot_check": done.spot_check.as_ref().map(|s| serde_json::json!({
                "workers": s.workers.iter().map(|w| w.to_bech32().unwrap_or_default()).collect::<Vec<_>>(),
                "verdict": match s.verdict {
                    fedai_client::SpotVerdict::Agree => "agree",
                    fedai_client::SpotVerdict::Caught(_) => "caught",
                    fedai_client::SpotVerdict::Undecided => "undecided",
                    fedai_client::SpotVerdict::NoReferee => "no-referee",
                },
                "caught": match s.verdict {
                    fedai_client::SpotVerdict::Caught(w) => w.to_bech32().ok(),
                    _ => None,
                },
                "cost_msat": s.cost_msat,
            })),
        }))?
    );
    Ok(())
}

/// A spot check's verdict in words.
fn spot_verdict(v: fedai_client::SpotVerdict) -> String {
    match v {
        fedai_client::SpotVerdict::Agree => "agree".into(),
        fedai_client::SpotVerdict::Caught(w) => {
            format!("caught {}", w.to_bech32().unwrap_or_default())
        }
        fedai_client::SpotVerdict::Undecided => "undecided".into(),
        fedai_client::SpotVerdict::NoReferee => "no referee".into(),
    }
}

/// For a person: the output (unless it streamed and matched), then payment and verification.
fn print_text(done: &JobOutcome, streamed: bool) {
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
    if let Some(s) = &done.spot_check {
        eprintln!(
            "🔎 spot check with {} other worker(s) ({} msat): {}",
            s.workers.len().saturating_sub(1),
            s.cost_msat,
            spot_verdict(s.verdict)
        );
    }
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
