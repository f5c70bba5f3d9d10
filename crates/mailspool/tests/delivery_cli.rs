//! Delivery from the command line against the in-process sink: `send --now`,
//! `send --background`, `queue run`, and the daemon (wake-up latency, SIGTERM, and a
//! SIGKILL whose stale locks another daemon breaks).

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Script, Sink};

const MSG: &str = "From: app@sender.test\nTo: x@one.test\nBcc: hidden@one.test\nSubject: hi\n\nhello\n.dot line\n";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(sink: &Sink, extra: &str) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        env.configure(sink.addr, extra);
        env
    }
    fn configure(&self, addr: std::net::SocketAddr, extra: &str) {
        fs::write(
            self.config(),
            format!(
                "{}tls = \"none\"\n{extra}\n[routes]\n\"one.test\" = \"{addr}\"\n[timeouts]\nconnect = 2\ncommand = 2\ngreeting = 2\ndata_end = 2\n",
                if extra.contains("dequeue_timeout") { "" } else { "dequeue_timeout = 1\n" }
            ),
        )
        .unwrap();
    }
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("mailspool.toml")
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
        c.env("MAILSPOOL_SPOOL", self.spool())
            .env("MAILSPOOL_CONFIG", self.config())
            .env_remove("MAILSPOOL_LOG");
        c
    }
    fn send(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.cmd();
        c.arg("send")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(MSG.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
    fn daemon(&self) -> Child {
        self.cmd()
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
    fn nodes(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for t in 0..7 {
            if let Ok(rd) = fs::read_dir(self.spool().join(t.to_string())) {
                out.extend(rd.map(|e| e.unwrap().path()).filter(|p| {
                    // Not a lock, nor a lock temp (a daemon keeps one for reuse).
                    let name = p.file_name().unwrap().to_string_lossy();
                    !name.ends_with(".NFSLock") && !name.starts_with('.')
                }));
            }
        }
        out
    }
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_now_delivers_or_fails_loudly() {
    let sink = Sink::start(Script::default()).await;
    let env = Env::new(&sink, "");
    let out = tokio::task::block_in_place(|| env.send(&["--now", "-t"]));
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout.is_empty(),
        "--now keeps nothing, so it prints no id"
    );
    let got = sink.received();
    assert_eq!(got.len(), 1);
    let mut to = got[0].to.clone();
    to.sort();
    assert_eq!(to, ["hidden@one.test", "x@one.test"]);
    let body = String::from_utf8_lossy(&got[0].data).into_owned();
    assert!(!body.contains("Bcc"), "{body}");
    assert!(body.ends_with("\n\nhello\n.dot line\n"), "{body:?}");
    assert!(env.nodes().is_empty());

    sink.script()
        .rcpt
        .insert("x@one.test".into(), "550 5.1.1 no such user here".into());
    let out = tokio::task::block_in_place(|| env.send(&["--now", "x@one.test"]));
    assert_eq!(code(&out), 69);
    assert!(
        out.stdout.is_empty(),
        "no id for a message that is not kept"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("550 5.1.1 no such user here"));
    assert!(env.nodes().is_empty(), "no bounce, nothing queued");

    // A temporary failure: the message is accepted and queued for retry (exit 0, the id
    // printed), never "75, send again", which would give the others a second copy.
    sink.script()
        .rcpt
        .insert("x@one.test".into(), "451 4.3.0 later".into());
    let before = sink.received().len();
    let out = tokio::task::block_in_place(|| {
        env.send(&["--now", "x@one.test", "y@one.test", "z@one.test"])
    });
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(id.len(), 26, "kept: its id is printed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<x@one.test>: queued for retry: 451 4.3.0 later"),
        "{stderr}"
    );
    assert!(stderr.contains("<y@one.test>: delivered"), "{stderr}");
    assert_eq!(sink.received().len(), before + 1);
    let nodes = env.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(nodes[0].parent().unwrap().ends_with("1"), "{nodes:?}");
    let name = nodes[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains(&format!("-{id}-x@one.test-")), "{name}");
    fs::remove_file(&nodes[0]).unwrap();

    // Delivered, deferred and refused: 69 (a recipient refused for good is not kept and
    // not bounced), each recipient named, the deferred one still queued.
    sink.script()
        .rcpt
        .insert("z@one.test".into(), "550 5.1.1 z is gone".into());
    let out = tokio::task::block_in_place(|| {
        env.send(&["--now", "x@one.test", "y@one.test", "z@one.test"])
    });
    assert_eq!(code(&out), 69);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<z@one.test>: failed (not kept, no bounce): 550 5.1.1 z is gone"),
        "{stderr}"
    );
    assert!(
        stderr.contains("<x@one.test>: queued for retry"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 26);
    let nodes = env.nodes();
    assert_eq!(
        nodes.len(),
        1,
        "only the deferred one is kept (no bounce): {nodes:?}"
    );
    fs::remove_file(&nodes[0]).unwrap();
    sink.script().rcpt.remove("z@one.test");

    let out = tokio::task::block_in_place(|| env.send(&["--background", "x@one.test"]));
    assert_eq!(code(&out), 0);
    assert_eq!(out.stdout.len(), 27, "deferred, kept: its id is printed");
    let nodes = env.nodes();
    assert_eq!(nodes.len(), 1);
    assert!(
        nodes[0].parent().unwrap().ends_with("1"),
        "deferred to tier 1"
    );

    sink.script().rcpt.clear();
    let out =
        tokio::task::block_in_place(|| env.cmd().args(["queue", "run", "--all"]).output().unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered 1, deferred 0"));
    assert!(env.nodes().is_empty());
}

fn kill(child: &Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_wakes_at_once_and_stops_on_sigterm() {
    let sink = Sink::start(Script::default()).await;
    let env = Env::new(&sink, "dequeue_timeout = 3600");
    // Make the spool before the daemon watches it.
    tokio::task::block_in_place(|| env.cmd().args(["queue"]).output().unwrap());
    fs::create_dir_all(env.spool().join("0")).unwrap();
    let mut daemon = env.daemon();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    for i in 1..=5 {
        let t = Instant::now();
        let out = tokio::task::block_in_place(|| env.send(&["x@one.test"]));
        assert_eq!(code(&out), 0);
        wait_for("delivery", Duration::from_secs(5), || {
            sink.received().len() == i
        })
        .await;
        wait_for("the node to go", Duration::from_secs(5), || {
            env.nodes().is_empty()
        })
        .await;
        worst = worst.max(t.elapsed());
    }
    eprintln!("send to delivery, worst of 5 (debug build, includes process start): {worst:?}");
    assert!(
        worst < Duration::from_secs(5),
        "the tick is an hour: only the wake-up can explain delivery"
    );
    kill(&daemon, "-TERM");
    let status = tokio::task::block_in_place(|| daemon.wait().unwrap());
    assert!(status.success(), "{status:?}");
}

/// `send --now` racing a running daemon: when the daemon (which wakes on every new node)
/// takes the lock first, the caller is told "accepted, another process is delivering
/// it" with the id, never 75, which would make it send again what the daemon delivers.
/// The daemon's lock is stood in for by a live holder's lock (this test's pid) on the
/// names the commit will make: the id is chosen, the time is this second or the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_now_finding_its_node_locked_says_queued_not_failed() {
    let sink = Sink::start(Script::default()).await;
    let env = Env::new(&sink, "");
    tokio::task::block_in_place(|| env.cmd().args(["queue"]).output().unwrap());
    let tier0 = env.spool().join("0");
    fs::create_dir_all(&tier0).unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let locks: Vec<PathBuf> = (now..now + 5)
        .map(|t| tier0.join(format!("{t}-RACE1-x@one.test-app@sender.test.NFSLock")))
        .collect();
    for l in &locks {
        fs::write(
            l,
            format!("{} {} {now} 1\n", host.trim(), std::process::id()),
        )
        .unwrap();
    }
    let out = tokio::task::block_in_place(|| env.send(&["--now", "--id", "RACE1", "x@one.test"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 0, "{stderr}");
    assert!(
        stderr.contains("<x@one.test>: queued (another process is delivering it)"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "RACE1");
    assert!(sink.received().is_empty());
    assert_eq!(env.nodes().len(), 1, "still queued for the lock's holder");
    for l in &locks {
        fs::remove_file(l).unwrap();
    }
    let out =
        tokio::task::block_in_place(|| env.cmd().args(["queue", "run", "--all"]).output().unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered 1, deferred 0"));
    assert_eq!(sink.received().len(), 1, "delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemons_locks_are_broken_at_once_and_another_daemon_delivers() {
    let tarpit = Sink::start(Script {
        tarpit: true,
        ..Default::default()
    })
    .await;
    let sink = Sink::start(Script::default()).await;
    let env = Env::new(&tarpit, "");
    // Long timeouts for the first daemon: it must still be "delivering" when killed.
    fs::write(
        env.config(),
        format!(
            "dequeue_timeout = 1\ntls = \"none\"\n[routes]\n\"one.test\" = \"{}\"\n",
            tarpit.addr
        ),
    )
    .unwrap();
    let out = tokio::task::block_in_place(|| env.send(&["x@one.test"]));
    assert_eq!(code(&out), 0);
    let node = env.nodes().remove(0);
    let lock = PathBuf::from(format!("{}.NFSLock", node.display()));
    let first = env.daemon();
    wait_for("the first daemon's lock", Duration::from_secs(5), || {
        lock.exists()
    })
    .await;
    kill(&first, "-KILL");
    let mut first = first;
    tokio::task::block_in_place(|| first.wait().unwrap());
    assert!(lock.exists(), "SIGKILL leaves the lock behind");
    // The second daemon routes to a working sink. The lock's holder ran on this host
    // and its pid is gone: the lock is broken at once (no waiting for an age).
    env.configure(sink.addr, "");
    let mut second = env.daemon();
    wait_for(
        "delivery by the second daemon",
        Duration::from_secs(15),
        || sink.received().len() == 1,
    )
    .await;
    // The node goes once the 250 is in.
    wait_for("the node to go", Duration::from_secs(5), || {
        env.nodes().is_empty()
    })
    .await;
    assert_eq!(sink.received().len(), 1);
    // The lock goes right after the node (the unlock follows the unlink).
    wait_for("the lock to go", Duration::from_secs(5), || {
        !Path::new(&lock).exists()
    })
    .await;
    kill(&second, "-TERM");
    tokio::task::block_in_place(|| second.wait().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_routes() {
    let sink = Sink::start(Script::default()).await;
    let env = Env::new(&sink, "");
    // First the route points at a closed port: the attempt fails, the node waits in tier 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    env.configure(closed, "");
    tokio::task::block_in_place(|| env.cmd().args(["queue"]).output().unwrap());
    let mut daemon = env.daemon();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::task::block_in_place(|| env.send(&["x@one.test"]));
    assert_eq!(code(&out), 0);
    wait_for("the first attempt", Duration::from_secs(5), || {
        env.nodes()
            .first()
            .is_some_and(|p| p.parent().unwrap().ends_with("1"))
    })
    .await;
    env.configure(sink.addr, "");
    kill(&daemon, "-HUP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    tokio::task::block_in_place(|| env.cmd().args(["queue", "retry", &id]).output().unwrap());
    wait_for("delivery after the reload", Duration::from_secs(20), || {
        sink.received().len() == 1
    })
    .await;
    kill(&daemon, "-TERM");
    let status = tokio::task::block_in_place(|| daemon.wait().unwrap());
    assert!(status.success());
}

/// `[http]` added to the configuration of a running daemon starts the API on SIGHUP,
/// and removing it stops the API again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_starts_and_stops_the_http_api() {
    let sink = Sink::start(Script::default()).await;
    let env = Env::new(&sink, "");
    tokio::task::block_in_place(|| env.cmd().args(["queue"]).output().unwrap());
    let mut daemon = env.daemon();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let health = move || -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        Some(reply)
    };
    assert!(health().is_none(), "no API before [http] is configured");
    let tokens = env.dir.path().join("tokens");
    env.configure(
        sink.addr,
        &format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\ntokens_file = \"{}\"",
            tokens.display()
        ),
    );
    kill(&daemon, "-HUP");
    wait_for("the API after the reload", Duration::from_secs(10), || {
        health().is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    })
    .await;
    env.configure(sink.addr, "");
    kill(&daemon, "-HUP");
    wait_for("the API to stop", Duration::from_secs(10), || {
        health().is_none()
    })
    .await;
    kill(&daemon, "-TERM");
    let status = tokio::task::block_in_place(|| daemon.wait().unwrap());
    assert!(status.success());
}
