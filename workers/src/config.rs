//! Worker configuration: clap flags, `FEDAI_*` environment variables and an optional TOML file
//! (flag > environment > file > default). The secret key comes from `--nsec`, `FEDAI_NSEC`,
//! `--nsec-file` or the file's `nsec_file`; it is never logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fedai_protocol::nostr::prelude::{Keys, SecretKey};
use fedai_protocol::Price;
use serde::{Deserialize, Serialize};

/// `fedai-worker` command line.
#[derive(Debug, Clone, Default, Parser, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[command(
    name = "fedai-worker",
    version,
    about = "Serve AI inference on the fed_AI market"
)]
pub struct Cli {
    /// TOML configuration file (keys as the long flags with `_`).
    #[arg(long, env = "FEDAI_WORKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Secret key (nsec1… or hex). Prefer --nsec-file or FEDAI_NSEC: flags show in `ps`.
    #[arg(long, env = "FEDAI_NSEC", hide_env_values = true)]
    pub nsec: Option<String>,
    /// File holding the secret key.
    #[arg(long, env = "FEDAI_NSEC_FILE")]
    pub nsec_file: Option<PathBuf>,
    /// Relay URL (repeatable).
    #[arg(long = "relay", env = "FEDAI_RELAYS", value_delimiter = ',')]
    pub relays: Vec<String>,
    /// Runner kind: llama-cpp, openai, ollama, http.
    #[arg(long, env = "FEDAI_RUNNER")]
    pub runner: Option<String>,
    /// Runner base URL.
    #[arg(long, env = "FEDAI_RUNNER_URL")]
    pub runner_url: Option<String>,
    /// Extra allowed runner URL prefix (sandbox; loopback is always allowed).
    #[arg(
        long = "allow-runner-url",
        env = "FEDAI_ALLOW_RUNNER_URLS",
        value_delimiter = ','
    )]
    pub allow_runner_urls: Vec<String>,
    /// Price for a model: MODEL=BASE:PER_1K_IN:PER_1K_OUT (msat; repeatable).
    #[arg(long = "price", env = "FEDAI_PRICES", value_delimiter = ',')]
    pub prices: Vec<String>,
    /// Price for models without --price: BASE:PER_1K_IN:PER_1K_OUT (default 0:0:0, free).
    #[arg(long, env = "FEDAI_DEFAULT_PRICE")]
    pub default_price: Option<String>,
    /// Jobs run at once.
    #[arg(long, env = "FEDAI_MAX_CONCURRENT")]
    pub max_concurrent: Option<u32>,
    /// Jobs directed to this worker that wait for a free slot instead of being refused
    /// (default: twice --max-concurrent; 0 refuses at once). They are told their place.
    #[arg(long, env = "FEDAI_QUEUE")]
    pub queue: Option<u32>,
    /// Longest wait in the queue, seconds, before a queued job is refused with `capacity`.
    #[arg(long, env = "FEDAI_QUEUE_WAIT_SECS")]
    pub queue_wait_secs: Option<u64>,
    /// Job kinds to serve: `text` (5050, text generation; the default) and `embeddings` (5060:
    /// the runner must embed, e.g. llama.cpp started with `--embeddings`). Comma-separated.
    #[arg(long, env = "FEDAI_SERVE", value_delimiter = ',', value_parser = ["text", "embeddings"])]
    pub serve: Vec<String>,
    /// Largest prompt accepted, in bytes.
    #[arg(long, env = "FEDAI_MAX_PROMPT_BYTES")]
    pub max_prompt_bytes: Option<usize>,
    /// Largest max_tokens accepted.
    #[arg(long, env = "FEDAI_MAX_TOKENS")]
    pub max_tokens: Option<u32>,
    /// max_tokens when the request gives none.
    #[arg(long, env = "FEDAI_DEFAULT_MAX_TOKENS")]
    pub default_max_tokens: Option<u32>,
    /// Seconds between capability-ad heartbeats (the ad is also re-published when its state
    /// changes: health, models, load band); it expires after three of them (NIP-40).
    #[arg(long, env = "FEDAI_HEARTBEAT_SECS")]
    pub heartbeat_secs: Option<u64>,
    /// Re-publish the ad when the load changes, at most this often (ms; 0 = heartbeat only).
    #[arg(long, env = "FEDAI_AD_REFRESH_MS")]
    pub ad_refresh_ms: Option<u64>,
    /// Oldest request (seconds) the worker still takes, and the recovery window after a restart.
    #[arg(long, env = "FEDAI_REQUEST_MAX_AGE_SECS")]
    pub request_max_age_secs: Option<u64>,
    /// Deadline of one job in seconds.
    #[arg(long, env = "FEDAI_JOB_TIMEOUT_SECS")]
    pub job_timeout_secs: Option<u64>,
    /// On SIGTERM, how long to let running jobs finish.
    #[arg(long, env = "FEDAI_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Serve /metrics and /health here.
    #[arg(long, env = "FEDAI_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Worker instance id (`d` tag); default: "default".
    #[arg(long, env = "FEDAI_INSTANCE")]
    pub instance: Option<String>,
    /// Display name in the ad.
    #[arg(long, env = "FEDAI_NAME")]
    pub name: Option<String>,
    /// Log filter.
    #[arg(long, env = "FEDAI_LOG")]
    pub log: Option<String>,
    /// When to be paid: `before` (hold invoice, escrow), `after` (invoice with the result) or
    /// `free`.
    #[arg(long, env = "FEDAI_PAYMENT_MODE", value_parser = ["before", "after", "free"])]
    pub payment_mode: Option<String>,
    /// LND REST address (`https://host:port`, lnd's `restlisten`) for invoices.
    #[arg(long, env = "FEDAI_LND_URL")]
    pub lnd_url: Option<String>,
    /// LND's tls.cert (pinned).
    #[arg(long, env = "FEDAI_LND_CERT")]
    pub lnd_cert: Option<PathBuf>,
    /// An LND macaroon allowed to create, look up, settle and cancel invoices.
    #[arg(long, env = "FEDAI_LND_MACAROON")]
    pub lnd_macaroon: Option<PathBuf>,
    /// Pay-before: how long a quote's hold invoice waits for the customer's payment, seconds.
    #[arg(long, env = "FEDAI_PAYMENT_TIMEOUT_SECS")]
    pub payment_timeout_secs: Option<u64>,
    /// Take zaps (NIP-57) of job requests as payment, to this lightning address (`name@domain`)
    /// or LNURL-pay endpoint (`lnurl1…` or its URL). Its LNURL service must take zaps
    /// (`allowsNostr`, `nostrPubkey`). Zaps pay before the job, without escrow.
    #[arg(long, env = "FEDAI_LIGHTNING_ADDRESS")]
    pub lightning_address: Option<String>,
    /// The chain invoices and zaps are on.
    #[arg(long, env = "FEDAI_LN_NETWORK", value_parser = ["bitcoin", "testnet", "signet", "regtest", "simnet"])]
    pub ln_network: Option<String>,
    /// Let customers' requests make this worker reach loopback and private addresses: `url`
    /// inputs, relay hints of `event`/`job` inputs and `relays` tags. Off by default (a request
    /// must not turn the worker into a probe of its own network); for tests and private markets.
    #[arg(long, env = "FEDAI_ALLOW_PRIVATE_ADDRESSES")]
    pub allow_private_addresses: bool,
    /// At most this many extra relays (from requests' `relays` tags) are kept for replies.
    #[arg(long, env = "FEDAI_MAX_REPLY_RELAYS")]
    pub max_reply_relays: Option<usize>,
    /// Requests one customer (pubkey) may make of this worker per minute, in a burst of as
    /// many (default 600; 0: no limit). Past it a directed request is refused with `capacity`
    /// before any input is fetched or price counted; an open one is ignored.
    #[arg(long, env = "FEDAI_REQUESTS_PER_MINUTE_PER_CUSTOMER")]
    pub requests_per_minute_per_customer: Option<u32>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Signing keys.
    pub keys: Keys,
    /// Relays.
    pub relays: Vec<String>,
    /// Runner kind.
    pub runner: String,
    /// Runner URL.
    pub runner_url: String,
    /// Extra sandbox URL prefixes.
    pub allow_runner_urls: Vec<String>,
    /// Explicit prices.
    pub prices: Vec<Price>,
    /// Price template for other models (model field empty).
    pub default_price: Price,
    /// Concurrency.
    pub max_concurrent: u32,
    /// Directed jobs that may wait for a slot.
    pub queue: u32,
    /// Longest wait for a slot in the queue.
    pub queue_wait: Duration,
    /// Job request kinds served (5050, 5060), as the ad's `k` tags list them.
    pub job_kinds: Vec<u16>,
    /// Prompt size limit.
    pub max_prompt_bytes: usize,
    /// max_tokens limit.
    pub max_tokens: u32,
    /// Default max_tokens.
    pub default_max_tokens: u32,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Least time between load-driven ad refreshes; zero disables them.
    pub ad_refresh: Duration,
    /// Oldest request accepted / recovery window.
    pub request_max_age: Duration,
    /// Job deadline.
    pub job_timeout: Duration,
    /// Drain on shutdown.
    pub drain_timeout: Duration,
    /// Metrics listener.
    pub metrics_bind: Option<SocketAddr>,
    /// Instance id.
    pub instance: String,
    /// When the worker is paid.
    pub payment_mode: fedai_protocol::PaymentMode,
    /// Its LND node, when it takes payments.
    pub lnd: Option<fedai_lightning::lnd::LndConfig>,
    /// How long a hold invoice (or a zap) waits for payment.
    pub payment_timeout: Duration,
    /// Where zaps of job requests pay it (a lightning address or LNURL-pay endpoint).
    pub lightning_address: Option<String>,
    /// The chain.
    pub ln_network: fedai_lightning::invoice::Currency,
    /// Whether requests may make the worker reach loopback and private addresses.
    pub allow_private_addresses: bool,
    /// Bound on extra reply relays kept from requests' `relays` tags.
    pub max_reply_relays: usize,
    /// Requests per customer per minute (0: no limit).
    pub requests_per_minute_per_customer: u32,
    /// Display name.
    pub name: String,
    /// Log filter.
    pub log: String,
}

/// Configuration errors (messages never include the secret).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be used.
    #[error(transparent)]
    Config(#[from] fedai_config::ConfigError),
    /// No key given.
    #[error("no secret key: give --nsec-file, FEDAI_NSEC or --nsec")]
    NoKey,
    /// The key does not parse.
    #[error("the secret key is not a valid nsec or hex key")]
    BadKey,
    /// File problems.
    #[error("cannot read {path}: {message}")]
    File {
        /// Path.
        path: PathBuf,
        /// Cause.
        message: String,
    },
    /// A value is malformed.
    #[error("invalid {what}: `{value}` ({expected})")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// The value.
        value: String,
        /// The expected form.
        expected: &'static str,
    },
    /// Missing required setting.
    #[error("missing {0}")]
    Missing(&'static str),
}

fn read(path: &PathBuf) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.clone(),
        message: e.to_string(),
    })
}

/// Parse `BASE:IN:OUT` into a price for `model`.
pub fn parse_price(model: &str, s: &str) -> Result<Price, ConfigError> {
    let bad = || ConfigError::Invalid {
        what: "price",
        value: s.to_owned(),
        expected: "BASE:PER_1K_IN:PER_1K_OUT in msat",
    };
    let v: Vec<u64> = s
        .split(':')
        .map(|x| x.trim().parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [b, i, o] = v[..] else { return Err(bad()) };
    Ok(Price {
        model: model.to_owned(),
        base_msat: b,
        per_1k_input_msat: i,
        per_1k_output_msat: o,
    })
}

impl Cli {
    /// Merge with file and defaults.
    pub fn resolve(self) -> Result<WorkerConfig, ConfigError> {
        let c = fedai_config::layered(&self, self.config.as_deref(), &["config", "nsec"])?;
        let secret = match (c.nsec, c.nsec_file) {
            (Some(s), _) => s,
            (None, Some(p)) => read(&p)?.trim().to_owned(),
            (None, None) => return Err(ConfigError::NoKey),
        };
        let keys = SecretKey::parse(&secret)
            .map(Keys::new)
            .map_err(|_| ConfigError::BadKey)?;
        let payment_mode = c.payment_mode;
        let payment_mode = payment_mode.as_deref().unwrap_or("free");
        let payment_mode =
            fedai_protocol::PaymentMode::from_name(payment_mode).ok_or_else(|| {
                ConfigError::Invalid {
                    what: "payment mode",
                    value: payment_mode.to_owned(),
                    expected: "before, after or free",
                }
            })?;
        let lnd = match (c.lnd_url, c.lnd_cert, c.lnd_macaroon) {
            (Some(url), Some(cert), Some(macaroon)) => Some(fedai_lightning::lnd::LndConfig {
                url,
                cert,
                macaroon,
            }),
            (None, None, None) => None,
            _ => {
                return Err(ConfigError::Missing(
                    "--lnd-url, --lnd-cert and --lnd-macaroon together",
                ))
            }
        };
        let lightning_address = c.lightning_address;
        if let Some(a) = &lightning_address {
            fedai_lightning::lnurl::endpoint(a).map_err(|e| ConfigError::Invalid {
                what: "lightning address",
                value: format!("{a} ({e})"),
                expected: "name@domain, lnurl1… or an https LNURL-pay URL",
            })?;
        }
        match payment_mode {
            fedai_protocol::PaymentMode::Before if lnd.is_none() && lightning_address.is_none() => {
                return Err(ConfigError::Missing(
                    "--lnd-url/--lnd-cert/--lnd-macaroon or --lightning-address (pay-before needs a Lightning node or a zap target)",
                ))
            }
            fedai_protocol::PaymentMode::After if lnd.is_none() => {
                return Err(ConfigError::Missing(
                    "--lnd-url/--lnd-cert/--lnd-macaroon (pay-after invoices from a Lightning node; zaps pay before)",
                ))
            }
            _ => {}
        }
        let ln_network = c.ln_network;
        let ln_network = ln_network.as_deref().unwrap_or("bitcoin");
        let ln_network =
            fedai_lightning::invoice::network(ln_network).ok_or_else(|| ConfigError::Invalid {
                what: "Lightning network",
                value: ln_network.to_owned(),
                expected: "bitcoin, testnet, signet, regtest or simnet",
            })?;
        let relays = c.relays;
        if relays.is_empty() {
            return Err(ConfigError::Missing("--relay"));
        }
        let prices_raw = c.prices;
        let mut prices = Vec::new();
        for p in prices_raw {
            let (m, v) = p.split_once('=').ok_or(ConfigError::Invalid {
                what: "price",
                value: p.clone(),
                expected: "MODEL=BASE:IN:OUT",
            })?;
            prices.push(parse_price(m, v)?);
        }
        let default_price = parse_price("", &c.default_price.unwrap_or_else(|| "0:0:0".into()))?;
        let max_concurrent = c.max_concurrent.unwrap_or(4).max(1);
        let mut job_kinds = Vec::new();
        for s in &c.serve {
            let k = match s.as_str() {
                "text" => fedai_protocol::kinds::JOB_REQUEST,
                "embeddings" => fedai_protocol::kinds::EMBED_REQUEST,
                other => {
                    return Err(ConfigError::Invalid {
                        what: "job kind to serve",
                        value: other.to_owned(),
                        expected: "text or embeddings",
                    })
                }
            };
            if !job_kinds.contains(&k) {
                job_kinds.push(k);
            }
        }
        if job_kinds.is_empty() {
            job_kinds.push(fedai_protocol::kinds::JOB_REQUEST);
        }
        Ok(WorkerConfig {
            job_kinds,
            keys,
            relays,
            runner: c.runner.unwrap_or_else(|| "llama-cpp".into()),
            runner_url: c.runner_url.ok_or(ConfigError::Missing("--runner-url"))?,
            allow_runner_urls: c.allow_runner_urls,
            prices,
            default_price,
            max_concurrent,
            queue: c.queue.unwrap_or(max_concurrent.saturating_mul(2)),
            queue_wait: Duration::from_secs(c.queue_wait_secs.unwrap_or(60).max(1)),
            max_prompt_bytes: c.max_prompt_bytes.unwrap_or(64 * 1024),
            max_tokens: c.max_tokens.unwrap_or(4096),
            default_max_tokens: c.default_max_tokens.unwrap_or(256),
            heartbeat: Duration::from_secs(c.heartbeat_secs.unwrap_or(60).max(1)),
            ad_refresh: Duration::from_millis(c.ad_refresh_ms.unwrap_or(1000)),
            request_max_age: Duration::from_secs(c.request_max_age_secs.unwrap_or(600)),
            job_timeout: Duration::from_secs(c.job_timeout_secs.unwrap_or(300)),
            drain_timeout: Duration::from_secs(c.drain_timeout_secs.unwrap_or(30)),
            metrics_bind: c.metrics_bind,
            instance: c.instance.unwrap_or_else(|| "default".into()),
            name: c.name.unwrap_or_else(|| "fedai worker".into()),
            log: c.log.unwrap_or_else(|| "info".into()),
            payment_mode,
            lnd,
            payment_timeout: Duration::from_secs(c.payment_timeout_secs.unwrap_or(120).max(1)),
            lightning_address,
            ln_network,
            allow_private_addresses: c.allow_private_addresses,
            max_reply_relays: c.max_reply_relays.unwrap_or(16),
            requests_per_minute_per_customer: c.requests_per_minute_per_customer.unwrap_or(600),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_and_keys_parse_with_clear_errors() {
        let p = parse_price("m", "1000:10:50").unwrap();
        assert_eq!(
            (p.base_msat, p.per_1k_input_msat, p.per_1k_output_msat),
            (1000, 10, 50)
        );
        assert!(parse_price("m", "1:2").is_err());
        let keys = Keys::generate();
        let cli = Cli {
            nsec: Some(keys.secret_key().to_secret_hex()),
            relays: vec!["ws://127.0.0.1:1".into()],
            runner_url: Some("http://127.0.0.1:2".into()),
            prices: vec!["m=5:6:7".into()],
            ..Cli::default()
        };
        let c = cli.resolve().unwrap();
        assert_eq!(c.keys.public_key(), keys.public_key());
        assert_eq!(c.prices[0].base_msat, 5);
        let err = Cli {
            nsec: Some("nsec1garbage".into()),
            ..Cli::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            !err.to_string().contains("garbage"),
            "the key never appears in errors"
        );
        assert!(matches!(
            Cli::default().resolve().unwrap_err(),
            ConfigError::NoKey
        ));
    }
}
