//! Send a prompt to a live worker and print the answer as it streams, then the verified usage.
//!
//! `cargo run -p fedai-examples --example stream_prompt -- ws://127.0.0.1:7777 "Why is the sky blue?"`

use std::io::Write;
use std::time::Duration;

use fedai_client::{pick_worker, FedaiClient, JobUpdate};
use fedai_protocol::{JobRequest, Keys};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let relay = args.next().unwrap_or_else(|| "ws://127.0.0.1:7777".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "Say hello in one sentence.".into());
    let client = FedaiClient::connect(&[relay], Keys::generate()).await?;
    let ads = client.workers().await?;
    let worker = pick_worker(&ads, None).ok_or("no live worker")?;
    let mut req = JobRequest::chat(prompt);
    req.provider = Some(worker.worker);
    req.params.stream = true;
    req.params.max_tokens = Some(128);
    let done = client
        .submit(req, false, Duration::from_secs(120), |u| {
            if let JobUpdate::Partial(t) = u {
                print!("{t}");
                let _ = std::io::stdout().flush();
            }
        })
        .await?;
    let u = done.result.result.usage;
    println!(
        "\n[{} in / {} out tokens, metering verified: {}]",
        u.input_tokens,
        u.output_tokens,
        done.metering.is_some()
    );
    client.shutdown().await;
    Ok(())
}
