//! Mail over HTTP: JSON and raw injection, batches, idempotent retries, and bad,
//! oversized or stalled bodies (a clear 4xx, nothing queued).

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};
use support::api::{self, message, start, start_with};

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
    // No Bcc field (the word alone may turn up in a random MIME boundary).
    let lower = text.to_ascii_lowercase();
    assert!(
        !lower.starts_with("bcc:") && !lower.contains("\nbcc:"),
        "{text}"
    );
    assert!(!text.contains("audit@example.com"), "{text}");
    for want in [
        "Subject: Your order",
        "X-Order: 1234",
        "multipart/mixed",
        "text/html",
        "receipt.bin",
        "AAEC/w==",
        // The submitter is the token, not the daemon's uid.
        "Received: by mx.example.test (mailspool, from HTTP API token app) id ",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    assert!(!text.contains("userid"), "{text}");
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
        // A bare CR, which `serve` refuses with 550: the same rule here.
        ("message/rfc822", b"To: b@example.org\r\n\r\nx\r.\rMAIL FROM:<e@x>\r\n".to_vec(), 400, "bad_message"),
        ("application/json", br#"{"to":["b@example.org"],"raw":"To: b@example.org\r\n\r\nx\ry\r\n"}"#.to_vec(), 400, "bad_message"),
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

/// An announced body over max_body_size is refused at once with 413, before any of it
/// is sent: no `100 Continue` to a client that asked, no wait for the request timeout.
#[test]
fn an_oversized_content_length_gets_413_at_once() {
    let api = start_with(|h| h.request_timeout = Duration::from_secs(30));
    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut s = std::net::TcpStream::connect(api.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: message/rfc822\r\nContent-Length: 999999999\r\n{expect}\r\n",
            api.inject
        )
        .unwrap();
        let t = std::time::Instant::now();
        let mut head = vec![0u8; 512];
        let n = s.read(&mut head).unwrap();
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 413"), "{expect:?}: {head}");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }
    assert!(api.nodes().is_empty());
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

/// Behind a load balancer a retry may reach another host: with a database spool the
/// first result is in the database, so it is replayed there too, and the same key
/// sent to two hosts at once queues once.
#[test]
fn an_idempotent_retry_to_another_host_of_a_database_spool_queues_once() {
    let Some(db) = mailspool_pg::testing::TestDb::new() else {
        return;
    };
    let a = api::start_on(Some(&db.url), None, |_| {});
    let b = api::start_on(Some(&db.url), Some(&a), |_| {});
    let body = message("once@example.org").to_string();
    let post = |api: &api::Api, key: &str| {
        api.send(
            "POST",
            "/v1/messages",
            Some(&api.inject),
            "application/json",
            body.as_bytes(),
            &[("Idempotency-Key", key)],
        )
    };
    let first = post(&a, "order-1");
    assert_eq!(first.status, 202);
    let again = post(&b, "order-1");
    assert_eq!(again.status, 202);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.json()["id"], again.json()["id"]);
    std::thread::scope(|s| {
        for i in 0..8 {
            let (post, api) = (&post, if i % 2 == 0 { &a } else { &b });
            s.spawn(move || assert_eq!(post(api, "race").status, 202));
        }
    });
    let url = db.url.clone();
    let queued: i64 = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                c.query_one("SELECT count(*) FROM mailspool_nodes", &[])
                    .await
                    .unwrap()
                    .get(0)
            })
    })
    .join()
    .unwrap();
    assert_eq!(queued, 2, "one message per key, whichever host took it");
}

#[test]
fn a_message_id_or_date_the_caller_gives_replaces_ours() {
    let api = start();
    let r = api.post_json(
        "/v1/messages",
        &api.inject,
        &json!({"from": "a@example.com", "to": ["b@example.org"], "text": "x",
                "headers": {"message-id": "<order-77@shop.example>", "DATE": "Fri, 27 Nov 2026 06:00:00 +0000"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let text = std::fs::read_to_string(&api.nodes()[0]).unwrap();
    let count = |name: &str| {
        text.lines()
            .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .count()
    };
    assert_eq!((count("message-id"), count("date")), (1, 1), "{text}");
    assert!(
        text.contains("Message-ID: <order-77@shop.example>"),
        "{text}"
    );
    assert!(
        text.contains("Date: Fri, 27 Nov 2026 06:00:00 +0000"),
        "{text}"
    );
}
