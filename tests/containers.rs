//! fed_AI as operators run it: the images `deploy/docker/build.sh` makes (here from the binaries
//! this test run built, tag `:test`), started with `testcontainers` on a real Docker engine
//! (`deploy/docker/engine.sh` installs and starts one when there is none). Containers use the
//! host's network and listen on 127.0.0.1 only; the tests reach them there, as the host would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fedai_protocol::nostr::prelude::*;
use fedai_tests::{binary, free_port as port, temp_dir, wait_for_workers, workspace_root, Ws};
use serde_json::json;
use testcontainers::core::wait::ExitWaitStrategy;
use testcontainers::core::{Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

const T: Duration = Duration::from_secs(60);
/// The runner image's default model: slow enough on one thread to be killed mid-job.
const MODEL: &str = "smollm2-135m-instruct";

fn job(prompt: &str, max_tokens: u32) -> fedai_protocol::JobRequest {
    // Chat: the instruct model answers through its template (a bare prompt may end at once).
    let mut r = fedai_protocol::JobRequest::chat(prompt);
    r.params.model = Some(MODEL.into());
    r.params.max_tokens = Some(max_tokens);
    r.params.temperature = Some(0.0);
    r
}

/// Build the images once per test process (the script is idempotent and flock'd).
fn images() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The binaries this run built go into the images.
        let bin = binary("fedai-relay");
        let st = Command::new("bash")
            .arg(workspace_root().join("deploy/docker/build.sh"))
            .args(["--profile", "debug"])
            .env("FEDAI_BIN_DIR", bin.parent().unwrap())
            .status()
            .expect("run deploy/docker/build.sh");
        assert!(st.success(), "deploy/docker/build.sh failed");
    });
}

/// A directory or file the containers' user (uid 10001) owns, mode `mode`.
fn owned(path: &Path, mode: u32) {
    let st = Command::new("chown")
        .args(["-R", "10001:10001", &path.display().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "chown {}", path.display());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A worker key as a mounted secret: a file only the container's user can read.
fn key_file(secret: &str) -> PathBuf {
    let f = temp_dir("worker-key").join("nsec");
    std::fs::write(&f, secret).unwrap();
    owned(&f, 0o400);
    f
}

async fn relay(data: &Path, port: u16) -> ContainerAsync<GenericImage> {
    GenericImage::new("fedai-relay", "test")
        .with_wait_for(WaitFor::message_on_stdout("listening on"))
        .with_network("host")
        .with_env_var("FEDAI_RELAY_BIND", format!("127.0.0.1:{port}"))
        .with_mount(Mount::bind_mount(data.display().to_string(), "/data"))
        .start()
        .await
        .expect("start the relay container")
}

async fn runner(port: u16) -> ContainerAsync<GenericImage> {
    GenericImage::new("fedai-llamacpp", "latest")
        .with_wait_for(WaitFor::message_on_stdout("listening on"))
        .with_network("host")
        .with_env_var("HOST", "127.0.0.1")
        .with_env_var("PORT", port.to_string())
        .with_startup_timeout(T)
        .start()
        .await
        .expect("start the runner container")
}

async fn worker(key: &Path, relay: u16, runner: u16, name: &str) -> ContainerAsync<GenericImage> {
    GenericImage::new("fedai-worker", "test")
        .with_wait_for(WaitFor::message_on_stdout(" ready"))
        .with_network("host")
        .with_env_var("FEDAI_RELAYS", format!("ws://127.0.0.1:{relay}"))
        .with_env_var("FEDAI_RUNNER", "llama-cpp")
        .with_env_var("FEDAI_RUNNER_URL", format!("http://127.0.0.1:{runner}"))
        .with_env_var("FEDAI_METRICS_BIND", format!("127.0.0.1:{}", port()))
        .with_env_var("FEDAI_HEARTBEAT_SECS", "1")
        .with_env_var("FEDAI_NAME", name)
        .with_mount(Mount::bind_mount(
            key.display().to_string(),
            "/run/secrets/worker_nsec",
        ))
        .with_startup_timeout(T)
        .start()
        .await
        .expect("start a worker container")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_market_in_containers_serves_jobs_keeps_events_across_restarts_and_survives_a_killed_worker(
) {
    images();
    let data = temp_dir("relay-volume");
    owned(&data, 0o700);
    let (rp, lp) = (port(), port());
    let relay_c = relay(&data, rp).await;
    let _runner = runner(lp).await;
    let (ka, kb) = (Keys::generate(), Keys::generate());
    let wa = worker(
        &key_file(&ka.secret_key().to_secret_hex()),
        rp,
        lp,
        "container-a",
    )
    .await;
    let wb = worker(
        &key_file(&kb.secret_key().to_secret_hex()),
        rp,
        lp,
        "container-b",
    )
    .await;

    // A job from the host, through the published port.
    let url = format!("ws://127.0.0.1:{rp}");
    let c = fedai_client::FedaiClient::connect(std::slice::from_ref(&url), Keys::generate())
        .await
        .unwrap();
    wait_for_workers(&c, 2).await;
    let done = c
        .submit(job("Name a colour.", 8), false, T, |_| {})
        .await
        .unwrap();
    let out = done.result.result.usage.output_tokens;
    assert!((1..=8).contains(&out), "{out} tokens");
    let (m, check) = done.metering.as_ref().expect("metering");
    assert!(check.prompt_checked && check.output_checked);

    // Kill the worker that is streaming a job: the market run cancels that attempt (NIP-09),
    // fails over to the other worker, and the job gets exactly one answer. The killed worker,
    // started again, finds the cancellation and answers nothing late.
    let containers = [
        (ka.public_key(), wa.id().to_owned()),
        (kb.public_key(), wb.id().to_owned()),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<fedai_client::JobUpdate>();
    let c2 = c.clone();
    let opts = fedai_client::RunOptions {
        timeout: Duration::from_secs(60),
        stall_timeout: Duration::from_secs(3),
        max_attempts: 2,
        ..Default::default()
    };
    let task = tokio::spawn(async move {
        let mut long = job("Write a long story about a lighthouse keeper.", 300);
        long.params.stream = true;
        c2.run(long, &opts, move |u| {
            let _ = tx.send(u);
        })
        .await
    });
    let mut attempts = Vec::new();
    let mut streaming = None;
    let mut killed = None;
    let mut failed_over = false;
    while let Some(u) = rx.recv().await {
        match u {
            fedai_client::JobUpdate::Submitted(id) => attempts.push(id),
            fedai_client::JobUpdate::Processing(pk) => streaming = Some(pk),
            fedai_client::JobUpdate::Partial(_) if killed.is_none() => {
                // The first streamed text: kill that worker's container (SIGKILL).
                let pk = streaming.expect("processing before partial");
                let id = &containers.iter().find(|(k, _)| *k == pk).expect("ours").1;
                let st = Command::new("docker").args(["kill", id]).output().unwrap();
                assert!(st.status.success(), "{st:?}");
                killed = Some((pk, id.clone()));
            }
            fedai_client::JobUpdate::Failover { .. } => failed_over = true,
            _ => {}
        }
    }
    let outcome = task.await.unwrap();
    let (dead, dead_container) = killed.expect("a worker streamed and was killed");
    let done2 = outcome.unwrap_or_else(|e| panic!("failover to the live worker: {e}"));
    assert!(failed_over, "the run said it failed over");
    let survivor = done2.result.worker;
    assert_ne!(survivor, dead, "the answer came from the live worker");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    // The dead worker comes back (as compose's restart policy would bring it).
    let st = Command::new("docker")
        .args(["start", &dead_container])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut ws = Ws::connect(&url).await;
    let ids: Vec<String> = attempts.iter().map(|i| i.to_hex()).collect();
    let results = ws
        .query(
            "r",
            json!({"kinds": [fedai_protocol::kinds::JOB_RESULT], "#e": ids}),
        )
        .await;
    assert_eq!(
        results.len(),
        1,
        "one answer for the job, none late: {results:?}"
    );
    assert_eq!(results[0]["pubkey"], survivor.to_hex());

    // The other worker still serves.
    c.submit(job("Say hi.", 4), false, T, |_| {}).await.unwrap();

    // Restart the relay container on the same volume: every accepted event is still there.
    let before = stored_ids(&mut ws).await;
    assert!(
        before.len() >= 6,
        "requests, results, metering: {}",
        before.len()
    );
    drop(ws);
    c.shutdown().await;
    relay_c.stop().await.unwrap();
    relay_c.start().await.unwrap();
    let deadline = std::time::Instant::now() + T;
    let mut ws = loop {
        if let Ok(Ok((s, _))) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            drop(s);
            break Ws::connect(&url).await;
        }
        if std::time::Instant::now() > deadline {
            let logs = relay_c.stderr_to_vec().await.unwrap_or_default();
            panic!(
                "the relay did not come back: {}",
                String::from_utf8_lossy(&logs)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids = ws
        .query(
            "ids",
            json!({"ids": [done.request.id.to_hex(), done.result.id.to_hex(), m.id.to_hex()]}),
        )
        .await;
    assert_eq!(ids.len(), 3, "request, result and metering kept: {ids:?}");
    let after = stored_ids(&mut ws).await;
    let lost: Vec<_> = before.difference(&after).collect();
    assert!(lost.is_empty(), "events lost in the restart: {lost:?}");
}

/// Ids of every stored event except the workers' ads (replaceable: a newer ad replaces one).
async fn stored_ids(ws: &mut Ws) -> std::collections::BTreeSet<String> {
    ws.query("all", json!({"limit": 5000}))
        .await
        .into_iter()
        .filter(|e| e["kind"] != fedai_protocol::kinds::CAPABILITY_AD)
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_worker_container_with_a_bad_key_file_exits_saying_why() {
    images();
    let key = key_file("this is not a key");
    let c = GenericImage::new("fedai-worker", "test")
        .with_wait_for(WaitFor::exit(ExitWaitStrategy::new()))
        .with_network("host")
        .with_env_var("FEDAI_RELAYS", "ws://127.0.0.1:9")
        .with_env_var("FEDAI_RUNNER", "llama-cpp")
        .with_env_var("FEDAI_RUNNER_URL", "http://127.0.0.1:9")
        .with_mount(Mount::bind_mount(
            key.display().to_string(),
            "/run/secrets/worker_nsec",
        ))
        .start()
        .await
        .expect("start");
    let code = c.exit_code().await.unwrap();
    assert!(matches!(code, Some(n) if n != 0), "exit code {code:?}");
    let err = String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap()).to_string();
    assert!(
        err.contains("not a valid nsec or hex key"),
        "says what is wrong: {err}"
    );
    assert!(
        !err.contains("this is not a key"),
        "never echoes the secret: {err}"
    );
}

/// The compose file as an operator starts it (with this run's images and a free port), and
/// `fedai infer` from the host through it.
#[tokio::test]
async fn the_compose_market_answers_fedai_infer_from_the_host() {
    images();
    let compose = workspace_root().join("deploy/compose");
    let secrets = temp_dir("compose-secrets");
    let port = port();
    let project = format!("fedai-test-{}", std::process::id());
    let env = |c: &mut Command| {
        c.env("FEDAI_TAG", "test")
            .env("FEDAI_RELAY_PORT", port.to_string())
            .env("FEDAI_SECRETS_DIR", &secrets)
            .env("FEDAI", binary("fedai"));
    };
    let mut keys = Command::new("bash");
    keys.arg(compose.join("keys.sh"));
    env(&mut keys);
    assert!(keys.status().unwrap().success(), "keys.sh");
    let up = |args: &[&str]| {
        let mut c = Command::new("docker-compose");
        c.arg("-p")
            .arg(&project)
            .arg("-f")
            .arg(compose.join("docker-compose.yml"))
            .args(args);
        env(&mut c);
        c.output().expect("run docker-compose")
    };
    struct Down<F: Fn(&[&str]) -> std::process::Output>(F);
    impl<F: Fn(&[&str]) -> std::process::Output> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)(&["down", "-v"]);
        }
    }
    let out = up(&["up", "-d"]);
    let _down = Down(up);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Until both workers advertise (the runner loads its model first), then one job.
    let relay = format!("ws://127.0.0.1:{port}");
    let fedai = binary("fedai");
    let reputation = temp_dir("compose-cli").join("reputation.json");
    let deadline = std::time::Instant::now() + T;
    loop {
        let w = Command::new(&fedai)
            .env("FEDAI_REPUTATION_FILE", &reputation)
            .args(["--relay", &relay, "workers", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap_or_default();
        if v.as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers did not appear: {v}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let out = Command::new(&fedai)
        .env("FEDAI_REPUTATION_FILE", &reputation)
        .args([
            "--relay",
            &relay,
            "infer",
            "Name a colour.",
            "--max-tokens",
            "8",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("result and metering verified"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).trim().is_empty());
}
