//! Traffic shaping against sinks that throttle the way the big receivers do: `421
//! 4.7.28` above N connections or M messages per period, `450 4.7.0 rate limited`.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use mailspool_deliver::{Outcome, PassOptions, Selection};

const MSG: &str = "From: a@sender.test\nSubject: hi\n\nhello\n";

fn all() -> PassOptions {
    PassOptions {
        selection: Selection::All,
        ..Default::default()
    }
}

fn quick_cooling(cfg: &mut mailspool_deliver::DeliverConfig) {
    cfg.shaping.cooling = Duration::from_millis(400);
    cfg.shaping.max_cooling = Duration::from_secs(2);
}

/// Time until `sink` holds `n` messages.
async fn until_received(sink: &Sink, n: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    while sink.received().len() < n {
        assert!(
            start.elapsed() < limit,
            "only {} of {n}",
            sink.received().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_receiver_gets_all_its_mail_late_and_slows_no_one_else() {
    let free_alone = Sink::start(Script::default()).await;
    let throttled = Sink::start(Script {
        throttle_connections: Some(2),
        throttle_rate: Some((12, Duration::from_secs(1))),
        ..Default::default()
    })
    .await;
    let free = Sink::start(Script::default()).await;

    // The unthrottled domain alone, for comparison.
    let dir0 = tempfile::tempdir().unwrap();
    let spool0 = spool(dir0.path());
    for i in 0..40 {
        queue(&spool0, "a@sender.test", &[&format!("f{i}@free.test")], MSG);
    }
    let mut cfg0 = config(&[("free.test", free_alone.addr)]);
    cfg0.max_deliveries = 8;
    let engine0 = engine(spool0.clone(), cfg0);
    let started = Instant::now();
    engine0.run_pass(&all()).await.unwrap();
    let alone = started.elapsed();
    assert_eq!(free_alone.received().len(), 40);

    // Now with as much mail for a receiver that throttles.
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    for i in 0..40 {
        queue(
            &spool,
            "a@sender.test",
            &[&format!("t{i}@throttled.test")],
            MSG,
        );
        queue(&spool, "a@sender.test", &[&format!("f{i}@free.test")], MSG);
    }
    let mut cfg = config(&[("throttled.test", throttled.addr), ("free.test", free.addr)]);
    cfg.max_deliveries = 8;
    quick_cooling(&mut cfg);
    let engine = engine(spool.clone(), cfg);
    let e = engine.clone();
    let first = tokio::spawn(async move { e.run_pass(&all()).await.unwrap() });
    let mixed = until_received(&free, 40, Duration::from_secs(20)).await;
    let report = first.await.unwrap();
    assert_eq!(report.count(Outcome::Failed), 0);
    assert!(
        mixed <= alone * 3 + Duration::from_millis(300),
        "the free domain took {mixed:?} beside the throttled one, {alone:?} alone"
    );
    // What the receiver refused waits in tier 0 (held while the destination cools),
    // not a tier further on: no retry was burnt.
    let waiting = spool.scan().unwrap().nodes;
    assert!(!waiting.is_empty(), "the receiver did throttle");
    assert!(waiting.iter().all(|n| n.tier == 0), "{waiting:?}");
    assert!(
        waiting
            .iter()
            .all(|n| n.name.to.ends_with("@throttled.test")),
        "{waiting:?}"
    );

    // Later passes, as the daemon makes them, deliver the rest under the limits.
    let start = Instant::now();
    while !spool.scan().unwrap().nodes.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(40), "never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = engine.run_pass(&all()).await.unwrap();
        assert_eq!(r.count(Outcome::Failed), 0, "{:?}", r.results);
    }
    let mut got: Vec<String> = throttled
        .received()
        .into_iter()
        .flat_map(|r| r.to)
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 40, "every message once, none lost");
    assert_eq!(throttled.received().len(), 40, "none twice");
    assert_eq!(free.received().len(), 40);
    // Settled: the window shrank under the connection limit, and mailspool did not
    // hammer the receiver (far fewer refusals than messages).
    assert!(throttled.state.peak_open.load(Ordering::SeqCst) <= 2);
    let refusals = throttled.state.throttled.load(Ordering::SeqCst);
    assert!((1..40).contains(&refusals), "{refusals} refusals");
    assert!(
        spool.scan().unwrap().nodes.is_empty(),
        "no bounce was queued"
    );
}

#[tokio::test]
async fn a_rate_limited_reply_holds_the_node_in_place_and_greylisting_does_not() {
    let sink = Sink::start(Script::default()).await;
    sink.script().rcpt.insert(
        "busy@one.test".into(),
        "450 4.7.0 rate limited, slow down".into(),
    );
    sink.script().rcpt.insert(
        "grey@two.test".into(),
        "451 4.7.1 greylisted, try later".into(),
    );
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["busy@one.test"], MSG);
    queue(&spool, "a@sender.test", &["grey@two.test"], MSG);
    let mut cfg = config(&[("one.test", sink.addr), ("two.test", sink.addr)]);
    quick_cooling(&mut cfg);
    // Two domains on one host: each its own destination only by rule.
    cfg.shaping.rules.push(mailspool_deliver::shaping::Rule {
        name: "one".into(),
        domains: vec!["one.test".into()],
        mx: Vec::new(),
        limits: Default::default(),
    });
    let throttled_before = mailspool_metrics::global().throttled.get();
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 2, "{:?}", r.results);
    let mut tiers: Vec<(String, usize)> = spool
        .scan()
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| (n.name.to, n.tier))
        .collect();
    tiers.sort();
    assert_eq!(
        tiers,
        [("busy@one.test".into(), 0), ("grey@two.test".into(), 1)],
        "throttling holds in place, greylisting goes on to the next tier"
    );
    assert!(mailspool_metrics::global().throttled.get() > throttled_before);
    let busy = spool.scan().unwrap().nodes;
    let busy = busy.iter().find(|n| n.name.to == "busy@one.test").unwrap();
    assert!(
        spool
            .last_error(&busy.name)
            .unwrap()
            .contains("rate limited")
    );
    // While it cools, the destination's mail is not tried.
    let r = engine.run_pass(&all()).await.unwrap();
    let busy_result = r.results.iter().find(|x| x.to == "busy@one.test").unwrap();
    assert_eq!(busy_result.outcome, Outcome::Skipped, "{busy_result:?}");
    assert!(
        busy_result.reply.contains("throttled us"),
        "{busy_result:?}"
    );
    // After it, the receiver takes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.script().rcpt.clear();
    let r = engine.run_pass(&all()).await.unwrap();
    assert!(
        r.results
            .iter()
            .any(|x| x.to == "busy@one.test" && x.outcome == Outcome::Delivered),
        "{:?}",
        r.results
    );
}

#[tokio::test]
async fn a_node_held_long_enough_moves_on_so_endless_throttling_still_ends() {
    let sink = Sink::start(Script::default()).await;
    sink.script()
        .rcpt
        .insert("x@one.test".into(), "421 4.7.28 unusual rate".into());
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    queue(&spool, "a@sender.test", &["x@one.test"], MSG);
    // It has been due for two hours already.
    let node = spool.scan().unwrap().nodes.remove(0);
    let name = node.path.file_name().unwrap().to_str().unwrap().to_owned();
    let (time, rest) = name.split_once('-').unwrap();
    let old: u64 = time.parse::<u64>().unwrap() - 7200;
    std::fs::rename(
        &node.path,
        node.path.with_file_name(format!("{old}-{rest}")),
    )
    .unwrap();
    let mut cfg = config(&[("one.test", sink.addr)]);
    quick_cooling(&mut cfg);
    let engine = engine(spool.clone(), cfg);
    let r = engine.run_pass(&all()).await.unwrap();
    assert_eq!(r.count(Outcome::Deferred), 1);
    assert_eq!(spool.scan().unwrap().nodes[0].tier, 1, "deferred as usual");
}

#[tokio::test]
async fn connections_carry_at_most_max_messages_per_connection() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    for i in 0..9 {
        queue(&spool, "a@sender.test", &[&format!("u{i}@one.test")], MSG);
    }
    let mut cfg = config(&[("one.test", sink.addr)]);
    cfg.per_host_limit = 1;
    cfg.max_messages_per_connection = 3;
    let engine = engine(spool.clone(), cfg);
    engine.run_pass(&PassOptions::default()).await.unwrap();
    assert_eq!(sink.received().len(), 9);
    assert_eq!(
        sink.state.connections.load(Ordering::SeqCst),
        3,
        "three messages per connection"
    );
}
