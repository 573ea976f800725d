//! `fedai` as a person meets it: clear, fast errors when the network is not there; no
//! dependency noise on the terminal; `--config` read like every other binary's.

use std::process::Command;
use std::time::{Duration, Instant};

// Bound then dropped: nothing listens there now.
use fedai_tests::free_port as closed_port;

fn fedai(args: &[&str]) -> (bool, String, String, Duration) {
    let bin = fedai_tests::binary("fedai");
    let t0 = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .env_remove("FEDAI_LOG")
        .env_remove("FEDAI_RELAYS")
        .output()
        .expect("run fedai");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t0.elapsed(),
    )
}

#[test]
fn an_unreachable_relay_is_named_within_seconds_without_library_noise() {
    let url = format!("ws://127.0.0.1:{}", closed_port());
    let (ok, _, err, took) = fedai(&["--relay", &url, "infer", "hello?", "--timeout", "30"]);
    assert!(!ok);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(err.contains("cannot reach any relay"), "{err}");
    assert!(err.contains(&url[5..]), "names the relay: {err}");
    assert!(err.to_lowercase().contains("refused"), "says why: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes off a terminal: {err:?}"
    );
    assert!(
        !err.contains("nostr_relay_pool") && !err.contains("nostr_sdk"),
        "no dependency log lines by default: {err}"
    );
    // `workers` says the same.
    let (ok, _, err, _) = fedai(&["--relay", &url, "workers"]);
    assert!(!ok && err.contains("cannot reach any relay"), "{err}");
}

#[test]
fn config_file_supplies_relays_and_flags_win() {
    let dir = fedai_tests::temp_dir("cli-config");
    let from_file = format!("ws://127.0.0.1:{}", closed_port());
    let cfg = dir.join("fedai.toml");
    std::fs::write(&cfg, format!("relays = [\"{from_file}\"]\n")).unwrap();
    let cfg = cfg.display().to_string();
    let (ok, _, err, _) = fedai(&["--config", &cfg, "workers"]);
    assert!(
        !ok && err.contains(&from_file[5..]),
        "relays from the file: {err}"
    );
    let flag = format!("ws://127.0.0.1:{}", closed_port());
    let (ok, _, err, _) = fedai(&["--config", &cfg, "--relay", &flag, "workers"]);
    assert!(
        !ok && err.contains(&flag[5..]) && !err.contains(&from_file[5..]),
        "{err}"
    );
    // A typo in the file is an error, not silently ignored.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "relay = [\"ws://x\"]\n").unwrap();
    let (ok, _, err, _) = fedai(&["--config", &bad.display().to_string(), "workers"]);
    assert!(
        !ok && err.contains("bad.toml") && err.contains("unknown field `relay`"),
        "names the file and the key: {err}"
    );
}

/// `fedai relays`: the relays given, those live workers' ads name, and each one's latency — or
/// why it cannot be reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_lists_yours_and_the_workers_with_latency() {
    use fedai_protocol::nostr::prelude::*;
    use fedai_tests::{RelayProc, WorkerProc};
    let llama = fedai_tests::llama(fedai_runners::local::LocalModel::Tiny, "tiny", 1).await;
    let (a, b) = (
        RelayProc::start(&["--memory"]),
        RelayProc::start(&["--memory"]),
    );
    let (sk, _) = fedai_tests::nsec();
    // The worker reads jobs on both relays; the customer knows only `a` (and a dead one).
    let _w = WorkerProc::start(&sk, &a.url, &llama.url, &["--relay", &b.url]);
    let c = fedai_tests::client(&a).await;
    fedai_tests::wait_for_workers(&c, 1).await;
    c.shutdown().await;
    // The worker's NIP-65 relay list names both relays.
    let list = fedai_tests::Ws::connect(&a.url)
        .await
        .query("rl", serde_json::json!({"kinds": [10002]}))
        .await;
    assert_eq!(list.len(), 1, "one relay list: {list:?}");
    let named: Vec<String> = list[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t[0] == "r")
        .map(|t| t[1].as_str().unwrap().trim_end_matches('/').to_owned())
        .collect();
    assert!(
        named.contains(&a.url) && named.contains(&b.url),
        "{named:?}"
    );
    // A relay monitor (NIP-66) announces a third relay.
    let c3 = RelayProc::start(&["--memory"]);
    let monitor = EventBuilder::new(Kind::from_u16(30166), "")
        .tag(Tag::identifier(c3.url.clone()))
        .finalize(&Keys::generate())
        .unwrap();
    assert!(
        fedai_tests::Ws::connect(&a.url)
            .await
            .publish(&monitor)
            .await
            .0
    );
    let dead = format!("ws://127.0.0.1:{}", closed_port());
    let args = [
        "--relay".to_owned(),
        a.url.clone(),
        "--relay".to_owned(),
        dead.clone(),
        "relays".to_owned(),
        "--json".to_owned(),
    ];
    let (ok, out, err, _) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fedai(&args)
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    let row = |url: &str| {
        rows.iter()
            .find(|r| r["url"].as_str().unwrap().trim_end_matches('/') == url)
            .unwrap_or_else(|| panic!("{url} in {out}"))
            .clone()
    };
    let (ra, rb, rd) = (row(&a.url), row(&b.url), row(&dead));
    let r3 = row(&c3.url);
    assert_eq!(
        (r3["configured"].clone(), r3["workers"].clone()),
        (false.into(), 0.into()),
        "{r3}"
    );
    assert!(
        r3["query_ms"].is_number(),
        "learnt from the monitor and probed: {r3}"
    );
    assert_eq!(ra["configured"], true, "{ra}");
    assert_eq!(ra["workers"], 1, "the worker reads on a too: {ra}");
    assert!(ra["connect_ms"].as_f64().unwrap() > 0.0, "{ra}");
    assert!(ra["query_ms"].as_f64().unwrap() > 0.0, "{ra}");
    assert_eq!(rb["configured"], false, "learnt from the ad: {rb}");
    assert_eq!(rb["workers"], 1, "{rb}");
    assert!(rb["query_ms"].is_number(), "{rb}");
    assert_eq!(rd["configured"], true, "{rd}");
    assert!(rd["connect_ms"].is_null(), "{rd}");
    assert!(
        rd["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "says why: {rd}"
    );
}

/// `fedai embed` against a worker that serves embeddings only (`--serve embeddings` in front of
/// llama.cpp's `--embeddings`): one vector per text, as JSON with the job's signed facts; a
/// generation job is never sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_prints_one_vector_per_text_from_an_embedding_worker() {
    use fedai_tests::{RelayProc, WorkerProc};
    let server = fedai_runners::local::LocalLlamaServer::start_embeddings(
        fedai_runners::local::LocalModel::SmolLm2,
        "smol-embed",
        1,
    )
    .await
    .expect("an embedding server");
    let relay = RelayProc::start(&["--memory"]);
    let (sk, _) = fedai_tests::nsec();
    let _w = WorkerProc::start(&sk, &relay.url, &server.url, &["--serve", "embeddings"]);
    let c = fedai_tests::client(&relay).await;
    let ads = fedai_tests::wait_for_workers(&c, 1).await;
    c.shutdown().await;
    assert_eq!(ads[0].ad.job_kinds, vec![5060]);
    assert!(
        ads[0].ad.features.is_empty(),
        "an embedder lists no text features"
    );
    let (ok, out, err, _) = fedai(&[
        "--relay",
        &relay.url,
        "embed",
        "The cat sat on the mat.",
        "Quarterly revenue grew.",
        "--model",
        "smol-embed",
        "--encrypt",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["dimensions"], 576, "{v}");
    let e = v["embeddings"].as_array().unwrap();
    assert_eq!(e.len(), 2);
    assert!(e.iter().all(|x| x.as_array().unwrap().len() == 576));
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    // No worker generates text here: `infer` says so rather than asking the embedder.
    let (ok, _, err, _) = fedai(&[
        "--relay",
        &relay.url,
        "infer",
        "hello",
        "--model",
        "smol-embed",
        "--timeout",
        "10",
    ]);
    assert!(!ok && err.contains("no live worker"), "{err}");
}
