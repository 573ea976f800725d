//! The market dashboard in a real browser: Debian's headless Chromium over WebDriver
//! (`tests/browser/setup.sh`), the real `fedai-relay` serving the page, a real worker in front of
//! llama.cpp, and, for hostile input, a relay of our own making that sends what an attacker would.

use std::time::Duration;

use fedai_protocol::nostr::prelude::*;
use fedai_runners::local::LocalModel;
use fedai_tests::browser::Browser;
use fedai_tests::{
    client, nsec, tiny_job, wait_for_workers, workspace_root, RelayProc, WorkerProc,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(60);

/// Where screenshots go (kept after the run; `FEDAI_DOCS_SCREENSHOT=1` also refreshes the one in
/// docs/).
fn save_screenshot(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
    if std::env::var_os("FEDAI_DOCS_SCREENSHOT").is_some() {
        std::fs::write(workspace_root().join("docs").join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_live_market_in_a_real_browser() {
    let llama = fedai_tests::llama(LocalModel::Tiny, "tiny", 1).await;
    let relay = RelayProc::start(&["--memory"]);
    let (sk, pk) = nsec();
    let _worker = WorkerProc::start(&sk, &relay.url, &llama.url, &["--name", "dash-worker-1"]);
    let c = client(&relay).await;
    wait_for_workers(&c, 1).await;

    let browser = Browser::start().await;
    browser.goto(&format!("http://{}/", relay.addr)).await;
    browser
        .wait_for(
            "the live pill",
            "return document.getElementById('conn-state').textContent === 'live'",
            T,
        )
        .await;
    // The worker's row, from its capability ad: name, npub, model, runner, hardware.
    let row = browser
        .wait_for(
            "the worker's row",
            "const r = [...document.querySelectorAll('#workers tbody tr')]
               .find(r => r.innerText.includes('dash-worker-1'));
             return r ? {text: r.innerText, npub: r.title} : null",
            T,
        )
        .await;
    assert_eq!(row["npub"], pk.to_bech32().unwrap(), "{row}");
    let text = row["text"].as_str().unwrap();
    for want in ["tiny", "llama-cpp", "CPU", "busy"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert_eq!(
        browser
            .eval(
                "return document.getElementById('stat-workers').textContent",
                json!([])
            )
            .await,
        "1"
    );

    // A job through the market appears in the feed with its signed metering. Streamed: its
    // partials (output text) reach the page too, which must drop them unread.
    let mut job = tiny_job("a job the dashboard shows", 8);
    job.params.stream = true;
    let mut partials = 0;
    let done = c
        .submit(job, false, T, |u| {
            if matches!(u, fedai_client::JobUpdate::Partial(_)) {
                partials += 1;
            }
        })
        .await
        .unwrap();
    assert!(partials > 0, "the job streamed");
    let (m, _) = done.metering.as_ref().expect("metering");
    let short = done.request.id.to_hex()[..10].to_owned();
    let row_script = format!(
        "const r = [...document.querySelectorAll('#jobs tbody tr')]
           .find(r => r.innerText.includes('{short}'));
         return r && r.innerText.includes('signed metering') ? r.innerText : null"
    );
    let job = browser
        .wait_for("the job in the feed", &row_script, T)
        .await;
    let job = job.as_str().unwrap().to_owned();
    // Opened after the fact, the page gets the job's events newest first (metering before
    // result before request) and must still put the row together.
    browser.goto(&format!("http://{}/", relay.addr)).await;
    let again = browser
        .wait_for("the job after a reload", &row_script, T)
        .await;
    assert_eq!(again.as_str().unwrap(), job, "the same row, live or loaded");
    assert!(job.contains("success"), "{job}");
    assert!(job.contains("tiny"), "{job}");
    assert!(job.contains("dash-worker-1"), "{job}");
    assert!(
        job.contains(&format!(
            "{} / {}",
            m.record.usage.input_tokens, m.record.usage.output_tokens
        )),
        "token counts from the metering record: {job}"
    );
    let page = browser_text(&browser).await;
    assert!(
        !page.contains("a job the dashboard shows"),
        "never a prompt"
    );
    if done.output.trim().len() >= 12 {
        assert!(!page.contains(done.output.trim()), "never an output");
    }
    // Counters, trust and money follow.
    let stats = browser
        .wait_for(
            "the counters",
            "const t = id => document.getElementById(id).textContent;
             return t('stat-jobs') === '1' && t('stat-outcome') === '1 / 0'
               ? {verify: t('stat-verify'), conns: t('stat-conns'), stored: t('stat-stored'),
                  trust: document.querySelector('#workers tbody tr .trust').innerText,
                  money: document.querySelector('#money tbody').innerText}
               : null",
            T,
        )
        .await;
    assert!(
        stats["trust"]
            .as_str()
            .unwrap()
            .starts_with("100%\n1 delivered, 0 failed"),
        "{stats}"
    );
    assert!(
        stats["money"].as_str().unwrap().contains("dash-worker-1"),
        "{stats}"
    );
    assert!(
        stats["verify"].as_str().unwrap().ends_with("/ 0"),
        "{stats}"
    );
    // The relay's own metrics (read from /metrics on the page's origin).
    browser
        .wait_for(
            "relay metrics",
            "return Number(document.getElementById('stat-conns').textContent) >= 2
               && document.getElementById('stat-stored').textContent.includes('ev')",
            T,
        )
        .await;
    save_screenshot("dashboard.png", &browser.screenshot().await);

    // Dark, then phone-sized: nothing but the tables' own boxes scrolls sideways.
    let bg = "return getComputedStyle(document.body).backgroundColor";
    let light = browser.eval(bg, json!([])).await;
    browser
        .eval("document.getElementById('theme').click()", json!([]))
        .await;
    let dark = browser.eval(bg, json!([])).await;
    assert_ne!(light, dark, "the theme toggle changes the colours");
    browser.resize(390, 844).await;
    browser
        .wait_for(
            "a page as wide as a phone",
            "return document.documentElement.scrollWidth <= window.innerWidth",
            Duration::from_secs(10),
        )
        .await;
    save_screenshot("dashboard-phone.png", &browser.screenshot().await);
    browser.close().await;
    c.shutdown().await;
}

async fn browser_text(b: &Browser) -> String {
    b.eval("return document.body.innerText", json!([]))
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A "relay" that answers every REQ with `frames` (raw JSON texts, `{sub}` replaced by the
/// subscription id), then EOSE: what a hostile relay can send a page.
async fn hostile_relay(frames: Vec<String>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", l.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let frames = frames.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let Ok(text) = msg.into_text() else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if v[0] != "REQ" {
                        continue;
                    }
                    let sub = v[1].as_str().unwrap_or("").to_owned();
                    for f in &frames {
                        let f = f.replace("{sub}", &sub);
                        let _ = ws.send(f.into()).await;
                    }
                    let _ = ws.send(json!(["EOSE", sub]).to_string().into()).await;
                }
            });
        }
    });
    url
}

fn event_frame(ev: &Value) -> String {
    json!(["EVENT", "{sub}", ev]).to_string()
}

fn signed(keys: &Keys, kind: u16, content: &str, tags: Vec<Vec<String>>) -> Value {
    signed_at(keys, kind, content, tags, Timestamp::now())
}

fn signed_at(
    keys: &Keys,
    kind: u16,
    content: &str,
    tags: Vec<Vec<String>>,
    at: Timestamp,
) -> Value {
    let ev = EventBuilder::new(Kind::from_u16(kind), content)
        .tags(tags.into_iter().map(|t| Tag::parse(t).unwrap()))
        .custom_created_at(at)
        .finalize(keys)
        .unwrap();
    serde_json::from_str(&ev.as_json()).unwrap()
}

fn tags(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|x| x.iter().map(|s| s.to_string()).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_refuses_forged_events_and_never_runs_what_they_say() {
    const EVIL_NAME: &str = "<img src=x onerror=__pwned=1>evil-worker";
    const EVIL_MODEL: &str = "<script>window.__pwned=2</script>";
    const EVIL_JOB_MODEL: &str = "<svg onload=alert(1)>";
    let worker = Keys::generate();
    let customer = Keys::generate();
    let other = Keys::generate();
    let exp = (Timestamp::now().as_secs() + 600).to_string();
    let ad = |keys: &Keys, d: &str, name: &str, model: &str| {
        signed(
            keys,
            31990,
            &json!({ "name": name }).to_string(),
            tags(&[
                &["d", d],
                &["k", "5050"],
                &["t", "fedai"],
                &["model", model, "2048", "f32"],
                &["price", model, "1000", "0", "0"],
                &["capacity", "4", "1", "0"],
                &["runner", "\"><b>bold</b>"],
                &["expiration", &exp],
            ]),
        )
    };
    let evil = ad(&worker, "a", EVIL_NAME, EVIL_MODEL);
    // A valid id with someone else's signature: the id check passes, the signature must not.
    let mut forged = ad(&other, "b", "FORGED-WORKER", "tiny");
    forged["sig"] = evil["sig"].clone();
    // Content changed after signing: the id no longer matches.
    let mut tampered = ad(&other, "c", "x", "tiny");
    tampered["content"] = json!({ "name": "TAMPERED-WORKER" }).to_string().into();
    // A valid event too big to be worth parsing (no relay of ours stores one this size).
    let huge = signed(
        &customer,
        5050,
        &"x".repeat(1_100_000),
        tags(&[&["t", "fedai"]]),
    );

    let request = signed(
        &customer,
        5050,
        "",
        tags(&[
            &["i", "hello", "text"],
            &["param", "model", EVIL_JOB_MODEL],
            &["t", "fedai"],
        ]),
    );
    let rid = request["id"].as_str().unwrap().to_owned();
    let result = signed(
        &worker,
        6050,
        "an output the page must not show",
        tags(&[
            &["e", &rid],
            &["p", &customer.public_key().to_hex()],
            &["t", "fedai"],
        ]),
    );
    let res_id = result["id"].as_str().unwrap().to_owned();
    let metering = signed(
        &worker,
        7060,
        "",
        tags(&[
            &["e", &rid, "", "request"],
            &["e", &res_id, "", "result"],
            &["p", &customer.public_key().to_hex()],
            &["k", "5050"],
            &["model", EVIL_JOB_MODEL],
            &["tokens", "3", "4"],
            &["wall_ms", "120"],
            &["price", "5000"],
        ]),
    );
    let preimage = [7u8; 32];
    let hash = fedai_protocol::sha256_hex(&preimage);
    let receipt = |signer: &Keys, amount: &str, pre: &str| {
        signed(
            signer,
            7062,
            "",
            tags(&[
                &["e", &rid, "", "request"],
                &["p", &worker.public_key().to_hex()],
                &["amount", amount],
                &["payment_hash", &hash],
                &["preimage", pre],
            ]),
        )
    };
    let paid = receipt(&customer, "5000", &hex::encode(preimage));
    let unproven = receipt(&customer, "7000", &hex::encode([8u8; 32]));
    // Strangers' words about the job: an error, a result without metering, a receipt that is
    // not the customer's, metering for a request nobody made. None may change the row or money.
    let p_customer = customer.public_key().to_hex();
    let stranger_error = signed(
        &other,
        7000,
        "",
        tags(&[
            &["status", "error"],
            &["code", "STRANGER"],
            &["e", &rid],
            &["p", &p_customer],
        ]),
    );
    let stranger_result = signed(
        &other,
        6050,
        "not the answer",
        tags(&[&["e", &rid], &["p", &p_customer]]),
    );
    let stranger_receipt = receipt(&other, "9000", &hex::encode(preimage));
    let made_up = hex::encode([9u8; 32]);
    let stranger_metering = signed(
        &other,
        7060,
        "",
        tags(&[
            &["e", &made_up, "", "request"],
            &["e", &made_up, "", "result"],
            &["tokens", "1", "1"],
            &["price", "123456"],
        ]),
    );
    // Kept out of what the page stores: an ad from the future, an ad with a huge value.
    let future = signed_at(
        &other,
        31990,
        &json!({ "name": "FUTURE-WORKER" }).to_string(),
        tags(&[&["d", "f"], &["k", "5050"], &["t", "fedai"]]),
        Timestamp::now() + 3600,
    );
    let long = "y".repeat(2000);
    let long_ad = signed(
        &other,
        31990,
        &json!({ "name": "LONG-WORKER" }).to_string(),
        tags(&[&["d", "l"], &["k", "5050"], &["model", &long]]),
    );
    let mut frames: Vec<String> = [
        &evil,
        &forged,
        &tampered,
        &huge,
        &request,
        &result,
        &metering,
        &paid,
        &unproven,
        &stranger_error,
        &stranger_result,
        &stranger_receipt,
        &stranger_metering,
        &future,
        &long_ad,
    ]
    .iter()
    .map(|e| event_frame(e))
    .collect();
    // Not JSON at all, frames of the wrong shape.
    frames.push("<script>window.__pwned=3</script>".into());
    frames.push(json!(["EVENT", "{sub}", "not an event"]).to_string());
    frames.push(json!(["EVENT", "{sub}", null]).to_string());
    frames.push(json!(["EVENT", "{sub}", {"kind": 7000, "tags": [null]}]).to_string());
    let hostile = hostile_relay(frames).await;

    let relay = RelayProc::start(&["--memory"]);
    let browser = Browser::start().await;
    browser
        .goto(&format!("http://{}/?relay={hostile}", relay.addr))
        .await;
    assert_eq!(
        browser
            .eval("return window.fedaiDashboard().relay", json!([]))
            .await,
        hostile.as_str(),
        "?relay= points the page at any relay"
    );
    let counts = browser
        .wait_for(
            "every frame handled",
            // The page renders a moment after events arrive: wait for what it shows.
            "const s = window.fedaiDashboard();
             return document.getElementById('stat-verify').textContent === `${s.verified} / ${s.rejected}`
               && s.verified >= 12 && s.rejected >= 7 ? s : null",
            T,
        )
        .await;
    assert_eq!(counts["error"], Value::Null, "{counts}");
    assert_eq!(counts["verified"], 12, "{counts}");
    assert_eq!(counts["rejected"], 7, "{counts}");
    assert_eq!(counts["skipped"], 2, "the future and the long ad: {counts}");
    assert_eq!(counts["workers"], 1, "only the genuine ad: {counts}");
    let text = browser_text(&browser).await;
    for absent in [
        "FORGED-WORKER",
        "TAMPERED-WORKER",
        "FUTURE-WORKER",
        "LONG-WORKER",
        "STRANGER",
        "an output the page must not show",
        "not the answer",
    ] {
        assert!(!text.contains(absent), "{absent} shown:\n{text}");
    }
    // Markup in events is shown as the text it is, never parsed.
    for shown in [EVIL_NAME, EVIL_MODEL, EVIL_JOB_MODEL, "\"><b>bold</b>"] {
        assert!(text.contains(shown), "{shown} not shown as text:\n{text}");
    }
    let dom = browser
        .eval(
            "return {
               pwned: window.__pwned === undefined ? null : window.__pwned,
               injected: document.querySelectorAll('main img, main script, main b, #jobs svg').length,
               scripts: document.scripts.length,
             }",
            json!([]),
        )
        .await;
    assert_eq!(
        dom,
        json!({"pwned": null, "injected": 0, "scripts": 1}),
        "nothing an event says runs"
    );
    // The job: the worker whose metering names its result answered it, whatever strangers say.
    let job = browser
        .eval(
            "return [...document.querySelectorAll('#jobs tbody tr td')].map(td => td.innerText)",
            json!([]),
        )
        .await;
    let cells: Vec<&str> = job
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells.len(), 8, "one job: {cells:?}");
    assert_eq!(cells[3], "success", "{cells:?}");
    assert!(cells[4].starts_with(EVIL_NAME), "{cells:?}");
    assert_eq!(cells[5], "120 ms", "{cells:?}");
    assert_eq!(cells[6], "3 / 4", "{cells:?}");
    assert_eq!(cells[7], "5,000\nsigned metering", "{cells:?}");
    // Money, cell by cell: one row (the stranger's made-up metering and receipt count for
    // nobody); metered 5,000; two receipts from the customer, one whose preimage does not open
    // its hash; 5,000 paid.
    let money = browser
        .eval(
            "return [...document.querySelectorAll('#money tbody tr')]
               .map(tr => [...tr.cells].map(td => td.innerText))",
            json!([]),
        )
        .await;
    let rows = money.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{money}");
    let row: Vec<&str> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(row[0].starts_with(EVIL_NAME), "{row:?}");
    assert_eq!(row[1], "5,000\n1 jobs", "{row:?}");
    assert_eq!(row[2], "2\n1 without a valid preimage", "{row:?}");
    assert_eq!(row[3], "5,000", "{row:?}");
    let trust = browser
        .eval(
            "return document.querySelector('#workers tbody tr .trust').innerText",
            json!([]),
        )
        .await;
    assert_eq!(
        trust, "100%\n1 delivered, 0 failed",
        "a stranger's error is not the worker's"
    );
    // An alert() from an event would have failed every WebDriver command above; close cleanly.
    browser.close().await;
}

/// Without a browser: who gets the page, who does not, what it is served with, and that
/// WebSockets and NIP-11 on `/` are as before.
#[tokio::test]
async fn the_relay_serves_the_dashboard_to_browsers_only_and_can_turn_it_off() {
    let relay = RelayProc::start(&["--memory"]);
    let (status, body) = relay.http_get("/", "text/html").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("<title>fed_AI market</title>"), "{body}");
    let (_, nip11) = relay.http_get("/", "application/nostr+json").await;
    assert!(nip11.starts_with('{'), "NIP-11 unchanged: {nip11}");
    let (_, plain) = relay.http_get("/", "*/*").await;
    assert!(plain.starts_with("fedai-relay:"), "{plain}");
    let (status, js) = relay.http_get("/dashboard/app.js", "*/*").await;
    assert!(
        status.contains("200") && js.contains("verifyEvent"),
        "{status}"
    );
    for path in [
        "/dashboard/",
        "/dashboard/nope.js",
        "/dashboard/../Cargo.toml",
        "/dashboard/vendor/README.md",
    ] {
        let (status, _) = relay.http_get(path, "*/*").await;
        assert!(status.contains("404"), "{path}: {status}");
    }
    let (head, _) = fedai_tests::http_get_head(&relay.addr, "/", "text/html").await;
    let head = head.to_ascii_lowercase();
    for want in [
        "content-type: text/html",
        "content-security-policy: default-src 'none'; script-src 'self'",
        "x-content-type-options: nosniff",
        "vary: accept",
    ] {
        assert!(head.contains(want), "{want} in {head}");
    }
    let (head, _) = fedai_tests::http_get_head(&relay.addr, "/dashboard/app.js", "*/*").await;
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/javascript"),
        "{head}"
    );
    // A browser's WebSocket to `/` (it may send Accept: text/html) still upgrades.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = relay.url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("accept", "text/html,*/*".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(json!(["REQ", "x", {"limit": 1}]).to_string().into())
        .await
        .unwrap();
    let eose = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(eose.to_text().unwrap().contains("EOSE"), "{eose}");

    let off = RelayProc::start(&["--memory", "--no-dashboard"]);
    let (_, body) = off.http_get("/", "text/html").await;
    assert!(body.starts_with("fedai-relay:"), "{body}");
    let (status, _) = off.http_get("/dashboard/app.js", "*/*").await;
    assert!(status.contains("404"), "{status}");
}
