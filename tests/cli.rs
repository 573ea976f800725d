//! `fedai` as a person meets it: clear, fast errors when the network is not there; no
//! dependency noise on the terminal; `--config` read like every other binary's.

use std::process::Command;
use std::time::{Duration, Instant};

fn closed_port() -> u16 {
    // Bound then dropped: nothing listens there now.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
