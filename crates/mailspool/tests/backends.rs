//! One suite, two back ends: every intake path (the library's `send_mail`, the SMTP
//! listener, the HTTP batch), every delivery outcome (delivered, deferred, bounced) and
//! every queue operation (list, find, hold, release, retry, delete, usage) run against
//! the 0.50 file spool and against PostgreSQL, through the same `Store` seam.
//!
//! The PostgreSQL half needs PostgreSQL's programs: `.ci/run` starts a throw-away
//! cluster and names it in `MAILSPOOL_TEST_PG`; without that each test starts its own
//! (or skips on a machine without PostgreSQL; under CI=true it fails instead).

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use common::{Script, Sink};
use mailspool::{Config, Mailspool, MessageSource, SendMail, Store};
use mailspool_deliver::{Engine, NoDns, Outcome, PassOptions, Resolve, Selection};
use mailspool_pg::testing::TestDb;
use mailspool_spool::{Found, NodeEntry, Spool, SpoolConfig};

/// A spool of one kind or the other, and what keeps it alive.
enum Back {
    File(tempfile::TempDir),
    Pg(TestDb),
}

impl Back {
    fn file() -> Back {
        Back::File(tempfile::tempdir().unwrap())
    }
    fn pg() -> Option<Back> {
        TestDb::new().map(Back::Pg)
    }
    /// What `spool = ...` says.
    fn location(&self) -> String {
        match self {
            Back::File(d) => d.path().join("spool").display().to_string(),
            Back::Pg(db) => db.url.clone(),
        }
    }
    fn config(&self) -> Config {
        let mut c = Config {
            spool_dir: self.location().into(),
            hostname: "mailspool.test".into(),
            ..Config::default()
        };
        c.spool.usage_log = true;
        c
    }
    /// A handle on the spool, as a process opening it would have (a second call is a
    /// second host: its own connections and claims).
    fn open(&self) -> Arc<dyn Store> {
        mailspool::open_store(&self.config(), true).unwrap()
    }
}

fn nodes(store: &dyn Store) -> Vec<NodeEntry> {
    let mut out = Vec::new();
    store
        .visit_all(&mut |f| {
            if let Found::Node(n) = f {
                out.push(n);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    out.sort_by(|a, b| a.name.to.cmp(&b.name.to));
    out
}

fn body(store: &dyn Store, n: &NodeEntry) -> String {
    let mut s = String::new();
    store
        .open_node(n)
        .unwrap()
        .file
        .read_to_string(&mut s)
        .unwrap();
    s
}

fn engine(store: Arc<dyn Store>, sink: &Sink) -> Arc<Engine> {
    let cfg = common::config(&[("example.org", sink.addr), ("example.com", sink.addr)]);
    let dns: Arc<dyn Resolve> = Arc::new(NoDns);
    Engine::new(store, cfg, dns).unwrap()
}

fn all() -> PassOptions {
    PassOptions {
        selection: Selection::All,
        ..Default::default()
    }
}

fn send(ms: &Mailspool, text: &str) -> mailspool::Sent {
    ms.send_mail(SendMail::new(MessageSource::Bytes(text.as_bytes())))
        .unwrap()
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn file() {
                super::$name(super::Back::file()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = super::Back::pg() {
                    super::$name(b).await;
                }
            }
        }
    )*};
}

both!(
    send_mail_stores_one_node_per_recipient_without_bcc,
    delivered_nodes_are_removed_and_counted,
    a_temporary_failure_falls_back_a_tier_with_its_reply,
    a_permanent_failure_bounces_to_the_sender,
    hold_release_retry_and_delete,
    the_listener_commits_before_250,
    the_http_batch_commits_each_message,
    two_hosts_deliver_each_message_once,
    a_big_message_is_stored_and_sent_whole,
    history_suppressions_cursors_and_jobs,
    a_node_a_dead_host_delivered_is_not_sent_again,
);

/// A host died after delivering a node but before removing it. The host that takes the
/// node over (breaking the dead host's stale lock, or claiming it once the dead host's
/// lease ran out), running since before that delivery, finds it in the history and
/// removes the node; the node the dead host had not delivered is sent.
async fn a_node_a_dead_host_delivered_is_not_sent_again(b: Back) {
    let sink = Sink::start(Script::default()).await;
    let survivor = b.open();
    let engine = engine(survivor.clone(), &sink);
    engine.run_pass(&all()).await.unwrap(); // started: nothing in the history yet
    let ms = Mailspool::with_store(b.config(), b.open());
    let sent = send(
        &ms,
        "From: app@example.com\nTo: x@example.org, y@example.org\n\nhi\n",
    );
    let queued = nodes(&*survivor);
    let x = &queued[0];
    assert_eq!(x.name.to, "x@example.org");
    assert_eq!(x.name.id, sent.id);
    survivor
        .record_events(&[common::delivered_event(x)], true)
        .unwrap();
    match &b {
        // Its locks on both nodes.
        Back::File(_) => {
            for n in &queued {
                common::plant_dead_hosts_lock(&n.path);
            }
        }
        // Its claims on both nodes, their lease run out a second ago.
        Back::Pg(db) => mailspool_pg::testing::admin_sql(
            &db.url,
            "UPDATE mailspool_nodes SET lease_host = 'gone.test', lease_pid = 4242,
               lease_token = 'gone', lease_until = now() - interval '1 second'",
        )
        .unwrap(),
    }

    let report = engine.run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 2, "{:?}", report.results);
    let to: Vec<String> = sink.received().into_iter().flat_map(|r| r.to).collect();
    assert_eq!(to, ["y@example.org"], "x was delivered by the dead host");
    assert!(nodes(&*survivor).is_empty());
}

/// The history, the suppression list, readers' cursors and job leases behave the same
/// on both back ends.
async fn history_suppressions_cursors_and_jobs(b: Back) {
    use mailspool_events::{Event, Kind, Query, Scope, Suppression};
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    let sent = send(
        &ms,
        "From: app@example.com\nTo: a@example.org, B@Example.org\nMessage-ID: <h1@example.com>\n\nhi\n",
    );
    let page = store
        .read_events(&Query {
            key: Some(sent.id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.events.len(), 2);
    assert!(
        page.events
            .iter()
            .all(|e| e.kind == Kind::Accepted && e.source.as_deref() == Some("library"))
    );
    let by_mid = store
        .read_events(&Query {
            key: Some("<h1@example.com>".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_mid.events.len(), 2);
    let by_rcpt = store
        .read_events(&Query {
            recipient: Some("b@example.org".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_rcpt.events.len(), 1);
    // A reader placed at the end sees only what comes after.
    let mut end = Query {
        since: Some(mailspool_spool::now()),
        ..Default::default()
    };
    let mut at = store.read_events(&end).unwrap();
    while at.more {
        end.cursor = at.next.clone();
        at = store.read_events(&end).unwrap();
    }
    let later = Event::new(Kind::Held, &sent.id, "app@example.com", "a@example.org");
    store
        .record_events(std::slice::from_ref(&later), true)
        .unwrap();
    let after = store
        .read_events(&Query {
            cursor: at.next.clone(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(after.events, vec![later]);
    // Cursors and jobs.
    assert_eq!(store.load_cursor("webhook.t"), None);
    store.save_cursor("webhook.t", "x").unwrap();
    assert_eq!(store.load_cursor("webhook.t").as_deref(), Some("x"));
    assert!(store.take_job("webhook.t") && store.take_job("webhook.t"));
    // The suppression list.
    let s = Suppression::new("Gone@Example.org", &Scope::Global, "manual", 1);
    store.suppress(&s).unwrap();
    assert!(
        store
            .suppressed("x@example.com", "gone@example.org")
            .is_some()
    );
    assert_eq!(store.suppressions().unwrap().len(), 1);
    assert!(store.unsuppress("gone@example.org", "").unwrap());
    assert!(
        store
            .suppressed("x@example.com", "gone@example.org")
            .is_none()
    );
}

async fn send_mail_stores_one_node_per_recipient_without_bcc(b: Back) {
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    let sent = send(
        &ms,
        "From: app@example.com\nTo: a@example.org\nCc: b@example.org\nBcc: secret@example.org\nSubject: hi\n\nhello\n",
    );
    assert_eq!(sent.recipients.len(), 3);
    let n = nodes(store.as_ref());
    let to: Vec<&str> = n.iter().map(|n| n.name.to.as_str()).collect();
    assert_eq!(to, ["a@example.org", "b@example.org", "secret@example.org"]);
    assert!(
        n.iter()
            .all(|n| n.tier == 0 && !n.held && n.name.id == sent.id),
        "{n:?} {}",
        sent.id
    );
    assert!(n.iter().all(|n| n.name.from == "app@example.com"));
    // One stored message: the nodes group as one, and its bytes have no Bcc.
    assert_eq!(store.group_messages(n.clone()).len(), 1);
    let text = body(store.as_ref(), &n[0]);
    assert!(
        text.contains("Subject: hi") && text.contains("hello"),
        "{text}"
    );
    assert!(!text.contains("secret"), "Bcc kept: {text}");
    assert!(store.id_in_use(&sent.id).unwrap());
    assert!(!store.id_in_use("NOSUCHID").unwrap());
    // A caller-chosen id already in use is refused.
    let mut again = SendMail::new(MessageSource::Bytes(b"To: c@example.org\n\nx\n"));
    again.id = Some(sent.id.clone());
    assert!(ms.send_mail(again).is_err());
    assert_eq!(store.find(&sent.id).unwrap().len(), 3);
}

async fn delivered_nodes_are_removed_and_counted(b: Back) {
    let sink = Sink::start(Script::default()).await;
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    send(
        &ms,
        "From: app@example.com\nTo: a@example.org, b@example.org\n\nbody\n",
    );
    let report = engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 2, "{report:?}");
    let got = sink.received();
    assert_eq!(
        got.len(),
        1,
        "one transaction for one message at one domain"
    );
    assert_eq!(got[0].to.len(), 2);
    assert!(String::from_utf8_lossy(&got[0].data).contains("body"));
    assert!(nodes(store.as_ref()).is_empty());
    // A database counts deliveries once a second: give it that long.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let counted = loop {
        let usage = store.usage(1).unwrap();
        let today = usage.values().next().cloned().unwrap_or_default();
        if today.sent == 2 || std::time::Instant::now() > deadline {
            break today;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((counted.spooled, counted.sent), (2, 2), "{counted:?}");
    assert!(
        counted.sent_bytes > 0 && counted.spooled_bytes > 0,
        "{counted:?}"
    );
}

async fn a_temporary_failure_falls_back_a_tier_with_its_reply(b: Back) {
    let mut script = Script::default();
    script
        .rcpt
        .insert("later@example.org".into(), "451 4.3.0 try later".into());
    let sink = Sink::start(script).await;
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    send(&ms, "From: app@example.com\nTo: later@example.org\n\nx\n");
    let report = engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Deferred), 1, "{report:?}");
    let n = nodes(store.as_ref());
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].tier, 1, "fell back one tier: {report:?} {n:?}");
    assert!(n[0].name.time >= mailspool_spool::now() - 5, "a fresh time");
    assert!(
        store.due_at(&n[0]) > mailspool_spool::now(),
        "not due again yet"
    );
    let last = store.last_error(&n[0].name).unwrap_or_default();
    assert!(last.contains("451"), "{last:?}");
    // Not due: a due-only pass leaves it.
    let report = engine(store.clone(), &sink)
        .run_pass(&PassOptions::default())
        .await
        .unwrap();
    assert!(report.results.is_empty(), "{report:?}");
    // Its time comes: delivered from tier 1.
    sink.script().rcpt.clear();
    let report = engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 1, "{report:?}");
    assert!(nodes(store.as_ref()).is_empty());
}

async fn a_permanent_failure_bounces_to_the_sender(b: Back) {
    let mut script = Script::default();
    script
        .rcpt
        .insert("nobody@example.org".into(), "550 5.1.1 no such user".into());
    let sink = Sink::start(script).await;
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    let sent = send(
        &ms,
        "From: app@example.com\nTo: nobody@example.org\nSubject: lost\n\nx\n",
    );
    let report = engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Failed), 1, "{report:?}");
    // The original is gone; a bounce from the null sender waits for app@example.com.
    let n = nodes(store.as_ref());
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].name.to, "app@example.com");
    assert_eq!(n[0].name.from, "");
    assert_ne!(n[0].name.id, sent.id);
    let dsn = body(store.as_ref(), &n[0]);
    assert!(
        dsn.contains("550 5.1.1") && dsn.contains("nobody@example.org"),
        "{dsn}"
    );
    // The bounce is delivered like any message; a bounce of a bounce is never made.
    sink.script()
        .rcpt
        .insert("app@example.com".into(), "550 5.1.1 gone too".into());
    let report = engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Failed), 1, "{report:?}");
    assert!(nodes(store.as_ref()).is_empty(), "no bounce of a bounce");
}

async fn hold_release_retry_and_delete(b: Back) {
    let sink = Sink::start(Script::default()).await;
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    let sent = send(&ms, "From: app@example.com\nTo: a@example.org\n\nx\n");
    send(&ms, "From: app@example.com\nTo: b@example.org\n\ny\n");
    let n = nodes(store.as_ref());
    let held = store.hold(&n[0]).unwrap();
    assert!(held.held);
    let report = engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 1, "only the one not held");
    let left = nodes(store.as_ref());
    assert_eq!(left.len(), 1);
    assert!(left[0].held);
    assert_eq!(left[0].name.to, "a@example.org");
    // Paging sees it; find by id and by key.
    let page = store
        .page(Default::default(), 10, 1000, &mut |_| true)
        .unwrap();
    assert_eq!(page.nodes.len(), 1);
    assert_eq!(store.find(&sent.id).unwrap().len(), 1);
    assert_eq!(store.find(&left[0].file_name).unwrap().len(), 1);
    // Released into its tier with its time; retry makes it due now.
    let released = store.release(&left[0]).unwrap();
    assert!(!released.held);
    assert_eq!(released.name.time, left[0].name.time);
    let retried = store.retry_now(&released).unwrap();
    assert!(store.due_at(&retried) <= mailspool_spool::now());
    store.delete(&retried).unwrap();
    assert!(nodes(store.as_ref()).is_empty());
    assert!(matches!(
        store.delete(&retried),
        Err(mailspool::SpoolError::NotFound(_))
    ));
}

async fn the_listener_commits_before_250(b: Back) {
    let store = b.open();
    let cfg = mailspool_serve::ServeConfig {
        listen: vec![mailspool_serve::Listen {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: mailspool_serve::Mode::Relay,
            tls_cert: None,
            tls_key: None,
        }],
        hostname: "mx.test".into(),
        ..Default::default()
    };
    let bound = mailspool_serve::bind(cfg, store.clone(), Default::default())
        .await
        .unwrap();
    let addr = bound.local_addrs()[0];
    tokio::spawn(bound.run(std::future::pending()));
    let settings = mailspool_smtp::ClientSettings {
        helo_name: "client.test".into(),
        timeouts: common::quick_timeouts(),
        tls: mailspool_smtp::TlsPolicy::None,
        auth: None,
        bind: Vec::new(),
        verifier: None,
    };
    let tls = mailspool_smtp::TlsConnectors::new(None).unwrap();
    let mut s = mailspool_smtp::Session::connect(addr, "127.0.0.1", &settings, &tls)
        .await
        .unwrap();
    let text = "Subject: over smtp\r\n\r\nline\r\n.leading dot\r\n";
    let env = mailspool_smtp::Envelope {
        from: "app@example.com".into(),
        to: vec!["x@example.org".into(), "y@example.org".into()],
        size: text.len() as u64,
        eight_bit: false,
        utf8_headers: false,
    };
    let out = s.send(&env, &mut text.as_bytes()).await.unwrap();
    let reply = out.data.unwrap();
    assert!(reply.is_positive(), "{reply:?}");
    // The 250 came after the commit: the nodes are there now.
    let n = nodes(store.as_ref());
    assert_eq!(n.len(), 2, "{n:?}");
    let stored = body(store.as_ref(), &n[0]);
    assert!(stored.starts_with("Received: from"), "{stored}");
    assert!(
        stored.contains("\n.leading dot\n"),
        "dot unstuffed: {stored}"
    );
    assert!(reply.to_string().contains(&n[0].name.id), "{reply}");
}

async fn the_http_batch_commits_each_message(b: Back) {
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    let mut batch = Vec::new();
    for i in 0..5 {
        let text = format!("From: app@example.com\nTo: r{i}@example.org\n\nmessage {i}\n");
        let prepared = ms
            .prepare(SendMail::new(MessageSource::Bytes(text.as_bytes())))
            .unwrap();
        batch.push(prepared);
    }
    let results = ms.commit_batch(batch);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let n = nodes(store.as_ref());
    assert_eq!(n.len(), 5);
    for (i, node) in n.iter().enumerate() {
        assert_eq!(node.name.to, format!("r{i}@example.org"));
        assert!(body(store.as_ref(), node).contains(&format!("message {i}")));
    }
}

async fn two_hosts_deliver_each_message_once(b: Back) {
    let sink = Sink::start(Script::default()).await;
    let intake = b.open();
    let ms = Mailspool::with_store(b.config(), intake.clone());
    let mut ids = Vec::new();
    for i in 0..60 {
        let text = format!("From: app@example.com\nTo: r{i}@example.org\n\nn {i}\n");
        ids.push(send(&ms, &text).id);
    }
    // Two "hosts": separate handles (connections, claims) on one spool, at once.
    let (a, c) = (engine(b.open(), &sink), engine(b.open(), &sink));
    let opts = all();
    let (ra, rc) = tokio::join!(a.run_pass(&opts), c.run_pass(&opts));
    let (ra, rc) = (ra.unwrap(), rc.unwrap());
    let delivered = ra.count(Outcome::Delivered) + rc.count(Outcome::Delivered);
    // A node one host took is skipped by the other; a second pass picks up any left.
    let rest = a.run_pass(&all()).await.unwrap();
    assert_eq!(
        delivered + rest.count(Outcome::Delivered),
        60,
        "{ra:?} {rc:?} {rest:?}"
    );
    let got = sink.received();
    assert_eq!(got.len(), 60, "each message delivered once");
    let mut tos: Vec<String> = got.iter().flat_map(|r| r.to.clone()).collect();
    tos.sort();
    tos.dedup();
    assert_eq!(tos.len(), 60);
    assert!(nodes(intake.as_ref()).is_empty());
}

async fn a_big_message_is_stored_and_sent_whole(b: Back) {
    let sink = Sink::start(Script::default()).await;
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    // Over three database chunks, and not a multiple of one.
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n";
    let big: String = line.repeat(12_000);
    let text = format!("From: app@example.com\nTo: big@example.org\n\n{big}the end\n");
    let sent = send(&ms, &text);
    assert!(sent.size > 3 * 256 * 1024, "{}", sent.size);
    let n = nodes(store.as_ref());
    let file = store.open_node(&n[0]).unwrap();
    assert_eq!(file.size, sent.size);
    assert_eq!(file.file.metadata().unwrap().len(), sent.size);
    engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    let got = sink.received();
    assert_eq!(got.len(), 1);
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(
        data.ends_with(&format!("{big}the end\n")),
        "body arrived whole"
    );
}

/// The lease: a live host's claims are never taken (it renews them), a dead host's are
/// taken once its lease ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leases_outlive_their_holder_only_until_they_run_out() {
    let Some(db) = TestDb::new() else { return };
    let open = || {
        mailspool_pg::PgSpool::open(
            &db.url,
            SpoolConfig::default(),
            mailspool_pg::PgOptions {
                lease: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let (first, second) = (Arc::new(open()), Arc::new(open()));
    let ms = Mailspool::with_store(
        Config {
            spool_dir: db.url.clone().into(),
            ..Config::default()
        },
        first.clone(),
    );
    for i in 0..3 {
        send(&ms, &format!("To: r{i}@example.org\n\nx\n"));
    }
    let wanted = mailspool_spool::Wanted::Due;
    let taken = first.claim(&[0], 100, wanted).unwrap().unwrap();
    assert_eq!(taken.len(), 3);
    assert!(second.claim(&[0], 100, wanted).unwrap().unwrap().is_empty());
    // Past the lease, the first host is alive and renewing: still nothing.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(second.claim(&[0], 100, wanted).unwrap().unwrap().is_empty());
    // Its changes need its claim; the other host cannot delete what it holds.
    assert!(matches!(
        second.delete(&taken[0]),
        Err(mailspool::SpoolError::Locked { .. })
    ));
    // The first host dies (its renewer with it): after the lease, the nodes are free.
    drop(ms);
    drop(first);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let retaken = second.claim(&[0], 100, wanted).unwrap().unwrap();
    assert_eq!(retaken.len(), 3);
    // A settle by a holder whose lease was taken over is refused: nothing twice.
    let stale = taken[0].clone();
    let third = open();
    assert!(third.lock_node(&stale).is_err(), "held by the second host");
}

/// A spool URL in the configuration is how a database is chosen; `db migrate` made
/// the schema, and a database at another version is refused with what to run.
#[test]
fn postgres_schema_version_is_checked() {
    let Some(db) = TestDb::new() else { return };
    mailspool_pg::testing::admin_sql(
        &db.url,
        "INSERT INTO mailspool_schema (version) VALUES (99)",
    )
    .unwrap();
    let err = mailspool_pg::PgSpool::open(&db.url, SpoolConfig::default(), Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("schema version 99") && err.contains("db migrate"),
        "{err}"
    );
}

/// The file spool half of the seam is the 0.50 layout, byte for byte: what the seam
/// committed is an ordinary node file a 0.50 dequeuer reads.
#[test]
fn the_file_back_end_writes_plain_050_nodes() {
    let b = Back::file();
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    send(&ms, "To: a@example.org\nSubject: s\n\nbody\n");
    let spool = Spool::open(b.location(), SpoolConfig::default()).unwrap();
    let scan = spool.scan().unwrap();
    assert_eq!(scan.nodes.len(), 1);
    let text = std::fs::read_to_string(&scan.nodes[0].path).unwrap();
    assert!(text.ends_with("\nbody\n"));
}

/// `sslmode=require` is TLS with the database's certificate verified: against the CA
/// named by `spool_ca_file` it connects (and the server sees a TLS session); without
/// that CA it is refused; without `sslmode` it is plain TCP.
#[test]
fn postgres_tls_is_verified_when_the_url_requires_it() {
    let ca = common::TestCa::new();
    let (cert, key) = ca.issue_pem("127.0.0.1");
    let cluster = match mailspool_pg::testing::Cluster::start_with(true, Some((&cert, &key))) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v != "true"),
                "PostgreSQL is needed under CI=true: {e}"
            );
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let url = format!("{}?sslmode=require", cluster.admin_url());
    let options = |ca: Option<std::path::PathBuf>| mailspool_pg::PgOptions {
        ca_file: ca,
        ..Default::default()
    };
    std::thread::spawn({
        let (url, ca_file) = (url.clone(), ca_file.clone());
        move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(mailspool_pg::migrate(&url, Some(&ca_file)))
                .unwrap()
        }
    })
    .join()
    .unwrap();
    let store =
        mailspool_pg::PgSpool::open(&url, SpoolConfig::default(), options(Some(ca_file))).unwrap();
    assert!(!store.id_in_use("X").unwrap());
    let admin = cluster.admin_url();
    let encrypted = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (c, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let n: i64 = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
                         WHERE ssl AND application_name = 'mailspool'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                n
            })
    })
    .join()
    .unwrap();
    assert!(encrypted >= 1, "no TLS session from mailspool");
    // Not signed by a root we trust: refused, not silently plain.
    let err = mailspool_pg::PgSpool::open(&url, SpoolConfig::default(), options(None))
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // No sslmode: plain TCP to the same server.
    mailspool_pg::PgSpool::open(&cluster.admin_url(), SpoolConfig::default(), options(None))
        .unwrap();
}

/// A destination that throttles us cools for a while; on a database queue its nodes are
/// then made due when it may take mail again, so the next plan (of any host) does not
/// take them straight back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_postpones_mail_for_a_cooling_destination() {
    let Some(b) = Back::pg() else { return };
    let script = Script {
        mail: Some("421 4.7.28 rate limited, try again later".into()),
        ..Script::default()
    };
    let sink = Sink::start(script).await;
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    for i in 0..3 {
        send(
            &ms,
            &format!("From: app@example.com\nTo: r{i}@example.org\n\nx\n"),
        );
    }
    let engine = engine(store.clone(), &sink);
    // The first pass is throttled: the nodes stay in tier 0, no retry used.
    engine.run_pass(&all()).await.unwrap();
    assert!(nodes(store.as_ref()).iter().all(|n| n.tier == 0));
    // The destination cools: the next pass leaves its mail alone and postpones it.
    let report = engine.run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Delivered), 0, "{report:?}");
    let left = nodes(store.as_ref());
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|n| n.tier == 0 && !n.held));
    // Not due for any host now (it would be at once without the postponement: tier 0
    // has no wait), and not claimed by anyone.
    let other = b.open();
    let taken = other
        .claim(&[0], 100, mailspool_spool::Wanted::Due)
        .unwrap()
        .unwrap();
    assert!(taken.is_empty(), "{taken:?}");
    // Still listed and deliverable on demand (`queue run --all` ignores due times).
    let forced = other
        .claim(&[0], 100, mailspool_spool::Wanted::All)
        .unwrap()
        .unwrap();
    assert_eq!(forced.len(), 3);
}

/// PostgreSQL: the bounce and the removal of the node it reports are one transaction,
/// so a daemon killed between two commits can neither lose the notice nor send a second
/// one. The database itself checks it: a trigger refuses to delete the failed node in a
/// transaction that has not also inserted the bounce (a message from the null sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bounce_and_removal_are_one_transaction() {
    let Some(b) = Back::pg() else { return };
    let Back::Pg(db) = &b else { unreachable!() };
    mailspool_pg::testing::admin_sql(
        &db.url,
        "CREATE FUNCTION t_bounced_here() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NOT EXISTS (SELECT 1 FROM mailspool_messages WHERE sender = ''
                          AND xmin::text::bigint = pg_current_xact_id()::text::bigint % 4294967296)
           THEN RAISE EXCEPTION 'the failed node is removed outside its bounce''s transaction';
           END IF;
           RETURN OLD;
         END $$;
         CREATE TRIGGER t_bounced_here BEFORE DELETE ON mailspool_nodes FOR EACH ROW
           WHEN (OLD.rcpt = 'nobody@example.org') EXECUTE FUNCTION t_bounced_here();",
    )
    .unwrap();
    let mut script = Script::default();
    script
        .rcpt
        .insert("nobody@example.org".into(), "550 5.1.1 no such user".into());
    let sink = Sink::start(script).await;
    let store = b.open();
    let ms = Mailspool::with_store(b.config(), store.clone());
    send(
        &ms,
        "From: app@example.com\nTo: nobody@example.org\nSubject: lost\n\nx\n",
    );
    let report = engine(store.clone(), &sink).run_pass(&all()).await.unwrap();
    assert_eq!(report.count(Outcome::Failed), 1, "{report:?}");
    let n = nodes(store.as_ref());
    let to: Vec<&str> = n.iter().map(|n| n.name.to.as_str()).collect();
    assert_eq!(
        to,
        ["app@example.com"],
        "the bounce alone, the failed node gone"
    );
}
