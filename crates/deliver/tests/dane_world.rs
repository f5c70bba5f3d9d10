//! DANE and MTA-STS against a real DNSSEC world (bind9 serving a signed root, `test.`
//! and `dane.test.` with records altered after signing, and an unsigned
//! `plain.test.`; unbound validating from that root's key; another unbound that does
//! not validate), receivers with STARTTLS on 127.0.20.x and an HTTPS policy server.
//! Each case of RFC 7672 and RFC 8461 gets the RFC's outcome: DANE fails closed.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::dns_world::{Rec, World, Zones};
use common::*;
use mailspool_deliver::{
    DeliverConfig, HickoryDns, NodeResult, Outcome, PassOptions, Resolve, Selection,
};

const MSG: &str = "From: a@sender.test\nSubject: hi\n\nhello\n";

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A self-signed certificate for `name`, and the SHA-256 of its key (TLSA 3 1 1).
fn self_signed_3_1_1(name: &str) -> (Arc<rustls::ServerConfig>, String) {
    let (cfg, spki) = common::self_signed(name);
    (cfg, sha256(&spki))
}

/// The receivers: one per loopback address, all on one port (MX delivery has one).
struct Receivers {
    port: u16,
    sinks: HashMap<&'static str, Sink>,
}

async fn receivers(plan: Vec<(&'static str, u8, Option<Arc<rustls::ServerConfig>>)>) -> Receivers {
    'again: loop {
        let mut sinks = HashMap::new();
        let mut port = 0;
        for (name, last, tls) in &plan {
            let addr = SocketAddr::from(([127, 0, 20, *last], port));
            let script = Script {
                tls: tls.clone(),
                ..Default::default()
            };
            match Sink::start_on(addr, script).await {
                Ok(s) => {
                    port = s.addr.port();
                    sinks.insert(*name, s);
                }
                // The port is taken on that address: start over on another.
                Err(_) => continue 'again,
            }
        }
        return Receivers { port, sinks };
    }
}

impl Receivers {
    fn got(&self, name: &str) -> Vec<String> {
        self.sinks[name]
            .received()
            .iter()
            .flat_map(|r| r.to.clone())
            .collect()
    }
}

fn a(host: &str, last: u8) -> Rec {
    Rec(host.into(), "A", format!("127.0.20.{last}"))
}

fn mx(domain: &str, host: &str) -> Rec {
    Rec(domain.into(), "MX", format!("10 {host}."))
}

fn result(results: &[NodeResult], to: &str) -> NodeResult {
    results
        .iter()
        .find(|r| r.to == to)
        .unwrap_or_else(|| panic!("no result for {to}: {results:?}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_gets_the_rfc_outcome_against_bind9_and_unbound() {
    if !common::dns_world::available() {
        return;
    }
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .init();

    let ca = TestCa::new();
    let ca_spki = sha256(&mailspool_deliver::dane::spki(&ca.der).unwrap());
    let (ee_tls, ee_key) = self_signed_3_1_1("mx-ee.dane.test");
    let (wrong_tls, _) = self_signed_3_1_1("mx-wrong.dane.test");
    let (altered_tls, altered_key) = self_signed_3_1_1("mx-altered.dane.test");
    let rx = receivers(vec![
        ("ee", 1, Some(ee_tls)),
        ("wrong", 2, Some(wrong_tls)),
        ("clear", 3, None),
        ("altered", 4, Some(altered_tls)),
        ("ta", 5, Some(ca.server_with_chain("mx-ta.dane.test"))),
        ("taname", 6, Some(ca.server_with_chain("someone-else.test"))),
        ("sts", 7, Some(ca.server("mx-sts.plain.test"))),
        ("stsbad", 8, Some(ca.server("someone-else.test"))),
        ("plain", 9, None),
    ])
    .await;
    let port = rx.port;
    let policy = |mode: &str, mx: &str| {
        format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
    };
    let https = policy_server(
        "127.0.20.12:0",
        &ca,
        HashMap::from([
            (
                "mta-sts.sts.plain.test".to_owned(),
                policy("enforce", "mx-sts.plain.test"),
            ),
            (
                "mta-sts.stsbad.plain.test".to_owned(),
                policy("enforce", "mx-stsbad.plain.test"),
            ),
            (
                "mta-sts.ststest.plain.test".to_owned(),
                policy("testing", "mx-stsbad.plain.test"),
            ),
        ]),
    )
    .await;

    let tlsa = |host: &str, data: String| Rec(format!("_{port}._tcp.{host}."), "TLSA", data);
    let mut dane = Vec::new();
    for (domain, host, last) in [
        ("ee", "mx-ee", 1),
        ("wrong", "mx-wrong", 2),
        ("clear", "mx-clear", 3),
        ("altered", "mx-altered", 4),
        ("ta", "mx-ta", 5),
        ("taname", "mx-taname", 6),
        ("notlsa", "mx-notlsa", 9),
    ] {
        dane.push(mx(
            &format!("{domain}.dane.test."),
            &format!("{host}.dane.test"),
        ));
        dane.push(a(&format!("{host}.dane.test."), last));
    }
    dane.push(mx("forged.dane.test.", "mx-ee.dane.test"));
    dane.push(tlsa("mx-ee.dane.test", format!("3 1 1 {ee_key}")));
    dane.push(tlsa(
        "mx-wrong.dane.test",
        format!("3 1 1 {}", "00".repeat(32)),
    ));
    dane.push(tlsa("mx-clear.dane.test", format!("3 1 1 {ee_key}")));
    dane.push(tlsa("mx-altered.dane.test", format!("3 1 1 {altered_key}")));
    dane.push(tlsa("mx-ta.dane.test", format!("2 1 1 {ca_spki}")));
    dane.push(tlsa("mx-taname.dane.test", format!("2 1 1 {ca_spki}")));
    let mut plain = vec![mx("plain.test.", "mx.plain.test"), a("mx.plain.test.", 9)];
    for (domain, host, last) in [
        ("sts", "mx-sts", 7),
        ("stsbad", "mx-stsbad", 8),
        ("ststest", "mx-stsbad", 8),
    ] {
        plain.push(mx(
            &format!("{domain}.plain.test."),
            &format!("{host}.plain.test"),
        ));
        plain.push(a(&format!("{host}.plain.test."), last));
        plain.push(a(&format!("mta-sts.{domain}.plain.test."), 12));
        plain.push(Rec(
            format!("_mta-sts.{domain}.plain.test."),
            "TXT",
            "\"v=STSv1; id=1;\"".into(),
        ));
    }
    let world = World::start(Zones {
        dane,
        plain,
        altered: vec![
            // The TLSA data and an MX target changed after signing.
            tlsa("mx-altered.dane.test", format!("3 1 1 {}", "11".repeat(32))),
            mx("forged.dane.test.", "mx.plain.test"),
        ],
    })
    .await;
    let ca_file = world.dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let settings = |resolver: SocketAddr, anchors: Option<std::path::PathBuf>| DeliverConfig {
        mx_port: port,
        mx_tls: mailspool_smtp::TlsPolicy::Opportunistic,
        dane: true,
        mta_sts: true,
        mta_sts_port: https.port(),
        tls_ca_file: Some(ca_file.clone()),
        resolver: Some(resolver),
        dnssec_trust_anchors: anchors,
        ..config(&[])
    };
    let pass = |cfg: DeliverConfig, spool: Arc<mailspool_spool::Spool>| async move {
        let dns: Arc<dyn Resolve> = Arc::new(HickoryDns::for_config(&cfg).unwrap());
        let engine = mailspool_deliver::Engine::new(spool, cfg, dns).unwrap();
        let opts = PassOptions {
            selection: Selection::All,
            ..Default::default()
        };
        engine.run_pass(&opts).await.unwrap().results
    };

    // The validating resolver, its AD bit trusted.
    let dir = tempfile::tempdir().unwrap();
    let spool = common::spool(&dir.path().join("validating"));
    let all = [
        "x@ee.dane.test",
        "x@wrong.dane.test",
        "x@clear.dane.test",
        "x@altered.dane.test",
        "x@forged.dane.test",
        "x@ta.dane.test",
        "x@taname.dane.test",
        "x@notlsa.dane.test",
        "x@plain.test",
        "x@sts.plain.test",
        "x@stsbad.plain.test",
        "x@ststest.plain.test",
    ];
    for to in all {
        queue(&spool, "a@sender.test", &[to], MSG);
    }
    let results = pass(settings(world.validating, None), spool.clone()).await;
    let log = logs.text();
    let outcome = |to: &str| result(&results, to);
    let delivered = |to: &str, sink: &str, policy: &str| {
        let r = outcome(to);
        assert_eq!(r.outcome, Outcome::Delivered, "{to}: {r:?}\n{log}");
        assert!(rx.got(sink).contains(&to.to_owned()), "{to} at {sink}");
        let line = log
            .lines()
            .find(|l| l.contains("delivery attempt") && l.contains(&format!("to={to}")))
            .unwrap_or_else(|| panic!("no attempt logged for {to}:\n{log}"));
        assert!(
            line.contains(&format!("tls_policy=\"{policy}\""))
                || line.contains(&format!("tls_policy={policy}")),
            "{to} under {policy}: {line}"
        );
        assert!(line.contains("why="), "{line}");
    };
    let deferred = |to: &str, status: &str| {
        let r = outcome(to);
        assert_eq!(r.outcome, Outcome::Deferred, "{to}: {r:?}\n{log}");
        let node = spool
            .scan()
            .unwrap()
            .nodes
            .into_iter()
            .find(|n| n.name.to == to)
            .unwrap();
        let err = spool.last_error(&node.name).unwrap_or_default();
        let said = format!("{} / {err}", r.reply);
        assert!(said.contains(status), "{to}: {status} expected in {said}");
    };
    // TLSA 3 1 1 that matches: delivered, authenticated by DANE.
    delivered("x@ee.dane.test", "ee", "dane");
    assert!(rx.got("ee").contains(&"x@ee.dane.test".to_owned()));
    assert!(rx.sinks["ee"].received().iter().all(|m| m.tls));
    // TLSA that no certificate matches, or no STARTTLS where TLSA exists: waits.
    deferred("x@wrong.dane.test", "4.7.5");
    deferred("x@clear.dane.test", "4.7.5");
    assert!(rx.got("clear").is_empty(), "never in clear");
    assert!(rx.got("wrong").is_empty());
    // TLSA altered after signing (the resolver says SERVFAIL): waits, never sent.
    deferred("x@altered.dane.test", "4.4.3");
    assert!(rx.got("altered").is_empty());
    // MX altered after signing: the validating resolver refuses it; nothing goes to
    // the host the forged MX names.
    deferred("x@forged.dane.test", "4.4.3");
    assert!(!rx.got("plain").contains(&"x@forged.dane.test".to_owned()));
    // DANE-TA 2 1 1 (our CA): the right chain and name deliver; another name waits.
    delivered("x@ta.dane.test", "ta", "dane");
    deferred("x@taname.dane.test", "4.7.5");
    assert!(rx.got("taname").is_empty());
    // Signed MX without TLSA, and an unsigned domain: the ordinary policy.
    delivered("x@notlsa.dane.test", "plain", "plaintext");
    delivered("x@plain.test", "plain", "plaintext");
    // MTA-STS: enforce with a valid certificate (our CA through tls_ca_file)
    // delivers; enforce with a certificate for another name waits with 4.7.5;
    // testing delivers and logs what enforce would have refused.
    delivered("x@sts.plain.test", "sts", "mta-sts");
    deferred("x@stsbad.plain.test", "4.7.5");
    delivered("x@ststest.plain.test", "stsbad", "opportunistic");
    assert!(
        log.lines().any(|l| l.contains("MTA-STS (testing)")
            && l.contains("ststest.plain.test")
            && l.contains("certificate")),
        "testing mode logs the certificate enforce would refuse:\n{log}"
    );
    assert_eq!(rx.got("stsbad"), ["x@ststest.plain.test"]);

    // A resolver that does not validate, passing RRSIGs along: with the root's key
    // as dnssec_trust_anchors, validated here, the forged MX and altered TLSA are
    // caught, a good TLSA still authenticates, and the unsigned domain is proven
    // insecure (not bogus).
    let spool = common::spool(&dir.path().join("iterating"));
    for to in [
        "y@forged.dane.test",
        "y@altered.dane.test",
        "y@ee.dane.test",
        "y@wrong.dane.test",
        "y@plain.test",
    ] {
        queue(&spool, "a@sender.test", &[to], MSG);
    }
    let results = pass(
        settings(world.iterating, Some(world.anchor_file.clone())),
        spool.clone(),
    )
    .await;
    let outcome = |to: &str| result(&results, to).outcome;
    assert_eq!(
        outcome("y@forged.dane.test"),
        Outcome::Deferred,
        "{results:?}"
    );
    assert!(!rx.got("plain").contains(&"y@forged.dane.test".to_owned()));
    assert_eq!(outcome("y@altered.dane.test"), Outcome::Deferred);
    assert_eq!(outcome("y@wrong.dane.test"), Outcome::Deferred);
    assert_eq!(outcome("y@ee.dane.test"), Outcome::Delivered, "{results:?}");
    assert_eq!(outcome("y@plain.test"), Outcome::Delivered, "{results:?}");
    assert!(rx.got("altered").is_empty());

    // The root's DS record as the anchor instead: its key is fetched and checked
    // against it, then used as above.
    let spool = common::spool(&dir.path().join("ds"));
    for to in ["z@forged.dane.test", "z@ee.dane.test", "z@plain.test"] {
        queue(&spool, "a@sender.test", &[to], MSG);
    }
    let results = pass(
        settings(world.iterating, Some(world.anchor_ds_file.clone())),
        spool.clone(),
    )
    .await;
    let outcome = |to: &str| result(&results, to).outcome;
    assert_eq!(
        outcome("z@forged.dane.test"),
        Outcome::Deferred,
        "{results:?}"
    );
    assert_eq!(outcome("z@ee.dane.test"), Outcome::Delivered, "{results:?}");
    assert_eq!(outcome("z@plain.test"), Outcome::Delivered, "{results:?}");
    let dane_lines = logs
        .text()
        .lines()
        .filter(|l| l.contains("to=z@ee.dane.test") && l.contains("tls_policy=\"dane\""))
        .count();
    assert_eq!(dane_lines, 1, "authenticated by DANE from the DS anchor");

    // doctor's readiness check: the validating resolver is ready; the other is not,
    // unless the anchors validate here.
    use mailspool_deliver::dnssec::{Finding, readiness};
    let ready = |f: &[Finding], what: &str| {
        f.iter()
            .any(|f| matches!(f, Finding::Ok(t) if t.contains(what)))
    };
    let f = readiness(&settings(world.validating, None)).await;
    assert!(ready(&f, "DANE ready: the resolver"), "{f:?}");
    let f = readiness(&settings(world.iterating, None)).await;
    assert!(
        f.iter()
            .any(|f| matches!(f, Finding::Fix(t, _) if t.contains("does not validate"))),
        "{f:?}"
    );
    let f = readiness(&settings(
        world.iterating,
        Some(world.anchor_ds_file.clone()),
    ))
    .await;
    assert!(ready(&f, "validates here"), "{f:?}");

    // The same non-validating resolver trusted for its AD bit: it passes signatures
    // without ever setting AD, so signed answers are indeterminate (RFC 7672 §2.1.1):
    // signed domains wait, forged or not; unsigned ones deliver as usual.
    let stub = mailspool_deliver::dnssec::StubResolver::new(Some(world.iterating)).unwrap();
    let answer = stub
        .query("ee.dane.test", hickory_proto::rr::RecordType::MX)
        .await
        .unwrap();
    assert!(!answer.ad && answer.signed, "{answer:?}");
    assert_eq!(stub.validates().await, Some(false));
    let spool = common::spool(&dir.path().join("unvalidated"));
    for to in ["w@forged.dane.test", "w@ee.dane.test", "w@plain.test"] {
        queue(&spool, "a@sender.test", &[to], MSG);
    }
    let results = pass(settings(world.iterating, None), spool.clone()).await;
    let outcome = |to: &str| result(&results, to);
    let forged = outcome("w@forged.dane.test");
    assert_eq!(forged.outcome, Outcome::Deferred, "{results:?}");
    assert!(
        forged.reply.contains("does not validate DNSSEC"),
        "{forged:?}"
    );
    assert!(!rx.got("plain").contains(&"w@forged.dane.test".to_owned()));
    assert_eq!(outcome("w@ee.dane.test").outcome, Outcome::Deferred);
    assert_eq!(
        outcome("w@plain.test").outcome,
        Outcome::Delivered,
        "{results:?}"
    );
}
