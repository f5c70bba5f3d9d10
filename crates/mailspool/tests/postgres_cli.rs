//! The PostgreSQL spool from the command line, as an operator uses it: `db migrate`,
//! `send`, `queue`, `daemon`, and `migrate` from a Mail::Spool 0.50 spool to the
//! database and back, interrupted and resumed.

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Script, Sink};
use mailspool_pg::testing::TestDb;
use mailspool_spool::{NodeName, Placement, SpoolConfig, Store};

fn mailspool(dir: &Path, spool: &str) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
    c.env("MAILSPOOL_SPOOL", spool)
        .env("MAILSPOOL_CONFIG", dir.join("mailspool.toml"))
        .env("LOGNAME", "tester")
        .env_remove("MAILSPOOL_LOG");
    c
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pg(url: &str) -> mailspool_pg::PgSpool {
    mailspool_pg::PgSpool::open(url, SpoolConfig::default(), Default::default()).unwrap()
}

fn all_nodes(store: &dyn Store) -> Vec<mailspool_spool::NodeEntry> {
    let mut v = Vec::new();
    store
        .visit_all(&mut |f| {
            if let mailspool_spool::Found::Node(n) = f {
                v.push(n);
            }
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    v.sort_by(|a, b| a.name.to.cmp(&b.name.to));
    v
}

#[test]
fn db_migrate_is_versioned_and_safe_to_repeat() {
    let Some(db) = TestDb::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mailspool.toml"), "").unwrap();
    // TestDb migrated it already: a second run changes nothing and says so.
    let out = mailspool(dir.path(), &db.url)
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let at = mailspool_pg::SCHEMA_VERSION;
    assert!(
        stdout(&out).contains(&format!("already at version {at}")),
        "{out:?}"
    );
    assert!(!stdout(&out).contains(":***@") || db.url.contains(':'));
    // A fresh database: migrated to the current version, step by step.
    let fresh = format!("{}_fresh", db.url);
    let admin = db.url.rsplit_once('/').unwrap().0.to_owned() + "/postgres";
    let name = fresh.rsplit_once('/').unwrap().1.to_owned();
    mailspool_pg::testing::admin_sql(&admin, &format!("CREATE DATABASE {name}")).unwrap();
    let out = mailspool(dir.path(), &fresh)
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(stdout(&out).contains(&format!("now at {at}")), "{out:?}");
    // Not migrated: opening it says what to run.
    let bare = format!("{}_bare", db.url);
    let bare_name = bare.rsplit_once('/').unwrap().1.to_owned();
    mailspool_pg::testing::admin_sql(&admin, &format!("CREATE DATABASE {bare_name}")).unwrap();
    let out = mailspool(dir.path(), &bare)
        .args(["queue"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mailspool db migrate"),
        "{out:?}"
    );
    // A directory spool is not a database.
    let out = mailspool(dir.path(), dir.path().join("spool").to_str().unwrap())
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    for n in [name, bare_name] {
        mailspool_pg::testing::admin_sql(&admin, &format!("DROP DATABASE {n} WITH (FORCE)"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_queue_and_daemon_on_a_database() {
    let Some(db) = TestDb::new() else { return };
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mailspool.toml"),
        format!(
            "spool = \"{}\"\nhostname = \"db.test\"\ndequeue_timeout = 30\ntls = \"none\"\n[routes]\n\"example.org\" = \"{}\"\n",
            db.url, sink.addr
        ),
    )
    .unwrap();
    // The configuration names the database: no MAILSPOOL_SPOOL.
    let cli = || {
        let mut c = mailspool(dir.path(), "");
        c.env_remove("MAILSPOOL_SPOOL");
        c
    };
    let out = cli()
        .args(["send", "a@example.org", "b@example.org"])
        .write_stdin("Subject: by database\n\nhello\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = stdout(&out).trim().to_owned();
    let list = stdout(&cli().args(["queue"]).output().unwrap());
    assert!(
        list.contains(&id) && list.contains("a@example.org"),
        "{list}"
    );
    let held = cli()
        .args(["queue", "hold", &id, "--to", "b@example.org"])
        .output()
        .unwrap();
    assert!(held.status.success(), "{held:?}");
    let summary = stdout(&cli().args(["queue", "summary"]).output().unwrap());
    assert!(summary.contains("2 nodes of 1 message"), "{summary}");
    let show = stdout(&cli().args(["queue", "show", &id]).output().unwrap());
    assert!(show.contains("Subject: by database"), "{show}");

    // The daemon delivers what is not held, woken by the commit's notification (its
    // tick is 30 s: a delivery within seconds is the notification's doing).
    let mut daemon = std::process::Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
        .env("MAILSPOOL_CONFIG", dir.path().join("mailspool.toml"))
        .env_remove("MAILSPOOL_SPOOL")
        .env("MAILSPOOL_LOG", "warn")
        .arg("daemon")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.received().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.received()[0].to, ["a@example.org"]);
    let started = Instant::now();
    let out = cli()
        .args(["send", "c@example.org"])
        .write_stdin("Subject: second\n\nwoken\n")
        .output()
        .unwrap();
    assert!(out.status.success());
    while sink.received().len() < 2 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.received().len(), 2, "not woken by the commit");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Released, the held one goes on the next look.
    let rel = cli()
        .args(["queue", "release", &id, "--to", "b@example.org"])
        .output()
        .unwrap();
    assert!(rel.status.success(), "{rel:?}");
    let retry = cli().args(["queue", "run"]).output().unwrap();
    assert!(retry.status.success(), "{retry:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.received().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sink.received().len(), 3);
    // Stopped as systemd stops it: what it counted is written before it exits.
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    let list = stdout(&cli().args(["queue"]).output().unwrap());
    assert!(list.contains("empty") || list.trim().is_empty(), "{list}");
    let usage = stdout(&cli().args(["usage", "--json"]).output().unwrap());
    assert!(usage.contains("\"sent\":3"), "{usage}");
}

/// A Mail::Spool 0.50 spool (separate files per recipient, one id shared by two
/// messages, a node in tier 2, a 0.50 lock) moved to PostgreSQL and back; an
/// interrupted run resumed without moving any node twice.
#[test]
fn migrate_a_050_spool_to_the_database_and_back() {
    let Some(db) = TestDb::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mailspool.toml"), "").unwrap();
    let old = dir.path().join("old");
    for t in 0..7 {
        std::fs::create_dir_all(old.join(t.to_string())).unwrap();
    }
    let write = |tier: u32, name: &str, body: &str| {
        std::fs::write(old.join(tier.to_string()).join(name), body).unwrap();
    };
    // 0.50 ids repeat within a second: two messages share one.
    let id = "d41d8cd98f00b204e9800998ecf8427e";
    let a = "Subject: one\n\nfirst message\n";
    let b = "Subject: two\n\nsecond message\n";
    write(
        0,
        &format!("1790000000-{id}-x%40example.org-s%40example.com"),
        a,
    );
    write(
        0,
        &format!("1790000000-{id}-y%40example.org-s%40example.com"),
        a,
    );
    write(
        0,
        &format!("1790000000-{id}-z%40example.org-s%40example.com"),
        b,
    );
    write(2, &format!("1789990000-{id}0-late%40example.org-"), b);
    std::fs::write(old.join("0").join("junk-that-is-not-a-node"), "left alone").unwrap();

    // An earlier run was interrupted after adding one node to the database but before
    // removing it here: the resumed run must not add it again.
    let store = pg(&db.url);
    let first = old
        .join("0")
        .join(format!("1790000000-{id}-x%40example.org-s%40example.com"));
    let origin = format!("{}:{}", old.display(), first.display());
    let file = std::fs::File::open(&first).unwrap();
    let place = Placement {
        tier: 0,
        time: 1_790_000_000,
        held: false,
        to: "x@example.org".into(),
    };
    assert_eq!(
        store
            .import(id, "s@example.com", &file, &[(place, origin)])
            .unwrap(),
        1
    );

    let out = mailspool(dir.path(), &db.url)
        .args(["migrate", "--from", old.to_str().unwrap(), "--to", &db.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("moved 4 nodes"), "{out:?}");
    assert!(
        stdout(&out).contains("1 had been moved by an earlier run"),
        "{out:?}"
    );
    let moved = all_nodes(&store);
    let summary: Vec<(usize, String, String, u64)> = moved
        .iter()
        .map(|n| (n.tier, n.name.to.clone(), n.name.from.clone(), n.name.time))
        .collect();
    assert_eq!(
        summary,
        [
            (2, "late@example.org".into(), "".into(), 1_789_990_000),
            (
                0,
                "x@example.org".into(),
                "s@example.com".into(),
                1_790_000_000
            ),
            (
                0,
                "y@example.org".into(),
                "s@example.com".into(),
                1_790_000_000
            ),
            (
                0,
                "z@example.org".into(),
                "s@example.com".into(),
                1_790_000_000
            ),
        ]
    );
    // The same id, other bytes: two messages, never one.
    let groups = store.group_messages(moved.iter().filter(|n| n.name.id == id).cloned().collect());
    assert_eq!(
        groups.len(),
        3,
        "x (earlier run), y (same bytes as x), z: {groups:?}"
    );
    // Nothing left behind but what is not a node.
    let left: Vec<_> = (0..7)
        .flat_map(|t| std::fs::read_dir(old.join(t.to_string())).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["junk-that-is-not-a-node"]);
    // Again: nothing to move.
    let again = mailspool(dir.path(), &db.url)
        .args(["migrate", "--from", old.to_str().unwrap(), "--to", &db.url])
        .output()
        .unwrap();
    assert!(stdout(&again).contains("moved 0 nodes"), "{again:?}");

    // And back, to a new directory: the 0.50 names and bytes as they were.
    let back = dir.path().join("back");
    let out = mailspool(dir.path(), &db.url)
        .args(["migrate", "--from", &db.url, "--to", back.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(all_nodes(&store).is_empty(), "moved out of the database");
    let name = |tier: u32, to: &str, from: &str, time: u64| {
        back.join(tier.to_string())
            .join(NodeName::new(time, id, to, from).file_name())
    };
    assert_eq!(
        std::fs::read_to_string(name(0, "x@example.org", "s@example.com", 1_790_000_000)).unwrap(),
        a
    );
    assert_eq!(
        std::fs::read_to_string(name(0, "z@example.org", "s@example.com", 1_790_000_000)).unwrap(),
        b
    );
    let late = back
        .join("2")
        .join(NodeName::new(1_789_990_000, format!("{id}0"), "late@example.org", "").file_name());
    assert_eq!(std::fs::read_to_string(late).unwrap(), b);
    let count: usize = (0..7)
        .map(|t| std::fs::read_dir(back.join(t.to_string())).unwrap().count())
        .sum();
    assert_eq!(count, 4);
}

/// `daemon` and `serve` started while the database is down (a boot where mailspool's
/// unit starts before PostgreSQL's) wait for it with a logged backoff instead of exiting
/// 75, then work: the daemon delivers what is queued once the database is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_serve_wait_for_a_database_that_is_down_at_start() {
    let cluster = match mailspool_pg::testing::Cluster::start(true) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v != "true"),
                "PostgreSQL is missing under CI: {e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
    };
    let url = cluster.admin_url();
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mailspool.toml"),
        format!(
            "spool = \"{url}\"\nhostname = \"db.test\"\ndequeue_timeout = 30\ntls = \"none\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n[routes]\n\"example.org\" = \"{}\"\n",
            sink.addr
        ),
    )
    .unwrap();
    let cli = || {
        let mut c = mailspool(dir.path(), "");
        c.env_remove("MAILSPOOL_SPOOL");
        c
    };
    assert!(
        cli()
            .args(["db", "migrate"])
            .output()
            .unwrap()
            .status
            .success()
    );
    cluster.stop().unwrap();

    let start = |what: &str| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin!("mailspool"))
            .arg(what)
            .env("MAILSPOOL_CONFIG", dir.path().join("mailspool.toml"))
            .env_remove("MAILSPOOL_SPOOL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{what}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    let mut daemon = start("daemon");
    let mut serve = start("serve");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon exited while the database was down"
    );
    assert!(
        serve.try_wait().unwrap().is_none(),
        "serve exited while the database was down"
    );
    for what in ["daemon", "serve"] {
        let log =
            std::fs::read_to_string(dir.path().join(format!("{what}.log"))).unwrap_or_default();
        assert!(
            log.contains("cannot be reached; waiting for it"),
            "{what}: {log}"
        );
    }

    cluster.start_again().unwrap();
    let out = cli()
        .args(["send", "late@example.org"])
        .write_stdin("Subject: after the database came up\n\nhello\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    while sink.received().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the daemon never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serve.try_wait().unwrap().is_none(), "serve runs on");
    for c in [&mut daemon, &mut serve] {
        std::process::Command::new("kill")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        c.wait().unwrap();
    }
}

/// Root migrating a 0.50 spool it owns into a database that has no tables yet, while the
/// configured spool is a directory of another user (the package's layout): root works
/// as the owner of the directory it names, not the configured spool's, and the
/// destination's tables are made first (neither "belongs to root" nor 78).
#[test]
fn root_migrates_its_own_050_spool_into_an_empty_database() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let Some(db) = TestDb::new() else { return };
    mailspool_pg::testing::admin_sql(&db.url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let configured = dir.path().join("configured");
    std::fs::create_dir(&configured).unwrap();
    std::os::unix::fs::chown(&configured, Some(65534), Some(65534)).unwrap();
    std::fs::write(
        dir.path().join("mailspool.toml"),
        format!("dequeue_dir = \"{}\"\n", configured.display()),
    )
    .unwrap();
    let old = dir.path().join("old");
    for t in 0..7 {
        std::fs::create_dir_all(old.join(t.to_string())).unwrap();
    }
    std::fs::write(
        old.join("0")
            .join("1790000000-d41d8cd98f00b204e9800998ecf8427e-x%40example.org-s%40example.com"),
        "Subject: mine\n\nroot's queued mail\n",
    )
    .unwrap();
    let out = mailspool(dir.path(), configured.to_str().unwrap())
        .args(["migrate", "--from", old.to_str().unwrap(), "--to", &db.url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("moved 1 node"), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("created the spool's tables"),
        "{out:?}"
    );
    let moved = all_nodes(&pg(&db.url));
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].name.to, "x@example.org");
}
