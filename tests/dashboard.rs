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
    for want in ["tiny", "llama-cpp", "CPU", "0/"] {
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

    // A job through the market appears in the feed with its signed metering.
    let done = c
        .submit(tiny_job("a job the dashboard shows", 8), false, T, |_| {})
        .await
        .unwrap();
    let (m, _) = done.metering.as_ref().expect("metering");
    let short = done.request.id.to_hex()[..10].to_owned();
    let job = browser
        .wait_for(
            "the job in the feed",
            &format!(
                "const r = [...document.querySelectorAll('#jobs tbody tr')]
                   .find(r => r.innerText.includes('{short}'));
                 return r && r.innerText.includes('signed metering') ? r.innerText : null"
            ),
            T,
        )
        .await;
    let job = job.as_str().unwrap();
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
        stats["trust"].as_str().unwrap().starts_with("100%"),
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
    let ev = EventBuilder::new(Kind::from_u16(kind), content)
        .tags(tags.into_iter().map(|t| Tag::parse(t).unwrap()))
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
    // A valid event too big to be worth parsing.
    let huge = signed(
        &customer,
        5050,
        &"x".repeat(300_000),
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
    let receipt = |amount: &str, pre: &str| {
        signed(
            &customer,
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
    let paid = receipt("5000", &hex::encode(preimage));
    let unproven = receipt("7000", &hex::encode([8u8; 32]));
    let mut frames: Vec<String> = [
        &evil, &forged, &tampered, &huge, &request, &result, &metering, &paid, &unproven,
    ]
    .iter()
    .map(|e| event_frame(e))
    .collect();
    // Not JSON at all, and a frame of the wrong shape.
    frames.push("<script>window.__pwned=3</script>".into());
    frames.push(json!(["EVENT", "{sub}", "not an event"]).to_string());
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
               && s.verified >= 6 && s.rejected >= 5 ? s : null",
            T,
        )
        .await;
    assert_eq!(counts["error"], Value::Null, "{counts}");
    assert_eq!(counts["verified"], 6, "{counts}");
    assert_eq!(counts["rejected"], 5, "{counts}");
    assert_eq!(counts["workers"], 1, "only the genuine ad: {counts}");
    let text = browser_text(&browser).await;
    for absent in [
        "FORGED-WORKER",
        "TAMPERED-WORKER",
        "an output the page must not show",
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
    // Money: the metered price, and one receipt proven by its preimage, one not.
    let money = browser
        .eval(
            "return document.querySelector('#money tbody').innerText",
            json!([]),
        )
        .await;
    let money = money.as_str().unwrap();
    assert!(money.contains("evil-worker"), "{money}");
    assert!(money.contains("5,000"), "{money}");
    assert!(money.contains("1 without a valid preimage"), "{money}");
    assert!(
        !money.contains("12,000"),
        "the unproven receipt is not counted: {money}"
    );
    // An alert() from an event would have failed every WebDriver command above; close cleanly.
    browser.close().await;
}

/// Without a browser: who gets the page, who does not, and what it is served with.
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
    let off = RelayProc::start(&["--memory", "--no-dashboard"]);
    let (_, body) = off.http_get("/", "text/html").await;
    assert!(body.starts_with("fedai-relay:"), "{body}");
    let (status, _) = off.http_get("/dashboard/app.js", "*/*").await;
    assert!(status.contains("404"), "{status}");
}
