//! What the listener does with the addresses real clients send: `<postmaster>`, quoted
//! local parts, address literals, source routes, DSN and BINARYMIME parameters it does
//! not offer, and an address too long to name a node. Also AUTH under a flood: bounded
//! memory, and failures that cost the same however they fail.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mailspool_serve::{ServeConfig, Users};

fn config() -> ServeConfig {
    ServeConfig {
        postmaster: "admin@corp.test".into(),
        ..ServeConfig::default()
    }
}

#[tokio::test]
async fn postmaster_is_always_accepted_and_goes_to_the_configured_address() {
    // Not a trusted network: relaying is refused, <postmaster> is not.
    let s = start(ServeConfig {
        relay_networks: Vec::new(),
        greet_pause: Duration::ZERO,
        ..config()
    })
    .await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(code(&c.cmd("MAIL FROM:<a@x.test>").await), "250");
    assert_eq!(
        code(&c.cmd("RCPT TO:<b@y.test>").await),
        "554",
        "never an open relay"
    );
    for rcpt in [
        "RCPT TO:<postmaster>",
        "RCPT TO:<PostMaster>",
        "RCPT TO:<POSTMASTER>",
    ] {
        let r = c.cmd(rcpt).await;
        assert_eq!(code(&r), "250", "{rcpt}: {r}");
    }
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.raw(b"Subject: abuse report\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    let nodes = s.nodes();
    assert_eq!(nodes.len(), 1, "one recipient, however it was spelled");
    assert_eq!(nodes[0].0.to, "admin@corp.test");
}

#[tokio::test]
async fn quoted_local_parts_literals_and_source_routes_are_valid_syntax() {
    let s = start(config()).await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        code(&c.cmd("MAIL FROM:<\"odd sender\"@x.test>").await),
        "250"
    );
    for (rcpt, want) in [
        ("RCPT TO:<\"quoted local\"@y.test>", "250"),
        ("RCPT TO:<u@[127.0.0.1]>", "250"),
        ("RCPT TO:<@hop1.test,@hop2.test:routed@y.test>", "250"),
        // Refused by policy, with 550/553, never a syntax error.
        ("RCPT TO:<\"u@evil.test\"@y.test>", "550"),
        ("RCPT TO:<u@[999.1.1.1]>", "553"),
        ("RCPT TO:<nodomain>", "553"),
    ] {
        let r = c.cmd(rcpt).await;
        assert_eq!(code(&r), want, "{rcpt}: {r}");
    }
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.raw(b"Subject: x\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(code(&c.reply().await), "250");
    let mut to: Vec<String> = s.nodes().into_iter().map(|(n, _)| n.to).collect();
    to.sort();
    assert_eq!(
        to,
        ["\"quoted local\"@y.test", "routed@y.test", "u@[127.0.0.1]"],
        "the route is ignored, the quotes kept"
    );
    assert_eq!(s.nodes()[0].0.from, "\"odd sender\"@x.test");
}

#[tokio::test]
async fn parameters_not_offered_are_555() {
    let s = start(config()).await;
    let (mut c, _) = Client::connect(s.addr).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        !ehlo.contains("BINARYMIME") && !ehlo.contains("DSN"),
        "{ehlo}"
    );
    for mail in [
        "MAIL FROM:<a@x.test> BODY=BINARYMIME",
        "MAIL FROM:<a@x.test> RET=HDRS",
        "MAIL FROM:<a@x.test> ENVID=abc123",
    ] {
        let r = c.cmd(mail).await;
        assert_eq!(code(&r), "555", "{mail}: {r}");
    }
    assert_eq!(code(&c.cmd("MAIL FROM:<a@x.test>").await), "250");
    for rcpt in [
        "RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE",
        "RCPT TO:<b@y.test> ORCPT=rfc822;b@y.test",
    ] {
        let r = c.cmd(rcpt).await;
        assert_eq!(code(&r), "555", "{rcpt}: {r}");
    }
    assert_eq!(code(&c.cmd("RCPT TO:<b@y.test>").await), "250");
}

#[tokio::test]
async fn an_address_too_long_for_a_node_name_is_refused_at_rcpt_alone() {
    let s = start(config()).await;
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    let sender = format!("{}@{}.test", "s".repeat(60), "d".repeat(60));
    assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{sender}>")).await), "250");
    // Valid for SMTP, but with this sender the node name would pass 247 bytes.
    let long = format!(
        "{}@{}.{}.test",
        "r".repeat(64),
        "a".repeat(60),
        "b".repeat(60)
    );
    let r = c.cmd(&format!("RCPT TO:<{long}>")).await;
    assert!(r.starts_with("553 5.1.3"), "{r}");
    assert_eq!(code(&c.cmd("RCPT TO:<ok@y.test>").await), "250");
    assert_eq!(code(&c.cmd("DATA").await), "354");
    c.raw(b"Subject: x\r\n\r\nhi\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!(
        code(&r),
        "250",
        "the rest of the transaction goes through: {r}"
    );
    assert_eq!(s.nodes().len(), 1);
}

fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_flood_costs_time_not_memory_and_garbage_counts_as_failure() {
    mailspool_serve::tune_allocator();
    let dir = tempfile::tempdir().unwrap();
    let mut users = Users::load(&dir.path().join("users")).unwrap();
    users.set("app", "s3cret").unwrap();
    let s = start_with(
        ServeConfig {
            max_connections_per_ip: 100,
            auth_failure_delay: Duration::from_millis(10),
            ..config()
        },
        None,
        users,
        dir,
    )
    .await;
    let before = vm_kib("VmRSS:");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let addr = s.addr;
        tasks.push(tokio::spawn(async move {
            let (mut c, _) = Client::connect(addr).await;
            c.cmd("EHLO client.test").await;
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0user{i}\0wrong{i}"));
            c.cmd(&format!("AUTH PLAIN {token}")).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.starts_with("535"), "{r}");
    }
    let peak = vm_kib("VmHWM:");
    let after = vm_kib("VmRSS:");
    // 24 checks at 19 MiB each would be 456 MiB; a few at a time, and given back.
    assert!(
        peak.saturating_sub(before) < 160 * 1024,
        "peak grew {} MiB",
        (peak - before) / 1024
    );
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "memory kept after the flood: {} MiB",
        after.saturating_sub(before) / 1024
    );

    // Undecodable credentials and a cancelled exchange are failures too: counted,
    // delayed, and the third closes the connection.
    let (mut c, _) = Client::connect(s.addr).await;
    c.cmd("EHLO client.test").await;
    let started = Instant::now();
    assert_eq!(code(&c.cmd("AUTH PLAIN !!!notbase64").await), "501");
    assert_eq!(code(&c.cmd("AUTH LOGIN").await), "334");
    assert_eq!(code(&c.cmd("*").await), "501");
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "each failure waits"
    );
    assert_eq!(code(&c.cmd("AUTH PLAIN !!!").await), "421");
}

#[tokio::test]
async fn a_forged_log_line_in_an_auth_user_name_is_escaped() {
    // The escape used by every log line that carries what a client sent.
    let forged = "bob\nINFO authenticated user=root";
    let shown = mailspool_spool::escape(forged);
    assert!(!shown.contains('\n'), "{shown}");
    assert_eq!(shown, "bob\\nINFO authenticated user=root");
    assert_eq!(mailspool_spool::escape("plain"), "plain");
    assert_eq!(mailspool_spool::escape("a\u{1b}[31mred"), "a\\u{1b}[31mred");
}
