//! fed_AI as operators run it: the images `deploy/docker/build.sh` makes (here from the binaries
//! this test run built, tag `:test`), started with `testcontainers` on a real Docker engine
//! (`deploy/docker/engine.sh` installs and starts one when there is none). Containers use the
//! host's network and listen on 127.0.0.1 only; the tests reach them there, as the host would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fedai_protocol::nostr::prelude::*;
use fedai_tests::{binary, temp_dir, wait_for_workers, workspace_root, Ws};
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

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory or file the containers' user (uid 10001) owns, mode `mode`.
fn owned(path: &Path, mode: u32) {
    let st = Command::new("chown")
        .args(["-R", "10001", &path.display().to_string()])
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
        .with_cmd(["--host", "127.0.0.1", "--port", &port.to_string()])
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
    let _wb = worker(
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

    // Kill worker A mid-job: the customer gets a clear error, never an answer from nowhere,
    // and nobody else answers a job directed to A.
    let mut long = job("Write a long story about a lighthouse keeper.", 400);
    long.provider = Some(ka.public_key());
    long.params.stream = true;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<EventId>>(4);
    let c2 = c.clone();
    let task = tokio::spawn(async move {
        c2.submit(long, false, Duration::from_secs(20), move |u| match u {
            fedai_client::JobUpdate::Submitted(id) => {
                let _ = tx.try_send(Some(id));
            }
            fedai_client::JobUpdate::Partial(_) => {
                let _ = tx.try_send(None);
            }
            _ => {}
        })
        .await
    });
    let rid = rx.recv().await.flatten().expect("submitted");
    // The first streamed text: the job is running on A. Kill the container (SIGKILL).
    if rx.recv().await != Some(None) {
        panic!(
            "A did not stream: {:?}",
            task.await.unwrap().map(|o| o.output)
        );
    }
    let st = Command::new("docker")
        .args(["kill", wa.id()])
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let outcome = task.await.unwrap();
    assert!(
        outcome.is_err(),
        "no answer from a dead worker: {outcome:?}"
    );
    let mut ws = Ws::connect(&url).await;
    let results = ws
        .query(
            "r",
            json!({"kinds": [fedai_protocol::kinds::JOB_RESULT], "#e": [rid.to_hex()]}),
        )
        .await;
    assert!(
        results.is_empty(),
        "no result for the killed job: {results:?}"
    );

    // The other worker still serves.
    c.submit(job("Say hi.", 4), false, T, |_| {}).await.unwrap();

    // Restart the relay container on the same volume: every accepted event is still there.
    let before = count_all(&mut ws).await;
    assert!(before >= 6, "ads, requests, results, metering: {before}");
    drop(ws);
    c.shutdown().await;
    relay_c.stop().await.unwrap();
    relay_c.start().await.unwrap();
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids = ws
        .query(
            "ids",
            json!({"ids": [done.request.id.to_hex(), done.result.id.to_hex(), m.id.to_hex()]}),
        )
        .await;
    assert_eq!(ids.len(), 3, "request, result and metering kept: {ids:?}");
    let after = count_all(&mut ws).await;
    assert!(
        after >= before,
        "{after} events after the restart, {before} before"
    );
}

async fn count_all(ws: &mut Ws) -> usize {
    ws.query("all", json!({"limit": 5000})).await.len()
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
        err.contains("nsec") || err.contains("key"),
        "says what is wrong: {err}"
    );
    assert!(
        !err.contains("this is not a key"),
        "never echoes the secret: {err}"
    );
}
