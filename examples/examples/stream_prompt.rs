//! Send a prompt to the best live worker (with failover) and print the answer as it streams, then the verified usage.
//!
//! `cargo run -p fedai-examples --example stream_prompt -- ws://127.0.0.1:7777 "Why is the sky blue?"`

use std::io::Write;
use std::time::Duration;

use fedai_client::{FedaiClient, JobUpdate, RunOptions};
use fedai_protocol::{JobRequest, Keys};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let relay = args.next().unwrap_or_else(|| "ws://127.0.0.1:7777".into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "Say hello in one sentence.".into());
    let client = FedaiClient::builder()
        .relay(relay)
        .keys(Keys::generate())
        .connect()
        .await?;
    let mut req = JobRequest::chat(prompt);
    req.params.stream = true;
    req.params.max_tokens = Some(128);
    // The scheduler picks the worker; on failure the job moves to the next one.
    let opts = RunOptions {
        timeout: Duration::from_secs(120),
        ..RunOptions::default()
    };
    // The job runs in the background; its handle is a stream of updates, then the outcome.
    let mut job = client.start(req, opts);
    while let Some(update) = job.update().await {
        match update {
            JobUpdate::Partial(t) => {
                print!("{t}");
                let _ = std::io::stdout().flush();
            }
            JobUpdate::Failover { error, .. } => eprintln!("\n[worker failed: {error}; retrying]"),
            _ => {}
        }
    }
    let done = job.outcome().await?;
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
