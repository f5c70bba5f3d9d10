//! The mail a server makes, as Postfix would take it: cron's exact call with a bare
//! user name, `sendmail root`, aliases (to a mailbox, elsewhere, into loops, to
//! commands), `admin_address`, unknown users bouncing, and the mailbox read back by
//! Python's `mailbox` module. The mailboxes live in a temporary `mail_spool_directory`
//! and belong to the user running the test (no root needed).

#[path = "../../deliver/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Script, Sink};

fn login() -> String {
    let uid = rustix::process::getuid().as_raw();
    mailspool_spool::user_name(uid).expect("the test's user is in /etc/passwd")
}

fn run(dir: &Path, prog: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let bin = dir.join(prog);
    if !bin.exists() {
        std::os::unix::fs::symlink(assert_cmd::cargo::cargo_bin!("mailspool"), &bin).unwrap();
    }
    let mut child = Command::new(&bin)
        .env("MAILSPOOL_CONFIG", dir.join("mailspool.toml"))
        .env_remove("MAILSPOOL_SPOOL")
        .env_remove("MAILSPOOL_LOG")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The messages of an mbox as Python's `mailbox.mbox` reads them: (subject,
/// Delivered-To, body) per message.
fn read_mbox(path: &Path) -> Vec<(String, String, String)> {
    let script = format!(
        "import mailbox, json\nout = []\nfor m in mailbox.mbox({:?}):\n    out.append([m['Subject'] or '', m['Delivered-To'] or '', m.get_payload()])\nprint(json.dumps(out))\n",
        path.display().to_string()
    );
    let o = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Vec<(String, String, String)>>(&o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_root_and_aliases_land_where_postfix_would_put_them() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let me = login();
    let mail = d.join("mail");
    std::fs::create_dir(&mail).unwrap();
    std::fs::write(
        d.join("aliases"),
        format!(
            "# as Debian ships it, plus the admin's lines\n\
             postmaster: root\n\
             root: \\{me}, ops@remote.test\n\
             webmaster: root\n\
             loop-a: loop-b\n\
             loop-b: loop-a\n\
             program: \"|/usr/bin/procmail\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("mailspool.toml"),
        format!(
            "dequeue_dir = \"{}\"\nhostname = \"box.test\"\ntls = \"none\"\nusage_log = false\n\
             aliases = \"{}\"\nmail_spool_directory = \"{}\"\n\
             [routes]\n\"remote.test\" = \"{}\"\n",
            d.join("spool").display(),
            d.join("aliases").display(),
            mail.display(),
            sink.addr
        ),
    )
    .unwrap();
    let blocking = |prog: &'static str, args: Vec<String>, input: String| {
        let d = d.to_path_buf();
        tokio::task::block_in_place(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&d, prog, &args, &input)
        })
    };

    // Cron's exact command line: the crontab's user as a bare name.
    let cron = blocking(
        "sendmail",
        ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", me.as_str()]
            .map(String::from)
            .to_vec(),
        format!(
            "From: root (Cron Daemon)\nTo: {me}\nSubject: Cron <{me}@box> /usr/local/bin/report\n\nreport output\n"
        ),
    );
    assert_eq!(cron.status.code(), Some(0), "{}", text(&cron));
    // What every `mail root` and report tool does.
    let root = blocking(
        "sendmail",
        vec!["root".into()],
        "Subject: smartd\n\ndisk 1 is failing\n".into(),
    );
    assert_eq!(root.status.code(), Some(0), "{}", text(&root));
    for (to, subject) in [
        ("nosuchuser", "to nobody"),
        ("loop-a", "into a loop"),
        ("program", "to a program"),
    ] {
        let o = blocking(
            "sendmail",
            vec!["-f".into(), "sender@remote.test".into(), to.into()],
            format!("Subject: {subject}\n\nx\n"),
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    // A bare -f is completed too, and never taken for a domain-less address.
    let queue = blocking("mailspool", vec!["queue".into()], String::new());
    let listing = text(&queue);
    assert!(listing.contains(&format!("{me}@box.test")), "{listing}");
    assert!(listing.contains("root@box.test"), "{listing}");

    // Deliver until nothing is left: forwarded copies and bounces are new queued
    // messages, each taken by a later pass.
    for _ in 0..5 {
        let o = blocking(
            "mailspool",
            vec!["queue".into(), "run".into(), "--all".into()],
            String::new(),
        );
        assert!(o.status.success(), "{}", text(&o));
        let left = blocking("mailspool", vec!["queue".into()], String::new());
        if text(&left).contains("Mail queue is empty") {
            break;
        }
    }
    let messages = read_mbox(&mail.join(&me));
    let subjects: Vec<&str> = messages.iter().map(|m| m.0.as_str()).collect();
    assert!(
        subjects.iter().any(|s| s.starts_with("Cron <")),
        "cron's mail in {me}'s mailbox: {subjects:?}"
    );
    assert!(
        subjects.contains(&"smartd"),
        "root's mail via the alias: {subjects:?}"
    );
    let smartd = messages.iter().find(|m| m.0 == "smartd").unwrap();
    assert_eq!(smartd.1, "root@box.test");
    assert!(smartd.2.contains("disk 1 is failing"));
    // The alias's address elsewhere got a forwarded copy; the bounces went to the sender.
    let got = sink.received();
    let forwarded = got
        .iter()
        .find(|m| m.to == ["ops@remote.test"])
        .expect("root's alias forwards to ops@remote.test");
    let body = String::from_utf8_lossy(&forwarded.data);
    assert!(body.starts_with("Delivered-To: root@box.test\n"), "{body}");
    assert_eq!(
        forwarded.from,
        format!("{me}@box.test"),
        "the sender is kept"
    );
    let bounces: Vec<String> = got
        .iter()
        .filter(|m| m.to == ["sender@remote.test"])
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert_eq!(bounces.len(), 3, "{bounces:?}");
    for (status, what) in [
        ("5.1.1", "nosuchuser"),
        ("5.4.6", "loop"),
        ("5.7.1", "procmail"),
    ] {
        assert!(
            bounces
                .iter()
                .any(|b| b.contains(&format!("Status: {status}")) && b.contains(what)),
            "{status} for {what}: {bounces:?}"
        );
    }
    let left = blocking("mailspool", vec!["queue".into()], String::new());
    assert!(
        text(&left).contains("Mail queue is empty"),
        "{}",
        text(&left)
    );

    // newaliases reports a broken line by its number, and exits 65.
    std::fs::write(d.join("aliases"), "postmaster: root\nthis line is wrong\n").unwrap();
    let na = blocking("newaliases", vec![], String::new());
    assert_eq!(na.status.code(), Some(65), "{}", text(&na));
    assert!(text(&na).contains("aliases:2: expected"), "{}", text(&na));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_host_sends_every_local_users_mail_to_admin_address() {
    let sink = Sink::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("mailspool.toml"),
        format!(
            "dequeue_dir = \"{}\"\nhostname = \"box.test\"\ntls = \"none\"\nusage_log = false\n\
             aliases = \"\"\nadmin_address = \"admin@remote.test\"\n\
             [routes]\n\"remote.test\" = \"{}\"\n",
            d.join("spool").display(),
            sink.addr
        ),
    )
    .unwrap();
    tokio::task::block_in_place(|| {
        let o = run(
            d,
            "sendmail",
            &["root", "whoever"],
            "Subject: apticron\n\nupdates\n",
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        for _ in 0..5 {
            let o = run(d, "mailspool", &["queue", "run", "--all"], "");
            assert!(o.status.success(), "{}", text(&o));
            if text(&run(d, "mailspool", &["queue"], "")).contains("Mail queue is empty") {
                break;
            }
        }
    });
    let got = sink.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|m| m.to == ["admin@remote.test"]));
    // An admin address on this host would loop: refused at once.
    std::fs::write(
        d.join("mailspool.toml"),
        "hostname = \"box.test\"\nadmin_address = \"root@box.test\"\n",
    )
    .unwrap();
    let o = tokio::task::block_in_place(|| run(d, "mailspool", &["queue"], ""));
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
}
