//! A real Lightning network on 127.0.0.1 for tests: one `btcd` in simnet and `lnd` nodes on top,
//! built from Go modules by `tests/lightning/setup.sh` (cached in `.cache/lightning`).
//!
//! Bring-up follows lnd's own integration tests: btcd starts without a mining address, the
//! first lnd node gives one, btcd restarts with it and mines the coinbase the nodes fund their
//! channels from. Setup actions use `lncli`; the product talks to lnd's REST API through fedai-lightning.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port as port, temp_dir, workspace_root};

/// A running simnet: btcd and lnd nodes, killed on drop.
pub struct LightningNet {
    /// One simnet at a time per test process: each runs btcd and lnd nodes, and two at once on
    /// a 2-core machine slowed lnd's start-up past every deadline.
    _serial: tokio::sync::OwnedMutexGuard<()>,
    dir: PathBuf,
    bin: PathBuf,
    btcd: Option<Child>,
    btcd_rpc: String,
    btcd_p2p: String,
    /// The lnd nodes, in start order.
    pub nodes: Vec<LndNode>,
}

/// One lnd node.
pub struct LndNode {
    child: Child,
    dir: PathBuf,
    bin: PathBuf,
    /// gRPC address (`127.0.0.1:port`), for `lncli`.
    pub rpc: String,
    /// REST address (`127.0.0.1:port`): what fed_AI talks to.
    pub rest: String,
    /// Peer address.
    pub p2p: String,
    /// TLS certificate (pinned by clients).
    pub cert: PathBuf,
    /// Admin macaroon.
    pub macaroon: PathBuf,
    /// Node public key, hex.
    pub pubkey: String,
}

/// Build (once) and return the directory of btcd/lnd binaries.
pub fn install() -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let root = workspace_root();
    ONCE.call_once(|| {
        crate::run_setup("lightning/setup.sh");
    });
    root.join(".cache/lightning/bin")
}

impl LndNode {
    fn lncli(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new(self.bin.join("lncli"))
            .args([
                "--network=simnet",
                &format!("--lnddir={}", self.dir.display()),
                &format!("--rpcserver={}", self.rpc),
                &format!("--tlscertpath={}", self.cert.display()),
                &format!("--macaroonpath={}", self.macaroon.display()),
            ])
            .args(args)
            .output()
    }

    /// Run `lncli`; its JSON output when it succeeds.
    pub fn try_cli(&self, args: &[&str]) -> Option<Value> {
        let out = self.lncli(args).ok()?;
        if !out.status.success() {
            return None;
        }
        // `sendpayment --json` prints progress lines before the final object: take the last.
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(&text).ok().or_else(|| {
            let start = text.rfind("\n{")?;
            serde_json::from_str(&text[start + 1..]).ok()
        })
    }

    /// Run `lncli` against this node and parse its JSON output (panics on failure).
    pub fn cli(&self, args: &[&str]) -> Value {
        let out = self.lncli(args).expect("run lncli");
        assert!(
            out.status.success(),
            "lncli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Total local balance over open channels, msat.
    pub fn channel_local_msat(&self) -> u64 {
        let v = self.cli(&["channelbalance"]);
        v["local_balance"]["msat"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Total local balance over open channels, sat.
    pub fn channel_local_sat(&self) -> u64 {
        let v = self.cli(&["channelbalance"]);
        v["local_balance"]["sat"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for LndNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LightningNet {
    /// Start btcd and `n` lnd nodes, fund node 0 and open a channel of `channel_sat` from node 0
    /// to every other node; returns when the channels are active. Bounded: panics after 300 s,
    /// with the failing process's log. Call it off the async runtime (`spawn_blocking`).
    pub fn start(n: usize, channel_sat: u64) -> Self {
        static SERIAL: std::sync::OnceLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
            std::sync::OnceLock::new();
        let serial = SERIAL
            .get_or_init(Default::default)
            .clone()
            .blocking_lock_owned();
        let bin = install();
        let dir = temp_dir("ln");
        let mut net = Self {
            _serial: serial,
            dir: dir.clone(),
            bin: bin.clone(),
            btcd: None,
            btcd_rpc: format!("127.0.0.1:{}", port()),
            btcd_p2p: format!("127.0.0.1:{}", port()),
            nodes: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        net.start_btcd(None);
        for i in 0..n {
            let node = net.start_lnd(i, deadline);
            net.nodes.push(node);
        }
        // Mine to node 0: restart btcd with its address, then mature the coinbase.
        let addr = net.nodes[0].cli(&["newaddress", "p2wkh"])["address"]
            .as_str()
            .expect("address")
            .to_owned();
        net.stop_btcd();
        net.start_btcd(Some(&addr));
        net.mine(400);
        wait(deadline, "node 0 sees its coins", || {
            let b = net.nodes[0].cli(&["walletbalance"]);
            b["confirmed_balance"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s > channel_sat * n as u64)
        });
        for i in 1..n {
            let peer = format!("{}@{}", net.nodes[i].pubkey, net.nodes[i].p2p);
            let pk = net.nodes[i].pubkey.clone();
            // lnd answers RPCs a moment before its peer server is up: retry until connected.
            wait(deadline, "peers connected", || {
                let _ = net.nodes[0].try_cli(&["connect", &peer]);
                net.nodes[0].cli(&["listpeers"])["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x["pub_key"] == pk.as_str()))
            });
            wait(deadline, "channel opening", || {
                net.nodes[0]
                    .try_cli(&[
                        "openchannel",
                        "--node_key",
                        &pk,
                        "--local_amt",
                        &channel_sat.to_string(),
                    ])
                    .is_some()
            });
            net.mine(6);
        }
        net.mine(6);
        wait(deadline, "channels active", || {
            net.nodes[0].cli(&["listchannels", "--active_only"])["channels"]
                .as_array()
                .is_some_and(|c| c.len() == n - 1)
        });
        // "Active" comes before the link can forward: a 1-sat keysend to each peer proves the
        // channel carries payments before any test measures a balance.
        for i in 1..n {
            let dest = net.nodes[i].pubkey.clone();
            wait(deadline, "a first payment goes through", || {
                net.nodes[0]
                    .try_cli(&[
                        "sendpayment",
                        "--keysend",
                        "--dest",
                        &dest,
                        "--amt",
                        "1",
                        "--json",
                    ])
                    .is_some_and(|v| v["status"] == "SUCCEEDED")
            });
        }
        net
    }

    fn start_btcd(&mut self, mining_addr: Option<&str>) {
        let d = self.dir.join("btcd");
        std::fs::create_dir_all(&d).unwrap();
        let mut cmd = Command::new(self.bin.join("btcd"));
        cmd.args([
            "--simnet",
            "--txindex",
            "--rpcuser=fedai",
            "--rpcpass=fedai",
            &format!("--rpclisten={}", self.btcd_rpc),
            &format!("--listen={}", self.btcd_p2p),
            &format!("--datadir={}", d.join("data").display()),
            &format!("--logdir={}", d.join("logs").display()),
            &format!("--rpccert={}", d.join("rpc.cert").display()),
            &format!("--rpckey={}", d.join("rpc.key").display()),
        ]);
        if let Some(a) = mining_addr {
            cmd.arg(format!("--miningaddr={a}"));
        }
        let log = std::fs::File::create(d.join("stdout.log")).unwrap();
        self.btcd = Some(
            cmd.stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("start btcd"),
        );
        wait(
            Instant::now() + Duration::from_secs(30),
            "btcd answers",
            || self.btcctl(&["getblockcount"]).is_some(),
        );
    }

    fn stop_btcd(&mut self) {
        if let Some(mut c) = self.btcd.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    fn btcctl(&self, args: &[&str]) -> Option<String> {
        let d = self.dir.join("btcd");
        let out = Command::new(self.bin.join("btcctl"))
            .args([
                "--simnet",
                "--rpcuser=fedai",
                "--rpcpass=fedai",
                &format!("--rpcserver={}", self.btcd_rpc),
                &format!("--rpccert={}", d.join("rpc.cert").display()),
            ])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Mine `n` blocks and wait until every node has synced to the tip. A node that has just
    /// finished starting may not have seen the last blocks (it subscribes to block notifications
    /// late in its start-up): one more block every few seconds brings it along.
    pub fn mine(&self, n: u32) {
        self.btcctl(&["generate", &n.to_string()])
            .expect("btcctl generate");
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut every = Duration::from_secs(3);
        let mut nudge = Instant::now() + every;
        loop {
            let height: u64 = self
                .btcctl(&["getblockcount"])
                .and_then(|h| h.trim().parse().ok())
                .expect("height");
            let synced = self.nodes.iter().all(|node| {
                let v = node.cli(&["getinfo"]);
                v["block_height"].as_u64() == Some(height) && v["synced_to_chain"] == true
            });
            if synced {
                return;
            }
            if Instant::now() >= deadline {
                // Say which node lags and how, with its log: a bare "did not sync" on CI cannot
                // be diagnosed afterwards.
                let report: Vec<String> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, node)| {
                        let v = node.try_cli(&["getinfo"]);
                        format!(
                            "node {i}: {}\n{}",
                            v.map_or("getinfo failed".into(), |v| format!(
                                "height {} synced_to_chain {}",
                                v["block_height"], v["synced_to_chain"]
                            )),
                            tail(&node.dir.join("stdout.log"))
                        )
                    })
                    .collect();
                panic!(
                    "lnd nodes did not sync to height {height}:\n{}\nbtcd:\n{}",
                    report.join("\n"),
                    tail(&self.dir.join("btcd/stdout.log"))
                );
            }
            if Instant::now() > nudge {
                self.btcctl(&["generate", "1"]);
                // Back off: lnd 0.19 calls itself synced only when every subsystem has handled
                // the tip (blockbeat), so on a loaded machine a block every 3 s can outrun a
                // slow node for ever.
                every = (every * 2).min(Duration::from_secs(20));
                nudge = Instant::now() + every;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_lnd(&self, i: usize, deadline: Instant) -> LndNode {
        let d = self.dir.join(format!("lnd{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let (rpc, rest, p2p) = (
            format!("127.0.0.1:{}", port()),
            format!("127.0.0.1:{}", port()),
            format!("127.0.0.1:{}", port()),
        );
        let btcd_cert = self.dir.join("btcd/rpc.cert");
        let log = std::fs::File::create(d.join("stdout.log")).unwrap();
        let child = Command::new(self.bin.join("lnd"))
            .args([
                "--bitcoin.active",
                "--bitcoin.simnet",
                "--bitcoin.node=btcd",
                &format!("--btcd.rpchost={}", self.btcd_rpc),
                "--btcd.rpcuser=fedai",
                "--btcd.rpcpass=fedai",
                &format!("--btcd.rpccert={}", btcd_cert.display()),
                &format!("--lnddir={}", d.display()),
                &format!("--rpclisten={rpc}"),
                &format!("--listen={p2p}"),
                &format!("--restlisten={rest}"),
                "--noseedbackup",
                "--debuglevel=info",
                "--trickledelay=50",
                "--bitcoin.defaultchanconfs=1",
                "--accept-keysend",
                // lnd batches channel updates for up to 50 ms before signing the next commitment
                // (throughput over latency); a job's payment is latency: sign at once. Operators
                // who sell inference set the same.
                "--channel-commit-interval=1ms",
                &format!("--alias=fedai-test-{i}"),
            ])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start lnd");
        let cert = d.join("tls.cert");
        let macaroon = d.join("data/chain/bitcoin/simnet/admin.macaroon");
        let mut node = LndNode {
            child,
            dir: d,
            bin: self.bin.clone(),
            rpc,
            rest,
            p2p,
            cert,
            macaroon,
            pubkey: String::new(),
        };
        let log = node.dir.join("stdout.log");
        wait_or(
            deadline,
            "lnd ready",
            || {
                if let Ok(Some(st)) = node.child.try_wait() {
                    panic!("lnd exited ({st}); its log ends:\n{}", tail(&log));
                }
                node.macaroon.exists() && node.try_cli(&["getinfo"]).is_some()
            },
            || tail(&log),
        );
        node.pubkey = node.cli(&["getinfo"])["identity_pubkey"]
            .as_str()
            .expect("pubkey")
            .to_owned();
        node
    }

    /// Where the logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LightningNet {
    fn drop(&mut self) {
        self.nodes.clear();
        self.stop_btcd();
    }
}

fn wait(deadline: Instant, what: &str, f: impl FnMut() -> bool) {
    wait_or(deadline, what, f, String::new)
}

/// Poll `f` until it holds; on timeout panic with `what` and `context()` (a log tail).
fn wait_or(
    deadline: Instant,
    what: &str,
    mut f: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting: {what}\n{}", context());
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// A small Nostr Wallet Connect (NIP-47) wallet service for tests, backed by a real lnd node:
/// it answers `pay_invoice` requests from the one app key in its URI by paying through `payer`.
pub struct NwcService {
    /// `nostr+walletconnect://…` for the customer.
    pub uri: String,
    task: tokio::task::JoinHandle<()>,
}

impl NwcService {
    /// Start serving on `relay`.
    pub async fn start(relay: &str, payer: std::sync::Arc<dyn fedai_lightning::Payer>) -> Self {
        use fedai_protocol::nostr::nips::nip47::{
            ErrorCode, Method, NIP47Error, NostrWalletConnectUri, PayInvoiceResponse, Request,
            RequestParams, Response, ResponseResult,
        };
        use fedai_protocol::nostr::nips::{nip04, nip44};
        use fedai_protocol::nostr::prelude::*;
        use futures_util::StreamExt;

        let service = Keys::generate();
        let app = Keys::generate();
        let uri = NostrWalletConnectUri::new(
            service.public_key(),
            vec![RelayUrl::parse(relay).expect("relay url")],
            app.secret_key().clone(),
            None,
        );
        let client = fedai_client::nostr_client();
        client.add_relay(relay).await.expect("relay");
        client.connect().and_wait(Duration::from_secs(5)).await;
        let mut notes = client.notifications();
        client
            .subscribe(
                Filter::new()
                    .kind(Kind::WalletConnectRequest)
                    .pubkey(service.public_key())
                    .author(app.public_key()),
            )
            .await
            .expect("subscribe");
        let task = tokio::spawn(async move {
            while let Some(n) = notes.next().await {
                let nostr_sdk::prelude::ClientNotification::Event { event, .. } = n else {
                    continue;
                };
                if event.kind != Kind::WalletConnectRequest || event.verify().is_err() {
                    continue;
                }
                let sk = service.secret_key();
                let nip44_tagged = event.tags.iter().any(|t| {
                    t.as_slice().first().map(String::as_str) == Some("encryption")
                        && t.as_slice().get(1).is_some_and(|v| v.contains("nip44"))
                });
                let plain = if nip44_tagged {
                    nip44::decrypt(sk, &event.pubkey, &event.content).ok()
                } else {
                    nip04::decrypt(sk, &event.pubkey, &event.content).ok()
                };
                let Some(req) = plain.and_then(|p| Request::from_json(p).ok()) else {
                    continue;
                };
                let response = match req.params {
                    RequestParams::PayInvoice(p) => {
                        match payer.pay(&p.invoice, 10_000, 120).await {
                            Ok(pre) => Response {
                                result_type: Method::PayInvoice,
                                error: None,
                                result: Some(ResponseResult::PayInvoice(PayInvoiceResponse {
                                    preimage: hex::encode(pre),
                                    fees_paid: None,
                                })),
                            },
                            Err(e) => Response {
                                result_type: Method::PayInvoice,
                                error: Some(NIP47Error {
                                    code: ErrorCode::PaymentFailed,
                                    message: e.to_string(),
                                }),
                                result: None,
                            },
                        }
                    }
                    _ => Response {
                        result_type: req.method,
                        error: Some(NIP47Error {
                            code: ErrorCode::NotImplemented,
                            message: "this test wallet only pays invoices".into(),
                        }),
                        result: None,
                    },
                };
                let Ok(content) = nip44::encrypt(
                    sk,
                    &event.pubkey,
                    response.as_json(),
                    nip44::Version::default(),
                ) else {
                    continue;
                };
                if let Ok(ev) = EventBuilder::new(Kind::WalletConnectResponse, content)
                    .tags([Tag::public_key(event.pubkey), Tag::event(event.id)])
                    .finalize(&service)
                {
                    let _ = client.send_event(&ev).await;
                }
            }
        });
        Self {
            uri: uri.to_string(),
            task,
        }
    }
}

impl Drop for NwcService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small LNURL-pay service (LUD-06, LUD-16 path) that takes NIP-57 zaps, for tests: plain
/// HTTP on 127.0.0.1, backed by a real lnd node. Its callback checks the zap request (NIP-57
/// Appendix D) and issues the node's invoice with the zap request's SHA-256 as description
/// hash; once the node shows it settled, it publishes the zap receipt (Appendix E) to the zap
/// request's relays, signed with its `nostrPubkey`.
pub struct LnurlServer {
    /// The pay endpoint, `http://127.0.0.1:<port>/.well-known/lnurlp/worker`.
    pub url: String,
    /// The key that signs its zap receipts.
    pub nostr_pubkey: fedai_protocol::nostr::prelude::PublicKey,
    task: tokio::task::JoinHandle<()>,
}

impl LnurlServer {
    /// Serve, paying into `node`.
    pub async fn start(node: &LndNode) -> Self {
        use fedai_protocol::nostr::prelude::Keys;
        let lnd = fedai_lightning::lnd::Lnd::connect(&fedai_lightning::lnd::LndConfig {
            url: format!("https://{}", node.rest),
            cert: node.cert.clone(),
            macaroon: node.macaroon.clone(),
        })
        .await
        .expect("the LNURL service reaches its lnd");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let keys = Keys::generate();
        let nostr_pubkey = keys.public_key();
        let url = format!("{base}/.well-known/lnurlp/worker");
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(lnurl_serve(sock, base.clone(), keys.clone(), lnd.clone()));
            }
        });
        Self {
            url,
            nostr_pubkey,
            task,
        }
    }
}

impl Drop for LnurlServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 GET, answered with JSON, then the connection is closed.
async fn lnurl_serve(
    mut sock: tokio::net::TcpStream,
    base: String,
    keys: fedai_protocol::nostr::prelude::Keys,
    lnd: fedai_lightning::lnd::Lnd,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (status, body) = match url::Url::parse(&format!("{base}{target}")) {
        Ok(u) if u.path() == "/.well-known/lnurlp/worker" => (
            200,
            serde_json::json!({
                "tag": "payRequest",
                "callback": format!("{base}/lnurlp/worker/callback"),
                "minSendable": 1_000,
                "maxSendable": 100_000_000,
                "metadata": "[[\"text/plain\",\"a fed_AI worker\"]]",
                "allowsNostr": true,
                "nostrPubkey": keys.public_key().to_hex(),
            }),
        ),
        Ok(u) if u.path() == "/lnurlp/worker/callback" => match lnurl_callback(&u, keys, lnd).await
        {
            Ok(pr) => (200, serde_json::json!({ "pr": pr, "routes": [] })),
            Err(reason) => (
                400,
                serde_json::json!({ "status": "ERROR", "reason": reason }),
            ),
        },
        _ => (
            404,
            serde_json::json!({ "status": "ERROR", "reason": "not found" }),
        ),
    };
    let body = body.to_string();
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// The callback: an invoice for a checked zap request; the receipt once it is paid.
async fn lnurl_callback(
    u: &url::Url,
    keys: fedai_protocol::nostr::prelude::Keys,
    lnd: fedai_lightning::lnd::Lnd,
) -> Result<String, String> {
    use fedai_protocol::nostr::prelude::Timestamp;
    let q: std::collections::HashMap<_, _> = u.query_pairs().into_owned().collect();
    let amount: u64 = q
        .get("amount")
        .and_then(|a| a.parse().ok())
        .ok_or("amount missing")?;
    let json = q.get("nostr").ok_or("this test service only takes zaps")?;
    let zr = fedai_lightning::zap::check_request(json, amount).map_err(|e| e.to_string())?;
    let inv = lnd
        .add_invoice_hashed(amount, fedai_lightning::zap::description_hash(json), 600)
        .await
        .map_err(|e| e.to_string())?;
    let relays = fedai_lightning::zap::relays(&zr);
    // Watch the invoice; publish the receipt when it settles.
    let pr = inv.bolt11.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if let Ok(Some(preimage)) = lnd.settled_preimage(inv.payment_hash).await {
                let Ok(receipt) = fedai_lightning::zap::receipt(
                    &keys,
                    &zr,
                    &pr,
                    Some(&preimage),
                    Timestamp::now(),
                ) else {
                    return;
                };
                let client = fedai_client::nostr_client();
                for r in &relays {
                    let _ = client.add_relay(r.as_str()).await;
                }
                client.connect().and_wait(Duration::from_secs(5)).await;
                let _ = client.send_event(&receipt).await;
                client.shutdown().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(inv.bolt11)
}
