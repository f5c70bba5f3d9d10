//! Delivery scenarios against the in-process sink: grouping, retries, bounces, mixed
//! replies, broken and silent servers, 0.50 spools, two engines on one spool.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mailspool_deliver::{Outcome, PassOptions, Selection};

const MSG: &str = "From: a@sender.test\nTo: x@one.test\nSubject: hi\n\nline one\n.leading dot\n..two dots\n.\nlast line\n";

fn all() -> PassOptions {
    PassOptions {
        selection: Selection::All,
        ..Default::default()
    }
}

#[tokio::test]
async fn three_recipients_in_two_domains_make_two_transactions() {
    let one = Sink::start(Script::default()).await;
    let two = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(
        &spool,
        "a@sender.test",
        &["x@one.test", "y@one.test", "z@two.test"],
        MSG,
    );
    let engine = engine(
        spool.clone(),
        config(&[("one.test", one.addr), ("two.test", two.addr)]),
    );
    let report = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 3);
    let (r1, r2) = (one.received(), two.received());
    assert_eq!(r1.len(), 1, "one transaction for one.test");
    let mut to = r1[0].to.clone();
    to.sort();
    assert_eq!(to, ["x@one.test", "y@one.test"]);
    assert_eq!(r2.len(), 1);
    assert_eq!(r2[0].to, ["z@two.test"]);
    for r in r1.iter().chain(&r2) {
        assert_eq!(r.from, "a@sender.test");
        assert_eq!(
            String::from_utf8_lossy(&r.data),
            MSG,
            "byte-exact after unstuffing"
        );
    }
    assert!(queued(&spool).is_empty());
    // As 0.50 counts: a `Spool` line per node, a `Sent` line per node with the bytes
    // that went on the wire (CRLF line ends and stuffed dots, without the final dot).
    let usage = std::fs::read_to_string(dir.path().join("usage/raw")).unwrap();
    let sent: Vec<&str> = usage.lines().filter(|l| l.ends_with(" Sent")).collect();
    assert_eq!(sent.len(), 3);
    let wire = MSG.len() + MSG.matches('\n').count() + MSG.matches("\n.").count();
    for l in &sent {
        assert_eq!(l.split(' ').nth(1), Some(wire.to_string().as_str()), "{l}");
    }
    let spooled: Vec<&str> = usage.lines().filter(|l| l.ends_with(" Spool")).collect();
    assert_eq!(spooled.len(), 3);
}

#[tokio::test]
async fn temporary_failure_moves_a_tier_then_delivers() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .data_end
        .push_back("451 4.3.0 try again later".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1);
    assert_eq!(queued(&spool), [(1, "x@one.test".to_owned())]);
    let node = spool.scan().unwrap().nodes.remove(0);
    assert!(
        spool
            .last_error(&node.name)
            .unwrap()
            .contains("451 4.3.0 try again later")
    );
    // Not due for 30 minutes: a normal pass leaves it alone.
    assert_eq!(
        engine
            .run_pass(&PassOptions::default())
            .await
            .unwrap()
            .results
            .len(),
        0
    );
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1);
    assert!(queued(&spool).is_empty());
    assert_eq!(sink.received().len(), 1);
    assert!(
        spool.attempts(&node.name).is_empty(),
        "side data gone with the node"
    );
}

fn dsns(spool: &mailspool_spool::Spool) -> Vec<(String, String)> {
    spool
        .scan()
        .unwrap()
        .nodes
        .into_iter()
        .filter(|n| n.name.from.is_empty())
        .map(|n| (n.name.to.clone(), std::fs::read_to_string(&n.path).unwrap()))
        .collect()
}

#[tokio::test]
async fn permanent_failure_bounces_to_the_sender() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("x@one.test".into(), "550 5.1.1 no such user".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let id = queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Failed), 1);
    let d = dsns(&spool);
    assert_eq!(
        d.len(),
        1,
        "one DSN, the original node gone: {:?}",
        queued(&spool)
    );
    assert_eq!(d[0].0, "a@sender.test");
    let dsn = &d[0].1;
    for needle in [
        "From: MAILER-DAEMON@mailspool.test",
        "Content-Type: multipart/report; report-type=delivery-status",
        "Content-Type: message/delivery-status",
        "Reporting-MTA: dns; mailspool.test",
        "Final-Recipient: rfc822; x@one.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; 127.0.0.1",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user",
        "Content-Type: text/rfc822-headers",
        "Subject: hi",
    ] {
        assert!(dsn.contains(needle), "DSN lacks {needle:?}:\n{dsn}");
    }
    assert!(!dsn.contains("line one"), "the body is not returned");
    assert!(dsn.contains(&format!("X-Mailspool-Queue-ID: {id}")));
}

#[tokio::test]
async fn last_tier_temporary_failure_bounces_and_null_sender_never_does() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("x@one.test".into(), "450 4.2.0 mailbox busy".into());
    sink.script()
        .rcpt
        .insert("y@one.test".into(), "550 5.1.1 gone".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    queue(&spool, "", &["y@one.test"], MSG);
    // Move the first node to the last tier, as four days of retries would.
    let n = spool
        .scan()
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.name.to == "x@one.test")
        .unwrap();
    let lock = spool.lock_node(&n).unwrap();
    spool.move_to_tier_locked(&n, 6).unwrap();
    drop(lock);
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Failed), 2);
    let d = dsns(&spool);
    assert_eq!(
        d.len(),
        1,
        "a DSN for the expired node, none for the null sender"
    );
    assert!(d[0].1.contains("Status: 4.4.7") && d[0].1.contains("450 4.2.0 mailbox busy"));
    assert_eq!(queued(&spool).len(), 1, "only the DSN is queued");
}

#[tokio::test]
async fn mixed_recipient_replies_are_handled_per_node() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("bad@one.test".into(), "550 5.1.1 unknown".into());
    sink.script()
        .rcpt
        .insert("later@one.test".into(), "452 4.2.2 over quota".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(
        &spool,
        "a@sender.test",
        &["ok@one.test", "bad@one.test", "later@one.test"],
        MSG,
    );
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(
        (
            r.count(Outcome::Delivered),
            r.count(Outcome::Failed),
            r.count(Outcome::Deferred)
        ),
        (1, 1, 1)
    );
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.received()[0].to, ["ok@one.test"]);
    let q = queued(&spool);
    assert!(q.contains(&(1, "later@one.test".to_owned())), "{q:?}");
    let d = dsns(&spool);
    assert_eq!(d.len(), 1);
    assert!(d[0].1.contains("Final-Recipient: rfc822; bad@one.test"));
    assert!(!d[0].1.contains("Final-Recipient: rfc822; later@one.test"));
}

#[tokio::test]
async fn a_connection_dropped_mid_data_loses_nothing() {
    let sink = Sink::start(Script {
        drop_in_data: Some(10),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1);
    assert_eq!(queued(&spool), [(1, "x@one.test".to_owned())]);
    sink.script().drop_in_data = None;
    engine.run_pass(&all()).await.unwrap();
    assert_eq!(sink.received().len(), 1);
    assert!(queued(&spool).is_empty());
}

#[tokio::test]
async fn a_silent_server_times_out_without_holding_up_the_rest() {
    let tarpit = Sink::start(Script {
        tarpit: true,
        ..Default::default()
    })
    .await;
    let fast = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    for i in 0..6 {
        queue(&spool, "a@sender.test", &[&format!("t{i}@slow.test")], MSG);
    }
    for i in 0..20 {
        queue(&spool, "a@sender.test", &[&format!("f{i}@fast.test")], MSG);
    }
    let mut cfg = config(&[("slow.test", tarpit.addr), ("fast.test", fast.addr)]);
    cfg.max_deliveries = 8;
    cfg.per_host_limit = 2;
    // The tarpit holds its slots for 6 s: the fast mail must not wait that long.
    cfg.timeouts.greeting = Duration::from_secs(6);
    let engine = engine(spool.clone(), cfg);
    let started = Instant::now();
    let e2 = engine.clone();
    let pass = tokio::spawn(async move { e2.run_pass(&PassOptions::default()).await.unwrap() });
    // The fast domain is delivered while the tarpit still holds its connections.
    tokio::time::timeout(Duration::from_secs(5), async {
        while fast.received().len() < 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("fast mail waited for the tarpit");
    let report = pass.await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 20);
    assert_eq!(report.count(Outcome::Deferred), 6);
    // The tarpit's window shrinks to one at a time as its connections fail (six
    // timeouts of 6 s), but the pass still ends.
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}",
        started.elapsed()
    );
    let slow = spool.scan().unwrap().nodes;
    assert!(slow.iter().all(|n| n.tier == 1));
    assert!(
        spool
            .last_error(&slow[0].name)
            .unwrap()
            .contains("timed out")
    );
}

#[tokio::test]
async fn node_name_addresses_go_to_the_wire_as_050_sent_them_and_never_inject() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("0")).unwrap();
    let msg = "From: x@old.test\n\nhello\n";
    // 0.50 stored `to => 'Name <a@b>'` as given; its dequeue sent RCPT TO:<a@b>.
    std::fs::write(
        dir.path()
            .join("0/1054328821-a1b2c3d4e6-Bob Smith <bob@one.test>-Me <me@old.test>"),
        msg,
    )
    .unwrap();
    // A planted name whose decoded recipient would add a command to the session.
    let planted = "0/1054328822-a1b2c3d4e7-r1@one.test%0D%0ARCPT TO:<evil@one.test>-s@old.test";
    std::fs::write(dir.path().join(planted), msg).unwrap();
    // And one with an unbalanced bracket.
    std::fs::write(
        dir.path()
            .join("0/1054328823-a1b2c3d4e8-<r2@one.test-s@old.test"),
        msg,
    )
    .unwrap();
    let spool = std::sync::Arc::new(
        mailspool_spool::Spool::open(dir.path(), mailspool_spool::SpoolConfig::default()).unwrap(),
    );
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    let got: Vec<(String, Vec<String>)> = sink
        .received()
        .into_iter()
        .map(|r| (r.from, r.to))
        .collect();
    assert_eq!(
        got,
        [("me@old.test".to_owned(), vec!["bob@one.test".to_owned()])]
    );
    // fsck says so, and --repair sets them aside.
    let report = spool.fsck(false).unwrap();
    let problems: Vec<String> = report
        .findings
        .iter()
        .filter(|f| f.is_problem())
        .map(|f| f.describe())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems.iter().all(|p| p.contains("does not parse")),
        "{problems:?}"
    );
    spool.fsck(true).unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("corrupt"))
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test]
async fn a_spool_written_by_050_is_delivered() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("3")).unwrap();
    std::fs::create_dir_all(dir.path().join("0")).unwrap();
    let msg = "From: x@old.test\nTo: first-last@one.test\n\nfrom the old days\n";
    std::fs::write(
        dir.path()
            .join("3/1054328000-a1b2c3d4e5-first%2dlast@one.test-"),
        msg,
    )
    .unwrap();
    std::fs::write(
        dir.path()
            .join("0/1054328821-a1b2c3d4e6-bob@one.test-me@old.test"),
        msg,
    )
    .unwrap();
    let spool = std::sync::Arc::new(
        mailspool_spool::Spool::open(dir.path(), mailspool_spool::SpoolConfig::default()).unwrap(),
    );
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 2);
    let mut got: Vec<(String, Vec<String>)> = sink
        .received()
        .into_iter()
        .map(|r| (r.from, r.to))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("".to_owned(), vec!["first-last@one.test".to_owned()]),
            ("me@old.test".to_owned(), vec!["bob@one.test".to_owned()])
        ]
    );
    assert!(queued(&spool).is_empty());
}

#[tokio::test]
async fn sessions_are_reused_for_the_next_message() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    for i in 0..5 {
        queue(&spool, "a@sender.test", &[&format!("u{i}@one.test")], MSG);
    }
    let mut cfg = config(&[("one.test", sink.addr)]);
    cfg.per_host_limit = 1;
    let engine = engine(spool.clone(), cfg);
    engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(sink.received().len(), 5);
    assert_eq!(
        sink.state
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection, RSET between"
    );
    engine.close_idle().await;
}

#[tokio::test]
async fn helo_fallback_no_pipelining_and_smtputf8() {
    let sink = Sink::start(Script {
        no_ehlo: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test", "y@one.test"], MSG);
    queue(&spool, "a@sender.test", &["üser@one.test"], MSG);
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 2, "{:?}", r.results);
    let failed: Vec<_> = r
        .results
        .iter()
        .filter(|n| n.outcome == Outcome::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].reply.contains("SMTPUTF8"));
    assert!(dsns(&spool)[0].1.contains("Status: 5.6.7"));
}

#[tokio::test]
async fn an_oversized_reply_is_a_temporary_failure() {
    let sink = Sink::start(Script {
        oversized_reply: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    let r = engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1, "{:?}", r.results);
    assert!(r.results[0].reply.contains("too long"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_spool_deliver_each_node_once() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool_a = spool(dir.path());
    for i in 0..2000 {
        queue(
            &spool_a,
            "a@sender.test",
            &[&format!("r{i}@one.test")],
            &format!("Subject: {i}\n\ntoken-{i}\n"),
        );
    }
    let spool_b = std::sync::Arc::new(
        mailspool_spool::Spool::open(dir.path(), mailspool_spool::SpoolConfig::default()).unwrap(),
    );
    let cfg = config(&[("one.test", sink.addr)]);
    let (a, b) = (engine(spool_a.clone(), cfg.clone()), engine(spool_b, cfg));
    let opts = PassOptions::default();
    let (ra, rb) = tokio::join!(a.run_pass(&opts), b.run_pass(&opts));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let odd: Vec<_> = ra
        .results
        .iter()
        .chain(&rb.results)
        .filter(|r| r.outcome != Outcome::Delivered && r.outcome != Outcome::Skipped)
        .collect();
    assert!(odd.is_empty(), "{odd:?}");
    assert_eq!(
        ra.count(Outcome::Delivered) + rb.count(Outcome::Delivered),
        2000
    );
    assert!(
        ra.count(Outcome::Delivered) > 0 && rb.count(Outcome::Delivered) > 0,
        "both engines worked"
    );
    let got = sink.received();
    let mut tokens: Vec<String> = got
        .iter()
        .map(|r| {
            String::from_utf8_lossy(&r.data)
                .lines()
                .last()
                .unwrap()
                .to_owned()
        })
        .collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(got.len(), 2000, "each node delivered exactly once");
    assert_eq!(tokens.len(), 2000);
    assert!(queued(&spool_a).is_empty());
}

#[tokio::test]
async fn a_deep_queue_is_planned_in_chunks_and_each_node_tried_once_per_pass() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    for i in 0..10 {
        queue(&spool, "a@sender.test", &[&format!("u{i}@one.test")], MSG);
    }
    for i in 0..10 {
        sink.script()
            .rcpt
            .insert(format!("u{i}@one.test"), "451 4.3.0 later".into());
    }
    let engine = engine(spool.clone(), config(&[("one.test", sink.addr)]));
    // --all with chunks of 3: deferred nodes land in tier 1, which --all also scans;
    // they must not be tried again in the same pass.
    let opts = PassOptions {
        selection: Selection::All,
        limit: Some(3),
        ..Default::default()
    };
    let r = engine.run_pass(&opts).await.unwrap();
    assert_eq!(r.results.len(), 10, "{:?}", r.results);
    assert_eq!(r.count(Outcome::Deferred), 10);
    sink.script().rcpt.clear();
    let r = engine.run_pass(&opts).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 10);
    assert!(queued(&spool).is_empty());
}

#[tokio::test]
async fn a_fallback_that_cannot_be_written_leaves_the_node_where_it_was() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("x@one.test".into(), "451 4.3.0 later".into());
    let dir = tempfile::tempdir().unwrap();
    let plain = spool(dir.path());
    queue(&plain, "a@sender.test", &["x@one.test"], MSG);
    // The storage layer refuses the rename (a full disk, an I/O error).
    let faulty = std::sync::Arc::new(
        mailspool_spool::Spool::open(dir.path(), mailspool_spool::SpoolConfig::default())
            .unwrap()
            .with_storage(std::sync::Arc::new(mailspool_spool::FaultyStorage::new(
                0,
                mailspool_spool::FaultMode::FailOnce,
                28,
            ))),
    );
    let engine = engine(faulty, config(&[("one.test", sink.addr)]));
    engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(
        queued(&plain),
        [(0, "x@one.test".to_owned())],
        "still in tier 0, whole"
    );
    let node = plain.scan().unwrap().nodes.remove(0);
    assert!(
        plain.last_error(&node.name).unwrap().contains("451"),
        "the attempt is recorded"
    );
    assert!(!node.path.with_extension("NFSLock").exists());
    // Next time the rename works.
    sink.script().rcpt.clear();
    engine.run_pass(&all()).await.unwrap();
    assert!(queued(&plain).is_empty());
}

/// Queue a message whose id says it arrived `age` seconds ago (our ids are ULIDs, and
/// a message's age is read from its id).
fn queue_aged(spool: &mailspool_spool::Spool, from: &str, to: &[&str], age: u64) -> String {
    use std::io::Write;
    let ms = (mailspool_spool::now() - age) * 1000;
    let id = ulid::Ulid::from_parts(ms, 42).to_string();
    let mut s = spool.stage(&id).unwrap();
    s.write_all(MSG.as_bytes()).unwrap();
    let to: Vec<String> = to.iter().map(|t| t.to_string()).collect();
    s.commit(from, &to).unwrap();
    id
}

fn delay_reports(spool: &mailspool_spool::Spool) -> Vec<(String, String)> {
    dsns(spool)
        .into_iter()
        .filter(|(_, text)| text.contains("Action: delayed"))
        .collect()
}

#[tokio::test]
async fn a_message_delayed_past_delay_warning_time_gets_one_delayed_report() {
    let sink = Sink::start(Script::default()).await;
    for rcpt in ["x@slow.test", "y@slow.test"] {
        sink.script()
            .rcpt
            .insert(rcpt.into(), "451 4.7.1 greylisted, try later".into());
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let mut cfg = config(&[("slow.test", sink.addr)]);
    cfg.delay_warning_time = Some(std::time::Duration::from_secs(4 * 3600));
    // Five hours old, two recipients; a fresh one; an old one from the null sender.
    let old = queue_aged(
        &spool,
        "a@sender.test",
        &["x@slow.test", "y@slow.test"],
        5 * 3600,
    );
    queue_aged(&spool, "b@sender.test", &["x@slow.test"], 60);
    queue_aged(&spool, "", &["y@slow.test"], 5 * 3600);
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 4);
    let reports = delay_reports(&spool);
    assert_eq!(
        reports.len(),
        1,
        "one report, for the old message only: {reports:?}"
    );
    let (to, text) = &reports[0];
    assert_eq!(to, "a@sender.test");
    for needle in [
        "Subject: Delayed Mail (still being retried)",
        "This is a warning only",
        "Content-Type: message/delivery-status",
        "Final-Recipient: rfc822; x@slow.test",
        "Final-Recipient: rfc822; y@slow.test",
        "Action: delayed",
        "Status: 4.7.1",
        "Will-Retry-Until: ",
        "Diagnostic-Code: smtp; 451 4.7.1 greylisted, try later",
        "Subject: hi",
    ] {
        assert!(text.contains(needle), "report lacks {needle:?}:\n{text}");
    }
    assert!(text.contains(&format!("X-Mailspool-Queue-ID: {old}")));
    assert!(!text.contains("line one"), "the body is not returned");
    // Tried again (and again deferred): never a second report.
    for n in spool.scan().unwrap().nodes {
        if !n.name.from.is_empty() {
            spool.retry_now(&n).unwrap();
        }
    }
    let r = engine.run_pass(&all()).await.unwrap();
    assert!(r.count(Outcome::Deferred) >= 4, "{:?}", r.results);
    assert_eq!(delay_reports(&spool).len(), 1);
}

#[tokio::test]
async fn delay_warnings_can_be_turned_off() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("x@slow.test".into(), "451 4.3.0 later".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let mut cfg = config(&[("slow.test", sink.addr)]);
    cfg.delay_warning_time = None;
    queue_aged(&spool, "a@sender.test", &["x@slow.test"], 30 * 3600);
    let engine = engine(spool.clone(), cfg);
    assert_eq!(
        engine
            .run_pass(&all())
            .await
            .unwrap()
            .count(Outcome::Deferred),
        1
    );
    assert!(delay_reports(&spool).is_empty());
}

#[tokio::test]
async fn outbound_connections_come_from_bind_address() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let mut cfg = config(&[("one.test", sink.addr)]);
    // Another loopback address (all of 127/8 is local on Linux), and an IPv6 one that
    // must not be used for an IPv4 peer.
    cfg.bind_addresses = vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()];
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    let peers = sink.state.peers.lock().unwrap().clone();
    assert!(!peers.is_empty());
    assert!(
        peers
            .iter()
            .all(|p| p.ip() == "127.0.0.2".parse::<std::net::IpAddr>().unwrap()),
        "{peers:?}"
    );
}

/// A resolver with fixed PTR and A answers. (hickory answers every name under
/// 127.in-addr.arpa itself, as RFC 6761 asks, so a loopback source address cannot be
/// given a PTR through the in-process DNS server.)
struct PtrDns {
    ptr: Vec<String>,
    a: Vec<std::net::IpAddr>,
}

impl mailspool_deliver::dns::Resolve for PtrDns {
    fn mx<'a>(
        &'a self,
        _: &'a str,
    ) -> mailspool_deliver::dns::BoxFuture<
        'a,
        Result<Vec<(u16, String)>, mailspool_deliver::dns::LookupError>,
    > {
        Box::pin(async { Err(mailspool_deliver::dns::LookupError::NoRecords) })
    }
    fn ips<'a>(
        &'a self,
        host: &'a str,
    ) -> mailspool_deliver::dns::BoxFuture<
        'a,
        Result<Vec<std::net::IpAddr>, mailspool_deliver::dns::LookupError>,
    > {
        let known = self.ptr.iter().any(|p| p == host);
        let literal = host.parse::<std::net::IpAddr>().ok();
        let a = self.a.clone();
        Box::pin(async move {
            if let Some(ip) = literal {
                Ok(vec![ip])
            } else if known {
                Ok(a)
            } else {
                Err(mailspool_deliver::dns::LookupError::NxDomain)
            }
        })
    }
    fn ptr<'a>(
        &'a self,
        ip: std::net::IpAddr,
    ) -> mailspool_deliver::dns::BoxFuture<
        'a,
        Result<Vec<String>, mailspool_deliver::dns::LookupError>,
    > {
        let names = self.ptr.clone();
        Box::pin(async move {
            if ip.to_string() == "127.0.0.2" {
                Ok(names)
            } else {
                Err(mailspool_deliver::dns::LookupError::NoRecords)
            }
        })
    }
}

/// Deliveries from 127.0.0.2 with `ehlo_from_ptr`: the EHLO name is its PTR name when
/// that resolves back to it, else `hostname`.
async fn ehlo_with(ptr: &str, a: &str) -> Vec<String> {
    let sink = Sink::start(Script::default()).await;
    let dns: std::sync::Arc<dyn mailspool_deliver::dns::Resolve> = std::sync::Arc::new(PtrDns {
        ptr: vec![ptr.to_owned()],
        a: vec![a.parse().unwrap()],
    });
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    let mut cfg = config(&[("one.test", sink.addr)]);
    cfg.bind_addresses = vec!["127.0.0.2".parse().unwrap()];
    cfg.ehlo_from_ptr = true;
    let engine = mailspool_deliver::Engine::new(spool.clone(), cfg, dns).unwrap();
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Delivered), 1, "{:?}", r.results);
    sink.state.helos.lock().unwrap().clone()
}

#[tokio::test]
async fn ehlo_names_the_source_addresss_forward_confirmed_ptr() {
    let confirmed = ehlo_with("out1.mail.example", "127.0.0.2").await;
    assert_eq!(confirmed, ["out1.mail.example"]);
    // A PTR name that resolves elsewhere is not ours to claim: hostname instead.
    let spoofed = ehlo_with("liar.example", "192.0.2.9").await;
    assert_eq!(spoofed, ["mailspool.test"]);
}
