//! LND over its REST API (lnd's grpc-gateway, `--restlisten`, default port 8080): TLS pinned to
//! the node's own certificate, admin (or invoice/payment-scoped) macaroon in the
//! `Grpc-Metadata-macaroon` header.
//!
//! Why REST and not gRPC: every Rust gRPC client of LND generates its code from lnd's `.proto`
//! files at build time, which needs `protoc` on the building machine. REST carries the same RPCs
//! as JSON over the HTTP client the crate already has, so nothing but `cargo` is needed to build
//! fed_AI (bytes are base64 and 64-bit integers are strings, as grpc-gateway writes them).
//! Server-streaming RPCs (payments, invoice subscriptions) arrive as one JSON object a line,
//! `{"result": …}` or `{"error": …}`.

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Invoice, InvoiceBackend, InvoiceState, LnError, Payer, PaymentHash, Preimage};

/// How long a unary call may take (connection included).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A streamed line longer than this is refused (a payment or invoice is a few KiB).
const MAX_LINE: usize = 1 << 20;

/// How to reach an LND node.
#[derive(Debug, Clone)]
pub struct LndConfig {
    /// `https://host:port` of its REST listener (`restlisten`, 8080 by default).
    pub url: String,
    /// Its `tls.cert` (pinned: no other certificate is accepted).
    pub cert: PathBuf,
    /// A macaroon with the rights the role needs.
    pub macaroon: PathBuf,
}

/// An LND node: an [`InvoiceBackend`] for workers and a [`Payer`] for customers.
#[derive(Clone)]
pub struct Lnd {
    http: reqwest::Client,
    base: String,
    macaroon: String,
}

/// What lnd's REST gateway answers on failure (a gRPC status as JSON).
#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

/// One line of a server-streaming RPC.
#[derive(Deserialize)]
struct StreamLine<T> {
    result: Option<T>,
    error: Option<GatewayError>,
}

#[derive(Deserialize)]
struct AddInvoiceResponse {
    #[serde(default)]
    r_hash: String,
    payment_request: String,
}

/// The fields of lnrpc.Invoice that fed_AI reads.
#[derive(Deserialize, Default)]
struct RestInvoice {
    #[serde(default)]
    state: String,
    #[serde(default)]
    r_preimage: String,
}

/// The fields of lnrpc.Payment that fed_AI reads.
#[derive(Deserialize)]
struct RestPayment {
    #[serde(default)]
    status: String,
    #[serde(default)]
    payment_preimage: String,
    #[serde(default)]
    failure_reason: String,
}

fn rpc(e: impl std::fmt::Display) -> LnError {
    LnError::Rpc(e.to_string())
}

impl Lnd {
    /// Connect: reads the certificate and macaroon; the TLS handshake and the macaroon are
    /// checked on the first call.
    pub async fn connect(cfg: &LndConfig) -> Result<Self, LnError> {
        crate::install_crypto_provider();
        let connect = |m: String| LnError::Connect(m);
        let pem = std::fs::read(&cfg.cert)
            .map_err(|e| connect(format!("read {}: {e}", cfg.cert.display())))?;
        let macaroon = std::fs::read(&cfg.macaroon)
            .map_err(|e| connect(format!("read {}: {e}", cfg.macaroon.display())))?;
        let tls = pinned::client_config(&pem).map_err(connect)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| connect(e.to_string()))?;
        let base = if cfg.url.contains("://") {
            cfg.url.trim_end_matches('/').to_owned()
        } else {
            format!("https://{}", cfg.url.trim_end_matches('/'))
        };
        if !base.starts_with("https://") {
            return Err(connect(format!(
                "{base}: LND's REST API is served over https"
            )));
        }
        Ok(Self {
            http,
            base,
            macaroon: hex::encode(macaroon),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("Grpc-Metadata-macaroon", &self.macaroon)
    }

    /// A unary call: the JSON answer, or the node's error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, LnError> {
        let mut req = self.request(method, path).timeout(CALL_TIMEOUT);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = crate::netguard::read_bounded(resp, MAX_LINE)
            .await
            .map_err(|e| rpc(format!("{path}: answer {e}")))?;
        if !status.is_success() {
            return Err(gateway_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| rpc(format!("{path}: unreadable answer: {e}")))
    }

    /// A server-streaming call: `on_item` sees each result until it returns `Some`.
    async fn stream<T: DeserializeOwned, R>(
        &self,
        req: reqwest::RequestBuilder,
        mut on_item: impl FnMut(T) -> Result<Option<R>, LnError>,
    ) -> Result<R, LnError> {
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = crate::netguard::read_bounded(resp, MAX_LINE)
                .await
                .map_err(|e| rpc(format!("answer {e}")))?;
            return Err(gateway_error(status, &bytes));
        }
        let mut lines = Lines::default();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            for line in lines.push(&chunk)? {
                if let Some(item) = stream_item(&line)? {
                    if let Some(r) = on_item(item)? {
                        return Ok(r);
                    }
                }
            }
        }
        Err(rpc("the stream ended"))
    }

    /// A plain invoice whose description hash is `description_hash` — what an LNURL-pay
    /// service issues (LUD-06: SHA-256 of its metadata; NIP-57: of the zap request).
    pub async fn add_invoice_hashed(
        &self,
        amount_msat: u64,
        description_hash: [u8; 32],
        expiry_secs: u64,
    ) -> Result<Invoice, LnError> {
        self.add(json!({
            "description_hash": STANDARD.encode(description_hash),
            "value_msat": amount_msat.to_string(),
            "expiry": expiry_secs.to_string(),
        }))
        .await
    }

    /// A settled invoice's preimage (`None` while it is not settled).
    pub async fn settled_preimage(
        &self,
        payment_hash: PaymentHash,
    ) -> Result<Option<Preimage>, LnError> {
        let inv = self.lookup(payment_hash).await?;
        if state(&inv.state)? != InvoiceState::Settled {
            return Ok(None);
        }
        bytes32(&inv.r_preimage, "preimage").map(Some)
    }

    /// [`InvoiceBackend::wait_past_open`] over lnd's invoice subscription
    /// (`SubscribeSingleInvoice`): lnd pushes the current state, then each change, so nobody
    /// polls.
    async fn subscribe_past_open(
        &self,
        payment_hash: PaymentHash,
        timeout: Duration,
    ) -> Result<Option<InvoiceState>, LnError> {
        let path = format!("/v2/invoices/subscribe/{}", URL_SAFE.encode(payment_hash));
        let req = self.request(reqwest::Method::GET, &path);
        let wait = self.stream(req, |inv: RestInvoice| past_open(&inv));
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    async fn add(&self, body: Value) -> Result<Invoice, LnError> {
        let r: AddInvoiceResponse = self
            .call(reqwest::Method::POST, "/v1/invoices", Some(body))
            .await?;
        added(r)
    }

    async fn lookup(&self, payment_hash: PaymentHash) -> Result<RestInvoice, LnError> {
        let path = format!("/v1/invoice/{}", hex::encode(payment_hash));
        self.call(reqwest::Method::GET, &path, None).await
    }
}

/// lnd's streamed answers (newline-delimited JSON) cut into lines as chunks arrive, each line
/// bounded: a node (or whatever answers at its address) cannot grow our memory.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// Add a chunk; returns the non-empty lines it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, LnError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = line.trim_ascii();
            if !line.is_empty() {
                out.push(line.to_vec());
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err(rpc("a streamed answer line is too long"));
        }
        Ok(out)
    }
}

/// One streamed line: its `result`, or the node's `error`.
fn stream_item<T: DeserializeOwned>(line: &[u8]) -> Result<Option<T>, LnError> {
    let l: StreamLine<T> =
        serde_json::from_slice(line).map_err(|e| rpc(format!("unreadable stream line: {e}")))?;
    if let Some(e) = l.error {
        return Err(rpc(format!("{}: {}", e.code, e.message)));
    }
    Ok(l.result)
}

/// An invoice subscription's update: its state once past `OPEN`.
fn past_open(inv: &RestInvoice) -> Result<Option<InvoiceState>, LnError> {
    let s = state(&inv.state)?;
    Ok((s != InvoiceState::Open).then_some(s))
}

/// A payment's update: its preimage once it succeeded, its reason when it failed.
fn payment_done(p: RestPayment) -> Result<Option<Preimage>, LnError> {
    match p.status.as_str() {
        "SUCCEEDED" => {
            let pre = hex::decode(&p.payment_preimage).map_err(|_| rpc("preimage is not hex"))?;
            let pre: [u8; 32] = pre
                .try_into()
                .map_err(|_| rpc("preimage is not 32 bytes"))?;
            Ok(Some(pre))
        }
        "FAILED" => Err(LnError::PaymentFailed(if p.failure_reason.is_empty() {
            "FAILURE_REASON_NONE".into()
        } else {
            p.failure_reason
        })),
        _ => Ok(None),
    }
}

fn added(r: AddInvoiceResponse) -> Result<Invoice, LnError> {
    Ok(Invoice {
        bolt11: r.payment_request,
        payment_hash: bytes32(&r.r_hash, "r_hash")?,
    })
}

/// Everything lnd's answers go through, on arbitrary bytes (the fuzz target's entry): the
/// stream splitter cut at `cut`, stream lines as invoice and payment updates, unary answers,
/// and error bodies. Never panics; returns how many lines decoded.
pub fn decode_any(data: &[u8], cut: usize) -> usize {
    let mut lines = Lines::default();
    let (a, b) = data.split_at(cut.min(data.len()));
    let mut n = 0;
    for chunk in [a, b] {
        let Ok(done) = lines.push(chunk) else {
            break;
        };
        for line in done {
            if let Ok(Some(inv)) = stream_item::<RestInvoice>(&line) {
                n += usize::from(past_open(&inv).is_ok());
            }
            if let Ok(Some(p)) = stream_item::<RestPayment>(&line) {
                n += usize::from(payment_done(p).is_ok());
            }
        }
    }
    if let Ok(r) = serde_json::from_slice::<AddInvoiceResponse>(data) {
        n += usize::from(added(r).is_ok());
    }
    let _ = gateway_error(reqwest::StatusCode::BAD_REQUEST, data);
    n
}

fn transport(e: reqwest::Error) -> LnError {
    if e.is_connect() || e.is_timeout() {
        LnError::Connect(e.to_string())
    } else {
        LnError::Rpc(e.to_string())
    }
}

fn gateway_error(status: reqwest::StatusCode, body: &[u8]) -> LnError {
    match serde_json::from_slice::<GatewayError>(body) {
        Ok(e) if !e.message.is_empty() => LnError::Rpc(format!("{}: {}", e.code, e.message)),
        _ => LnError::Rpc(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

fn state(s: &str) -> Result<InvoiceState, LnError> {
    Ok(match s {
        // proto3 JSON leaves a zero enum value out: an absent state is OPEN.
        "" | "OPEN" => InvoiceState::Open,
        "ACCEPTED" => InvoiceState::Accepted,
        "SETTLED" => InvoiceState::Settled,
        "CANCELED" => InvoiceState::Canceled,
        other => return Err(rpc(format!("unknown invoice state {other}"))),
    })
}

/// 32 bytes from grpc-gateway's base64.
fn bytes32(b64: &str, what: &str) -> Result<[u8; 32], LnError> {
    let v = STANDARD
        .decode(b64)
        .or_else(|_| URL_SAFE.decode(b64))
        .map_err(|_| rpc(format!("{what} is not base64")))?;
    v.try_into()
        .map_err(|_| rpc(format!("{what} is not 32 bytes")))
}

impl InvoiceBackend for Lnd {
    fn add_invoice(
        &self,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> BoxFuture<'_, Result<Invoice, LnError>> {
        self.add(json!({
            "memo": memo,
            "value_msat": amount_msat.to_string(),
            "expiry": expiry_secs.to_string(),
        }))
        .boxed()
    }

    fn add_hold_invoice(
        &self,
        payment_hash: PaymentHash,
        amount_msat: u64,
        memo: &str,
        expiry_secs: u64,
    ) -> BoxFuture<'_, Result<Invoice, LnError>> {
        let body = json!({
            "memo": memo,
            "hash": STANDARD.encode(payment_hash),
            "value_msat": amount_msat.to_string(),
            "expiry": expiry_secs.to_string(),
        });
        async move {
            let r: AddInvoiceResponse = self
                .call(reqwest::Method::POST, "/v2/invoices/hodl", Some(body))
                .await?;
            Ok(Invoice {
                bolt11: r.payment_request,
                payment_hash,
            })
        }
        .boxed()
    }

    fn invoice_state(
        &self,
        payment_hash: PaymentHash,
    ) -> BoxFuture<'_, Result<InvoiceState, LnError>> {
        async move { state(&self.lookup(payment_hash).await?.state) }.boxed()
    }

    fn settle(&self, preimage: Preimage) -> BoxFuture<'_, Result<(), LnError>> {
        let body = json!({ "preimage": STANDARD.encode(preimage) });
        async move {
            let _: Value = self
                .call(reqwest::Method::POST, "/v2/invoices/settle", Some(body))
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn cancel(&self, payment_hash: PaymentHash) -> BoxFuture<'_, Result<(), LnError>> {
        let body = json!({ "payment_hash": STANDARD.encode(payment_hash) });
        async move {
            let _: Value = self
                .call(reqwest::Method::POST, "/v2/invoices/cancel", Some(body))
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn wait_past_open(
        &self,
        payment_hash: PaymentHash,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Option<InvoiceState>, LnError>> {
        self.subscribe_past_open(payment_hash, timeout).boxed()
    }

    fn node_pubkey(&self) -> BoxFuture<'_, Result<String, LnError>> {
        #[derive(Deserialize)]
        struct Info {
            identity_pubkey: String,
        }
        async move {
            let i: Info = self.call(reqwest::Method::GET, "/v1/getinfo", None).await?;
            Ok(i.identity_pubkey)
        }
        .boxed()
    }
}

impl Payer for Lnd {
    fn pay(
        &self,
        bolt11: &str,
        max_fee_msat: u64,
        timeout_secs: u32,
    ) -> BoxFuture<'_, Result<Preimage, LnError>> {
        let timeout_secs = timeout_secs.max(1);
        let body = json!({
            "payment_request": bolt11,
            "timeout_seconds": timeout_secs,
            "fee_limit_msat": max_fee_msat.to_string(),
            "no_inflight_updates": true,
        });
        // lnd gives up routing after `timeout_seconds`; a hold invoice may then stay held until
        // the payee settles, so the HTTP bound leaves room for the job itself.
        let req = self
            .request(reqwest::Method::POST, "/v2/router/send")
            .json(&body)
            .timeout(Duration::from_secs(u64::from(timeout_secs) + 600));
        async move {
            self.stream(req, payment_done).await.map_err(|e| match e {
                LnError::Rpc(m) if m == "the stream ended" => {
                    LnError::PaymentFailed("the payment stream ended".into())
                }
                e => e,
            })
        }
        .boxed()
    }
}

/// TLS that trusts exactly one certificate: the node's own `tls.cert`.
///
/// lnd's certificate is self-signed and marked as a CA, which WebPKI refuses as a server
/// certificate; pinning the exact bytes is also stronger than any chain check. Handshake
/// signatures are still verified with the certificate's key.
mod pinned {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct Pinned {
        cert: CertificateDer<'static>,
        provider: Arc<CryptoProvider>,
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if end_entity.as_ref() == self.cert.as_ref() {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(
                    "the node's certificate is not the pinned tls.cert".into(),
                ))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A client configuration that accepts only the certificate in `pem`.
    pub(super) fn client_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
        let cert = CertificateDer::from_pem_slice(pem)
            .map_err(|e| format!("tls.cert is not a PEM certificate: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned {
            cert,
            provider: provider.clone(),
        });
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_grpc_gateway_writes_them() {
        assert_eq!(state("").unwrap(), InvoiceState::Open);
        assert_eq!(state("ACCEPTED").unwrap(), InvoiceState::Accepted);
        assert_eq!(state("SETTLED").unwrap(), InvoiceState::Settled);
        assert_eq!(state("CANCELED").unwrap(), InvoiceState::Canceled);
        assert!(state("WEIRD").is_err());
    }

    #[test]
    fn hashes_come_as_base64_of_32_bytes() {
        let h = [7u8; 32];
        assert_eq!(bytes32(&STANDARD.encode(h), "h").unwrap(), h);
        assert_eq!(bytes32(&URL_SAFE.encode(h), "h").unwrap(), h);
        assert!(bytes32(&STANDARD.encode([1u8; 31]), "h").is_err());
        assert!(bytes32("not base64!", "h").is_err());
    }

    #[test]
    fn a_pem_that_is_not_a_certificate_is_refused() {
        assert!(pinned::client_config(b"nothing here").is_err());
    }

    #[allow(dead_code)]
    fn assert_send_sync() {
        fn f<T: Send + Sync>() {}
        f::<Lnd>();
        f::<std::sync::Arc<Lnd>>();
    }
}
