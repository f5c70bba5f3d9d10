//! Routing through a real (in-process) DNS server, and TLS to the sink: MX preference,
//! implicit MX, null MX, NXDOMAIN, SERVFAIL, relay failover, STARTTLS policies.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use common::*;
use mailspool_deliver::route::route;
use mailspool_deliver::{
    DeliverConfig, Engine, HickoryDns, HostPort, Outcome, PassOptions, Resolve,
};
use mailspool_smtp::TlsPolicy;

const MSG: &str = "From: a@sender.test\nSubject: hi\n\nbody\n";
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn key(name: &str, kind: &str) -> (String, String) {
    (name.to_owned(), kind.to_owned())
}

async fn dns() -> Arc<HickoryDns> {
    let mut t = HashMap::new();
    t.insert(
        key("mx.test", "MX"),
        Answer::Mx(vec![
            (20, "backup.mx.test".into()),
            (10, "primary.mx.test".into()),
        ]),
    );
    t.insert(key("primary.mx.test", "A"), Answer::A(vec![LOCAL]));
    t.insert(
        key("backup.mx.test", "A"),
        Answer::A(vec![Ipv4Addr::new(127, 0, 0, 2)]),
    );
    t.insert(key("implicit.test", "A"), Answer::A(vec![LOCAL]));
    t.insert(key("nullmx.test", "MX"), Answer::Mx(vec![(0, ".".into())]));
    t.insert(key("gone.test", "MX"), Answer::NxDomain);
    t.insert(key("broken.test", "MX"), Answer::ServFail);
    let addr = dns_server(t).await;
    Arc::new(HickoryDns::new(Some(addr)).unwrap())
}

#[tokio::test]
async fn mx_preference_implicit_mx_null_mx_nxdomain_servfail() {
    let dns = dns().await;
    let cfg = DeliverConfig {
        mx_port: 2525,
        ..DeliverConfig::default()
    };
    let t = route("mx.test", &cfg, dns.as_ref()).await.unwrap();
    let hosts: Vec<&str> = t.iter().map(|t| t.host.as_str()).collect();
    assert_eq!(
        hosts,
        ["primary.mx.test", "backup.mx.test"],
        "preference order"
    );
    assert_eq!(t[0].addrs[0].to_string(), "127.0.0.1:2525");

    let t = route("implicit.test", &cfg, dns.as_ref()).await.unwrap();
    assert_eq!(t[0].host, "implicit.test", "implicit MX");

    let e = route("nullmx.test", &cfg, dns.as_ref()).await.unwrap_err();
    assert!(e.permanent && e.status == "5.1.10", "{e:?}");
    let e = route("gone.test", &cfg, dns.as_ref()).await.unwrap_err();
    assert!(e.permanent && e.status == "5.1.2", "{e:?}");
    let e = route("broken.test", &cfg, dns.as_ref()).await.unwrap_err();
    assert!(!e.permanent, "SERVFAIL is temporary: {e:?}");
}

#[tokio::test]
async fn delivers_to_the_mx_and_bounces_null_mx() {
    let sink = Sink::start(Script::default()).await;
    let dns: Arc<dyn Resolve> = dns().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@mx.test"], MSG);
    queue(&spool, "a@sender.test", &["y@nullmx.test"], MSG);
    queue(&spool, "a@sender.test", &["z@broken.test"], MSG);
    let cfg = DeliverConfig {
        hostname: "mailspool.test".into(),
        mx_port: sink.addr.port(),
        mx_tls: TlsPolicy::None,
        timeouts: quick_timeouts(),
        ..DeliverConfig::default()
    };
    let engine = Engine::new(spool.clone(), cfg, dns).unwrap();
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(
        (
            r.count(Outcome::Delivered),
            r.count(Outcome::Failed),
            r.count(Outcome::Deferred)
        ),
        (1, 1, 1),
        "{:?}",
        r.results
    );
    assert_eq!(sink.received()[0].to, ["x@mx.test"]);
    let q = queued(&spool);
    assert!(q.contains(&(1, "z@broken.test".to_owned())), "{q:?}");
    assert!(
        q.contains(&(0, "a@sender.test".to_owned())),
        "DSN queued: {q:?}"
    );
}

#[tokio::test]
async fn relay_hosts_fail_over_in_order() {
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // closed again: refused
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@anywhere.test"], MSG);
    let cfg = DeliverConfig {
        relayhosts: vec![
            HostPort {
                host: "127.0.0.1".into(),
                port: down.port(),
            },
            HostPort {
                host: "127.0.0.1".into(),
                port: sink.addr.port(),
            },
        ],
        relay_tls: TlsPolicy::None,
        timeouts: quick_timeouts(),
        ..DeliverConfig::default()
    };
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn starttls_opportunistic_and_required() {
    let (tls, pem) = tls_server("127.0.0.1");
    let sink = Sink::start(Script {
        tls: Some(tls),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());

    // Opportunistic: encrypted, certificate not checked.
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let mut cfg = config(&[("one.test", sink.addr)]);
    cfg.mx_tls = TlsPolicy::Opportunistic;
    engine(spool.clone(), cfg.clone())
        .run_pass(&PassOptions::default())
        .await
        .unwrap();
    assert!(sink.received()[0].tls, "STARTTLS was used");

    // Required with an untrusted certificate: not sent, retried later.
    queue(&spool, "a@sender.test", &["y@one.test"], MSG);
    cfg.mx_tls = TlsPolicy::Required;
    let r = engine(spool.clone(), cfg.clone())
        .run_pass(&PassOptions::default())
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1, "{:?}", r.results);
    assert!(r.results[0].reply.contains("TLS"), "{:?}", r.results);

    // Required with the CA trusted: sent.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    cfg.tls_ca_file = Some(ca);
    let r = engine(spool.clone(), cfg)
        .run_pass(&PassOptions {
            selection: mailspool_deliver::Selection::All,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    assert_eq!(sink.received().len(), 2);
    assert!(sink.received()[1].tls);
}

#[tokio::test]
async fn required_tls_without_starttls_defers() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let mut cfg = config(&[("one.test", sink.addr)]);
    cfg.mx_tls = TlsPolicy::Required;
    let r = engine(spool.clone(), cfg)
        .run_pass(&PassOptions::default())
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1);
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn relay_auth_under_required_tls() {
    let (tls, pem) = tls_server("127.0.0.1");
    let sink = Sink::start(Script {
        tls: Some(tls),
        auth: Some(("app".into(), "s3cret".into())),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    queue(&spool, "a@sender.test", &["x@anywhere.test"], MSG);
    let mut cfg = DeliverConfig {
        relayhosts: vec![HostPort {
            host: "127.0.0.1".into(),
            port: sink.addr.port(),
        }],
        relay_tls: TlsPolicy::Required,
        relay_auth: Some(mailspool_smtp::Credentials {
            username: "app".into(),
            password: "wrong".into(),
        }),
        tls_ca_file: Some(ca),
        timeouts: quick_timeouts(),
        ..DeliverConfig::default()
    };
    let r = engine(spool.clone(), cfg.clone())
        .run_pass(&PassOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.count(Outcome::Deferred),
        1,
        "a refused password is a temporary failure"
    );
    assert!(r.results[0].reply.contains("535"), "{:?}", r.results);
    cfg.relay_auth = Some(mailspool_smtp::Credentials {
        username: "app".into(),
        password: "s3cret".into(),
    });
    let r = engine(spool.clone(), cfg)
        .run_pass(&PassOptions {
            selection: mailspool_deliver::Selection::All,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    assert!(sink.received()[0].tls);
}

#[test]
fn addresses_are_tried_ipv6_first_then_alternating() {
    use mailspool_deliver::route::happy_order;
    use std::net::IpAddr;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let order = happy_order(vec![
        ip("192.0.2.1"),
        ip("192.0.2.2"),
        ip("192.0.2.3"),
        ip("2001:db8::1"),
        ip("2001:db8::2"),
    ]);
    assert_eq!(
        order,
        [
            ip("2001:db8::1"),
            ip("192.0.2.1"),
            ip("2001:db8::2"),
            ip("192.0.2.2"),
            ip("192.0.2.3")
        ]
    );
}

/// An address whose SYNs are dropped (a listener whose backlog is full): what a
/// blackholed IPv6 route looks like to a connecting client.
async fn blackhole(
    addr: std::net::SocketAddr,
) -> (tokio::net::TcpListener, Vec<tokio::task::JoinHandle<()>>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(addr).unwrap();
    let listener = sock.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        fillers.push(tokio::spawn(async move {
            if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                drop(s);
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    (listener, fillers)
}

#[tokio::test]
async fn a_silent_first_address_costs_a_quarter_second_not_a_timeout() {
    let sink = Sink::start(Script::default()).await;
    let port = sink.addr.port();
    let silent: std::net::SocketAddr = format!("127.0.0.2:{port}").parse().unwrap();
    let (_hole, fillers) = blackhole(silent).await;
    let mut t = HashMap::new();
    t.insert(
        key("two.test", "MX"),
        Answer::Mx(vec![(10, "mx.two.test".into())]),
    );
    t.insert(
        key("mx.two.test", "A"),
        Answer::A(vec![Ipv4Addr::new(127, 0, 0, 2), LOCAL]),
    );
    let dns: Arc<dyn Resolve> = Arc::new(HickoryDns::new(Some(dns_server(t).await)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@two.test"], MSG);
    let mut timeouts = quick_timeouts();
    timeouts.connect = std::time::Duration::from_secs(5);
    let cfg = DeliverConfig {
        hostname: "mailspool.test".into(),
        mx_port: port,
        mx_tls: TlsPolicy::None,
        mta_sts: false,
        timeouts,
        ..DeliverConfig::default()
    };
    let engine = Engine::new(spool.clone(), cfg, dns).unwrap();
    let started = std::time::Instant::now();
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    assert!(
        took < std::time::Duration::from_secs(2),
        "took {took:?}: the second address waited for the first's timeout"
    );
    for f in fillers {
        f.abort();
    }
}
