//! Paying workers: the `--auto-pay` flags shared by commands that run jobs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;
use fedai_protocol::nostr::prelude::*;

use crate::config::Settings;

/// Paying workers over Lightning from your own LND node.
#[derive(clap::Args)]
pub struct PayArgs {
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
    /// What these flags set of the settings a config file may also hold.
    pub fn settings(&self) -> Settings {
        Settings {
            auto_pay: self.auto_pay.then_some(true),
            lnd_url: self.lnd_url.clone(),
            lnd_cert: self.lnd_cert.clone(),
            lnd_macaroon: self.lnd_macaroon.clone(),
            nwc: self.nwc.clone(),
            ln_network: self.ln_network.clone(),
            max_fee_msat: self.max_fee_msat,
            no_zaps: self.no_zaps.then_some(true),
            ..Settings::default()
        }
    }

    /// The payer, when paying is on (`s`: these flags over the config file).
    pub async fn context(&self, s: &Settings) -> anyhow::Result<Option<fedai_client::PayContext>> {
        use fedai_client::fedai_lightning::invoice;
        use fedai_client::fedai_lightning::lnd;
        if !s.auto_pay.unwrap_or(false) {
            return Ok(None);
        }
        let (nwc, lnd_url, lnd_cert, lnd_macaroon) =
            (&s.nwc, &s.lnd_url, &s.lnd_cert, &s.lnd_macaroon);
        let ln_network = s.ln_network.clone().unwrap_or_else(|| "bitcoin".into());
        let Some(currency) = invoice::network(&ln_network) else {
            bail!("unknown Lightning network `{ln_network}` (bitcoin, testnet, signet, regtest, simnet)");
        };
        let payer: std::sync::Arc<dyn fedai_client::fedai_lightning::Payer> =
            match (nwc, lnd_url, lnd_cert, lnd_macaroon) {
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
            max_fee_msat: s.max_fee_msat.unwrap_or(10_000),
            zaps: !s.no_zaps.unwrap_or(false),
            confirm: Some(confirm_payment(self.yes)),
            confirm_above_msat: self.confirm_above_msat.unwrap_or(10_000),
            allow_private_lnurl: self.allow_private_lnurl,
        }))
    }
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
