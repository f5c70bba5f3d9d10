//! Webhooks end to end: the daemon POSTs every event to a receiver that verifies each
//! request with PyPI's `standardwebhooks` (not our code), fails every other request and
//! is restarted twice, while the daemon itself is SIGKILLed once: every event of every
//! message arrives, in order per message.
//!
//! `MAILSPOOL_WEBHOOK_MESSAGES` sets how many messages (300 by default; the figure in
//! docs/benchmarks.md is from 10,000).

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Script, Sink};
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn python_has_standardwebhooks() -> bool {
    Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success())
}

struct Receiver {
    child: Child,
    port: u16,
}

fn receiver(port: u16, out: &Path) -> Receiver {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/webhook_receiver.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([&port.to_string(), SECRET, out.to_str().unwrap(), "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    Receiver {
        port: line.trim().parse().expect("the receiver prints its port"),
        child,
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn received(out: &Path) -> Vec<Value> {
    fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The events the spool's history holds (its daily files).
fn history(spool: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = fs::read_dir(spool.join("events"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_signed_in_order_through_failures_and_a_sigkill() {
    if !python_has_standardwebhooks() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have python3's standardwebhooks (.ci/run installs it)"
        );
        eprintln!("skipped: python3 -m pip install standardwebhooks");
        return;
    }
    let n: usize = std::env::var("MAILSPOOL_WEBHOOK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received.jsonl");
    let mut recv = receiver(0, &out);
    let port = recv.port;
    fs::write(dir.path().join("webhook.secret"), format!("{SECRET}\n")).unwrap();
    fs::write(
        dir.path().join("mailspool.toml"),
        format!(
            "tls = \"none\"\ndequeue_timeout = 1\n[routes]\n\"one.test\" = \"{}\"\n\
             [[webhook]]\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
             events = [\"accepted\", \"delivered\", \"bounced\"]\nsecret_file = \"webhook.secret\"\n",
            sink.addr
        ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
        c.env("MAILSPOOL_SPOOL", &spool)
            .env("MAILSPOOL_CONFIG", dir.path().join("mailspool.toml"))
            .env_remove("MAILSPOOL_LOG")
            .args(args);
        c
    };
    let log = dir.path().join("daemon.log");
    let daemon = || {
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd(&["daemon"])
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap()
    };
    let send = |i: usize| {
        let mut c = cmd(&["send", &format!("user{i}@one.test")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("From: app@sender.test\nSubject: {i}\n\nhello {i}\n").as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success());
    };
    // The webhook's place starts at the end of the history when its sender first
    // runs: start the daemon before any mail.
    let mut d = daemon();
    tokio::time::sleep(Duration::from_millis(700)).await;
    tokio::task::block_in_place(|| {
        for i in 0..n {
            send(i);
            if i == n / 4 || i == n / 2 {
                // The receiver goes away for a moment, and comes back on its port.
                drop(std::mem::replace(
                    &mut recv,
                    Receiver {
                        child: Command::new("true").spawn().unwrap(),
                        port,
                    },
                ));
                std::thread::sleep(Duration::from_millis(500));
                recv = receiver(port, &out);
            }
            if i == 3 * n / 4 {
                let _ = d.kill();
                let _ = d.wait();
                d = daemon();
            }
        }
    });
    let want = 2 * n;
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut got = HashSet::new();
    while Instant::now() < deadline {
        got = received(&out)
            .iter()
            .map(|e| {
                (
                    e["message"].as_str().unwrap().to_owned(),
                    e["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect::<HashSet<_>>();
        if got.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = d.kill();
    let _ = d.wait();
    assert!(
        !dir.path().join("received.jsonl.bad").exists(),
        "signatures that standardwebhooks refused: {}",
        fs::read_to_string(dir.path().join("received.jsonl.bad")).unwrap_or_default()
    );
    if got.len() != want {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("delivery attempt"))
            .collect();
        eprintln!(
            "daemon log (last lines):\n{}",
            lines[lines.len().saturating_sub(5)..].join("\n")
        );
        let all: Vec<(String, String)> = history(&spool)
            .iter()
            .map(|e| {
                (
                    e["message"].as_str().unwrap().to_owned(),
                    e["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let missing: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, k)| !got.contains(k))
            .map(|(i, _)| i)
            .collect();
        eprintln!(
            "history {} events; missing at positions {missing:?}",
            all.len()
        );
        let keep = dir.keep();
        eprintln!("kept {}", keep.display());
    }
    assert_eq!(
        got.len(),
        want,
        "accepted and delivered of each of {n} messages"
    );
    // Every such event of the history arrived, by its own id.
    let arrived: Vec<Value> = received(&out);
    let ids: HashSet<&str> = arrived
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let kept = history(&spool);
    let wanted: Vec<&Value> = kept
        .iter()
        .filter(|e| e["type"] == "accepted" || e["type"] == "delivered")
        .collect();
    // A message delivered just before the SIGKILL may be delivered (and recorded) again.
    let pairs: HashSet<(&str, &str)> = wanted
        .iter()
        .map(|e| (e["message"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(pairs.len(), want);
    for e in &wanted {
        assert!(ids.contains(e["event_id"].as_str().unwrap()), "lost: {e}");
    }
    // In order per message: its acceptance before its delivery.
    let mut first: HashMap<(String, String), usize> = HashMap::new();
    for (i, e) in arrived.iter().enumerate() {
        first
            .entry((
                e["message"].as_str().unwrap().into(),
                e["type"].as_str().unwrap().into(),
            ))
            .or_insert(i);
    }
    for e in wanted.iter().filter(|e| e["type"] == "accepted") {
        let m = e["message"].as_str().unwrap().to_owned();
        assert!(first[&(m.clone(), "accepted".into())] < first[&(m, "delivered".into())]);
    }
    // Retries reuse the request's id: a receiver can drop what it already has.
    let dup = arrived.len() - ids.len();
    eprintln!(
        "{n} messages: {} events kept, {} received ({dup} of them again after a failure)",
        kept.len(),
        arrived.len()
    );
}
