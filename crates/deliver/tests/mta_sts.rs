//! MTA-STS against an in-process HTTPS policy server (certificates from a test CA) and
//! the in-process DNS server: enforce with a listed MX delivers over verified TLS; an
//! unlisted MX or a bad certificate defers; testing mode delivers; a cached policy
//! keeps protecting when the policy server is gone.

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::*;
use mailspool_deliver::{HickoryDns, Outcome, PassOptions, Resolve, Selection};

const MSG: &str = "From: a@sender.test\nSubject: hi\n\nhello\n";

fn all() -> PassOptions {
    PassOptions {
        selection: Selection::All,
        ..Default::default()
    }
}

struct Case {
    dir: tempfile::TempDir,
    engine: Arc<mailspool_deliver::Engine>,
    spool: Arc<mailspool_spool::Spool>,
}

async fn case(
    ca: &TestCa,
    sink: &Sink,
    https: SocketAddr,
    table: HashMap<(String, String), Answer>,
    dir: Option<tempfile::TempDir>,
) -> Case {
    let dns = dns_server(table).await;
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let spool = spool(&dir.path().join("spool"));
    let mut cfg = config(&[]);
    cfg.mx_port = sink.addr.port();
    cfg.mta_sts_port = https.port();
    cfg.tls_ca_file = Some(ca_file);
    cfg.mx_tls = mailspool_smtp::TlsPolicy::Opportunistic;
    let dns: Arc<dyn Resolve> = Arc::new(HickoryDns::new(Some(dns)).unwrap());
    let engine = mailspool_deliver::Engine::new(spool.clone(), cfg, dns).unwrap();
    Case { dir, engine, spool }
}

fn zone(domain: &str, mx: &str, sts: Option<&str>) -> HashMap<(String, String), Answer> {
    let local = Answer::A(vec![Ipv4Addr::LOCALHOST]);
    let mut t = HashMap::from([
        (
            (domain.into(), "MX".into()),
            Answer::Mx(vec![(10, mx.into())]),
        ),
        ((mx.into(), "A".into()), local.clone()),
        ((format!("mta-sts.{domain}"), "A".into()), local),
    ]);
    if let Some(id) = sts {
        t.insert(
            (format!("_mta-sts.{domain}"), "TXT".into()),
            Answer::Txt(vec![vec![format!("v=STSv1; id={id};")]]),
        );
    }
    t
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

#[tokio::test]
async fn enforce_delivers_only_to_listed_mx_hosts_over_verified_tls() {
    let ca = TestCa::new();
    let sink = Sink::start(Script {
        tls: Some(ca.server("mx.good.test")),
        ..Default::default()
    })
    .await;
    let https = policy_server(
        "127.0.0.1:0",
        &ca,
        HashMap::from([
            (
                "mta-sts.good.test".into(),
                policy("enforce", "mx.good.test"),
            ),
            ("mta-sts.wild.test".into(), policy("enforce", "*.good.test")),
            ("mta-sts.bad.test".into(), policy("enforce", "mx.bad.test")),
        ]),
    )
    .await;
    let mut table = zone("good.test", "mx.good.test", Some("1"));
    // A wildcard policy listing *.good.test for a domain whose MX is mx.good.test.
    table.extend(zone("wild.test", "mx.good.test", Some("1")));
    // The MX (say, one an attacker put in DNS) is not in bad.test's policy.
    table.extend(zone("bad.test", "evil.attacker.test", Some("7")));
    let c = case(&ca, &sink, https, table, None).await;
    queue(&c.spool, "a@sender.test", &["x@good.test"], MSG);
    queue(&c.spool, "a@sender.test", &["y@wild.test"], MSG);
    queue(&c.spool, "a@sender.test", &["z@bad.test"], MSG);
    let before = mailspool_metrics::global()
        .outbound_policy
        .get_or_create(&mailspool_metrics::PolicyLabel { policy: "mta-sts" })
        .get();
    let r = c.engine.run_pass(&all()).await.unwrap();
    let outcome = |to: &str| r.results.iter().find(|x| x.to == to).unwrap();
    assert_eq!(
        outcome("x@good.test").outcome,
        Outcome::Delivered,
        "{:?}",
        r.results
    );
    assert_eq!(
        outcome("y@wild.test").outcome,
        Outcome::Delivered,
        "{:?}",
        r.results
    );
    let bad = outcome("z@bad.test");
    assert_eq!(bad.outcome, Outcome::Deferred);
    assert!(
        bad.reply.contains("4.7.5") && bad.reply.contains("MTA-STS"),
        "{bad:?}"
    );
    let got = sink.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|g| g.tls), "over TLS");
    let after = mailspool_metrics::global()
        .outbound_policy
        .get_or_create(&mailspool_metrics::PolicyLabel { policy: "mta-sts" })
        .get();
    assert!(after >= before + 2, "counted as mta-sts deliveries");
    // The policies are kept in the spool.
    let kept = std::fs::read_to_string(c.dir.path().join("spool/mta-sts/good.test")).unwrap();
    assert!(
        kept.contains("enforce") && kept.contains("mx.good.test"),
        "{kept}"
    );
}

#[tokio::test]
async fn enforce_defers_when_the_certificate_is_not_valid() {
    let ca = TestCa::new();
    // The MX host is listed, but its certificate is self-signed.
    let (self_signed, _) = tls_server("mx.good.test");
    let sink = Sink::start(Script {
        tls: Some(self_signed),
        ..Default::default()
    })
    .await;
    let https = policy_server(
        "127.0.0.1:0",
        &ca,
        HashMap::from([(
            "mta-sts.good.test".into(),
            policy("enforce", "mx.good.test"),
        )]),
    )
    .await;
    let c = case(
        &ca,
        &sink,
        https,
        zone("good.test", "mx.good.test", Some("1")),
        None,
    )
    .await;
    queue(&c.spool, "a@sender.test", &["x@good.test"], MSG);
    let r = c.engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1, "{:?}", r.results);
    assert!(sink.received().is_empty());
    let node = &c.spool.scan().unwrap().nodes[0];
    let err = c.spool.last_error(&node.name).unwrap();
    assert!(err.contains("TLS"), "{err}");

    // Without a policy the same server gets the mail (opportunistic TLS).
    let plain = case(
        &ca,
        &sink,
        https,
        zone("nopolicy.test", "mx.good.test", None),
        None,
    )
    .await;
    queue(&plain.spool, "a@sender.test", &["x@nopolicy.test"], MSG);
    let r = plain.engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
}

#[tokio::test]
async fn testing_mode_delivers_and_a_kept_policy_outlives_its_server() {
    let ca = TestCa::new();
    let sink = Sink::start(Script::default()).await;
    let https = policy_server(
        "127.0.0.1:0",
        &ca,
        HashMap::from([
            ("mta-sts.try.test".into(), policy("testing", "mx.try.test")),
            ("mta-sts.bad.test".into(), policy("enforce", "mx.bad.test")),
        ]),
    )
    .await;
    let mut table = zone("try.test", "other.try.test", Some("1"));
    table.extend(zone("bad.test", "evil.attacker.test", Some("1")));
    let c = case(&ca, &sink, https, table.clone(), None).await;
    queue(&c.spool, "a@sender.test", &["x@try.test"], MSG);
    queue(&c.spool, "a@sender.test", &["z@bad.test"], MSG);
    let r = c.engine.run_pass(&all()).await.unwrap();
    let outcome = |to: &str| r.results.iter().find(|x| x.to == to).unwrap().outcome;
    assert_eq!(
        outcome("x@try.test"),
        Outcome::Delivered,
        "testing: delivered as usual"
    );
    assert_eq!(outcome("z@bad.test"), Outcome::Deferred);
    // A new engine on the same spool (a restart), the policy server unreachable and
    // the TXT record gone: the kept policy still refuses the unlisted MX.
    let dir = c.dir;
    drop(c.engine);
    let gone: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut no_txt = table;
    no_txt.remove(&("_mta-sts.bad.test".to_string(), "TXT".to_string()));
    let again = case(&ca, &sink, gone, no_txt, Some(dir)).await;
    for n in again.spool.scan().unwrap().nodes {
        again.spool.retry_now(&n).unwrap();
    }
    let r = again.engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1, "{:?}", r.results);
    assert!(r.results[0].reply.contains("MTA-STS"), "{:?}", r.results);
    assert_eq!(sink.received().len(), 1, "only the testing-mode message");
}
