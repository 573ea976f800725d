//! Payments on a real Lightning network: btcd (simnet) and two lnd nodes built from Go modules
//! (`tests/lightning/setup.sh`), a real channel, real HTLCs, through `fedai-lightning`'s LND
//! backend and payer. Node 0 is the customer, node 1 the worker.

use std::time::Duration;

use fedai_lightning::invoice::{check, Currency, Expected};
use fedai_lightning::lnd::{Lnd, LndConfig};
use fedai_lightning::{
    job_memo, payment_hash, preimage_for, InvoiceBackend, InvoiceState, LnError, Payer,
};
use fedai_tests::lightning::{LightningNet, LndNode};

fn config(n: &LndNode) -> LndConfig {
    LndConfig {
        url: format!("https://{}", n.rest),
        cert: n.cert.clone(),
        macaroon: n.macaroon.clone(),
    }
}

async fn reaches(worker: &Lnd, hash: [u8; 32], want: InvoiceState) -> bool {
    for _ in 0..300 {
        if worker.invoice_state(hash).await.unwrap() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn wait_state(worker: &Lnd, hash: [u8; 32], want: InvoiceState) {
    assert!(
        reaches(worker, hash, want).await,
        "invoice never reached {want:?}"
    );
}

/// Wait until the worker's node holds the HTLC; if it never does, say why the payment failed.
async fn held(
    worker: &Lnd,
    hash: [u8; 32],
    pay: &mut tokio::task::JoinHandle<Result<[u8; 32], LnError>>,
) {
    if !reaches(worker, hash, InvoiceState::Accepted).await {
        let r = pay.await;
        panic!("the HTLC was never held; the payment ended with {r:?}");
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_invoices_settle_on_delivery_and_refund_on_failure_and_plain_invoices_pay() {
    let net = tokio::task::spawn_blocking(|| LightningNet::start(2, 1_000_000))
        .await
        .unwrap();
    let (cust_node, work_node) = (&net.nodes[0], &net.nodes[1]);
    let customer = Lnd::connect(&config(cust_node)).await.unwrap();
    let worker = Lnd::connect(&config(work_node)).await.unwrap();
    assert_eq!(worker.node_pubkey().await.unwrap(), work_node.pubkey);
    let secret = [42u8; 32];

    // Pay-before, delivered: the HTLC is held while the job runs, then settled.
    let request = [1u8; 32];
    let req_hex = hex::encode(request);
    let preimage = preimage_for(&secret, &request);
    let hash = payment_hash(&preimage);
    let inv = worker
        .add_hold_invoice(hash, 21_000, &job_memo(&req_hex), 600)
        .await
        .unwrap();
    let checked = check(
        &inv.bolt11,
        &Expected {
            amount_msat: 21_000,
            payee: Some(&work_node.pubkey),
            currency: Currency::Simnet,
            commits_to: fedai_lightning::invoice::Commitment::Job(&req_hex),
            now_unix: now(),
        },
    )
    .expect("the worker's own invoice passes the customer's checks");
    assert_eq!(checked.payment_hash, hash);
    let before = cust_node.channel_local_sat();
    let mut pay = {
        let (c, b) = (customer.clone(), inv.bolt11.clone());
        tokio::spawn(async move { c.pay(&b, 1_000, 60).await })
    };
    held(&worker, hash, &mut pay).await;
    assert!(
        !pay.is_finished(),
        "a held payment does not complete before settlement"
    );
    worker.settle(preimage).await.unwrap();
    let got = pay
        .await
        .unwrap()
        .expect("the payment completes on settlement");
    assert_eq!(got, preimage, "the customer's proof is the preimage");
    wait_state(&worker, hash, InvoiceState::Settled).await;
    assert_eq!(cust_node.channel_local_sat(), before - 21);

    // Pay-before, failed job: the worker cancels, the customer's balance is restored.
    let request = [2u8; 32];
    let preimage = preimage_for(&secret, &request);
    let hash = payment_hash(&preimage);
    let inv = worker
        .add_hold_invoice(hash, 50_000, &job_memo(&hex::encode(request)), 600)
        .await
        .unwrap();
    let before = cust_node.channel_local_sat();
    let mut pay = {
        let (c, b) = (customer.clone(), inv.bolt11.clone());
        tokio::spawn(async move { c.pay(&b, 1_000, 60).await })
    };
    held(&worker, hash, &mut pay).await;
    worker.cancel(hash).await.unwrap();
    match pay.await.unwrap() {
        Err(LnError::PaymentFailed(_)) => {}
        other => panic!("a cancelled hold invoice must fail the payment, got {other:?}"),
    }
    wait_state(&worker, hash, InvoiceState::Canceled).await;
    assert_eq!(
        cust_node.channel_local_sat(),
        before,
        "nothing charged for a failed job"
    );
    // Settling a cancelled invoice is refused: no charge after a refund.
    assert!(worker.settle(preimage).await.is_err());

    // Pay-after: a plain invoice, paid once; paying it again is refused by the payer's node.
    let inv = worker
        .add_invoice(7_000, &job_memo(&hex::encode([3u8; 32])), 600)
        .await
        .unwrap();
    let before = cust_node.channel_local_sat();
    let pre = customer.pay(&inv.bolt11, 1_000, 60).await.unwrap();
    assert_eq!(payment_hash(&pre), inv.payment_hash);
    wait_state(&worker, inv.payment_hash, InvoiceState::Settled).await;
    assert!(
        customer.pay(&inv.bolt11, 1_000, 60).await.is_err(),
        "no double payment"
    );
    assert_eq!(cust_node.channel_local_sat(), before - 7);
}

mod paid_jobs {
    use super::*;
    use fedai_client::{ClientError, JobUpdate, PayContext, RunOptions};
    use fedai_protocol::nostr::prelude::*;
    use fedai_protocol::{kinds, JobRequest, PaymentReceipt};
    use fedai_runners::local::LocalModel;
    use fedai_tests::{client, nsec, tiny_job, wait_for_workers, RelayProc, WorkerProc};

    fn lnd_args(n: &LndNode, mode: &str) -> Vec<String> {
        vec![
            "--payment-mode".into(),
            mode.into(),
            "--lnd-url".into(),
            format!("https://{}", n.rest),
            "--lnd-cert".into(),
            n.cert.display().to_string(),
            "--lnd-macaroon".into(),
            n.macaroon.display().to_string(),
        ]
    }

    fn refs(a: &[String]) -> Vec<&str> {
        a.iter().map(String::as_str).collect()
    }

    async fn balance_becomes(n: &LndNode, want: u64) -> u64 {
        let mut got = 0;
        for _ in 0..100 {
            got = n.channel_local_msat();
            if got == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        got
    }

    /// Run a paid job: it completes, the amount announced while paying is the amount proven
    /// paid, the metering record names the same payment hash and price, and the customer's
    /// balance drops by exactly that amount.
    async fn paid_run(
        c: &fedai_client::FedaiClient,
        customer: &LndNode,
        job: JobRequest,
        opts: &RunOptions,
    ) -> fedai_client::JobOutcome {
        let before = customer.channel_local_msat();
        let mut paying = None;
        let done = c
            .run(job, opts, |u| {
                if let JobUpdate::Paying(m) = u {
                    paying = Some(m);
                }
            })
            .await
            .expect("the paid job completes");
        let proof = done.payment.clone().expect("paid");
        assert_eq!(paying, Some(proof.amount_msat));
        let (m, _) = done.metering.clone().expect("metering");
        assert_eq!(
            m.record.payment_hash.as_deref(),
            Some(proof.payment_hash.as_str()),
            "the metering record names the payment"
        );
        assert_eq!(m.record.price_msat, proof.amount_msat);
        assert_eq!(
            balance_becomes(customer, before - proof.amount_msat).await,
            before - proof.amount_msat,
            "charged exactly the quote"
        );
        done
    }

    /// A paid job through a relay we did not write (nostr-rs-relay), paid by `fedai infer
    /// --auto-pay` from the customer's lnd: nothing in the money path depends on our relay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paid_job_behind_nostr_rs_relay() {
        let relay = tokio::task::spawn_blocking(fedai_tests::peers::NostrRsRelay::start)
            .await
            .unwrap();
        let net = tokio::task::spawn_blocking(|| LightningNet::start(2, 1_000_000))
            .await
            .unwrap();
        let (cust, work) = (&net.nodes[0], &net.nodes[1]);
        let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
        let (sk, pk) = nsec();
        let mut args = lnd_args(work, "before");
        args.extend(["--price".to_string(), "tiny=2000:1000:1000".to_string()]);
        let _w = WorkerProc::start(&sk, &relay.url, &tiny.url, &refs(&args));
        let fedai = |args: &[&str]| {
            std::process::Command::new(fedai_tests::binary("fedai"))
                .args(args)
                .output()
                .unwrap()
        };
        for _ in 0..50 {
            let out = fedai(&["--relay", &relay.url, "workers", "--json"]);
            if String::from_utf8_lossy(&out.stdout).contains(&pk.to_bech32().unwrap()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let before = cust.channel_local_msat();
        let rest = format!("https://{}", cust.rest);
        let (cert, mac) = (
            cust.cert.display().to_string(),
            cust.macaroon.display().to_string(),
        );
        let out = fedai(&[
            "--relay",
            &relay.url,
            "infer",
            "a paid job elsewhere",
            "--model",
            "tiny",
            "--max-tokens",
            "8",
            "--raw",
            "--json",
            "--auto-pay",
            "--lnd-url",
            &rest,
            "--lnd-cert",
            &cert,
            "--lnd-macaroon",
            &mac,
            "--ln-network",
            "simnet",
            "--max-price",
            "50000",
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let paid = v["payment"]["amount_msat"].as_u64().expect("paid");
        assert_eq!(v["price_msat"].as_u64(), Some(paid));
        assert_eq!(balance_becomes(cust, before - paid).await, before - paid);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paid_jobs_escrow_refund_pay_after_zap_and_no_payer() {
        let net = tokio::task::spawn_blocking(|| LightningNet::start(2, 1_000_000))
            .await
            .unwrap();
        let (cust, work) = (&net.nodes[0], &net.nodes[1]);
        let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
        let smol = fedai_tests::llama(LocalModel::SmolLm2, "smol", 1).await;
        let relay = RelayProc::start(&["--memory"]);
        let price = [
            "--price",
            "tiny=2000:1000:1000",
            "--price",
            "smol=2000:1000:1000",
        ];
        let arg = |mode: &str, extra: &[&str]| {
            let mut a: Vec<String> = lnd_args(work, mode);
            a.extend(price.iter().chain(extra).map(|s| s.to_string()));
            a
        };
        let (sk_before, pk_before) = nsec();
        let (sk_slow, pk_slow) = nsec();
        let (sk_after, pk_after) = nsec();
        let a1 = arg("before", &[]);
        let a2 = arg("before", &["--job-timeout-secs", "1"]);
        let a3 = arg("after", &[]);
        // A worker without a node of its own: paid by zaps to its LNURL service (a test
        // service that pays into the worker's lnd).
        let lnurl = fedai_tests::lightning::LnurlServer::start(work).await;
        let (sk_zap, pk_zap) = nsec();
        let mut a4: Vec<String> = [
            "--payment-mode",
            "before",
            "--lightning-address",
            &lnurl.url,
            "--ln-network",
            "simnet",
            // The test LNURL service listens on loopback.
            "--allow-private-addresses",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a4.extend(price.iter().map(|s| s.to_string()));
        // The same, with a 1 s job deadline: a zapped job that fails.
        let (sk_zap_slow, pk_zap_slow) = nsec();
        let mut a5 = a4.clone();
        a5.extend(["--job-timeout-secs".to_string(), "1".to_string()]);
        let _w1 = WorkerProc::start(&sk_before, &relay.url, &tiny.url, &refs(&a1));
        let _w2 = WorkerProc::start(&sk_slow, &relay.url, &smol.url, &refs(&a2));
        let _w3 = WorkerProc::start(&sk_after, &relay.url, &tiny.url, &refs(&a3));
        let _w4 = WorkerProc::start(&sk_zap, &relay.url, &tiny.url, &refs(&a4));
        let _w5 = WorkerProc::start(&sk_zap_slow, &relay.url, &smol.url, &refs(&a5));
        let c = client(&relay).await;
        let ads = wait_for_workers(&c, 5).await;
        for a in &ads {
            if a.worker == pk_zap || a.worker == pk_zap_slow {
                assert_eq!(a.ad.payment.ln_node, None);
                assert_eq!(a.ad.payment.lnurl.as_deref(), Some(lnurl.url.as_str()));
            } else {
                assert_eq!(a.ad.payment.ln_node.as_deref(), Some(work.pubkey.as_str()));
            }
        }
        let payer = Lnd::connect(&config(cust)).await.unwrap();
        let pay = PayContext {
            payer: std::sync::Arc::new(payer),
            currency: Currency::Simnet,
            max_msat: Some(100_000),
            max_fee_msat: 1_000,
            zaps: true,
            confirm: None,
            confirm_above_msat: 0,
            // The test LNURL service listens on loopback.
            allow_private_lnurl: true,
        };
        let opts = |w: PublicKey| RunOptions {
            worker: Some(w),
            max_attempts: 1,
            timeout: Duration::from_secs(30),
            pay: Some(pay.clone()),
            ..RunOptions::default()
        };

        // Pay-before: the hold invoice is paid, the job runs, the worker settles, the customer
        // holds the preimage and publishes a receipt that anyone can check.
        let done = paid_run(&c, cust, tiny_job("a paid job", 8), &opts(pk_before)).await;
        let proof = done.payment.clone().expect("paid");
        let receipts = c
            .fetch(
                Filter::new()
                    .kind(Kind::from_u16(kinds::PAYMENT_RECEIPT))
                    .id(proof.receipt.expect("receipt published")),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        let r = PaymentReceipt::from_event(&receipts[0]).expect("a valid receipt");
        assert_eq!(r.receipt.worker, pk_before);
        assert_eq!(r.receipt.preimage, proof.preimage);
        // Anyone can check it against the invoice and the worker's metering record.
        let out = std::process::Command::new(fedai_tests::binary("fedai"))
            .args(["--relay", &relay.url, "receipt", &receipts[0].id.to_hex()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("verified") && text.contains("carries the same payment hash"),
            "{text}"
        );
        // A forged receipt for the same job: the customer's own node issues an invoice that
        // commits to the job, with a preimage the customer chose — a real, signed invoice that
        // nobody paid. Bound to the worker's advertised node, it is refused.
        let own = Lnd::connect(&config(cust)).await.unwrap();
        let fake_preimage = [0x42u8; 32];
        let fake_hash = payment_hash(&fake_preimage);
        let memo = job_memo(&r.receipt.request_id.to_hex());
        let fake = own
            .add_hold_invoice(fake_hash, proof.amount_msat, &memo, 600)
            .await
            .unwrap();
        let forged = PaymentReceipt {
            bolt11: fake.bolt11,
            payment_hash: hex::encode(fake_hash),
            preimage: hex::encode(fake_preimage),
            ..r.receipt.clone()
        }
        .to_event(&Keys::generate())
        .unwrap();
        let mut ws = fedai_tests::Ws::connect(&relay.url).await;
        assert!(ws.publish(&forged).await.0, "the relay stores the receipt");
        let out = std::process::Command::new(fedai_tests::binary("fedai"))
            .args(["--relay", &relay.url, "receipt", &forged.id.to_hex()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("does not back the receipt"),
            "a forged receipt passed: {} {err}",
            String::from_utf8_lossy(&out.stdout)
        );

        // Pay-before, failed job (the worker's 1 s deadline): refunded, nothing charged.
        let before = cust.channel_local_msat();
        // A greedy raw count never stops on its own: it outlasts the worker's 1 s deadline (a
        // chat "long poem" sometimes ended after 64 tokens, inside it, on a loaded machine).
        let mut req = JobRequest::text("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,");
        req.params.model = Some("smol".into());
        req.params.max_tokens = Some(256);
        req.params.temperature = Some(0.0);
        let mut paid_for_it = false;
        let err = c
            .run(req, &opts(pk_slow), |u| {
                if let JobUpdate::Paying(_) = u {
                    paid_for_it = true;
                }
            })
            .await
            .unwrap_err();
        assert!(paid_for_it, "the customer paid before the job ran");
        assert!(err.to_string().contains("timeout"), "{err}");
        assert_eq!(
            balance_becomes(cust, before).await,
            before,
            "a failed job is never charged"
        );

        // Pay-after: the invoice comes with the result, for what the job cost.
        let done = paid_run(&c, cust, tiny_job("pay me later", 8), &opts(pk_after)).await;
        let proof = done.payment.clone().expect("paid after");
        let u = done.result.result.usage;
        assert_eq!(
            proof.amount_msat,
            2000 + (u.input_tokens * 1000 + u.output_tokens * 1000).div_ceil(1000)
        );

        // Pay-before through Nostr Wallet Connect: an ordinary NIP-47 wallet (a test wallet
        // service in front of the customer's lnd) pays the hold invoice.
        let wallet = fedai_tests::lightning::NwcService::start(
            &relay.url,
            std::sync::Arc::new(Lnd::connect(&config(cust)).await.unwrap()),
        )
        .await;
        let nwc = fedai_lightning::nwc::Nwc::connect(&wallet.uri)
            .await
            .unwrap();
        let via_nwc = RunOptions {
            pay: Some(PayContext {
                payer: std::sync::Arc::new(nwc),
                ..pay.clone()
            }),
            ..opts(pk_before)
        };
        paid_run(&c, cust, tiny_job("paid by my wallet", 8), &via_nwc).await;

        // Paid by zap: the customer zaps the request to the worker's LNURL service, which
        // publishes the zap receipt; the worker checks it and runs the job.
        let worker_before = work.channel_local_msat();
        let done = paid_run(&c, cust, tiny_job("paid with a zap", 8), &opts(pk_zap)).await;
        let proof = done.payment.clone().expect("paid by zap");
        assert_eq!(
            work.channel_local_msat(),
            worker_before + proof.amount_msat,
            "the zap reached the worker's node"
        );
        let receipt_id = proof.receipt.expect("receipt published").to_hex();
        let zap_receipts = c
            .fetch(
                Filter::new()
                    .kind(Kind::ZapReceipt)
                    .pubkey(pk_zap)
                    .event(done.request.id),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(zap_receipts.len(), 1, "one zap receipt for the job");
        assert_eq!(zap_receipts[0].pubkey, lnurl.nostr_pubkey);
        let out = std::process::Command::new(fedai_tests::binary("fedai"))
            .args(["--relay", &relay.url, "receipt", &receipt_id])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("by zap") && text.contains("same payment hash"),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A zapped job that fails: the zap is final, and the worker's error says so.
        let before = cust.channel_local_msat();
        // A greedy raw count never stops on its own: it outlasts the worker's 1 s deadline (a
        // chat "long poem" sometimes ended after 64 tokens, inside it, on a loaded machine).
        let mut req = JobRequest::text("11, 12, 13, 14, 15, 16, 17, 18, 19, 20,");
        req.params.model = Some("smol".into());
        req.params.max_tokens = Some(256);
        req.params.temperature = Some(0.0);
        let err = c.run(req, &opts(pk_zap_slow), |_| {}).await.unwrap_err();
        assert!(
            err.to_string().contains("timeout") && err.to_string().contains("not refunded"),
            "{err}"
        );
        assert!(cust.channel_local_msat() < before, "a zap is not refunded");

        // A customer who refuses zaps (no escrow) is told so, and pays nothing.
        let before = cust.channel_local_msat();
        let no_zaps = RunOptions {
            pay: Some(PayContext {
                zaps: false,
                ..pay.clone()
            }),
            ..opts(pk_zap)
        };
        let err = c
            .run(tiny_job("no zaps please", 4), &no_zaps, |_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("paying by zap is off"), "{err}");
        assert_eq!(cust.channel_local_msat(), before);

        // No payer: a clear error, nothing paid.
        let bare = RunOptions {
            pay: None,
            ..opts(pk_before)
        };
        let err = c
            .run(tiny_job("free lunch?", 4), &bare, |_| {})
            .await
            .unwrap_err();
        match err {
            ClientError::Exhausted { last, .. } => {
                assert!(matches!(*last, ClientError::Payment(_)), "{last}");
                assert!(last.to_string().contains("no payer"), "{last}");
            }
            other => panic!("expected a payment error, got {other}"),
        }

        // A generic NIP-90 client (nostr-tools, not ours) gets `payment-required` with a BOLT11
        // invoice that any wallet pays — here the customer's lnd — and then its answer: no
        // fed_AI-only step (no award).
        let generic = Keys::generate().secret_key().to_secret_hex();
        let mut g = fedai_tests::generic::GenericRun::start(
            &[&relay.url],
            &generic,
            &[
                "job",
                "--input",
                "paid by a generic client",
                "--param",
                "model=tiny",
                "--param",
                "max_tokens=8",
                "--bid",
                "100000",
                "--p",
                &pk_before.to_hex(),
            ],
        );
        let quote = g
            .until(
                "feedback",
                Some("payment-required"),
                Duration::from_secs(30),
            )
            .await;
        let bolt11 = quote["bolt11"]
            .as_str()
            .expect("payment-required carries a payable BOLT11")
            .to_owned();
        let amount: u64 = quote["amount"].as_str().unwrap().parse().unwrap();
        assert!(amount > 0 && amount <= 100_000, "{quote}");
        let before = cust.channel_local_msat();
        let wallet = Lnd::connect(&config(cust)).await.unwrap();
        let paying = tokio::spawn(async move { wallet.pay(&bolt11, 1_000, 60).await });
        let res = g.until("result", None, Duration::from_secs(60)).await;
        assert!(!res["content"].as_str().unwrap().is_empty());
        paying
            .await
            .unwrap()
            .expect("the hold invoice settles on delivery");
        assert_eq!(
            balance_becomes(cust, before - amount).await,
            before - amount
        );

        // Unpaid requests cannot jam a paid worker: its one slot is taken only once a payment
        // is held, and one customer may hold at most two unpaid quotes.
        let (sk_one, pk_one) = nsec();
        let a6 = arg("before", &["--max-concurrent", "1"]);
        let _w6 = WorkerProc::start(&sk_one, &relay.url, &tiny.url, &refs(&a6));
        wait_for_workers(&c, 6).await;
        let jammer = Keys::generate().secret_key().to_secret_hex();
        let unpaid = |n: usize| {
            fedai_tests::generic::GenericRun::start(
                &[&relay.url],
                &jammer,
                &[
                    "job",
                    "--input",
                    &format!("never paid {n}"),
                    "--param",
                    "model=tiny",
                    "--p",
                    &pk_one.to_hex(),
                ],
            )
        };
        let mut held = Vec::new();
        for n in 0..2 {
            let mut g = unpaid(n);
            g.until(
                "feedback",
                Some("payment-required"),
                Duration::from_secs(30),
            )
            .await;
            held.push(g);
        }
        let mut third = unpaid(2);
        let refused = third
            .until("feedback", Some("error"), Duration::from_secs(30))
            .await;
        assert!(
            refused["info"]
                .as_str()
                .unwrap_or("")
                .contains("too many unpaid quotes"),
            "{refused}"
        );
        // A paying customer still gets the worker's only slot.
        paid_run(&c, cust, tiny_job("I pay", 8), &opts(pk_one)).await;
        drop(held);
        c.shutdown().await;
    }
}
