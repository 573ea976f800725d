//! One module per `fedai` command: its arguments (a clap `Args` struct) and its `run`.

use std::time::Duration;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(not(feature = "demo"))]
#[path = "no_demo.rs"]
pub mod demo;
pub mod embed;
pub mod gateway;
pub mod infer;
pub mod job;
pub mod keygen;
pub mod metering;
pub mod quote;
pub mod receipt;
pub mod relays;
pub mod sim;
pub mod workers;

use anyhow::Context;
use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;

/// The `--worker` flag (npub or hex), when given.
pub(crate) fn worker_arg(w: Option<&str>) -> anyhow::Result<Option<PublicKey>> {
    w.map(|w| {
        PublicKey::parse(w)
            .map_err(|_| anyhow::anyhow!("--worker is not an npub or hex public key"))
    })
    .transpose()
}

/// An event from a JSON file, or by id from the relays.
pub(crate) async fn event_arg(
    client: &FedaiClient,
    target: &str,
    what: &str,
) -> anyhow::Result<Event> {
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
