//! NIP-42 authentication, per connection.
//!
//! The relay issues a random challenge when something needs authentication (a protected NIP-70
//! event, or any write/read in `--auth` mode) and accepts an `AUTH` event that: is kind 22242,
//! names a challenge this connection was given (consumed on success), was made within ten
//! minutes, is correctly signed, and names this relay in its `relay` tag — one of the configured
//! public URLs (`--public-url`), so an `AUTH` that a malicious relay obtained for its own URL
//! with our challenge cannot be replayed here. Without a configured URL the `Host` header the
//! client sent stands in for it (weaker: a client chooses its `Host`); with neither, `AUTH` is
//! refused.

use std::collections::VecDeque;

use nostr_sdk::prelude::{Event, Keys, Kind, PublicKey, Timestamp};

/// Challenges outstanding per connection (the oldest is forgotten past this).
const MAX_CHALLENGES: usize = 4;
/// How far `created_at` may be from now.
const MAX_SKEW_SECS: u64 = 600;

/// One connection's NIP-42 state.
#[derive(Debug, Default)]
pub struct Nip42 {
    challenges: VecDeque<String>,
    /// The authenticated key, once `AUTH` succeeded.
    pub pubkey: Option<PublicKey>,
}

impl Nip42 {
    /// A fresh challenge to send in `["AUTH", challenge]`.
    pub fn challenge(&mut self) -> String {
        // 32 bytes from the OS random source (the x coordinate of a fresh key): unguessable.
        let c = Keys::generate().public_key().to_hex();
        if self.challenges.len() == MAX_CHALLENGES {
            self.challenges.pop_front();
        }
        self.challenges.push_back(c.clone());
        c
    }

    /// Check an `AUTH` event; on success the connection is authenticated as its author.
    /// `public` are the relay's configured URLs; `host` is the `Host` header of the upgrade
    /// request, when the client sent one.
    pub fn check(
        &mut self,
        event: &Event,
        public: &[String],
        host: Option<&str>,
    ) -> Result<(), &'static str> {
        if event.kind != Kind::Authentication {
            return Err("not a kind 22242 event");
        }
        let tag = |name: &str| {
            event.tags.iter().find_map(|t| match t.as_slice() {
                [n, v, ..] if n == name => Some(v.clone()),
                _ => None,
            })
        };
        let challenge = tag("challenge").ok_or("no challenge tag")?;
        let Some(pos) = self.challenges.iter().position(|c| *c == challenge) else {
            return Err("unknown challenge");
        };
        if Timestamp::now()
            .as_secs()
            .abs_diff(event.created_at.as_secs())
            > MAX_SKEW_SECS
        {
            return Err("created_at is more than 10 minutes from now");
        }
        if event.verify().is_err() {
            return Err("invalid id or signature");
        }
        let relay = tag("relay").ok_or("no relay tag")?;
        let ours = if public.is_empty() {
            host.is_some_and(|h| same_host(&relay, h))
        } else {
            public.iter().any(|u| same_url(&relay, u))
        };
        if !ours {
            return Err("the relay tag names another relay");
        }
        self.challenges.remove(pos);
        self.pubkey = Some(event.pubkey);
        Ok(())
    }
}

/// Whether a relay URL (`wss://host[:port][/path]`) names `host` (a `Host` header,
/// `host[:port]`). Host names compare case-insensitively; ports only when both give one (a
/// proxy in front of the relay commonly drops the default port).
pub fn same_host(url: &str, host: &str) -> bool {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("");
    let (a, ap) = split_host_port(rest);
    let (b, bp) = split_host_port(host.trim());
    !a.is_empty()
        && a.eq_ignore_ascii_case(b)
        && match (ap, bp) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// Whether two relay URLs name the same relay (scheme-insensitive, case-insensitive host,
/// default ports, trailing slash).
pub fn same_url(a: &str, b: &str) -> bool {
    let norm = |u: &str| {
        let (scheme, rest) = u.split_once("://").unwrap_or(("wss", u));
        let rest = rest.trim_end_matches('/').to_ascii_lowercase();
        let default = if scheme.eq_ignore_ascii_case("ws") {
            ":80"
        } else {
            ":443"
        };
        let (hostport, path) = match rest.split_once('/') {
            Some((h, p)) => (h.to_owned(), p.to_owned()),
            None => (rest.clone(), String::new()),
        };
        let hostport = hostport
            .strip_suffix(default)
            .map(str::to_owned)
            .unwrap_or(hostport);
        (hostport, path)
    };
    norm(a) == norm(b)
}

fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if let Some(v6) = s.strip_prefix('[') {
        // `[::1]:8080`
        return match v6.split_once(']') {
            Some((h, rest)) => (h, rest.strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nostr_sdk::prelude::nip42::ClientAuthentication;
    use nostr_sdk::prelude::*;

    fn auth(keys: &Keys, challenge: &str, relay: &str) -> Event {
        ClientAuthentication::new(challenge, RelayUrl::parse(relay).unwrap())
            .finalize(keys)
            .unwrap()
    }

    #[test]
    fn a_valid_auth_authenticates_once() {
        let keys = Keys::generate();
        let mut s = Nip42::default();
        let c = s.challenge();
        let ev = auth(&keys, &c, "ws://127.0.0.1:7000");
        assert_eq!(s.check(&ev, &[], Some("127.0.0.1:7000")), Ok(()));
        assert_eq!(s.pubkey, Some(keys.public_key()));
        let mut again = Nip42::default();
        assert_eq!(
            again.check(&ev, &[], Some("127.0.0.1:7000")),
            Err("unknown challenge"),
            "a challenge is per connection"
        );
        assert_eq!(
            s.check(&ev, &[], None),
            Err("unknown challenge"),
            "consumed"
        );
    }

    #[test]
    fn an_auth_made_for_another_relay_is_refused() {
        let keys = Keys::generate();
        let mut s = Nip42::default();
        let c = s.challenge();
        let ev = auth(&keys, &c, "wss://evil.example");
        assert_eq!(
            s.check(&ev, &[], Some("relay.example:443")),
            Err("the relay tag names another relay")
        );
        // A client sending `Host: evil.example` does not help when the public URL is set.
        let public = ["wss://relay.example".to_owned()];
        assert_eq!(
            s.check(&ev, &public, Some("evil.example")),
            Err("the relay tag names another relay")
        );
        // Without a public URL or a Host, nothing names this relay: refused.
        assert_eq!(
            s.check(&ev, &[], None),
            Err("the relay tag names another relay")
        );
        assert!(s.pubkey.is_none());
        let good = auth(&keys, &c, "wss://Relay.Example/");
        assert_eq!(s.check(&good, &public, Some("evil.example")), Ok(()));
    }

    #[test]
    fn hosts_compare_loosely_on_ports_and_case() {
        assert!(same_host("wss://Relay.Example/", "relay.example"));
        assert!(same_host("wss://relay.example", "relay.example:443"));
        assert!(same_host("ws://[::1]:7000", "[::1]:7000"));
        assert!(!same_host("ws://127.0.0.1:7001", "127.0.0.1:7000"));
        assert!(!same_host("ws://other", "relay.example"));
        assert!(!same_host("", "relay.example"));
        assert!(same_url("wss://relay.example:443/", "wss://RELAY.example"));
        assert!(same_url("ws://127.0.0.1:80", "ws://127.0.0.1"));
        assert!(!same_url("wss://relay.example/a", "wss://relay.example/b"));
        assert!(!same_url("wss://relay.example:8443", "wss://relay.example"));
    }
}
