//! Test harness: start the real `fedai-relay` binary on a free port and talk to it over a raw
//! WebSocket, so tests see exactly the NIP-01 messages a client would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use fedai_protocol::nostr::prelude::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The workspace's target directory for the current profile (where the binaries are).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    // Tests live in target/<profile>/deps/<test>, bench binaries in target/<profile>/<bin>.
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

static BUILD: Once = Once::new();

/// Path to a workspace binary, building it once if `cargo test` did not.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    BUILD.call_once(|| {
        let profile_release = bin_dir().ends_with("release");
        let cargo = PathBuf::from(env!("CARGO"));
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--bins", "--workspace"]);
        // The toolchain's own rustc, not rustup's proxy: run outside cargo (a bench binary),
        // the proxy would read a `rust-toolchain` file shipped in a dependency's directory.
        let rustc = cargo.with_file_name("rustc");
        if std::env::var_os("RUSTC").is_none() && rustc.exists() {
            cmd.env("RUSTC", rustc);
        }
        if profile_release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build failed");
    });
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// A running `fedai-worker` child process. Killed on drop.
pub struct WorkerProc {
    /// Child process.
    pub child: Child,
    /// Worker public key (hex).
    pub pubkey: String,
    /// `http://host:port` of `/metrics` and `/health`, when started with `--metrics-bind`.
    pub metrics_url: Option<String>,
    /// Captured stderr (logs).
    pub stderr_path: PathBuf,
}

impl WorkerProc {
    /// Start `fedai-worker` with `nsec` on `relay` in front of `runner_url`, plus `args`; waits
    /// for its ready line.
    pub fn start(nsec: &str, relay: &str, runner_url: &str, args: &[&str]) -> Self {
        let (stderr_path, stderr) = log_file("fedai-worker");
        let mut child = Command::new(binary("fedai-worker"))
            .env("FEDAI_NSEC", nsec)
            // Fast heartbeats by default (a test's own `--heartbeat-secs` overrides the env).
            .env("FEDAI_HEARTBEAT_SECS", "1")
            .args([
                "--relay",
                relay,
                "--runner",
                "llama-cpp",
                "--runner-url",
                runner_url,
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn fedai-worker");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut pubkey = String::new();
        let mut metrics_url = None;
        for _ in 0..3 {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read worker output");
            if let Some(url) = line.trim().strip_prefix("fedai-worker metrics on ") {
                metrics_url = Some(url.to_owned());
            }
            if let Some(pk) = line
                .trim()
                .strip_prefix("fedai-worker ")
                .and_then(|l| l.strip_suffix(" ready"))
            {
                pubkey = pk.to_owned();
                break;
            }
        }
        assert!(
            !pubkey.is_empty(),
            "worker did not become ready; log: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Self {
            child,
            pubkey,
            metrics_url,
            stderr_path,
        }
    }

    /// The worker's log output so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Send SIGTERM; returns whether the process exited successfully within `secs`.
    pub fn terminate(&mut self, secs: u64) -> bool {
        sigterm_and_wait(&mut self.child, secs)
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `fedai-relay` child process. Killed on drop.
pub struct RelayProc {
    /// Child process.
    pub child: Child,
    /// `ws://host:port`.
    pub url: String,
    /// `host:port`.
    pub addr: String,
    /// Captured stderr (logs), filled as the process runs.
    pub stderr_path: PathBuf,
}

impl RelayProc {
    /// Start `fedai-relay --bind 127.0.0.1:0 <args>` and wait for its listening line.
    pub fn start(args: &[&str]) -> Self {
        let (stderr_path, stderr) = log_file("fedai-relay");
        let mut child = Command::new(binary("fedai-relay"))
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn fedai-relay");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line).expect("read listening line");
        // Keep reading: the relay prints more (the dashboard's URL), and a closed pipe would
        // fail its next write.
        std::thread::spawn(move || for _ in reader.lines() {});
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("ws://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let addr = url.trim_start_matches("ws://").to_owned();
        Self {
            child,
            url,
            addr,
            stderr_path,
        }
    }

    /// Send SIGTERM and wait for exit; returns whether it exited successfully in time.
    pub fn terminate(&mut self) -> bool {
        sigterm_and_wait(&mut self.child, 5)
    }

    /// The relay's log output so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Plain HTTP GET on the relay's port; returns (status line, body).
    pub async fn http_get(&self, path: &str, accept: &str) -> (String, String) {
        http_get(&self.addr, path, accept).await
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain HTTP/1.1 GET to `addr` (`host:port`); returns (status line, body).
pub async fn http_get(addr: &str, path: &str, accept: &str) -> (String, String) {
    let (head, body) = http_get_head(addr, path, accept).await;
    (head.lines().next().unwrap_or("").to_owned(), body)
}

/// Plain HTTP/1.1 GET to `addr`; returns (the whole head: status line and headers, body).
pub async fn http_get_head(addr: &str, path: &str, accept: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (head.to_owned(), body.to_owned())
}

/// A fresh log file for a child process's stderr.
fn log_file(name: &str) -> (PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!("{name}-{}-{}.log", std::process::id(), unique()));
    let file = std::fs::File::create(&path).expect("log file");
    (path, file)
}

/// SIGTERM `child`; whether it then exited successfully within `secs`.
fn sigterm_and_wait(child: &mut Child, secs: u64) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..secs * 20 {
        if let Ok(Some(st)) = child.try_wait() {
            return st.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Run one of the project's idempotent install scripts (`tests/<script>`, flock'd, so the tests
/// and `.ci/run` may both call it) and return what it printed on stdout; its progress goes to
/// the test's stderr. Panics when it fails.
pub fn run_setup(script: &str) -> String {
    let out = Command::new("bash")
        .arg(workspace_root().join("tests").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run tests/{script}: {e}"));
    assert!(out.status.success(), "tests/{script} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback port free at the moment of the call (bound, then released): for a process that
/// must be told its port, or an address where nothing listens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fedai-{tag}-{}-{}", std::process::id(), unique()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A raw NIP-01 WebSocket client.
pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connect.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Self { ws }
    }

    /// Send a JSON message.
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("ws send");
    }

    /// Send raw text.
    pub async fn send_raw(&mut self, s: String) {
        self.ws.send(Message::text(s)).await.expect("ws send");
    }

    /// Next JSON message, or None on timeout / close.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(timeout, self.ws.next())
                .await
                .ok()??
                .ok()?;
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).ok();
            }
        }
    }

    /// Publish an event; returns (accepted, message) of its OK.
    pub async fn publish(&mut self, ev: &Event) -> (bool, String) {
        self.send_raw(format!("[\"EVENT\",{}]", ev.as_json())).await;
        self.ok_for(&ev.id.to_hex()).await
    }

    /// Wait for the OK of `id`.
    pub async fn ok_for(&mut self, id: &str) -> (bool, String) {
        loop {
            let m = self
                .recv(Duration::from_secs(10))
                .await
                .expect("OK before timeout");
            if m[0] == "OK" && m[1] == id {
                return (
                    m[2].as_bool().unwrap(),
                    m[3].as_str().unwrap_or("").to_owned(),
                );
            }
        }
    }

    /// Publish many events pipelined (all sent before any OK is awaited); returns the OK of each
    /// event, in the order given, whatever order the relay answers in.
    pub async fn publish_many(&mut self, events: &[Event]) -> Vec<(bool, String)> {
        for ev in events {
            self.send_raw(format!("[\"EVENT\",{}]", ev.as_json())).await;
        }
        let mut oks = std::collections::HashMap::new();
        while oks.len() < events.len() {
            let m = self
                .recv(Duration::from_secs(30))
                .await
                .expect("OKs before timeout");
            if m[0] == "OK" {
                let id = m[1].as_str().unwrap_or("").to_owned();
                oks.insert(
                    id,
                    (
                        m[2].as_bool().unwrap_or(false),
                        m[3].as_str().unwrap_or("").to_owned(),
                    ),
                );
            }
        }
        events
            .iter()
            .map(|e| oks.remove(&e.id.to_hex()).expect("OK for every event"))
            .collect()
    }

    /// Run a REQ and collect events until EOSE.
    pub async fn query(&mut self, sub: &str, filter: Value) -> Vec<Value> {
        self.send(json!(["REQ", sub, filter])).await;
        let mut out = Vec::new();
        loop {
            let m = self
                .recv(Duration::from_secs(10))
                .await
                .expect("EOSE before timeout");
            match m[0].as_str() {
                Some("EVENT") if m[1] == sub => out.push(m[2].clone()),
                Some("EOSE") if m[1] == sub => return out,
                Some("CLOSED") if m[1] == sub => panic!("subscription closed: {m}"),
                _ => {}
            }
        }
    }
}

/// A signed kind-5050 job request with a unique prompt.
pub fn job_request(keys: &Keys, prompt: &str) -> Event {
    fedai_protocol::JobRequest::text(prompt)
        .to_event(keys, None)
        .expect("build request")
}

/// Start a real llama.cpp server for a test with one compute thread: the tests run two at a
/// time on small machines, and llama.cpp threads spin while they wait for each other, so two
/// servers with two threads each on two cores run many times slower than with one each.
pub async fn llama(
    model: fedai_runners::local::LocalModel,
    alias: &str,
    parallel: u32,
) -> fedai_runners::local::LocalLlamaServer {
    fedai_runners::local::LocalLlamaServer::start_with_threads(model, alias, parallel, 1)
        .await
        .expect("start a llama.cpp server (workers/runner/setup.sh)")
}

/// The `p` quantile (0..=1, nearest rank) of `v`, sorted in place: the benchmarks' p50/p99/max.
pub fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A fresh key pair: (secret hex for a worker's `--nsec`, public key).
pub fn nsec() -> (String, PublicKey) {
    let k = Keys::generate();
    (k.secret_key().to_secret_hex(), k.public_key())
}

/// A customer SDK client with a fresh key, connected to `relay`.
pub async fn client(relay: &RelayProc) -> fedai_client::FedaiClient {
    fedai_client::FedaiClient::connect(std::slice::from_ref(&relay.url), Keys::generate())
        .await
        .unwrap()
}

/// Wait until `n` healthy ads are visible.
pub async fn wait_for_workers(
    c: &fedai_client::FedaiClient,
    n: usize,
) -> Vec<fedai_protocol::capability::ParsedCapabilityAd> {
    for _ in 0..100 {
        let ads = c.workers().await.unwrap();
        if ads.len() >= n {
            return ads;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} workers did not appear");
}

/// A deterministic job for the tiny model.
pub fn tiny_job(prompt: &str, max_tokens: u32) -> fedai_protocol::JobRequest {
    let mut r = fedai_protocol::JobRequest::text(prompt);
    r.params.model = Some("tiny".into());
    r.params.max_tokens = Some(max_tokens);
    r.params.temperature = Some(0.0);
    r
}

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub mod browser;
pub mod closing;
pub mod generic;
pub mod lightning;
pub mod openai;
pub mod peers;

/// The ad of a scripted test worker named `name` on `relay`: model `tiny` at `price`, paid as
/// `payment` says.
pub fn scripted_ad(
    name: &str,
    relay: &str,
    price: fedai_protocol::Price,
    payment: fedai_protocol::capability::PaymentInfo,
) -> fedai_protocol::CapabilityAd {
    fedai_protocol::CapabilityAd {
        instance: name.into(),
        name: name.into(),
        about: "a test actor".into(),
        job_kinds: vec![fedai_protocol::kinds::JOB_REQUEST],
        models: vec![fedai_protocol::ModelInfo {
            id: "tiny".into(),
            context_length: 2048,
            quantisation: "f32".into(),
            dimensions: 0,
        }],
        prices: vec![price],
        max_concurrent: 4,
        in_flight: 0,
        queue_depth: 0,
        hardware: fedai_protocol::Hardware::Cpu {
            name: "test".into(),
            cores: 1,
            memory_mib: 1,
        },
        runner: "mock".into(),
        healthy: true,
        payment,
        relays: vec![relay.to_owned()],
        version: "0".into(),
        encryption_supported: true,
        features: vec!["chat".into()],
        expiration: Timestamp::now() + 120,
    }
}

/// A test actor that plays a worker (honest or not): it publishes `ad` for `keys` on `relay`
/// and answers every job request naming it with the events `answer` builds from the request.
/// The tests use it for workers that misbehave in ways the real worker never would.
pub async fn scripted_worker(
    relay: &str,
    keys: Keys,
    ad: fedai_protocol::CapabilityAd,
    mut answer: impl FnMut(&Event, &fedai_protocol::ParsedJobRequest, &Keys) -> Vec<Event>
        + Send
        + 'static,
) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt;
    let nc = fedai_client::nostr_client();
    nc.add_relay(relay).await.unwrap();
    nc.connect().and_wait(Duration::from_secs(5)).await;
    nc.send_event(&ad.to_event(&keys).unwrap()).await.unwrap();
    let mut notes = nc.notifications();
    nc.subscribe(
        Filter::new()
            .kind(Kind::from_u16(fedai_protocol::kinds::JOB_REQUEST))
            .pubkey(keys.public_key())
            .since(Timestamp::now() - 5),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        while let Some(n) = notes.next().await {
            let nostr_sdk::prelude::ClientNotification::Event { event, .. } = n else {
                continue;
            };
            let Ok(p) = fedai_protocol::JobRequest::from_event(&event, Some(&keys)) else {
                continue;
            };
            for ev in answer(&event, &p, &keys) {
                let _ = nc.send_event(&ev).await;
            }
        }
    })
}
