//! The HTTP API end to end: a real server on 127.0.0.1:0 over a temporary spool, driven
//! by a real HTTP client (ureq). Every endpoint, every authentication failure, bad and
//! oversized bodies (a clear 4xx and nothing queued), idempotent retries.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mailspool::http::tokens::{Scope, Tokens};
use mailspool::{Config, Mailspool};
use serde_json::{Value, json};

struct Api {
    base: String,
    addr: std::net::SocketAddr,
    admin: String,
    read: String,
    inject: String,
    expired: String,
    dir: tempfile::TempDir,
    agent: ureq::Agent,
    _rt: tokio::runtime::Runtime,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn start_with(tune: impl FnOnce(&mut mailspool::HttpConfig)) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let tokens_file = dir.path().join("tokens");
    let mut tokens = Tokens::load(&tokens_file).unwrap();
    let admin = tokens.add("ops", Scope::Admin, None).unwrap();
    let read = tokens.add("grafana", Scope::Read, None).unwrap();
    let inject = tokens.add("app", Scope::Inject, None).unwrap();
    let expired = tokens.add("old", Scope::Admin, Some(1)).unwrap();
    tokens.save(None).unwrap();
    let mut http = mailspool::HttpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        serve_listen: None,
        tokens_file,
        tls: None,
        max_body_size: 256 * 1024,
        request_timeout: Duration::from_secs(5),
        max_connections: 64,
        metrics_interval: Duration::from_secs(1),
    };
    tune(&mut http);
    let config = Config {
        spool_dir: dir.path().join("spool"),
        max_message_size: 128 * 1024,
        hostname: "mx.example.test".into(),
        http: Some(http.clone()),
        ..Config::default()
    };
    let ms = Arc::new(Mailspool::open(config).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bound = rt
        .block_on(mailspool::http::bind(ms, http.clone(), http.listen))
        .unwrap();
    let addr = bound.local_addr();
    rt.spawn(bound.run(std::future::pending()));
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    Api {
        base: format!("http://{addr}"),
        addr,
        admin,
        read,
        inject,
        expired,
        dir,
        agent,
        _rt: rt,
    }
}

fn start() -> Api {
    start_with(|_| {})
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut r = r.expect("request");
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

impl Api {
    fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        reply(req.call())
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Reply {
        let uri = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" => self.agent.post(uri),
            "PUT" => self.agent.put(uri),
            _ => panic!("{method}"),
        }
        .header("Content-Type", content_type);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        reply(req.send(body))
    }

    fn post_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(
            "POST",
            path,
            Some(token),
            "application/json",
            body.to_string().as_bytes(),
            &[],
        )
    }

    fn delete(&self, path: &str, token: &str) -> Reply {
        reply(
            self.agent
                .delete(format!("{}{path}", self.base))
                .header("Authorization", format!("Bearer {token}"))
                .call(),
        )
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Every node file in the tiers and hold/.
    fn nodes(&self) -> Vec<PathBuf> {
        support::node_files(&self.spool())
    }
}

fn message(to: &str) -> Value {
    json!({"from": "App <app@example.com>", "to": [to], "subject": "hello", "text": "hi"})
}

#[test]
fn health_and_metrics_need_no_token_everything_else_does() {
    let api = start();
    let h = api.get("/healthz", None);
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let m = api.get("/metrics", None);
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        m.body
            .contains("# TYPE mailspool_messages_accepted_total counter")
    );
    for path in ["/v1/queue", "/v1/summary", "/v1/usage", "/v1/queue/x"] {
        let r = api.get(path, None);
        assert_eq!((r.status, r.code()), (401, "unauthorized".into()), "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"mailspool\"")
        );
    }
    let r = api.send("POST", "/v1/messages", None, "application/json", b"{}", &[]);
    assert_eq!(r.status, 401);
    assert!(api.nodes().is_empty());
    // Unknown paths and methods answer JSON too.
    let r = api.get("/v2/nothing", Some(&api.admin));
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    let r = api.send(
        "PUT",
        "/v1/summary",
        Some(&api.admin),
        "application/json",
        b"{}",
        &[],
    );
    assert_eq!((r.status, r.code()), (405, "method_not_allowed".into()));
}

#[test]
fn each_authentication_failure_is_refused_and_counted() {
    let api = start();
    // Unknown token, a malformed header, an expired token: 401.
    let r = api.get("/v1/summary", Some("mst_not-a-token"));
    assert_eq!((r.status, r.code()), (401, "unauthorized".into()));
    let r = reply(
        api.agent
            .get(format!("{}/v1/summary", api.base))
            .header("Authorization", format!("Basic {}", api.admin))
            .call(),
    );
    assert_eq!(r.status, 401);
    let r = api.get("/v1/summary", Some(&api.expired));
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let r = api.get("/v1/summary", Some(&"x".repeat(5000)));
    assert_eq!(r.status, 401);
    // The wrong scope: 403, nothing done.
    let r = api.post_json("/v1/messages", &api.read, &message("bob@example.org"));
    assert_eq!((r.status, r.code()), (403, "forbidden".into()));
    let r = api.get("/v1/queue", Some(&api.inject));
    assert_eq!(r.status, 403);
    let r = api.post_json("/v1/queue/bulk/hold", &api.read, &json!({"older_than": 0}));
    assert_eq!(r.status, 403);
    assert!(api.nodes().is_empty());
    // The right ones pass.
    assert_eq!(api.get("/v1/summary", Some(&api.read)).status, 200);
    assert_eq!(api.get("/v1/summary", Some(&api.admin)).status, 200);
    let m = api.get("/metrics", None).body;
    for (reason, n) in [
        ("unknown", 2),
        ("malformed", 1),
        ("expired", 1),
        ("scope", 3),
        ("missing", 0),
    ] {
        assert!(
            m.contains(&format!(
                "mailspool_http_auth_failures_total{{reason=\"{reason}\"}} {n}\n"
            )),
            "{reason}: {m}"
        );
    }
}

#[test]
fn a_removed_token_stops_working_without_a_restart() {
    let api = start();
    assert_eq!(api.get("/v1/summary", Some(&api.read)).status, 200);
    let path = api.dir.path().join("tokens");
    let mut t = Tokens::load(&path).unwrap();
    assert!(t.remove("grafana"));
    // A different mtime and size even within the same second.
    t.save(None).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(api.get("/v1/summary", Some(&api.read)).status, 401);
    assert_eq!(api.get("/v1/summary", Some(&api.admin)).status, 200);
}

#[test]
fn json_injection_builds_mime_commits_and_keeps_bcc_out_of_the_message() {
    let api = start();
    let r = api.post_json(
        "/v1/messages",
        &api.inject,
        &json!({
            "from": "Shop <shop@example.com>",
            "to": ["Bob <bob@example.org>"],
            "cc": ["carol@example.net"],
            "bcc": ["audit@example.com"],
            "subject": "Your order",
            "text": "Thanks!",
            "html": "<p>Thanks!</p>",
            "headers": {"X-Order": "1234"},
            "attachments": [{"name": "receipt.bin", "content_type": "application/octet-stream", "content_base64": "AAEC/w=="}]
        }),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(v["from"], "shop@example.com");
    let mut rcpts: Vec<&str> = v["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["audit@example.com", "bob@example.org", "carol@example.net"]
    );
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    // On disk when the 202 came: one node per recipient, one stored message.
    let nodes = api.nodes();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.to_str().unwrap().contains(&id)));
    let text = std::fs::read_to_string(&nodes[0]).unwrap();
    assert!(!text.to_ascii_lowercase().contains("bcc"), "{text}");
    assert!(!text.contains("audit@example.com"), "{text}");
    for want in [
        "Subject: Your order",
        "X-Order: 1234",
        "multipart/mixed",
        "text/html",
        "receipt.bin",
        "AAEC/w==",
        "Received: by mx.example.test (mailspool",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[test]
fn raw_injection_takes_the_envelope_from_the_query_the_headers_or_the_message() {
    let api = start();
    let msg = b"From: a@example.com\r\nTo: header@example.org\r\nSubject: raw\r\n\r\nbody\r\n";
    let r = api.send(
        "POST",
        "/v1/messages?from=bounces%40example.com&to=q1%40example.org&to=q2%40example.org",
        Some(&api.inject),
        "message/rfc822",
        msg,
        &[],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["from"], "bounces@example.com");
    assert_eq!(
        r.json()["recipients"],
        json!(["q1@example.org", "q2@example.org"])
    );
    let r = api.send(
        "POST",
        "/v1/messages",
        Some(&api.inject),
        "message/rfc822",
        msg,
        &[
            ("Mailspool-To", "h1@example.org, h2@example.org"),
            ("Mailspool-From", ""),
        ],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["from"], "");
    assert_eq!(
        r.json()["recipients"],
        json!(["h1@example.org", "h2@example.org"])
    );
    let r = api.send(
        "POST",
        "/v1/messages",
        Some(&api.inject),
        "message/rfc822",
        msg,
        &[],
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["recipients"], json!(["header@example.org"]));
    assert_eq!(api.nodes().len(), 5);
}

#[test]
fn bad_bodies_get_a_clear_4xx_and_queue_nothing() {
    let api = start();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("application/json", b"{not json".to_vec(), 400, "bad_json"),
        ("application/json", br#"{"from":"a@example.com","to":["b@example.org"],"text":"x","colour":"red"}"#.to_vec(), 400, "bad_json"),
        ("application/json", br#"{"from":"a@example.com","to":["b@example.org"],"subject":"x\r\nBcc: evil@example.com","text":"x"}"#.to_vec(), 400, "bad_header"),
        ("application/json", br#"{"from":"a@example.com","to":["b@example.org"],"text":"x","headers":{"X-A":"1\r\nBcc: evil@example.com"}}"#.to_vec(), 400, "bad_header"),
        ("application/json", br#"{"from":"a@example.com","to":["b@example.org"],"text":"x","headers":{"To":"evil@example.com"}}"#.to_vec(), 400, "bad_header"),
        ("application/json", br#"{"from":"a@example.com","to":["not an address"],"text":"x"}"#.to_vec(), 400, "bad_address"),
        ("application/json", br#"{"from":"a@example.com","to":[],"text":"x"}"#.to_vec(), 400, "no_recipients"),
        ("application/json", br#"{"from":"a@example.com","to":["b@example.org"],"text":"x","attachments":[{"name":"a","content_base64":"!!"}]}"#.to_vec(), 400, "bad_attachment"),
        ("text/plain", b"hello".to_vec(), 415, "unsupported_media_type"),
        ("message/rfc822", b"Subject: no recipients\r\n\r\nx\r\n".to_vec(), 400, "no_recipients"),
        // Over max_body_size (256 KiB).
        ("message/rfc822", vec![b'x'; 300 * 1024], 413, "too_large"),
        // Under max_body_size but over max_message_size (128 KiB).
        ("message/rfc822", [b"To: b@example.org\r\n\r\n".to_vec(), vec![b'x'; 200 * 1024]].concat(), 413, "too_large"),
    ];
    for (ct, body, status, code) in cases {
        let r = api.send("POST", "/v1/messages", Some(&api.inject), ct, &body, &[]);
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_owned()),
            "{ct} {}",
            r.body
        );
    }
    assert!(api.nodes().is_empty(), "{:?}", api.nodes());
    // Nothing half-written either.
    let tmp = api.spool().join("tmp");
    let left = std::fs::read_dir(&tmp).map_or(0, |d| d.count());
    assert_eq!(left, 0);
}

#[test]
fn a_body_that_stops_arriving_times_out() {
    let api = start_with(|h| h.request_timeout = Duration::from_secs(1));
    let mut s = std::net::TcpStream::connect(api.addr).unwrap();
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: message/rfc822\r\nContent-Length: 1000\r\n\r\nTo: b@example.org\r\n",
        api.inject
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(api.nodes().is_empty());
}

#[test]
fn batches_commit_each_message_and_report_each_result() {
    let api = start();
    let r = api.post_json(
        "/v1/messages/batch",
        &api.inject,
        &json!({"messages": [
            message("one@example.org"),
            {"from": "a@example.com", "to": ["bad address"], "text": "x"},
            {"raw": "From: r@example.com\r\nSubject: raw\r\n\r\nraw body\r\n", "to": ["three@example.org"]},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[0]["recipients"], json!(["one@example.org"]));
    assert_eq!(results[1]["status"], 400);
    assert_eq!(results[1]["error"]["code"], "bad_address");
    assert_eq!(results[2]["status"], 202);
    assert_eq!(results[2]["from"], "r@example.com");
    assert_eq!(api.nodes().len(), 2);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| message(&format!("u{i}@example.org")))
        .collect();
    let r = api.post_json(
        "/v1/messages/batch",
        &api.inject,
        &json!({"messages": too_many}),
    );
    // Over the body limit or the count limit: either way a 413, nothing queued.
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(api.nodes().len(), 2);
}

#[test]
fn a_batch_of_a_thousand_is_accepted() {
    let api = start_with(|h| h.max_body_size = 1 << 20);
    let batch: Vec<Value> = (0..1000)
        .map(|i| message(&format!("u{i}@example.org")))
        .collect();
    let r = api.post_json(
        "/v1/messages/batch",
        &api.inject,
        &json!({"messages": batch}),
    );
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(500)]);
    assert_eq!(r.json()["accepted"], 1000);
    assert_eq!(api.nodes().len(), 1000);
}

#[test]
fn an_idempotent_retry_returns_the_first_result_and_queues_once() {
    let api = start();
    let body = message("once@example.org").to_string();
    let post = |key: &str, body: &str| {
        api.send(
            "POST",
            "/v1/messages",
            Some(&api.inject),
            "application/json",
            body.as_bytes(),
            &[("Idempotency-Key", key)],
        )
    };
    let first = post("order-1234", &body);
    assert_eq!(first.status, 202);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = post("order-1234", &body);
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.json()["id"], again.json()["id"]);
    assert_eq!(api.nodes().len(), 1);
    // The same key with another body is a client bug.
    let other = post("order-1234", &message("twice@example.org").to_string());
    assert_eq!(
        (other.status, other.code()),
        (422, "idempotency_key_reused".into())
    );
    // Another key queues again; keys are per token.
    assert_eq!(post("order-1235", &body).status, 202);
    assert_eq!(api.nodes().len(), 2);
    let admin = api.send(
        "POST",
        "/v1/messages",
        Some(&api.admin),
        "application/json",
        body.as_bytes(),
        &[("Idempotency-Key", "order-1234")],
    );
    assert_eq!(admin.header("idempotent-replayed"), None);
    assert_eq!(api.nodes().len(), 3);
    // Concurrent retries with one key still queue once.
    let body = message("race@example.org").to_string();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert_eq!(post("race", &body).status, 202));
        }
    });
    assert_eq!(api.nodes().len(), 4);
}

#[test]
fn the_queue_pages_by_cursor_and_filters() {
    let api = start();
    for i in 0..23 {
        let domain = if i % 2 == 0 {
            "even.example"
        } else {
            "odd.example"
        };
        let r = api.post_json(
            "/v1/messages",
            &api.inject,
            &message(&format!("u{i}@{domain}")),
        );
        assert_eq!(r.status, 202);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/queue?limit=5&cursor={c}"),
            None => "/v1/queue?limit=5".into(),
        };
        let v = api.get(&path, Some(&api.read)).json();
        pages += 1;
        let nodes = v["nodes"].as_array().unwrap();
        assert!(nodes.len() <= 5);
        for n in nodes {
            assert!(
                seen.insert(n["node"].as_str().unwrap().to_owned()),
                "listed twice"
            );
            assert_eq!(n["tier"], 0);
            assert_eq!(n["from"], "app@example.com");
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 20);
    }
    assert_eq!(seen.len(), 23);
    let v = api
        .get("/v1/queue?domain=EVEN.example&limit=100", Some(&api.read))
        .json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 12);
    let v = api
        .get("/v1/queue?recipient=u3%40odd.example", Some(&api.read))
        .json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1);
    let v = api
        .get("/v1/queue?sender=nobody%40example.com", Some(&api.read))
        .json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 0);
    let v = api.get("/v1/queue?older_than=3600", Some(&api.read)).json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 0);
    let v = api
        .get("/v1/queue?tier=0&held=false", Some(&api.read))
        .json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 23);
    for bad in [
        "/v1/queue?limit=0",
        "/v1/queue?limit=5000",
        "/v1/queue?cursor=zz",
        "/v1/queue?colour=red",
        "/v1/queue?tier=x",
    ] {
        assert_eq!(api.get(bad, Some(&api.read)).status, 400, "{bad}");
    }
}

#[test]
fn show_hold_release_retry_delete_and_their_bulk_forms() {
    let api = start();
    let r = api.post_json(
        "/v1/messages",
        &api.inject,
        &json!({"from": "a@example.com", "to": ["x@one.example", "y@two.example"], "subject": "s", "text": "t"}),
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let show = api.get(&format!("/v1/queue/{id}"), Some(&api.read));
    assert_eq!(show.status, 200, "{}", show.body);
    let d = show.json();
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["from"], "a@example.com");
    assert_eq!(d["nodes"].as_array().unwrap().len(), 2);
    assert!(
        d["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "Subject: s")
    );
    assert_eq!(api.get("/v1/queue/NOSUCHID", Some(&api.read)).status, 404);

    // A read token cannot change anything.
    assert_eq!(
        api.post_json(&format!("/v1/queue/{id}/hold"), &api.read, &json!({}))
            .status,
        403
    );
    let held = api.send(
        "POST",
        &format!("/v1/queue/{id}/hold?to=y%40two.example"),
        Some(&api.admin),
        "application/json",
        b"",
        &[],
    );
    assert_eq!(held.status, 200, "{}", held.body);
    assert_eq!(
        (
            held.json()["matched"].as_u64(),
            held.json()["changed"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let v = api.get("/v1/queue?held=true", Some(&api.read)).json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(v["nodes"][0]["to"], "y@two.example");
    assert!(api.spool().join("hold/0").read_dir().unwrap().count() == 1);

    let released = api.send(
        "POST",
        &format!("/v1/queue/{id}/release"),
        Some(&api.admin),
        "application/json",
        b"",
        &[],
    );
    assert_eq!(released.status, 200);
    assert_eq!(
        api.get("/v1/queue?held=true", Some(&api.read)).json()["nodes"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let retried = api.send(
        "POST",
        &format!("/v1/queue/{id}/retry"),
        Some(&api.admin),
        "application/json",
        b"",
        &[],
    );
    assert_eq!(retried.status, 200);
    assert_eq!(retried.json()["changed"], 2);
    let nope = api.send(
        "POST",
        &format!("/v1/queue/{id}/explode"),
        Some(&api.admin),
        "application/json",
        b"",
        &[],
    );
    assert_eq!(nope.status, 404);

    // Bulk: a filter is required; then it applies to what matches.
    for i in 0..4 {
        api.post_json(
            "/v1/messages",
            &api.inject,
            &message(&format!("b{i}@bulk.example")),
        );
    }
    let r = api.post_json("/v1/queue/bulk/hold", &api.admin, &json!({}));
    assert_eq!((r.status, r.code()), (400, "empty_filter".into()));
    let r = api.post_json(
        "/v1/queue/bulk/hold",
        &api.admin,
        &json!({"domain": "bulk.example"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], 4);
    let s = api.get("/v1/summary", Some(&api.read)).json();
    assert_eq!(
        (
            s["nodes"].as_u64(),
            s["held"].as_u64(),
            s["messages"].as_u64()
        ),
        (Some(6), Some(4), Some(5))
    );
    let r = api.post_json(
        "/v1/queue/bulk/delete",
        &api.admin,
        &json!({"domain": "bulk.example", "held": true}),
    );
    assert_eq!(r.json()["changed"], 4);
    let del = api.delete(&format!("/v1/queue/{id}"), &api.admin);
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["changed"], 2);
    assert!(api.nodes().is_empty(), "{:?}", api.nodes());
    assert_eq!(api.get("/v1/summary", Some(&api.read)).json()["nodes"], 0);
}

#[test]
fn usage_and_metrics_follow_the_spool() {
    let api = start();
    for i in 0..3 {
        api.post_json(
            "/v1/messages",
            &api.inject,
            &message(&format!("m{i}@metrics.example")),
        );
    }
    let u = api.get("/v1/usage?days=2", Some(&api.read));
    assert_eq!(u.status, 200, "{}", u.body);
    assert!(u.json()["days"].is_array());
    assert_eq!(api.get("/v1/usage?days=0", Some(&api.read)).status, 400);
    // The sampler counts the spool every second; a scrape reads its last count.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = api.get("/metrics", None).body;
        if m.contains("mailspool_queue_nodes{tier=\"0\",held=\"false\"} 3")
            && m.contains("mailspool_queue_domain_nodes{domain=\"metrics.example\"} 3")
        {
            assert!(
                m.contains("mailspool_messages_accepted_total{source=\"http\"} 3"),
                "{m}"
            );
            assert!(m.contains("mailspool_spool_disk_free_bytes "));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_dashboard_session_is_only_for_the_dashboard_and_its_forms_need_their_token() {
    let api = start();
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    );
    let form = |token: &str| {
        reply(
            agent
                .post(format!("{}/login", api.base))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(format!("token={token}").as_bytes()),
        )
    };
    // Not signed in: the login form, with a strict CSP.
    let page = api.get("/", None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"token\""));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    // An inject token or a bad one cannot sign in.
    assert_eq!(form(&api.inject).status, 401);
    assert_eq!(form("mst_nope").status, 401);
    assert_eq!(form(&api.expired).status, 401);
    let ok = form(&api.admin);
    assert_eq!(ok.status, 303);
    let cookie = ok.header("set-cookie").unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = |method: &str, path: &str, body: &str| {
        let uri = format!("{}{path}", api.base);
        let req = match method {
            "GET" => return reply(agent.get(uri).header("Cookie", &session).call()),
            _ => agent.post(uri),
        };
        reply(
            req.header("Cookie", &session)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(body.as_bytes()),
        )
    };
    // A message whose last reply tries to inject markup.
    let r = api.post_json("/v1/messages", &api.inject, &message("victim@example.org"));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let spool = mailspool_spool::Spool::open(api.spool(), Default::default()).unwrap();
    let node = mailspool_spool::NodeName::new(0, &id, "victim@example.org", "app@example.com");
    spool
        .record_attempt(
            &node,
            &mailspool_spool::side::Attempt {
                time: 1,
                host: "mx".into(),
                reply: "451 <script>alert(1)</script>".into(),
                delivered: false,
            },
        )
        .unwrap();
    let page = with_cookie("GET", "/?q=victim%40example.org", "");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("signed in as ops (admin)"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("451 &lt;script&gt;alert(1)&lt;/script&gt;")
    );
    assert!(!page.body.contains("<script>alert"));
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_owned();
    // The cookie is not an API credential.
    let r = with_cookie("POST", &format!("/v1/queue/{id}/delete"), "");
    assert_eq!(r.status, 401);
    assert_eq!(api.get("/v1/summary", None).status, 401);
    // A form without the session's anti-forgery token changes nothing.
    let r = with_cookie(
        "POST",
        "/ui/action",
        &format!("csrf=forged&action=delete&id={id}"),
    );
    assert_eq!(r.status, 403);
    assert_eq!(api.nodes().len(), 1);
    // With it, the change is made.
    let r = with_cookie(
        "POST",
        "/ui/action",
        &format!("csrf={csrf}&action=hold&id={id}"),
    );
    assert_eq!(r.status, 303);
    assert!(r.header("location").unwrap().contains("done="));
    assert!(api.nodes()[0].to_string_lossy().contains("/hold/"));
    // Signed out: the session is gone.
    assert_eq!(with_cookie("POST", "/logout", "").status, 303);
    let page = with_cookie("GET", "/", "");
    assert!(page.body.contains("name=\"token\""));
    assert_eq!(
        with_cookie(
            "POST",
            "/ui/action",
            &format!("csrf={csrf}&action=release&id={id}")
        )
        .status,
        401
    );
}

#[test]
fn https_when_a_certificate_is_configured() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let api = start_with(|h| h.tls = Some((cert_path.clone(), key_path.clone())));
    // Plain HTTP to the HTTPS port gets no answer a client could take for one.
    let mut plain = std::net::TcpStream::connect(api.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // TLS with the certificate trusted: the API answers.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let body = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(api.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        out
    });
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.ends_with("ok\n"), "{body}");
}
