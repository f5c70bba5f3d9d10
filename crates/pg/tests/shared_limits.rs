//! Limits held across hosts in the database: several spools opened on one database
//! stand for several hosts (each has its own claim token, as a host's process does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mailspool_pg::testing::{TestDb, admin_sql};
use mailspool_pg::{PgOptions, PgSpool};
use mailspool_spool::shared::SharedLimits;
use mailspool_spool::{SpoolConfig, Store};

fn host(db: &TestDb, name: &str) -> PgSpool {
    PgSpool::open(
        &db.url,
        SpoolConfig::default(),
        PgOptions {
            host: Some(name.into()),
            ..Default::default()
        },
    )
    .unwrap()
}

fn limits(spool: &PgSpool) -> Arc<dyn SharedLimits> {
    spool.shared_limits().expect("a database shares limits")
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connection_slots_are_capped_across_hosts_and_come_back() {
    let Some(db) = TestDb::new() else { return };
    let hosts: Vec<PgSpool> = ["a", "b", "c"].iter().map(|h| host(&db, h)).collect();
    let shared: Vec<_> = hosts.iter().map(limits).collect();
    // A cap of 4 (under the starting window of 5): four slots in all, whichever host
    // asks.
    let mut taken = Vec::new();
    for round in 0..3 {
        for (i, l) in shared.iter().enumerate() {
            if let Some(slot) = l.take_slot("dest", 4).unwrap() {
                taken.push((i, slot));
            }
            let _ = round;
        }
    }
    assert_eq!(taken.len(), 4, "{taken:?}");
    let mut slots: Vec<u32> = taken.iter().map(|t| t.1).collect();
    slots.sort();
    assert_eq!(slots, [0, 1, 2, 3]);
    assert!(shared[2].take_slot("dest", 4).unwrap().is_none());
    // Another destination has slots of its own.
    assert!(shared[2].take_slot("other", 4).unwrap().is_some());
    // A slot given back is there for another host.
    let (i, slot) = taken[0];
    shared[i].give_slot("dest", slot);
    let other = (i + 1) % 3;
    eventually("a slot given back is taken by another host", || {
        shared[other].take_slot("dest", 4).unwrap().is_some()
    });
    // A lower cap (the configuration changed) is kept at once.
    assert!(shared[0].take_slot("dest", 2).unwrap().is_none());
}

#[test]
fn a_dead_hosts_slots_come_back_when_their_lease_runs_out() {
    let Some(db) = TestDb::new() else { return };
    let b = host(&db, "b");
    {
        let a = host(&db, "a");
        let la = limits(&a);
        assert!(la.take_slot("dest", 2).unwrap().is_some());
        assert!(la.take_slot("dest", 2).unwrap().is_some());
        // The process ends without giving them back (SIGKILL): its lease stays.
    }
    let lb = limits(&b);
    assert!(
        lb.take_slot("dest", 2).unwrap().is_none(),
        "held until the lease ends"
    );
    // The lease is SLOT_LEASE long; let it run out rather than wait for it.
    admin_sql(
        &db.url,
        "UPDATE mailspool_slots SET expires = now() - interval '1 second' \
         WHERE holder LIKE 'a %'",
    )
    .unwrap();
    assert!(lb.take_slot("dest", 2).unwrap().is_some());
    assert!(lb.take_slot("dest", 2).unwrap().is_some());
}

#[test]
fn a_live_hosts_slots_are_renewed_and_not_taken() {
    let Some(db) = TestDb::new() else { return };
    let a = host(&db, "a");
    let b = host(&db, "b");
    assert!(limits(&a).take_slot("dest", 1).unwrap().is_some());
    // Renewal runs every third of the lease: after more than a third, the expiry
    // moved on, so a live holder's slot never runs out.
    let expiry = |db: &TestDb| {
        let out = std::process::Command::new("psql")
            .arg(&db.url)
            .args([
                "-Atc",
                "SELECT extract(epoch from expires) FROM mailspool_slots WHERE holder LIKE 'a %'",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .unwrap_or(0.0)
    };
    let first = expiry(&db);
    assert!(first > 0.0);
    std::thread::sleep(mailspool_pg::SLOT_LEASE / 3 + Duration::from_secs(1));
    assert!(expiry(&db) > first, "renewed");
    assert!(limits(&b).take_slot("dest", 1).unwrap().is_none());
}

#[test]
fn the_shared_bucket_grants_no_more_than_it_fills() {
    let Some(db) = TestDb::new() else { return };
    let hosts: Vec<PgSpool> = ["a", "b", "c"].iter().map(|h| host(&db, h)).collect();
    let granted = Arc::new(AtomicU32::new(0));
    let run = Duration::from_millis(1500);
    let (fill, burst) = (100.0, 5.0);
    std::thread::scope(|s| {
        for h in &hosts {
            let l = limits(h);
            let granted = granted.clone();
            s.spawn(move || {
                let start = Instant::now();
                while start.elapsed() < run {
                    let n = l.take_tokens("dest", 5, fill, burst).unwrap();
                    granted.fetch_add(n, Ordering::Relaxed);
                    if n == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            });
        }
    });
    let total = f64::from(granted.load(Ordering::Relaxed));
    // The bucket starts empty; its row was made at the first take.
    let most = burst + fill * (run.as_secs_f64() + 0.2);
    assert!(total <= most, "{total} granted, at most {most}");
    assert!(total >= 0.8 * fill * run.as_secs_f64(), "{total} granted");
}

#[test]
fn a_throttling_cools_every_host_and_halves_the_window_once() {
    let Some(db) = TestDb::new() else { return };
    // (The spools stay open: their runtime is what the limits talk through.)
    let (ha, hb) = (host(&db, "a"), host(&db, "b"));
    let (a, b) = (limits(&ha), limits(&hb));
    let start = b.sync("dest", 20, 0, None).unwrap();
    assert_eq!(start.window, 5.0);
    assert!(start.cooling.is_zero());
    // Successes on any host grow the one window: +1/window each.
    let grown = a.sync("dest", 20, 10, None).unwrap();
    assert!((grown.window - 7.0).abs() < 1e-9, "{grown:?}");
    let cooled = a
        .sync("dest", 20, 0, Some(Duration::from_secs(30)))
        .unwrap();
    assert!((cooled.window - 3.5).abs() < 1e-9, "{cooled:?}");
    assert!(cooled.cooling > Duration::from_secs(28));
    // B hears of it; and B's own throttling in the same period is the same one.
    let heard = b
        .sync("dest", 20, 0, Some(Duration::from_secs(60)))
        .unwrap();
    assert!(
        (heard.window - 3.5).abs() < 1e-9,
        "not halved twice: {heard:?}"
    );
    assert!(heard.cooling > Duration::from_secs(28) && heard.cooling <= Duration::from_secs(30));
    // The shared window caps the slots: ceil(3.5) = 4 of a cap of 20.
    let slots = (0..6)
        .filter(|_| b.take_slot("dest", 20).unwrap().is_some())
        .count();
    assert_eq!(slots, 4);
}

#[test]
fn records_are_seen_by_every_host_and_claimed_once() {
    let Some(db) = TestDb::new() else { return };
    let (ha, hb) = (host(&db, "a"), host(&db, "b"));
    let (a, b) = (ha.records().unwrap(), hb.records().unwrap());
    let day = Duration::from_secs(86400);
    // One host claims a key: the other cannot while the claim lives, and sees no value.
    assert!(
        a.claim("idempotency", "k1", Duration::from_secs(30))
            .unwrap()
    );
    assert!(
        !b.claim("idempotency", "k1", Duration::from_secs(30))
            .unwrap()
    );
    assert_eq!(b.get("idempotency", "k1").unwrap(), None);
    // Its result is then everyone's.
    a.put("idempotency", "k1", b"result", day).unwrap();
    assert_eq!(
        b.get("idempotency", "k1").unwrap().as_deref(),
        Some(&b"result"[..])
    );
    assert!(
        !b.claim("idempotency", "k1", Duration::from_secs(30))
            .unwrap()
    );
    // A claim whose host died runs out, and may be taken.
    assert!(
        a.claim("idempotency", "k2", Duration::from_millis(200))
            .unwrap()
    );
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        b.claim("idempotency", "k2", Duration::from_secs(30))
            .unwrap()
    );
    // A failed request's claim is removed: the retry may claim it at once.
    b.remove("idempotency", "k2").unwrap();
    assert!(
        a.claim("idempotency", "k2", Duration::from_secs(30))
            .unwrap()
    );
    // Kinds are apart; an expired value is gone.
    assert_eq!(a.get("mta-sts", "k1").unwrap(), None);
    a.put("mta-sts", "example.com", b"{}", Duration::from_millis(100))
        .unwrap();
    assert!(b.get("mta-sts", "example.com").unwrap().is_some());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.get("mta-sts", "example.com").unwrap(), None);
}

#[test]
fn a_slot_given_back_while_the_database_was_away_is_not_renewed() {
    let Some(db) = TestDb::new() else { return };
    let a = host(&db, "a");
    let la = limits(&a);
    let kept = la.take_slot("dest", 2).unwrap().unwrap();
    let lost = la.take_slot("dest", 2).unwrap().unwrap();
    // Given back, but the database never heard (as in a failover): undo the give-back.
    la.give_slot("dest", lost);
    std::thread::sleep(Duration::from_millis(300));
    admin_sql(
        &db.url,
        &format!(
            "UPDATE mailspool_slots SET holder = (SELECT holder FROM mailspool_slots \
             WHERE destination = 'dest' AND slot = {kept}), \
             expires = now() + interval '2 seconds' WHERE destination = 'dest' AND slot = {lost}"
        ),
    )
    .unwrap();
    // Renewal (every 5 s) keeps the slot still held, and lets the other run out.
    std::thread::sleep(mailspool_pg::SLOT_LEASE / 3 + Duration::from_secs(1));
    let b = host(&db, "b");
    let lb = limits(&b);
    assert_eq!(
        lb.take_slot("dest", 2).unwrap(),
        Some(lost),
        "the lost slot came back"
    );
    assert_eq!(
        lb.take_slot("dest", 2).unwrap(),
        None,
        "the held one is still held"
    );
}

#[test]
fn a_rate_taken_first_does_not_shrink_the_window_it_starts_with() {
    let Some(db) = TestDb::new() else { return };
    let h = host(&db, "a");
    let l = limits(&h);
    // The first thing asked of a destination with a rate is its tokens (the gate's
    // rate comes before a connection); its window still starts at 5.
    l.take_tokens("dest", 1, 100.0, 5.0).unwrap();
    let slots = (0..8)
        .filter(|_| l.take_slot("dest", 20).unwrap().is_some())
        .count();
    assert_eq!(slots, 5);
    // A cap under the window is kept, and a throttling halves what the cap allows.
    let state = l.sync("dest", 2, 0, Some(Duration::from_secs(30))).unwrap();
    assert!((state.window - 1.0).abs() < 1e-9, "{state:?}");
}

/// Fails unless `sql` (a count) is `n`.
fn assert_count(db: &TestDb, sql: &str, n: i64) {
    admin_sql(
        &db.url,
        &format!(
            "DO $$ DECLARE c bigint; BEGIN c := ({sql}); \
             IF c <> {n} THEN RAISE EXCEPTION 'count % for %', c, {sql:?}; END IF; END $$"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_destination_unused_for_a_day_is_swept_and_made_again_by_its_next_use() {
    let Some(db) = TestDb::new() else { return };
    let a = host(&db, "a");
    let la = limits(&a);
    let idle = la.take_slot("idle", 3).unwrap().unwrap();
    la.take_tokens("idle", 1, 10.0, 10.0).unwrap();
    la.give_slot("idle", idle);
    eventually("the slot is given back", || {
        admin_sql(
            &db.url,
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM mailspool_slots WHERE holder IS NOT NULL \
             AND destination = 'idle') THEN RAISE EXCEPTION 'held'; END IF; END $$",
        )
        .is_ok()
    });
    // "busy" is as old, but one of its slots is held.
    assert!(la.take_slot("busy", 3).unwrap().is_some());
    admin_sql(
        &db.url,
        "UPDATE mailspool_destinations SET tokens_at = now() - interval '2 days'; \
         UPDATE mailspool_slots SET expires = now() - interval '2 days' WHERE holder IS NULL",
    )
    .unwrap();
    a.sweep(Duration::ZERO);
    let rows = |d: &str| {
        format!(
            "SELECT (SELECT count(*) FROM mailspool_destinations WHERE destination = '{d}') \
             + (SELECT count(*) FROM mailspool_slots WHERE destination = '{d}')"
        )
    };
    assert_count(&db, &rows("idle"), 0);
    assert_count(&db, &rows("busy"), 4);
    // This process still remembers making "idle"'s rows; each use makes them again.
    assert!(la.take_slot("idle", 3).unwrap().is_some());
    assert_count(&db, &rows("idle"), 4);
    admin_sql(
        &db.url,
        "DELETE FROM mailspool_destinations WHERE destination = 'idle'",
    )
    .unwrap();
    assert!(la.take_tokens("idle", 1, 10.0, 10.0).is_ok());
    admin_sql(
        &db.url,
        "DELETE FROM mailspool_destinations WHERE destination = 'idle'",
    )
    .unwrap();
    assert!(la.sync("idle", 3, 1, None).unwrap().window >= 1.0);
}
