//! # fedai-transport
//!
//! How every fed_AI component (customer SDK, worker, tests) reaches relays: one nostr-sdk
//! client builder ([`nostr_client`]), why a relay is unreachable in words, the one backoff
//! formula behind every retry, and the liveness interval a worker keeps to.
//!
//! ## A WebSocket transport for nostr-sdk that sets `TCP_NODELAY`
//!
//! nostr-sdk's default transport leaves Nagle's algorithm on. A worker writes small events back
//! to back (feedback, result, metering) and a customer writes a REQ then an EVENT; with Nagle on,
//! the second write waits for the ACK of the first, which the peer delays by up to 40 ms. Measured
//! on loopback, that added ~30 ms to every job. Plain `ws://` relays use this transport;
//! `wss://` (and proxied) connections fall back to the default transport.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_wsocket::Message;
use futures_util::{Sink, SinkExt, StreamExt};
use nostr_sdk::prelude::{Error, Url};
use nostr_sdk::transport::websocket::{
    DefaultWebsocketTransport, WebSocketSink, WebSocketStream, WebSocketTransport,
};
use tokio_tungstenite::tungstenite::Message as Tm;

/// `ws://` over a TCP socket with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDelayTransport;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn to_wsocket(m: Tm) -> Option<Message> {
    Some(match m {
        Tm::Text(t) => Message::Text(t.as_str().to_owned()),
        Tm::Binary(b) => Message::Binary(b.to_vec()),
        Tm::Ping(b) => Message::Ping(b.to_vec()),
        Tm::Pong(b) => Message::Pong(b.to_vec()),
        Tm::Close(f) => Message::Close(f.map(Into::into)),
        Tm::Frame(_) => return None,
    })
}

struct SinkAdapter(futures_util::stream::SplitSink<Ws, Tm>);

impl Sink<Message> for SinkAdapter {
    type Error = Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_ready_unpin(cx).map_err(Error::transport)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.0
            .start_send_unpin(item.into())
            .map_err(Error::transport)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_flush_unpin(cx).map_err(Error::transport)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_close_unpin(cx).map_err(Error::transport)
    }
}

impl WebSocketTransport for NoDelayTransport {
    fn support_ping(&self) -> bool {
        true
    }

    fn connect<'a>(
        &'a self,
        url: &'a Url,
        proxy: Option<SocketAddr>,
    ) -> Pin<
        Box<
            dyn std::future::Future<Output = Result<(WebSocketSink, WebSocketStream), Error>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            if url.scheme() != "ws" || proxy.is_some() {
                return DefaultWebsocketTransport.connect(url, proxy).await;
            }
            let host = url
                .host_str()
                .ok_or_else(|| Error::transport(std::io::Error::other("relay URL has no host")))?;
            let port = url.port_or_known_default().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(Error::transport)?;
            tcp.set_nodelay(true).map_err(Error::transport)?;
            let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .map_err(Error::transport)?;
            let (tx, rx) = ws.split();
            let sink: WebSocketSink = Box::pin(SinkAdapter(tx));
            let stream: WebSocketStream = Box::pin(rx.filter_map(|m| async move {
                match m {
                    Ok(m) => to_wsocket(m).map(Ok),
                    Err(e) => Some(Err(Error::transport(e))),
                }
            }));
            Ok((sink, stream))
        })
    }
}

/// A nostr-sdk client using [`NoDelayTransport`]. Every fed_AI component builds its client here.
pub fn nostr_client() -> nostr_sdk::prelude::Client {
    nostr_sdk::prelude::Client::builder()
        .websocket_transport(NoDelayTransport)
        .build()
}

/// Why `url` cannot be reached, in words: the TCP connection's own error, or that the port
/// answers but the WebSocket did not open.
pub async fn unreachable_reason(url: &nostr_sdk::prelude::RelayUrl) -> String {
    let Ok(u) = url::Url::parse(url.as_str()) else {
        return "not a URL".into();
    };
    let Some(host) = u.host_str() else {
        return "no host".into();
    };
    let port = u
        .port_or_known_default()
        .unwrap_or(if u.scheme() == "wss" { 443 } else { 80 });
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    match tokio::time::timeout(
        std::time::Duration::from_millis(1500),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Err(_) => "no answer within 1.5 s".into(),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => "the port answers but the WebSocket did not open".into(),
    }
}

/// Exponential backoff: `first` doubled `round` times, at most `cap` (the one formula behind
/// every retry of the customer SDK and the worker).
pub fn backoff(
    first: std::time::Duration,
    round: u32,
    cap: std::time::Duration,
) -> std::time::Duration {
    first.saturating_mul(1u32 << round.min(31)).min(cap)
}

/// How often a worker shows a running (or paying) job is alive (`processing` feedback); a
/// customer counts a few of these as silence.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_cap() {
        let (first, cap) = (Duration::from_millis(250), Duration::from_secs(30));
        let waits: Vec<u64> = (0..10)
            .map(|r| backoff(first, r, cap).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(backoff(first, u32::MAX, cap), cap, "no overflow");
    }
}
