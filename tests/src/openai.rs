//! `fedai gateway` as a child process, and the official `openai` Python SDK (installed by
//! `tests/openai/setup.sh`) driving it: an OpenAI app we did not write, on our market.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::{binary, workspace_root};

/// A running `fedai gateway`. Killed on drop.
pub struct GatewayProc {
    /// Child process.
    pub child: Child,
    /// `http://127.0.0.1:port/v1`: the base URL an app is given.
    pub base_url: String,
}

impl GatewayProc {
    /// Start `fedai --relay <relay> gateway --listen 127.0.0.1:0 <args>` and wait for its line.
    pub fn start(relay: &str, args: &[&str]) -> Self {
        Self::try_start(relay, args).unwrap_or_else(|e| panic!("gateway did not start: {e}"))
    }

    /// As [`start`](Self::start); `Err` with what it printed when it exits instead.
    pub fn try_start(relay: &str, args: &[&str]) -> Result<Self, String> {
        // A test's own `--listen`, or one from its `--config` file, wins.
        let listen: &[&str] = match args.contains(&"--listen") || args.contains(&"--config") {
            true => &[],
            false => &["--listen", "127.0.0.1:0"],
        };
        let mut child = Command::new(binary("fedai"))
            .args(["--relay", relay, "gateway"])
            .args(listen)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fedai gateway");
        let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read the gateway's line");
        let Some(base_url) = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(str::to_owned)
        else {
            let _ = child.wait();
            return Err(line);
        };
        std::thread::spawn(move || for _ in reader.lines() {});
        Ok(Self { child, base_url })
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SDK's python (installing it once per test process).
pub fn python() -> String {
    static PY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        crate::run_setup("openai/setup.sh")
            .lines()
            .find_map(|l| l.strip_prefix("OPENAI_PYTHON="))
            .expect("OPENAI_PYTHON= line")
            .to_owned()
    })
    .clone()
}

/// Run `tests/openai/check.py` scenarios against `base_url` with `env`; their JSON lines. Panics
/// with the SDK's own output when a scenario fails.
pub fn check(base_url: &str, scenarios: &[&str], env: &[(&str, &str)]) -> Vec<Value> {
    let out = Command::new(python())
        .arg(workspace_root().join("tests/openai/check.py"))
        .arg(base_url)
        .args(scenarios)
        .envs(env.iter().copied())
        .output()
        .expect("run the openai SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai SDK scenarios {scenarios:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
