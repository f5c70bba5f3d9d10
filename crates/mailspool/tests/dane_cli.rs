//! DANE as an operator configures and checks it: `dane = true`, `resolver` pointing at
//! a validating unbound (or a non-validating one with `dnssec_trust_anchors`), `send
//! --now -v` and `doctor`, against bind9's signed zones (the world of
//! deliver/tests/dane_world.rs).

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::process::{Command, Output, Stdio};

use common::dns_world::{Rec, World, Zones};
use common::{Script, Sink, self_signed};

fn mailspool(dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
        .env("MAILSPOOL_SPOOL", dir.join("spool"))
        .env("MAILSPOOL_CONFIG", dir.join("mailspool.toml"))
        .env_remove("MAILSPOOL_LOG")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

const MSG: &str = "From: a@sender.test\nSubject: dane\n\nhello\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_now_and_doctor_follow_the_validating_resolver() {
    if !common::dns_world::available() {
        return;
    }
    let (tls, spki) = self_signed("mx.dane.test");
    let sink = Sink::start_on(
        "127.0.20.31:0".parse().unwrap(),
        Script {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let port = sink.addr.port();
    let digest = hex(ring::digest::digest(&ring::digest::SHA256, &spki).as_ref());
    let world = World::start(Zones {
        dane: vec![
            Rec("ok.dane.test.".into(), "MX", "10 mx.dane.test.".into()),
            Rec(
                "wrong.dane.test.".into(),
                "MX",
                "10 mx-wrong.dane.test.".into(),
            ),
            Rec("mx.dane.test.".into(), "A", "127.0.20.31".into()),
            Rec("mx-wrong.dane.test.".into(), "A", "127.0.20.31".into()),
            Rec(
                format!("_{port}._tcp.mx.dane.test."),
                "TLSA",
                format!("3 1 1 {digest}"),
            ),
            Rec(
                format!("_{port}._tcp.mx-wrong.dane.test."),
                "TLSA",
                format!("3 1 1 {}", "ab".repeat(32)),
            ),
        ],
        plain: vec![
            Rec("plain.test.".into(), "MX", "10 mx.plain.test.".into()),
            Rec("mx.plain.test.".into(), "A", "127.0.20.31".into()),
        ],
        altered: vec![],
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let configure = |resolver: std::net::SocketAddr, anchors: bool| {
        let mut c = format!("dane = true\nresolver = \"{resolver}\"\nmx_port = {port}\n");
        if anchors {
            c.push_str(&format!(
                "dnssec_trust_anchors = \"{}\"\n",
                world.anchor_file.display()
            ));
        }
        std::fs::write(d.join("mailspool.toml"), c).unwrap();
    };
    let run = |args: &[&str]| tokio::task::block_in_place(|| mailspool(d, args, MSG));

    configure(world.validating, false);
    let ok = run(&["send", "--now", "-v", "x@ok.dane.test"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(text(&ok).contains("tls_policy=\"dane\""), "{}", text(&ok));
    assert!(
        sink.received()
            .iter()
            .any(|m| m.tls && m.to == ["x@ok.dane.test"])
    );
    let doctor = run(&["doctor"]);
    assert!(
        text(&doctor).contains("DANE ready: the resolver"),
        "{}",
        text(&doctor)
    );
    // A certificate that matches no TLSA record is a temporary failure: the message is
    // accepted and queued for retry (exit 0, its id printed), with 4.7.5 said.
    let wrong = run(&["send", "--now", "x@wrong.dane.test"]);
    assert_eq!(wrong.status.code(), Some(0), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("queued for retry: 4.7.5"),
        "{}",
        text(&wrong)
    );
    assert!(
        !sink
            .received()
            .iter()
            .any(|m| m.to == ["x@wrong.dane.test"]),
        "nothing sent to a host that failed DANE"
    );
    let plain = run(&["send", "--now", "-v", "x@plain.test"]);
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain));
    assert!(
        text(&plain).contains("not DNSSEC-signed"),
        "says why DANE did not apply: {}",
        text(&plain)
    );

    // (This spool has no maildrop/, one thing to fix that has nothing to do with DANE.)
    assert!(
        text(&doctor).contains("1 thing to fix"),
        "{}",
        text(&doctor)
    );
    // A resolver that does not validate: doctor says DANE can never apply.
    configure(world.iterating, false);
    let doctor = run(&["doctor"]);
    assert!(
        text(&doctor).contains("2 things to fix"),
        "{}",
        text(&doctor)
    );
    assert!(
        text(&doctor).contains("does not validate"),
        "{}",
        text(&doctor)
    );
    // With the root's key as dnssec_trust_anchors it validates here instead.
    configure(world.iterating, true);
    let doctor = run(&["doctor"]);
    assert!(
        text(&doctor).contains("validates here from dnssec_trust_anchors"),
        "{}",
        text(&doctor)
    );
    let ok = run(&["send", "--now", "-v", "y@ok.dane.test"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok));
    assert!(text(&ok).contains("tls_policy=\"dane\""), "{}", text(&ok));
    let wrong = run(&["send", "--now", "y@wrong.dane.test"]);
    assert_eq!(wrong.status.code(), Some(0), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("queued for retry: 4.7.5"),
        "{}",
        text(&wrong)
    );

    // A trust anchor file that is not one is a configuration error, said at once.
    std::fs::write(d.join("bad.anchor"), "example. IN A 127.0.0.1\n").unwrap();
    std::fs::write(
        d.join("mailspool.toml"),
        format!(
            "dane = true\ndnssec_trust_anchors = \"{}\"\n",
            d.join("bad.anchor").display()
        ),
    )
    .unwrap();
    let bad = run(&["send", "z@ok.dane.test"]);
    assert_eq!(bad.status.code(), Some(78), "{}", text(&bad));
    assert!(
        text(&bad).contains("dnssec_trust_anchors"),
        "{}",
        text(&bad)
    );
}
