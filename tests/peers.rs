//! fed_AI behind a relay we did not write: nostr-rs-relay (crates.io). The worker, `fedai infer`
//! and an independent client (nostr-tools) work unchanged through it.

use std::process::Command;
use std::time::Duration;

use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::LocalModel;
use fedai_tests::generic::{first, run};
use fedai_tests::peers::NostrRsRelay;
use fedai_tests::{nsec, WorkerProc};

fn fedai(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fedai_tests::binary("fedai"))
        .args(args)
        .env_remove("FEDAI_LOG")
        .output()
        .expect("run fedai");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_clients_work_behind_nostr_rs_relay() {
    let relay = tokio::task::spawn_blocking(NostrRsRelay::start)
        .await
        .unwrap();
    let tiny = fedai_tests::llama(LocalModel::Tiny, "tiny", 2).await;
    let (sk, pk) = nsec();
    let _w = WorkerProc::start(&sk, &relay.url, &tiny.url, &[]);
    // The ad is found through the other relay.
    let mut found = false;
    for _ in 0..50 {
        let (ok, out, _) = fedai(&["--relay", &relay.url, "workers", "--json"]);
        if ok && (out.contains(&pk.to_hex()) || out.contains(&pk.to_bech32().unwrap())) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(found, "the worker's ad is served by nostr-rs-relay");

    // `fedai infer`, plain and encrypted (NIP-44 to the worker).
    for extra in [&[][..], &["--encrypt"][..]] {
        let mut args = vec![
            "--relay",
            &relay.url,
            "infer",
            "hello from another relay",
            "--model",
            "tiny",
            "--max-tokens",
            "8",
            "--raw",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = fedai(&args);
        assert!(ok, "{extra:?}: {out} {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON answer");
        assert_eq!(v["worker"], pk.to_bech32().unwrap(), "{v}");
        assert_eq!(v["metering"]["verified"], true, "{v}");
    }

    // An independent NIP-90 client through the same relay.
    let csk = Keys::generate().secret_key().to_secret_hex();
    let (code, lines) = run(
        &[&relay.url],
        &csk,
        &[
            "job",
            "--input",
            "hi",
            "--param",
            "model=tiny",
            "--param",
            "max_tokens=8",
            "--p",
            &pk.to_hex(),
            "--encrypt",
            "nip04",
        ],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(first(&lines, "result").unwrap()["encrypted"], true);
}
