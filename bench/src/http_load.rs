//! `mailspool-bench http --port P --token T [--clients N] [--messages M] [--batch B]
//! [--raw]` posts M 4 KB messages to `POST /v1/messages` (B = 1) or
//! `/v1/messages/batch` (B messages a request) over N keep-alive clients, and prints
//! `seconds requests`; every message must come back accepted.
//!
//! `mailspool-bench http-get --url U [--token T] [--times K]` fetches U K times on one
//! connection and prints `mean_ms max_ms bytes` (a scrape or a queue page).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::flag;

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build(),
    )
}

fn body_text() -> String {
    let mut text = String::new();
    while text.len() < 4000 {
        text.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    text
}

pub(crate) fn post() {
    let port: u16 = flag("--port").expect("--port").parse().unwrap();
    let token = flag("--token").expect("--token");
    let clients: usize = flag("--clients").map_or(20, |s| s.parse().unwrap());
    let messages: usize = flag("--messages").map_or(1000, |s| s.parse().unwrap());
    let batch: usize = flag("--batch").map_or(1, |s| s.parse().unwrap());
    let raw = std::env::args().any(|a| a == "--raw");
    let text = body_text();
    let one = serde_json::json!({
        "from": "load@example.com", "to": ["rcpt@example.test"],
        "subject": "load", "text": text,
    });
    let raw_message =
        format!("From: load@example.com\r\nTo: rcpt@example.test\r\nSubject: load\r\n\r\n{text}");
    let next = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let auth = format!("Bearer {token}");
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            let (next, requests, auth, one, raw_message) =
                (next.clone(), requests.clone(), &auth, &one, &raw_message);
            s.spawn(move || {
                let agent = agent();
                loop {
                    let first = next.fetch_add(batch, Relaxed);
                    if first >= messages {
                        return;
                    }
                    let n = batch.min(messages - first);
                    let (url, ct, body, want) = if batch == 1 && raw {
                        (
                            format!("http://127.0.0.1:{port}/v1/messages"),
                            "message/rfc822",
                            raw_message.clone().into_bytes(),
                            202,
                        )
                    } else if batch == 1 {
                        (
                            format!("http://127.0.0.1:{port}/v1/messages"),
                            "application/json",
                            one.to_string().into_bytes(),
                            202,
                        )
                    } else {
                        let msgs: Vec<&serde_json::Value> = std::iter::repeat_n(one, n).collect();
                        (
                            format!("http://127.0.0.1:{port}/v1/messages/batch"),
                            "application/json",
                            serde_json::json!({ "messages": msgs })
                                .to_string()
                                .into_bytes(),
                            200,
                        )
                    };
                    let mut r = agent
                        .post(&url)
                        .header("Authorization", auth)
                        .header("Content-Type", ct)
                        .send(&body[..])
                        .expect("request");
                    let status = r.status().as_u16();
                    let reply = r.body_mut().read_to_string().unwrap_or_default();
                    assert_eq!(status, want, "{reply}");
                    if batch > 1 {
                        assert!(reply.contains(&format!("\"accepted\":{n},")), "{reply}");
                    }
                    requests.fetch_add(1, Relaxed);
                }
            });
        }
    });
    println!(
        "{:.3} {}",
        start.elapsed().as_secs_f64(),
        requests.load(Relaxed)
    );
}

pub(crate) fn get() {
    let url = flag("--url").expect("--url");
    let token = flag("--token");
    let times: usize = flag("--times").map_or(20, |s| s.parse().unwrap());
    let agent = agent();
    let (mut total, mut max, mut bytes) = (Duration::ZERO, Duration::ZERO, 0);
    for _ in 0..times {
        let mut req = agent.get(&url);
        if let Some(t) = &token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let t0 = Instant::now();
        let mut r = req.call().expect("request");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        let took = t0.elapsed();
        assert_eq!(status, 200, "{body}");
        total += took;
        max = max.max(took);
        bytes = body.len();
    }
    println!(
        "{:.2} {:.2} {bytes}",
        total.as_secs_f64() * 1000.0 / times as f64,
        max.as_secs_f64() * 1000.0
    );
}
