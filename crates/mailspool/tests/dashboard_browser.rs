//! The dashboard in a real browser: Debian's Chromium, headless, driven through
//! chromedriver (WebDriver) by fantoccini. Real mail flows first (injected over HTTP,
//! delivered to an in-process SMTP sink that greylists one domain), so the page shows
//! real deliveries and deferrals. The test signs in with the keyboard, finds a deferred
//! message, holds it, releases it and retries it (accepting each confirmation), checks
//! the spool after each step, and saves a screenshot to docs/dashboard.png.
//!
//! Without chromedriver the test is skipped on a developer's machine; with CI=true it
//! fails instead (.ci/run installs chromium and chromium-driver).

#[path = "../../deliver/tests/common/mod.rs"]
mod common;
mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Script, Sink};
use fantoccini::{ClientBuilder, Locator};
use mailspool::http::tokens::{Scope, Tokens};
use mailspool::{Config, Mailspool};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_hold(spool: &std::path::Path) -> usize {
    support::node_files(spool)
        .iter()
        .filter(|p| p.to_string_lossy().contains("/hold/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sign_in_find_hold_release_retry_and_screenshot() {
    if !std::path::Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs chromium and chromium-driver (installed by .ci/run)"
        );
        eprintln!("skipped: {CHROMEDRIVER} not installed (apt install chromium chromium-driver)");
        return;
    }
    // A spool, a sink that greylists slow.example, tokens, the HTTP server.
    let dir = tempfile::tempdir().unwrap();
    let mut script = Script::default();
    for i in 0..4 {
        script.rcpt.insert(
            format!("user{i}@slow.example"),
            "451 4.7.1 Greylisted, please try again later".into(),
        );
    }
    let sink = Sink::start(script).await;
    let tokens_file = dir.path().join("tokens");
    let mut tokens = Tokens::load(&tokens_file).unwrap();
    let admin = tokens.add("ops-dashboard", Scope::Admin, None).unwrap();
    tokens.save(None).unwrap();
    let http = mailspool::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        serve_listen: None,
        tokens_file,
        tls: None,
        max_body_size: 1 << 20,
        request_timeout: Duration::from_secs(10),
        max_connections: 64,
        max_connections_per_ip: 64,
        metrics_interval: Duration::from_secs(1),
    };
    let config = Config {
        spool_dir: dir.path().join("spool"),
        hostname: "mail.example.com".into(),
        deliver: common::config(&[("shop.example", sink.addr), ("slow.example", sink.addr)]),
        http: Some(http.clone()),
        ..Config::default()
    };
    let ms = Arc::new(Mailspool::open(config).unwrap());
    let bound = mailspool::http::bind(ms.clone(), http.clone(), http.listen)
        .await
        .unwrap();
    let base = format!("http://{}", bound.local_addr());
    tokio::spawn(bound.run(std::future::pending()));

    // Real mail: 24 to shop.example (delivered), 4 to slow.example (deferred).
    let messages: Vec<serde_json::Value> = (0..24)
        .map(|i| format!("customer{i}@shop.example"))
        .chain((0..4).map(|i| format!("user{i}@slow.example")))
        .map(|to| serde_json::json!({"from": "Shop <orders@example.com>", "to": [to], "subject": "Your order", "text": "Thanks!"}))
        .collect();
    let body = serde_json::json!({"messages": messages}).to_string();
    let url = format!("{base}/v1/messages/batch");
    let admin_header = format!("Bearer {admin}");
    let posted = tokio::task::spawn_blocking(move || {
        let mut r = ureq::post(&url)
            .header("Authorization", &admin_header)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .unwrap();
        r.body_mut().read_to_string().unwrap()
    })
    .await
    .unwrap();
    assert!(posted.contains("\"accepted\":28"), "{posted}");
    let report = ms.run_queue(false).await.unwrap();
    assert_eq!(report.count(mailspool::Outcome::Delivered), 24);
    assert_eq!(report.count(mailspool::Outcome::Deferred), 4);
    let spool = dir.path().join("spool");
    // Let the sampler count the spool.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The browser.
    let port = support::free_port();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1500",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let mut client = None;
    for _ in 0..100 {
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        match builder
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let c = client.expect("chromedriver started a session");

    // Sign in with the keyboard only: the token field has the focus; Enter submits.
    c.goto(&base).await.unwrap();
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(&format!("{admin}\u{E007}")).await.unwrap();
    let text = text_once_it_says(&c, "#queue-total", "node(s) of").await;
    assert!(text.starts_with("4 node(s) of 4 message(s)"), "{text}");
    let page = c.source().await.unwrap();
    assert!(page.contains("signed in as ops-dashboard (admin)"));
    assert!(
        page.contains("Greylisted, please try again later"),
        "the last reply is shown"
    );
    assert!(page.contains("slow.example"));

    // Find the deferred message of user2 by its address.
    let search = c.find(Locator::Css("#q")).await.unwrap();
    search
        .send_keys("user2@slow.example\u{E007}")
        .await
        .unwrap();
    let row_text = text_once_it_says(&c, "#results tbody tr", "user2@slow.example").await;
    assert!(row_text.contains("user2@slow.example"), "{row_text}");
    let rows = c.find_all(Locator::Css("#results tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);

    // Hold, release, retry: each asks first, then says what it did.
    for (action, flash, held_after) in [
        ("hold", "held 1 of 1 node(s)", 1),
        ("release", "released 1 of 1 node(s)", 0),
        ("retry", "made due now 1 of 1 node(s)", 0),
    ] {
        let button = c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(&format!(
                "#results button[data-action={action}]"
            )))
            .await
            .unwrap();
        button.click().await.unwrap();
        c.accept_alert().await.unwrap();
        let said = text_once_it_says(&c, "#flash", flash).await;
        assert!(said.contains(flash), "{action}: {said}");
        assert_eq!(in_hold(&spool), held_after, "{action}");
        // The search is kept: the message is still in view.
        let rows = c.find_all(Locator::Css("#results tbody tr")).await.unwrap();
        assert_eq!(rows.len(), 1, "{action}");
    }
    // Retried: due now, back in tier 0? No: retry keeps the tier and makes it due.
    let queued = support::node_files(&spool);
    assert_eq!(queued.len(), 4);

    // A dismissed confirmation changes nothing.
    let hold = c
        .find(Locator::Css("#results button[data-action=hold]"))
        .await
        .unwrap();
    hold.click().await.unwrap();
    c.dismiss_alert().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(in_hold(&spool), 0);

    // The overview, for the docs, once the sampler has counted the spool as it is now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.goto(&base).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#queue-total"))
        .await
        .unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
    std::fs::write(&docs, &png).unwrap();

    // Readable on a phone: at 390 px wide nothing makes the page scroll sideways (the
    // tables scroll inside their own boxes).
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/?q=slow.example")).await.unwrap();
    let fits = fits_the_window(&c).await;
    assert_eq!(
        fits,
        serde_json::Value::Bool(true),
        "the page is wider than a phone"
    );
    // The message's own page, from its link: every attempt, and still a phone's width.
    c.find(Locator::Css("#results a.mono"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#envelope"))
        .await
        .unwrap();
    let attempts = c
        .find_all(Locator::Css("table.attempts tbody tr"))
        .await
        .unwrap();
    assert!(!attempts.is_empty(), "the deferred message's attempts");
    let fits = fits_the_window(&c).await;
    assert_eq!(
        fits,
        serde_json::Value::Bool(true),
        "the message page is wider than a phone"
    );

    // Its history: accepted over HTTP, then deferred by the greylisting.
    let kinds = event_types(&c).await;
    assert!(
        kinds.starts_with(&["accepted".to_owned(), "deferred".to_owned()]),
        "{kinds:?}"
    );

    // A delivered message is gone from the queue but not from the history: the search
    // finds its events, and its page says what happened.
    c.set_window_size(1280, 1500).await.unwrap();
    c.goto(&format!("{base}/?q=customer3%40shop.example"))
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#history"))
        .await
        .unwrap();
    assert!(
        c.find(Locator::Css("#no-results")).await.is_ok(),
        "nothing queued matches"
    );
    let delivered = c
        .find(Locator::Css("#events tr[data-type=delivered]"))
        .await
        .unwrap();
    let said = delivered.text().await.unwrap();
    assert!(
        said.contains("customer3@shop.example") && said.contains("250"),
        "{said}"
    );
    delivered
        .find(Locator::Css("a.mono"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#gone"))
        .await
        .unwrap();
    assert_eq!(event_types(&c).await, ["accepted", "delivered"]);

    // Signing out ends the session: the login form again.
    c.find(Locator::Css("header button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    c.close().await.unwrap();
    drop(sink);
}

/// The event types the page's history table shows, in order.
async fn event_types(c: &fantoccini::Client) -> Vec<String> {
    let mut out = Vec::new();
    for row in c.find_all(Locator::Css("#events tbody tr")).await.unwrap() {
        out.push(row.attr("data-type").await.unwrap().unwrap_or_default());
    }
    out
}

/// Whether nothing makes the page scroll sideways (tables scroll in their own boxes).
async fn fits_the_window(c: &fantoccini::Client) -> serde_json::Value {
    c.execute(
        "return document.documentElement.scrollWidth <= window.innerWidth + 1",
        vec![],
    )
    .await
    .unwrap()
}

/// The text of `css` once it contains `wanted`, or what it said last after 10 s. The page
/// redraws the element after an action, so one found a moment ago may be gone (a stale
/// reference): look again rather than fail on the redraw.
async fn text_once_it_says(c: &fantoccini::Client, css: &str, wanted: &str) -> String {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while std::time::Instant::now() < until {
        if let Ok(element) = c.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(wanted) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}
