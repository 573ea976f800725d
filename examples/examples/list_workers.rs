//! List the live fed_AI workers on a relay.
//!
//! `cargo run -p fedai-examples --example list_workers -- ws://127.0.0.1:7777`

use fedai_client::FedaiClient;
use fedai_protocol::Keys;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let relay = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:7777".into());
    let client = FedaiClient::connect(&[relay], Keys::generate()).await?;
    for ad in client.workers().await? {
        let models: Vec<&str> = ad.ad.models.iter().map(|m| m.id.as_str()).collect();
        println!(
            "{} {} load {}/{} models {}",
            ad.worker.to_hex(),
            ad.ad.runner,
            ad.ad.in_flight,
            ad.ad.max_concurrent,
            models.join(",")
        );
    }
    client.shutdown().await;
    Ok(())
}
