//! What happened to a message, after the fact: the events `send` and `queue run` record
//! (accepted, delivered, deferred, bounced with its class), `mailspool log` by id,
//! Message-ID and address, and the suppression list a hard bounce feeds (refused at
//! intake, or dropped at delivery), against the in-process sink.

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{Script, Sink};
use serde_json::Value;

const MSG: &str = "From: app@sender.test\nMessage-ID: <m1@sender.test>\nSubject: hi\n\nhello\n";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(sink: &Sink, extra: &str) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::write(
            env.dir.path().join("mailspool.toml"),
            format!(
                "tls = \"none\"\n{extra}\n[routes]\n\"one.test\" = \"{a}\"\n\"sender.test\" = \"{a}\"\n[timeouts]\nconnect = 2\ncommand = 2\ngreeting = 2\ndata_end = 2\n",
                a = sink.addr
            ),
        )
        .unwrap();
        env
    }
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
        c.env("MAILSPOOL_SPOOL", self.spool())
            .env("MAILSPOOL_CONFIG", self.dir.path().join("mailspool.toml"))
            .env_remove("MAILSPOOL_LOG")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            let mut input = input;
            input.write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }
    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn events(&self, key: &str) -> Vec<Value> {
        self.ok(&["log", key, "--json"], None)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn of<'a>(events: &'a [Value], kind: &str, to: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == kind && e["recipient"] == to)
        .unwrap_or_else(|| panic!("no {kind} event for {to} in {events:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_in_the_history_after_the_message_is_gone() {
    let mut script = Script::default();
    script.rcpt.insert(
        "gone@one.test".into(),
        "550 5.1.1 <gone@one.test>: Recipient address rejected: User unknown".into(),
    );
    script
        .rcpt
        .insert("slow@one.test".into(), "451 4.3.0 try later".into());
    script
        .data_end
        .push_back("250 2.0.0 Ok: queued as 4ABC123".into());
    let sink = Sink::start(script).await;
    let env = Env::new(&sink, "");
    let id = tokio::task::block_in_place(|| {
        env.ok(
            &["send", "x@one.test", "gone@one.test", "slow@one.test"],
            Some(MSG),
        )
    })
    .trim()
    .to_owned();
    tokio::task::block_in_place(|| env.ok(&["queue", "run"], None));

    let events = tokio::task::block_in_place(|| env.events(&id));
    for to in ["x@one.test", "gone@one.test", "slow@one.test"] {
        let a = of(&events, "accepted", to);
        assert_eq!(
            (a["source"].as_str(), a["from"].as_str()),
            (Some("sendmail"), Some("app@sender.test"))
        );
        assert_eq!(a["message_id"], "<m1@sender.test>");
    }
    let d = of(&events, "delivered", "x@one.test");
    assert_eq!(d["remote_id"], "4ABC123");
    assert_eq!(d["tls_policy"], "plaintext");
    assert!(
        d["address"]
            .as_str()
            .unwrap()
            .ends_with(&sink.addr.port().to_string())
    );
    assert_eq!(d["message_id"], "<m1@sender.test>");
    let b = of(&events, "bounced", "gone@one.test");
    assert_eq!(b["class"], "invalid_recipient");
    assert!(b["reply"].as_str().unwrap().contains("User unknown"));
    let w = of(&events, "deferred", "slow@one.test");
    assert_eq!(w["tier"], 1);
    assert!(w["next_attempt"].as_u64().unwrap() > w["time"].as_u64().unwrap());
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "every event has its own id");

    // The same history by Message-ID and by recipient, in words for people.
    let by_mid = tokio::task::block_in_place(|| env.ok(&["log", "<m1@sender.test>"], None));
    assert!(
        by_mid.contains("delivered") && by_mid.contains("remote_id=4ABC123"),
        "{by_mid}"
    );
    let by_rcpt = tokio::task::block_in_place(|| env.events("GONE@one.test"));
    assert!(by_rcpt.iter().all(|e| e["recipient"] == "gone@one.test"));
    assert!(by_rcpt.iter().any(|e| e["type"] == "bounced"));
    let out = tokio::task::block_in_place(|| env.run(&["log", "nobody@one.test"], None));
    assert_eq!(out.status.code(), Some(1));

    // The events are kept in the spool, owner-only.
    let files: Vec<_> = fs::read_dir(env.spool().join("events")).unwrap().collect();
    assert_eq!(files.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = files[0]
        .as_ref()
        .unwrap()
        .metadata()
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The hard bounce suppressed its recipient: the next send to it is refused (65).
    let list = tokio::task::block_in_place(|| env.ok(&["suppress", "list", "--json"], None));
    let entry: Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(
        (entry["address"].as_str(), entry["reason"].as_str()),
        (Some("gone@one.test"), Some("invalid_recipient"))
    );
    assert_eq!(entry["source"], b["event_id"]);
    let out = tokio::task::block_in_place(|| env.run(&["send", "gone@one.test"], Some(MSG)));
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("suppressed"));
    // Until it is removed.
    tokio::task::block_in_place(|| env.ok(&["suppress", "remove", "gone@one.test"], None));
    tokio::task::block_in_place(|| env.ok(&["send", "gone@one.test"], Some(MSG)));
    let out =
        tokio::task::block_in_place(|| env.run(&["suppress", "remove", "gone@one.test"], None));
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_action_drop_a_suppressed_recipient_is_taken_and_dropped_before_sending() {
    let sink = Sink::start(Script::default()).await;
    let env = Env::new(&sink, "[suppression]\naction = \"drop\"\n");
    tokio::task::block_in_place(|| {
        env.ok(
            &[
                "suppress",
                "add",
                "bad@one.test",
                "--reason",
                "asked to stop",
            ],
            None,
        );
    });
    // A bad line is refused (65) and said; the good ones are added.
    let out = tokio::task::block_in_place(|| {
        env.run(
            &["suppress", "import", "-"],
            Some("# export\nlist@one.test,,complaint\nnot an address\n"),
        )
    });
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 1 entries, 1 lines refused"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3:"));
    let list = tokio::task::block_in_place(|| env.ok(&["suppress", "list"], None));
    assert!(list.contains("bad@one.test * asked to stop"), "{list}");
    assert!(list.contains("list@one.test * complaint"), "{list}");

    let id =
        tokio::task::block_in_place(|| env.ok(&["send", "bad@one.test", "ok@one.test"], Some(MSG)))
            .trim()
            .to_owned();
    tokio::task::block_in_place(|| env.ok(&["queue", "run"], None));
    let got = sink.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].to,
        ["ok@one.test"],
        "the suppressed recipient is never sent to"
    );
    let events = tokio::task::block_in_place(|| env.events(&id));
    let s = of(&events, "suppressed", "bad@one.test");
    assert!(s["reply"].as_str().unwrap().contains("asked to stop"));
    of(&events, "delivered", "ok@one.test");
    let queued = tokio::task::block_in_place(|| env.ok(&["queue", "list"], None));
    assert!(!queued.contains("bad@one.test"), "{queued}");

    // Holding and deleting say who did it.
    let id2 = tokio::task::block_in_place(|| env.ok(&["send", "later@one.test"], Some(MSG)))
        .trim()
        .to_owned();
    tokio::task::block_in_place(|| {
        env.ok(&["queue", "hold", &id2], None);
        env.ok(&["queue", "delete", &id2], None);
    });
    let events = tokio::task::block_in_place(|| env.events(&id2));
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["accepted", "held", "deleted"]);
    assert!(events[1]["by"].as_str().unwrap().contains("uid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_bounces_in_a_row_suppress_when_configured() {
    let mut script = Script::default();
    script
        .rcpt
        .insert("full@one.test".into(), "452 4.2.2 Mailbox full".into());
    let sink = Sink::start(script).await;
    // One tier: a temporary failure there ends the schedule (an expiry).
    let env = Env::new(
        &sink,
        "dequeue_periods = [0]\n[suppression]\nsoft_bounces = 2\nsoft_bounce_days = 7\n",
    );
    for round in 1..=2 {
        tokio::task::block_in_place(|| {
            env.ok(&["send", "full@one.test"], Some(MSG));
            env.ok(&["queue", "run"], None);
        });
        let list = tokio::task::block_in_place(|| env.ok(&["suppress", "list"], None));
        assert_eq!(
            list.contains("full@one.test"),
            round == 2,
            "round {round}: {list}"
        );
    }
    let list = tokio::task::block_in_place(|| env.ok(&["suppress", "list"], None));
    assert!(
        list.contains("2 soft bounces in a row (mailbox_full)"),
        "{list}"
    );
    let expired = tokio::task::block_in_place(|| env.events("full@one.test"));
    assert_eq!(expired.iter().filter(|e| e["type"] == "expired").count(), 2);
    let out = tokio::task::block_in_place(|| env.run(&["send", "full@one.test"], Some(MSG)));
    assert_eq!(out.status.code(), Some(65));
}
