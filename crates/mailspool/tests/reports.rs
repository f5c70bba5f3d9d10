//! Bounces and complaints that come back as mail: with `[return_path]`, mail goes out
//! from a signed VERP address; `serve` takes the reports sent back to it from anyone,
//! turns them into `bounced` / `complained` events of the original message, suppresses
//! hard-bounced and complaining recipients, and never queues them. A forged return
//! path is refused, and a report can speak only of the message's own recipients.

#[path = "../../deliver/tests/common/mod.rs"]
mod common;
mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::{Script, Sink};
use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(sink: &Sink, port: u16) -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::write(
            env.dir.path().join("rp.secret"),
            "a secret of some length, 32 bytes\n",
        )
        .unwrap();
        fs::write(
            env.dir.path().join("mailspool.toml"),
            format!(
                "tls = \"none\"\n[routes]\n\"one.test\" = \"{}\"\n[[listen]]\naddress = \"127.0.0.1:{port}\"\n\
                 [return_path]\naddress = \"bounces@bounce.test\"\nsecret_file = \"rp.secret\"\n",
                sink.addr
            ),
        )
        .unwrap();
        env
    }
    fn cmd(&self) -> Command {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin!("mailspool"));
        c.env("MAILSPOOL_SPOOL", self.spool())
            .env("MAILSPOOL_CONFIG", self.dir.path().join("mailspool.toml"))
            .env_remove("MAILSPOOL_LOG");
        c
    }
    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut c = self.cmd();
        c.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn events(&self, id: &str) -> Vec<Value> {
        String::from_utf8(self.run(&["log", id, "--json"], "").stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// One SMTP conversation: each command's reply (the last line of it).
fn smtp(port: u16, commands: &[&str]) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let reply = |r: &mut BufReader<TcpStream>| loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            return line.trim_end().to_owned();
        }
    };
    reply(&mut r);
    commands
        .iter()
        .map(|c| {
            w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
            reply(&mut r)
        })
        .collect()
}

fn dsn(to: &str, about: &str, status: &str, diagnostic: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.one.test (Mail Delivery System)\r\nTo: {to}\r\n\
Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n\
--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n\
--B\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; mx.one.test\r\n\r\n\
Final-Recipient: rfc822; {about}\r\nAction: failed\r\nStatus: {status}\r\n\
Remote-MTA: dns; store.one.test\r\nDiagnostic-Code: smtp; {diagnostic}\r\n\r\n--B--\r\n.",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_after_acceptance_reaches_the_history_and_suppresses() {
    let sink = Sink::start(Script::default()).await;
    let port = support::free_port();
    let env = Env::new(&sink, port);
    let id = String::from_utf8(
        tokio::task::block_in_place(|| {
            env.run(
                &["send", "gone@one.test", "ok@one.test"],
                "From: app@shop.test\nMessage-ID: <r1@shop.test>\nSubject: hi\n\nhello\n",
            )
        })
        .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    tokio::task::block_in_place(|| env.run(&["queue", "run"], ""));
    // It went out from a return path naming it.
    let got = sink.received();
    let vrp = got[0].from.clone();
    assert!(
        vrp.starts_with(&format!("bounces+{id}.")) && vrp.ends_with("@bounce.test"),
        "{vrp}"
    );

    let (serve, port) = support::spawn_serve({
        let mut c = env.cmd();
        c.stdout(Stdio::null());
        c
    });
    let _serve = scopeguard(serve);
    let report = dsn(
        &vrp,
        "gone@one.test",
        "5.1.1",
        "550 5.1.1 <gone@one.test>: User unknown",
    );
    let replies = tokio::task::block_in_place(|| {
        smtp(
            port,
            &[
                "EHLO mx.one.test",
                "MAIL FROM:<>",
                &format!("RCPT TO:<{vrp}>"),
                "DATA",
                &report,
                "QUIT",
            ],
        )
    });
    assert_eq!(&replies[2], "250 2.1.5 Ok", "from anyone: {replies:?}");
    assert!(
        replies[4].starts_with("250 2.0.0 Ok: report read, 1 event"),
        "{replies:?}"
    );
    let events = tokio::task::block_in_place(|| env.events(&id));
    let b = events
        .iter()
        .find(|e| e["type"] == "bounced")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(b["recipient"], "gone@one.test");
    assert_eq!(b["class"], "invalid_recipient");
    assert_eq!(b["source"], "report");
    assert_eq!(b["from"], "app@shop.test");
    assert_eq!(b["message_id"], "<r1@shop.test>");
    // Suppressed: the next send to it is refused.
    let out = tokio::task::block_in_place(|| {
        let mut c = env.cmd();
        c.args(["send", "gone@one.test"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Subject: again\n\nhi\n")
            .unwrap();
        child.wait_with_output().unwrap()
    });
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was queued by any of it (the bounce is read, not relayed).
    assert!(support::node_files(&env.spool()).is_empty());

    // A complaint (ARF) about the other recipient.
    let arf = format!(
        "From: fbl@one.test\r\nTo: {vrp}\r\nSubject: complaint\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"A\"\r\n\r\n\
--A\r\nContent-Type: text/plain\r\n\r\nabuse report\r\n\
--A\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n\
Original-Rcpt-To: <ok@one.test>\r\n\r\n--A--\r\n."
    );
    let replies = tokio::task::block_in_place(|| {
        smtp(
            port,
            &[
                "EHLO fbl.one.test",
                "MAIL FROM:<fbl@one.test>",
                &format!("RCPT TO:<{vrp}>"),
                "DATA",
                &arf,
                "QUIT",
            ],
        )
    });
    assert!(
        replies[4].starts_with("250 2.0.0 Ok: report read, 1 event"),
        "{replies:?}"
    );
    let events = tokio::task::block_in_place(|| env.events(&id));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "complained" && e["recipient"] == "ok@one.test"),
        "{events:#?}"
    );
    let list = String::from_utf8(
        tokio::task::block_in_place(|| env.run(&["suppress", "list"], "")).stdout,
    )
    .unwrap();
    assert!(list.contains("ok@one.test * complaint"), "{list}");

    // A forged return path is refused; a report about someone else says nothing; a
    // report goes alone; the return path's domain relays nothing.
    let forged = format!("bounces+{id}.0000000000000000@bounce.test");
    let replies = tokio::task::block_in_place(|| {
        smtp(
            port,
            &[
                "EHLO x.example",
                "MAIL FROM:<>",
                &format!("RCPT TO:<{forged}>"),
                &format!("RCPT TO:<{vrp}>"),
                "RCPT TO:<victim@elsewhere.example>",
                "DATA",
                &dsn(&vrp, "stranger@one.test", "5.1.1", "550 no"),
                "QUIT",
            ],
        )
    });
    assert!(replies[2].starts_with("550 5.1.1"), "{replies:?}");
    assert_eq!(replies[3], "250 2.1.5 Ok");
    assert!(replies[4].starts_with("452 4.5.3"), "{replies:?}");
    assert!(
        replies[6].starts_with("250 2.0.0 Ok: report read, 0 event"),
        "{replies:?}"
    );
    let list = String::from_utf8(
        tokio::task::block_in_place(|| env.run(&["suppress", "list"], "")).stdout,
    )
    .unwrap();
    assert!(!list.contains("stranger"), "{list}");
    assert!(support::node_files(&env.spool()).is_empty());
}

struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}
