//! Chaos: intake through `mailspool send` and `mailspool serve` while `mailspool daemon`
//! delivers to an in-process sink that records every message by a unique token; the
//! daemon and the listener are killed with SIGKILL at random moments and restarted.
//!
//! At the end: every acknowledged message reached the sink at least once; duplicates are
//! at most 0.1% (only the window between the sink's 250 and the unlink); tmp/ is empty
//! after the next start; no lock is older than its stale time; nothing is left queued.
//!
//! CI runs 6 kills; `MAILSPOOL_CHAOS_KILLS=60 cargo test --release --test chaos -- --nocapture`
//! runs a long one.

#[path = "support/chaos_intake.rs"]
mod chaos_intake;
#[path = "../../deliver/tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Script, Sink};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
        c.env("MAILSPOOL_CONFIG", self.dir.path().join("mailspool.toml"))
            .env_remove("MAILSPOOL_SPOOL")
            .env("MAILSPOOL_LOG", "warn");
        c
    }
    fn daemon(&self) -> Child {
        self.cmd()
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
    /// Start the listener; its port comes on stderr.
    fn serve(&self) -> (Child, u16) {
        support::spawn_serve(self.cmd())
    }
    fn files(&self, sub: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.spool().join(sub)) else {
            return out;
        };
        out.extend(rd.map(|e| e.unwrap().path()));
        out
    }
    fn queued(&self) -> usize {
        (0..7)
            .flat_map(|t| self.files(&t.to_string()))
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                !n.starts_with('.') && !n.ends_with(".NFSLock")
            })
            .count()
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_nine_chaos_loses_nothing() {
    let kills: usize = std::env::var("MAILSPOOL_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let sink = Sink::start(Script::default()).await;
    let env = Env {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::write(
        env.dir.path().join("mailspool.toml"),
        format!(
            "dequeue_dir = \"{}\"\ndequeue_timeout = 1\ntls = \"none\"\nhostname = \"chaos.test\"\nusage_log = false\n[[listen]]\naddress = \"127.0.0.1:0\"\n[routes]\n\"chaos.test\" = \"{}\"\n[timeouts]\nconnect = 2\ncommand = 5\n",
            env.spool().display(),
            sink.addr
        ),
    )
    .unwrap();
    std::fs::create_dir_all(env.spool().join("0")).unwrap();
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let serial = Arc::new(AtomicUsize::new(0));
    let port = Arc::new(AtomicUsize::new(0));

    let mut daemon = env.daemon();
    let (mut serve, p) = env.serve();
    port.store(p as usize, Ordering::SeqCst);

    // Intake 1: `mailspool send` processes, two at a time.
    let mut senders = Vec::new();
    for _ in 0..2 {
        let (acked, stop, serial, cmd_env) = (
            acked.clone(),
            stop.clone(),
            serial.clone(),
            env.dir.path().to_owned(),
        );
        senders.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let token = format!("send-{}", serial.fetch_add(1, Ordering::SeqCst));
                let mut child = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
                    .env("MAILSPOOL_CONFIG", cmd_env.join("mailspool.toml"))
                    .env_remove("MAILSPOOL_SPOOL")
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
    // Intake 2: SMTP into `mailspool serve`, reconnecting across its deaths.
    let smtp = tokio::spawn(chaos_intake::smtp_intake(
        port.clone(),
        acked.clone(),
        stop.clone(),
        serial.clone(),
    ));

    // The chaos: kill -9 the daemon or the listener at random moments, restart it.
    let started = Instant::now();
    for k in 0..kills {
        let pause = 100 + (rand_u64() % 600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if k % 2 == 0 {
            kill9(&mut daemon);
            daemon = env.daemon();
        } else {
            kill9(&mut serve);
            let (s, p) = env.serve();
            serve = s;
            port.store(p as usize, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().unwrap();
    }
    smtp.await.unwrap();
    let intake_secs = started.elapsed().as_secs_f64();

    // One more start after the last kill: it clears crash leftovers from tmp/.
    kill9(&mut daemon);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    daemon = env.daemon();
    // Draining takes a while in a debug build: allow 60 s, or 10 ms a message.
    let backlog = acked.lock().unwrap().len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60.max(backlog / 100));
    while env.queued() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let acked = acked.lock().unwrap().clone();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in sink.received() {
        if let Some(t) = token_of(&r.data) {
            *seen.entry(t).or_default() += 1;
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let tmp_left = env.files("tmp").len();
    let stale_locks = (0..7)
        .flat_map(|t| env.files(&t.to_string()))
        .filter(|p| p.to_string_lossy().ends_with(".NFSLock"))
        .filter(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|m| m.elapsed().unwrap_or_default() > Duration::from_secs(2))
                .unwrap_or(false)
        })
        .count();
    let queued = env.queued();
    eprintln!(
        "chaos: {kills} kills over {intake_secs:.1} s; {} acknowledged, {} received ({} distinct), {} lost, {} duplicates, {} queued, {} in tmp/, {} stale locks",
        acked.len(),
        seen.values().sum::<usize>(),
        seen.len(),
        lost.len(),
        duplicates,
        queued,
        tmp_left,
        stale_locks
    );
    let tiers: Vec<usize> = (0..7).map(|t| env.files(&t.to_string()).len()).collect();
    let sample_error = env
        .files("meta")
        .first()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    eprintln!(
        "chaos: files per tier {tiers:?}; a side-data sample: {}",
        sample_error.lines().last().unwrap_or("-")
    );
    kill9(&mut daemon);
    kill9(&mut serve);
    // A duplicate needs a daemon killed between the sink's 250 and the unlink (which
    // waits for the event log's flush), so they come with kills, not with volume: at
    // most one per delivery in flight at a daemon kill, that is per session open at the
    // sink (the 60-kill run in docs/reliability.md shows 0.004 % of the mail).
    let daemon_kills = kills.div_ceil(2) + 1; // every other kill, and the last restart
    let sessions = sink.state.peak_open.load(Ordering::SeqCst).max(1);
    eprintln!("chaos: {daemon_kills} daemon kills, at most {sessions} sessions open at once");
    assert!(acked.len() > 20, "too little intake to mean anything");
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(
        duplicates <= (acked.len() / 1000).max(daemon_kills * sessions),
        "{duplicates} duplicates from {daemon_kills} daemon kills with up to {sessions} deliveries in flight"
    );
    assert_eq!(queued, 0, "nodes stuck in the spool");
    assert_eq!(tmp_left, 0, "leftovers in tmp/ after the next start");
    assert_eq!(stale_locks, 0);
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}
