//! `fedai gateway`: an OpenAI-compatible HTTP API over the market, for any OpenAI app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use fedai_client::FedaiClient;
use fedai_gateway::{Config, Gateway, Ledger, Wallet};

use crate::config::{Ctx, Settings};
use crate::pay::PayArgs;

/// Serve the OpenAI API (`/v1/models`, `/v1/chat/completions`, `/v1/completions`) from the
/// market: set an app's base URL to `http://<listen>/v1`.
#[derive(clap::Args)]
pub struct GatewayCmd {
    /// Address to listen on. Beyond loopback, API keys are required (--api-key-file).
    #[arg(long, env = "FEDAI_GATEWAY_LISTEN")]
    listen: Option<SocketAddr>,
    /// Total the gateway may ever spend, msat, kept across restarts in --budget-file.
    /// Required with a wallet (--nwc or --lnd-*); without one, only free workers serve.
    #[arg(long, env = "FEDAI_GATEWAY_BUDGET_MSAT")]
    budget_msat: Option<u64>,
    /// The budget ledger (default: $XDG_DATA_HOME/fedai/gateway-ledger.json).
    #[arg(long, env = "FEDAI_GATEWAY_BUDGET_FILE")]
    budget_file: Option<PathBuf>,
    /// The most one request may cost, msat (default 100000); a request's `provider.max_price`
    /// may lower it.
    #[arg(long, env = "FEDAI_GATEWAY_MAX_PRICE_MSAT")]
    max_price_msat: Option<u64>,
    /// A file of API keys, one per line: requests must send `Authorization: Bearer <key>`.
    #[arg(long, env = "FEDAI_GATEWAY_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Seconds one attempt may take.
    #[arg(long, default_value_t = 120, env = "FEDAI_GATEWAY_TIMEOUT")]
    timeout: u64,
    /// Workers tried per request (failover), unless a request says `allow_fallbacks: false`.
    #[arg(long, default_value_t = 3, env = "FEDAI_GATEWAY_ATTEMPTS")]
    attempts: u32,
    /// Jobs running at once; more requests are answered 503 at once.
    #[arg(long, default_value_t = 64, env = "FEDAI_GATEWAY_MAX_JOBS")]
    max_jobs: usize,
    /// Send jobs in the clear instead of encrypted to their worker (NIP-44): prompts and
    /// outputs then become public on the relays. Only for workers that cannot decrypt.
    #[arg(long, env = "FEDAI_GATEWAY_NO_ENCRYPT")]
    no_encrypt: bool,
    #[command(flatten)]
    pay: PayArgs,
}

impl GatewayCmd {
    /// What its flags set of the settings a config file may also hold.
    pub fn settings(&self) -> Settings {
        Settings {
            listen: self.listen,
            budget_msat: self.budget_msat,
            budget_file: self.budget_file.clone(),
            api_key_file: self.api_key_file.clone(),
            max_price: self.max_price_msat,
            ..self.pay.settings()
        }
    }

    /// Serve until Ctrl-C or SIGTERM.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let s = &ctx.settings;
        let listen = s.listen.unwrap_or_else(|| ([127, 0, 0, 1], 8088).into());
        let api_keys = match &s.api_key_file {
            Some(p) => read_keys(p)?,
            None => Vec::new(),
        };
        fedai_gateway::check_bind(listen, !api_keys.is_empty())?;
        let wallet = self.wallet(s).await?;
        let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
        let cfg = Config {
            max_price_msat: s.max_price.unwrap_or(fedai_client::DEFAULT_MAX_PAY_MSAT),
            api_keys,
            timeout: Duration::from_secs(self.timeout.max(1)),
            max_attempts: self.attempts.max(1),
            max_jobs: self.max_jobs.max(1),
            private: !self.no_encrypt,
            reputation_file: Some(ctx.reputation.clone()),
            ..Config::default()
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        match &wallet {
            Some(w) => eprintln!(
                "fedai gateway: http://{addr}/v1 (paying within a budget of {} msat, {} left)",
                w.ledger.committed_msat() + w.ledger.remaining_msat(),
                w.ledger.remaining_msat()
            ),
            None => eprintln!("fedai gateway: http://{addr}/v1 (no wallet: free workers only)"),
        }
        Gateway::new(client, wallet, cfg)
            .serve(listener, shutdown())
            .await?;
        Ok(())
    }

    async fn wallet(&self, s: &Settings) -> anyhow::Result<Option<Wallet>> {
        let has_wallet = s.nwc.is_some() || s.lnd_url.is_some();
        if !has_wallet {
            return Ok(None);
        }
        let Some(budget) = s.budget_msat else {
            bail!(
                "a wallet needs a budget: set --budget-msat (the most this gateway may ever spend)"
            );
        };
        let mut with_pay = s.clone();
        with_pay.auto_pay = Some(true);
        let Some(pay) = self.pay.context(&with_pay).await? else {
            return Ok(None);
        };
        let path = s
            .budget_file
            .clone()
            .unwrap_or_else(fedai_gateway::ledger::default_path);
        let ledger = Ledger::open(&path, budget)?;
        Ok(Some(Wallet { pay, ledger }))
    }
}

/// API keys, one per line (blank lines and `#` comments skipped).
fn read_keys(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the API key file {}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        bail!("the API key file {} holds no key", path.display());
    }
    if keys.iter().any(|k| k.len() < 16) {
        bail!("API keys must be at least 16 characters");
    }
    Ok(keys)
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
