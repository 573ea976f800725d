//! Outbound requests to addresses that someone else chose (a customer's `url` input or relay
//! hint, a worker's LNURL): public internet addresses only, so a stranger cannot make our process
//! probe loopback, the LAN or a cloud metadata service (SSRF).
//!
//! Host names are checked where they are resolved ([`PublicResolver`], plugged into reqwest), so
//! a name that resolves to a private address — or is re-pointed after a first check (DNS
//! rebinding) — is refused at connection time; literal addresses are checked up front
//! ([`check_url`]). Tests and private markets opt out explicitly (`allow_private`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Whether `ip` is an address on the public internet (not loopback, private, link-local,
/// unique-local, CGNAT, documentation, multicast, broadcast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT 100.64/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF 192.0.0/24
                || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking 198.18/15
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // Only global unicast (2000::/3) is public, less the ranges inside it that embed
            // or translate to other addresses: documentation, 6to4 (2002::/16, an IPv4 inside),
            // Teredo (2001::/32). NAT64 (64:ff9b::/96), ::/96, fec0::/10 and the rest of the
            // space fall outside 2000::/3.
            (s[0] & 0xe000) == 0x2000
                && !(s[0] == 0x2001 && s[1] == 0x0db8)
                && s[0] != 0x2002
                && !(s[0] == 0x2001 && s[1] == 0)
        }
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Check a URL's scheme against `schemes` and, unless `allow_private`, a literal IP host
/// against [`is_public`] (names are checked when resolved, by [`PublicResolver`]).
pub fn check_url(url: &str, schemes: &[&str], allow_private: bool) -> Result<Url, Refused> {
    let u = Url::parse(url).map_err(|e| Refused(format!("not a URL: {e}")))?;
    if !schemes.contains(&u.scheme()) {
        return Err(Refused(format!(
            "scheme `{}` is not allowed ({})",
            u.scheme(),
            schemes.join(", ")
        )));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Refused("URLs with credentials are refused".into()));
    }
    let host = u
        .host_str()
        .ok_or_else(|| Refused("URL has no host".into()))?;
    if allow_private {
        return Ok(u);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if !is_public(ip) {
            return Err(Refused(format!("{ip} is not a public address")));
        }
    } else if bare.eq_ignore_ascii_case("localhost") || bare.ends_with(".localhost") {
        return Err(Refused(format!("{bare} is not a public address")));
    }
    Ok(u)
}

/// [`check_url`], then, unless `allow_private`, every address the host resolves to must be
/// public — for connections we cannot route through [`PublicResolver`] (nostr relays). A name
/// re-pointed between this check and the connection (DNS rebinding) is not caught here.
pub async fn check_resolved(
    url: &str,
    schemes: &[&str],
    allow_private: bool,
) -> Result<Url, Refused> {
    let u = check_url(url, schemes, allow_private)?;
    if allow_private {
        return Ok(u);
    }
    let host = u.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = u.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| Refused(format!("{host} did not resolve in time")))?
    .map_err(|e| Refused(format!("{host} does not resolve: {e}")))?
    .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(Refused(format!("{host} is not a public address")));
    }
    Ok(u)
}

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
