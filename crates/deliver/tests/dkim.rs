//! DKIM signing, checked by an independent verifier: dkimpy (PyPI), with its DNS
//! look-up answered from the test's own record. Without dkimpy the test is skipped on a
//! developer's machine; with CI=true it fails (.ci/run installs it).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use mailspool_deliver::dkim::{Algorithm, DkimKey, generate};
use mailspool_deliver::{Outcome, PassOptions, Selection};

fn all() -> PassOptions {
    PassOptions {
        selection: Selection::All,
        ..Default::default()
    }
}

fn have_dkimpy() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs dkimpy and PyNaCl (installed by .ci/run)"
        );
        eprintln!("skipped: dkimpy not installed (pip install dkimpy pynacl)");
    }
    ok
}

/// dkimpy's verdict on `message` (CRLF line ends), the DNS answering only `record`
/// at `name`.
fn dkimpy_verifies(message: &[u8], name: &str, record: &str) -> bool {
    let script = r#"
import sys, dkim
name, record = sys.argv[1].encode(), sys.argv[2].encode()
def dnsfunc(q, timeout=5):
    return record if q.rstrip(b".").lower() == name.lower() else None
msg = sys.stdin.buffer.read()
sys.exit(0 if dkim.verify(msg, dnsfunc=dnsfunc) else 1)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, name, record])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    child.wait().unwrap().success()
}

fn key(dir: &Path, domain: &str, selector: &str, algorithm: Algorithm) -> Arc<DkimKey> {
    let path = dir.join(format!("{selector}.{domain}.pem"));
    std::fs::write(&path, generate(algorithm).unwrap()).unwrap();
    Arc::new(DkimKey::load(domain, selector, &path, Some(algorithm), None).unwrap())
}

/// The received message with CRLF line ends (the sink stores LF).
fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    for &b in data {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn signature_fields(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\n\n").next().unwrap_or("");
    let mut fields = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                let last: &mut String = last;
                last.push('\n');
                last.push_str(line);
            }
        } else {
            fields.push(line.to_owned());
        }
    }
    fields
        .into_iter()
        .filter(|f| f.to_ascii_lowercase().starts_with("dkim-signature:"))
        .collect()
}

/// Folded, 8-bit and duplicate headers, a dot line, trailing blank lines and
/// whitespace the relaxed canonicalization must fold the same way the verifier does.
const MESSAGE: &str = "From: Ann Example <ann@example.org>\n\
To: bob@dest.test,\n\
\x20carol@dest.test\n\
Subject: =?utf-8?q?caf=C3=A9?= and a long subject that is folded\n\
\tover two lines\n\
Received: from a (a.example) by b\n\
Received: from c (c.example) by d\n\
X-Note: caf\u{e9} 8-bit \u{1F600}\n\
Comments: one\n\
Comments: two\n\
Date: Fri, 27 Nov 2026 08:00:00 +0000\n\
Message-ID: <dkim-test@example.org>\n\
MIME-Version: 1.0\n\
Content-Type: text/plain; charset=utf-8\n\
Content-Transfer-Encoding: 8bit\n\
\n\
Hello   Bob,  \n\
.a line that starts with a dot\n\
8-bit: na\u{ef}ve r\u{e9}sum\u{e9}\n\
\n\
\n";

#[tokio::test]
async fn signatures_verify_with_dkimpy_for_rsa_and_ed25519() {
    if !have_dkimpy() {
        return;
    }
    for algorithm in [Algorithm::Rsa, Algorithm::Ed25519] {
        let sink = Sink::start(Script::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = spool(&dir.path().join("spool"));
        let mut cfg = config(&[("dest.test", sink.addr)]);
        let k = key(dir.path(), "example.org", "sel1", algorithm);
        cfg.dkim = vec![k.clone()];
        queue(&spool, "ann@example.org", &["bob@dest.test"], MESSAGE);
        let engine = engine(spool.clone(), cfg);
        let r = engine.run_pass(&all()).await.unwrap();
        assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
        let got = sink.received();
        let data = crlf(&got[0].data);
        let sigs = signature_fields(&got[0].data);
        assert_eq!(sigs.len(), 1, "{algorithm}: one signature: {sigs:?}");
        let sig = sigs[0].to_ascii_lowercase();
        let a = match algorithm {
            Algorithm::Rsa => "a=rsa-sha256",
            Algorithm::Ed25519 => "a=ed25519-sha256",
        };
        assert!(sig.contains(a), "{sig}");
        assert!(sig.contains("c=relaxed/relaxed"), "{sig}");
        assert!(sig.contains("d=example.org"), "{sig}");
        assert!(sig.contains("s=sel1"), "{sig}");
        // From signed twice: a From added later breaks the signature.
        let h: String = sig
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        assert!(h.matches("from").count() >= 2, "From oversigned: {h}");
        assert!(
            dkimpy_verifies(&data, &k.record_name(), &k.record()),
            "{algorithm}: dkimpy does not verify:\n{}",
            String::from_utf8_lossy(&data)
        );
        // The verifier is checking: each change after signing fails it.
        let body_changed = String::from_utf8_lossy(&data).replace("Hello   Bob", "Hello   Eve");
        assert!(!dkimpy_verifies(
            body_changed.as_bytes(),
            &k.record_name(),
            &k.record()
        ));
        let subject_changed =
            String::from_utf8_lossy(&data).replace("and a long subject", "and a new subject");
        assert!(!dkimpy_verifies(
            subject_changed.as_bytes(),
            &k.record_name(),
            &k.record()
        ));
        let second_from = [b"From: mallory@evil.test\r\n".as_slice(), &data].concat();
        assert!(!dkimpy_verifies(
            &second_from,
            &k.record_name(),
            &k.record()
        ));
        // Another key published under the name: not verified.
        let other = key(dir.path(), "example.org", "sel2", algorithm);
        assert!(!dkimpy_verifies(&data, &k.record_name(), &other.record()));
    }
}

#[tokio::test]
async fn a_message_is_signed_once_for_every_recipient_and_retry() {
    if !have_dkimpy() {
        return;
    }
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("later@slow.test".into(), "451 4.7.1 greylisted".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir.path().join("spool"));
    let mut cfg = config(&[("dest.test", sink.addr), ("slow.test", sink.addr)]);
    let k = key(dir.path(), "example.org", "s", Algorithm::Ed25519);
    cfg.dkim = vec![k.clone()];
    queue(
        &spool,
        "ann@example.org",
        &["bob@dest.test", "later@slow.test"],
        MESSAGE,
    );
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1);
    assert_eq!(r.count(Outcome::Deferred), 1);
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("spool/dkim"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 1, "one signature kept while a node waits");
    // Two seconds on, the retry is accepted: it must carry the same signature (same t=).
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    sink.script().rcpt.clear();
    for n in spool.scan().unwrap().nodes {
        spool.retry_now(&n).unwrap();
    }
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    let got = sink.received();
    assert_eq!(got.len(), 2);
    let first = signature_fields(&got[0].data);
    let second = signature_fields(&got[1].data);
    assert_eq!(first.len(), 1);
    assert_eq!(first, second, "retries send the first signature");
    for g in &got {
        assert!(dkimpy_verifies(
            &crlf(&g.data),
            &k.record_name(),
            &k.record()
        ));
    }
    // The last node delivered: the signature is forgotten.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spool/dkim"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn the_key_follows_the_from_domain_and_signed_mail_is_not_signed_again() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir.path().join("spool"));
    let mut cfg = config(&[("dest.test", sink.addr)]);
    let org = key(dir.path(), "example.org", "org", Algorithm::Ed25519);
    let news = key(dir.path(), "news.example.org", "news", Algorithm::Ed25519);
    let mut fallback_key = DkimKey::load(
        "relay.test",
        "fb",
        &{
            let p = dir.path().join("fb.pem");
            std::fs::write(&p, generate(Algorithm::Ed25519).unwrap()).unwrap();
            p
        },
        None,
        None,
    )
    .unwrap();
    fallback_key.fallback = true;
    cfg.dkim = vec![org, news, Arc::new(fallback_key)];
    let msg = |from: &str, extra: &str| {
        format!("{extra}From: {from}\nSubject: t\nMessage-ID: <{from}>\n\nbody\n")
    };
    queue(&spool, "a@x", &["1@dest.test"], &msg("a@example.org", ""));
    queue(
        &spool,
        "a@x",
        &["2@dest.test"],
        &msg("b@deep.news.example.org", ""),
    );
    queue(
        &spool,
        "a@x",
        &["3@dest.test"],
        &msg("c@mail.example.org", ""),
    );
    queue(
        &spool,
        "a@x",
        &["4@dest.test"],
        &msg("d@elsewhere.test", ""),
    );
    queue(
        &spool,
        "a@x",
        &["5@dest.test"],
        &msg(
            "e@example.org",
            "DKIM-Signature: v=1; a=rsa-sha256; d=Example.ORG; s=old; b=abc; bh=def;\n h=from\n",
        ),
    );
    queue(
        &spool,
        "a@x",
        &["6@dest.test"],
        "Subject: no from at all\n\nbody\n",
    );
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 6, "{:?}", r.results);
    let by_rcpt = |rcpt: &str| {
        let got = sink.received();
        let g = got.iter().find(|g| g.to == [rcpt.to_string()]).unwrap();
        signature_fields(&g.data)
            .iter()
            .map(|s| {
                let s: String = s.split_whitespace().collect();
                s.split(';')
                    .find_map(|t| t.strip_prefix("d=").map(str::to_owned))
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(by_rcpt("1@dest.test"), ["example.org"]);
    assert_eq!(
        by_rcpt("2@dest.test"),
        ["news.example.org"],
        "the nearest parent"
    );
    assert_eq!(by_rcpt("3@dest.test"), ["example.org"]);
    assert_eq!(by_rcpt("4@dest.test"), ["relay.test"], "the fallback key");
    assert_eq!(by_rcpt("5@dest.test"), ["Example.ORG"], "not signed twice");
    assert!(by_rcpt("6@dest.test").is_empty(), "no From: not signed");
}

#[test]
fn keys_are_checked_when_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let ed = dir.path().join("ed.pem");
    std::fs::write(&ed, generate(Algorithm::Ed25519).unwrap()).unwrap();
    let rsa = dir.path().join("rsa.pem");
    std::fs::write(&rsa, generate(Algorithm::Rsa).unwrap()).unwrap();
    assert_eq!(
        DkimKey::load("example.org", "s", &ed, None, None)
            .unwrap()
            .algorithm(),
        Algorithm::Ed25519
    );
    let r = DkimKey::load("Example.ORG.", "s", &rsa, None, None).unwrap();
    assert_eq!(
        (r.algorithm(), r.domain.as_str()),
        (Algorithm::Rsa, "example.org")
    );
    assert!(
        r.record().starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"),
        "SPKI: {}",
        r.record()
    );
    let e = DkimKey::load("example.org", "s", &ed, Some(Algorithm::Rsa), None).unwrap_err();
    assert!(e.contains("algorithm"), "{e}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    assert!(DkimKey::load("example.org", "s", &junk, None, None).is_err());
    assert!(DkimKey::load("example.org", "bad selector", &ed, None, None).is_err());
    assert!(
        DkimKey::load("example.org", "s", &ed, None, Some(vec!["Subject".into()])).is_err(),
        "From must be signed"
    );
    let link = dir.path().join("link.pem");
    std::os::unix::fs::symlink(&ed, &link).unwrap();
    assert!(
        DkimKey::load("example.org", "s", &link, None, None).is_err(),
        "no symlinks"
    );
}

#[tokio::test]
async fn a_big_message_is_signed_while_streamed() {
    if !have_dkimpy() {
        return;
    }
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir.path().join("spool"));
    let mut cfg = config(&[("dest.test", sink.addr)]);
    let k = key(dir.path(), "example.org", "big", Algorithm::Rsa);
    cfg.dkim = vec![k.clone()];
    // Well past the 256 KiB read at once: signed in 64 KiB chunks, LF and CRLF mixed,
    // dot lines across chunk edges.
    let mut msg = String::from("From: a@example.org\nTo: b@dest.test\nSubject: big\n\n");
    let mut i = 0;
    while msg.len() < 700 * 1024 {
        msg.push_str(&format!(".line {i} with  spaces \t and a tab\r\n"));
        msg.push_str("plain line\n");
        i += 1;
    }
    queue(&spool, "a@example.org", &["b@dest.test"], &msg);
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    let got = sink.received();
    assert!(got[0].data.len() > 600 * 1024);
    let data = crlf(&got[0].data);
    assert!(dkimpy_verifies(&data, &k.record_name(), &k.record()));
    let mut cut = data.clone();
    cut.truncate(data.len() - 20);
    cut.extend_from_slice(b"\r\n");
    assert!(!dkimpy_verifies(&cut, &k.record_name(), &k.record()));
}

#[tokio::test]
async fn a_lone_recipient_deferred_keeps_its_signature_for_the_retry() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("later@slow.test".into(), "451 4.7.1 greylisted".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir.path().join("spool"));
    let mut cfg = config(&[("slow.test", sink.addr), ("fast.test", sink.addr)]);
    cfg.dkim = vec![key(dir.path(), "example.org", "s", Algorithm::Ed25519)];
    queue(&spool, "ann@example.org", &["later@slow.test"], MESSAGE);
    queue(&spool, "ann@example.org", &["now@fast.test"], MESSAGE);
    let engine = engine(spool.clone(), cfg);
    engine.run_pass(&all()).await.unwrap();
    // Delivered at once: its signature was never written to the spool. Deferred: kept.
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("spool/dkim"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "only the deferred message's signature is kept"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    sink.script().rcpt.clear();
    for n in spool.scan().unwrap().nodes {
        spool.retry_now(&n).unwrap();
    }
    engine.run_pass(&all()).await.unwrap();
    let got = sink.received();
    let retried = got.iter().find(|g| g.to == ["later@slow.test"]).unwrap();
    let sent = signature_fields(&retried.data);
    let kept_text = String::from_utf8(kept[0].clone())
        .unwrap()
        .replace("\r\n", "\n");
    assert_eq!(
        format!("{}\n", sent[0]),
        kept_text,
        "the retry sent the kept signature"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool/dkim"))
            .unwrap()
            .count(),
        0
    );
}

/// Whether Mail::DKIM (Perl, Debian's libmail-dkim-perl) says
/// `pass` for `message`, the key record answered for `name`.
fn mail_dkim_verifies(message: &[u8], name: &str, record: &str) -> Result<bool, String> {
    let script = r#"
use strict; use warnings;
use Mail::DKIM::Verifier; use Net::DNS;
my ($name, $record) = @ARGV;
{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ($domain, $type) = @_;
        return () unless lc($domain) eq lc($name) && $type eq 'TXT';
        return (Net::DNS::RR->new(name => $domain, type => 'TXT',
            txtdata => [ $record =~ /(.{1,250})/gs ]));
    };
}
my $dkim = Mail::DKIM::Verifier->new;
local $/; my $msg = <STDIN>;
$dkim->PRINT($msg); $dkim->CLOSE;
print $dkim->result_detail, "\n";
exit($dkim->result eq 'pass' ? 0 : 1);
"#;
    let mut child = Command::new("perl")
        .args(["-e", script, name, record])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if said.contains("Can't locate") {
        return Err(said);
    }
    eprintln!("Mail::DKIM: {said}");
    Ok(out.status.success())
}

fn have_mail_dkim() -> bool {
    let ok = Command::new("perl")
        .args(["-MMail::DKIM::Verifier", "-e1"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install libmail-dkim-perl"
        );
        eprintln!("skipped: Mail::DKIM (libmail-dkim-perl) is not installed");
    }
    ok
}

#[tokio::test]
async fn obsolete_header_syntax_is_signed_as_other_verifiers_read_it() {
    if !have_mail_dkim() {
        return;
    }
    // White space before the colon (RFC 5322 §4.5.3): Mail::DKIM and OpenDKIM read
    // these fields by their names.
    let message = "From: ann@example.org\nTo: bob@dest.test\nSubject : hi there\nDate\t: Fri, 04 Dec 2026 10:00:00 +0000\n\nbody line\n";
    // (Debian 12's Mail::DKIM has no Ed25519: "unsupported algorithm"; what is fixed
    // is the header the signer is fed, the same for every algorithm.)
    for algorithm in [Algorithm::Rsa] {
        let sink = Sink::start(Script::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let spool = spool(&dir.path().join("spool"));
        let mut cfg = config(&[("dest.test", sink.addr)]);
        let k = key(dir.path(), "example.org", "obs", algorithm);
        cfg.dkim = vec![k.clone()];
        queue(&spool, "ann@example.org", &["bob@dest.test"], message);
        let r = engine(spool.clone(), cfg).run_pass(&all()).await.unwrap();
        assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
        let data = crlf(&sink.received()[0].data);
        assert!(
            String::from_utf8_lossy(&data).contains("Subject : hi there\r\n"),
            "the message is sent as written"
        );
        assert_eq!(
            mail_dkim_verifies(&data, &k.record_name(), &k.record()),
            Ok(true),
            "{algorithm}:\n{}",
            String::from_utf8_lossy(&data)
        );
        // And it checks: the subject changed after signing fails.
        let changed = String::from_utf8_lossy(&data).replace("hi there", "hi thera");
        assert_eq!(
            mail_dkim_verifies(changed.as_bytes(), &k.record_name(), &k.record()),
            Ok(false)
        );
    }
}

/// dkimpy's verdict on the `idx`th DKIM-Signature of `message` alone.
fn dkimpy_verifies_nth(message: &[u8], idx: usize, name: &str, record: &str) -> bool {
    let script = r#"
import sys, dkim
name, record, idx = sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3])
def dnsfunc(q, timeout=5):
    return record if q.rstrip(b".").lower() == name.lower() else None
d = dkim.DKIM(sys.stdin.buffer.read())
sys.exit(0 if d.verify(idx=idx, dnsfunc=dnsfunc) else 1)
"#;
    let mut child = Command::new("python3")
        .args(["-c", script, name, record, &idx.to_string()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(message).unwrap();
    child.wait().unwrap().success()
}

/// Two `[[dkim]]` keys for one domain, RSA and Ed25519 (as docs/deliverability.md says to
/// publish): both sign (RFC 8463 §4), each signature verifies on its own, and a verifier
/// that knows only RSA (Debian 12's Mail::DKIM) still passes the message.
#[tokio::test]
async fn an_rsa_and_an_ed25519_key_for_one_domain_both_sign() {
    if !have_dkimpy() || !have_mail_dkim() {
        return;
    }
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir.path().join("spool"));
    let mut cfg = config(&[("dest.test", sink.addr)]);
    let rsa = key(dir.path(), "example.org", "r1", Algorithm::Rsa);
    let ed = key(dir.path(), "example.org", "e1", Algorithm::Ed25519);
    let other = key(dir.path(), "other.test", "o1", Algorithm::Rsa);
    cfg.dkim = vec![rsa.clone(), other, ed.clone()];
    queue(&spool, "ann@example.org", &["bob@dest.test"], MESSAGE);
    let r = engine(spool.clone(), cfg).run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    let data = crlf(&sink.received()[0].data);
    let fields = signature_fields(&data);
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert!(
        fields[0].contains("a=rsa-sha256") && fields[0].contains("s=r1"),
        "{fields:?}"
    );
    assert!(
        fields[1].contains("a=ed25519-sha256") && fields[1].contains("s=e1"),
        "{fields:?}"
    );
    assert!(dkimpy_verifies_nth(
        &data,
        0,
        &rsa.record_name(),
        &rsa.record()
    ));
    assert!(dkimpy_verifies_nth(
        &data,
        1,
        &ed.record_name(),
        &ed.record()
    ));
    assert!(!dkimpy_verifies_nth(
        &data,
        1,
        &ed.record_name(),
        &rsa.record()
    ));
    assert_eq!(
        mail_dkim_verifies(&data, &rsa.record_name(), &rsa.record()),
        Ok(true)
    );
}

/// A message whose last node goes without a send (a dead host's daemon had delivered
/// it) takes its kept signature with it, as a delivery does.
#[tokio::test]
async fn a_signature_goes_with_a_node_removed_unsent() {
    use mailspool_spool::Intake;
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("later@slow.test".into(), "451 4.7.1 greylisted".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(&dir.path().join("spool"));
    let mut cfg = config(&[("slow.test", sink.addr)]);
    cfg.dkim = vec![key(dir.path(), "example.org", "s", Algorithm::Ed25519)];
    queue(&spool, "ann@example.org", &["later@slow.test"], MESSAGE);
    let engine = engine(spool.clone(), cfg);
    engine.run_pass(&all()).await.unwrap();
    let kept = || {
        std::fs::read_dir(dir.path().join("spool/dkim"))
            .unwrap()
            .count()
    };
    assert_eq!(kept(), 1, "deferred: its signature is kept");
    // Another host's daemon took it, delivered it and died before removing it.
    let node = spool.scan().unwrap().nodes.remove(0);
    spool
        .record_events(&[delivered_event(&node)], true)
        .unwrap();
    plant_dead_hosts_lock(&node.path);
    sink.script().rcpt.clear();
    let report = engine.run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 1, "{report:?}");
    assert!(queued(&spool).is_empty());
    assert!(sink.received().is_empty(), "not sent again");
    assert_eq!(kept(), 0, "the signature went with the message's last name");
}
