//! Chaos on the PostgreSQL spool: three `mailspool daemon`s with distinct host names
//! share one database, mail comes in through `mailspool send` and `mailspool serve`,
//! daemons are killed with SIGKILL at random and restarted, and PostgreSQL itself is
//! restarted once mid-run.
//!
//! At the end: every acknowledged message reached the sink; duplicates are at most one
//! per kill (a daemon killed between the sink's 250 and its delete; a removal cut by the
//! restart is retried until the database is back, so the restart adds none); nothing is
//! left queued.
//!
//! `MAILSPOOL_CHAOS_KILLS=30 cargo test --release --test chaos_postgres -- --nocapture`
//! runs a long one.

#[path = "support/chaos_intake.rs"]
mod chaos_intake;
#[path = "../../deliver/tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Script, Sink};
use mailspool_pg::testing::{Cluster, admin_sql};

fn mailspool(config: &Path) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
    c.env("MAILSPOOL_CONFIG", config)
        .env_remove("MAILSPOOL_SPOOL")
        .env("MAILSPOOL_LOG", "warn");
    c
}

fn daemon(config: &Path) -> Child {
    mailspool(config)
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill9(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn token_of(data: &[u8]) -> Option<String> {
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|l| l.strip_prefix("token: ").map(str::to_owned))
}

fn random(below: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish() % below.max(1)
}

/// Nodes left in the database (None while it cannot be asked).
fn queued(url: &str) -> Option<i64> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            c.query_one("SELECT count(*) FROM mailspool_nodes", &[])
                .await
                .ok()
                .map(|r| r.get(0))
        })
    })
    .join()
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_daemons_kills_and_a_database_restart_lose_nothing() {
    let kills: usize = std::env::var("MAILSPOOL_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let cluster = match Cluster::start(true) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v != "true"),
                "PostgreSQL is needed under CI=true: {e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
    };
    admin_sql(&cluster.admin_url(), "CREATE DATABASE chaos").unwrap();
    let url = format!("{}/chaos", cluster.admin_url().rsplit_once('/').unwrap().0);
    let migrated = {
        let url = url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(mailspool_pg::migrate(&url, None))
        })
        .join()
        .unwrap()
    };
    migrated.unwrap();

    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |host: &str| -> PathBuf {
        let path = dir.path().join(format!("{host}.toml"));
        std::fs::write(
            &path,
            format!(
                "spool = \"{url}\"\nspool_lease = 5\nhostname = \"{host}\"\ndequeue_timeout = 1\ntls = \"none\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[routes]\n\"chaos.test\" = \"{}\"\n[timeouts]\nconnect = 2\ncommand = 5\n",
                sink.addr
            ),
        )
        .unwrap();
        path
    };
    let hosts: Vec<PathBuf> = ["h1.test", "h2.test", "h3.test"]
        .iter()
        .map(|h| config(h))
        .collect();
    let mut daemons: Vec<Child> = hosts.iter().map(|c| daemon(c)).collect();
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let serial = Arc::new(AtomicUsize::new(0));

    // Intake 1: `mailspool send` processes on two hosts.
    let mut senders = Vec::new();
    for host in &hosts[..2] {
        let (acked, stop, serial, host) =
            (acked.clone(), stop.clone(), serial.clone(), host.clone());
        senders.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let token = format!("send-{}", serial.fetch_add(1, Ordering::SeqCst));
                let mut child = mailspool(&host)
                    .args(["send", "-i", "rcpt@chaos.test"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let _ = child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("Subject: chaos\n\ntoken: {token}\n").as_bytes());
                if child.wait().unwrap().success() {
                    acked.lock().unwrap().push(token);
                }
            }
        }));
    }
    // Intake 2: SMTP into `mailspool serve` on the third host.
    let (mut serve, port) = support::spawn_serve(mailspool(&hosts[2]));
    let smtp = tokio::spawn(chaos_intake::smtp_intake(
        Arc::new(AtomicUsize::new(port as usize)),
        acked.clone(),
        stop.clone(),
        serial.clone(),
    ));

    // The chaos: SIGKILL a random daemon and restart it; restart PostgreSQL once, half
    // way through.
    let started = Instant::now();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(150 + random(600))).await;
        let victim = random(3) as usize;
        kill9(&mut daemons[victim]);
        daemons[victim] = daemon(&hosts[victim]);
        if k == kills / 2 {
            cluster.restart().expect("restart PostgreSQL");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().unwrap();
    }
    smtp.await.unwrap();
    let intake_secs = started.elapsed().as_secs_f64();

    // Drain: claims of killed daemons run out after the 5 s lease.
    let backlog = acked.lock().unwrap().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60.max(backlog / 50));
    while queued(&url) != Some(0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = queued(&url);
    for d in &mut daemons {
        kill9(d);
    }
    kill9(&mut serve);

    let acked = acked.lock().unwrap().clone();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        if let Some(t) = token_of(&r.data) {
            *seen.entry(t).or_default() += 1;
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "chaos (postgres): {kills} kills and a database restart over {intake_secs:.1} s; \
         {} acknowledged, {} received ({} distinct), {} lost, {duplicates} duplicates, {left:?} queued",
        acked.len(),
        seen.values().sum::<usize>(),
        seen.len(),
        lost.len()
    );
    assert!(acked.len() > 20, "too little intake to mean anything");
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(
        duplicates <= kills + 2,
        "{duplicates} duplicates for {kills} kills"
    );
    assert_eq!(left, Some(0), "nodes left in the database");
    drop(cluster);
}
