//! `fedai job`: a job's events and state.

use anyhow::bail;
use std::time::Duration;

use fedai_client::FedaiClient;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, FeedbackStatus, JobFeedback, JobResult, MeteringRecord};

use crate::config::Ctx;

/// Show a job's events and state.
#[derive(clap::Args)]
pub struct Job {
    /// Request event id (hex).
    id: String,
}

impl Job {
    /// Fetch and print.
    pub async fn run(&self, ctx: &Ctx) -> anyhow::Result<()> {
        job(ctx, &self.id).await
    }
}

async fn job(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    let id = EventId::parse(id).map_err(|_| anyhow::anyhow!("not an event id"))?;
    let client = FedaiClient::connect(&ctx.relays, ctx.keys()?).await?;
    let t = Duration::from_secs(3);
    let mut events = client.fetch(Filter::new().id(id), t).await?;
    events.extend(
        client
            .fetch(
                Filter::new().event(id).kinds(
                    [
                        kinds::JOB_FEEDBACK,
                        kinds::JOB_RESULT,
                        kinds::METERING,
                        kinds::AWARD,
                        kinds::PAYMENT_RECEIPT,
                        kinds::DELETION,
                    ]
                    .map(Kind::from_u16),
                ),
                t,
            )
            .await?,
    );
    client.shutdown().await;
    if events.is_empty() {
        bail!("no events for {id} on {}", ctx.relays.join(", "));
    }
    // Events of one second have no order among themselves: the state is derived from which
    // events exist (furthest stage wins), not from the order they are listed in.
    events.sort_by_key(|e| (e.created_at, e.kind.as_u16()));
    let mut stage = 0u8;
    let mut raise = |s: u8| stage = stage.max(s);
    for e in &events {
        let what = match e.kind.as_u16() {
            kinds::JOB_REQUEST => "request".to_owned(),
            kinds::JOB_FEEDBACK => match JobFeedback::from_event(e, None) {
                Ok(f) => {
                    raise(match f.status {
                        FeedbackStatus::PaymentRequired => 1,
                        FeedbackStatus::Processing | FeedbackStatus::Partial => 2,
                        FeedbackStatus::Error => 3,
                        FeedbackStatus::Success => 4,
                    });
                    match (&f.code, f.seq) {
                        (Some(c), _) => format!(
                            "feedback {} ({c}: {})",
                            f.status,
                            if f.encrypted.is_some() {
                                "<encrypted>"
                            } else {
                                f.info.as_deref().unwrap_or("")
                            }
                        ),
                        (_, Some(s)) => format!("feedback partial #{s}"),
                        _ => format!("feedback {}", f.status),
                    }
                }
                Err(err) => format!("invalid feedback ({err})"),
            },
            kinds::JOB_RESULT => match JobResult::from_event(e, None) {
                Ok(r) => {
                    raise(4);
                    format!(
                        "result: {} in / {} out tokens, model {}",
                        r.result.usage.input_tokens, r.result.usage.output_tokens, r.result.model
                    )
                }
                Err(err) => format!("invalid result ({err})"),
            },
            kinds::METERING => match MeteringRecord::from_event(e) {
                Ok(m) => format!(
                    "metering: {} msat, {} ms",
                    m.record.price_msat, m.record.wall_ms
                ),
                Err(err) => format!("invalid metering ({err})"),
            },
            kinds::DELETION => {
                raise(5);
                "cancellation".into()
            }
            k => format!("kind {k}"),
        };
        println!(
            "{}  {}  {}…  {what}",
            e.created_at.as_secs(),
            &e.pubkey.to_hex()[..12],
            &e.id.to_hex()[..12]
        );
    }
    let state = [
        "submitted",
        "quoted",
        "processing",
        "failed",
        "done",
        "cancelled",
    ][stage as usize];
    println!("state: {state}");
    Ok(())
}
