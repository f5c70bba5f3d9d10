//! 8 processes × 500 concurrent sends into one spool: every message's nodes are present
//! exactly once, their link counts are right, and nothing is left in tmp/.
//!
//! The test re-runs its own binary as the 8 worker processes (selected by an
//! environment variable), each calling the library's `send_mail` 500 times.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use mailspool::{Config, Mailspool, MessageSource, SendMail};
use mailspool_spool::{NodeName, Parsed};

const PROCESSES: usize = 8;
const PER_PROCESS: usize = 500;
const WORKER_ENV: &str = "MAILSPOOL_TEST_SEND_WORKER";

fn message(worker: usize, n: usize) -> String {
    format!(
        "From: w{worker}@sender.test\nTo: a@x.test, b@y.test\nBcc: c@z.test\nSubject: {worker}/{n}\n\ntoken {worker}-{n}\n"
    )
}

/// Runs only inside a worker process: 500 sends.
#[test]
fn send_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let (dir, worker) = spec.split_once(':').unwrap();
    let config = Config {
        spool_dir: PathBuf::from(dir),
        ..Config::default()
    };
    let spool = Mailspool::open(config).unwrap();
    for n in 0..PER_PROCESS {
        let m = message(worker.parse().unwrap(), n);
        let sent = spool
            .send_mail(SendMail::new(MessageSource::Bytes(m.as_bytes())))
            .unwrap();
        assert_eq!(sent.recipients.len(), 3);
    }
}

#[test]
fn eight_processes_times_500_sends() {
    if std::env::var(WORKER_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|w| {
            Command::new(&exe)
                .args(["--exact", "send_worker", "--test-threads=1"])
                .env(WORKER_ENV, format!("{}:{w}", dir.path().display()))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a worker failed");
    }

    // Group nodes by message id.
    let mut by_id: HashMap<String, Vec<(NodeName, PathBuf)>> = HashMap::new();
    for e in fs::read_dir(dir.path().join("0")).unwrap() {
        let e = e.unwrap();
        let Parsed::Node(n) = NodeName::parse(e.file_name().to_str().unwrap()) else {
            panic!("unparsable node {:?}", e.file_name())
        };
        by_id.entry(n.id.clone()).or_default().push((n, e.path()));
    }
    assert_eq!(by_id.len(), PROCESSES * PER_PROCESS, "messages");
    let mut tokens = std::collections::HashSet::new();
    for (id, nodes) in &by_id {
        let mut tos: Vec<&str> = nodes.iter().map(|(n, _)| n.to.as_str()).collect();
        tos.sort();
        assert_eq!(tos, ["a@x.test", "b@y.test", "c@z.test"], "message {id}");
        let first = fs::read_to_string(&nodes[0].1).unwrap();
        assert!(!first.contains("Bcc:"), "Bcc stored in {id}");
        let token = first.lines().last().unwrap().to_owned();
        assert!(tokens.insert(token.clone()), "{token} stored twice");
        let ino = fs::metadata(&nodes[0].1).unwrap().ino();
        for (_, path) in nodes {
            let meta = fs::metadata(path).unwrap();
            assert_eq!(meta.ino(), ino, "one inode per message");
            assert_eq!(meta.nlink(), 3, "link count of {id}");
        }
    }
    assert_eq!(tokens.len(), PROCESSES * PER_PROCESS);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    let usage = fs::read_to_string(dir.path().join("usage/raw")).unwrap();
    // As 0.50 counts: one `Spool` line per node.
    assert_eq!(usage.lines().count(), PROCESSES * PER_PROCESS * 3);
    assert!(usage.lines().all(|l| l.ends_with(" Spool")));
}
