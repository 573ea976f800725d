//! The independent NIP-90 client (`tests/generic-client/client.mjs`, on nostr-tools) driven as a
//! subprocess: what a Nostr client that knows nothing of fed_AI sees of our relay and worker.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::workspace_root;

/// Install the client (npm, once per lockfile) and return the path of `client.mjs`.
pub fn install() -> std::path::PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let root = workspace_root();
    ONCE.call_once(|| {
        crate::run_setup("generic-client/setup.sh");
    });
    root.join(".cache/generic-client/client.mjs")
}

/// One run of the generic client: its JSON lines as they come, and its exit code at the end.
pub struct GenericRun {
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line read so far.
    pub seen: Vec<Value>,
}

impl GenericRun {
    /// Start `client.mjs --relay … --sk SK <args>`.
    pub fn start(relays: &[&str], sk: &str, args: &[&str]) -> Self {
        let script = install();
        let mut cmd = Command::new("node");
        cmd.arg(script);
        for r in relays {
            cmd.args(["--relay", r]);
        }
        let mut child = cmd
            .args(["--sk", sk])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js) runs the generic client");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let v = tokio::time::timeout(timeout, self.lines.recv())
            .await
            .ok()
            .flatten()?;
        self.seen.push(v.clone());
        Some(v)
    }

    /// Lines until one of `type` (and, for feedback, `status`) arrives.
    pub async fn until(&mut self, ty: &str, status: Option<&str>, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no `{ty}` {status:?} line; saw {:?}", self.seen));
            if v["type"] == ty && status.is_none_or(|s| v["status"] == s) {
                return v;
            }
        }
    }

    /// Read every remaining line (each within `timeout`) and return the exit code.
    pub async fn finish(&mut self, timeout: Duration) -> i32 {
        while self.next(timeout).await.is_some() {}
        let pid = self.child.id();
        for _ in 0..50 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code().unwrap_or(-1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("generic client {pid} did not exit");
    }

    /// The request id it published.
    pub fn request_id(&self) -> Option<String> {
        self.seen
            .iter()
            .find(|v| v["type"] == "request")
            .and_then(|v| v["id"].as_str().map(str::to_owned))
    }
}

impl Drop for GenericRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the client to the end: all its lines and its exit code.
pub async fn run(relays: &[&str], sk: &str, args: &[&str], timeout: Duration) -> (i32, Vec<Value>) {
    let mut r = GenericRun::start(relays, sk, args);
    let code = r.finish(timeout).await;
    (code, std::mem::take(&mut r.seen))
}

/// The first line of `type`.
pub fn first<'a>(lines: &'a [Value], ty: &str) -> Option<&'a Value> {
    lines.iter().find(|v| v["type"] == ty)
}
