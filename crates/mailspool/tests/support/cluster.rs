#![allow(dead_code)] // each test uses its own part of the harness
//! A small real cluster on one machine, for `tests/cluster.rs` and `bench/cluster`:
//! PostgreSQL (one cluster, or a primary and a streaming standby) in namespaces of
//! their own, N mailspool hosts each in its own namespace with its own address,
//! `hostname` and source address, running `serve` and `daemon`, a sink host acting as
//! the destination, and a client host that sends mail in over SMTP.
//!
//! ```text
//!   198.18.0.2  db1 (primary)     198.18.0.3  db2 (standby, when replicated)
//!   198.18.0.10 sink (dest.test)  198.18.0.20 client
//!   198.18.0.21.. hosts h1.cluster.test ..
//! ```
//!
//! Include with `#[path = "../../deliver/tests/common/mod.rs"] mod common;` and `mod
//! support;`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailspool_pg::testing::{Cluster, Place, admin_sql};

use crate::common::{Script, Sink};
use crate::support::netns::{Member, Net};

/// Destination domains routed to the sink besides `dest.test`: `d0.dest.test` ...
pub const MAX_DOMAINS: usize = 64;

/// PostgreSQL's port in its namespace (each database host has the port to itself).
pub const PG_PORT: u16 = 5432;
/// The database the hosts share.
pub const DB: &str = "cluster";

/// How the database is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Database {
    /// One server.
    Single,
    /// A primary and a streaming standby; `sync`: synchronous replication.
    Replicated { sync: bool },
}

/// A database server: its host and the cluster running there.
pub struct DbHost {
    pub member: Member,
    pub pg: Option<Cluster>,
}

/// A mailspool host.
pub struct Host {
    pub member: Member,
    pub config: PathBuf,
    pub serve: Option<Child>,
    pub daemon: Option<Child>,
}

impl Host {
    /// Where its `serve` listens.
    pub fn smtp(&self) -> SocketAddr {
        SocketAddr::from((self.member.addr, 25))
    }

    fn mailspool(&self) -> std::process::Command {
        let mut c = self
            .member
            .command(assert_cmd::cargo::cargo_bin!("mailspool"));
        c.env("MAILSPOOL_CONFIG", &self.config)
            .env_remove("MAILSPOOL_SPOOL")
            .env(
                "MAILSPOOL_LOG",
                std::env::var("MAILSPOOL_CLUSTER_LOG").unwrap_or("warn".into()),
            );
        c
    }

    /// Start (or restart) its daemon.
    pub fn start_daemon(&mut self) {
        let log = self.config.with_extension("daemon.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.daemon = Some(
            self.mailspool()
                .arg("daemon")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// Start (or restart) its `serve`, and wait until it listens.
    pub fn start_serve(&mut self) {
        let mut child = self
            .mailspool()
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("serve said where it listens (or why not)")
                .unwrap();
            if line.starts_with("mailspool: listening on ") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.serve = Some(child);
    }

    /// Whether its `serve` and daemon still run (neither gave up on the database).
    pub fn running(&mut self) -> bool {
        [&mut self.serve, &mut self.daemon]
            .into_iter()
            .all(|c| c.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None))))
    }

    /// SIGKILL its daemon (a host dying under load).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn kill_serve(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_daemon();
        self.kill_serve();
    }
}

/// The whole cluster. Dropped: processes killed, databases stopped, namespaces gone.
pub struct World {
    pub hosts: Vec<Host>,
    pub dbs: Vec<DbHost>,
    pub sink_member: Member,
    pub client: Member,
    pub database: Database,
    pub dir: tempfile::TempDir,
    // Last: the namespaces go after everything in them has stopped.
    pub net: Net,
}

/// Say why the cluster cannot run here: skip, or under CI fail.
pub fn cannot(why: &str) -> Option<World> {
    assert!(
        std::env::var_os("CI").is_none_or(|v| v != "true"),
        "the cluster test needs root, iproute2 and PostgreSQL under CI=true: {why}"
    );
    eprintln!("skipped: {why}");
    None
}

/// Make `primary` wait for a standby's flush before a commit returns.
pub fn synchronous(primary: &Cluster) {
    // Two statements: ALTER SYSTEM may not run inside the transaction of a batch.
    let url = primary.socket_url("postgres");
    admin_sql(&url, "ALTER SYSTEM SET synchronous_standby_names = '*'").unwrap();
    admin_sql(&url, "SELECT pg_reload_conf()").unwrap();
}

/// Where a database host's cluster runs (in its namespace, on its address).
pub fn pg_place(member: &Member) -> Place {
    Place {
        wrap: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            member.ns.clone(),
        ],
        listen: Some(member.addr.to_string()),
        port: Some(PG_PORT),
        // Each host's serve and daemon open up to max_dequeue_processes + 5 each.
        conf: "wal_sender_timeout = 5s\nwal_receiver_status_interval = 1s\nmax_connections = 800\n"
            .into(),
    }
}

impl World {
    /// A network, its database(s), a sink host and a client host, and `hosts`
    /// mailspool hosts (configured, not started). `None`: it cannot run here (skipped).
    pub fn new(database: Database, hosts: usize, extra: &str) -> Option<World> {
        let mut net = match Net::new() {
            Ok(n) => n,
            Err(e) => return cannot(&e),
        };
        let db1 = net.add("db1", 2).ok()?;
        // Durable, as a real one: fsync on (the failover test counts what survives).
        // Synchronous replication is turned on once the standby is there: before, every
        // commit would wait for it.
        let primary = match Cluster::start_at(false, None, pg_place(&db1)) {
            Ok(c) => c,
            Err(e) => return cannot(&e),
        };
        admin_sql(
            &primary.socket_url("postgres"),
            &format!("CREATE DATABASE {DB}"),
        )
        .unwrap();
        let url = primary.socket_url(DB);
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(mailspool_pg::migrate(&url, None))
        })
        .join()
        .unwrap()
        .unwrap();
        let mut dbs = vec![DbHost {
            member: db1,
            pg: Some(primary),
        }];
        if let Database::Replicated { sync } = database {
            let db2 = net.add("db2", 3).unwrap();
            let primary = dbs[0].pg.as_ref().unwrap();
            let standby = Cluster::standby_of(primary, pg_place(&db2)).unwrap();
            if sync {
                synchronous(primary);
            }
            dbs.push(DbHost {
                member: db2,
                pg: Some(standby),
            });
        }
        let sink_member = net.add("sink", 10).unwrap();
        let client = net.add("client", 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut world = World {
            hosts: Vec::new(),
            dbs,
            sink_member,
            client,
            database,
            dir,
            net,
        };
        for i in 0..hosts {
            world.add_host(i, extra);
        }
        Some(world)
    }

    /// The URL every host connects with: all database hosts, the writable one wins.
    pub fn spool_url(&self) -> String {
        let hosts: Vec<String> = self
            .dbs
            .iter()
            .map(|d| format!("{}:{PG_PORT}", d.member.addr))
            .collect();
        format!(
            "postgresql://postgres@{}/{DB}?target_session_attrs=read-write&connect_timeout=2",
            hosts.join(",")
        )
    }

    /// `extra`: more configuration, top-level keys first (it goes before the tables).
    fn add_host(&mut self, i: usize, extra: &str) {
        let n = i + 1;
        let member = self.net.add(&format!("h{n}"), 20 + n as u8).unwrap();
        let config = self.dir.path().join(format!("h{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "spool = \"{url}\"\nspool_lease = 10\nhostname = \"h{n}.cluster.test\"\n\
                 bind_address = \"{addr}\"\ndequeue_timeout = 1\ntls = \"none\"\n\
                 relay_networks = [\"198.18.0.0/15\"]\n{extra}\n\
                 [[listen]]\naddress = \"{addr}:25\"\n\
                 [routes]\n\"dest.test\" = \"198.18.0.10:25\"\n{more_routes}\
                 [timeouts]\nconnect = 2\ncommand = 10\n",
                url = self.spool_url(),
                addr = member.addr,
                more_routes = (0..MAX_DOMAINS)
                    .map(|d| format!("\"d{d}.dest.test\" = \"198.18.0.10:25\"\n"))
                    .collect::<String>(),
            ),
        )
        .unwrap();
        self.hosts.push(Host {
            member,
            config,
            serve: None,
            daemon: None,
        });
    }

    /// The destination: a sink on the sink host, port 25.
    pub fn start_sink(&self, script: Script) -> Sink {
        let listener = tokio::net::TcpListener::from_std(self.sink_member.listen(25)).unwrap();
        Sink::start_listening(listener, script).unwrap()
    }

    /// The writable database, over its socket (from the test's own namespace).
    pub fn primary_url(&self) -> String {
        for d in &self.dbs {
            if let Some(pg) = &d.pg
                && query_i64(
                    &pg.socket_url(DB),
                    "SELECT (NOT pg_is_in_recovery())::int::bigint",
                ) == Some(1)
            {
                return pg.socket_url(DB);
            }
        }
        panic!("no writable database");
    }

    /// Nodes queued (None while the database cannot be asked).
    pub fn queued(&self) -> Option<i64> {
        query_i64(&self.primary_url(), "SELECT count(*) FROM mailspool_nodes")
    }

    /// Wait until nothing is queued, at most `limit`; returns the count left.
    pub async fn drain(&self, limit: Duration) -> Option<i64> {
        let deadline = Instant::now() + limit;
        loop {
            let left = self.queued();
            if left == Some(0) || Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl World {
    /// What is queued, by tier, claim and due time, for a failure's message.
    pub fn queue_summary(&self) -> String {
        let sql = "SELECT string_agg(format('tier %s, claimed by %s (%s s left), due in %s s, \
                   %s attempts, last %s: %s', tier, coalesce(lease_host, 'none'), \
                   coalesce(extract(epoch from lease_until - now())::int, 0), \
                   due - extract(epoch from now())::bigint, attempts, last_reply, n), '; ') \
                   FROM (SELECT tier, lease_host, max(lease_until) AS lease_until, min(due) AS due, \
                   max(attempts) AS attempts, max(last_reply) AS last_reply, count(*) AS n \
                   FROM mailspool_nodes GROUP BY 1, 2) g";
        let slots = "SELECT string_agg(format('%s slot %s: %s, %s s left', destination, slot, \
                     coalesce(holder, 'free'), coalesce(extract(epoch from expires - now())::int, 0)), '; ') \
                     FROM mailspool_slots";
        let window = "SELECT string_agg(format('%s: window %s, cooling %s', destination, \
                      conn_window, cooling_until), '; ') FROM mailspool_destinations";
        let url = self.primary_url();
        [sql, slots, window]
            .iter()
            .map(|q| query_text(&url, q).unwrap_or_else(|| "(cannot ask)".into()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl World {
    /// Keep the hosts' configurations and logs (h*.daemon.log) after the test, and
    /// say where, with each host's process ids.
    pub fn keep_logs(&mut self) {
        let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
        let id = |c: &Option<Child>| c.as_ref().map_or(0, Child::id);
        let pids: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{}: serve {} daemon {}",
                    h.member.addr,
                    id(&h.serve),
                    id(&h.daemon)
                )
            })
            .collect();
        eprintln!(
            "cluster: the hosts' configurations and logs are kept in {} ({})",
            kept.display(),
            pids.join(", ")
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
    }
}

/// The one value `sql` returns from the database at `url` (None: it cannot be asked
/// now, or the value is NULL), asked on a thread of its own.
fn query_value<T>(url: &str, sql: &str) -> Option<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a> + Send + 'static,
{
    let (url, sql) = (url.to_owned(), sql.to_owned());
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
            let row = c.query_one(&sql, &[]).await.ok()?;
            row.try_get::<_, Option<T>>(0).ok().flatten()
        })
    })
    .join()
    .ok()
    .flatten()
}

/// One text from the database at `url`.
pub fn query_text(url: &str, sql: &str) -> Option<String> {
    query_value(url, sql)
}

/// One number from the database at `url` (None: it cannot be asked now).
pub fn query_i64(url: &str, sql: &str) -> Option<i64> {
    query_value(url, sql)
}

/// What a load run saw.
#[derive(Default)]
pub struct Acks {
    /// Tokens of the messages answered 250.
    pub acked: Mutex<Vec<String>>,
    /// Replies other than 250 to the final dot (451 while the database is away).
    pub refused: AtomicUsize,
    /// SMTP sessions opened.
    pub sessions: AtomicUsize,
}

/// Send mail from the client host into the hosts' `serve`s, `per_session` messages a
/// connection, round robin, until `stop` (or `limit` messages). Each message carries a
/// unique token; those answered 250 are in `acks`. Recipients are at `dest.test`, or
/// spread over `d0.dest.test` .. when `domains` > 1.
#[allow(clippy::too_many_arguments)]
pub async fn smtp_load(
    client: Member,
    targets: Vec<SocketAddr>,
    per_session: usize,
    limit: usize,
    domains: usize,
    stop: Arc<AtomicBool>,
    serial: Arc<AtomicUsize>,
    acks: Arc<Acks>,
) {
    let connector = mailspool_smtp::TlsConnectors::new(None).unwrap();
    let settings = mailspool_smtp::ClientSettings {
        helo_name: "client.cluster.test".into(),
        // Long enough for a commit that waits out a database failover.
        timeouts: mailspool_smtp::Timeouts {
            data_end: Duration::from_secs(30),
            command: Duration::from_secs(10),
            max_session: Duration::from_secs(120),
            ..crate::common::quick_timeouts()
        },
        tls: mailspool_smtp::TlsPolicy::None,
        auth: None,
        bind: Vec::new(),
        verifier: None,
    };
    let mut turn = 0;
    while !stop.load(Ordering::SeqCst) && serial.load(Ordering::SeqCst) < limit {
        let to = targets[turn % targets.len()];
        turn += 1;
        let Ok(tcp) = client.connect(to) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let Ok(mut s) =
            mailspool_smtp::Session::connect_on(tcp, "cluster.test", &settings, &connector).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        acks.sessions.fetch_add(1, Ordering::Relaxed);
        for i in 0..per_session {
            let n = serial.fetch_add(1, Ordering::SeqCst);
            if n >= limit || stop.load(Ordering::SeqCst) {
                break;
            }
            let token = format!("m{n}");
            let body = format!("Subject: cluster\n\ntoken: {token}\n");
            if i > 0 {
                s.reset_before_next();
            }
            let env = mailspool_smtp::Envelope {
                from: "sender@client.test".into(),
                to: vec![if domains > 1 {
                    format!("rcpt@d{}.dest.test", n % domains.min(MAX_DOMAINS))
                } else {
                    "rcpt@dest.test".into()
                }],
                size: body.len() as u64,
                eight_bit: false,
                utf8_headers: false,
            };
            match s.send(&env, &mut body.as_bytes()).await {
                Ok(o) if o.data.as_ref().is_some_and(|d| d.is_positive()) => {
                    acks.acked.lock().unwrap().push(token)
                }
                Ok(_) => {
                    acks.refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    acks.refused.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        s.quit().await;
    }
}

/// Senders at work from the client host (see [`World::load`]).
pub struct Load {
    pub acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Wait until the senders are done (their `limit` reached, or stopped).
    pub async fn finish(self) -> Arc<Acks> {
        for t in self.tasks {
            t.await.unwrap();
        }
        self.acks
    }

    /// Stop the senders and wait for them.
    pub async fn stop(self) -> Arc<Acks> {
        self.stop.store(true, Ordering::SeqCst);
        self.finish().await
    }
}

impl World {
    /// `senders` SMTP senders from the client host into every host's `serve` (see
    /// [`smtp_load`]), `limit` messages in all.
    pub fn load(&self, senders: usize, per_session: usize, limit: usize, domains: usize) -> Load {
        let acks = Arc::new(Acks::default());
        let stop = Arc::new(AtomicBool::new(false));
        let serial = Arc::new(AtomicUsize::new(0));
        let targets: Vec<SocketAddr> = self.hosts.iter().map(Host::smtp).collect();
        let tasks = (0..senders)
            .map(|_| {
                tokio::spawn(smtp_load(
                    self.client.clone(),
                    targets.clone(),
                    per_session,
                    limit,
                    domains,
                    stop.clone(),
                    serial.clone(),
                    acks.clone(),
                ))
            })
            .collect();
        Load { acks, stop, tasks }
    }
}

/// The token of a delivered message.
pub fn token_of(data: &[u8]) -> Option<String> {
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|l| l.strip_prefix("token: ").map(str::to_owned))
}

/// Acknowledged messages the sink never got, and the duplicates it got.
pub fn lost_and_duplicates(acked: &[String], sink: &Sink) -> (Vec<String>, usize) {
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for r in sink.received() {
        if let Some(t) = token_of(&r.data) {
            *seen.entry(t).or_default() += 1;
        }
    }
    let lost = acked
        .iter()
        .filter(|t| !seen.contains_key(*t))
        .cloned()
        .collect();
    (lost, seen.values().map(|n| n - 1).sum())
}
