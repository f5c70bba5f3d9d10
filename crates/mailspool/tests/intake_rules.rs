//! Intake and queue rules found wrong by trying mailspool for real, each with the way a
//! user would meet it: ids nobody else can choose, the whole input read, one address
//! per argument, obsolete headers, configuration that cannot work refused up front,
//! ids that several 0.50 messages share, and planted files in the spool.

mod support;

use std::fs;
use std::process::Command;

use support::Env;

#[test]
fn a_received_header_never_chooses_the_id_and_a_chosen_id_must_be_free() {
    let env = Env::new();
    let file = env.dir.path().join("msg.eml");
    fs::write(
        &file,
        "Received: from a by b id (Abc123) ; now\nTo: x@example.org\n\nhi\n",
    )
    .unwrap();
    for _ in 0..2 {
        env.mailspool()
            .args(["send", "--file"])
            .arg(&file)
            .assert()
            .success();
    }
    let nodes = env.nodes(0);
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|(n, _)| n.id != "Abc123"), "{nodes:?}");
    assert_ne!(nodes[0].0.id, nodes[1].0.id, "every message its own id");
    for (n, body) in &nodes {
        let mid = body
            .lines()
            .find(|l| l.starts_with("Message-ID:"))
            .expect("Message-ID added");
        assert!(
            !mid.contains(&n.id),
            "Message-ID independent of the spool id: {mid}"
        );
    }
    env.mailspool()
        .args(["send", "--id", "given.id", "--file"])
        .arg(&file)
        .assert()
        .success()
        .stdout("given.id\n");
    env.mailspool()
        .args(["send", "--id", "given.id", "--file"])
        .arg(&file)
        .assert()
        .code(65)
        .stderr(predicates::str::contains("already queued"));
    assert_eq!(env.nodes(0).len(), 3, "the refused one left nothing");
    env.mailspool()
        .args(["send", "--file"])
        .arg(env.dir.path().join("missing.eml"))
        .assert()
        .code(66);
}

#[test]
fn mailspool_send_reads_everything_sendmail_stops_at_a_dot() {
    let env = Env::new();
    let msg = "Subject: dots\n\nbefore\n.\nafter\n";
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin(msg)
        .assert()
        .success();
    let file = env.dir.path().join("m.eml");
    fs::write(&file, msg).unwrap();
    env.mailspool()
        .args(["send", "--file"])
        .arg(&file)
        .arg("b@example.org")
        .assert()
        .success();
    env.sendmail()
        .arg("c@example.org")
        .write_stdin(msg)
        .assert()
        .success();
    let nodes = env.nodes(0);
    assert!(
        nodes[0].1.ends_with("\nbefore\n.\nafter\n"),
        "{:?}",
        nodes[0].1
    );
    assert!(
        nodes[1].1.ends_with("\nbefore\n.\nafter\n"),
        "{:?}",
        nodes[1].1
    );
    assert!(
        nodes[2].1.ends_with("\nbefore\n"),
        "sendmail without -i: {:?}",
        nodes[2].1
    );
}

#[test]
fn a_recipient_argument_is_one_address_or_an_error() {
    let env = Env::new();
    for arg in [
        "a b@example.org",
        "x@example.org\nBcc: y@example.org",
        "x@example.org, y@example.org",
    ] {
        let mut send = env.mailspool();
        send.arg("send");
        for mut cmd in [send, env.sendmail()] {
            cmd.arg(arg)
                .write_stdin("Subject: x\n\nhi\n")
                .assert()
                .code(65)
                .stderr(predicates::str::contains("malformed address"));
        }
    }
    env.assert_empty();
    env.mailspool()
        .args(["send", "Bob <bob@example.org>", "<carol@example.org>"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    let to: Vec<String> = env.nodes(0).into_iter().map(|(n, _)| n.to).collect();
    assert_eq!(to, ["bob@example.org", "carol@example.org"]);
}

#[test]
fn obsolete_space_before_the_colon_keeps_the_header_a_header() {
    let env = Env::new();
    env.sendmail()
        .args(["-t", "-i"])
        .write_stdin(
            "From : App <app@example.com>\nTo : ops@example.org\nSubject : hello\n\nbody\n",
        )
        .assert()
        .success();
    let nodes = env.nodes(0);
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].0.to, "ops@example.org");
    assert_eq!(nodes[0].0.from, "app@example.com");
    let body = &nodes[0].1;
    let (head, rest) = body.split_once("\n\n").unwrap();
    assert!(head.contains("Subject : hello"), "{body}");
    assert_eq!(rest, "body\n");
}

#[test]
fn the_size_error_quotes_the_configured_limit() {
    let env = Env::new();
    fs::write(env.config_path(), "max_message_size = 1000\n").unwrap();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin(format!("Subject: big\n\n{}\n", "x".repeat(5000)))
        .assert()
        .code(65)
        .stderr(predicates::str::contains("size limit of 1000 bytes"));
    env.assert_empty();
}

#[test]
fn settings_that_cannot_work_are_refused_at_load() {
    let env = Env::new();
    for (config, needle) in [
        ("max_message_size = 0\n", "max_message_size"),
        ("[serve]\nmax_connections = 0\n", "max_connections"),
        ("relayhost = \"smtp.example.com\"\n", "no port"),
        (
            "relayhost = [\"a.example.com:587\", \"b.example.com\"]\n",
            "no port",
        ),
        ("[timeouts]\nconnect = 0\n", "timeouts.connect"),
        ("stale_lock_timeout = 1\n", "stale_lock_timeout"),
        (
            "[[listen]]\naddress = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/cert.pem\"\n",
            "both tls_cert and tls_key",
        ),
    ] {
        fs::write(env.config_path(), config).unwrap();
        env.mailspool()
            .args(["send", "a@example.org"])
            .write_stdin("Subject: x\n\nhi\n")
            .assert()
            .code(78)
            .stderr(predicates::str::contains(needle));
    }
    env.assert_empty();
    // A certificate file that does not exist: configuration (78), not an OS error.
    fs::write(
        env.config_path(),
        "[[listen]]\naddress = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
    )
    .unwrap();
    env.mailspool().arg("serve").assert().code(78);
}

#[test]
fn a_missing_spool_is_an_error_not_an_empty_queue() {
    let env = Env::new();
    for args in [
        &["queue"][..],
        &["queue", "summary"],
        &["queue", "show", "X"],
        &["fsck"],
    ] {
        env.mailspool()
            .args(args)
            .assert()
            .code(66)
            .stderr(predicates::str::contains("does not exist"));
    }
    env.mailq().assert().code(66);
}

#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    let env = Env::new();
    let spool = mailspool_spool::Spool::create(env.spool(), Default::default()).unwrap();
    for i in 0..3000 {
        use std::io::Write;
        let mut s = spool.stage(&spool.new_id()).unwrap();
        s.write_all(b"Subject: x\n\nhi\n").unwrap();
        s.commit("a@example.org", &[format!("user{i}@d{i}.example")])
            .unwrap();
    }
    for listing in ["queue summary", "queue list", "queue list --json"] {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "\"$BIN\" {listing} | head -1 >/dev/null; echo \"${{PIPESTATUS[0]}}\""
            ))
            .env("BIN", assert_cmd::cargo::cargo_bin!("mailspool"))
            .env("MAILSPOOL_SPOOL", env.spool())
            .env("MAILSPOOL_CONFIG", env.config_path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{listing}: {stderr}");
        assert!(stderr.is_empty(), "{listing}: {stderr}");
        let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(status == "0" || status == "141", "{listing}: exit {status}");
    }
}

/// Two 0.50 messages under one id, from different senders, as 0.50 wrote them.
fn shared_id_spool(env: &Env) -> [String; 2] {
    for t in 0..7 {
        fs::create_dir_all(env.spool().join(t.to_string())).unwrap();
    }
    let names = [
        "1700000000-3F9A0C12AB34CD56-cfo@example.org-ceo@example.com".to_owned(),
        "1700000000-3F9A0C12AB34CD56-pal@example.org-attacker@example.net".to_owned(),
    ];
    fs::write(
        env.spool().join("0").join(&names[0]),
        "Subject: numbers\n\nsecret\n",
    )
    .unwrap();
    fs::write(
        env.spool().join("0").join(&names[1]),
        "Subject: hi\n\nhello\n",
    )
    .unwrap();
    names
}

#[test]
fn an_id_that_several_messages_share_changes_nothing_until_made_exact() {
    let env = Env::new();
    let names = shared_id_spool(&env);
    for verb in ["delete", "hold", "retry", "show"] {
        env.mailspool()
            .args(["queue", verb, "3F9A0C12AB34CD56"])
            .assert()
            .code(64)
            .stderr(predicates::str::contains("2 messages share the id"))
            .stderr(predicates::str::contains(&names[0]))
            .stderr(predicates::str::contains(&names[1]));
    }
    assert_eq!(env.nodes(0).len(), 2, "nothing was changed");
    // Exact: the recipient, or the node's file name.
    env.mailspool()
        .args([
            "queue",
            "show",
            "3F9A0C12AB34CD56",
            "--to",
            "cfo@example.org",
        ])
        .assert()
        .success()
        .stdout(predicates::str::contains("<ceo@example.com>"))
        .stdout(predicates::str::contains("attacker").not());
    env.mailspool()
        .args([
            "queue",
            "delete",
            "3F9A0C12AB34CD56",
            "--to",
            "pal@example.org",
        ])
        .assert()
        .success();
    let left = env.nodes(0);
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].0.from, "ceo@example.com",
        "the CEO's message is untouched"
    );
    env.mailspool()
        .args(["queue", "hold", &names[0]])
        .assert()
        .success();
    assert!(env.nodes(0).is_empty());
    // Now the id names one message: it works without --to.
    env.mailspool()
        .args(["queue", "release", "3F9A0C12AB34CD56"])
        .assert()
        .success();
    assert_eq!(env.nodes(0).len(), 1);
}

use predicates::prelude::PredicateBooleanExt;

#[test]
fn a_planted_symlink_or_fifo_is_never_read_as_mail() {
    let env = Env::new();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin("Subject: real\n\nhi\n")
        .assert()
        .success();
    let secret = env.dir.path().join("shadow");
    fs::write(&secret, "root:$6$secrethash:19000::::::\n").unwrap();
    let t0 = env.spool().join("0");
    std::os::unix::fs::symlink(
        &secret,
        t0.join("1700000000-LINK-x@example.org-me@example.com"),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        t0.join("1700000000-FIFO-y@example.org-me@example.com"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    env.mailspool()
        .args(["queue", "show", "LINK"])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(65)
        .stdout(predicates::str::contains("secrethash").not())
        .stderr(predicates::str::contains("symbolic link"));
    env.mailspool()
        .args(["queue", "show", "FIFO"])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(65)
        .stderr(predicates::str::contains("not a regular file"));
    let out = env
        .mailspool()
        .arg("fsck")
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(4)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("LINK") && out.contains("FIFO"), "{out}");
    // Set aside in corrupt/, not repaired: 4, and said.
    env.mailspool()
        .args(["fsck", "--repair"])
        .timeout(std::time::Duration::from_secs(20))
        .assert()
        .code(4)
        .stdout(predicates::str::contains("NOT delivered and NOT bounced"));
    assert!(secret.exists());
    assert_eq!(
        fs::read_dir(env.spool().join("corrupt")).unwrap().count(),
        2
    );
    assert_eq!(env.nodes(0).len(), 1, "the real message stays");
}

#[test]
fn queueing_and_listing_never_read_the_relay_password() {
    let env = Env::new();
    fs::write(
        env.config_path(),
        "relayhost = \"smtp.example.com:587\"\n[relay]\nusername = \"app\"\npassword_file = \"/nonexistent/relay-password\"\n",
    )
    .unwrap();
    env.mailspool()
        .args(["send", "a@example.org"])
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    env.sendmail()
        .arg("b@example.org")
        .write_stdin("Subject: x\n\nhi\n")
        .assert()
        .success();
    env.mailq().assert().success();
    // What delivers reads it, and says so when it cannot.
    env.mailspool()
        .args(["queue", "run"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("/nonexistent/relay-password"));
}
