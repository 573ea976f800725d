//! Software we did not write, run beside ours: nostr-rs-relay (crates.io), built once by
//! `tests/peers/nostr-rs-relay.sh` into `.cache/peers`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::temp_dir;

/// Build (once) and return the nostr-rs-relay binary.
pub fn nostr_rs_relay_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| PathBuf::from(crate::run_setup("peers/nostr-rs-relay.sh").trim()))
        .clone()
}

/// A running nostr-rs-relay on 127.0.0.1 (SQLite in a temp dir), killed on drop.
pub struct NostrRsRelay {
    child: Child,
    /// `ws://127.0.0.1:port`.
    pub url: String,
}

impl NostrRsRelay {
    /// Start one and wait until it takes connections.
    pub fn start() -> Self {
        let bin = nostr_rs_relay_bin();
        let dir = temp_dir("nostr-rs-relay");
        let port = crate::free_port();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "[info]\nrelay_url = \"ws://127.0.0.1:{port}/\"\nname = \"nostr-rs-relay (tests)\"\n\
                 [database]\ndata_directory = \"{d}\"\n\
                 [network]\naddress = \"127.0.0.1\"\nport = {port}\n\
                 [limits]\nmax_event_bytes = 524288\nmax_ws_message_bytes = 1048576\nmax_ws_frame_bytes = 1048576\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("relay.log")).unwrap();
        let child = Command::new(bin)
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .args(["--config", &dir.join("config.toml").display().to_string()])
            .args(["--db", &dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nostr-rs-relay");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nostr-rs-relay did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            url: format!("ws://127.0.0.1:{port}"),
        }
    }
}

impl Drop for NostrRsRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
