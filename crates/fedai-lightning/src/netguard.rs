//! Outbound requests to addresses that someone else chose (a customer's `url` input or relay
//! hint, a worker's LNURL): public internet addresses only, so a stranger cannot make our process
//! probe loopback, the LAN or a cloud metadata service (SSRF).
//!
//! Host names are checked where they are resolved ([`PublicResolver`], plugged into reqwest), so
//! a name that resolves to a private address — or is re-pointed after a first check (DNS
//! rebinding) — is refused at connection time; literal addresses are checked up front
//! ([`check_url`]). Tests and private markets opt out explicitly (`allow_private`).

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub use fedai_netguard::{check_resolved, check_url, is_public, Refused};

/// A DNS resolver for reqwest that drops every non-public address and fails when none is left.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicResolver;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A reqwest client for addresses chosen by others: no redirects, bounded time, and (unless
/// `allow_private`) public addresses only.
pub fn client(allow_private: bool, timeout: Duration) -> Result<reqwest::Client, Refused> {
    crate::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none());
    if !allow_private {
        // A proxy would resolve the target itself, past our resolver.
        b = b
            .dns_resolver(std::sync::Arc::new(PublicResolver))
            .no_proxy();
    }
    b.build().map_err(|e| Refused(e.to_string()))
}

/// GET `url` (checked as by [`check_url`] for http/https) and return its body as UTF-8 text of
/// at most `max_bytes`; larger or non-text bodies are refused without being read further.
pub async fn fetch_text(
    url: &str,
    max_bytes: usize,
    allow_private: bool,
    timeout: Duration,
) -> Result<String, Refused> {
    let u = check_url(url, &["https", "http"], allow_private)?;
    let http = client(allow_private, timeout)?;
    let resp = http
        .get(u)
        .send()
        .await
        .map_err(|e| Refused(format!("cannot fetch: {e}")))?;
    if !resp.status().is_success() {
        return Err(Refused(format!("the server answered {}", resp.status())));
    }
    let body = read_bounded(resp, max_bytes).await?;
    String::from_utf8(body).map_err(|_| Refused("the body is not UTF-8 text".into()))
}

/// A response body of at most `max_bytes`, refused as soon as it is over (by its announced
/// length or while reading), so a server chosen by someone else cannot fill our memory.
pub async fn read_bounded(
    mut resp: reqwest::Response,
    max_bytes: usize,
) -> Result<Vec<u8>, Refused> {
    if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
        return Err(Refused(format!("larger than {max_bytes} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Refused(format!("cannot read: {e}")))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(Refused(format!("larger than {max_bytes} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::a00:1",
            "fec0::1",
            "2002:a00:1::1",
            "2001::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn names_are_checked_by_what_they_resolve_to() {
        // A name (not caught by the literal check) for this machine: refused by what it
        // resolves to (or by not resolving at all), accepted when private addresses are allowed.
        let e = check_resolved("ws://localhost.:7777", &["ws", "wss"], false)
            .await
            .unwrap_err();
        assert!(
            e.0.contains("not a public address") || e.0.contains("resolve"),
            "{e}"
        );
        assert!(check_resolved("ws://localhost.:7777", &["ws", "wss"], true)
            .await
            .is_ok());
    }

    #[test]
    fn urls_are_checked_for_scheme_credentials_and_literal_hosts() {
        let web = ["https", "http"];
        assert!(check_url("https://example.com/x", &web, false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/", &web, false).is_err());
        assert!(check_url("http://[::1]/", &web, false).is_err());
        assert!(check_url("http://localhost/", &web, false).is_err());
        assert!(check_url("http://169.254.169.254/latest", &web, false).is_err());
        assert!(check_url("file:///etc/passwd", &web, false).is_err());
        assert!(check_url("https://u:p@example.com/", &web, false).is_err());
        assert!(check_url("http://127.0.0.1:8080/", &web, true).is_ok());
        assert!(check_url("ws://127.0.0.1:7777", &["ws", "wss"], true).is_ok());
        assert!(check_url("ws://10.0.0.1:7777", &["ws", "wss"], false).is_err());
    }

    /// A one-shot HTTP server on loopback answering `body`.
    async fn serve_once(body: &'static str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn private_targets_are_refused_unless_allowed_and_bodies_are_bounded() {
        let port = serve_once("hello").await;
        let url = format!("http://127.0.0.1:{port}/");
        let e = fetch_text(&url, 1024, false, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.0.contains("not a public address"), "{e}");
        let ok = fetch_text(&url, 1024, true, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ok, "hello");
        let big = fetch_text(&url, 3, true, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(big.0.contains("larger than 3"), "{big}");
    }

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_are_refused_by_the_resolver() {
        // What a name chosen by someone else resolves to is checked when connecting.
        let e = PublicResolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost has no public address");
        assert!(e.to_string().contains("no public address"), "{e}");
    }
}
