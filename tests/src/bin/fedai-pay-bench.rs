//! `fedai-pay-bench [--runs N]`: what Lightning adds to a job, on a real simnet (btcd + two lnd
//! nodes, one channel), through `fedai-lightning` exactly as worker and client use it.
//!
//! Pay-before (escrow): the worker issues a hold invoice (its quote), the customer checks and
//! pays it, the worker sees the HTLC held (it would run the job now), settles, and the customer's
//! payment completes with the preimage. Pay-after: an invoice paid after delivery. Zap: the
//! customer fetches the worker's LNURL-pay terms, signs a zap request for the job, gets the
//! invoice from the callback (a test LNURL service in front of the worker's lnd), checks and
//! pays it; the service publishes the zap receipt on a real fedai-relay, and the worker's check
//! of that receipt is when the job may start.

use std::time::{Duration, Instant};

use fedai_lightning::invoice::{check, Currency, Expected};
use fedai_lightning::lnd::{Lnd, LndConfig};
use fedai_lightning::{job_memo, payment_hash, preimage_for, InvoiceBackend, InvoiceState, Payer};
use fedai_lightning::{lnurl, zap};
use fedai_protocol::nostr::prelude::*;
use fedai_tests::lightning::{LightningNet, LndNode, LnurlServer};
use fedai_tests::{pct, RelayProc};
use futures_util::StreamExt;
use nostr_sdk::prelude::ClientNotification;

fn config(n: &LndNode) -> LndConfig {
    LndConfig {
        url: format!("https://{}", n.rest),
        cert: n.cert.clone(),
        macaroon: n.macaroon.clone(),
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let t = Instant::now();
    let net = tokio::task::spawn_blocking(|| LightningNet::start(2, 5_000_000))
        .await
        .unwrap();
    println!(
        "simnet up (btcd + 2 lnd, channel open and tested) in {:.1} s; load average {}",
        t.elapsed().as_secs_f64(),
        load.split_whitespace().next().unwrap_or("?")
    );
    let customer = Lnd::connect(&config(&net.nodes[0])).await.unwrap();
    let worker = Lnd::connect(&config(&net.nodes[1])).await.unwrap();
    let payee = net.nodes[1].pubkey.clone();
    let relay = RelayProc::start(&["--memory"]);
    let service = LnurlServer::start(&net.nodes[1]).await;
    let ln = lnurl::LnurlClient::allowing_private().unwrap();
    let (customer_keys, worker_keys) = (Keys::generate(), Keys::generate());
    // The worker's side: zap receipts naming it, as its subscription sees them.
    let watcher = fedai_client::nostr_client();
    watcher.add_relay(relay.url.as_str()).await.unwrap();
    watcher.connect().and_wait(Duration::from_secs(5)).await;
    let mut receipts = watcher.notifications();
    watcher
        .subscribe(
            Filter::new()
                .kind(Kind::ZapReceipt)
                .pubkey(worker_keys.public_key()),
        )
        .await
        .unwrap();
    let (mut held, mut settled, mut after) = (Vec::new(), Vec::new(), Vec::new());
    let (mut zap_paid, mut zap_seen) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let mut request = [0u8; 32];
        request[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let req_hex = hex::encode(request);
        let preimage = preimage_for(&[9; 32], &request);
        let hash = payment_hash(&preimage);
        let t0 = Instant::now();
        let inv = worker
            .add_hold_invoice(hash, 10_000, &job_memo(&req_hex), 600)
            .await
            .unwrap();
        check(
            &inv.bolt11,
            &Expected {
                amount_msat: 10_000,
                payee: Some(&payee),
                currency: Currency::Simnet,
                commits_to: fedai_lightning::invoice::Commitment::Job(&req_hex),
                now_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
            },
        )
        .unwrap();
        let pay = {
            let (c, b) = (customer.clone(), inv.bolt11.clone());
            tokio::spawn(async move { c.pay(&b, 1_000, 60).await })
        };
        // As the worker waits: on LND's invoice subscription (pushed, no polling).
        let state = worker
            .wait_past_open(hash, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(state, Some(InvoiceState::Accepted));
        held.push(t0.elapsed().as_secs_f64() * 1000.0);
        worker.settle(preimage).await.unwrap();
        assert_eq!(pay.await.unwrap().unwrap(), preimage);
        settled.push(t0.elapsed().as_secs_f64() * 1000.0);

        let t0 = Instant::now();
        let inv = worker
            .add_invoice(10_000, &job_memo(&req_hex), 600)
            .await
            .unwrap();
        customer.pay(&inv.bolt11, 1_000, 60).await.unwrap();
        after.push(t0.elapsed().as_secs_f64() * 1000.0);

        // Zap: everything the client does after a quote with a zap target, then the receipt.
        let request_id = EventId::from_byte_array(request);
        let t0 = Instant::now();
        let params = ln.pay_params(&service.url).await.unwrap();
        let zr = zap::request(
            &customer_keys,
            &zap::ZapFor {
                worker: worker_keys.public_key(),
                request_id,
                amount_msat: 10_000,
                relays: vec![relay.url.clone()],
                lnurl: lnurl::encode(&params.endpoint),
            },
        )
        .unwrap()
        .as_json();
        let bolt11 = ln.invoice(&params, 10_000, Some(&zr)).await.unwrap();
        check(
            &bolt11,
            &Expected {
                amount_msat: 10_000,
                payee: None,
                currency: Currency::Simnet,
                commits_to: fedai_lightning::invoice::Commitment::DescriptionHash(
                    zap::description_hash(&zr),
                ),
                now_unix: Timestamp::now().as_secs(),
            },
        )
        .unwrap();
        customer.pay(&bolt11, 1_000, 60).await.unwrap();
        zap_paid.push(t0.elapsed().as_secs_f64() * 1000.0);
        let expect = zap::Expect {
            server: params.nostr_pubkey.expect("the service takes zaps"),
            worker: worker_keys.public_key(),
            request_id,
            quote_id: None,
            min_amount_msat: 10_000,
            currency: Currency::Simnet,
        };
        loop {
            let n = tokio::time::timeout(Duration::from_secs(30), receipts.next())
                .await
                .expect("a zap receipt within 30 s")
                .expect("notifications");
            if let ClientNotification::Event { event, .. } = n {
                if zap::verify_receipt(&event, &expect).is_ok() {
                    break;
                }
            }
        }
        zap_seen.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("{runs} payments of 10 sat over one channel:");
    println!("| flow | p50 ms | p99 ms |\n|---|---|---|");
    for (name, v) in [
        (
            "pay-before: quote → HTLC held (the job may start)",
            &mut held,
        ),
        (
            "pay-before: quote → settled, preimage at the customer",
            &mut settled,
        ),
        ("pay-after: invoice → paid", &mut after),
        (
            "zap: quote → LNURL terms, invoice, paid (preimage at the customer)",
            &mut zap_paid,
        ),
        (
            "zap: quote → receipt verified at the worker (the job may start)",
            &mut zap_seen,
        ),
    ] {
        println!("| {name} | {:.1} | {:.1} |", pct(v, 0.5), pct(v, 0.99));
    }
}
