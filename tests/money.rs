//! A customer's money against a dishonest worker (issue 11): quotes over the customer's cap or
//! over the worker's own ad are never paid, partials from another worker are never shown, and
//! metering that claims more than the customer can see is refused.
//!
//! The dishonest workers here are test-process actors that sign real events and real BOLT11
//! invoices (with a throwaway node key); the customer's payer is a **fake** that only records
//! what it is asked to pay — the point is that it is never asked.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitcoin::hashes::{sha256, Hash};
use bitcoin::secp256k1::{Secp256k1, SecretKey};
use fedai_client::{ClientError, PayContext, RunOptions};
use fedai_lightning::invoice::Currency;
use fedai_lightning::{LnError, Payer, Preimage};
use fedai_protocol::capability::PaymentInfo;
use fedai_protocol::nostr::prelude::*;
use fedai_protocol::{kinds, Amount, JobFeedback, PaymentMode, Price};
use fedai_tests::{client, tiny_job, wait_for_workers, RelayProc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use lightning_invoice::{InvoiceBuilder, PaymentSecret};

/// A fake payer: records each payment it is asked for and pays nothing.
#[derive(Default)]
struct RecordingPayer(AtomicU32);

impl Payer for RecordingPayer {
    fn pay(&self, _: &str, _: u64, _: u32) -> BoxFuture<'_, Result<Preimage, LnError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        async { Err(LnError::PaymentFailed("a fake payer pays nothing".into())) }.boxed()
    }
}

const NODE_KEY: [u8; 32] = [7; 32];

fn node_pubkey() -> String {
    SecretKey::from_slice(&NODE_KEY)
        .unwrap()
        .public_key(&Secp256k1::new())
        .to_string()
}

/// A real, signed simnet invoice for `msat` committing to the job (as an honest worker's).
fn invoice(request: &EventId, msat: u64) -> String {
    let secp = Secp256k1::new();
    let sk = SecretKey::from_slice(&NODE_KEY).unwrap();
    InvoiceBuilder::new(lightning_invoice::Currency::Simnet)
        .payment_hash(sha256::Hash::hash(&request.to_bytes()))
        .payment_secret(PaymentSecret([3; 32]))
        .duration_since_epoch(SystemTime::now().duration_since(UNIX_EPOCH).unwrap())
        .min_final_cltv_expiry_delta(18)
        .expiry_time(Duration::from_secs(600))
        .description(fedai_lightning::job_memo(&request.to_hex()))
        .amount_milli_satoshis(msat)
        .build_signed(|m| secp.sign_ecdsa_recoverable(m, &sk))
        .unwrap()
        .to_string()
}

/// A worker that advertises `price` for model `tiny` and answers every request naming it with
/// `payment-required` for `quote` msat and a valid invoice.
async fn dishonest(
    relay: &str,
    keys: Keys,
    price: Price,
    quote: u64,
) -> tokio::task::JoinHandle<()> {
    let payment = PaymentInfo {
        mode: Some(PaymentMode::Before),
        ln_node: Some(node_pubkey()),
        lightning_address: None,
        lnurl: None,
    };
    let ad = fedai_tests::scripted_ad("dishonest", relay, price, payment);
    fedai_tests::scripted_worker(relay, keys, ad, move |_, p, keys| {
        let fb = JobFeedback::payment_required(
            p.id,
            p.customer,
            Amount {
                msat: quote,
                bolt11: Some(invoice(&p.id, quote)),
            },
        );
        vec![fb.to_event(keys).unwrap()]
    })
    .await
}

fn opts(worker: PublicKey, payer: Arc<RecordingPayer>, cap: Option<u64>) -> RunOptions {
    RunOptions {
        worker: Some(worker),
        max_attempts: 1,
        timeout: Duration::from_secs(15),
        pay: Some(PayContext {
            max_msat: cap,
            ..PayContext::new(payer, Currency::Simnet)
        }),
        ..RunOptions::default()
    }
}

fn payment_error(e: ClientError) -> String {
    match e {
        ClientError::Exhausted { last, .. } => match *last {
            ClientError::Payment(m) => m,
            other => panic!("expected a payment refusal, got {other}"),
        },
        ClientError::Payment(m) => m,
        other => panic!("expected a payment refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_over_the_ad_or_the_cap_are_never_paid() {
    let relay = RelayProc::start(&["--memory"]);
    // Bait and switch: the ad promises 1 sat a job, the quote asks 50.
    let bait = Keys::generate();
    let cheap = Price {
        model: "tiny".into(),
        base_msat: 1_000,
        per_1k_input_msat: 0,
        per_1k_output_msat: 0,
    };
    let _b = dishonest(&relay.url, bait.clone(), cheap, 50_000).await;
    // Honest about its price, but dear: 200 sat, over the default cap of 100.
    let dear = Keys::generate();
    let expensive = Price {
        model: "tiny".into(),
        base_msat: 200_000,
        per_1k_input_msat: 0,
        per_1k_output_msat: 0,
    };
    let _d = dishonest(&relay.url, dear.clone(), expensive, 200_000).await;
    let c = client(&relay).await;
    wait_for_workers(&c, 2).await;
    let payer = Arc::new(RecordingPayer::default());

    // The customer's own cap would allow 1,000 sat: the worker's ad is what refuses it.
    let e = c
        .run(
            tiny_job("bait", 8),
            &opts(bait.public_key(), payer.clone(), Some(1_000_000)),
            |_| {},
        )
        .await
        .unwrap_err();
    let m = payment_error(e);
    assert!(m.contains("its own ad prices this job at"), "{m}");

    // No cap given: the default cap applies.
    let e = c
        .run(
            tiny_job("dear", 8),
            &opts(dear.public_key(), payer.clone(), None),
            |_| {},
        )
        .await
        .unwrap_err();
    let m = payment_error(e);
    assert!(m.contains("over the cap of 100000 msat"), "{m}");
    assert_eq!(payer.0.load(Ordering::SeqCst), 0, "nothing was paid");

    // Above the confirmation threshold, a person's "no" stops the payment.
    let asked = Arc::new(AtomicU32::new(0));
    let a = asked.clone();
    let careful = RunOptions {
        pay: Some(PayContext {
            max_msat: Some(1_000_000),
            confirm: Some(Arc::new(move |msat, _| {
                assert_eq!(msat, 200_000);
                a.fetch_add(1, Ordering::SeqCst);
                false
            })),
            confirm_above_msat: 10_000,
            ..PayContext::new(payer.clone(), Currency::Simnet)
        }),
        ..opts(dear.public_key(), payer.clone(), None)
    };
    // (A fresh customer: this one has put `dear` in cooldown after its refusal.)
    let c = client(&relay).await;
    wait_for_workers(&c, 2).await;
    let e = c
        .run(tiny_job("ask me", 8), &careful, |_| {})
        .await
        .unwrap_err();
    assert!(payment_error(e).contains("declined"));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(payer.0.load(Ordering::SeqCst), 0, "nothing was paid");
}

/// On an open job, a stranger's `partial` chunks never become the verified answer: the result
/// is the worker's, and when the shown stream came from someone else the outcome says so
/// (`stream_matched` false), so nobody calls that text verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_stream_is_never_the_verified_answer() {
    let llama = fedai_tests::llama(fedai_runners::local::LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = fedai_tests::nsec();
    let _w = fedai_tests::WorkerProc::start(&sk, &relay.url, &llama.url, &[]);
    // The stranger streams into every job request it sees, at once.
    let stranger = Keys::generate();
    let nc = fedai_client::nostr_client();
    nc.add_relay(relay.url.as_str()).await.unwrap();
    nc.connect().and_wait(Duration::from_secs(5)).await;
    let mut notes = nc.notifications();
    nc.subscribe(
        Filter::new()
            .kind(Kind::from_u16(kinds::JOB_REQUEST))
            .since(Timestamp::now() - 5),
    )
    .await
    .unwrap();
    let s = stranger.clone();
    let _stranger = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(n) = notes.next().await {
            let nostr_sdk::prelude::ClientNotification::Event { event, .. } = n else {
                continue;
            };
            for seq in 0..3 {
                let fb = JobFeedback::partial(event.id, event.pubkey, seq, "STRANGER ".into());
                let _ = nc.send_event(&fb.to_event(&s).unwrap()).await;
            }
        }
    });
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;
    let mut req = tiny_job("an open question", 16);
    req.params.stream = true;
    let mut shown = String::new();
    let done = c
        .submit(req, false, Duration::from_secs(30), |u| {
            if let fedai_client::JobUpdate::Partial(t) = u {
                shown.push_str(&t);
            }
        })
        .await
        .expect("the worker's answer");
    assert_eq!(
        done.result.worker, pk,
        "the verified answer is the worker's"
    );
    assert!(!done.output.contains("STRANGER"));
    if shown.contains("STRANGER") {
        assert!(!done.stream_matched, "a stranger's stream is flagged");
    } else {
        assert!(done.stream_matched);
    }
}
