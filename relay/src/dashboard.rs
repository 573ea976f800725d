//! The market dashboard: a static page compiled into the binary (`relay/dashboard/`), served on
//! the relay's one port. A browser asking for `/` (`Accept: text/html`) gets the page; NIP-11
//! clients and WebSockets on `/` are unaffected. The page is a Nostr client: it reads the market
//! over WebSocket from this relay or from any relay named in `?relay=`, and checks every
//! signature itself (vendored `@noble` libraries, licences in `relay/dashboard/vendor/`).
//!
//! Every response carries a strict Content-Security-Policy: scripts only from this origin, no
//! inline script, no plugins, no framing. The page renders network text with `textContent` only;
//! the policy is the second wall should that ever slip.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use std::sync::Arc;

use crate::http::Ctx;

/// One compiled-in file: its path under `/dashboard/` and its text.
struct Asset {
    path: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($path:literal) => {
        Asset {
            path: $path,
            body: include_str!(concat!("../dashboard/", $path)),
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("app.js"),
    asset!("style.css"),
    asset!("vendor/secp256k1.js"),
    asset!("vendor/noble-hashes/sha2.js"),
    asset!("vendor/noble-hashes/_md.js"),
    asset!("vendor/noble-hashes/_u64.js"),
    asset!("vendor/noble-hashes/utils.js"),
];

const INDEX: &str = include_str!("../dashboard/index.html");

/// Scripts, styles and fetches from this origin only; WebSockets to any relay (`?relay=`).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

fn respond(ctype: &'static str, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change only with the binary; a restart after an upgrade must not show a mix.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The page itself (for `GET /` from a browser).
pub fn index() -> Response<Body> {
    respond("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/{*path}`: one of the compiled-in files, or 404.
pub async fn asset(State(ctx): State<Arc<Ctx>>, Path(path): Path<String>) -> Response<Body> {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) if ctx.dashboard => {
            ctx.metrics.http("dashboard");
            let ctype = if a.path.ends_with(".css") {
                "text/css; charset=utf-8"
            } else {
                "text/javascript; charset=utf-8"
            };
            respond(ctype, a.body)
        }
        _ => {
            ctx.metrics.http("not_found");
            let mut r = Response::new(Body::from("not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_served() {
        // The browser resolves each `import … from './x.js'` relative to the importing file;
        // a file missing from ASSETS would break the page without a compile error.
        let files: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for a in ASSETS.iter().filter(|a| a.path.ends_with(".js")) {
            let dir = a.path.rsplit_once('/').map_or("", |(d, _)| d);
            for line in a.body.lines() {
                let line = line.trim_start();
                if !(line.starts_with("import ") || line.starts_with("export ")) {
                    continue;
                }
                let Some((_, rest)) = line.split_once(" from ") else {
                    continue;
                };
                let target = rest.trim().trim_end_matches(';').trim_matches(['"', '\'']);
                let target = target.strip_prefix("./").expect("relative import");
                let full = if dir.is_empty() {
                    target.to_owned()
                } else {
                    format!("{dir}/{target}")
                };
                assert!(files.contains(&full.as_str()), "{} imports {full}", a.path);
            }
        }
        assert!(INDEX.contains("src=\"dashboard/app.js\""));
        assert!(INDEX.contains("href=\"dashboard/style.css\""));
    }
}
