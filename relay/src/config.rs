//! Relay configuration: clap flags, `FEDAI_RELAY_*` environment variables, and an optional TOML
//! file. Precedence: flag > environment > file > built-in default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Command line of `fedai-relay`. Every option also reads `FEDAI_RELAY_<NAME>`.
#[derive(Debug, Clone, Default, Parser, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[command(name = "fedai-relay", version, about = "The fed_AI Nostr relay")]
pub struct Cli {
    /// TOML configuration file (keys as the long flags, with `_` for `-`).
    #[arg(long, env = "FEDAI_RELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (WebSocket, NIP-11, /health and /metrics share it).
    #[arg(long, env = "FEDAI_RELAY_BIND")]
    pub bind: Option<SocketAddr>,
    /// LMDB data directory (default: the user's data dir, `fedai/relay`).
    #[arg(long, env = "FEDAI_RELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep events in memory only (tests, throwaway relays).
    #[arg(long, env = "FEDAI_RELAY_MEMORY")]
    pub memory: bool,
    /// LMDB map size in MiB (the file is sparse; this is the upper bound of the store).
    #[arg(long, env = "FEDAI_RELAY_MAP_SIZE_MIB")]
    pub map_size_mib: Option<usize>,
    /// Relay name shown in NIP-11.
    #[arg(long, env = "FEDAI_RELAY_NAME")]
    pub name: Option<String>,
    /// Relay description shown in NIP-11.
    #[arg(long, env = "FEDAI_RELAY_DESCRIPTION")]
    pub description: Option<String>,
    /// Operator contact shown in NIP-11.
    #[arg(long, env = "FEDAI_RELAY_CONTACT")]
    pub contact: Option<String>,
    /// Maximum size of one event in bytes.
    #[arg(long, env = "FEDAI_RELAY_MAX_EVENT_BYTES")]
    pub max_event_bytes: Option<usize>,
    /// EVENT messages per minute per connection.
    #[arg(long, env = "FEDAI_RELAY_EVENTS_PER_MINUTE")]
    pub events_per_minute: Option<u32>,
    /// EVENT messages per minute per author pubkey (across connections).
    #[arg(long, env = "FEDAI_RELAY_EVENTS_PER_MINUTE_PER_PUBKEY")]
    pub events_per_minute_per_pubkey: Option<u32>,
    /// REQ/COUNT per minute per connection.
    #[arg(long, env = "FEDAI_RELAY_QUERIES_PER_MINUTE")]
    pub queries_per_minute: Option<u32>,
    /// Maximum concurrent connections.
    #[arg(long, env = "FEDAI_RELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Maximum concurrent connections from one IP address.
    #[arg(long, env = "FEDAI_RELAY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// The URL(s) clients use to reach this relay (`wss://relay.example`), comma-separated:
    /// a NIP-42 `AUTH` must name one of them. Without it, the `Host` the client sent is used.
    #[arg(
        long = "public-url",
        env = "FEDAI_RELAY_PUBLIC_URL",
        value_delimiter = ','
    )]
    pub public_url: Vec<String>,
    /// Maximum events returned for one filter.
    #[arg(long, env = "FEDAI_RELAY_MAX_QUERY_RESULTS")]
    pub max_query_results: Option<usize>,
    /// Writes in flight to the store, for all connections together; past it a write is refused
    /// (`rate-limited: relay busy`) unless its connection has been quiet. 0: unbounded.
    #[arg(long, env = "FEDAI_RELAY_MAX_PENDING_WRITES")]
    pub max_pending_writes: Option<usize>,
    /// Storage quota in MiB of events (default: a quarter of the LMDB map, which also holds
    /// indexes; 1024 in memory). Past 90% only
    /// fed_AI's kinds and deletions are stored; past 100% only deletions. 0: unbounded.
    #[arg(long, env = "FEDAI_RELAY_MAX_STORE_MIB")]
    pub max_store_mib: Option<u64>,
    /// MiB one pubkey may store per day (default: 1/16 of the storage quota). 0: unbounded.
    #[arg(long, env = "FEDAI_RELAY_PUBKEY_QUOTA_MIB")]
    pub pubkey_quota_mib: Option<u64>,
    /// Minimum NIP-13 proof-of-work difficulty for job requests (kinds 5050 and 5060); 0 disables.
    #[arg(long, env = "FEDAI_RELAY_MIN_POW_JOBS")]
    pub min_pow_jobs: Option<u8>,
    /// Require NIP-42 authentication: `write`, `read` or `both`.
    #[arg(long, env = "FEDAI_RELAY_AUTH")]
    pub auth: Option<AuthMode>,
    /// Retention per kind as `KIND=SECONDS` (repeatable; `KIND=0` keeps for ever).
    #[arg(
        long = "retention",
        env = "FEDAI_RELAY_RETENTION",
        value_delimiter = ','
    )]
    pub retention: Vec<String>,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "FEDAI_RELAY_LOG")]
    pub log: Option<String>,
    /// Addresses of reverse proxies (TLS terminators) in front of the relay, comma-separated:
    /// for connections from them, the client's address is read from `X-Forwarded-For`, so the
    /// per-address limits apply to clients, not to the proxy. Anyone else's header is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "FEDAI_RELAY_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// Do not serve the market dashboard on `/` (browsers then get the plain text line).
    #[arg(long, env = "FEDAI_RELAY_NO_DASHBOARD")]
    pub no_dashboard: bool,
    /// Peer relay(s) to converge with (NIP-77 negentropy, then a live tail), comma-separated
    /// or repeated: `wss://relay.example`.
    #[arg(
        long = "sync-peer",
        env = "FEDAI_RELAY_SYNC_PEER",
        value_delimiter = ','
    )]
    pub sync_peer: Vec<String>,
    /// Kinds synced with peers, comma-separated (default: the fed_AI kinds, job feedback,
    /// deletions and NIP-65 relay lists).
    #[arg(
        long = "sync-kinds",
        env = "FEDAI_RELAY_SYNC_KINDS",
        value_delimiter = ','
    )]
    pub sync_kinds: Vec<u16>,
    /// Only events this recent are reconciled, seconds (default 86400).
    #[arg(long, env = "FEDAI_RELAY_SYNC_WINDOW_SECS")]
    pub sync_window_secs: Option<u64>,
    /// Seconds between reconciliation rounds with each peer; a live subscription to the peer
    /// runs in between (default 60).
    #[arg(long, env = "FEDAI_RELAY_SYNC_EVERY_SECS")]
    pub sync_every_secs: Option<u64>,
    /// Events fetched (and pushed) per round at most (default 20000).
    #[arg(long, env = "FEDAI_RELAY_SYNC_MAX_PER_ROUND")]
    pub sync_max_per_round: Option<usize>,
    /// Only fetch from peers; never push our events to them.
    #[arg(long, env = "FEDAI_RELAY_SYNC_NO_PUSH")]
    pub sync_no_push: bool,
}

/// NIP-42 authentication requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Authenticate to publish.
    Write,
    /// Authenticate to query.
    Read,
    /// Both.
    Both,
}

/// Where events are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// LMDB in this directory.
    Lmdb {
        /// Directory.
        dir: PathBuf,
        /// Map size in bytes.
        map_size: usize,
    },
    /// In memory.
    Memory,
}

/// A retention rule: events of `kind` older than `seconds` are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Event kind.
    pub kind: u16,
    /// Maximum age in seconds; 0 keeps for ever.
    pub seconds: u64,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// Storage.
    pub storage: Storage,
    /// NIP-11 name.
    pub name: String,
    /// NIP-11 description.
    pub description: String,
    /// NIP-11 contact.
    pub contact: Option<String>,
    /// Max event size in bytes.
    pub max_event_bytes: usize,
    /// EVENTs per minute per connection.
    pub events_per_minute: u32,
    /// EVENTs per minute per pubkey.
    pub events_per_minute_per_pubkey: u32,
    /// REQ/COUNT per minute per connection.
    pub queries_per_minute: u32,
    /// Max connections.
    pub max_connections: usize,
    /// Max connections from one IP address.
    pub max_connections_per_ip: usize,
    /// URLs clients use to reach the relay (NIP-42 relay tag check).
    pub public_urls: Vec<String>,
    /// Max results per filter.
    pub max_query_results: usize,
    /// Writes in flight to the store, all connections (0: unbounded).
    pub max_pending_writes: usize,
    /// Storage quota in bytes (0: unbounded).
    pub max_store_bytes: u64,
    /// Bytes one pubkey may store per day (0: unbounded).
    pub pubkey_quota_bytes: u64,
    /// Minimum PoW for job requests (0 = off).
    pub min_pow_jobs: u8,
    /// NIP-42.
    pub auth: Option<AuthMode>,
    /// Retention rules (`seconds` 0: kept for ever).
    pub retention: Vec<Retention>,
    /// Age after which regular events of kinds without a rule are deleted (`other=SECONDS`;
    /// 0 keeps them for ever). Replaceable and addressable events are never swept this way.
    pub retention_other: u64,
    /// Log filter.
    pub log: String,
    /// Serve the dashboard on `/` to browsers.
    pub dashboard: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Relay-to-relay sync ([`crate::sync`]); no peers: off.
    pub sync: crate::sync::SyncConfig,
}

/// Job-market defaults: requests and feedback are short-lived, results live a month, metering,
/// awards and receipts are audit records kept for ever.
pub fn default_retention() -> Vec<Retention> {
    use fedai_protocol::kinds::*;
    vec![
        Retention {
            kind: JOB_REQUEST,
            seconds: 7 * 86_400,
        },
        Retention {
            kind: JOB_FEEDBACK,
            seconds: 2 * 86_400,
        },
        Retention {
            kind: JOB_RESULT,
            seconds: 30 * 86_400,
        },
        Retention {
            kind: EMBED_REQUEST,
            seconds: 7 * 86_400,
        },
        Retention {
            kind: EMBED_RESULT,
            seconds: 30 * 86_400,
        },
        // Audit records: kept (0 = for ever), and so never swept as "other" kinds.
        Retention {
            kind: METERING,
            seconds: 0,
        },
        Retention {
            kind: AWARD,
            seconds: 0,
        },
        Retention {
            kind: PAYMENT_RECEIPT,
            seconds: 0,
        },
    ]
}

/// Regular events of kinds without a rule of their own are deleted after this long by default
/// (30 days): a relay that carries everyone's events must not keep them all for ever.
pub const DEFAULT_RETENTION_OTHER: u64 = 30 * 86_400;

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:7777".parse().expect("valid default address"),
            storage: Storage::Memory,
            name: "fedai-relay".into(),
            description: "A fed_AI relay: the Nostr market for AI inference".into(),
            contact: None,
            // Results embed their request; a long prompt plus a long answer fits with room to spare.
            max_event_bytes: 512 * 1024,
            events_per_minute: 60_000,
            events_per_minute_per_pubkey: 60_000,
            queries_per_minute: 6_000,
            max_connections: 10_000,
            max_connections_per_ip: 128,
            public_urls: Vec::new(),
            max_query_results: 5_000,
            max_pending_writes: 512,
            max_store_bytes: 1 << 30,
            pubkey_quota_bytes: (1 << 30) / 16,
            min_pow_jobs: 0,
            auth: None,
            retention: default_retention(),
            retention_other: DEFAULT_RETENTION_OTHER,
            log: "info".into(),
            dashboard: true,
            trusted_proxies: Vec::new(),
            sync: crate::sync::SyncConfig::default(),
        }
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be used.
    #[error(transparent)]
    File(#[from] fedai_config::ConfigError),
    /// A retention rule is malformed.
    #[error("invalid retention rule `{0}` (expected KIND=SECONDS)")]
    Retention(String),
    /// No data directory could be determined.
    #[error("no data directory: set --data-dir or HOME")]
    NoDataDir,
}

fn default_data_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        return Some(Path::new(&x).join("fedai").join("relay"));
    }
    let home = std::env::var_os("HOME").filter(|s| !s.is_empty())?;
    Some(Path::new(&home).join(".local/share/fedai/relay"))
}

fn parse_retention(rules: &[String]) -> Result<(Vec<Retention>, u64), ConfigError> {
    let mut out = default_retention();
    let mut other = DEFAULT_RETENTION_OTHER;
    for r in rules {
        let bad = || ConfigError::Retention(r.clone());
        let (k, s) = r.split_once('=').ok_or_else(bad)?;
        let seconds: u64 = s.trim().parse().map_err(|_| bad())?;
        if matches!(k.trim(), "other" | "*") {
            other = seconds;
            continue;
        }
        let kind: u16 = k.trim().parse().map_err(|_| bad())?;
        out.retain(|x| x.kind != kind);
        out.push(Retention { kind, seconds });
    }
    Ok((out, other))
}

/// The kinds synced: those given, or the defaults.
fn sync_kinds(given: &[u16]) -> Vec<u16> {
    if given.is_empty() {
        crate::sync::default_kinds()
    } else {
        given.to_vec()
    }
}

/// The shortest retention (seconds, not "for ever") of the regular kinds among `kinds`.
fn shortest_retention(kinds: &[u16], rules: &[Retention], other: u64) -> Option<u64> {
    kinds
        .iter()
        .filter(|k| nostr_sdk::prelude::Kind::from_u16(**k).is_regular())
        .map(|k| {
            rules
                .iter()
                .find(|r| r.kind == *k)
                .map_or(other, |r| r.seconds)
        })
        .filter(|s| *s > 0)
        .min()
}

impl Cli {
    /// Merge flags/env with the file and defaults.
    pub fn resolve(self) -> Result<RelayConfig, ConfigError> {
        let c = fedai_config::layered(&self, self.config.as_deref(), &["config"])?;
        let d = RelayConfig::default();
        let memory = c.memory;
        let storage = if memory {
            Storage::Memory
        } else {
            let dir = c
                .data_dir
                .or_else(default_data_dir)
                .ok_or(ConfigError::NoDataDir)?;
            let mib = c.map_size_mib.unwrap_or(4096);
            Storage::Lmdb {
                dir,
                map_size: mib.saturating_mul(1024 * 1024),
            }
        };
        let retention_rules = c.retention;
        let (retention, retention_other) = parse_retention(&retention_rules)?;
        let sync_cap = shortest_retention(&sync_kinds(&c.sync_kinds), &retention, retention_other)
            .unwrap_or(u64::MAX);
        const MIB: u64 = 1024 * 1024;
        let max_store_bytes = match c.max_store_mib {
            Some(mib) => mib.saturating_mul(MIB),
            None => match &storage {
                // LMDB needs room beyond the events' bytes for its indexes and free pages:
                // 2.15x for 1.3 KB notes (tests/stays_up.rs), more for smaller events.
                Storage::Lmdb { map_size, .. } => *map_size as u64 / 4,
                Storage::Memory => d.max_store_bytes,
            },
        };
        let pubkey_quota_bytes = match c.pubkey_quota_mib {
            Some(mib) => mib.saturating_mul(MIB),
            None => max_store_bytes / 16,
        };
        Ok(RelayConfig {
            bind: c.bind.unwrap_or(d.bind),
            storage,
            name: c.name.unwrap_or(d.name),
            description: c.description.unwrap_or(d.description),
            contact: c.contact,
            max_event_bytes: c.max_event_bytes.unwrap_or(d.max_event_bytes),
            events_per_minute: c.events_per_minute.unwrap_or(d.events_per_minute),
            events_per_minute_per_pubkey: c
                .events_per_minute_per_pubkey
                .unwrap_or(d.events_per_minute_per_pubkey),
            queries_per_minute: c.queries_per_minute.unwrap_or(d.queries_per_minute),
            max_connections: c.max_connections.unwrap_or(d.max_connections),
            max_connections_per_ip: c.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
            public_urls: c.public_url,
            max_query_results: c.max_query_results.unwrap_or(d.max_query_results),
            max_pending_writes: c.max_pending_writes.unwrap_or(d.max_pending_writes),
            max_store_bytes,
            pubkey_quota_bytes,
            min_pow_jobs: c.min_pow_jobs.unwrap_or(0),
            auth: c.auth,
            retention,
            retention_other,
            log: c.log.unwrap_or(d.log),
            dashboard: !c.no_dashboard,
            trusted_proxies: c.trusted_proxy,
            sync: {
                let d = crate::sync::SyncConfig::default();
                crate::sync::SyncConfig {
                    peers: c.sync_peer,
                    kinds: sync_kinds(&c.sync_kinds),
                    // Never wider than the shortest retention of a synced kind: events the
                    // sweep deleted here would otherwise be fetched back every round.
                    window_secs: c.sync_window_secs.unwrap_or(d.window_secs).min(sync_cap),
                    every_secs: c.sync_every_secs.unwrap_or(d.every_secs),
                    max_per_round: c.sync_max_per_round.unwrap_or(d.max_per_round),
                    push: !c.sync_no_push,
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("fedai-relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("relay.toml");
        std::fs::write(&file, "bind = \"127.0.0.1:9000\"\nname = \"from-file\"\nmemory = true\nretention = [\"7000=60\"]\n").unwrap();
        let cli = Cli {
            config: Some(file),
            name: Some("from-flag".into()),
            ..Cli::default()
        };
        let c = cli.resolve().unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.storage, Storage::Memory);
        let fb = c.retention.iter().find(|r| r.kind == 7000).unwrap();
        assert_eq!(fb.seconds, 60);
        assert!(c.retention.iter().any(|r| r.kind == 5050));
    }

    #[test]
    fn bad_retention_and_unknown_keys_are_errors() {
        assert!(matches!(
            parse_retention(&["5050:10".into()]),
            Err(ConfigError::Retention(_))
        ));
        let (zero, other) = parse_retention(&["5050=0".into(), "other=60".into()]).unwrap();
        assert!(
            zero.iter().any(|r| r.kind == 5050 && r.seconds == 0),
            "0 keeps for ever (and exempts the kind from `other`)"
        );
        assert_eq!(other, 60);
        assert!(parse_retention(&["other=x".into()]).is_err());
        let dir = std::env::temp_dir().join(format!("fedai-relay-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "bnd = \"x\"\n").unwrap();
        let err = Cli {
            config: Some(file),
            ..Cli::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::File(fedai_config::ConfigError::Parse { .. })
            ) && err.to_string().contains("bnd"),
            "{err}"
        );
    }
}
