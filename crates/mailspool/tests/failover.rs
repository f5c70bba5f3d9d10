//! A real PostgreSQL failover under load: a primary and a streaming standby, each on a
//! host (network namespace) of its own; two mailspool hosts connect with a multi-host
//! URL (`target_session_attrs=read-write`) and take mail over SMTP from a client host
//! throughout. The primary is killed (`pg_ctl stop -m immediate`), the standby
//! promoted, and a new standby built from the new primary, three times.
//!
//! With synchronous replication (`synchronous_standby_names = '*'`, as
//! docs/scaling.md advises) no acknowledged message is lost; with asynchronous
//! replication the test measures what a failover loses and says it. Either way the
//! hosts reconnect by themselves, `serve` answers 4xx while no database takes writes
//! (never 250 for mail it could not commit), and duplicates stay at most one per
//! delivery in flight when the primary died.
//!
//! `MAILSPOOL_FAILOVERS=10 cargo test --release --test failover -- --nocapture`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "../../deliver/tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cluster::{Database, World, lost_and_duplicates, query_i64};
use common::Script;
use mailspool_pg::testing::Cluster;

/// What a run of failovers did.
struct Outcome {
    failovers: usize,
    acked: usize,
    lost: usize,
    duplicates: usize,
    refused: usize,
    /// Seconds from each kill to the first message acknowledged after it.
    outages: Vec<f64>,
    left: Option<i64>,
}

fn failovers() -> usize {
    std::env::var("MAILSPOOL_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Which of the two database hosts is the primary now.
fn primary_index(world: &World) -> usize {
    (0..2)
        .find(|&i| {
            world.dbs[i].pg.as_ref().is_some_and(|pg| {
                query_i64(
                    &pg.socket_url("postgres"),
                    "SELECT (NOT pg_is_in_recovery())::int::bigint",
                ) == Some(1)
            })
        })
        .expect("a primary")
}

/// Wait until the primary has a standby streaming (in sync, when `sync`).
async fn wait_for_standby(primary: &Cluster, sync: bool) {
    let sql = if sync {
        "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'"
    } else {
        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
    };
    let start = Instant::now();
    while query_i64(&primary.socket_url("postgres"), sql) != Some(1) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no standby attached"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(sync: bool) -> Option<Outcome> {
    // The destination takes 20 connections from the cluster (the default,
    // `max_host_connections`, is 5 for all hosts together).
    let shaping = "[[shaping.destination]]\nname = \"dest\"\ndomains = [\"dest.test\"]\n\
                   max_connections = 20\n";
    let mut world = World::new(Database::Replicated { sync }, 2, shaping)?;
    let sink = world.start_sink(Script {
        delay: Some(Duration::from_millis(2)),
        ..Default::default()
    });
    for h in &mut world.hosts {
        h.start_serve();
        h.start_daemon();
    }
    wait_for_standby(world.dbs[0].pg.as_ref().unwrap(), sync).await;
    let load = world.load(4, 20, usize::MAX, 1);
    let acks = load.acks.clone();

    let n = failovers();
    let mut outages = Vec::new();
    for _ in 0..n {
        // Under load for a while, the standby in step.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let old = primary_index(&world);
        let new = 1 - old;
        let before = acks.acked.lock().unwrap().len();
        let killed = Instant::now();
        world.dbs[old].pg.as_ref().unwrap().kill().unwrap();
        world.dbs[new].pg.as_ref().unwrap().promote().unwrap();
        // The hosts find the new primary by themselves.
        while acks.acked.lock().unwrap().len() == before {
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "no mail taken after the failover"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        outages.push(killed.elapsed().as_secs_f64());
        // A new standby where the old primary was: a fresh base backup.
        world.dbs[old].pg = None;
        let place = cluster::pg_place(&world.dbs[old].member);
        let standby = Cluster::standby_of(world.dbs[new].pg.as_ref().unwrap(), place).unwrap();
        world.dbs[old].pg = Some(standby);
        let primary = world.dbs[new].pg.as_ref().unwrap();
        if sync {
            cluster::synchronous(primary);
        }
        wait_for_standby(primary, sync).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop().await;
    let backlog = acks.acked.lock().unwrap().len() as u64;
    let left = world.drain(Duration::from_secs(90.max(backlog / 50))).await;
    if left != Some(0) {
        eprintln!("failover: still queued: {}", world.queue_summary());
        world.keep_logs();
    }
    let stopped: Vec<usize> = (0..world.hosts.len())
        .filter(|&i| !world.hosts[i].running())
        .collect();
    assert!(
        stopped.is_empty(),
        "hosts whose serve or daemon exited: {stopped:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = acks.acked.lock().unwrap().clone();
    let (lost, duplicates) = lost_and_duplicates(&acked, &sink);
    Some(Outcome {
        failovers: n,
        acked: acked.len(),
        lost: lost.len(),
        duplicates,
        refused: acks.refused.load(Ordering::SeqCst),
        outages,
        left,
    })
}

fn report(what: &str, o: &Outcome) {
    eprintln!(
        "failover ({what}): {} failovers under load; {} acknowledged, {} lost, {} duplicates, \
         {} refused (4xx or cut) while no primary took writes; mail taken again {:?} s after \
         each kill; {:?} left queued",
        o.failovers,
        o.acked,
        o.lost,
        o.duplicates,
        o.refused,
        o.outages
            .iter()
            .map(|s| (s * 10.0).round() / 10.0)
            .collect::<Vec<_>>(),
        o.left
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn synchronous_replication_loses_nothing_acknowledged_over_failovers() {
    let Some(o) = run(true).await else { return };
    report("synchronous", &o);
    assert!(o.acked > 100, "too little mail to mean anything");
    assert_eq!(o.lost, 0, "acknowledged messages lost");
    assert_eq!(o.left, Some(0), "mail left queued");
    assert!(
        o.refused > 0,
        "the failovers were not felt: nothing was refused"
    );
    // At most the deliveries under way when each primary died: two hosts, each with a
    // destination window of at most 5... and a claim batch each.
    assert!(
        o.duplicates <= 20 * o.failovers,
        "{} duplicates over {} failovers",
        o.duplicates,
        o.failovers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asynchronous_replication_failovers_are_measured() {
    let Some(o) = run(false).await else { return };
    report("asynchronous", &o);
    assert!(o.acked > 100, "too little mail to mean anything");
    assert_eq!(o.left, Some(0), "mail left queued");
    // What is lost is measured, not promised: it is what the standby had not received
    // when the primary died. It cannot be more than what was acknowledged.
    assert!(o.lost < o.acked);
}
