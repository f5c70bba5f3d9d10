//! The HTTP API end to end: a real server on 127.0.0.1:0 over a temporary spool, driven
//! by a real HTTP client (ureq). Authentication, the admin API, metrics, the dashboard's
//! session, HTTPS. Injection is in http_inject.rs.

mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use mailspool::http::tokens::Tokens;
use serde_json::json;
use support::api::{message, reply, start, start_with};

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
                node: None,
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
    assert_eq!(r.header("location"), Some("/"));
    // What it did is said once, on the next page, from the session (not the URL).
    let next = with_cookie("GET", "/", "");
    assert!(next.body.contains("held 1 of 1 node(s)"), "{}", next.body);
    assert!(!with_cookie("GET", "/", "").body.contains("held 1 of 1"));
    let crafted = with_cookie("GET", "/?done=Your+token+expired%2C+go+to+evil.example", "");
    assert!(!crafted.body.contains("evil.example"));
    assert!(api.nodes()[0].to_string_lossy().contains("/hold/"));
    // The message's own page: linked from the search, its envelope, each attempt with
    // its reply (escaped), its headers, and actions that come back to it.
    let found = with_cookie("GET", "/?q=victim%40example.org", "");
    assert!(
        found.body.contains(&format!("href=\"/ui/message/{id}\"")),
        "{}",
        found.body
    );
    let page = with_cookie("GET", &format!("/ui/message/{id}"), "");
    assert_eq!(page.status, 200, "{}", page.body);
    for want in [
        "&lt;app@example.com&gt;",
        "&lt;victim@example.org&gt;",
        "held",
        "1970-01-01 00:00:01",
        "451 &lt;script&gt;alert(1)&lt;/script&gt;",
        "Subject: ",
        "value=\"release\"",
    ] {
        assert!(page.body.contains(want), "{want}: {}", page.body);
    }
    assert!(!page.body.contains("<script>alert"));
    let r = with_cookie(
        "POST",
        "/ui/action",
        &format!("csrf={csrf}&action=release&id={id}&back=message"),
    );
    assert_eq!(
        r.header("location"),
        Some(format!("/ui/message/{id}").as_str())
    );
    let page = with_cookie("GET", &format!("/ui/message/{id}"), "");
    assert!(
        page.body.contains("released 1 of 1 node(s)"),
        "{}",
        page.body
    );
    assert!(page.body.contains("value=\"hold\""), "{}", page.body);
    let gone = with_cookie("GET", "/ui/message/NO-SUCH-ID", "");
    assert_eq!(gone.status, 404);
    assert!(gone.body.contains("Not queued (any more)"), "{}", gone.body);
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

#[test]
fn what_is_in_corrupt_shows_in_the_metrics_and_on_the_dashboard() {
    let api = start();
    // Something set aside (a planted file the daemon moved away, say).
    let corrupt = api.spool().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("0.planted"), "not mail").unwrap();
    let agent = ureq::Agent::new_with_config(
        ureq::config::Config::builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    );
    let login = reply(
        agent
            .post(format!("{}/login", api.base))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!("token={}", api.admin).as_bytes()),
    );
    let session = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The sampler counts every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = api.get("/metrics", Some(&api.read));
        if metrics.body.contains("mailspool_spool_corrupt_files 1") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", metrics.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    let page = reply(
        agent
            .get(format!("{}/", api.base))
            .header("Cookie", &session)
            .call(),
    );
    assert!(
        page.body.contains("1 file in corrupt/, never delivered"),
        "{}",
        page.body
    );
}

/// A client holding idle connections cannot lock out the API, `/metrics` or `/healthz`:
/// one address gets at most `max_connections_per_ip`, and when every slot is taken a new
/// connection closes the one idle the longest. (Clients come from several loopback
/// addresses, 127.0.0.2 and up, as distinct hosts would.)
#[test]
fn idle_connections_cannot_lock_out_the_api() {
    let api = start_with(|h| {
        h.max_connections = 8;
        h.max_connections_per_ip = 4;
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = api.addr;
    let open_from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        rt.block_on(async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind((ip, 0).into()).unwrap();
            s.connect(addr).await.unwrap().into_std().unwrap()
        })
    };
    // Closed by the server within `wait` (EOF or reset; a timeout means still open).
    fn closed_within(mut s: &std::net::TcpStream, wait: Duration) -> bool {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(wait)).unwrap();
        match s.read(&mut [0u8; 64]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
    let mut held: Vec<std::net::TcpStream> = (0..4).map(|_| open_from("127.0.0.2")).collect();
    std::thread::sleep(Duration::from_millis(200));
    let fifth = open_from("127.0.0.2");
    assert!(
        closed_within(&fifth, Duration::from_secs(5)),
        "a fifth connection from one address is refused"
    );
    held.extend((0..4).map(|_| open_from("127.0.0.3")));
    std::thread::sleep(Duration::from_millis(200));
    // Eight idle connections fill the server; a request still gets through, at once.
    let t = std::time::Instant::now();
    let h = api.get("/healthz", None);
    assert_eq!(h.status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let m = api.get("/metrics", None);
    assert_eq!(m.status, 200);
    // The oldest idle ones made room.
    let closed = held
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(200)))
        .count();
    assert!(closed >= 1, "an idle connection was closed to make room");
}

#[test]
fn the_history_and_the_suppression_list_over_http() {
    let api = start();
    let r = api.post_json("/v1/messages", &api.inject, &message("bob@example.org"));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    // A message's events, by its id.
    let r = api.get(&format!("/v1/messages/{id}/events"), Some(&api.read));
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "accepted");
    assert_eq!(events[0]["source"], "http");
    assert!(
        events[0]["submitter"]
            .as_str()
            .unwrap()
            .starts_with("HTTP API token ")
    );
    assert!(events[0]["message_id"].as_str().unwrap().starts_with('<'));
    // ... and by its Message-ID.
    let mid = events[0]["message_id"].as_str().unwrap();
    let r = api.get(
        &format!("/v1/messages/{}/events", percent(mid)),
        Some(&api.read),
    );
    assert_eq!(r.json()["events"][0]["message"], id.as_str());
    assert_eq!(
        api.get("/v1/messages/nope/events", Some(&api.read)).status,
        404
    );
    // Every event, a page at a time; the cursor at the end waits for what comes next.
    api.post_json("/v1/messages", &api.inject, &message("carol@example.org"));
    let r = api.get("/v1/events?type=accepted&limit=1", Some(&api.read));
    let page = r.json();
    assert_eq!(
        (
            page["events"].as_array().unwrap().len(),
            page["more"].as_bool()
        ),
        (1, Some(true))
    );
    let next = page["next"].as_str().unwrap().to_owned();
    let r = api.get(
        &format!("/v1/events?limit=10&cursor={}", percent(&next)),
        Some(&api.read),
    );
    let page = r.json();
    assert_eq!(page["events"][0]["recipient"], "carol@example.org");
    assert_eq!(page["more"], false);
    let end = page["next"].as_str().unwrap().to_owned();
    api.post_json("/v1/messages", &api.inject, &message("dave@example.org"));
    let r = api.get(
        &format!("/v1/events?cursor={}", percent(&end)),
        Some(&api.read),
    );
    assert_eq!(r.json()["events"][0]["recipient"], "dave@example.org");
    let r = api.get("/v1/events?type=nonsense", Some(&api.read));
    assert_eq!((r.status, r.code()), (400, "bad_type".into()));
    assert_eq!(api.get("/v1/events", Some(&api.inject)).status, 403);

    // Suppression: an admin adds, intake refuses with the recipient named, list, remove.
    let body = json!({"address": "Gone@Example.org", "reason": "left the company"});
    assert_eq!(
        api.post_json("/v1/suppressions", &api.read, &body).status,
        403
    );
    let r = api.post_json("/v1/suppressions", &api.admin, &body);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["address"], "gone@example.org");
    let r = api.post_json("/v1/messages", &api.inject, &message("gone@example.org"));
    assert_eq!((r.status, r.code()), (422, "suppressed".into()));
    assert!(r.body.contains("gone@example.org"), "{}", r.body);
    let r = api.get("/v1/suppressions", Some(&api.read));
    assert_eq!(r.json()["suppressions"][0]["reason"], "left the company");
    assert_eq!(
        api.delete("/v1/suppressions/gone@example.org", &api.admin)
            .status,
        204
    );
    assert_eq!(
        api.delete("/v1/suppressions/gone@example.org", &api.admin)
            .status,
        404
    );
    let r = api.post_json("/v1/messages", &api.inject, &message("gone@example.org"));
    assert_eq!(r.status, 202);
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
