//! Starting a real llama.cpp server as a child process, for the demo and the tests.
//!
//! The server is llama.cpp's own C++ HTTP server from the PyPI wheel `xllamacpp`, installed with
//! the models by the project's idempotent `workers/runner/setup.sh` (cached under `.cache/runner`).
//! It runs in its own process: fed_AI never runs inference in-process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::RunnerError;

/// A model installed by the setup script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalModel {
    /// SmolLM2-135M-Instruct Q4_1: a real chat model (98 MB).
    SmolLm2,
    /// A 1 MB random-weight llama that never emits EOS: exact, fast token counts.
    Tiny,
}

/// Paths printed by the setup script.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The venv's python.
    pub python: PathBuf,
    /// The server launcher script.
    pub serve: PathBuf,
    /// SmolLM2 GGUF.
    pub smollm2: PathBuf,
    /// Tiny GGUF.
    pub tiny: PathBuf,
}

/// Directory of the runner scripts: `$FEDAI_RUNNER_DIR` or `<repo>/workers/runner`.
pub fn runner_dir() -> PathBuf {
    std::env::var_os("FEDAI_RUNNER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../workers/runner"))
}

/// Run the setup script once per process (idempotent and cached on disk).
pub fn install() -> Result<Installed, RunnerError> {
    static ONCE: OnceLock<Result<Installed, RunnerError>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let script = runner_dir().join("setup.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| {
                RunnerError::Unreachable(format!("cannot run {}: {e}", script.display()))
            })?;
        if !out.status.success() {
            return Err(RunnerError::Unreachable(format!(
                "{} failed ({})",
                script.display(),
                out.status
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(PathBuf::from)
                .ok_or_else(|| RunnerError::Protocol(format!("setup did not report {k}")))
        };
        Ok(Installed {
            python: get("FEDAI_RUNNER_PYTHON")?,
            serve: get("FEDAI_RUNNER_SERVE")?,
            smollm2: get("FEDAI_MODEL_SMOLLM2")?,
            tiny: get("FEDAI_MODEL_TINY")?,
        })
    })
    .clone()
}

/// A llama.cpp server child process; killed on drop.
#[derive(Debug)]
pub struct LocalLlamaServer {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Model id the server reports.
    pub model: String,
}

/// Why a server start failed.
enum Spawn {
    /// The server process exited before answering (a port taken meanwhile, …): retried.
    Exited(String),
    Other(RunnerError),
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalLlamaServer {
    /// The server's process id (benchmarks read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Install if needed, start the server for `model` under the id `alias`, and wait until it
    /// answers `/health` (at most 60 s). Compute threads come from `FEDAI_LLAMA_THREADS`
    /// (default 2).
    pub async fn start(model: LocalModel, alias: &str, parallel: u32) -> Result<Self, RunnerError> {
        let threads = std::env::var("FEDAI_LLAMA_THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(2);
        Self::start_with_threads(model, alias, parallel, threads).await
    }

    /// [`Self::start`] with an explicit number of compute threads. llama.cpp's threads spin
    /// while they wait for each other, so servers that together hold more threads than there
    /// are cores slow down by an order of magnitude: tests that run servers side by side give
    /// each one thread.
    pub async fn start_with_threads(
        model: LocalModel,
        alias: &str,
        parallel: u32,
        threads: u32,
    ) -> Result<Self, RunnerError> {
        Self::start_args(model, alias, parallel, threads, &[]).await
    }

    /// A server that embeds (`/v1/embeddings`, llama.cpp's `--embeddings`), mean-pooled: a
    /// chat model pooled so is a small real embedder.
    pub async fn start_embeddings(
        model: LocalModel,
        alias: &str,
        threads: u32,
    ) -> Result<Self, RunnerError> {
        Self::start_args(
            model,
            alias,
            1,
            threads,
            &["--embeddings", "--pooling", "mean"],
        )
        .await
    }

    async fn start_args(
        model: LocalModel,
        alias: &str,
        parallel: u32,
        threads: u32,
        extra: &[&str],
    ) -> Result<Self, RunnerError> {
        let inst = install()?;
        let path = match model {
            LocalModel::SmolLm2 => &inst.smollm2,
            LocalModel::Tiny => &inst.tiny,
        };
        // The port is free when chosen but not reserved: another process can take it before the
        // server binds, and the server then exits at once. Such a start is retried on a new
        // port; the server's own last words go into the error when it keeps failing.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::spawn(&inst, path, alias, parallel, threads, extra).await {
                Ok(server) => return Ok(server),
                Err(Spawn::Exited(why)) => last = why,
                Err(Spawn::Other(e)) => return Err(e),
            }
        }
        Err(RunnerError::Unreachable(format!(
            "llama.cpp server exited three times: {last}"
        )))
    }

    async fn spawn(
        inst: &Installed,
        path: &std::path::Path,
        alias: &str,
        parallel: u32,
        threads: u32,
        extra: &[&str],
    ) -> Result<Self, Spawn> {
        let other = |e: RunnerError| Spawn::Other(e);
        let port = free_port().map_err(|e| other(RunnerError::Unreachable(e.to_string())))?;
        let log =
            std::env::temp_dir().join(format!("fedai-llama-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).map_err(|e| {
            other(RunnerError::Unreachable(format!(
                "cannot create {}: {e}",
                log.display()
            )))
        })?;
        let child = Command::new(&inst.python)
            .arg(&inst.serve)
            .arg("-m")
            .arg(path)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "-a",
                alias,
            ])
            .args([
                "-np",
                &parallel.to_string(),
                "-c",
                &(2048 * parallel.max(1)).to_string(),
                "-t",
                &threads.max(1).to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| {
                other(RunnerError::Unreachable(format!(
                    "cannot start llama.cpp server: {e}"
                )))
            })?;
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            model: alias.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = crate::http_util::client_builder()
            .build()
            .map_err(|e| other(RunnerError::Protocol(e.to_string())))?;
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                let _ = std::fs::remove_file(&log);
                return Err(Spawn::Exited(format!(
                    "{status}; last lines: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if let Ok(r) = client.get(format!("{}/health", server.url)).send().await {
                if r.status().is_success() {
                    let _ = std::fs::remove_file(&log);
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                let _ = server.child.kill();
                let _ = std::fs::remove_file(&log);
                return Err(other(RunnerError::Timeout(Duration::from_secs(60))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop the server now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LocalLlamaServer {
    fn drop(&mut self) {
        self.stop();
    }
}
