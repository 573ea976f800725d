//! What every command shares: the relays, the customer's key, the `--config` file and logging.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use fedai_protocol::nostr::prelude::*;

/// The global flags, resolved against the config file.
pub struct Ctx {
    /// Relays to use.
    pub relays: Vec<String>,
    /// The customer's secret key, if given.
    pub nsec: Option<String>,
    /// A file holding it.
    pub nsec_file: Option<PathBuf>,
    /// What this customer learnt of workers, kept across runs.
    pub reputation: PathBuf,
    /// Every setting the file may hold, the flags and environment over the file.
    pub settings: Settings,
}

impl Ctx {
    /// Start `client` with what earlier runs learnt of workers (a file that cannot be read is
    /// said, not fatal).
    pub fn load_reputation(&self, client: &fedai_client::FedaiClient) {
        if let Err(e) = client.load_reputation(&self.reputation) {
            eprintln!("warning: {e} (starting without it)");
        }
    }

    /// Keep what `client` learnt of workers for the next run.
    pub fn save_reputation(&self, client: &fedai_client::FedaiClient) {
        if let Err(e) = client.save_reputation(&self.reputation) {
            eprintln!("warning: {e}");
        }
    }

    /// The customer's keys: from `--nsec`, `--nsec-file`, or fresh.
    pub fn keys(&self) -> anyhow::Result<Keys> {
        let secret = match (&self.nsec, &self.nsec_file) {
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
}

/// What `fedai --config FILE` may hold (the settings a user would otherwise repeat on every
/// command), keyed as the long flags; [`Settings::layered`] puts the flags and environment on top.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub relays: Option<Vec<String>>,
    pub nsec_file: Option<PathBuf>,
    pub auto_pay: Option<bool>,
    pub lnd_url: Option<String>,
    pub lnd_cert: Option<PathBuf>,
    pub lnd_macaroon: Option<PathBuf>,
    pub nwc: Option<String>,
    pub ln_network: Option<String>,
    pub max_price: Option<u64>,
    pub max_fee_msat: Option<u64>,
    pub no_zaps: Option<bool>,
    pub log: Option<String>,
    pub reputation_file: Option<PathBuf>,
    /// `fedai gateway`: where it listens, its budget and its API keys.
    pub listen: Option<std::net::SocketAddr>,
    pub budget_msat: Option<u64>,
    pub budget_file: Option<PathBuf>,
    pub api_key_file: Option<PathBuf>,
}

impl Settings {
    /// `flags` (the global flags and the command's own, as settings) over the `--config` file,
    /// the one way every fed_AI binary layers its settings ([`fedai_config::layered`]).
    pub fn layered(flags: &Settings, file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        Ok(fedai_config::layered(flags, file, &["config", "nsec"])?)
    }
}

/// Logs for a person at a terminal: by default only fed_AI's own warnings (no dependency's
/// noise); `--verbose` or `FEDAI_LOG` for more. Payload-logging dependencies are capped so that
/// no prompt or output reaches a log, and colour is used only on a terminal.
pub fn init_logs(verbose: bool, file_log: Option<&str>) {
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
