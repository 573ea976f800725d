//! The one listening port, on hyper (HTTP/1 with upgrades) and an axum router: WebSocket
//! upgrades (on any path) go to [`crate::connection`] under the global and per-address
//! connection limits; plain HTTP serves NIP-11, `/health` and `/metrics`.
//!
//! Head size (16 KiB), header count and the 10 s to send a head are hyper's settings; one
//! request at a time per connection (keep-alive, idle for 10 s at most); a plain HTTP
//! connection lives 30 s at most, and each holds a place under a per-address and a global
//! bound until it is upgraded or closed. Every socket gets `TCP_NODELAY` (without it, small relay
//! answers wait on Nagle + delayed ACK: ~40 ms floors).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::connection::{self, ConnCtx};
use crate::metrics::Metrics;

/// The largest request head read (hyper answers 431 past it).
const MAX_HEAD: usize = 16 * 1024;
/// Time to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of a plain HTTP connection (a WebSocket is handed off before it): a client
/// that pipelines requests and then reads nothing cannot hold a socket.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Plain HTTP connections (not yet upgraded) at once, in all.
pub const MAX_HTTP_CONNECTIONS: usize = 4096;

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
    /// Plain HTTP connections per address (as many as WebSockets) and in all
    /// ([`MAX_HTTP_CONNECTIONS`]): every TCP connection holds one until it is upgraded or
    /// closed, so sockets that never upgrade are bounded too.
    pub http_per_ip: Arc<PerIp>,
    /// See `http_per_ip`.
    pub http_connections: Arc<tokio::sync::Semaphore>,
    /// Serve the market dashboard on `/` to browsers (`--no-dashboard` turns it off).
    pub dashboard: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// The address a WebSocket counts under: the TCP peer, or — when the peer is one of our
/// trusted proxies — the client it forwarded for. `X-Forwarded-For` lists the client first and
/// each proxy appends who connected to it, so the list is read from the right, past our own
/// proxies: entries further left were written by the client and could be anything.
pub fn client_addr(
    peer: SocketAddr,
    trusted: &[std::net::IpAddr],
    forwarded_for: &[&str],
) -> SocketAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.contains(&ip.to_canonical());
    if trusted.is_empty() || !is_trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            // Unparseable (or `unknown`): nothing left of it can be trusted.
            return peer;
        };
        if !is_trusted(ip) {
            return SocketAddr::new(ip.to_canonical(), peer.port());
        }
    }
    peer
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

    /// A slot for `ip`'s group (the address for IPv4, its /64 for IPv6: one host holds a
    /// whole /64), unless the group holds its limit.
    pub fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let ip = group(ip);
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

/// The address an IP counts under: IPv4 itself (also when mapped into IPv6), IPv6 by /64.
pub fn group(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(s))
            }
        },
    }
}

/// The plain HTTP routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/dashboard/{*path}", get(crate::dashboard::asset))
        .fallback(not_found)
        .with_state(ctx)
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn index(State(ctx): State<Arc<Ctx>>, headers: HeaderMap) -> Response<Body> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let nip11 = accept.contains("application/nostr+json");
    let browser = accept.contains("text/html");
    let mut r = if nip11 {
        ctx.metrics.http("nip11");
        text(StatusCode::OK, "application/nostr+json", ctx.nip11.clone())
    } else if browser && ctx.dashboard {
        ctx.metrics.http("dashboard");
        crate::dashboard::index()
    } else {
        ctx.metrics.http("index");
        text(
            StatusCode::OK,
            "text/plain",
            "fedai-relay: connect with a Nostr client over WebSocket; NIP-11 with Accept: application/nostr+json\n",
        )
    };
    // One URL, three answers by `Accept`: a cache in front must keep them apart.
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

async fn health(State(ctx): State<Arc<Ctx>>) -> Response<Body> {
    ctx.metrics.http("health");
    text(StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n")
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> Response<Body> {
    ctx.metrics.http("metrics");
    ctx.metrics
        .set_live_queued_bytes(ctx.conn.hub.queued_bytes());
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        ctx.metrics.render(),
    )
}

async fn not_found(State(ctx): State<Arc<Ctx>>) -> Response<Body> {
    ctx.metrics.http("not_found");
    text(StatusCode::NOT_FOUND, "text/plain", "not found\n")
}

/// Whether `req` asks for a WebSocket (`Upgrade: websocket`).
fn wants_websocket(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accept a WebSocket under the connection limits: `101` now, the session once hyper hands
/// the socket over.
fn upgrade(ctx: &Arc<Ctx>, peer: SocketAddr, mut req: Request) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing Sec-WebSocket-Key\n",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let peer = client_addr(peer, &ctx.trusted_proxies, &forwarded);
    let Some(slot) = ctx.per_ip.take(peer.ip()) else {
        ctx.metrics.connection_refused();
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain",
            "too many connections from this address\n",
        );
    };
    let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
        ctx.metrics.connection_refused();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "too many connections\n",
        );
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.trim().to_owned());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        ctx.metrics.connection_opened();
        // The socket itself, with the bytes the client sent past the head: the session runs on
        // the TCP stream, not through hyper's boxed I/O.
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = parts.io.into_inner();
                let read = parts.read_buf.to_vec();
                connection::serve(stream, read, peer, host, ctx.conn.clone(), permit).await
            }
            Err(upgraded) => {
                let io = TokioIo::new(upgraded);
                connection::serve(io, Vec::new(), peer, host, ctx.conn.clone(), permit).await
            }
        }
        drop(slot);
        ctx.metrics.connection_closed();
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Any page of the relay may be read from a browser (a dashboard on another origin).
fn allow_any_origin(r: &mut Response<Body>) {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
}

async fn route(req: Request, peer: SocketAddr, ctx: Arc<Ctx>, router: Router) -> Response<Body> {
    if wants_websocket(&req) {
        return upgrade(&ctx, peer, req);
    }
    let mut r = if req.method() == Method::OPTIONS {
        ctx.metrics.http("options");
        text(StatusCode::NO_CONTENT, "text/plain", Body::empty())
    } else {
        match router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    };
    allow_any_origin(&mut r);
    r
}

/// Serve one accepted TCP connection.
pub async fn handle(stream: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, router: Router) {
    // Over either bound the socket is closed at once: answering would cost what is refused.
    let Some(http_slot) = ctx.http_per_ip.take(peer.ip()) else {
        ctx.metrics.connection_refused();
        return;
    };
    // Given back as soon as the connection is upgraded — before the `101` is written, so a
    // client that opens its next connection on seeing it finds the slot free — since the
    // WebSocket then counts under the WebSocket limits instead.
    let http_slot = Arc::new(std::sync::Mutex::new(Some(http_slot)));
    let Ok(_http_permit) = ctx.http_connections.clone().try_acquire_owned() else {
        ctx.metrics.connection_refused();
        return;
    };
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (ctx, router, slot) = (ctx.clone(), router.clone(), http_slot.clone());
        async move {
            let r = route(req.map(Body::new), peer, ctx, router).await;
            if r.status() == StatusCode::SWITCHING_PROTOCOLS {
                slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            }
            Ok::<_, Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(64)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    // Resolves when the client closes, or when a WebSocket is handed off (its session then
    // runs on its own task, under its own limits).
    match tokio::time::timeout(HTTP_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "http connection ended with an error"),
        Err(_) => tracing::debug!(%peer, "http connection timed out"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_address_is_believed_only_from_trusted_proxies() {
        use super::client_addr;
        let proxy: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let peer = |ip: &str| std::net::SocketAddr::new(ip.parse().unwrap(), 5000);
        let client = |a: std::net::SocketAddr| a.ip().to_string();
        // No trusted proxies, or a peer that is not one: the header is ignored.
        assert_eq!(
            client(client_addr(peer("10.0.0.1"), &[], &["1.2.3.4"])),
            "10.0.0.1"
        );
        assert_eq!(
            client(client_addr(peer("9.9.9.9"), &[proxy], &["1.2.3.4"])),
            "9.9.9.9"
        );
        // From our proxy: the rightmost address that is not one of ours.
        assert_eq!(
            client(client_addr(
                peer("10.0.0.1"),
                &[proxy],
                &["6.6.6.6, 1.2.3.4"]
            )),
            "1.2.3.4",
            "what the client wrote itself (left) is not believed"
        );
        assert_eq!(
            client(client_addr(
                peer("10.0.0.1"),
                &[proxy],
                &["1.2.3.4", "10.0.0.1"]
            )),
            "1.2.3.4",
            "several headers are one list; our proxies are skipped"
        );
        assert_eq!(
            client(client_addr(
                peer("::ffff:10.0.0.1"),
                &[proxy],
                &["::ffff:1.2.3.4"]
            )),
            "1.2.3.4"
        );
        // Garbage or nothing: the proxy's own address (limits still apply, to it).
        assert_eq!(
            client(client_addr(peer("10.0.0.1"), &[proxy], &["unknown"])),
            "10.0.0.1"
        );
        assert_eq!(
            client(client_addr(peer("10.0.0.1"), &[proxy], &[])),
            "10.0.0.1"
        );
    }

    use super::*;
    use std::net::IpAddr;

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_itself() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            group(ip("2001:db8:1:2:ffff:1:2:3")),
            group(ip("2001:db8:1:2::9")),
            "one /64, one limit"
        );
        assert_ne!(group(ip("2001:db8:1:3::1")), group(ip("2001:db8:1:2::1")));
        assert_eq!(group(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(group(ip("192.0.2.7")), ip("192.0.2.7"));
        let per = PerIp::new(1);
        let _a = per.take(ip("2001:db8::1")).unwrap();
        assert!(per.take(ip("2001:db8::2")).is_none(), "same /64");
        assert!(per.take(ip("2001:db8:0:1::1")).is_some(), "another /64");
    }
}
