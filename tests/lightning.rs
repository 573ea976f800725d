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
        url: format!("https://{}", n.rpc),
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
    let req_hex = hex(&request);
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
            request_id_hex: &req_hex,
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
        .add_hold_invoice(hash, 50_000, &job_memo(&hex(&request)), 600)
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
        .add_invoice(7_000, &job_memo(&hex(&[3u8; 32])), 600)
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

fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
