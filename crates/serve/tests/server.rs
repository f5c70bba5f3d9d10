//! The listener from the outside, over 127.0.0.1:0: each extension, each refusal, the
//! smuggling probes, limits, STARTTLS and AUTH, and 100 concurrent sessions.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mailspool_serve::{Listen, Mode, Network, ServeConfig, Users};
use mailspool_spool::{Spool, SpoolConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_message_is_committed_before_250_with_a_received_header() {
    let s = start(ServeConfig::default()).await;
    let (mut c, greeting) = Client::connect(s.addr).await;
    assert!(greeting.starts_with("220 mx.test"));
    let ehlo = c.cmd("EHLO client.test").await;
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "no certificate, no users: {ehlo}"
    );
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@x.test> BODY=8BITMIME SIZE=100").await),
        "250"
    );
    assert_eq!(code(&c.cmd("RCPT TO:<b@y.test>").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<c@z.test>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.raw("Subject: hi\r\n\r\ncafé\r\n..leading dot\r\n.\r\n".as_bytes())
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    // 250 came after the commit: the nodes are there now.
    let nodes = s.nodes();
    assert_eq!(nodes.len(), 2);
    let id = r.trim().rsplit(' ').next().unwrap();
    for (n, body) in &nodes {
        assert_eq!(n.id, id);
        assert_eq!(n.from, "a@x.test");
        assert!(
            body.starts_with(
                "Received: from client.test ([127.0.0.1])\n\tby mx.test (mailspool) with ESMTP id "
            ),
            "{body}"
        );
        assert!(
            body.contains(&format!(" id {id};")),
            "id <ID>, not a comment: {body}"
        );
        assert!(
            body.ends_with("Subject: hi\n\ncafé\n.leading dot\n"),
            "{body:?}"
        );
    }
    assert_eq!(code(&c.cmd("VRFY b@y.test").await), "252");
    assert_eq!(code(&c.cmd("HELP").await), "214");
    assert_eq!(code(&c.cmd("NOOP").await), "250");
    assert_eq!(code(&c.cmd("RSET").await), "250");
    assert_eq!(code(&c.cmd("QUIT").await), "221");
    assert!(s.tmp_empty());
}

#[tokio::test]
async fn pipelining_bdat_and_smtputf8() {
    let s = start(ServeConfig::default()).await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    // Everything in one write.
    c.raw(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "354");
    c.raw(b"Subject: one\r\n\r\nx\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nBDAT 20\r\nSubject: two\r\n\r\nyz\r\nBDAT 0 LAST\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(code(&c.reply().await), "250");
    assert!(c.reply().await.starts_with("250 2.0.0 20 bytes"));
    assert!(c.reply().await.contains("queued as"));
    // SMTPUTF8: needed for a non-ASCII address.
    assert_eq!(code(&c.cmd("MAIL FROM:<a@x.test>").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<ü@y.test>").await), "553");
    c.cmd("RSET").await;
    assert_eq!(code(&c.cmd("MAIL FROM:<a@x.test> SMTPUTF8").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<ü@y.test>").await), "250");
    let nodes = s.nodes();
    assert_eq!(nodes.len(), 2);
    assert!(
        nodes[1].1.ends_with("Subject: two\n\nyz\n"),
        "{:?}",
        nodes[1].1
    );
}

#[tokio::test]
async fn smuggling_probes_are_refused_whole() {
    let s = start(ServeConfig::default()).await;
    let probes: [&[u8]; 8] = [
        b"\n.\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r\n",
        b"\r\n\x00.\r\n",
        b".\n",
        b"\r\n.\r",
        b"\n..\n",
    ];
    for probe in probes {
        let (mut c, _) = Client::connect(s.addr).await;
        assert_eq!(
            code(&c.start_data("a@x.test", &["victim@y.test"]).await),
            "354"
        );
        let mut data = b"Subject: first\r\n\r\nhello".to_vec();
        data.extend_from_slice(probe);
        data.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<smuggled@y.test>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n");
        c.raw(&data).await;
        let r = c.reply().await;
        assert!(r.starts_with("550 5.6.0"), "{probe:?}: {r}");
        // The "commands" were data: nothing more answers until we speak.
        assert_eq!(
            code(&c.cmd("NOOP").await),
            "250",
            "{probe:?}: session out of step"
        );
    }
    assert!(
        s.nodes().is_empty(),
        "a smuggled or refused message was spooled"
    );
    assert!(s.tmp_empty());
}

#[tokio::test]
async fn refusals_with_their_codes() {
    let s = start(ServeConfig {
        max_recipients: 2,
        max_message_size: 1500,
        ..ServeConfig::default()
    })
    .await;
    let (mut c, _) = Client::connect(s.addr).await;
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@x.test>").await),
        "503",
        "MAIL before EHLO"
    );
    c.cmd("EHLO client.test").await;
    assert_eq!(
        code(&c.cmd("RCPT TO:<b@y.test>").await),
        "503",
        "RCPT before MAIL"
    );
    assert_eq!(code(&c.cmd("MAIL FROM:<a@x.test> SIZE=5000").await), "552");
    assert_eq!(code(&c.cmd("MAIL FROM:<-oQ@x.test>").await), "553");
    assert_eq!(code(&c.cmd("MAIL FROM:<a@x.test>").await), "250");
    for (rcpt, want) in [
        ("RCPT TO:<u%evil.test@y.test>", "550"),
        ("RCPT TO:<evil.test!u@y.test>", "550"),
        ("RCPT TO:<\"u@evil.test\"@y.test>", "550"),
        ("RCPT TO:<nodomain>", "553"),
    ] {
        let r = c.cmd(rcpt).await;
        assert_eq!(code(&r), want, "{rcpt}: {r}");
    }
    assert_eq!(code(&c.cmd("RCPT TO:<1@y.test>").await), "250");
    assert_eq!(code(&c.cmd("RCPT TO:<2@y.test>").await), "250");
    let r = c.cmd("RCPT TO:<3@y.test>").await;
    assert!(r.starts_with("452 4.5.3"), "{r}");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.raw(
        format!(
            "Subject: big\r\n\r\n{}.\r\n",
            format!("{}\r\n", "x".repeat(990)).repeat(2)
        )
        .as_bytes(),
    )
    .await;
    let r = c.reply().await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // Lines: 513-byte command, 1001-byte text line.
    let r = c.cmd(&format!("NOOP {}", "x".repeat(508))).await;
    assert!(r.starts_with("500 5.5.2"), "{r}");
    c.raw(b"NOOP\n").await;
    assert!(c.reply().await.starts_with("500 5.5.2"), "bare LF command");
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<1@y.test>").await;
    c.cmd("DATA").await;
    c.raw(format!("{}\r\n.\r\n", "y".repeat(999)).as_bytes())
        .await;
    assert!(
        c.reply().await.starts_with("550 5.6.0"),
        "text line over 1000"
    );
    assert!(s.nodes().is_empty());

    // Hop count.
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<1@y.test>").await;
    c.cmd("DATA").await;
    c.raw("Received: x\r\n".repeat(100).as_bytes()).await;
    c.raw(b"\r\nloop\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("554 5.4.6"));
    assert!(s.nodes().is_empty());
}

#[tokio::test]
async fn never_an_open_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut users = Users::load(&dir.path().join("users")).unwrap();
    users.set("app", "s3cret").unwrap();
    let cfg = ServeConfig {
        relay_networks: vec![Network::parse("192.0.2.0/24").unwrap()],
        auth_failure_delay: Duration::from_millis(10),
        ..ServeConfig::default()
    };
    let s = start_with(cfg, None, users, dir).await;
    let (mut c, _) = Client::connect(s.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN"),
        "loopback may AUTH without TLS: {ehlo}"
    );
    c.cmd("MAIL FROM:<a@x.test>").await;
    let r = c.cmd("RCPT TO:<b@y.test>").await;
    assert!(r.starts_with("554 5.7.1"), "{r}");
    c.cmd("RSET").await;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let r = c
        .cmd(&format!("AUTH PLAIN {}", b64.encode("\0app\0wrong")))
        .await;
    assert!(r.starts_with("535"), "{r}");
    assert_eq!(code(&c.cmd("AUTH LOGIN").await), "334");
    assert_eq!(code(&c.cmd(&b64.encode("app")).await), "334");
    assert_eq!(code(&c.cmd(&b64.encode("s3cret")).await), "235");
    c.cmd("MAIL FROM:<a@x.test>").await;
    assert_eq!(
        code(&c.cmd("RCPT TO:<b@y.test>").await),
        "250",
        "authenticated users relay"
    );
    // Too many failures close the connection.
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    for _ in 0..2 {
        assert!(
            c.cmd(&format!("AUTH PLAIN {}", b64.encode("\0app\0bad")))
                .await
                .starts_with("535")
        );
    }
    assert!(
        c.cmd(&format!("AUTH PLAIN {}", b64.encode("\0app\0bad")))
            .await
            .starts_with("421")
    );
    assert_eq!(c.reply().await, "EOF");
}

#[tokio::test]
async fn submission_requires_auth() {
    let mut cfg = ServeConfig::default();
    cfg.listen.push(listen(Mode::Submission));
    let s = start(cfg).await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    assert!(c.cmd("MAIL FROM:<a@x.test>").await.starts_with("530 5.7.0"));
}

#[tokio::test]
async fn talking_before_the_greeting_is_dropped_and_timeouts_close() {
    let cfg = ServeConfig {
        greet_pause: Duration::from_millis(300),
        greet_pause_all: true,
        command_timeout: Duration::from_secs(1),
        ..ServeConfig::default()
    };
    let s = start(cfg).await;
    let mut sock = TcpStream::connect(s.addr).await.unwrap();
    sock.write_all(b"EHLO eager.test\r\n").await.unwrap();
    let mut buf = String::new();
    sock.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("554 5.5.1"), "{buf}");
    // A client that goes quiet is told and dropped.
    let (mut c, g) = Client::connect(s.addr).await;
    assert!(g.starts_with("220"));
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
}

#[tokio::test]
async fn connection_limits_per_address() {
    // An untrusted client is held to its limit...
    let s = start(ServeConfig {
        max_connections_per_ip: 2,
        relay_networks: Vec::new(),
        greet_pause: Duration::ZERO,
        ..ServeConfig::default()
    })
    .await;
    let (_a, _) = Client::connect(s.addr).await;
    let (_b, _) = Client::connect(s.addr).await;
    let (_c, g) = Client::connect(s.addr).await;
    assert!(g.starts_with("421 4.7.0"), "{g}");
    // ...a client in relay_networks (an application server, a local load generator) is
    // not: only the total limit applies.
    let s = start(ServeConfig {
        max_connections_per_ip: 2,
        ..ServeConfig::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let (c, g) = Client::connect(s.addr).await;
        assert!(g.starts_with("220"), "{g}");
        open.push(c);
    }
    assert_eq!(
        ServeConfig::default().max_connections_per_ip,
        50,
        "Postfix's default"
    );
}

#[tokio::test]
async fn a_failed_commit_says_452_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::create(dir.path().join("spool"), SpoolConfig::default())
        .unwrap()
        .with_storage(Arc::new(mailspool_spool::FaultyStorage::new(
            0,
            mailspool_spool::FaultMode::FailOnce,
            28,
        )));
    let s = start_with(ServeConfig::default(), Some(spool), Users::default(), dir).await;
    let (mut c, _) = Client::connect(s.addr).await;
    let r = c.start_data("a@x.test", &["b@y.test"]).await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    // The fault was once: the next try works.
    assert_eq!(code(&c.cmd("MAIL FROM:<a@x.test>").await), "250");
    c.cmd("RCPT TO:<b@y.test>").await;
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.raw(b"Subject: x\r\n\r\ny\r\n.\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    assert_eq!(s.nodes().len(), 1);
    assert!(s.tmp_empty());
}

fn tls_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test]
async fn starttls_then_auth_with_a_real_client_and_no_pipelined_commands_under_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path());
    let mut users = Users::load(&dir.path().join("users")).unwrap();
    users.set("app", "s3cret").unwrap();
    let mut cfg = ServeConfig::default();
    cfg.listen.push(Listen {
        address: "127.0.0.1:0".parse().unwrap(),
        mode: Mode::Submission,
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
    });
    let s = start_with(cfg, None, users, dir).await;

    // Commands pipelined after STARTTLS in plain text must not run.
    let (mut c, _) = Client::connect(s.addr).await;
    assert!(c.cmd("EHLO client.test").await.contains("STARTTLS"));
    c.raw(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n").await;
    assert!(c.reply().await.starts_with("220"));
    let connector = mailspool_smtp::TlsConnectors::new(Some(&cert)).unwrap();
    let name = mailspool_smtp::TlsConnectors::server_name("127.0.0.1").unwrap();
    let tcp = c.io.into_inner();
    let tls = connector.verified.connect(name, tcp).await.unwrap();
    let mut t = BufReader::new(tls);
    t.get_mut()
        .write_all(b"EHLO client.test\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        t.read_line(&mut line).await.unwrap();
        assert!(
            !line.starts_with("250 2.1.0"),
            "the injected MAIL ran under TLS"
        );
        if line.as_bytes()[3] == b' ' {
            break;
        }
    }
    assert!(line.starts_with("250 "));

    // Our own client, TLS required and checked, AUTH PLAIN, submission port.
    let settings = mailspool_smtp::ClientSettings {
        helo_name: "client.test".into(),
        timeouts: mailspool_smtp::Timeouts::default(),
        tls: mailspool_smtp::TlsPolicy::Required,
        auth: Some(mailspool_smtp::Credentials {
            username: "app".into(),
            password: "s3cret".into(),
        }),
        bind: Vec::new(),
        verifier: None,
    };
    let mut session = mailspool_smtp::Session::connect(s.addr, "127.0.0.1", &settings, &connector)
        .await
        .unwrap();
    assert!(session.tls);
    let env = mailspool_smtp::Envelope {
        from: "a@x.test".into(),
        to: vec!["b@y.test".into()],
        size: 20,
        eight_bit: false,
        utf8_headers: false,
    };
    let out = session
        .send(&env, &mut &b"Subject: tls\n\nhello\n"[..])
        .await
        .unwrap();
    assert!(out.data.unwrap().is_positive());
    // Both sessions turned TLS on, and the metrics say so (nextest runs each test in
    // its own process, so the count is this test's).
    assert_eq!(mailspool_metrics::global().smtp_tls_sessions.get(), 2);
    let nodes = s.nodes();
    assert_eq!(nodes.len(), 1);
    assert!(nodes[0].1.contains("with ESMTPSA id "), "{}", nodes[0].1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sessions_of_fifty_messages() {
    let s = start(ServeConfig {
        max_connections_per_ip: 200,
        ..ServeConfig::default()
    })
    .await;
    let connector = mailspool_smtp::TlsConnectors::new(None).unwrap();
    let settings = mailspool_smtp::ClientSettings {
        helo_name: "load.test".into(),
        timeouts: mailspool_smtp::Timeouts::default(),
        tls: mailspool_smtp::TlsPolicy::None,
        auth: None,
        bind: Vec::new(),
        verifier: None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for session_no in 0..100 {
        let (addr, settings, connector) = (s.addr, settings.clone(), connector.clone());
        tasks.spawn(async move {
            let mut session =
                mailspool_smtp::Session::connect(addr, "127.0.0.1", &settings, &connector)
                    .await
                    .unwrap();
            for m in 0..50 {
                if m > 0 {
                    session.reset_before_next();
                }
                let body = format!("Subject: {session_no}/{m}\n\ntoken {session_no}-{m}\n");
                let env = mailspool_smtp::Envelope {
                    from: "load@x.test".into(),
                    to: vec![format!("r{session_no}@y.test")],
                    size: body.len() as u64,
                    eight_bit: false,
                    utf8_headers: false,
                };
                let out = session.send(&env, &mut body.as_bytes()).await.unwrap();
                assert!(out.data.unwrap().is_positive());
            }
            session.quit().await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let nodes = s.nodes();
    assert_eq!(nodes.len(), 5000);
    let mut tokens: Vec<&str> = nodes
        .iter()
        .map(|(_, b)| b.lines().last().unwrap())
        .collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 5000, "every message whole and once");
    assert!(s.tmp_empty());
}

#[tokio::test]
async fn smtps_is_tls_from_the_first_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls_files(dir.path());
    let mut users = Users::load(&dir.path().join("users")).unwrap();
    users.set("app", "s3cret").unwrap();
    let cfg = ServeConfig {
        listen: vec![Listen {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: Mode::Smtps,
            tls_cert: Some(cert.clone()),
            tls_key: Some(key),
        }],
        ..ServeConfig::default()
    };
    let s = start_with(cfg, None, users, dir).await;
    let connector = mailspool_smtp::TlsConnectors::new(Some(&cert)).unwrap();
    let mut settings = mailspool_smtp::ClientSettings {
        helo_name: "client.test".into(),
        timeouts: mailspool_smtp::Timeouts::default(),
        tls: mailspool_smtp::TlsPolicy::Implicit,
        auth: None,
        bind: Vec::new(),
        verifier: None,
    };
    let env = mailspool_smtp::Envelope {
        from: "a@x.test".into(),
        to: vec!["b@y.test".into()],
        size: 20,
        eight_bit: false,
        utf8_headers: false,
    };
    // Without AUTH the port refuses MAIL.
    let mut session = mailspool_smtp::Session::connect(s.addr, "127.0.0.1", &settings, &connector)
        .await
        .unwrap();
    assert!(session.tls);
    let e = session
        .send(&env, &mut &b"Subject: x\n\ny\n"[..])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("530"), "{e}");
    settings.auth = Some(mailspool_smtp::Credentials {
        username: "app".into(),
        password: "s3cret".into(),
    });
    let mut session = mailspool_smtp::Session::connect(s.addr, "127.0.0.1", &settings, &connector)
        .await
        .unwrap();
    let out = session
        .send(&env, &mut &b"Subject: x\n\ny\n"[..])
        .await
        .unwrap();
    assert!(out.data.unwrap().is_positive());
    assert_eq!(s.nodes().len(), 1);
}

#[tokio::test]
async fn total_connection_limit_and_session_cap() {
    let s = start(ServeConfig {
        max_connections: 1,
        ..ServeConfig::default()
    })
    .await;
    let (_a, g) = Client::connect(s.addr).await;
    assert!(g.starts_with("220"));
    let (_b, g) = Client::connect(s.addr).await;
    assert!(g.starts_with("421 4.7.0 Too many connections"), "{g}");

    let s = start(ServeConfig {
        session_timeout: Duration::from_secs(1),
        ..ServeConfig::default()
    })
    .await;
    let (mut c, _) = Client::connect(s.addr).await;
    assert_eq!(code(&c.cmd("EHLO client.test").await), "250");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.raw(b"NOOP\r\n").await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
}
