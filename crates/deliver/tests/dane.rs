//! DANE against a DNSSEC-signed zone served in-process (hickory-server signs it; the
//! resolver trusts the zone's key): DANE-EE and DANE-TA records that match deliver over
//! TLS; a record that matches nothing defers; a host without TLSA records in the signed
//! zone gets opportunistic TLS; TLSA records whose signatures do not validate defer.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hickory_proto::dnssec::crypto::Ed25519SigningKey;
use hickory_proto::dnssec::rdata::DNSKEY;
use hickory_proto::dnssec::{DnssecSigner, SigningKey};
use hickory_proto::rr::rdata::{A, MX, NS, SOA, TLSA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::dnssec::NxProofKind;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use mailspool_deliver::dnssec::AnchorFile;
use mailspool_deliver::{HickoryDns, Outcome, PassOptions, Resolve, Selection};

const MSG: &str = "From: a@sender.test\nSubject: hi\n\nhello\n";

fn all() -> PassOptions {
    PassOptions {
        selection: Selection::All,
        ..Default::default()
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The zone `dane.test.`, signed; returns the DNS server and the trust anchor.
async fn signed_zone(
    records: Vec<(String, RData)>,
    tamper: Option<&str>,
) -> (std::net::SocketAddr, AnchorFile) {
    let origin = Name::from_ascii("dane.test.").unwrap();
    let mut zone = InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
        origin.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
        Some(NxProofKind::Nsec),
    );
    let ns = Name::from_ascii("ns.dane.test.").unwrap();
    zone.upsert_mut(
        Record::from_rdata(
            origin.clone(),
            300,
            RData::SOA(SOA::new(
                ns.clone(),
                Name::from_ascii("hostmaster.dane.test.").unwrap(),
                1,
                3600,
                600,
                86400,
                300,
            )),
        ),
        1,
    );
    zone.upsert_mut(
        Record::from_rdata(origin.clone(), 300, RData::NS(NS(ns.clone()))),
        1,
    );
    zone.upsert_mut(
        Record::from_rdata(ns, 300, RData::A(A(Ipv4Addr::LOCALHOST))),
        1,
    );
    for (name, data) in records {
        zone.upsert_mut(
            Record::from_rdata(Name::from_ascii(&name).unwrap(), 300, data),
            1,
        );
    }
    let pkcs8 = Ed25519SigningKey::generate_pkcs8().unwrap();
    let key = Ed25519SigningKey::from_pkcs8(&pkcs8).unwrap();
    let public = key.to_public_key().unwrap();
    let signer = DnssecSigner::new(
        DNSKEY::from_key(&public),
        Box::new(key),
        origin.clone(),
        Duration::from_secs(86400),
    );
    zone.add_zone_signing_key_mut(signer).unwrap();
    zone.secure_zone_mut().unwrap();
    if let Some(name) = tamper {
        // Change a TLSA record's data after signing, keeping its signature: bogus.
        let name = LowerName::from(Name::from_ascii(name).unwrap());
        for (key, set) in zone.records_get_mut().iter_mut() {
            if key.name == name && key.record_type == RecordType::TLSA {
                let mut changed = (**set).clone();
                let records: Vec<Record> = changed
                    .records_without_rrsigs()
                    .map(|r| {
                        let mut r = r.clone();
                        if let RData::TLSA(t) = &r.data {
                            let mut data = t.cert_data.clone();
                            data[0] ^= 0xff;
                            r.data =
                                RData::TLSA(TLSA::new(t.cert_usage, t.selector, t.matching, data));
                        }
                        r
                    })
                    .collect();
                changed.set_records(records);
                *set = Arc::new(changed);
            }
        }
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(origin.clone()), vec![Arc::new(zone)]);
    // An unsigned zone whose MX names a host of the signed one.
    let other = Name::from_ascii("other.test.").unwrap();
    let mut plain =
        InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::empty(
            other.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
            None,
        );
    plain.upsert_mut(
        Record::from_rdata(
            other.clone(),
            300,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.other.test.").unwrap(),
                Name::from_ascii("hostmaster.other.test.").unwrap(),
                1,
                3600,
                600,
                86400,
                300,
            )),
        ),
        1,
    );
    plain.upsert_mut(
        Record::from_rdata(other.clone(), 300, mx("mx-wrong.dane.test.")),
        1,
    );
    catalog.upsert(LowerName::from(other), vec![Arc::new(plain)]);
    // UDP and TCP on one port: the UDP port may be another test's TCP port, so try
    // again until both are free.
    let (udp, tcp, addr) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            break (udp, tcp, addr);
        }
    };
    let mut server = hickory_server::Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 65_535);
    tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    // The zone's key as a `dnssec_trust_anchors` file has it.
    let line = format!("dane.test. IN DNSKEY {}\n", DNSKEY::from_key(&public));
    (addr, AnchorFile::parse(&line).unwrap())
}

fn tlsa(usage: u8, selector: u8, data: Vec<u8>) -> RData {
    RData::TLSA(TLSA::new(usage.into(), selector.into(), 1.into(), data))
}

fn mx(host: &str) -> RData {
    RData::MX(MX::new(10, Name::from_ascii(host).unwrap()))
}

fn local() -> RData {
    RData::A(A(Ipv4Addr::LOCALHOST))
}

#[tokio::test]
async fn tlsa_records_that_validate_decide_the_certificate() {
    let ca = TestCa::new();
    let (ee_tls, ee_spki) = self_signed("mx-ee.dane.test");
    let ee_sink = Sink::start(Script {
        tls: Some(ee_tls),
        ..Default::default()
    })
    .await;
    let ta_sink = Sink::start(Script {
        tls: Some(ca.server_with_chain("mx-ta.dane.test")),
        ..Default::default()
    })
    .await;
    let (ee, ta) = (ee_sink.addr.port(), ta_sink.addr.port());
    let mut records = Vec::new();
    for (domain, host) in [
        ("ee", "mx-ee"),
        ("ta", "mx-ta"),
        ("wrong", "mx-wrong"),
        ("plain", "mx-plain"),
        ("bogus", "mx-bogus"),
    ] {
        records.push((
            format!("{domain}.dane.test."),
            mx(&format!("{host}.dane.test.")),
        ));
        records.push((format!("{host}.dane.test."), local()));
    }
    records.push((
        format!("_{ee}._tcp.mx-ee.dane.test."),
        tlsa(3, 1, sha256(&ee_spki)),
    ));
    records.push((
        format!("_{ta}._tcp.mx-ta.dane.test."),
        tlsa(2, 0, sha256(&ca.der)),
    ));
    records.push((
        format!("_{ee}._tcp.mx-wrong.dane.test."),
        tlsa(3, 1, vec![7; 32]),
    ));
    records.push((
        format!("_{ee}._tcp.mx-bogus.dane.test."),
        tlsa(3, 1, sha256(&ee_spki)),
    ));
    let bogus_name = format!("_{ee}._tcp.mx-bogus.dane.test.");
    let (dns, anchors) = signed_zone(records, Some(&bogus_name)).await;

    let engine_for = |port: u16, spool: Arc<mailspool_spool::Spool>| {
        let mut cfg = config(&[]);
        cfg.mx_port = port;
        cfg.mx_tls = mailspool_smtp::TlsPolicy::Opportunistic;
        cfg.dane = true;
        cfg.mta_sts = false;
        let dns: Arc<dyn Resolve> =
            Arc::new(HickoryDns::with_trust_anchors(Some(dns), anchors.clone()).unwrap());
        mailspool_deliver::Engine::new(spool, cfg, dns).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir.path().join("a"));
    for to in [
        "x@ee.dane.test",
        "x@wrong.dane.test",
        "x@plain.dane.test",
        "x@bogus.dane.test",
        "x@other.test",
    ] {
        queue(&spool, "a@sender.test", &[to], MSG);
    }
    let dane_before = mailspool_metrics::global()
        .outbound_policy
        .get_or_create(&mailspool_metrics::PolicyLabel { policy: "dane" })
        .get();
    let r = engine_for(ee, spool.clone())
        .run_pass(&all())
        .await
        .unwrap();
    let result = |to: &str| r.results.iter().find(|x| x.to == to).unwrap().clone();
    assert_eq!(
        result("x@ee.dane.test").outcome,
        Outcome::Delivered,
        "{:?}",
        r.results
    );
    assert_eq!(
        result("x@plain.dane.test").outcome,
        Outcome::Delivered,
        "no TLSA: opportunistic"
    );
    // The MX of other.test is not signed: DANE does not apply (RFC 7672 §2.2.1), even
    // though the host it names has validated TLSA records (which this server's
    // certificate does not match).
    assert_eq!(
        result("x@other.test").outcome,
        Outcome::Delivered,
        "{:?}",
        r.results
    );
    let wrong = result("x@wrong.dane.test");
    assert_eq!(wrong.outcome, Outcome::Deferred, "{wrong:?}");
    let bogus = result("x@bogus.dane.test");
    assert_eq!(bogus.outcome, Outcome::Deferred, "{bogus:?}");
    assert!(bogus.reply.contains("DANE"), "{bogus:?}");
    let got = ee_sink.received();
    let mut to: Vec<String> = got.iter().flat_map(|g| g.to.clone()).collect();
    to.sort();
    assert_eq!(to, ["x@ee.dane.test", "x@other.test", "x@plain.dane.test"]);
    assert!(got.iter().all(|g| g.tls));
    let wrong_node = spool
        .scan()
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.name.to == "x@wrong.dane.test")
        .unwrap();
    let err = spool.last_error(&wrong_node.name).unwrap();
    assert!(err.contains("TLSA"), "{err}");
    let dane_after = mailspool_metrics::global()
        .outbound_policy
        .get_or_create(&mailspool_metrics::PolicyLabel { policy: "dane" })
        .get();
    assert!(dane_after > dane_before, "counted as a DANE delivery");

    // DANE-TA: the chain up to the CA the record names, and the MX host's name.
    let spool_ta = common::spool(&dir.path().join("b"));
    queue(&spool_ta, "a@sender.test", &["y@ta.dane.test"], MSG);
    let r = engine_for(ta, spool_ta.clone())
        .run_pass(&all())
        .await
        .unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    assert!(ta_sink.received()[0].tls);
}
