//! The lettre transport, sync and async, against a temporary spool: lettre's envelope
//! and bytes become one node per recipient (Bcc included, its header not stored), the
//! null sender stays null, and mailspool's refusals come back as lettre errors.

use std::path::Path;

use lettre::address::Envelope;
use lettre::{AsyncTransport, Message, Transport};
use mailspool::{Config, ErrorKind, Mailspool, QueueEntry};
use mailspool_lettre::{AsyncMailspoolTransport, MailspoolTransport};

fn transport(dir: &Path, max_size: Option<u64>) -> MailspoolTransport {
    let mut config = Config {
        spool_dir: dir.join("spool"),
        hostname: "test.host".into(),
        ..Config::default()
    };
    if let Some(limit) = max_size {
        config.max_message_size = limit;
    }
    MailspoolTransport::new(Mailspool::open(config).unwrap())
}

fn nodes(t: &MailspoolTransport, id: &str) -> Vec<QueueEntry> {
    let mut q: Vec<_> = t
        .spool()
        .queue()
        .unwrap()
        .into_iter()
        .filter(|e| e.id == id)
        .collect();
    q.sort_by(|a, b| a.to.cmp(&b.to));
    q
}

fn stored(dir: &Path, e: &QueueEntry) -> String {
    std::fs::read_to_string(dir.join("spool").join(e.tier.to_string()).join(&e.node)).unwrap()
}

fn message() -> Message {
    Message::builder()
        .from("App <app@sender.test>".parse().unwrap())
        .to("one@rcpt.test".parse().unwrap())
        .cc("Two <two@rcpt.test>".parse().unwrap())
        .bcc("secret@rcpt.test".parse().unwrap())
        .subject("from lettre")
        .body(String::from("hello from lettre\n"))
        .unwrap()
}

#[test]
fn sync_send_queues_one_node_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let t = transport(dir.path(), None);
    let sent = t.send(&message()).unwrap();
    let q = nodes(&t, &sent.id);
    let to: Vec<_> = q.iter().map(|e| e.to.as_str()).collect();
    assert_eq!(to, ["one@rcpt.test", "secret@rcpt.test", "two@rcpt.test"]);
    for e in &q {
        assert_eq!(e.from, "app@sender.test");
        assert_eq!(e.tier, 0);
        let text = stored(dir.path(), e);
        let head = text
            .split_once("\r\n\r\n")
            .or(text.split_once("\n\n"))
            .unwrap()
            .0;
        assert!(!head.contains("secret@"), "Bcc stored:\n{text}");
        assert!(head.contains("Subject: from lettre"), "{text}");
        assert!(text.contains("hello from lettre"), "{text}");
        let path = dir.path().join("spool/0").join(&e.node);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o600);
    }
    // Committed: nothing half-written is left in tmp/.
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn explicit_envelope_and_null_sender() {
    let dir = tempfile::tempdir().unwrap();
    let t = transport(dir.path(), None);
    let envelope = Envelope::new(None, vec!["only@rcpt.test".parse().unwrap()]).unwrap();
    let sent = t.send_raw(&envelope, &message().formatted()).unwrap();
    let q = nodes(&t, &sent.id);
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].to.as_str(), q[0].from.as_str()),
        ("only@rcpt.test", "")
    );
}

#[test]
fn refusals_come_back_as_errors_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let t = transport(dir.path(), Some(300));
    let big = Message::builder()
        .from("app@sender.test".parse().unwrap())
        .to("x@rcpt.test".parse().unwrap())
        .body("y".repeat(1000))
        .unwrap();
    let err = t.send(&big).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MessageTooLarge);
    assert!(!err.kind().is_temporary());
    assert!(t.spool().queue().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_send_commits_off_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let t = AsyncMailspoolTransport::from(transport(dir.path(), None));
    // Many at once: each commit runs on tokio's blocking pool.
    let sends = (0..20).map(|i| {
        let t = t.clone();
        tokio::spawn(async move {
            let m = Message::builder()
                .from("app@sender.test".parse().unwrap())
                .to(format!("a{i}@rcpt.test").parse().unwrap())
                .body(String::from("async\n"))
                .unwrap();
            t.send(m).await.unwrap()
        })
    });
    let mut ids = std::collections::HashSet::new();
    for s in sends {
        ids.insert(s.await.unwrap().id);
    }
    assert_eq!(ids.len(), 20);
    assert_eq!(t.spool().queue().unwrap().len(), 20);
}

/// The example program, as the README runs it: it queues into the spool it is given.
#[test]
fn example_program_queues() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/queue");
    let spool = dir.path().join("spool");
    let config = dir.path().join("mailspool.toml");
    std::fs::write(&config, "hostname = \"test.host\"\n").unwrap();
    let out = std::process::Command::new(&example)
        .args(["--spool"])
        .arg(&spool)
        .arg("ops@rcpt.test")
        .env("MAILSPOOL_CONFIG", &config)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = Config {
        spool_dir: spool,
        ..Config::default()
    };
    let q = Mailspool::open(config).unwrap().queue().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        stdout.trim(),
        format!("queued {} for ops@rcpt.test", q[0].id)
    );
    assert_eq!(q[0].from, "app@example.com");
}
