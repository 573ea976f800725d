//! The one listening port: WebSocket upgrades go to [`crate::connection`] (under the global and
//! per-address connection limits), plain HTTP serves NIP-11, `/health` and `/metrics`.
//!
//! Every socket gets `TCP_NODELAY` (without it, small relay answers wait on Nagle + delayed ACK:
//! ~40 ms floors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::connection::{self, ConnCtx};
use crate::metrics::Metrics;

const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a connection handler needs.
pub struct Ctx {
    /// What WebSocket connections need.
    pub conn: Arc<ConnCtx>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Serialized NIP-11 document.
    pub nip11: String,
    /// One permit per open WebSocket connection (`--max-connections`).
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Open connections per IP address (`--max-connections-per-ip`).
    pub per_ip: Arc<PerIp>,
}

/// Open WebSocket connections per IP address.
pub struct PerIp {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place under its address's limit; given back on drop.
pub struct IpSlot {
    ip: std::net::IpAddr,
    of: Arc<PerIp>,
}

impl PerIp {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Default::default(),
        })
    }

    /// A slot for `ip`, unless it holds its limit.
    pub fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            ip,
            of: self.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A request head, as far as this port reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, …
    pub method: String,
    /// The request target.
    pub path: String,
    /// The `Accept` header.
    pub accept: String,
    /// `Upgrade: websocket`.
    pub upgrade_ws: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Host` (NIP-42 checks an `AUTH` event's relay tag against it).
    pub host: Option<String>,
}

/// Read a request head (up to the empty line), never buffering more than 16 KiB: `None` at
/// end of input, an error when the head is larger.
pub async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(1024);
    loop {
        let before = head.len();
        // Never buffer more than the limit: a line without a newline stops at the bound.
        let room = (MAX_HEAD + 1 - before) as u64;
        let n = (&mut *r).take(room).read_until(b'\n', &mut head).await?;
        if n == 0 {
            return Ok(None);
        }
        if head.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(head));
        }
    }
}

/// Parse a head read by [`read_head`]; `None` when it is not a complete HTTP/1 request head.
pub fn parse_head(raw: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let mut h = Head {
        method: req.method?.to_owned(),
        path: req.path?.to_owned(),
        accept: String::new(),
        upgrade_ws: false,
        ws_key: None,
        host: None,
    };
    for hd in req.headers.iter() {
        let v = String::from_utf8_lossy(hd.value).into_owned();
        if hd.name.eq_ignore_ascii_case("accept") {
            h.accept = v;
        } else if hd.name.eq_ignore_ascii_case("upgrade") {
            h.upgrade_ws = v.eq_ignore_ascii_case("websocket");
        } else if hd.name.eq_ignore_ascii_case("host") {
            h.host = Some(v.trim().to_owned());
        } else if hd.name.eq_ignore_ascii_case("sec-websocket-key") {
            h.ws_key = Some(v.trim().to_owned());
        }
    }
    Some(h)
}

fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

async fn respond(
    s: &mut BufReader<TcpStream>,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nAccess-Control-Allow-Origin: *\r\nAccess-Control-Allow-Headers: *\r\nAccess-Control-Allow-Methods: GET, OPTIONS\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.get_mut().write_all(msg.as_bytes()).await?;
    s.get_mut().shutdown().await
}

/// Serve one accepted TCP connection.
pub async fn handle(stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let mut reader = BufReader::with_capacity(MAX_HEAD, stream);
    let raw = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut reader)).await {
        Ok(Ok(Some(raw))) => raw,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad request head");
            let _ = respond(
                &mut reader,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let Some(head) = parse_head(&raw) else {
        let _ = respond(
            &mut reader,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
        return;
    };
    if head.upgrade_ws {
        let Some(key) = head.ws_key.as_deref() else {
            let _ = respond(
                &mut reader,
                "400 Bad Request",
                "text/plain",
                "missing Sec-WebSocket-Key\n",
            )
            .await;
            return;
        };
        let Some(slot) = ctx.per_ip.take(peer.ip()) else {
            ctx.metrics.connection_refused();
            let _ = respond(
                &mut reader,
                "429 Too Many Requests",
                "text/plain",
                "too many connections from this address\n",
            )
            .await;
            return;
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            ctx.metrics.connection_refused();
            let _ = respond(
                &mut reader,
                "503 Service Unavailable",
                "text/plain",
                "too many connections\n",
            )
            .await;
            return;
        };
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key)
        );
        if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        ctx.metrics.connection_opened();
        // Bytes the client sent past the head go to the WebSocket, and the head's buffer is
        // given back rather than kept for the life of the connection.
        let read = reader.buffer().to_vec();
        let stream = reader.into_inner();
        connection::serve(stream, read, peer, head.host, ctx.conn.clone(), permit).await;
        drop(slot);
        ctx.metrics.connection_closed();
        return;
    }
    let path = head.path.split('?').next().unwrap_or("/");
    let result = match (head.method.as_str(), path) {
        ("OPTIONS", _) => {
            ctx.metrics.http("options");
            respond(&mut reader, "204 No Content", "text/plain", "").await
        }
        ("GET", "/") if head.accept.contains("application/nostr+json") => {
            ctx.metrics.http("nip11");
            respond(&mut reader, "200 OK", "application/nostr+json", &ctx.nip11).await
        }
        ("GET", "/health") => {
            ctx.metrics.http("health");
            respond(
                &mut reader,
                "200 OK",
                "application/json",
                "{\"status\":\"ok\"}\n",
            )
            .await
        }
        ("GET", "/metrics") => {
            ctx.metrics.http("metrics");
            ctx.metrics
                .set_live_queued_bytes(ctx.conn.hub.queued_bytes());
            let body = ctx.metrics.render();
            respond(&mut reader, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        ("GET", "/") => {
            ctx.metrics.http("index");
            respond(
                &mut reader,
                "200 OK",
                "text/plain",
                "fedai-relay: connect with a Nostr client over WebSocket; NIP-11 with Accept: application/nostr+json\n",
            )
            .await
        }
        _ => {
            ctx.metrics.http("not_found");
            respond(&mut reader, "404 Not Found", "text/plain", "not found\n").await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "http response failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_upgrade_head() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc\r\n\r\n";
        let h = parse_head(raw).unwrap();
        assert!(h.upgrade_ws);
        assert_eq!(h.ws_key.as_deref(), Some("abc"));
        assert!(parse_head(b"garbage\r\n\r\n").is_none());
    }
}
