//! A WebSocket proxy in front of a real relay that can close subscriptions on command — a
//! **fake** relay behaviour, for testing how clients recover from `CLOSED`.
//!
//! Public relays send `CLOSED` for their own reasons (restarts, load, policy, a reader that fell
//! behind); fedai-relay does it only for a reader that falls behind, which a test cannot make a
//! real worker do on demand. The proxy forwards every frame both ways unchanged and remembers
//! the subscription ids each client opened; [`ClosingProxy::close_all`] then closes them at the
//! relay (`CLOSE`) and tells each client `CLOSED "error: …"`, exactly as a relay would.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

/// The proxy; it stops when dropped.
pub struct ClosingProxy {
    /// `ws://` URL clients connect to.
    pub url: String,
    close: broadcast::Sender<()>,
    closed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ClosingProxy {
    /// Listen on a free loopback port and forward to `upstream` (`ws://…`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (close, _) = broadcast::channel(16);
        let closed = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_owned();
        let task = {
            let (close, closed) = (close.clone(), closed.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                        continue;
                    };
                    let Ok((relay, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await
                    else {
                        continue;
                    };
                    tokio::spawn(pump(client, relay, close.subscribe(), closed.clone()));
                }
            })
        };
        Self {
            url: format!("ws://{addr}"),
            close,
            closed,
            task,
        }
    }

    /// Close every open subscription of every client, at the relay and towards the client.
    pub fn close_all(&self) {
        let _ = self.close.send(());
    }

    /// The subscription ids closed so far.
    pub fn closed(&self) -> Vec<String> {
        self.closed.lock().unwrap().clone()
    }
}

impl Drop for ClosingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump<C, R>(
    client: tokio_tungstenite::WebSocketStream<C>,
    relay: tokio_tungstenite::WebSocketStream<R>,
    mut close: broadcast::Receiver<()>,
    closed: Arc<Mutex<Vec<String>>>,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = client.split();
    let (mut to_relay, mut from_relay) = relay.split();
    let mut open: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            m = from_client.next() => {
                let Some(Ok(m)) = m else { break };
                if let Message::Text(t) = &m {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        match (v[0].as_str(), v[1].as_str()) {
                            (Some("REQ"), Some(id)) => { open.insert(id.to_owned()); }
                            (Some("CLOSE"), Some(id)) => { open.remove(id); }
                            _ => {}
                        }
                    }
                }
                if to_relay.send(m).await.is_err() { break; }
            }
            m = from_relay.next() => {
                let Some(Ok(m)) = m else { break };
                if let Message::Text(t) = &m {
                    if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                        if let (Some("CLOSED"), Some(id)) = (v[0].as_str(), v[1].as_str()) {
                            open.remove(id);
                        }
                    }
                }
                if to_client.send(m).await.is_err() { break; }
            }
            r = close.recv() => {
                if r.is_err() { break; }
                for id in open.drain() {
                    let _ = to_relay.send(Message::text(json!(["CLOSE", id]).to_string())).await;
                    let _ = to_client
                        .send(Message::text(
                            json!(["CLOSED", id, "error: closed by the test proxy"]).to_string(),
                        ))
                        .await;
                    closed.lock().unwrap().push(id);
                }
            }
        }
    }
}
