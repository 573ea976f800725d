//! LNURL-pay (LUD-06) and lightning addresses (LUD-16): where a zap is paid.
//!
//! A pay target is a lightning address (`name@domain`), a bech32 LNURL (`lnurl1…`) or the
//! LNURL-pay URL itself. `lnurl-rs` supplies the types and encodings; the two HTTP calls (the
//! pay parameters, then the callback for an invoice) go through our own `reqwest`, with a time
//! bound and a size bound on every answer.
//!
//! Transport: https, except on loopback hosts and `.onion` (LUD-16 allows http for onion
//! services; loopback is a node on the same machine — tests, a local LNURL server). A plain-http
//! endpoint on the open network is refused: anyone on the path could swap the invoice.
//!
//! Reach: a pay target comes from someone else (a worker's feedback, a customer's zap), so
//! [`LnurlClient::new`] reaches public addresses only ([`crate::netguard`]: checked at DNS
//! resolution, no redirects, bounded answers and time) — a worker cannot make a customer's
//! client, nor a customer a worker, fetch loopback or LAN URLs. Tests and private markets opt in
//! with [`LnurlClient::allowing_private`].

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use nostr::prelude::PublicKey;
use url::Url;

use crate::LnError;

/// Answers larger than this are refused (a pay response is a few hundred bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

fn refuse(m: impl Into<String>) -> LnError {
    LnError::Lnurl(m.into())
}

/// The LNURL-pay endpoint of a pay target, checked for a safe transport.
pub fn endpoint(target: &str) -> Result<Url, LnError> {
    let target = target.trim();
    let url = if target.contains('@') {
        address_url(target)
            .ok_or_else(|| refuse(format!("`{target}` is not a lightning address")))?
    } else if target
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("lnurl1"))
    {
        decode_lnurl(target).ok_or_else(|| refuse("not a valid bech32 LNURL"))?
    } else {
        target.to_owned()
    };
    let url = Url::parse(&url).map_err(|e| refuse(format!("bad LNURL-pay URL: {e}")))?;
    check_transport(&url)?;
    Ok(url)
}

/// The bech32 LNURL of an endpoint (the `lnurl` tag of a zap request).
pub fn encode(endpoint: &Url) -> String {
    let hrp = bech32::Hrp::parse_unchecked("lnurl");
    bech32::encode::<bech32::Bech32>(hrp, endpoint.as_str().as_bytes()).unwrap_or_default()
}

/// The URL in a bech32 LNURL (LUD-01).
fn decode_lnurl(target: &str) -> Option<String> {
    let (hrp, bytes) = bech32::decode(target).ok()?;
    (hrp.to_lowercase() == "lnurl")
        .then(|| String::from_utf8(bytes).ok())
        .flatten()
}

/// A lightning address's pay endpoint (LUD-16): `name@domain` is
/// `https://domain/.well-known/lnurlp/name` (`http` for an onion service).
fn address_url(address: &str) -> Option<String> {
    let (name, domain) = address.rsplit_once('@')?;
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if !(name_ok && domain_ok) {
        return None;
    }
    let scheme = if domain.ends_with(".onion") {
        "http"
    } else {
        "https"
    };
    Some(format!(
        "{scheme}://{}/.well-known/lnurlp/{}",
        domain.to_ascii_lowercase(),
        name.to_ascii_lowercase()
    ))
}

/// A pay endpoint's answer (LUD-06), with NIP-57's zap fields. `metadata` is not read.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PayResponse {
    callback: String,
    min_sendable: u64,
    max_sendable: u64,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    allows_nostr: Option<bool>,
    #[serde(default)]
    nostr_pubkey: Option<String>,
}

fn check_transport(url: &Url) -> Result<(), LnError> {
    let host = url.host_str().ok_or_else(|| refuse("LNURL has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.eq_ignore_ascii_case("localhost")
        || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
        || host.ends_with(".onion");
    match url.scheme() {
        "https" => Ok(()),
        "http" if local => Ok(()),
        s => Err(refuse(format!(
            "LNURL over {s}:// to {host} refused: https is required off this machine"
        ))),
    }
}

/// An LNURL-pay service's terms (LUD-06), with its zap support (NIP-57).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayParams {
    /// The endpoint these came from.
    pub endpoint: Url,
    /// Where to ask for an invoice.
    pub callback: Url,
    /// Smallest amount, msat.
    pub min_msat: u64,
    /// Largest amount, msat.
    pub max_msat: u64,
    /// The key that signs this service's zap receipts; `None` when it does not take zaps.
    pub nostr_pubkey: Option<PublicKey>,
}

/// An HTTP client for LNURL-pay.
#[derive(Debug, Clone)]
pub struct LnurlClient {
    http: reqwest::Client,
    allow_private: bool,
}

impl LnurlClient {
    /// A client for public LNURL services: public addresses only, 10 s per call.
    pub fn new() -> Result<Self, LnError> {
        Self::build(false)
    }

    /// A client that may also reach loopback and private addresses (tests, private markets).
    pub fn allowing_private() -> Result<Self, LnError> {
        Self::build(true)
    }

    /// [`Self::new`] or, with `allow_private`, [`Self::allowing_private`].
    pub fn build(allow_private: bool) -> Result<Self, LnError> {
        let http = crate::netguard::client(allow_private, Duration::from_secs(10))
            .map_err(|e| refuse(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            allow_private,
        })
    }

    async fn get_json(&self, url: &Url) -> Result<serde_json::Value, LnError> {
        crate::netguard::check_url(url.as_str(), &["https", "http"], self.allow_private)
            .map_err(|e| refuse(format!("{}: {e}", url.host_str().unwrap_or("?"))))?;
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| refuse(format!("{}: {e}", url.host_str().unwrap_or("?"))))?;
        let status = resp.status();
        let body = crate::netguard::read_bounded(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| refuse(format!("LNURL answer: {e}")))?;
        parse_answer(status.as_u16(), &body)
    }

    /// Fetch a pay target's terms.
    pub async fn pay_params(&self, target: &str) -> Result<PayParams, LnError> {
        let endpoint = endpoint(target)?;
        let json = self.get_json(&endpoint).await?;
        parse_pay_params(endpoint, json)
    }

    /// Ask the callback for an invoice of `amount_msat`, for a zap when `zap_request` (its JSON)
    /// is given. The invoice is returned unchecked: check it with [`crate::invoice::check`].
    pub async fn invoice(
        &self,
        params: &PayParams,
        amount_msat: u64,
        zap_request: Option<&str>,
    ) -> Result<String, LnError> {
        if amount_msat < params.min_msat || amount_msat > params.max_msat {
            return Err(refuse(format!(
                "{amount_msat} msat is outside what the service takes ({}..={} msat)",
                params.min_msat, params.max_msat
            )));
        }
        let mut url = params.callback.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("amount", &amount_msat.to_string());
            if let Some(z) = zap_request {
                q.append_pair("nostr", z);
                q.append_pair("lnurl", &encode(&params.endpoint));
            }
        }
        let json = self.get_json(&url).await?;
        parse_invoice(&json)
    }
}

/// An LNURL service's answer (HTTP `status`, `body`): JSON, not a LUD-06 error
/// (`{"status": "ERROR", "reason": …}`, whose reason is passed on), and a success status.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<serde_json::Value, LnError> {
    let json: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| refuse(format!("LNURL answer ({status}) is not JSON")))?;
    if json.get("status").and_then(|s| s.as_str()) == Some("ERROR") {
        let reason = json.get("reason").and_then(|r| r.as_str()).unwrap_or("");
        let reason: String = reason.chars().take(200).collect();
        return Err(refuse(format!("LNURL service refused: {reason}")));
    }
    if !(200..300).contains(&status) {
        return Err(refuse(format!("LNURL service answered {status}")));
    }
    Ok(json)
}

/// A pay endpoint's terms (LUD-06) from its answer: a callback we may call, a sane amount
/// range, and the zap key when it takes zaps (NIP-57).
pub fn parse_pay_params(endpoint: Url, answer: serde_json::Value) -> Result<PayParams, LnError> {
    let pay: PayResponse = serde_json::from_value(answer)
        .map_err(|e| refuse(format!("not an LNURL-pay answer: {e}")))?;
    if pay.tag.as_deref().is_some_and(|t| t != "payRequest") {
        return Err(refuse("not an LNURL-pay answer (tag is not payRequest)"));
    }
    let callback =
        Url::parse(&pay.callback).map_err(|e| refuse(format!("bad callback URL: {e}")))?;
    check_transport(&callback)?;
    if pay.min_sendable > pay.max_sendable {
        return Err(refuse("minSendable is above maxSendable"));
    }
    let nostr_pubkey = match (pay.allows_nostr, pay.nostr_pubkey) {
        (Some(true), Some(k)) => {
            Some(PublicKey::from_hex(&k).map_err(|_| refuse("nostrPubkey is not a valid key"))?)
        }
        _ => None,
    };
    Ok(PayParams {
        endpoint,
        callback,
        min_msat: pay.min_sendable,
        max_msat: pay.max_sendable,
        nostr_pubkey,
    })
}

/// The invoice (`pr`) in a callback's answer (unchecked: see [`crate::invoice::check`]).
pub fn parse_invoice(answer: &serde_json::Value) -> Result<String, LnError> {
    answer
        .get("pr")
        .and_then(|p| p.as_str())
        .map(str::to_owned)
        .ok_or_else(|| refuse("the callback answered no invoice (`pr`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lightning_address_maps_to_its_well_known_https_url() {
        let u = endpoint("alice@example.com").unwrap();
        assert_eq!(u.as_str(), "https://example.com/.well-known/lnurlp/alice");
        assert!(endpoint("not an address@").is_err());
    }

    #[test]
    fn bech32_lnurls_decode_and_round_trip() {
        let u = Url::parse("https://example.com/.well-known/lnurlp/alice").unwrap();
        let b = encode(&u);
        assert!(b.starts_with("lnurl1"));
        assert_eq!(endpoint(&b).unwrap(), u);
        assert_eq!(endpoint(&b.to_ascii_uppercase()).unwrap(), u);
        assert!(endpoint("lnurl1qqqqqq").is_err());
    }

    #[test]
    fn plain_http_only_on_this_machine_or_onion() {
        assert!(endpoint("http://127.0.0.1:8080/lnurlp/w").is_ok());
        assert!(endpoint("http://[::1]:8080/lnurlp/w").is_ok());
        assert!(endpoint("http://localhost/lnurlp/w").is_ok());
        assert!(endpoint("http://abcdef.onion/lnurlp/w").is_ok());
        let e = endpoint("http://example.com/lnurlp/w").unwrap_err();
        assert!(e.to_string().contains("https is required"), "{e}");
        assert!(endpoint("ftp://127.0.0.1/x").is_err());
    }

    /// A worker-chosen pay target cannot make a customer's client fetch loopback (SSRF): the
    /// default client refuses it even with a server listening there.
    #[tokio::test]
    async fn the_default_client_reaches_public_addresses_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let body = r#"{"status":"ERROR","reason":"test"}"#;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let target = format!("http://127.0.0.1:{port}/.well-known/lnurlp/w");
        let e = LnurlClient::new()
            .unwrap()
            .pay_params(&target)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a public address"), "{e}");
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "never fetched"
        );
        // Allowed explicitly, the same target is reached (and its LUD-06 error surfaced).
        let e = LnurlClient::allowing_private()
            .unwrap()
            .pay_params(&target)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused: test"), "{e}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn targets_from_the_network_never_panic() {
        // A pay target comes from a worker's feedback: multi-byte text is refused, not sliced.
        for t in ["lnurlé1abc", "ééééééé", "lnurl", "", "@", "ⓛⓝⓤⓡⓛ1"] {
            assert!(endpoint(t).is_err(), "{t}");
        }
    }
}
