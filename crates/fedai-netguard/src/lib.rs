//! Outbound connections to addresses that someone else chose — a customer's `url` input or
//! relay hint, a worker's relays or LNURL: public internet addresses only, so a stranger cannot
//! make our process probe loopback, the LAN or a cloud metadata service (SSRF). Tests and
//! private markets opt out explicitly (`allow_private`).
//!
//! Its own crate because both sides need it: the worker and the Lightning code (through
//! `fedai_lightning::netguard`, which adds a checking DNS resolver for reqwest) and the customer
//! SDK, which connects to the relays a worker's ad names.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use url::Url;

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
